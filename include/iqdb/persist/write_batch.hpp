// WriteBatch: mutations applied together, all or nothing.
#pragma once

#include <optional>
#include <span>
#include <vector>

#include "iqdb/persist/types.hpp"
#include "iqdb/persist/wal.hpp"

namespace iqdb::persist {

// A sequence of inserts and erases. PersistedIndex::write() validates the
// whole batch (in order, each mutation seeing the ones before it), logs it as
// one record group with one fsync, and applies it; recovery replays a batch
// entirely or not at all.
class WriteBatch {
 public:
  struct Mutation {
    wal::Op op;
    VectorId id;
    std::vector<float> vector;
    std::optional<Metadata> metadata;
  };

  WriteBatch& insert(VectorId id, std::span<const float> vec, std::optional<Metadata> meta = {}) {
    ops_.push_back(Mutation{wal::Op::Insert, std::move(id), {vec.begin(), vec.end()}, std::move(meta)});
    return *this;
  }
  WriteBatch& erase(VectorId id) {
    ops_.push_back(Mutation{wal::Op::Erase, std::move(id), {}, std::nullopt});
    return *this;
  }
  std::size_t size() const noexcept { return ops_.size(); }
  bool empty() const noexcept { return ops_.empty(); }
  void clear() noexcept { ops_.clear(); }
  const std::vector<Mutation>& mutations() const noexcept { return ops_; }

 private:
  std::vector<Mutation> ops_;
};

}  // namespace iqdb::persist
