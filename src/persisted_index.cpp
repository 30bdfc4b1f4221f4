#include "iqdb/persist/persisted_index.hpp"

namespace iqdb::persist::detail {

void validate_config(const PersistConfig& cfg) {
  if (cfg.path.empty()) throw PersistError::argument("PersistConfig.path is empty");
  if (cfg.path.filename().empty()) {
    throw PersistError::argument("PersistConfig.path '" + cfg.path.string() + "' names a directory, not a file");
  }
  if (cfg.compression.kind() == Compression::Kind::Zstd &&
      (cfg.compression.level() < 1 || cfg.compression.level() > 22)) {
    throw PersistError::argument("zstd level " + std::to_string(cfg.compression.level()) + " is outside 1..22");
  }
  if (cfg.fsync_policy.mode() == FsyncPolicy::Mode::Periodic && cfg.fsync_policy.interval().count() <= 0) {
    throw PersistError::argument("FsyncPolicy::periodic needs a positive interval");
  }
}

}  // namespace iqdb::persist::detail
