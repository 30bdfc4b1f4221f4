// The WAL engine's state and the map of where each of its jobs lives
// (internal). The public face is include/iqdb/persist/detail/wal_engine.hpp.
//
//   writer_lock.cpp   the single-writer lock (IndexStorage::lock_writer: the
//                     local files or RADOS, detail/index_storage.hpp)
//   recovery.cpp      create() and open(): a new or recovered log to continue
//   replay.cpp        log records after the snapshot, in LSN order, to the index
//                     (frames are checked and decoded in log_reader.cpp; the
//                     index applies them in PersistedIndex's replay callback)
//   group_commit.cpp  commit(): one frame per commit, group fsync, apply in order
//   flusher.cpp       sync() and the periodic flusher (FsyncPolicy::Periodic)
//   checkpoint.cpp    checkpoint(): fold the log into a snapshot, start a new log
//   wal_engine.cpp    WalEngine's public functions, close() and the accessors
//
// Invariants (mu_ guards them):
//  - Records reach the index in LSN order, each exactly once.
//  - Under FsyncPolicy::Always a record is applied (and its commit returns)
//    only after an fdatasync that covers it succeeded.
//  - After any failed write or fsync of the log the engine is poisoned: every
//    later commit fails until the index is reopened, because the kernel may
//    have dropped the data a retried fsync would report as safe.
//  - The leader's seat (syncing_) is free only when no commit is queued;
//    frames staged for a group belong to queued commits, and the leader of
//    the sync that covers them writes them.
//  - One sync covers at most LogSink::max_group_bytes() of frames (or one
//    frame): a group is a prefix of the queue, the rest waits for the next.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>

#include "iqdb/persist/detail/index_storage.hpp"
#include "iqdb/persist/detail/process_bound.hpp"
#include "iqdb/persist/detail/wal_engine.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/file_system.hpp"
#include "util/wake_word.hpp"
#include "wal/log_reader.hpp"

namespace iqdb::persist::detail {

// The log records after LSN `folded`, replayed in order (replay.cpp; shared
// by open() and replay_read_only(), which changes nothing).
struct Replayed {
  wal::ScanResult scan;
  std::uint64_t next = 0;   // the LSN after the last one replayed (or folded)
  wal::FollowPoint end;      // where a follower goes on (at scan.valid_bytes)
};
// `live`: a writer may be appending to the log (readers without the lock):
// damage is read again (wal::scan_file, live) before it counts.
Replayed replay_log(IndexStorage& storage, const ReadableFile& file, const std::filesystem::path& log_path,
                    std::uint64_t folded, const WalEngine::Replay& replay, const WalEngine::ReserveHint& reserve,
                    bool live);
// The error for `thrown`, what the index threw while it applied `r`, the
// log's record with LSN `lsn` (a load's replay, a replica's catch-up; a
// thread ending, abi::__forced_unwind, is the caller's to rethrow): the
// index refusing it (a PersistError, or any exception of an index type's
// own) is CorruptLog naming `log_path` (where in it: the record's frame)
// and the LSN; running out of memory or threads is Io (resource_error).
PersistError record_not_applied(const std::exception_ptr& thrown, const wal::RecordView& r, std::uint64_t lsn,
                                const std::filesystem::path& log_path);
// open_with with the WAL, without PersistConfig::discard_log: refuse
// (WouldLoseWrites; CorruptLog for a log damaged in the middle) to replace
// an index that holds anything: log records above its snapshot, or a
// snapshot of at least one vector (persisted_index.cpp, beside the rule for
// saves without the WAL). Called holding the writer lock.
void refuse_replacing_writes(FileSystem& files, IndexStorage& storage, const std::filesystem::path& snapshot_path);
// The storage a config names: its IndexStorage, else the local files.
std::shared_ptr<IndexStorage> storage_of(const PersistConfig& cfg);
// How writes are refused after a failure of the log: Fenced when a newer
// writer took over (for good), else Poisoned (until a reopen).
inline ErrorKind refusal_kind(const PersistError& e) noexcept {
  return e.kind() == ErrorKind::Fenced ? ErrorKind::Fenced : ErrorKind::Poisoned;
}
// `floor` (the snapshot's claim) raised to cover every LSN this log could
// hold, judged from its header and size alone (replay.cpp).
std::uint64_t lsn_bound_with_log(std::uint64_t floor, const ReadableFile& log);

class WalEngine::Impl {
 public:
  explicit Impl(const PersistConfig& cfg);
  ~Impl();

