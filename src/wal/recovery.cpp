// How the engine starts: create() (open_with) writes a base snapshot and a new
// log; open() (load) loads the snapshot, replays the log after it
// (replay.cpp), cuts a torn tail off and continues the log, or migrates a
// version-1 log (docs/FORMAT.md, "Checkpoint" for open_with's order).
#include <algorithm>

#include "iqdb/persist/error.hpp"
#include "iqdb/persist/snapshot.hpp"
#include "wal/engine_impl.hpp"

namespace iqdb::persist::detail {

std::shared_ptr<IndexStorage> storage_of(const PersistConfig& cfg) {
  if (cfg.storage) return cfg.storage;
  return make_local_storage(cfg.file_system != nullptr ? *cfg.file_system : default_file_system(), cfg.path);
}

WalEngine::Impl::Impl(const PersistConfig& cfg)
    : storage_(storage_of(cfg)),
      fs_(storage_->snapshot_fs()),
      policy_(cfg.fsync_policy),
      snapshot_path_(cfg.path),
      log_path_(storage_->log_path()),
      // Clamped before it becomes nanoseconds (2^63 - 1 µs would overflow).
      commit_spin_(std::clamp(cfg.commit_spin, std::chrono::microseconds(0), std::chrono::microseconds(1'000'000))),
      max_frame_(std::min<std::uint64_t>(storage_->max_frame_bytes(), wal::MAX_FRAME_LEN)) {}

WalEngine::Impl::~Impl() {
  stop_checkpointer();
  stop_flusher();
}

// The log is grown ahead of its frames in zero-filled steps under every
// policy: under Always and Periodic each fdatasync then carries data
// only; under Periodic and Never frames are copied into a mapping of that
// space (where the file system offers one) instead of written one system
// call at a time. (Under Always the frames of a group go out in one
// pwrite before its fdatasync, which a mapping would not make cheaper.)
void WalEngine::Impl::adopt(std::unique_ptr<LogSink> w) {
  if (policy_.mode() != FsyncPolicy::Mode::Always) w->use_mapping();
  writer_ = std::move(w);
}

void WalEngine::Impl::start_new_log(std::uint64_t base_lsn) {
  auto w = storage_->create_log(base_lsn);
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
  if (auto_bytes_ != 0) auto_at_ = auto_bytes_;  // a new log: the bound counts from its start
}

void WalEngine::Impl::create(const WriteSnapshot& write_snapshot, bool replace_existing) {
  lock_and_clean();
  if (!replace_existing) refuse_replacing_writes(fs_, *storage_, snapshot_path_);
  // An index may already live here. The new snapshot claims every LSN its
  // files could hold, then the new log starts above them: a crash between
  // the two leaves the new snapshot beside an old log whose records are
  // all "folded", so recovery gives the new index, never the old snapshot
  // without its log, nor the old log replayed onto the new snapshot.
  // Where any file exists, the new snapshot claims one LSN more than the
  // old files could hold: a read replica that followed the old index (to
  // that bound at most) then finds a snapshot newer than its state and
  // loads anew, instead of applying the new log onto the old contents.
  std::uint64_t floor = lsn_bound_of_existing_files();
  if (floor >= ::iqdb::persist::format::MAX_LSN) {
    throw PersistError::at(ErrorKind::InvalidArgument, log_path_,
                           "the snapshot and log here could hold LSNs up to " + std::to_string(floor) +
                               ", the highest is 2^63 - 1: a new index cannot start above them (remove the "
                               "old files, if they are damaged or not an index's)");
  }
  if (floor != 0 || fs_.exists(snapshot_path_) || storage_->log_exists()) ++floor;
  write_snapshot(floor);
  start_new_log(floor + 1);
  start_flusher();
}

// An LSN at least as high as any the snapshot and log at this path hold,
// read from their headers and sizes only (each record takes >= 10 bytes).
// Damaged or foreign files count for what their size could hold.
std::uint64_t WalEngine::Impl::lsn_bound_of_existing_files() {
  std::uint64_t floor = 0;
  if (fs_.exists(snapshot_path_)) {
    try {
      floor = inspect_snapshot(fs_, snapshot_path_).header.last_lsn;
    } catch (const PersistError&) {
    }
  }
  if (storage_->log_exists()) {
    const std::unique_ptr<ReadableFile> f = storage_->open_log();
    floor = lsn_bound_with_log(floor, *f);
  }
  return floor;
}

void WalEngine::Impl::open(const std::function<FileHeader()>& load_snapshot, const Replay& replay,
                           const WriteSnapshot& write_snapshot, const ReserveHint& reserve) {
  lock_and_clean();
  const FileHeader h = load_snapshot();
  const std::uint64_t folded = h.last_lsn;
  // A save without the WAL kept the LSN its files had, so that LSN may name
  // two states: the one a read replica followed the log to, and this
  // snapshot's. Before anything is logged, the state loaded is written
  // again, one LSN higher: a replica that holds the old state then finds a
  // snapshot newer than it and loads anew, instead of applying the records
  // logged from here on to the old contents. (At the highest LSN nothing
  // can be logged: the open goes on as before, and every write is refused.)
  const bool saved_without_wal = (h.optional_flags & ::iqdb::persist::format::OPTIONAL_FLAG_SAVED_WITHOUT_WAL) != 0;
  const bool has_log = storage_->log_exists();
  Replayed r;
  r.next = folded + 1;
  if (has_log) {
    const std::unique_ptr<ReadableFile> file = storage_->open_log();
    r = replay_log(*storage_, *file, log_path_, folded, replay, reserve, /*live=*/false);  // (the lock is held)
  }
  const std::uint64_t expect = r.next;  // the next LSN the index needs
  stats_.recovered_records = expect - (folded + 1);
  stats_.torn_tail_bytes = r.scan.torn_tail_bytes;
  stats_.unsynced_frames_dropped = r.scan.unsynced_frames_dropped;
  stats_.migrated_v1_log = r.scan.version == 1;
  if (saved_without_wal && expect - 1 < ::iqdb::persist::format::MAX_LSN) {
    // (Records above the save's LSN are not there unless the files were
    // changed by hand: they are applied above and fold into the new snapshot.)
    claim_above(expect - 1, write_snapshot);
  } else if (!has_log) {
    start_new_log(expect);
  } else if (r.scan.version == 1) {
    // A reference (version 1) log: fold it into a version-3 snapshot now and
    // continue with a version-2 log. A crash in between is safe: the new
    // snapshot's last LSN counts the version-1 records it folded.
    next_lsn_ = expect;
    write_snapshot(expect - 1);
    start_new_log(expect);
  } else {
    continue_log(r.scan, expect);
  }
  start_flusher();
}

// The state loaded (covering `last`) written as a snapshot at last + 1,
// then a new log above it. A crash in between leaves the new snapshot
// beside the old log, whose records it covers: the same state.
// Precondition: last < format::MAX_LSN.
void WalEngine::Impl::claim_above(std::uint64_t last, const WriteSnapshot& write_snapshot) {
  next_lsn_ = last + 1;
  write_snapshot(last + 1);
  start_new_log(last + 2);
}

// After replay of a version-2 log: append to it from where its valid
// frames end, or start a new one if it would not continue at `expect`.
void WalEngine::Impl::continue_log(const wal::ScanResult& scan, std::uint64_t expect) {
  const std::uint64_t log_next = scan.last_lsn ? *scan.last_lsn + 1 : scan.base_lsn;
  if (log_next != expect) {
    // Every record in the log is folded already (else replay's gap check
    // fired), but the log would not continue at the right LSN: start afresh.
    start_new_log(expect);
    return;
  }
  adopt(storage_->continue_log(scan.salt, scan.valid_bytes, scan.file_size));
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

}  // namespace iqdb::persist::detail
