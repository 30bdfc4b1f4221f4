// Helpers shared by the WAL-mode tests: a model of what an index must hold,
// and the configuration they open it with.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
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

// WAL mode under `policy`, through `file_system` (nullptr: the real one).
PersistConfig wal_config(const std::filesystem::path& p, FsyncPolicy policy, FileSystem* file_system = nullptr);

}  // namespace iqdb::persist::test