  // recovery.cpp
  void create(const WriteSnapshot& write_snapshot, bool replace_existing);
  void open(const std::function<FileHeader()>& load_snapshot, const Replay& replay,
            const WriteSnapshot& write_snapshot, const ReserveHint& reserve);
  // group_commit.cpp
  void commit(std::span<const MutationRef> ops, Validate validate, Apply apply);
  // flusher.cpp
  void sync();
  // checkpoint.cpp
  // automatic: run by the checkpointer thread, whose failure is recorded in
  // auto_failure_ before mu_ is let go (a writer refused by the poisoning it
  // caused then finds its reason there).
  void checkpoint(const WriteSnapshot& write_snapshot, bool automatic = false);
  void checkpoint_locked(const WriteSnapshot& write_snapshot);  // mu_ held, commits drained
  // wal_engine.cpp
  void close();
  // auto_checkpoint.cpp
  void start_checkpointer(std::uint64_t log_bytes, WriteSnapshot write_snapshot);
  std::optional<std::string> checkpoint_failure() const;
  std::optional<std::string> failure() const;
  wal::WalStats stats() const;
  std::uint64_t last_lsn() const;
  // In a child of fork(): the engine is its parent's (process_bound.hpp).
  bool inherited() const noexcept { return born_.inherited(); }
  void refuse_if_inherited(std::string_view what) const { born_.refuse_if_inherited(snapshot_path_, what); }

 private:
  // What the thread of a queued commit is woken for.
  enum class Wake : std::uint8_t { None, Done, Lead };

  // A commit whose frame is in the log (or staged for it) and that waits to
  // be applied. It lives on its thread's stack, in commit().
  struct Entry {
    Entry(std::span<const MutationRef> o, Apply a, std::uint64_t s, std::uint64_t lsn) noexcept
        : ops(o), apply(a), start(s), first_lsn(lsn) {}
    std::span<const MutationRef> ops;
    Apply apply;
    std::uint64_t start;
    std::uint64_t end = 0;
    std::uint64_t first_lsn;
    bool done = false;  // left the queue: applied, or failed (error)
    std::exception_ptr error;
    std::size_t registered = 0;   // ops entered in pending_ (from the first on)
    std::int64_t size_delta = 0;  // inserts minus erases
    Entry* next = nullptr;        // in CommitQueue
    // Each waiting commit sleeps on its own word, woken by the leader when it
    // is done or is to lead the next sync (a Wake): waking a group does not
    // make its threads queue up for mu_ one after the other (as in RocksDB's
    // WriteThread). The waker may post while the entry's thread returns (and
    // its stack, which holds the entry, goes): WakeWord allows that.
    WakeWord wake;
  };

  // The commits waiting for their group's fsync, in log order: an intrusive
  // list, so that queueing never allocates (it cannot fail once a frame is
  // in the log).
  class CommitQueue {
   public:
    bool empty() const noexcept { return head_ == nullptr; }
    std::size_t size() const noexcept { return size_.load(std::memory_order_relaxed); }
    Entry* front() const noexcept { return head_; }
    void push_back(Entry* e) noexcept {
      e->next = nullptr;
      (tail_ != nullptr ? tail_->next : head_) = e;
      tail_ = e;
      size_.store(size() + 1, std::memory_order_relaxed);
    }
    void pop_front() noexcept {
      head_ = head_->next;
      if (head_ == nullptr) tail_ = nullptr;
      size_.store(size() - 1, std::memory_order_relaxed);
    }
    void erase(const Entry* e) noexcept {
      Entry* prev = nullptr;
      for (Entry* q = head_; q != nullptr; prev = q, q = q->next) {
        if (q != e) continue;
        (prev != nullptr ? prev->next : head_) = q->next;
        if (tail_ == q) tail_ = prev;
        size_.store(size() - 1, std::memory_order_relaxed);
        return;
      }
    }
    // Take every entry out; f(entry) may wake (and so free) the entry.
    template <class F>
    void drain(F&& f) noexcept {
      Entry* q = head_;
      head_ = tail_ = nullptr;
      size_.store(0, std::memory_order_relaxed);
      while (q != nullptr) {
        Entry* const next = q->next;
        f(*q);
        q = next;
      }
    }
    template <class F>
    void for_each(F&& f) const {
      for (Entry* q = head_; q != nullptr; q = q->next) f(*q);
    }

