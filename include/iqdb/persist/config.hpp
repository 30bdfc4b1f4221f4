// Persistence configuration.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>

namespace iqdb::persist {

class FileSystem;
class IndexStorage;

// When appended log records (and snapshots) reach stable storage.
//  - Always:       before the call that made them returns (fdatasync / fsync).
//  - Periodic(d):  within d of being acknowledged, by a background flusher.
//                  Snapshots are still fsynced before save() returns.
//  - Never:        left to the operating system. Survives a process crash,
//                  not a power loss. Snapshots are not fsynced either.
class FsyncPolicy {
 public:
  enum class Mode { Always, Periodic, Never };

  static FsyncPolicy always() noexcept { return FsyncPolicy(Mode::Always, {}); }
  // The flusher syncs at least once a day, whatever the interval.
  static FsyncPolicy periodic(std::chrono::milliseconds interval) noexcept {
    return FsyncPolicy(Mode::Periodic, interval);
  }
  static FsyncPolicy never() noexcept { return FsyncPolicy(Mode::Never, {}); }

  Mode mode() const noexcept { return mode_; }
  std::chrono::milliseconds interval() const noexcept { return interval_; }
  friend bool operator==(const FsyncPolicy&, const FsyncPolicy&) = default;

 private:
  FsyncPolicy(Mode m, std::chrono::milliseconds i) noexcept : mode_(m), interval_(i) {}
  Mode mode_;
  std::chrono::milliseconds interval_;
};

// Compression of the snapshot payload.
class Compression {
 public:
  enum class Kind { None, Zstd, Lz4 };

  static Compression none() noexcept { return Compression(Kind::None, 0); }
  // level 1..22. threads 1..kMaxThreads: 1 compresses on the saving thread;
  // more uses zstd's own worker threads, in jobs of 2 MiB, each worker
  // holding about 12 MiB more while a snapshot is written (a save of 1M x 128
  // on two idle cores: 1.1 s with 2 against 1.5 s with 1; docs/API.md).
  // The file's bytes differ, its format does not. Both are validated when a
  // snapshot is written.
  static Compression zstd(int level = 3, int threads = 1) noexcept { return Compression(Kind::Zstd, level, threads); }
  static Compression lz4() noexcept { return Compression(Kind::Lz4, 0); }
  static constexpr int kMaxThreads = 16;

  Kind kind() const noexcept { return kind_; }
  int level() const noexcept { return level_; }
  int threads() const noexcept { return threads_; }
  friend bool operator==(const Compression&, const Compression&) = default;

 private:
  Compression(Kind k, int l, int t = 1) noexcept : kind_(k), level_(l), threads_(t) {}
  Kind kind_;
  int level_;
  int threads_;
};

// Limits applied when reading files, on top of the checks against the bytes
// actually present. Defaults suit indexes of up to a few hundred GiB.
struct ReadLimits {
  // Largest decoded payload accepted (after decompression).
  std::uint64_t max_payload_bytes = std::uint64_t{1} << 40;  // 1 TiB
  // Declared uncompressed size may be at most this many times the compressed size.
  std::uint64_t max_expansion_ratio = 4096;
};

// Where and how an index is persisted.
//
//   PersistConfig cfg("/var/lib/app/vectors.iqdb");   // no WAL, Always, no compression
//   cfg.compression = Compression::zstd(3);
struct PersistConfig {
  explicit PersistConfig(std::filesystem::path p) : path(std::move(p)) {}

  std::filesystem::path path;
  bool wal_enabled = false;
  FsyncPolicy fsync_policy = FsyncPolicy::always();
  Compression compression = Compression::none();
  ReadLimits limits{};
  // Group commit (WAL, FsyncPolicy::Always): how long a writer waiting for
  // the fdatasync of its group keeps its CPU, yielding it in a loop to any
  // other runnable thread, before it sleeps. Waking a sleeping thread costs
  // tens of microseconds on virtual machines, as much as a fast fdatasync,
  // and a group's writers are woken together. Only used while fdatasyncs
  // take under half this bound on average (fast storage); 0 never spins.
  // Negative values are taken as 0, values above 1 s as 1 s.
  std::chrono::microseconds commit_spin{500};
  // Let a write replace acknowledged writes that the files at path hold and
  // the index written lacks, instead of refusing with
  // ErrorKind::WouldLoseWrites (ErrorKind::CorruptLog for a log damaged in
  // the middle). Such writes are the records of a log at path + ".wal"
  // above the LSN the index covers (see PersistedIndex::last_lsn) and a
  // snapshot whose last LSN is above it. Two writes check:
  //  - save() without the WAL. With a log there, the save writes the
  //    snapshot (durably, whatever the fsync policy) with the highest LSN the
  //    log holds, so that it covers every record of the log, then removes the
  //    log durably: a crash in between loads as the new snapshot, with or
  //    without the WAL.
  //  - open_with() with the WAL: it replaces an index at path only if that
  //    holds nothing (no log record above its snapshot, a snapshot of no
  //    vector) or this is set.
  // Set it for a write meant to throw those writes away. load() and the
  // checkpoints of an index with the WAL replace nothing and ignore it.
  bool discard_log = false;
  // load(): use the snapshot's vectors in place from a private mapping of
  // the file instead of copying them, for an index that supports it
  // (FlatIndex) and a file that allows it (format version 3, uncompressed:
  // is_mappable; others load by copying). Verified as a copy is,
  // before load() returns. Writes copy the pages they touch; the file must
  // not be written to or truncated in place while mapped (docs/API.md,
  // "Mapped load").
  bool map_snapshot = false;
  // With the WAL: once the log has grown to this many bytes (its header and
  // frames), a checkpoint runs on a thread of the index's own, as if
  // checkpoint() had been called: the log starts anew, so that it, and a
  // load's replay, stay bounded without the program calling checkpoint().
  // Mutations wait while its snapshot is written, as for checkpoint(). A
  // failed one is counted (WalStats::auto_checkpoint_failures, the reason
  // in PersistedIndex::auto_checkpoint_failure()) and tried again once the
  // log has grown by as much again. 0 (the default): only checkpoint()
  // checkpoints. close() and the destructor wait for one that is running
  // and start none. That thread reads the index at any time: changes
  // through PersistedIndex::index_mut() would race with it. Invalid without
  // wal_enabled (a read replica ignores it until promoted).
  std::uint64_t checkpoint_log_bytes = 0;
  // The file-system seam; nullptr means the real POSIX file system. Tests
  // pass a fault-injecting or recording wrapper. Not owned; must outlive
  // every object that uses this config.
  FileSystem* file_system = nullptr;
  // Where the snapshot and the log live when not in local files: set by
  // rados_persist_config (iqdb/persist/rados.hpp, the optional RADOS
  // component), which also sets `path` to `rados://POOL/NAME`. nullptr:
  // the local files at `path` through file_system. Exclusive with
  // file_system. Shared by the copies of this config.
  std::shared_ptr<IndexStorage> storage;
};

}  // namespace iqdb::persist
