// Group commit: every commit() logs one frame; under FsyncPolicy::Always one
// thread (the leader) fsyncs for every frame appended so far while the others
// wait, then applies the group to the index in log order. The hot path takes
// mu_ once per commit, allocates nothing once its thread's frame buffer has
// grown, and queues commits in an intrusive list on their threads' stacks.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <utility>

#include "iqdb/persist/detail/exception_text.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/format.hpp"
#include "util/coding.hpp"
#include "wal/engine_impl.hpp"
#include "wal/log_format.hpp"
#include "wal/record_codec.hpp"

namespace iqdb::persist::detail {

namespace {

// Yield the CPU in a loop until done() or `limit` has passed.
template <class Done>
void yield_until(Done done, std::chrono::nanoseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!done() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
}

[[noreturn]] void refuse_batch(std::uint64_t bytes, std::uint64_t max_body, bool at_least) {
  throw PersistError::argument("a write batch of " + std::string(at_least ? "at least " : "") + std::to_string(bytes) +
                               " bytes exceeds the log's frame limit (" + std::to_string(max_body) +
                               " bytes here); split it");
}

// The frame of one commit, encoded outside the lock; its LSNs, length and
// CRC are filled in by wal::format::seal_v2_frame once the LSN is known.
// A batch too large for one frame is refused before anything is encoded
// when its vectors and smallest records already exceed the limit, else as
// soon as the encoding passes it: never after encoding (or validating) all
// of a batch of many GB.
void encode_frame(std::vector<std::byte>& frame, std::span<const MutationRef> ops, std::uint64_t max_body) {
  // Room for the vectors and a few dozen bytes per record up front: a
  // buffer grown by doubling while a large batch is encoded copies it about
  // once more and, the first time, takes fresh pages at each step.
  std::size_t want = wal::format::kFrameHeaderLen;
  std::uint64_t least = 0;  // each record takes at least kMinOpLen bytes and its vector's
  for (const MutationRef& m : ops) {
    want += 48 + m.vector.size_bytes();
    least += wal::format::kMinOpLen + m.vector.size_bytes();
  }
  if (least > max_body || ops.size() > UINT32_MAX) refuse_batch(least, max_body, true);
  if (frame.capacity() < want && want <= max_body) frame.reserve(want);
  wal::format::begin_v2_frame(frame, static_cast<std::uint32_t>(ops.size()));
  const std::size_t limit = wal::format::kFrameHeaderLen + max_body;
  for (const MutationRef& m : ops) {
    if (m.op == wal::Op::Insert) {
      wal::encode_insert(frame, *m.id, m.vector, m.metadata);
    } else {
      wal::encode_erase(frame, *m.id);
    }
    if (frame.size() > limit) {
      const std::uint64_t bytes = frame.size() - wal::format::kFrameHeaderLen;
      std::vector<std::byte>().swap(frame);  // (a thread's buffer, kept between commits: not at this size)
      refuse_batch(bytes, max_body, true);
    }
  }
}

// A place among the threads that may yield the CPU in a loop while they
// wait: one fewer than the CPUs, so that the threads they wait for (the
// leader back from its sync, the writers it gathers) find a CPU free instead
// of taking turns with spinners (4 writers on 2 CPUs: docs/PERFORMANCE.md,
// "Write-ahead log").
class SpinSlot {
 public:
  SpinSlot(std::atomic<int>& spinning, int max) noexcept
      : spinning_(spinning), got_(spinning.fetch_add(1, std::memory_order_relaxed) < max) {
    if (!got_) spinning_.fetch_sub(1, std::memory_order_relaxed);
  }
  ~SpinSlot() {
    if (got_) spinning_.fetch_sub(1, std::memory_order_relaxed);
  }
  SpinSlot(const SpinSlot&) = delete;
  SpinSlot& operator=(const SpinSlot&) = delete;
  bool got() const noexcept { return got_; }

