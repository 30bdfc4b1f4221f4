// sync() and the periodic flusher: under FsyncPolicy::Periodic a thread
// fsyncs the log about once per interval, as the leader of a group commit
// (group_commit.cpp) with nobody waiting.
#include <algorithm>
#include <chrono>

#include "wal/engine_impl.hpp"

namespace iqdb::persist::detail {

void WalEngine::Impl::sync() {
  std::unique_lock lk(mu_);
  throw_if_unusable();
  while (synced_end_ < writer_->end() || !queue_.empty()) {
    if (poisoned_) break;
    if (!syncing_) {
      leader_sync(lk);
    } else {
      cv_.wait(lk);
    }
  }
  throw_if_unusable();
}

void WalEngine::Impl::start_flusher() {
  if (policy_.mode() != FsyncPolicy::Mode::Periodic) return;
  // Wake twice per interval, so a record waits at most about one interval
  // (plus the fsync) before it is durable.
  const auto period = std::max(std::chrono::milliseconds(1), policy_.interval() / 2);
  flusher_ = std::thread([this, period] {
    std::unique_lock lk(mu_);
    while (!stop_) {
      flusher_cv_.wait_for(lk, period, [this] { return stop_; });
      if (stop_) break;
      if (poisoned_ || syncing_ || writer_->end() <= synced_end_) continue;
      leader_sync(lk);
    }
  });
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