   private:
    Entry* head_ = nullptr;
    Entry* tail_ = nullptr;
    // Written under mu_; a gathering leader reads it without (a hint).
    std::atomic<std::size_t> size_{0};
  };

  struct Pending {
    bool present = false;
    std::uint32_t refs = 0;
  };

  // writer_lock.cpp
  void lock_and_clean();
  // recovery.cpp
  void adopt(std::unique_ptr<LogSink> w);
  void start_new_log(std::uint64_t base_lsn);
  std::uint64_t lsn_bound_of_existing_files();
  void continue_log(const wal::ScanResult& scan, std::uint64_t expect);
  void claim_above(std::uint64_t last, const WriteSnapshot& write_snapshot);
  // group_commit.cpp
  static void wake(Entry& e, Wake why) noexcept;
  static Wake wait_for_wake(Entry& e, std::chrono::nanoseconds spin) noexcept;
  std::chrono::nanoseconds spin_budget() const noexcept;
  std::size_t group_target() const noexcept;
  void validate_against_queue(Validate validate);
  void log_frame(std::vector<std::byte>& frame, Entry& e);
  void wait_for_group(Entry& e, std::unique_lock<std::mutex>& lk);
  // Entries applied but not yet woken: a committing leader wakes them once
  // it let go of mu_ (linked through Entry::next, in log order).
  struct WakeList {
    Entry* head = nullptr;
    Entry* tail = nullptr;
    void push(Entry* x) noexcept {
      x->next = nullptr;
      (tail != nullptr ? tail->next : head) = x;
      tail = x;
    }
  };
  // `later`: where apply_through leaves the entries it applied (woken by
  // the caller after it let go of mu_); nullptr: they are woken at once.
  // The error of a sync that failed (what its waiters were failed with), or null.
  std::exception_ptr leader_sync(std::unique_lock<std::mutex>& lk, WakeList* later = nullptr);
  // The commits one sync covers: their frames end at `end`, their last LSN.
  struct Group {
    std::uint64_t end = 0;
    std::uint64_t last_lsn = 0;
    std::size_t entries = 0;
  };
  Group next_group() const noexcept;
  bool group_full() const noexcept;
  void gather_group(std::unique_lock<std::mutex>& lk, std::size_t want);
  std::exception_ptr sync_failed(const std::exception_ptr& err) noexcept;  // what the waiters are failed with
  void sync_succeeded(std::uint64_t target, std::uint64_t target_lsn, std::size_t group,
                      std::chrono::steady_clock::duration took, WakeList* later);
  void pass_seat() noexcept;
  void apply_through(std::uint64_t end, WakeList* later = nullptr);
  static void wake_all(Entry* first) noexcept;
  void roll_back_from(std::exception_ptr cause);
  void fail_queue(const std::exception_ptr& err) noexcept;
  void register_pending();
  void unpend(Entry& e) noexcept;
  void poison(std::string_view cause, ErrorKind kind = ErrorKind::Poisoned) noexcept;
  // poison() with err's message and kind (a PersistError's refusal_kind);
  // an exception that is not a std::exception (a FileSystem of the
  // program's may throw anything) with a fixed message.
  void poison_for(const std::exception_ptr& err) noexcept;
  // The records of a failed write or sync, `err`, could not be cut off the
  // log: they may reappear on recovery. Returns the error to report (and to
  // poison_for): a PersistError with the same kind, path and errno, what()
  // saying so too; anything else as thrown, after poisoning the index with
  // the note itself (only failure() then says so).
  std::exception_ptr poison_uncut(const std::exception_ptr& err) noexcept;
  void abandon(Entry& e) noexcept;
  void throw_if_unusable() const;
  // Takes mu_ and waits until no commit is queued or syncing; returns
  // holding mu_. Commits that arrive from the call on wait in commit()
  // until it returns (and, as mu_ stays held, until the caller lets go of
  // it): a writer that commits in a loop, already running when mu_ is let
  // go or a sync ends, would otherwise take mu_ and queue its next commit
  // before the waiting thread wakes, again and again.
  std::unique_lock<std::mutex> lock_drained();
  // mu_, except in a child of fork() (whose accessors read without it: its
  // holder may have been a thread of the parent, and in the child no thread
  // changes what it guards, as every write is refused).
  std::unique_lock<std::mutex> lock_unless_inherited() const;
  // flusher.cpp
  void start_flusher();
  void stop_flusher();
  // auto_checkpoint.cpp
  void stop_checkpointer();
  void note_log_full();  // (mu_ held) the log reached auto_at_