 private:
  std::atomic<int>& spinning_;
  bool got_;
};

}  // namespace

// Wake the thread of a queued entry (mu_ held; for entries already done and
// out of the queue, also without it: wake_all). Done: e.done and e.error
// are set, and it returns without taking mu_ again; e may be gone as soon
// as the post is visible, even before this returns (WakeWord).
void WalEngine::Impl::wake(Entry& e, Wake why) noexcept { e.wake.post(static_cast<std::uint32_t>(why)); }

// How long a waiting commit yields the CPU in a loop before it sleeps:
// only while fdatasyncs are quick (a wake-up then costs about as much as
// the wait), never longer than the configured bound. Quick: on average
// (one slow sync does not turn it off) under half that bound, as a waiter
// waits for up to two syncs (the running one, then its own).
std::chrono::nanoseconds WalEngine::Impl::spin_budget() const noexcept {
  if (commit_spin_.count() == 0 || 2 * avg_sync_time_ > commit_spin_) return std::chrono::nanoseconds(0);
  return commit_spin_;
}

WalEngine::Impl::Wake WalEngine::Impl::wait_for_wake(Entry& e, std::chrono::nanoseconds spin) noexcept {
  yield_until([&] { return e.wake.peek() != 0; }, spin);
  return static_cast<Wake>(e.wake.take());
}

std::size_t WalEngine::Impl::group_target() const noexcept {
  return *std::max_element(recent_groups_.begin(), recent_groups_.end());
}

void WalEngine::Impl::commit(std::span<const MutationRef> ops, Validate validate, Apply apply) {
  if (ops.empty()) {  // nothing to log, but refused as any mutation would be
    const std::lock_guard lk(mu_);
    throw_if_unusable();
    return;
  }
  // The buffer keeps its capacity from one commit to the next.
  thread_local std::vector<std::byte> frame;
  encode_frame(frame, ops, max_frame_);

  std::unique_lock lk(mu_);
  cv_.wait(lk, [this] { return draining_.load(std::memory_order_relaxed) == 0; });
  throw_if_unusable();
  if (next_lsn_ > ::iqdb::persist::format::MAX_LSN || ops.size() > ::iqdb::persist::format::MAX_LSN - next_lsn_ + 1) {
    throw PersistError::at(ErrorKind::InvalidArgument, log_path_,
                           "the log's LSNs are used up (the highest is 2^63 - 1): nothing was logged");
  }
  validate_against_queue(validate);
  Entry e(ops, apply, writer_->end(), next_lsn_);
  for (const MutationRef& m : ops) e.size_delta += m.op == wal::Op::Insert ? 1 : -1;
  log_frame(frame, e);
  e.end = writer_->end();
  if (auto_at_ != 0 && e.end >= auto_at_) note_log_full();
  next_lsn_ += ops.size();
  ++stats_.commits;
  stats_.records += ops.size();
  queue_.push_back(&e);
  queued_delta_ += e.size_delta;
  // The queue holds e by address: whatever happens below, e leaves it
  // before this frame does.
  struct Unqueue {
    Impl& self;
    Entry& e;
    std::unique_lock<std::mutex>& lk;
    ~Unqueue() {
      if (e.done) return;
      if (!lk.owns_lock()) lk.lock();
      self.abandon(e);
    }
  } unqueue{*this, e, lk};
  // A leader waiting to gather a group is woken once, when it is complete.
  if (gathering_ && queue_.size() >= gather_want_) gather_cv_.notify_one();

  if (policy_.mode() == FsyncPolicy::Mode::Always) {
    wait_for_group(e, lk);
  } else {
    apply_through(e.end);
  }
  if (e.error) std::rethrow_exception(e.error);
}

// Until the group's fsync, later commits must see the queued ones' effect:
// the first commit that validates while one is queued enters the queue in
// pending_ (register_pending), so a lone writer never pays for that.
void WalEngine::Impl::validate_against_queue(Validate validate) {
  const auto pending = [this](const VectorId& id) -> std::optional<bool> {
    if (queue_.empty()) return std::nullopt;
    register_pending();
    const auto it = pending_.find(id);
    if (it == pending_.end()) return std::nullopt;
    return it->second.present;
  };
  validate(pending, queued_delta_);
}

// Seal e's frame with its LSN and put it in the log (mu_ held).
void WalEngine::Impl::log_frame(std::vector<std::byte>& frame, Entry& e) {
  wal::format::seal_v2_frame(frame, writer_->salt(), e.first_lsn, synced_lsn_);
  if (policy_.mode() == FsyncPolicy::Mode::Always && (syncing_ || group_target() > 1)) {
    // The leader of the sync that covers this frame writes it with the
    // rest of its group, in one write: appends then cost no system call
    // and do not queue up one after the other on the file. (A lone
    // writer, whose groups are of one, writes its frame itself, without
    // the copy.) Staging only copies into memory: a failure (out of
    // memory) stages nothing, and the frames staged before it, which
    // queued commits wait for, must stay.
    writer_->stage(frame);
    return;
  }
  try {
    writer_->append(frame);
  } catch (...) {
    // Part of the frame may be in the file, and may even read back as
    // complete: cut it off, so a mutation reported as failed does not
    // reappear on recovery (when the cut fails too, the error says it
    // may). Then refuse further writes. (Nothing is staged here: frames
    // are staged only while a sync is due, and appended only when none is.)
    const std::exception_ptr err = std::current_exception();
    std::exception_ptr report = err;
    bool cut = false;
    try {
      writer_->cut(e.start);
      cut = true;
    } catch (...) {
      report = poison_uncut(err);
    }
    // A frame of an object's worth goes out with its append (RADOS); one
    // refused whole for certain (a full pool) is in no log. Under Always
    // nothing was waiting to go with it (a lone writer's frames go out with
    // its own sync), so writes go on, as after a refused sync (sync_failed).
    if (cut && policy_.mode() == FsyncPolicy::Mode::Always && writer_->refused_whole()) throw;
    poison_for(report);
    if (report != err) std::rethrow_exception(report);
    throw;
  }
}

// Group commit: one thread syncs for everything appended so far; the others
// wait for it, and whoever is still waiting leads the next sync. The seat
// passes from leader to leader: a leader whose sync ends with commits queued
// behind it hands the seat to the first of them.
void WalEngine::Impl::wait_for_group(Entry& e, std::unique_lock<std::mutex>& lk) {
  bool lead = !syncing_;
  while (!e.done) {
    if (lead) {
      seat_ = &e;
      // e was the first of the group: once this returns it is done (applied
      // or failed). The others' threads are woken once mu_ is free, so that
      // they do not wake up only to wait for it.
      WakeList later;
      (void)leader_sync(lk, &later);  // hands the seat on (a failure failed e with it)
      lk.unlock();
      wake_all(later.head);
      return;
    }
    const auto budget = spin_budget();
    lk.unlock();
    Wake why = Wake::None;
    {
      const SpinSlot slot(spinning_, budget.count() > 0 ? spin_slots_ : 0);
      why = wait_for_wake(e, slot.got() ? budget : std::chrono::nanoseconds(0));
    }
    if (why == Wake::Done) break;  // e.done was set (under mu_) before the wake
    lk.lock();
    lead = true;
  }
}

// Called with mu_ held; releases it during the fdatasync.
std::exception_ptr WalEngine::Impl::leader_sync(std::unique_lock<std::mutex>& lk, WakeList* later) {
  syncing_ = true;  // (already, if the seat was handed over)
  const std::size_t want = group_target();
  if (policy_.mode() == FsyncPolicy::Mode::Always && queue_.size() < want && !group_full()) gather_group(lk, want);
  const Group g = next_group();
  const auto sync_start = std::chrono::steady_clock::now();
  std::exception_ptr err;
  try {
    // (Copies part of the staged frames when the group is not all of them:
    // an allocation that fails fails the sync, never leaves the seat taken.)
    writer_->take_staged(staged_, g.end);
    lk.unlock();
    writer_->write_staged(staged_);
    writer_->datasync();
  } catch (...) {
    // Whatever it is (a FileSystem of the program's may throw anything),
    // the sync failed, and the seat must not stay taken with nobody in it.
    err = std::current_exception();
  }
  if (!lk.owns_lock()) lk.lock();
  std::exception_ptr report;
  if (err) {
    report = sync_failed(err);
  } else {
    sync_succeeded(g.end, g.last_lsn, g.entries, std::chrono::steady_clock::now() - sync_start, later);
  }
  pass_seat();
  cv_.notify_all();
  return report;
}

// What the next sync covers (mu_ held): under Always, the queued commits
// from the first on whose frames fit the sink's max_group_bytes() together
// (at least one); those left out are the next group's, their frames staged
// after these. Otherwise everything appended so far.
WalEngine::Impl::Group WalEngine::Impl::next_group() const noexcept {
  if (policy_.mode() != FsyncPolicy::Mode::Always || queue_.empty()) {
    return {writer_->end(), next_lsn_ - 1, queue_.size()};
  }
  const std::uint64_t start = queue_.front()->start;
  const std::uint64_t bound = writer_->max_group_bytes();
  Group g;
  for (const Entry* q = queue_.front(); q != nullptr; q = q->next) {
    if (g.entries > 0 && q->end - start > bound) break;
    g.end = q->end;
    g.last_lsn = q->first_lsn + q->ops.size() - 1;
    ++g.entries;
  }
  return g;
}

// The queued frames fill a group already: gathering more is pointless.
bool WalEngine::Impl::group_full() const noexcept {
  return !queue_.empty() && writer_->end() - queue_.front()->start >= writer_->max_group_bytes();
}

// Writers are arriving concurrently. Give those that were just acknowledged
// the chance to append their next record, so that this fsync covers them too
// instead of groups alternating between one record and many: wait until as
// many are queued as in the largest of the recent groups, for at most one
// fsync (adaptive commit delay, as PostgreSQL's commit_delay but
// self-tuning). A wait that times out costs at most the fsync it was meant to
// save; the target decays as smaller groups follow. (Its own condition
// variable: an append wakes the leader only, not the writers waiting for
// their sync.)
void WalEngine::Impl::gather_group(std::unique_lock<std::mutex>& lk, std::size_t want) {
  const SpinSlot slot(spinning_, spin_budget().count() > 0 ? spin_slots_ : 0);
  if (slot.got()) {
    // The writers to wait for are about to append: yield to them rather
    // than sleep and pay for a wake-up.
    lk.unlock();
    yield_until([&] { return queue_.size() >= want; }, last_sync_time_);
    lk.lock();
  } else {
    gathering_ = true;
    gather_want_ = want;
    gather_cv_.wait_for(lk, last_sync_time_, [&] { return queue_.size() >= want || poisoned_.has_value(); });
    gathering_ = false;
  }
}

std::exception_ptr WalEngine::Impl::sync_failed(const std::exception_ptr& err) noexcept {
  // Under Always nothing after the last good sync was acknowledged: cut
  // it, so that the failed mutations do not come back on recovery. A failed
  // fdatasync may still have put their bytes on disk, so when the cut fails
  // too they may come back: the error says so (poison_uncut).
  // (Under Periodic those records were acknowledged already: keep them.)
  std::exception_ptr report = err;
  if (policy_.mode() == FsyncPolicy::Mode::Always) {
    try {
      writer_->cut(synced_end_);
      // Refused whole for certain (a full RADOS pool): none of the queued
      // frames is in the log, and now none is in the sink either. They fail,
      // their LSNs are taken again, and writes go on: no outcome is unknown.
      if (writer_->refused_whole()) {
        if (!queue_.empty()) next_lsn_ = queue_.front()->first_lsn;
        fail_queue(report);
        return report;
      }
    } catch (...) {
      report = poison_uncut(err);
    }
  }
  poison_for(report);
  fail_queue(report);
  return report;
}

void WalEngine::Impl::sync_succeeded(std::uint64_t target, std::uint64_t target_lsn, std::size_t group,
                                     std::chrono::steady_clock::duration took, WakeList* later) {
  if (target > synced_end_) synced_end_ = target;
  if (target_lsn > synced_lsn_) synced_lsn_ = target_lsn;
  recent_groups_[recent_at_++ % recent_groups_.size()] = group;
  ++stats_.log_syncs;
  avg_sync_time_ += (std::chrono::duration_cast<std::chrono::nanoseconds>(took) - avg_sync_time_) / 8;
  last_sync_time_ = std::min<std::chrono::nanoseconds>(took, std::chrono::milliseconds(2));
  apply_through(synced_end_, later);
}

// The leader's seat is free: the first commit queued (during the sync that
// just ended) takes it, else nobody.
void WalEngine::Impl::pass_seat() noexcept {
  if (!queue_.empty()) {
    seat_ = queue_.front();
    wake(*seat_, Wake::Lead);
  } else {
    seat_ = nullptr;
    syncing_ = false;
  }
}

// Apply queued entries whose records end at or before `end`, in order; wake
// their threads now, or leave them in `later`.
void WalEngine::Impl::apply_through(std::uint64_t end, WakeList* later) {
  while (!queue_.empty() && queue_.front()->end <= end) {
    Entry* x = queue_.front();
    try {
      x->apply();
    } catch (...) {
      roll_back_from(std::current_exception());
      return;
    }
    queue_.pop_front();
    unpend(*x);
    x->done = true;
    if (later != nullptr) {
      later->push(x);
    } else {
      wake(*x, Wake::Done);
    }
  }
}

// Wake the threads of applied entries, in order (mu_ not held: each entry
// left the queue and is done; its thread returns once woken).
void WalEngine::Impl::wake_all(Entry* first) noexcept {
  while (first != nullptr) {
    Entry* const next = first->next;  // read before the wake: first may be gone after it
    wake(*first, Wake::Done);
    first = next;
  }
}

// The front entry could not be applied although its record is in the log:
// cut the log back to before it, so that the log never holds a mutation the
// index does not. Later entries were validated assuming it applied: they
// fail too.
void WalEngine::Impl::roll_back_from(std::exception_ptr cause) {
  Entry* x = queue_.front();
  try {
    std::rethrow_exception(cause);
  } catch (const PersistError& err) {
    // The index could not be restored to its state before the entry.
    if (err.kind() == ErrorKind::Poisoned) poison(err.what());
  } catch (...) {
  }
  try {
    writer_->cut(x->start);
    next_lsn_ = x->first_lsn;
    synced_lsn_ = std::min(synced_lsn_, x->first_lsn - 1);
    if (synced_end_ > x->start) synced_end_ = x->start;
  } catch (...) {
    // The record may still be in the log: refuse writes (the entries
    // queued behind it fail below all the same).
    poison_for(std::current_exception());
  }
  std::exception_ptr later;
  try {
    later = std::make_exception_ptr(PersistError(
        ErrorKind::InvalidArgument, "not applied: an earlier mutation committed in the same group failed"));
  } catch (...) {  // out of memory: report the cause to them too rather than leave them queued
    later = cause;
  }
  bool first = true;
  queue_.drain([&](Entry& q) {
    q.error = first ? cause : later;
    q.done = true;
    first = false;
    unpend(q);
    wake(q, Wake::Done);
  });
  cv_.notify_all();
}

void WalEngine::Impl::fail_queue(const std::exception_ptr& err) noexcept {
  queue_.drain([&](Entry& q) {
    q.error = err;
    q.done = true;
    unpend(q);
    wake(q, Wake::Done);
  });
}

// Enter the mutations of queued entries in pending_, in log order (the
// last mutation of an id decides its presence). Resumable: a failure (out
// of memory) leaves each entry's count of registered ops exact.
void WalEngine::Impl::register_pending() {
  queue_.for_each([this](Entry& q) {
    for (; q.registered < q.ops.size(); ++q.registered) {
      const MutationRef& m = q.ops[q.registered];
      Pending& p = pending_[*m.id];
      p.present = m.op == wal::Op::Insert;
      ++p.refs;
    }
  });
}

// The entry leaves the queue (applied or failed): its mutations are no
// longer pending.
void WalEngine::Impl::unpend(Entry& e) noexcept {
  queued_delta_ -= e.size_delta;
  e.size_delta = 0;
  for (std::size_t i = 0; i < e.registered; ++i) {
    const auto it = pending_.find(*e.ops[i].id);
    if (it != pending_.end() && --it->second.refs == 0) pending_.erase(it);
  }
  e.registered = 0;
}

void WalEngine::Impl::poison(std::string_view cause, ErrorKind kind) noexcept {
  if (poisoned_) return;
  poison_kind_ = kind;
  try {
    poisoned_ = "the write-ahead log failed earlier (" + std::string(cause) +
                "); what it holds can no longer be vouched for, so writes are refused: reopen the index";
  } catch (...) {
    poisoned_.emplace("out of memory");  // fits the small-string buffer: no allocation
  }
}

void WalEngine::Impl::poison_for(const std::exception_ptr& err) noexcept {
  try {
    std::rethrow_exception(err);
  } catch (const PersistError& e) {
    poison(e.what(), refusal_kind(e));
  } catch (const std::exception& e) {
    poison(e.what());
  } catch (...) {
    poison("an exception that is not a std::exception");
  }
}

std::exception_ptr WalEngine::Impl::poison_uncut(const std::exception_ptr& err) noexcept {
  static constexpr std::string_view kNote =
      "; the failed records could not be cut off the log and may reappear on recovery";
  try {
    try {
      std::rethrow_exception(err);
    } catch (const PersistError& e) {
      // A copy whose what() alone is longer, as PersistError::at composes
      // it: kind, path and errno stay (with_path() would drop the note).
      PersistError noted = e;
      static_cast<std::runtime_error&>(noted) = std::runtime_error(std::string(e.what()).append(kNote));
      return std::make_exception_ptr(std::move(noted));
    } catch (...) {
      // Kept as thrown (docs/RELIABILITY.md): failure() says it.
      poison(exception_text(err).append(kNote));
      return err;
    }
  } catch (...) {  // out of memory: the error as it was
  }
  return err;
}

// commit() is leaving by an exception (only std::bad_alloc can get here)
// while its entry is still queued: its record is in the log but will never
// be applied. Take the entry out (its storage is going away) and refuse
// further writes; after a reopen the log decides whether it happened, as
// for any call that failed without an answer.
void WalEngine::Impl::abandon(Entry& e) noexcept {
  queue_.erase(&e);
  unpend(e);
  e.done = true;
  poison("a commit failed after its record was logged");
  if (seat_ == &e) pass_seat();  // it held, or was handed, the seat
  cv_.notify_all();
}

std::unique_lock<std::mutex> WalEngine::Impl::lock_drained() {
  draining_.fetch_add(1, std::memory_order_relaxed);
  std::unique_lock lk(mu_);
  cv_.wait(lk, [this] { return !syncing_ && queue_.empty(); });
  // Lowered under mu_, so that a commit waiting for it cannot miss it. The
  // commits that waited take mu_ once the caller lets go.
  if (draining_.fetch_sub(1, std::memory_order_relaxed) == 1) cv_.notify_all();
  return lk;
}

void WalEngine::Impl::throw_if_unusable() const {
  if (closed_) throw PersistError::at(ErrorKind::InvalidArgument, snapshot_path_, "the index is closed");
  if (poisoned_) throw PersistError::at(poison_kind_, log_path_, *poisoned_);
}

}  // namespace iqdb::persist::detail
