// sync() and the periodic flusher: under FsyncPolicy::Periodic a thread
// fsyncs the log about once per interval, as the leader of a group commit
// (group_commit.cpp) with nobody waiting.
#include <algorithm>
#include <chrono>
#include <system_error>

#include "iqdb/persist/detail/resource_error.hpp"
#include "wal/engine_impl.hpp"

namespace iqdb::persist::detail {

void WalEngine::Impl::sync() {
  std::unique_lock lk(mu_);
  throw_if_unusable();
  // Everything logged when sync() was called, and no more: under Periodic
  // and Never nobody waits for a sync, so appends that keep coming would
  // otherwise overtake every fdatasync and keep sync() from returning. (By
  // LSN: a checkpoint meanwhile starts a log whose ends are smaller.) A
  // commit that its index could not apply is cut off the log again
  // (roll_back_from): the LSNs from its first on are no longer logged, so
  // the target is at most the last LSN logged now, checked at every pass.
  // An fdatasync this call made that failed throws its own error (Io, with
  // its errno), as a commit's does; later calls throw Poisoned.
  // A close() that ran while this waited (cv_) closed the log: its
  // descriptor is gone, and an fdatasync of it would fail (EBADF) and poison
  // a log that close() left whole (an outside hunt: sync() racing close()
  // under Periodic and Never): "the index is closed", as for a sync() after
  // it.
  const std::uint64_t target = next_lsn_ - 1;
  while (synced_lsn_ < std::min(target, next_lsn_ - 1)) {
    if (poisoned_ || closed_) break;
    if (!syncing_) {
      if (const std::exception_ptr failed = leader_sync(lk)) std::rethrow_exception(failed);
    } else {
      cv_.wait(lk);
    }
  }
  throw_if_unusable();
}

void WalEngine::Impl::start_flusher() {
  if (policy_.mode() != FsyncPolicy::Mode::Periodic) return;
  // Wake twice per interval, so a record waits at most about one interval
  // (plus the fsync) before it is durable; at least once a day (a deadline
  // of now + years would overflow the clock and never wait).
  const auto period = std::clamp(policy_.interval() / 2, std::chrono::milliseconds(1),
                                 std::chrono::milliseconds(std::chrono::hours(24)));
  const auto run = [this, period] {
    std::unique_lock lk(mu_);
    while (!stop_) {
      flusher_cv_.wait_for(lk, period, [this] { return stop_; });
      if (stop_) break;
      if (poisoned_ || syncing_ || writer_->end() <= synced_end_) continue;
      (void)leader_sync(lk);  // (its error poisons the log: the next call throws Poisoned)
    }
  };
  // No thread to be had (a process at its limit) is an Io error (EAGAIN):
  // the open_with or load starting it fails (open_with hands its index back).
  try {
    flusher_ = std::thread(run);
  } catch (const std::system_error& e) {
    throw thread_error(log_path_, "the log's periodic flusher thread", e);
  }
}

void WalEngine::Impl::stop_flusher() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  flusher_cv_.notify_all();
  if (flusher_.joinable()) flusher_.join();
}

}  // namespace iqdb::persist::detail
