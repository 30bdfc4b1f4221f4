// Where an index's snapshot and write-ahead log live: the seam one level
// above FileSystem (docs/DISTRIBUTED.md, "The seam"). Not a public API to
// implement: the core library has the local files (a snapshot file and a log
// file beside it, through a FileSystem, so the crash simulator and every
// fault-injecting test see each write), the optional iqdb::persist_rados
// component has a RADOS pool (rados_persist_config in rados.hpp).
//
// The log's bytes are the same everywhere (docs/FORMAT.md, "Write-ahead
// log"): a version-2 header and frames, read by the one log reader; only
// where they are stored and how they are made durable differ.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "iqdb/persist/error.hpp"
#include "iqdb/persist/file_system.hpp"
#include "iqdb/persist/format.hpp"
#include "iqdb/persist/wal.hpp"

namespace iqdb::persist {

namespace detail {

// A log open for appending. The engine serialises calls, except that one
// thread may run write_staged() and datasync() while another (holding the
// engine's lock) appends, stages or reads end().
class LogSink {
 public:
  virtual ~LogSink() = default;

  // Bytes of a group, staged in memory and written by one thread.
  struct Staged {
    std::uint64_t offset = 0;
    std::vector<std::byte> bytes;
  };

  // A frame at the end; durable once a later datasync() returns. On failure
  // (any exception) the end is unchanged, though bytes may have reached
  // storage: the engine cuts them off and refuses further writes.
  virtual void append(std::span<const std::byte> frame) = 0;
  // Everything appended or written so far is durable when this returns (a
  // local file: fdatasync; RADOS: the group went out in one operation that
  // every replica acknowledged). A failure leaves the outcome unknown (but see refused_whole()).
  virtual void datasync() = 0;
  // Group commit: stage() counts the frame in end(); take_staged() (under the
  // engine's lock) hands over the staged bytes before log offset `upto` (a
  // frame boundary; the rest stays staged, for the next group);
  // write_staged() writes them. stage() only copies into memory: it may
  // fail only for want of memory, and then must change nothing (the engine
  // neither cuts nor poisons then: the frames staged before are other
  // commits', waiting for their sync).
  virtual void stage(std::span<const std::byte> frame) = 0;
  virtual void take_staged(Staged& out, std::uint64_t upto) = 0;
  virtual void write_staged(const Staged& s) = 0;
  // The most bytes of frames one group commit may hand to write_staged() and
  // datasync() (RADOS: one write operation, which the OSD refuses past
  // osd_max_write_size). The engine puts whole frames into a group up to this
  // bound (a single larger frame, up to the storage's max_frame_bytes, goes
  // alone); the commits left out go into the next group, in LSN order.
  virtual std::uint64_t max_group_bytes() const noexcept { return UINT64_MAX; }
  // Drop the log's bytes after `end`, durably.
  virtual void cut(std::uint64_t end) = 0;
  virtual void close() = 0;
  // A hint: appends need not each be followed by a datasync (Periodic, Never).
  virtual void use_mapping() noexcept {}
  // After a datasync() that threw: whether the storage refused all of it for
  // certain, so that none of its bytes can be in the log, and this sink
  // holds them as before, unsent (RADOS: a full pool refused the first
  // write operation with EDQUOT or ENOSPC). Under Always the engine then
  // cuts them off and takes further writes instead of refusing them.
  virtual bool refused_whole() const noexcept { return false; }

