// Where a read replica follows the log (docs/DISTRIBUTED.md, "Read
// replicas"): the records a writer appends after the replica's load, then,
// after a checkpoint, the next log from its start. Frames are checked and
// decoded by the one log reader (log_reader.cpp, follow_file); which log is
// current, and whether the one followed was replaced, the storage says
// (IndexStorage::follow_current_log / replaced: the local files or RADOS).
//
// No gap, no duplicate: records at or below the LSN the replica covers are
// skipped, and a record above the next one it needs means the records in
// between are gone: the replica must load anew (Poll::reload). A log is
// read to its end after the storage says it was replaced (nothing is
// appended to it after that), before the next one is opened.
#include "iqdb/persist/detail/log_follower.hpp"

#include <cxxabi.h>

#include <algorithm>
#include <cerrno>
#include <exception>
#include <optional>
#include <string>
#include <utility>

#include "iqdb/persist/detail/index_storage.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/snapshot.hpp"
#include "wal/engine_impl.hpp"
#include "wal/log_reader.hpp"

namespace iqdb::persist::detail {

namespace {
// Logs one poll may move through: each is newer than the one before, so a
// writer checkpointing without pause cannot keep a poll from returning.
constexpr int kMaxHops = 8;

// The records that follow cannot be read any more: a gap, a log cut back or
// replaced under the follower, a record that did not apply.
struct NeedReload {};
// The index threw its own exception applying a record: error, for the
// caller of poll().
struct IndexRefused {
  std::exception_ptr error;  // a PersistError
};
}  // namespace

class LogFollower::Impl {
 public:
  explicit Impl(const PersistConfig& cfg) : storage_(storage_of(cfg)), cfg_(cfg) {}

  void open(const std::function<FileHeader()>& load_snapshot, const WalEngine::Replay& replay,
            const WalEngine::ReserveHint& reserve) {
    load_again_if_removed(*storage_, [&] { open_once(load_snapshot, replay, reserve); });
  }

  void open_once(const std::function<FileHeader()>& load_snapshot, const WalEngine::Replay& replay,
                 const WalEngine::ReserveHint& reserve) {
    FileHeader h;
    log_ = storage_->follow_log_with_snapshot(load_snapshot, h);
    loaded_ = h;
    last_ = h.last_lsn;
    if (!log_) return;
    const ReadableFile& f = log_->refresh();
    const Replayed r = replay_log(*storage_, f, storage_->log_path(), h.last_lsn, replay, reserve, /*live=*/true);
    if (r.scan.version != 2) {
      throw PersistError::at(ErrorKind::Unsupported, storage_->log_path(),
                             "a version-1 log cannot be followed: open the index with the WAL once to migrate it");
    }
    last_ = r.next - 1;
    at_ = r.end;
    stats_.recovered_records = last_ - h.last_lsn;
    stats_.torn_tail_bytes = r.scan.torn_tail_bytes;
    stats_.unsynced_frames_dropped = r.scan.unsynced_frames_dropped;
  }

  Poll poll(const WalEngine::Replay& replay) {
    Poll out;
    // A poll that failed after applying records it had not recorded a
    // follow point for: the checks below cannot vouch for them.
    if (applied_past_point_) {
      out.reload = true;
      return out;
    }
    const std::uint64_t before = last_;
    try {
      follow_logs(replay);
      // Local files: a save without the WAL may keep the log followed.
      if (log_ && storage_->log_outlives_snapshots() && saved_over(snapshot_beside_log())) throw NeedReload{};
    } catch (const NeedReload&) {
      out.reload = true;
    } catch (const IndexRefused& refused) {
      std::rethrow_exception(refused.error);
    } catch (const PersistError& e) {
      // I/O can be retried; anything else read from a log that moved under
      // the follower is settled by a load anew (whose strict read reports
      // real damage).
      if (e.kind() == ErrorKind::Io) throw;
      out.reload = true;
    }
    out.applied = last_ - before;
    return out;
  }

  // How far the log goes now, applying nothing. A frame that looks damaged
  // with frames after it is read again as a catch-up reads it (a frame
  // being written looks so for a while; wal::DamageSettler); damage that
  // stays in a log that still holds what the replica read is CorruptLog,
  // as a catch-up reports it.
  std::uint64_t probe() {
    if (!log_) return last_;
    try {
      const wal::Followed r = follow_settled({}, /*check_last_frame=*/false);
      return std::max(last_, r.at.next_lsn - 1);
    } catch (const PersistError& e) {
      // A log no longer as the replica read it (cut back, replaced; on
      // RADOS removed by the collection behind a second checkpoint, which
      // reads as objects missing, TruncatedPayload): the next catch-up
      // loads anew; until then the replica's LSN is all it can vouch for.
      // (A catch-up that failed after applying records past the follow
      // point does not change that: the damage it met is still there, and
      // lag() says so as catch_up() does.)
      if (e.kind() == ErrorKind::Io || holds_what_was_read()) throw;
    }
    return last_;
  }