  ProcessBound born_;
  std::shared_ptr<IndexStorage> storage_;
  FileSystem& fs_;  // the snapshot's
  FsyncPolicy policy_;
  std::filesystem::path snapshot_path_;
  std::filesystem::path log_path_;
  std::chrono::nanoseconds commit_spin_;
  // Threads yielding the CPU in a loop while they wait (group_commit.cpp),
  // and how many may: one fewer than the CPUs.
  std::atomic<int> spinning_{0};
  const int spin_slots_ = std::max(0, static_cast<int>(std::thread::hardware_concurrency()) - 1);
  std::uint64_t max_frame_;  // the storage's frame limit (IndexStorage::max_frame_bytes)
  std::unique_ptr<FileLock> lock_;
  std::unique_ptr<LogSink> writer_;

  // Held through close(): two threads closing at once would both join the
  // flusher and checkpointer threads (the second join never returns); the
  // second waits for the first, then finds the engine closed.
  std::mutex close_mu_;
  mutable std::mutex mu_;
  std::condition_variable cv_;         // a sync completed, or the leader's seat is free
  std::condition_variable gather_cv_;  // a commit was queued while a leader gathers
  std::uint64_t next_lsn_ = 1;
  std::uint64_t synced_lsn_ = 0;  // highest LSN covered by a completed fsync
  std::uint64_t synced_end_ = 0;
  bool syncing_ = false;   // the leader's seat is taken (a sync is running or about to)
  // Threads in lock_drained: new commits wait. Raised before mu_ is taken
  // (so atomic), lowered under it.
  std::atomic<int> draining_{0};
  Entry* seat_ = nullptr;  // the commit whose thread holds the seat, or was handed it
  bool gathering_ = false;  // the leader waits for gather_want_ commits to be queued
  std::size_t gather_want_ = 0;
  LogSink::Staged staged_;  // the group the leader writes (leader only)
  std::array<std::size_t, 8> recent_groups_{};  // entries covered by each of the last fsyncs
  std::size_t recent_at_ = 0;
  wal::WalStats stats_;
  std::chrono::nanoseconds last_sync_time_{0};
  std::chrono::nanoseconds avg_sync_time_{0};  // moving average (1/8 per sync)
  bool closed_ = false;
  std::optional<std::string> poisoned_;
  ErrorKind poison_kind_ = ErrorKind::Poisoned;  // Fenced: a newer writer took over
  CommitQueue queue_;
  std::unordered_map<VectorId, Pending> pending_;
  std::int64_t queued_delta_ = 0;  // size_delta summed over queue_

  std::thread flusher_;
  std::condition_variable flusher_cv_;
  bool stop_ = false;

  // Automatic checkpoints (auto_checkpoint.cpp), all under mu_ but the thread.
  std::uint64_t auto_bytes_ = 0;  // PersistConfig::checkpoint_log_bytes; 0: off
  std::uint64_t auto_at_ = 0;     // the log's end at which the next one is due; 0: off
  bool auto_due_ = false;         // the checkpointer was woken for it
  bool auto_stop_ = false;
  std::optional<std::string> auto_failure_;
  WriteSnapshot auto_write_;
  std::condition_variable auto_cv_;
  std::thread checkpointer_;
};

}  // namespace iqdb::persist::detail
