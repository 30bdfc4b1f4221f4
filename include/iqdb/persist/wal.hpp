// The write-ahead log: reading, checking and repairing log files.
//
// PersistedIndex writes and replays the log itself (PersistConfig::wal_enabled);
// these functions are for tools and operators: the CLI's `wal dump` and
// `wal repair` are thin wrappers over them. Byte layout: docs/FORMAT.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>

#include "iqdb/persist/types.hpp"

namespace iqdb::persist {

class FileSystem;

namespace wal {

// Mutation kinds. On-disk tags: never renumber.
enum class Op : std::uint8_t { Insert = 1, Erase = 2 };

// Version of the log format this library writes.
inline constexpr std::uint32_t CURRENT_VERSION = 2;
// Oldest log version this library reads (1: the reference's logs).
inline constexpr std::uint32_t MIN_READ_VERSION = 1;
// Largest frame body accepted (bytes), as in the reference.
inline constexpr std::uint32_t MAX_FRAME_LEN = 256u << 20;

// The log beside a snapshot: "<snapshot>.wal".
std::filesystem::path log_path_for(const std::filesystem::path& snapshot);

// One logged mutation, valid only during the callback that receives it.
struct RecordView {
  std::optional<std::uint64_t> lsn;  // nullopt for version-1 (reference) logs
  Op op = Op::Insert;
  const VectorId* id = nullptr;
  std::span<const float> vector;       // empty for Erase
  const Metadata* metadata = nullptr;  // nullptr when the insert has none
  std::uint64_t frame_offset = 0;      // file offset of the frame holding it
  std::uint32_t index_in_frame = 0;    // position within a batch frame
  std::uint32_t frame_records = 1;     // records in that frame
};

// What a scan of a log found.
struct ScanResult {
  std::uint32_t version = 0;
  std::uint64_t salt = 0;      // v2: this log generation's salt
  std::uint64_t base_lsn = 0;  // v2: LSN of the first record this log holds
  std::uint64_t records = 0;   // records in the valid prefix
  std::uint64_t frames = 0;    // frames in the valid prefix
  std::optional<std::uint64_t> last_lsn;  // v2: LSN of the last valid record
  std::uint64_t valid_bytes = 0;      // header + valid frames: where the next frame goes
  std::uint64_t torn_tail_bytes = 0;  // bytes after the valid prefix up to its last non-zero byte (not the zero padding after it)
  // v2: intact frames inside the torn tail, dropped because they were written
  // before the damaged frame was known durable (writes a power loss
  // persisted out of order).
  std::uint64_t unsynced_frames_dropped = 0;
  std::uint64_t file_size = 0;
  // Set when a damaged frame is followed by an intact frame that records it
  // as durable: corruption in the middle of the log, not a torn tail. The
  // counts say what lies beyond it.
  std::optional<std::uint64_t> corrupt_offset;
  std::uint64_t frames_after_corruption = 0;
  std::uint64_t records_after_corruption = 0;
  // Bytes the scan checksummed: the valid frames, plus the candidate frames
  // it tried after damage. The search is budgeted: at most about 9 times the
  // file's size plus 16 MiB, whatever the file holds.
  std::uint64_t bytes_checksummed = 0;
};

// Counters of an open write-ahead log (PersistedIndex::wal_stats()).
struct WalStats {
  // Since the index was opened:
  std::uint64_t commits = 0;    // insert / erase / write calls logged (a batch is one)
  std::uint64_t records = 0;    // mutations logged
  std::uint64_t log_syncs = 0;  // fdatasyncs of the log (commits / log_syncs: the group-commit factor)
  std::uint64_t auto_checkpoints = 0;          // checkpoints PersistConfig::checkpoint_log_bytes ran that succeeded
  std::uint64_t auto_checkpoint_failures = 0;  // those that failed (the log goes on); not in auto_checkpoints
  // What opening it found (load(); zero after open_with()):
  std::uint64_t recovered_records = 0;        // log records replayed onto the snapshot
  std::uint64_t torn_tail_bytes = 0;          // damaged bytes cut from the end of the log
  std::uint64_t unsynced_frames_dropped = 0;  // intact frames dropped with the torn tail (never durable)
  bool migrated_v1_log = false;               // a reference (version-1) log was folded and replaced
};

enum class ScanMode {
  // A damaged frame followed by intact frames throws PersistError(CorruptLog)
  // naming the offset. A damaged or incomplete final frame is a torn tail.
  Strict,
  // Report mid-log corruption in ScanResult instead of throwing; records
  // after it are not delivered.
  Report,
};

// Read the log at `path` (version 1 or 2), calling on_record (may be empty)
// for each record of the valid prefix, in order. Every length is checked
// against the bytes that remain before anything is allocated. Throws
// PersistError for a log that cannot be read (bad magic or header, I/O) and,
// in Strict mode, for mid-log corruption.
ScanResult scan_log(FileSystem& fs, const std::filesystem::path& path,
                    const std::function<void(const RecordView&)>& on_record, ScanMode mode = ScanMode::Strict);

// The same, for a log that a writer may be appending to (a load without the
// WAL, a replica, the CLI's dump and copy hold no lock). A group's leader
// writes its frames outside the log's lock while later commits append after
// them, so a reader can meet a frame being written with intact frames after
// it, which reads as damage in the middle. Here the scan reads the log again
// when it finds that (each record still reaches on_record exactly once), and
// a frame found damaged at the same offset again after waits of 2, 4, ...
// 32 ms (62 ms in all) is damage. Real damage therefore costs those waits.
ScanResult scan_live_log(FileSystem& fs, const std::filesystem::path& path,
                         const std::function<void(const RecordView&)>& on_record,
                         ScanMode mode = ScanMode::Strict);

// Cut the log after its last valid frame, durably; returns the scan that
// decided where (what was dropped: torn_tail_bytes, and for mid-log
// corruption, frames/records_after_corruption). Must not run while a writer
// has the index open (it takes the index's lock: throws Locked).
ScanResult repair_log(FileSystem& fs, const std::filesystem::path& path);

}  // namespace wal
}  // namespace iqdb::persist