  // Whether the log followed is still the current one and still holds,
  // frame for frame, what was read of it (re-read from its start: the
  // chains of frame CRCs agree). A log cut back after a failed fsync and
  // written again, or replaced, does not; nor does a follower that has no
  // log open (it cannot tell), nor one whose failed poll applied records
  // past the follow point (nothing vouches for those).
  bool intact() { return !applied_past_point_ && holds_what_was_read(); }

  // The same check up to the follow point alone, whatever a failed poll
  // applied after it.
  bool holds_what_was_read() {
    if (!log_) return false;
    try {
      if (storage_->replaced(*log_, at_.salt)) return false;
      const wal::Followed r = wal::follow_file(log_->refresh(), wal::FollowPoint{}, [](const wal::RecordView&) {},
                                               /*check_last_frame=*/false, at_.offset);
      return r.at.offset == at_.offset && r.at.salt == at_.salt && r.at.next_lsn == at_.next_lsn &&
             r.at.chain == at_.chain && r.at.last_frame == at_.last_frame;
    } catch (const PersistError& e) {
      if (e.kind() == ErrorKind::Io) throw;
      return false;  // damaged now: a load says how
    }
  }

  std::uint64_t last_lsn() const noexcept { return last_; }
  std::unique_ptr<ChangeWatch> watch_changes(std::function<void()> wake) {
    return storage_->watch_changes(std::move(wake));
  }
  wal::WalStats load_stats() const noexcept { return stats_; }

 private:
  void follow_logs(const WalEngine::Replay& replay) {
    for (int hop = 0; hop < kMaxHops; ++hop) {
      if (!log_ && !open_current()) return;
      read_on(replay);
      if (!storage_->replaced(*log_, at_.salt)) return;
      read_on(replay);  // what was appended before it was replaced
      log_.reset();
    }
  }

  // The current log, to read from its start; false when there is none yet
  // (a checkpoint published its snapshot and has not created the log).
  bool open_current() {
    log_ = storage_->follow_current_log();
    at_ = {};
    fresh_log_ = true;
    if (log_) return true;
    // No log: a snapshot newer than the replica holds records it lacks;
    // one saved without the WAL over the state loaded may hold another
    // state at the same LSN; and one older than the replica replaced the
    // index (a checkpoint's covers every record the replica read).
    const std::optional<FileHeader> now = current_snapshot();
    if ((now && now->last_lsn != last_) || saved_over(now)) throw NeedReload{};
    return false;
  }

  // The snapshot's header read beside a log that stays current; one that
  // cannot be read (damaged) is not taken for a save: the log is followed
  // on, and a load anew reports the damage when one is due.
  std::optional<FileHeader> snapshot_beside_log() {
    try {
      return current_snapshot();
    } catch (const PersistError& e) {
      if (e.kind() == ErrorKind::Io) throw;
    }
    return std::nullopt;
  }

  std::optional<FileHeader> current_snapshot() {
    FileSystem& fs = storage_->snapshot_fs();
    if (!fs.exists(cfg_.path)) return std::nullopt;
    return inspect_snapshot(fs, cfg_.path).header;
  }

  // Whether `now` was saved without the WAL and is not the snapshot the
  // replica loaded: it may replace the replica's state at the LSN it covers
  // (docs/FORMAT.md, "Saves without the WAL"). (A snapshot of a writer with
  // the WAL at that LSN holds the state the log gave the replica.)
  bool saved_over(const std::optional<FileHeader>& now) const {
    if (!now || (now->optional_flags & format::OPTIONAL_FLAG_SAVED_WITHOUT_WAL) == 0) return false;
    return now->header_crc != loaded_.header_crc || now->payload_crc != loaded_.payload_crc ||
           now->last_lsn != loaded_.last_lsn || now->stored_len != loaded_.stored_len ||
           now->optional_flags != loaded_.optional_flags;
  }

