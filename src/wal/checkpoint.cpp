// checkpoint(): fold the log into a new snapshot and start an empty log, with
// no crash window (docs/FORMAT.md, "Checkpoint").
#include <cerrno>

#include "iqdb/persist/detail/exception_text.hpp"
#include "iqdb/persist/error.hpp"
#include "wal/engine_impl.hpp"

namespace iqdb::persist::detail {

void WalEngine::Impl::checkpoint(const WriteSnapshot& write_snapshot, bool automatic) {
  // Let in-flight group commits finish; new ones wait, and holding mu_
  // from here on blocks them (searches take only the index's read lock and
  // go on).
  std::unique_lock lk = lock_drained();
  try {
    checkpoint_locked(write_snapshot);
  } catch (...) {
    if (automatic) auto_failure_ = exception_text(std::current_exception());  // mu_ still held
    throw;
  }
}

void WalEngine::Impl::checkpoint_locked(const WriteSnapshot& write_snapshot) {
  throw_if_unusable();
  // The checkpoint writes by path: a writer whose lock file was removed or
  // replaced (its directory moved, say) would write over the files of a
  // writer that locked the path since. Fenced, for good. (A check that
  // could not look, Io, refuses this checkpoint only: the log is intact.)
  try {
    if (lock_) lock_->check();
  } catch (const PersistError& err) {
    if (err.kind() == ErrorKind::Fenced) poison(err.what(), err.kind());
    throw;
  }
  const std::uint64_t last = next_lsn_ - 1;
  // 1. The snapshot, durably, with the last LSN it holds. A crash from here
  //    until step 2 completes leaves the old log beside it, whose records are
  //    all <= last: replay skips them.
  try {
    write_snapshot(last);
  } catch (const PersistError& err) {
    // A publish without an answer (RADOS: ETIMEDOUT) may still take effect:
    // the snapshot at `last` may be the published one, whose log (step 2)
    // does not exist, so a record appended to the old log from now on could
    // be lost on reload. Only a reopen can tell which snapshot is current.
    // (A save that failed for sure leaves the old snapshot and log: writes
    // go on.)
    if (err.sys_errno() == ETIMEDOUT) poison(err.what(), refusal_kind(err));
    throw;
  }
  // 2. A fresh log starting at last + 1, atomically replacing the old one.
  try {
    start_new_log(last + 1);
  } catch (...) {
    // Where the failure struck (before or after the rename) decides which
    // file is the log now; only a reopen can tell safely. (Whatever the
    // failure: out of memory, or anything a FileSystem of the program's
    // throws, may strike after the rename too.)
    poison_for(std::current_exception());
    throw;
  }
}

}  // namespace iqdb::persist::detail
