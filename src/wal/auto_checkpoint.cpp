// Automatic checkpoints (PersistConfig::checkpoint_log_bytes): a thread of
// the engine's own runs checkpoint() once a commit has grown the log to the
// bound, so that the log and a load's replay stay bounded without the
// program calling checkpoint(). It checkpoints exactly as a caller would
// (checkpoint.cpp): the crash guarantees are that function's.
#include <exception>
#include <system_error>

#include "iqdb/persist/detail/resource_error.hpp"
#include "wal/engine_impl.hpp"

namespace iqdb::persist::detail {

void WalEngine::Impl::start_checkpointer(std::uint64_t log_bytes, WriteSnapshot write_snapshot) {
  if (log_bytes == 0) return;
  std::lock_guard guard(mu_);
  if (checkpointer_.joinable() || closed_) return;
  const auto run = [this] {
    std::unique_lock lk(mu_);
    for (;;) {
      auto_cv_.wait(lk, [this] { return auto_stop_ || auto_due_; });
      if (auto_stop_) return;
      auto_due_ = false;
      // A checkpoint() of the program's may have come first.
      if (closed_ || poisoned_ || writer_->end() < auto_at_) continue;
      lk.unlock();
      bool failed = false;
      try {
        checkpoint(auto_write_, /*automatic=*/true);  // a failure's reason is in auto_failure_
      } catch (...) {
        failed = true;
      }
      lk.lock();
      if (failed) {
        // Tried again once the log has grown by the bound again, not at
        // every commit. (A failure that poisoned the engine stops the
        // commits that would ask.)
        ++stats_.auto_checkpoint_failures;
        auto_at_ = writer_->end() + auto_bytes_;
      } else {
        ++stats_.auto_checkpoints;
        auto_failure_.reset();
      }
    }
  };
  // No thread to be had (a process at its limit) is an Io error (EAGAIN),
  // and the engine checkpoints only when asked, as before the call.
  try {
    checkpointer_ = std::thread(run);
  } catch (const std::system_error& e) {
    throw thread_error(snapshot_path_, "the automatic checkpoint thread", e);
  }
  // Set once the thread exists (it reads them under mu_, held here).
  auto_bytes_ = log_bytes;
  auto_write_ = std::move(write_snapshot);
  auto_at_ = log_bytes;
  // A log loaded already past the bound is checkpointed at once.
  auto_due_ = writer_ && writer_->end() >= auto_at_;
}

void WalEngine::Impl::note_log_full() {
  if (auto_due_) return;
  auto_due_ = true;
  auto_cv_.notify_one();
}

void WalEngine::Impl::stop_checkpointer() {
  {
    std::lock_guard lk(mu_);
    auto_stop_ = true;
  }
  auto_cv_.notify_all();
  if (checkpointer_.joinable()) checkpointer_.join();
}

std::optional<std::string> WalEngine::Impl::checkpoint_failure() const {
  // In a child of fork() no checkpointer runs (and the parent's may have
  // been writing auto_failure_, under mu_, at the fork).
  if (inherited()) return std::nullopt;
  std::lock_guard lk(mu_);
  return auto_failure_;
}

}  // namespace iqdb::persist::detail