  virtual std::uint64_t end() const noexcept = 0;
  virtual std::uint64_t salt() const noexcept = 0;
};

// For LogSink::take_staged: moves the bytes of `staged` (which start at log
// offset out.offset) before log offset `upto` into out.bytes, and leaves the
// rest in `staged`. No copy when all of them go.
inline void take_staged_prefix(std::vector<std::byte>& staged, LogSink::Staged& out, std::uint64_t upto) {
  out.bytes.clear();
  const std::uint64_t n = upto > out.offset ? std::min<std::uint64_t>(upto - out.offset, staged.size()) : 0;
  if (n == staged.size()) {
    std::swap(out.bytes, staged);
    return;
  }
  const auto cut = staged.begin() + static_cast<std::ptrdiff_t>(n);
  out.bytes.assign(staged.begin(), cut);
  staged.erase(staged.begin(), cut);
}

// A log a read replica follows (ReadReplica, replica.hpp; the follower is
// src/wal/log_follower.cpp).
class FollowedLog {
 public:
  virtual ~FollowedLog() = default;
  // The log's bytes as they are now, what was appended since the last call
  // included. The file is valid until the next call.
  virtual const ReadableFile& refresh() = 0;
};

// Read replicas woken by their writer (ReadReplica's background follower):
// a registration with the storage that calls the `wake` it was made with
// whenever a writer says the log or the snapshot changed (RADOS: a watch on
// NAME.notify, docs/DISTRIBUTED.md "How replicas are woken"). A wake-up is a
// hint only: the replica then reads what the storage holds, and wake-ups can
// be lost, so it still polls. Destroying it unregisters; `wake` is not called
// once the destructor returned.
class ChangeWatch {
 public:
  virtual ~ChangeWatch() = default;
  // True when the registration stands; when it does not (never made, or
  // broken: an error was reported for it), it is made anew, once: true when
  // that worked. Blocks for at most the storage's operation time-out.
  virtual bool ensure() = 0;
  struct Counts {
    std::uint64_t wakeups = 0;        // notifications received
    std::uint64_t registrations = 0;  // made (1 while the first one stands)
    std::uint64_t breaks = 0;         // registrations found broken
  };
  virtual Counts counts() const noexcept = 0;
};

}  // namespace detail

// The storage of one index (its snapshot and its log). Shared by the
// PersistConfig copies that point at it; thread-safe.
class IndexStorage {
 public:
  virtual ~IndexStorage() = default;

  // Where snapshots are written and read (write_snapshot / read_snapshot at
  // PersistConfig::path).
  virtual FileSystem& snapshot_fs() = 0;

  // Take the single-writer lock (PersistError Locked when another writer
  // holds it) and make the index's files ready for this writer: remove what
  // crashed writers left, fence the log of a writer that lost the lock.
  virtual std::unique_ptr<FileLock> lock_writer() = 0;

  // The log of the current snapshot (the writer, holding the lock).
  virtual bool log_exists() = 0;
  virtual std::unique_ptr<ReadableFile> open_log() = 0;
  // A reader without the lock: loads the snapshot through load_snapshot and
  // opens the log that goes with it, such that a writer's checkpoint running
  // meanwhile gives a consistent pair. nullptr when there is no log.
  virtual std::unique_ptr<ReadableFile> open_log_with_snapshot(const std::function<FileHeader()>& load_snapshot,
                                                               FileHeader& loaded) = 0;
  // Read replicas, which never take the lock. As open_log_with_snapshot,
  // but the log is kept to follow; nullptr when there is no log (yet).
  virtual std::unique_ptr<detail::FollowedLog> follow_log_with_snapshot(
      const std::function<FileHeader()>& load_snapshot, FileHeader& loaded) = 0;
  // The log that goes with the current snapshot, to follow from its start;
  // nullptr when there is none (yet).
  virtual std::unique_ptr<detail::FollowedLog> follow_current_log() = 0;
  // Whether `log` (whose header has `salt`) is no longer the current log: a
  // checkpoint or a new writer replaced it, or a save removed it. Nothing is
  // appended to it any more once this says so.
  virtual bool replaced(const detail::FollowedLog& log, std::uint64_t salt) = 0;
  // Whether a new snapshot can be published while the log followed stays
  // the current one (the local files: a save without the WAL keeps a log
  // whose records it covers), so that a replica reads the snapshot's
  // header at each catch-up to see it. RADOS: every publish starts a new
  // generation, and replaced() says so.
  virtual bool log_outlives_snapshots() const noexcept { return true; }
  // A value that changes whenever a snapshot is published (RADOS: the
  // head's generation). A reader's load or replica open that failed with
  // TruncatedPayload while it changed is done again: what it read was
  // removed under it (a live writer published twice meanwhile, and the
  // garbage collection removed the generation it was reading). Local
  // files: 0; a reader holds open what it reads, and a publish never
  // removes it under it.
  virtual std::uint64_t published_version() { return 0; }

