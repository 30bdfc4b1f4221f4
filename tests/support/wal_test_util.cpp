#include "support/wal_test_util.hpp"

#include <cstring>
#include <sstream>

namespace iqdb::persist::test {

std::string diff(const FlatIndex& index, const Model& model) {
  std::ostringstream out;
  if (index.size() != model.size()) out << "size " << index.size() << " != model " << model.size() << "; ";
  for (const auto& [id, e] : model) {
    if (!index.contains(id)) {
      out << "missing " << id.to_string() << "; ";
      continue;
    }
    const auto v = index.get(id);
    if (v.size() != e.vec.size() || std::memcmp(v.data(), e.vec.data(), v.size_bytes()) != 0) {
      out << "vector of " << id.to_string() << " differs; ";
    }
    const Metadata* m = index.metadata(id);
    if ((m != nullptr) != e.meta.has_value() || (m != nullptr && *m != *e.meta)) {
      out << "metadata of " << id.to_string() << " differs; ";
    }
  }
  return out.str();
}

PersistConfig wal_config(const std::filesystem::path& p, FsyncPolicy policy, FileSystem* file_system) {
  PersistConfig cfg(p);
  cfg.wal_enabled = true;
  cfg.fsync_policy = policy;
  cfg.file_system = file_system;
  return cfg;
}

}  // namespace iqdb::persist::test
