// Reading write-ahead logs (internal entry point used by scan_log and replay).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>

#include "iqdb/persist/file_system.hpp"
#include "iqdb/persist/wal.hpp"

namespace iqdb::persist::wal {

// Following a version-2 log that a writer is appending to (read replicas,
// src/wal/log_follower.cpp): where the next frame is expected.
struct FollowPoint {
  std::uint64_t offset = 0;  // 0: the header has not been read yet
  std::uint64_t salt = 0;
  std::uint64_t next_lsn = 0;
  // The stored CRCs of the frames before `offset`, chained in order (a
  // CRC-32C over them): two reads of a log that end at the same offset with
  // the same chain read the same frames (a check that the log was not cut
  // back and written again under a reader).
  std::uint32_t chain = 0;
  // The last of those frames (its offset, 0 for none, and stored CRC):
  // following on checks first that it is still there.
  std::uint64_t last_frame = 0;
  std::uint32_t last_crc = 0;
};

// A whole log, checked; `end` (optional): where a follower goes on after
// the scan (at its valid_bytes). `live`: a writer may be appending to the
// log (wal::scan_live_log): a frame that looks damaged is read again from
// the file at once (a scan reads the log in chunks, at different moments:
// a frame read before the writer finished it can sit before frames read
// after), and, while intact frames after it vouch for it, as DamageSettler
// says, before it counts.
ScanResult scan_file(const ReadableFile& file, const std::function<void(const RecordView&)>& on_record, ScanMode mode,
                     FollowPoint* end = nullptr, bool live = false);

// Whether a reader that found a log damaged at `offset` reads it again: a
// log a writer is appending to can show a frame being written (a group's
// leader writes its frames outside the log's lock while later commits
// append after them, and can be descheduled meanwhile), which reads as a
// damaged frame with intact ones after it. Read again at once while the
// damage moves (a writer writing fast), at most kMaxRereads times; a frame
// found damaged at the same offset is read again after 2, 4, ... 32 ms
// (62 ms in all), then the damage counts.
class DamageSettler {
 public:
  static constexpr int kMaxRereads = 16;
  static constexpr int kMaxWaits = 5;
  // False: the damage counts. True: read again (it waited when due).
  bool read_again(std::uint64_t offset);
  // Once read_again said false: whether the last read found the damage
  // further on than the read before (a writer writing fast: a frame in
  // flight at each read), rather than where it was.
  bool moving() const noexcept { return moving_; }

 private:
  std::optional<std::uint64_t> damaged_at_;
  int rereads_ = 0;
  int waits_ = 0;
  bool moving_ = false;
};

struct Followed {
  FollowPoint at;              // after the last complete frame
  std::uint64_t base_lsn = 0;  // the header's, when this call read it (else 0)
  std::uint64_t records = 0;   // delivered by this call
  // Non-zero bytes after `at` that do not form a complete frame: a frame
  // being written (local files), or damage.
  std::uint64_t pending_bytes = 0;
  // Zero bytes after `at` up to the end of the file read, when the read
  // stopped at them (not at `until`): a local log's padding; on RADOS,
  // where nothing pads, damage (IndexStorage::check_scan).
  std::uint64_t zero_bytes = 0;
};
// The complete frames from `from` on, each checked as scan_file checks it and
// delivered to on_record; stops at the first frame that is not complete (the
// writer may be writing it), unless intact frames after it vouch for it
// (CorruptLog, as scan_file in Strict mode).
// From offset 0 the header is read and checked first; a version-1 log
// cannot be followed (Unsupported). A frame whose LSN does not continue
// `from` is CorruptLog, and so, when `check_last_frame`, is `from.last_frame`
// found changed (the log was cut back and written again; one read of its
// header). No frame starting at or after `until` is read.
Followed follow_file(const ReadableFile& file, const FollowPoint& from,
                     const std::function<void(const RecordView&)>& on_record, bool check_last_frame,
                     std::uint64_t until = UINT64_MAX);

}  // namespace iqdb::persist::wal
