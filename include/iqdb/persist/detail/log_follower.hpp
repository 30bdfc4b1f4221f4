// The log follower behind ReadReplica (not a public API: ReadReplica is a
// template, so it lives in a header). It loads the snapshot and the records
// of its log, then reads what the writer appends, follows a checkpoint from
// one log to the next without a gap or a duplicate, and says when the
// records it needs are gone (the caller then loads anew). It never takes the
// writer lock and changes nothing in storage. docs/DISTRIBUTED.md, "Read
// replicas".
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "iqdb/persist/config.hpp"
#include "iqdb/persist/detail/index_storage.hpp"
#include "iqdb/persist/detail/wal_engine.hpp"
#include "iqdb/persist/format.hpp"
#include "iqdb/persist/wal.hpp"

namespace iqdb::persist::detail {

class LogFollower {
 public:
  // Load as load() without the WAL does (a damaged log throws CorruptLog),
  // keeping the log to follow.
  static std::unique_ptr<LogFollower> open(const PersistConfig& cfg, const std::function<FileHeader()>& load_snapshot,
                                           const WalEngine::Replay& replay, const WalEngine::ReserveHint& reserve = {});
  LogFollower(const LogFollower&) = delete;
  LogFollower& operator=(const LogFollower&) = delete;
  ~LogFollower();

  struct Poll {
    std::uint64_t applied = 0;  // records replayed by this call
    // The records that follow last_lsn() cannot be read any more (two
    // checkpoints passed since, a save removed the log, the log was cut back
    // under the replica or a record did not apply): load anew.
    bool reload = false;
  };
  // Replay the records appended since the last call, in LSN order, each once;
  // moves on to the next log after a checkpoint. Throws PersistError for
  // I/O errors (the follower is unchanged and the call can be repeated).
  Poll poll(const WalEngine::Replay& replay);
  // The last LSN the storage holds now (read, nothing applied); at least
  // last_lsn(). Records of a log that replaced the one followed are not
  // counted.
  std::uint64_t probe();
  // Whether the state replayed so far still stands on the storage: the log
  // followed is the current one and holds, frame for frame, the frames
  // read of it (re-read from its start). False also when no log is open.
  // A log cut back under the follower (a failed fsync's frames) and written
  // again is not intact, even where the new frames line up with the old.
  bool intact();
  // The storage's wake-ups for this log (IndexStorage::watch_changes);
  // nullptr where there are none.
  std::unique_ptr<ChangeWatch> watch_changes(std::function<void()> wake);
  // The LSN the replayed state covers.
  std::uint64_t last_lsn() const noexcept;
  // What open() replayed: recovered_records, torn_tail_bytes, unsynced_frames_dropped.
  wal::WalStats load_stats() const noexcept;

  class Impl;

 private:
  explicit LogFollower(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace iqdb::persist::detail
