// WalEngine's public functions over its Impl (engine_impl.hpp maps the jobs
// to their files), close() and the accessors.
#include "iqdb/persist/detail/wal_engine.hpp"

#include <mutex>

#include "iqdb/persist/detail/process_bound.hpp"
#include "util/first_error.hpp"
#include "wal/engine_impl.hpp"

namespace iqdb::persist::detail {

void WalEngine::Impl::close() {
  const std::lock_guard close_lk(close_mu_);
  stop_checkpointer();  // waits for a checkpoint it runs
  stop_flusher();
  std::unique_lock lk = lock_drained();
  if (closed_) return;
  closed_ = true;
  FirstError first;
  if (!poisoned_ && policy_.mode() != FsyncPolicy::Mode::Never && synced_end_ < writer_->end()) {
    first.run([&] {
      writer_->datasync();
      ++stats_.log_syncs;
      synced_end_ = writer_->end();
    });
  }
  first.run([&] { writer_->close(); });
  lock_.reset();
  first.rethrow();
}

std::unique_lock<std::mutex> WalEngine::Impl::lock_unless_inherited() const {
  if (inherited()) return std::unique_lock<std::mutex>(mu_, std::defer_lock);
  return std::unique_lock<std::mutex>(mu_);
}

std::optional<std::string> WalEngine::Impl::failure() const {
  if (inherited()) return forked_reason("writing");
  std::lock_guard lk(mu_);
  return poisoned_;
}

wal::WalStats WalEngine::Impl::stats() const {
  const auto lk = lock_unless_inherited();
  return stats_;
}

std::uint64_t WalEngine::Impl::last_lsn() const {
  const auto lk = lock_unless_inherited();
  return next_lsn_ - 1;
}

WalEngine::WalEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

WalEngine::~WalEngine() {
  if (!impl_) return;
  if (impl_->inherited()) {
    // A child of fork(): the engine is its parent's. Abandoned, not
    // destroyed (detail/process_bound.hpp): its threads are not here, and
    // nothing of the parent's log or lock may be touched.
    (void)impl_.release();
    return;
  }
  try {
    impl_->close();
  } catch (...) {
    // Destructors never throw: close() reports errors to callers who ask.
  }
}

std::unique_ptr<WalEngine> WalEngine::create(const PersistConfig& cfg, const WriteSnapshot& write_snapshot) {
  auto impl = std::make_unique<Impl>(cfg);
  impl->create(write_snapshot, cfg.discard_log);
  return std::unique_ptr<WalEngine>(new WalEngine(std::move(impl)));
}

std::unique_ptr<WalEngine> WalEngine::open(const PersistConfig& cfg, const std::function<FileHeader()>& load_snapshot,
                                           const Replay& replay, const WriteSnapshot& write_snapshot,
                                           const ReserveHint& reserve) {
  auto impl = std::make_unique<Impl>(cfg);
  impl->open(load_snapshot, replay, write_snapshot, reserve);
  return std::unique_ptr<WalEngine>(new WalEngine(std::move(impl)));
}

void WalEngine::commit(std::span<const MutationRef> ops, Validate validate, Apply apply) {
  impl_->refuse_if_inherited("a mutation");
  impl_->commit(ops, validate, apply);
}
void WalEngine::checkpoint(const WriteSnapshot& write_snapshot) {
  impl_->refuse_if_inherited("a checkpoint or save");
  impl_->checkpoint(write_snapshot);
}
void WalEngine::start_auto_checkpoint(std::uint64_t log_bytes, WriteSnapshot write_snapshot) {
  impl_->refuse_if_inherited("automatic checkpoints");
  impl_->start_checkpointer(log_bytes, std::move(write_snapshot));
}
std::optional<std::string> WalEngine::auto_checkpoint_failure() const { return impl_->checkpoint_failure(); }
void WalEngine::sync() {
  impl_->refuse_if_inherited("sync()");
  impl_->sync();
}
void WalEngine::close() {
  if (impl_->inherited()) return;  // the parent's to close; nothing of it is released here
  impl_->close();
}
std::uint64_t WalEngine::last_lsn() const { return impl_->last_lsn(); }
std::optional<std::string> WalEngine::failure() const { return impl_->failure(); }
wal::WalStats WalEngine::stats() const { return impl_->stats(); }

}  // namespace iqdb::persist::detail
