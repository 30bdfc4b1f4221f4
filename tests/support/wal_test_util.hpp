// Helpers shared by the WAL-mode tests: a model of what an index must hold,
// and the configuration they open it with.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "iqdb/persist.hpp"

namespace iqdb::persist::test {

// What the index must hold: each id's vector and metadata.
struct Entry {
  std::vector<float> vec;
  std::optional<Metadata> meta;
};
using Model = std::map<VectorId, Entry>;

// Empty when `index` holds exactly `model` (vectors bitwise, metadata equal);
// otherwise what differs.
std::string diff(const FlatIndex& index, const Model& model);

// A FlatIndex whose insert of one chosen id fails once (an index-specific
// failure after validation passed: a batch is then applied in part), with
// a std::runtime_error, or with an int when throw_int is set (an index type
// of a program's may throw anything).
struct FailOnce : FlatIndex {
  explicit FailOnce(FlatIndex f) : FlatIndex(std::move(f)) {}
  static FailOnce load_from(PayloadReader& r) { return FailOnce(FlatIndex::load_from(r)); }
  void insert(const VectorId& id, std::span<const float> v, std::optional<Metadata> m = {}) {
    if (fail_id != 0 && id == VectorId(fail_id)) {
      fail_id = 0;
      if (throw_int) throw 42;
      throw std::runtime_error("injected failure");
    }
    FlatIndex::insert(id, v, std::move(m));
  }
  static inline std::uint64_t fail_id = 0;  // 0: none
  static inline bool throw_int = false;
};

// WAL mode under `policy`, through `file_system` (nullptr: the real one).
PersistConfig wal_config(const std::filesystem::path& p, FsyncPolicy policy, FileSystem* file_system = nullptr);

}  // namespace iqdb::persist::test
