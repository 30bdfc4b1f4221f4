// The durability engine: single-writer lock, log appends with group commit,
// the periodic flusher, replay on open, and checkpoints with no crash window.
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
#include "iqdb/persist/detail/wal_engine.hpp"

#include <algorithm>
#include <cerrno>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "iqdb/persist/error.hpp"
#include "iqdb/persist/file_system.hpp"
#include "iqdb/persist/snapshot.hpp"
#include "util/coding.hpp"
#include "wal/log_format.hpp"
#include "wal/log_reader.hpp"
#include "wal/log_writer.hpp"
#include "wal/record_codec.hpp"

namespace iqdb::persist::detail {

namespace fs = std::filesystem;

class WalEngine::Impl {
 public:
  explicit Impl(const PersistConfig& cfg)
      : fs_(cfg.file_system != nullptr ? *cfg.file_system : default_file_system()),
        policy_(cfg.fsync_policy),
        snapshot_path_(cfg.path),
        log_path_(wal::log_path_for(cfg.path)),
        commit_spin_(std::max(cfg.commit_spin, std::chrono::microseconds(0))) {}
  ~Impl() { stop_flusher(); }

  // ------------------------------------------------------------ open / create

  void lock_and_clean() {
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

  // The log is grown ahead of its frames in zero-filled steps under every
  // policy: under Always and Periodic each fdatasync then carries data
  // only; under Periodic and Never frames are copied into a mapping of that
  // space (where the file system offers one) instead of written one system
  // call at a time. (Under Always the frames of a group go out in one
  // pwrite before its fdatasync, which a mapping would not make cheaper.)
  void adopt(std::unique_ptr<wal::LogWriter> w) {
    if (policy_.mode() != FsyncPolicy::Mode::Always) w->use_mapping();
    writer_ = std::move(w);
  }

  void start_new_log(std::uint64_t base_lsn) {
    auto w = wal::LogWriter::create(fs_, log_path_, fs_.random_u64(), base_lsn);
    if (writer_) {
      try {
        writer_->close();
      } catch (...) {
        // The old log is no longer the log: nothing written to it matters now.
      }
    }
    adopt(std::move(w));
    next_lsn_ = base_lsn;
    synced_lsn_ = base_lsn - 1;  // the snapshot holds (durably) everything before
    synced_end_ = writer_->end();
  }

  void create(const WriteSnapshot& write_snapshot) {
    lock_and_clean();
    // An index may already live here. The new snapshot claims every LSN its
    // files could hold, then the new log starts above them: a crash between
    // the two leaves the new snapshot beside an old log whose records are
    // all "folded", so recovery gives the new index, never the old snapshot
    // without its log, nor the old log replayed onto the new snapshot.
    const std::uint64_t floor = lsn_bound_of_existing_files();
    write_snapshot(floor);
    start_new_log(floor + 1);
    start_flusher();
  }

  // An LSN at least as high as any the snapshot and log at this path hold,
  // read from their headers and sizes only (each record takes >= 10 bytes).
  // Damaged or foreign files count for what their size could hold.
  std::uint64_t lsn_bound_of_existing_files() {
    std::uint64_t floor = 0;
    if (fs_.exists(snapshot_path_)) {
      try {
        floor = inspect_snapshot(fs_, snapshot_path_).header.last_lsn;
      } catch (const PersistError&) {
      }
    }
    if (fs_.exists(log_path_)) {
      const std::unique_ptr<ReadableFile> f = fs_.open_read(log_path_);
      const std::uint64_t base = peek_log(*f).base_lsn;
      const std::uint64_t records = f->size() / wal::format::kMinOpLen;
      floor = std::max(floor, base > 0 ? base - 1 : 0) + records;
    }
    return floor;
  }

  void open(const std::function<FileHeader()>& load_snapshot, const Replay& replay,
            const WriteSnapshot& write_snapshot, const ReserveHint& reserve) {
    lock_and_clean();
    const FileHeader h = load_snapshot();
    const std::uint64_t folded = h.last_lsn;
    if (!fs_.exists(log_path_)) {
      start_new_log(folded + 1);
      start_flusher();
      return;
    }
    wal::ScanResult scan;
    std::uint64_t expect;  // the next LSN the index needs
    {
      const std::unique_ptr<ReadableFile> file = fs_.open_read(log_path_);
      const Replayed r = replay_log(*file, log_path_, folded, replay, reserve);
      scan = r.scan;
      expect = r.next;
    }
    stats_.recovered_records = expect - (folded + 1);
    stats_.torn_tail_bytes = scan.torn_tail_bytes;
    stats_.unsynced_frames_dropped = scan.unsynced_frames_dropped;
    stats_.migrated_v1_log = scan.version == 1;
    if (scan.version == 1) {
      // A reference (version 1) log: fold it into a version-3 snapshot now and
      // continue with a version-2 log. A crash in between is safe: the new
      // snapshot's last LSN counts the version-1 records it folded.
      next_lsn_ = expect;
      write_snapshot(expect - 1);
      start_new_log(expect);
    } else {
      const std::uint64_t log_next = scan.last_lsn ? *scan.last_lsn + 1 : scan.base_lsn;
      if (log_next != expect) {
        // Every record in the log is folded already (else the gap check above
        // fired), but the log would not continue at the right LSN: start afresh.
        start_new_log(expect);
      } else {
        adopt(wal::LogWriter::open(fs_, log_path_, scan.salt, scan.valid_bytes, scan.file_size));
        // A torn tail is cut off before anything new is appended, so that
        // records acknowledged from now on never sit behind damaged bytes.
        if (scan.torn_tail_bytes > 0) writer_->cut(scan.valid_bytes);
        // What was replayed may still be only in the page cache (after a
        // process crash): make it durable before new frames vouch for it.
        writer_->datasync();
        ++stats_.log_syncs;
        next_lsn_ = expect;
        synced_lsn_ = expect - 1;
        synced_end_ = writer_->end();
      }
    }
    start_flusher();
  }

  // The log records after LSN `folded`, replayed in order (shared by open()
  // and replay_read_only(), which changes nothing).
  struct Replayed {
    wal::ScanResult scan;
    std::uint64_t next = 0;  // the LSN after the last one replayed (or folded)
  };
  static Replayed replay_log(const ReadableFile& file, const fs::path& log_path, std::uint64_t folded,
                             const Replay& replay, const ReserveHint& reserve) {
    std::uint64_t expect = folded + 1;  // the next LSN the index needs
    std::uint64_t implicit_lsn = 0;     // version-1 logs number their records 1, 2, ...
    if (reserve) {
      const std::uint64_t end = frames_end_estimate(file);
      reserve(estimate_records(file, end), end);
    }
    const wal::ScanResult scan = wal::scan_file(
        file,
        [&](const wal::RecordView& r) {
          const std::uint64_t lsn = r.lsn ? *r.lsn : ++implicit_lsn;
          if (lsn < expect) return;  // already folded into the snapshot
          if (lsn != expect) {
            throw PersistError::at(ErrorKind::CorruptLog, log_path,
                                   "the log continues at LSN " + std::to_string(lsn) + " but the snapshot ends at " +
                                       std::to_string(expect - 1) + ": records are missing",
                                   r.frame_offset);
          }
          try {
            replay(r);
          } catch (const PersistError& e) {
            throw PersistError::at(ErrorKind::CorruptLog, log_path,
                                   "record with LSN " + std::to_string(lsn) +
                                       " does not apply to the snapshot: " + e.what(),
                                   r.frame_offset);
          }
          ++expect;
        },
        wal::ScanMode::Strict);
    if (scan.version == 2 && scan.base_lsn > folded + 1) {
      throw PersistError::at(ErrorKind::CorruptLog, log_path,
                             "the log starts at LSN " + std::to_string(scan.base_lsn) + " but the snapshot ends at " +
                                 std::to_string(folded) + ": the snapshot is older than the log");
    }
    return {scan, expect};
  }

  // What a log's first bytes say, unchecked: for hints and bounds only,
  // never for replay (scan_file checks everything).
  struct LogPeek {
    std::uint64_t base_lsn = 0;     // v2 (0: not a v2 header)
    std::uint64_t header_len = 0;
    std::uint64_t first_frame = 0;  // the first frame's length with its header (0: none)
    std::uint64_t first_count = 1;  // records in it (v2)
  };
  static LogPeek peek_log(const ReadableFile& f) {
    namespace wf = wal::format;
    std::byte b[wf::kV2HeaderLen + wf::kFrameHeaderLen + 12];  // header, frame header, first_lsn, count
    const std::size_t got = f.read_at(0, b);
    LogPeek p;
    if (got < wf::kV1HeaderLen) return p;
    const bool v2 = coding::get<std::uint32_t>(b + 8) == 2;
    p.header_len = v2 ? wf::kV2HeaderLen : wf::kV1HeaderLen;
    if (v2 && got >= wf::kV2HeaderLen) p.base_lsn = coding::get<std::uint64_t>(b + 24);
    const std::byte* frame = b + p.header_len;
    if (got >= p.header_len + wf::kFrameHeaderLen) {
      p.first_frame = wf::kFrameHeaderLen + coding::get<std::uint32_t>(frame);
    }
    if (v2 && got >= p.header_len + wf::kFrameHeaderLen + 12) {
      p.first_count = std::max<std::uint32_t>(1, coding::get<std::uint32_t>(frame + wf::kFrameHeaderLen + 8));
    }
    return p;
  }

  // Records in a log, guessed from its size and its first frame (records
  // tend to be alike). Only a hint for preallocation: never trusted.
  // Records the log's first `end` bytes can hold, judged by its first frame.
  static std::uint64_t estimate_records(const ReadableFile& f, std::uint64_t end) {
    const LogPeek p = peek_log(f);
    if (p.first_frame == 0 || end <= p.header_len) return 0;
    const std::uint64_t per_record = std::max<std::uint64_t>(p.first_frame / p.first_count, wal::format::kMinOpLen);
    return (end - p.header_len) / per_record;
  }

  // About where the frames end: the log is grown ahead of its frames in
  // zero-filled steps of up to 64 MiB, which must not count as records (a
  // hint 10 % too large made replay 20 % slower). A binary search for the
  // first 4 KiB block from which on the file reads as zeros; a block of
  // zeros inside the frames can end it early, which only makes the hint
  // smaller. About 17 reads of 4 KiB for a 600 MB log.
  static std::uint64_t frames_end_estimate(const ReadableFile& f) {
    constexpr std::uint64_t kBlock = 4096;
    std::array<std::byte, kBlock> buf;
    const auto zero_block = [&](std::uint64_t b) {
      const std::size_t got = f.read_at(b * kBlock, buf);
      return std::all_of(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(got),
                         [](std::byte x) { return x == std::byte{0}; });
    };
    std::uint64_t lo = 0;
    std::uint64_t hi = (f.size() + kBlock - 1) / kBlock;
    while (lo < hi) {
      const std::uint64_t mid = lo + (hi - lo) / 2;
      if (zero_block(mid)) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    return std::min(f.size(), lo * kBlock);
  }

  // ------------------------------------------------------------ commit

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
    // Each waiting commit sleeps on its own condition variable, woken by the
    // leader when it is done or is to lead the next sync: waking a group does
    // not make its threads queue up for mu_ one after the other (as in
    // RocksDB's WriteThread). The waker holds wait_mu while it signals, so the
    // waiter (whose stack holds the entry) cannot return before the signal
    // is out.
    std::mutex wait_mu;
    std::condition_variable wait_cv;
    std::atomic<Wake> wake{Wake::None};  // stored with wait_mu held
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

  // Wake the thread of a queued entry (mu_ held). Done: e.done and e.error
  // are set, and it returns without taking mu_ again; e may be gone as soon
  // as this returns.
  static void wake(Entry& e, Wake why) noexcept {
    std::lock_guard g(e.wait_mu);
    e.wake.store(why, std::memory_order_release);
    e.wait_cv.notify_one();
  }

  // How long a waiting commit yields the CPU in a loop before it sleeps:
  // only while fdatasyncs are quick (a wake-up then costs about as much as
  // the wait), never longer than the configured bound. Quick: on average
  // (one slow sync does not turn it off) under half that bound, as a waiter
  // waits for up to two syncs (the running one, then its own).
  std::chrono::nanoseconds spin_budget() const noexcept {
    if (commit_spin_.count() == 0 || 2 * avg_sync_time_ > commit_spin_) return std::chrono::nanoseconds(0);
    return commit_spin_;
  }

  // Yield the CPU in a loop until done() or `limit` has passed.
  template <class Done>
  static void yield_until(Done done, std::chrono::nanoseconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (!done() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  }

  static Wake wait_for_wake(Entry& e, std::chrono::nanoseconds spin) {
    yield_until([&] { return e.wake.load(std::memory_order_acquire) != Wake::None; }, spin);
    // Also when the spin saw the wake: taking wait_mu waits for the waker to
    // let go of the entry.
    std::unique_lock w(e.wait_mu);
    e.wait_cv.wait(w, [&] { return e.wake.load(std::memory_order_relaxed) != Wake::None; });
    return e.wake.exchange(Wake::None, std::memory_order_relaxed);
  }

  void commit(std::span<const MutationRef> ops, Validate validate, Apply apply) {
    if (ops.empty()) return;
    // Encode outside the lock; the LSN is patched in once it is known. The
    // buffer keeps its capacity from one commit to the next.
    thread_local std::vector<std::byte> frame;
    frame.assign(wal::format::kFrameHeaderLen, std::byte{0});
    coding::put<std::uint64_t>(frame, 0);  // first_lsn, patched below
    coding::put<std::uint32_t>(frame, static_cast<std::uint32_t>(ops.size()));
    coding::put<std::uint64_t>(frame, 0);  // synced_lsn, patched below
    for (const MutationRef& m : ops) {
      if (m.op == wal::Op::Insert) {
        wal::encode_insert(frame, *m.id, m.vector, m.metadata);
      } else {
        wal::encode_erase(frame, *m.id);
      }
    }
    const std::size_t body_len = frame.size() - wal::format::kFrameHeaderLen;
    if (body_len > wal::MAX_FRAME_LEN || ops.size() > UINT32_MAX) {
      throw PersistError::argument("a write batch of " + std::to_string(body_len) +
                                   " bytes exceeds the log's frame limit; split it");
    }

    std::unique_lock lk(mu_);
    throw_if_unusable();
    const auto pending = [this](const VectorId& id) -> std::optional<bool> {
      if (queue_.empty()) return std::nullopt;
      register_pending();
      const auto it = pending_.find(id);
      if (it == pending_.end()) return std::nullopt;
      return it->second.present;
    };
    validate(pending, queued_delta_);

    Entry e(ops, apply, writer_->end(), next_lsn_);
    for (const MutationRef& m : ops) e.size_delta += m.op == wal::Op::Insert ? 1 : -1;
    std::byte* body = frame.data() + wal::format::kFrameHeaderLen;
    coding::store<std::uint64_t>(body, e.first_lsn);
    coding::store<std::uint64_t>(body + 12, synced_lsn_);
    const auto len = static_cast<std::uint32_t>(body_len);
    coding::store<std::uint32_t>(frame.data(), len);
    coding::store<std::uint32_t>(frame.data() + 4, wal::frame_crc_v2(writer_->salt(), len, body));
    try {
      if (policy_.mode() == FsyncPolicy::Mode::Always && (syncing_ || group_target() > 1)) {
        // The leader of the sync that covers this frame writes it with the
        // rest of its group, in one write: appends then cost no system call
        // and do not queue up one after the other on the file. (A lone
        // writer, whose groups are of one, writes its frame itself, without
        // the copy.)
        writer_->stage(frame);
      } else {
        writer_->append(frame);
      }
    } catch (const PersistError& err) {
      // Part of the frame may be in the file, and may even read back as
      // complete: cut it off, so a mutation reported as failed never
      // reappears on recovery. Then refuse further writes.
      try {
        writer_->cut(e.start);
      } catch (...) {
      }
      poison(err.what());
      throw;
    }
    e.end = writer_->end();
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
      // Until the group's fsync, later commits must see this one's effect:
      // the first commit that validates while it is queued enters it in
      // pending_ (register_pending), so a lone writer never pays for that.
      // Group commit: one thread syncs for everything appended so far; the
      // others wait for it, and whoever is still waiting leads the next sync.
      // The seat passes from leader to leader: a leader whose sync ends with
      // commits queued behind it hands the seat to the first of them.
      bool lead = !syncing_;
      while (!e.done) {
        if (lead) {
          seat_ = &e;
          leader_sync(lk);  // hands the seat on
          lead = false;
          continue;
        }
        const auto spin = spin_budget();
        lk.unlock();
        if (wait_for_wake(e, spin) == Wake::Done) break;  // e.done was set (under mu_) before the wake
        lk.lock();
        lead = true;
      }
    } else {
      apply_through(e.end);
    }
    if (e.error) std::rethrow_exception(e.error);
  }

  std::size_t group_target() const noexcept {
    return *std::max_element(recent_groups_.begin(), recent_groups_.end());
  }

  // Called with mu_ held; releases it during the fdatasync.
  void leader_sync(std::unique_lock<std::mutex>& lk) {
    syncing_ = true;  // (already, if the seat was handed over)
    const std::size_t want = group_target();
    if (policy_.mode() == FsyncPolicy::Mode::Always && queue_.size() < want) {
      // Writers are arriving concurrently. Give those that were just
      // acknowledged the chance to append their next record, so that this
      // fsync covers them too instead of groups alternating between one
      // record and many: wait until as many are queued as in the largest of
      // the recent groups, for at most one fsync (adaptive commit delay, as
      // PostgreSQL's commit_delay but self-tuning). A wait that times out
      // costs at most the fsync it was meant to save; the target decays as
      // smaller groups follow.
      // (Its own condition variable: an append wakes the leader only, not the
      // writers waiting for their sync.)
      if (spin_budget().count() > 0) {
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
    const std::uint64_t target = writer_->end();
    const std::uint64_t target_lsn = next_lsn_ - 1;
    const std::size_t group = queue_.size();
    const auto sync_start = std::chrono::steady_clock::now();
    std::exception_ptr err;
    std::string what;
    writer_->take_staged(staged_);
    lk.unlock();
    try {
      writer_->write_staged(staged_);
      writer_->datasync();
    } catch (const std::exception& ex) {
      err = std::current_exception();
      what = ex.what();
    }
    lk.lock();
    if (err) {
      // Under Always nothing after the last good sync was acknowledged: cut
      // it, so that the failed mutations do not come back on recovery.
      // (Under Periodic those records were acknowledged already: keep them.)
      if (policy_.mode() == FsyncPolicy::Mode::Always) {
        try {
          writer_->cut(synced_end_);
        } catch (...) {
        }
      }
      poison(what);
      fail_queue(err);
    } else {
      if (target > synced_end_) synced_end_ = target;
      if (target_lsn > synced_lsn_) synced_lsn_ = target_lsn;
      recent_groups_[recent_at_++ % recent_groups_.size()] = group;
      ++stats_.log_syncs;
      const auto took = std::chrono::steady_clock::now() - sync_start;
      avg_sync_time_ += (std::chrono::duration_cast<std::chrono::nanoseconds>(took) - avg_sync_time_) / 8;
      last_sync_time_ = std::min<std::chrono::nanoseconds>(took,
                                                           std::chrono::milliseconds(2));
      apply_through(synced_end_);
    }
    pass_seat();
    cv_.notify_all();
  }

  // The leader's seat is free: the first commit queued (during the sync that
  // just ended) takes it, else nobody.
  void pass_seat() noexcept {
    if (!queue_.empty()) {
      seat_ = queue_.front();
      wake(*seat_, Wake::Lead);
    } else {
      seat_ = nullptr;
      syncing_ = false;
    }
  }

  // Apply queued entries whose records end at or before `end`, in order.
  void apply_through(std::uint64_t end) {
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
      wake(*x, Wake::Done);
    }
  }

  // The front entry could not be applied although its record is in the log:
  // cut the log back to before it, so that the log never holds a mutation the
  // index does not. Later entries were validated assuming it applied: they
  // fail too.
  void roll_back_from(std::exception_ptr cause) {
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
    } catch (const PersistError& err) {
      poison(err.what());
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

  void fail_queue(const std::exception_ptr& err) noexcept {
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
  void register_pending() {
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
  void unpend(Entry& e) noexcept {
    queued_delta_ -= e.size_delta;
    e.size_delta = 0;
    for (std::size_t i = 0; i < e.registered; ++i) {
      const auto it = pending_.find(*e.ops[i].id);
      if (it != pending_.end() && --it->second.refs == 0) pending_.erase(it);
    }
    e.registered = 0;
  }

  void poison(const std::string& cause) noexcept {
    if (poisoned_) return;
    try {
      poisoned_ = "the write-ahead log failed earlier (" + cause +
                  "); what it holds can no longer be vouched for, so writes are refused: reopen the index";
    } catch (...) {
      poisoned_.emplace("out of memory");  // fits the small-string buffer: no allocation
    }
  }

  // commit() is leaving by an exception (only std::bad_alloc can get here)
  // while its entry is still queued: its record is in the log but will never
  // be applied. Take the entry out (its storage is going away) and refuse
  // further writes; after a reopen the log decides whether it happened, as
  // for any call that failed without an answer.
  void abandon(Entry& e) noexcept {
    queue_.erase(&e);
    unpend(e);
    e.done = true;
    poison("a commit failed after its record was logged");
    if (seat_ == &e) pass_seat();  // it held, or was handed, the seat
    cv_.notify_all();
  }

  void throw_if_unusable() const {
    if (closed_) throw PersistError::at(ErrorKind::InvalidArgument, snapshot_path_, "the index is closed");
    if (poisoned_) throw PersistError::at(ErrorKind::Poisoned, log_path_, *poisoned_);
  }

  // ------------------------------------------------------------ sync, flusher

  void sync() {
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

  void start_flusher() {
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

  void stop_flusher() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    flusher_cv_.notify_all();
    if (flusher_.joinable()) flusher_.join();
  }

  // ------------------------------------------------------------ checkpoint

  void checkpoint(const WriteSnapshot& write_snapshot) {
    std::unique_lock lk(mu_);
    throw_if_unusable();
    // Let in-flight group commits finish; holding mu_ from here on blocks new
    // commits (searches take only the index's read lock and go on).
    cv_.wait(lk, [this] { return !syncing_ && queue_.empty(); });
    throw_if_unusable();
    const std::uint64_t last = next_lsn_ - 1;
    // 1. The snapshot, durably, with the last LSN it holds. A crash from here
    //    until step 2 completes leaves the old log beside it, whose records are
    //    all <= last: replay skips them.
    write_snapshot(last);
    // 2. A fresh log starting at last + 1, atomically replacing the old one.
    try {
      start_new_log(last + 1);
    } catch (const PersistError& err) {
      // Where the failure struck (before or after the rename) decides which
      // file is the log now; only a reopen can tell safely.
      poison(err.what());
      throw;
    }
  }

  // ------------------------------------------------------------ close

  void close() {
    stop_flusher();
    std::unique_lock lk(mu_);
    if (closed_) return;
    cv_.wait(lk, [this] { return !syncing_ && queue_.empty(); });
    closed_ = true;
    std::exception_ptr err;
    if (!poisoned_ && policy_.mode() != FsyncPolicy::Mode::Never && synced_end_ < writer_->end()) {
      try {
        writer_->datasync();
        ++stats_.log_syncs;
        synced_end_ = writer_->end();
      } catch (...) {
        err = std::current_exception();
      }
    }
    try {
      writer_->close();
    } catch (...) {
      if (!err) err = std::current_exception();
    }
    lock_.reset();
    if (err) std::rethrow_exception(err);
  }

  std::optional<std::string> failure() const {
    std::lock_guard lk(mu_);
    return poisoned_;
  }

  wal::WalStats stats() const {
    std::lock_guard lk(mu_);
    return stats_;
  }

  std::uint64_t last_lsn() const {
    std::lock_guard lk(mu_);
    return next_lsn_ - 1;
  }

 private:
  struct Pending {
    bool present = false;
    std::uint32_t refs = 0;
  };

  FileSystem& fs_;
  FsyncPolicy policy_;
  fs::path snapshot_path_;
  fs::path log_path_;
  std::chrono::nanoseconds commit_spin_;
  std::unique_ptr<FileLock> lock_;
  std::unique_ptr<wal::LogWriter> writer_;

  mutable std::mutex mu_;
  std::condition_variable cv_;         // a sync completed, or the leader's seat is free
  std::condition_variable gather_cv_;  // a commit was queued while a leader gathers
  std::uint64_t next_lsn_ = 1;
  std::uint64_t synced_lsn_ = 0;  // highest LSN covered by a completed fsync
  std::uint64_t synced_end_ = 0;
  bool syncing_ = false;   // the leader's seat is taken (a sync is running or about to)
  Entry* seat_ = nullptr;  // the commit whose thread holds the seat, or was handed it
  bool gathering_ = false;  // the leader waits for gather_want_ commits to be queued
  std::size_t gather_want_ = 0;
  wal::LogWriter::Staged staged_;  // the group the leader writes (leader only)
  std::array<std::size_t, 8> recent_groups_{};  // entries covered by each of the last fsyncs
  std::size_t recent_at_ = 0;
  wal::WalStats stats_;
  std::chrono::nanoseconds last_sync_time_{0};
  std::chrono::nanoseconds avg_sync_time_{0};  // moving average (1/8 per sync)
  bool closed_ = false;
  std::optional<std::string> poisoned_;
  CommitQueue queue_;
  std::unordered_map<VectorId, Pending> pending_;
  std::int64_t queued_delta_ = 0;  // size_delta summed over queue_

  std::thread flusher_;
  std::condition_variable flusher_cv_;
  bool stop_ = false;
};

WalEngine::WalEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

WalEngine::~WalEngine() {
  if (!impl_) return;
  try {
    impl_->close();
  } catch (...) {
    // Destructors never throw: close() reports errors to callers who ask.
  }
}

std::unique_ptr<WalEngine> WalEngine::create(const PersistConfig& cfg, const WriteSnapshot& write_snapshot) {
  auto impl = std::make_unique<Impl>(cfg);
  impl->create(write_snapshot);
  return std::unique_ptr<WalEngine>(new WalEngine(std::move(impl)));
}

WalEngine::ReadOnlyReplay WalEngine::replay_read_only(const PersistConfig& cfg,
                                                      const std::function<FileHeader()>& load_snapshot,
                                                      const Replay& replay, const ReserveHint& reserve) {
  FileSystem& fs = cfg.file_system != nullptr ? *cfg.file_system : default_file_system();
  const fs::path log_path = wal::log_path_for(cfg.path);
  std::unique_ptr<ReadableFile> log;
  if (fs.exists(log_path)) {
    try {
      log = fs.open_read(log_path);
    } catch (const PersistError& e) {
      // Removed meanwhile (by a save with discard_log): the snapshot that
      // replaced it, loaded below, covers every record it held.
      if (e.kind() != ErrorKind::Io || e.sys_errno() != ENOENT) throw;
    }
  }
  const FileHeader h = load_snapshot();
  ReadOnlyReplay out;
  out.last_lsn = h.last_lsn;
  if (!log) return out;
  const Impl::Replayed r = Impl::replay_log(*log, log_path, h.last_lsn, replay, reserve);
  out.last_lsn = r.next - 1;
  out.stats.recovered_records = r.next - 1 - h.last_lsn;
  out.stats.torn_tail_bytes = r.scan.torn_tail_bytes;
  out.stats.unsynced_frames_dropped = r.scan.unsynced_frames_dropped;
  return out;
}

std::unique_ptr<WalEngine> WalEngine::open(const PersistConfig& cfg, const std::function<FileHeader()>& load_snapshot,
                                           const Replay& replay, const WriteSnapshot& write_snapshot,
                                           const ReserveHint& reserve) {
  auto impl = std::make_unique<Impl>(cfg);
  impl->open(load_snapshot, replay, write_snapshot, reserve);
  return std::unique_ptr<WalEngine>(new WalEngine(std::move(impl)));
}

void WalEngine::commit(std::span<const MutationRef> ops, Validate validate, Apply apply) {
  impl_->commit(ops, validate, apply);
}
void WalEngine::checkpoint(const WriteSnapshot& write_snapshot) { impl_->checkpoint(write_snapshot); }
void WalEngine::sync() { impl_->sync(); }
void WalEngine::close() { impl_->close(); }
std::uint64_t WalEngine::last_lsn() const { return impl_->last_lsn(); }
std::optional<std::string> WalEngine::failure() const { return impl_->failure(); }
wal::WalStats WalEngine::stats() const { return impl_->stats(); }

}  // namespace iqdb::persist::detail
