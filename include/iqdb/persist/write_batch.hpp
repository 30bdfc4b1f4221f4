// WriteBatch: mutations applied together, all or nothing.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "iqdb/persist/error.hpp"
#include "iqdb/persist/types.hpp"
#include "iqdb/persist/wal.hpp"

namespace iqdb::persist {

// A sequence of inserts and erases. PersistedIndex::write() validates the
// whole batch (in order, each mutation seeing the ones before it), logs it as
// one record group with one fsync, and applies it; recovery replays a batch
// entirely or not at all.
//
// Vectors are held without an allocation per mutation:
//   insert(id, vec, meta)            copies vec into the batch's own float
//                                    arena (blocks of at least 64 KiB that
//                                    never move, so views stay valid);
//   insert_ref(id, vec, meta)        references the caller's memory;
//   insert_rows_ref(ids, rows, dim)  references one contiguous row-major
//                                    ids.size() x dim array (numpy's layout):
//                                    row i is the vector of ids[i].
// Referenced memory must stay alive and unchanged until write() returns (or
// the batch is copied: a copy owns every vector). Validation (dimension, ids,
// metadata, the index's own checks) happens in write(), as for every batch.
class WriteBatch {
 public:
  // A view of the batch's vector: converts to std::vector<float> (a copy) for
  // code written when a mutation owned one.
  struct Floats : std::span<const float> {
    using std::span<const float>::span;
    Floats(std::span<const float> s) noexcept : std::span<const float>(s) {}  // NOLINT: implicit by design
    operator std::vector<float>() const { return {begin(), end()}; }          // NOLINT: implicit by design
  };
  struct Mutation {
    // Constructed in place, without metadata (add() sets it when there is
    // some): GCC 12 warns, falsely, of a moved-from empty optional<map>, and
    // clang 14 has no parenthesised aggregate initialisation for emplace_back.
    Mutation(wal::Op o, VectorId&& i, std::span<const float> v) : op(o), id(std::move(i)), vector(v) {}
    Mutation(wal::Op o, std::uint64_t i, std::span<const float> v) : op(o), id(i), vector(v) {}
    Mutation(wal::Op o, const VectorId& i, std::span<const float> v, std::optional<Metadata> m)
        : op(o), id(i), vector(v), metadata(std::move(m)) {}

    wal::Op op;
    VectorId id;
    Floats vector;  // empty for an erase
    std::optional<Metadata> metadata;
  };

  WriteBatch() = default;
  // A moved-from batch is empty and usable.
  WriteBatch(WriteBatch&& o) noexcept
      : ops_(std::move(o.ops_)),
        blocks_(std::move(o.blocks_)),
        used_(std::exchange(o.used_, 0)),
        cap_(std::exchange(o.cap_, 0)) {
    o.clear();
  }
  WriteBatch& operator=(WriteBatch&& o) noexcept {
    if (this != &o) {
      ops_ = std::move(o.ops_);
      blocks_ = std::move(o.blocks_);
      used_ = std::exchange(o.used_, 0);
      cap_ = std::exchange(o.cap_, 0);
      o.clear();
    }
    return *this;
  }
  ~WriteBatch() = default;
  // A copy owns its vectors (referenced ones included).
  WriteBatch(const WriteBatch& o) { copy_from(o); }
  WriteBatch& operator=(const WriteBatch& o) {
    if (this != &o) {
      clear();
      copy_from(o);
    }
    return *this;
  }

  WriteBatch& insert(VectorId id, std::span<const float> vec, std::optional<Metadata> meta = {}) {
    return add(id, store(vec), meta);
  }
  WriteBatch& insert_ref(VectorId id, std::span<const float> vec, std::optional<Metadata> meta = {}) {
    return add(id, vec, meta);
  }
  // Throws PersistError(InvalidArgument), adding nothing, unless
  // rows.size() == ids.size() * dim and dim >= 1.
  WriteBatch& insert_rows_ref(std::span<const std::uint64_t> ids, std::span<const float> rows, std::size_t dim) {
    if (dim == 0 || rows.size() / dim != ids.size() || rows.size() % dim != 0) {
      throw PersistError::argument("a block of " + std::to_string(rows.size()) + " floats is not " +
                                   std::to_string(ids.size()) + " rows of dimension " + std::to_string(dim));
    }
    ops_.reserve(ops_.size() + ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      ops_.emplace_back(wal::Op::Insert, ids[i], rows.subspan(i * dim, dim));
    }
    return *this;
  }
  WriteBatch& erase(VectorId id) {
    ops_.emplace_back(wal::Op::Erase, std::move(id), std::span<const float>());
    return *this;
  }
  // Room for n mutations (and, with floats, for that many owned floats)
  // without further allocation of the mutation list.
  void reserve(std::size_t n, std::size_t floats = 0) {
    ops_.reserve(n);
    if (floats > 0 && room() < floats) add_block(floats);
  }
  std::size_t size() const noexcept { return ops_.size(); }
  bool empty() const noexcept { return ops_.empty(); }
  void clear() noexcept {
    ops_.clear();
    blocks_.clear();
    used_ = cap_ = 0;
  }
  const std::vector<Mutation>& mutations() const noexcept { return ops_; }

 private:
  // The arena's smallest block: 16384 floats (64 KiB); later blocks double,
  // up to 16 MiB, or take one vector larger than that whole.
  static constexpr std::size_t kMinBlockFloats = std::size_t{1} << 14;
  static constexpr std::size_t kMaxBlockFloats = std::size_t{1} << 22;

  // Built in place, the metadata moved only when there is some (see Mutation).
  WriteBatch& add(VectorId& id, std::span<const float> vec, std::optional<Metadata>& meta) {
    Mutation& m = ops_.emplace_back(wal::Op::Insert, std::move(id), vec);
    if (meta) m.metadata.emplace(std::move(*meta));
    return *this;
  }
  std::size_t room() const noexcept { return cap_ - used_; }
  void add_block(std::size_t at_least) {
    const std::size_t grown = std::min(kMaxBlockFloats, std::max(kMinBlockFloats, cap_ * 2));
    const std::size_t n = std::max(at_least, grown);
    blocks_.push_back(std::make_unique_for_overwrite<float[]>(n));  // NOLINT: the arena's raw blocks
    used_ = 0;
    cap_ = n;
  }
  std::span<const float> store(std::span<const float> vec) {
    if (vec.empty()) return {};
    if (room() < vec.size()) add_block(vec.size());
    float* dst = blocks_.back().get() + used_;
    std::copy(vec.begin(), vec.end(), dst);
    used_ += vec.size();
    return {dst, vec.size()};
  }
  void copy_from(const WriteBatch& o) {
    std::size_t floats = 0;
    for (const Mutation& m : o.ops_) floats += m.vector.size();
    reserve(o.ops_.size(), floats);
    for (const Mutation& m : o.ops_) {
      ops_.emplace_back(m.op, m.id, store(m.vector), m.metadata);
    }
  }

  std::vector<Mutation> ops_;
  std::vector<std::unique_ptr<float[]>> blocks_;  // NOLINT: the arena's raw blocks
  std::size_t used_ = 0;                          // floats used in blocks_.back()
  std::size_t cap_ = 0;                           // floats in blocks_.back()
};

}  // namespace iqdb::persist