  // Read replicas: `wake` is called (from another thread) whenever a writer
  // says something changed; nullptr when this storage has no such
  // notifications (the local files: replicas poll).
  // `wake` by value: an implementation keeps it (a sink); this default has
  // no notifications and drops it.
  virtual std::unique_ptr<detail::ChangeWatch> watch_changes(
      std::function<void()> wake) {  // NOLINT(performance-unnecessary-value-param): a sink for overrides
    (void)wake;
    return nullptr;
  }

  // What a scan of the log found, checked against what this storage can
  // produce (RADOS: an append is atomic and nothing pads, so a torn tail,
  // or zeros after the last frame, are damage).
  virtual void check_scan(const wal::ScanResult& scan) { (void)scan; }

  // A new, empty log for the current snapshot, starting at base_lsn, which
  // replaces the previous log atomically (the writer, holding the lock).
  virtual std::unique_ptr<detail::LogSink> create_log(std::uint64_t base_lsn) = 0;
  // Continue the log whose valid prefix ends at `end` (file_size: its size).
  virtual std::unique_ptr<detail::LogSink> continue_log(std::uint64_t salt, std::uint64_t end,
                                                        std::uint64_t file_size) = 0;
  // Remove the log durably (a save without the WAL that discards it, after
  // the snapshot that replaces it is durable).
  virtual void remove_log() = 0;
  // Where the log is, for messages.
  virtual std::filesystem::path log_path() const = 0;
  // The largest frame body this storage takes in one append: a larger
  // batch is refused (InvalidArgument) before anything is logged.
  virtual std::uint64_t max_frame_bytes() const noexcept { return wal::MAX_FRAME_LEN; }
  // The file or object holding log offset `offset` of the log opened last,
  // for messages.
  virtual std::filesystem::path locate(std::uint64_t offset) const {
    (void)offset;
    return log_path();
  }
};

namespace detail {
// The local files: the snapshot at `snapshot` and its log at
// wal::log_path_for(snapshot), through `fs` (src/wal/local_storage.cpp).
std::shared_ptr<IndexStorage> make_local_storage(FileSystem& fs, const std::filesystem::path& snapshot);

// A reader's load of a live index (`attempt`: the snapshot, then its log),
// done again when it failed because what it read was removed under it: a
// TruncatedPayload while a snapshot was published (the storage's
// published_version changed). At most kLoadAttempts in all (the CLI's copy
// goes by the same rule, load_again): a writer that publishes faster than a load
// reads keeps it failing. A failure while nothing was published (damage)
// is not retried.
inline constexpr int kLoadAttempts = 5;
// The rule: attempt `n`, begun when storage.published_version() was
// `before`, failed with `e`; whether another is due.
inline bool load_again(IndexStorage& storage, std::uint64_t before, const PersistError& e, int n) {
  return n < kLoadAttempts && e.kind() == ErrorKind::TruncatedPayload && storage.published_version() != before;
}
template <class F>
auto load_again_if_removed(IndexStorage& storage, F&& attempt) -> decltype(attempt()) {
  for (int n = 1;; ++n) {
    const std::uint64_t before = storage.published_version();
    try {
      return attempt();
    } catch (const PersistError& e) {
      if (!load_again(storage, before, e, n)) throw;
    }
  }
}

}  // namespace detail

}  // namespace iqdb::persist
