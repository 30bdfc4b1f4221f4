// The single-writer lock: one process at a time writes an index (PATH.lock,
// docs/FORMAT.md), and the temporaries its crashed predecessors left behind
// are removed once it holds the lock.
#include <string>

#include "wal/engine_impl.hpp"

namespace iqdb::persist::detail {

namespace fs = std::filesystem;

void WalEngine::Impl::lock_and_clean() {
  fs::path lock_path = snapshot_path_;
  lock_path += ".lock";
  lock_ = fs_.lock(lock_path);
  // Temporary files of saves or checkpoints a crash interrupted. We hold the
  // writer lock, so none of them is in use.
  const fs::path dir = snapshot_path_.parent_path();
  const std::string name = snapshot_path_.filename().string();
  const std::string snap_prefix = "." + name + ".tmp-";
  const std::string log_prefix = "." + name + ".wal.tmp-";
  for (const std::string& entry : fs_.list_dir(dir.empty() ? fs::path(".") : dir)) {
    if (entry.starts_with(snap_prefix) || entry.starts_with(log_prefix)) fs_.remove(dir / entry);
  }
}

}  // namespace iqdb::persist::detail