  // The complete frames after at_ in the log followed.
  void read_on(const WalEngine::Replay& replay) {
    const auto on_record = [&](const wal::RecordView& r) {
      const std::uint64_t lsn = *r.lsn;
      // A log opened after the one followed starts past what the replica
      // holds (a checkpoint's, or a writer's that claimed an LSN above the
      // files'): one that starts at or below it was written over another
      // state (the index was replaced by an older one: a restored copy).
      if (std::exchange(fresh_log_, false) && lsn <= last_) throw NeedReload{};
      if (lsn <= last_) return;
      if (lsn != last_ + 1) throw NeedReload{};
      try {
        replay(r);
      } catch (const PersistError&) {
        throw;  // the index refused it: poll() loads anew (Io: for the caller)
      } catch (const abi::__forced_unwind&) {
        throw;  // a thread ending (pthread_exit)
      } catch (...) {
        // An index type's own exception (or a shortage): for the caller,
        // typed. Not thrown as CorruptLog from here: follow_settled would
        // take it for a frame being written and read it again.
        const PersistError refused = record_not_applied(std::current_exception(), r, lsn, storage_->log_path());
        throw IndexRefused{std::make_exception_ptr(refused)};
      }
      last_ = lsn;
    };
    const std::uint64_t at_start = last_;
    wal::Followed r;
    try {
      r = follow_settled(on_record, /*check_last_frame=*/true);
    } catch (...) {
      // Records applied, at_ not moved past them: a later check of the frame
      // read last (or promote's check of the log) would not cover them.
      if (last_ != at_start) applied_past_point_ = true;
      throw;
    }
    // A new log that starts past the replica, or (no record in it yet) at
    // or below what it held.
    if (r.base_lsn > at_start + 1 || (r.base_lsn != 0 && r.base_lsn <= at_start)) throw NeedReload{};
    at_ = r.at;
    if (r.pending_bytes > 0 || r.zero_bytes > 0) {
      // Bytes that do not form a frame yet: a frame being written (local
      // files), or, where appends are atomic (RADOS), damage; zeros: the
      // padding of a local log, damage on RADOS (which never pads).
      wal::ScanResult scan;
      scan.valid_bytes = at_.offset;
      scan.torn_tail_bytes = r.pending_bytes;
      scan.file_size = at_.offset + std::max(r.pending_bytes, r.zero_bytes);
      storage_->check_scan(scan);
    }
  }

  // A frame read while the writer was writing it looks damaged, and frames
  // written after it, read a moment later, vouch for it (CorruptLog). Read
  // again, as wal::DamageSettler says. A writer writing fast can keep a
  // frame in flight at each read, further on each time: the read then ends
  // before the frame found last, and the frames before it, complete when
  // they were read, are what it returns; the next read goes on from there.
  // (On RADOS, where only acknowledged sizes are read, the verdict does not
  // change: it costs the waits.)
  // A catch-up checks the frame read last: frames a reader saw can be cut
  // later (local files: a failed fsync; both storages: an entry the index
  // could not apply is cut off the log, and the next commit takes its place).
  wal::Followed follow_settled(const std::function<void(const wal::RecordView&)>& on_record, bool check_last_frame) {
    wal::DamageSettler settle;
    std::uint64_t until = UINT64_MAX;
    for (;;) {
      try {
        return wal::follow_file(log_->refresh(), at_, on_record, check_last_frame, until);
      } catch (const PersistError& e) {
        if (e.kind() != ErrorKind::CorruptLog) throw;
        const std::uint64_t at = e.offset().value_or(UINT64_MAX);
        if (settle.read_again(at)) continue;
        if (!settle.moving() || until != UINT64_MAX || at == UINT64_MAX) throw;
        until = at;
      }
    }
  }

  std::shared_ptr<IndexStorage> storage_;
  PersistConfig cfg_;
  std::unique_ptr<FollowedLog> log_;
  wal::FollowPoint at_;
  FileHeader loaded_;  // the header of the snapshot loaded
  std::uint64_t last_ = 0;
  bool applied_past_point_ = false;  // a failed poll applied records after at_
  bool fresh_log_ = false;           // no record read yet of the log open_current() opened
  wal::WalStats stats_;
};

std::unique_ptr<LogFollower> LogFollower::open(const PersistConfig& cfg,
                                               const std::function<FileHeader()>& load_snapshot,
                                               const WalEngine::Replay& replay, const WalEngine::ReserveHint& reserve) {
  auto impl = std::make_unique<Impl>(cfg);
  impl->open(load_snapshot, replay, reserve);
  return std::unique_ptr<LogFollower>(new LogFollower(std::move(impl)));
}

LogFollower::LogFollower(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LogFollower::~LogFollower() = default;
LogFollower::Poll LogFollower::poll(const WalEngine::Replay& replay) { return impl_->poll(replay); }
std::uint64_t LogFollower::probe() { return impl_->probe(); }
bool LogFollower::intact() { return impl_->intact(); }
std::unique_ptr<ChangeWatch> LogFollower::watch_changes(std::function<void()> wake) {
  return impl_->watch_changes(std::move(wake));
}
std::uint64_t LogFollower::last_lsn() const noexcept { return impl_->last_lsn(); }
wal::WalStats LogFollower::load_stats() const noexcept { return impl_->load_stats(); }

}  // namespace iqdb::persist::detail
