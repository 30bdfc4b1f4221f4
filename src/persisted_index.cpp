#include "iqdb/persist/persisted_index.hpp"

#include <algorithm>
#include <cerrno>
#include <optional>
#include <string>
#include <string_view>

#include "iqdb/persist/wal.hpp"
#include "snapshot/codec.hpp"
#include "wal/engine_impl.hpp"
#include "wal/log_format.hpp"
#include "wal/log_reader.hpp"

namespace iqdb::persist::detail {

namespace fs = std::filesystem;

void validate_config(const PersistConfig& cfg) {
  if (cfg.path.empty()) throw PersistError::argument("PersistConfig.path is empty");
  if (cfg.path.filename().empty()) {
    throw PersistError::argument("PersistConfig.path '" + cfg.path.string() + "' names a directory, not a file");
  }
  codec::check_compression(cfg.compression);
  if (cfg.limits.max_payload_bytes == 0 || cfg.limits.max_expansion_ratio == 0) {
    throw PersistError::argument("PersistConfig.limits: max_payload_bytes and max_expansion_ratio must be at least 1");
  }
  if (cfg.fsync_policy.mode() == FsyncPolicy::Mode::Periodic && cfg.fsync_policy.interval().count() <= 0) {
    throw PersistError::argument("FsyncPolicy::periodic needs a positive interval");
  }
  if (cfg.storage && cfg.file_system != nullptr) {
    throw PersistError::argument("PersistConfig.storage and PersistConfig.file_system cannot both be set");
  }
}

void validate_writer_config(const PersistConfig& cfg) {
  validate_config(cfg);
  if (cfg.checkpoint_log_bytes != 0 && !cfg.wal_enabled) {
    throw PersistError::argument("PersistConfig.checkpoint_log_bytes checkpoints the log: it needs wal_enabled");
  }
}

namespace {

// What the log beside a snapshot holds, as a save without the WAL sees it.
struct LogHoldings {
  bool exists = false;
  std::uint64_t above = 0;  // valid records with an LSN above the index's
  std::uint64_t first_above = 0;
  std::uint64_t last_above = 0;
  // The highest LSN the log accounts for: its last valid record's, or for an
  // empty version-2 log the one before its base LSN. For a log that is
  // damaged in the middle or cannot be read: a bound from its size (every
  // record takes at least kMinOpLen bytes).
  std::uint64_t end = 0;
  std::optional<std::uint64_t> corrupt_offset;  // damage in the middle of the log
  std::uint64_t records_after_corruption = 0;
};

LogHoldings look_at_log(IndexStorage& storage, std::uint64_t base_lsn, bool discard) {
  LogHoldings h;
  if (!storage.log_exists()) return h;
  h.exists = true;
  std::uint64_t implicit = 0;  // version-1 logs number their records 1, 2, ...
  wal::ScanResult scan;
  std::unique_ptr<ReadableFile> file;
  try {
    file = storage.open_log();
    scan = wal::scan_file(
        *file,
        [&](const wal::RecordView& r) {
          const std::uint64_t lsn = r.lsn ? *r.lsn : ++implicit;
          if (lsn <= base_lsn) return;
          if (h.above == 0) h.first_above = lsn;
          h.last_above = lsn;
          ++h.above;
        },
        wal::ScanMode::Report);
  } catch (const PersistError& e) {
    if (e.kind() == ErrorKind::Io && e.sys_errno() == ENOENT) return LogHoldings{};  // removed meanwhile
    // Not a log this library reads (bad magic, damaged header): whatever it
    // holds, only discarding it lets the save go on.
    if (!discard || !file) throw;
    h.end = file->size() / wal::format::kMinOpLen;
    return h;
  }
  const std::uint64_t below_base = scan.version == 2 && scan.base_lsn > 0 ? scan.base_lsn - 1 : 0;
  if (scan.version == 2) {
    h.end = scan.last_lsn ? *scan.last_lsn : below_base;
  } else {
    h.end = implicit;
  }
  if (scan.corrupt_offset) {
    h.corrupt_offset = scan.corrupt_offset;
    h.records_after_corruption = scan.records_after_corruption;
    h.end = std::max(h.end, below_base + scan.file_size / wal::format::kMinOpLen);
  }
  return h;
}

// The LSN the snapshot in place covers. A file that cannot be read holds
// nothing a load would return, and a save is how it gets replaced: 0.
std::uint64_t snapshot_lsn_of(FileSystem& fs, const fs::path& path) {
  if (!fs.exists(path)) return 0;
  try {
    return inspect_snapshot(fs, path).header.last_lsn;
  } catch (const PersistError& e) {
    if (e.kind() == ErrorKind::Io && e.sys_errno() != ENOENT) throw;
  }
  return 0;
}

// What would throw away acknowledged writes that the files hold and the
// index being written lacks: a save without the WAL (orphaning or replacing
// them) or open_with with the WAL (replacing the index there).
enum class Replacing { SaveWithoutWal, OpenWith };
constexpr std::string_view kOpenWithHowTo =
    "load it (load with the WAL replays the log and goes on writing), or set PersistConfig::discard_log to replace it";

// Without discard_log: refuse to replace acknowledged writes the files hold
// and this index (covering base_lsn) lacks.
void refuse_losing_writes(Replacing what, const fs::path& snapshot_path, const LogHoldings& log,
                          const fs::path& log_path, std::uint64_t snapshot_lsn, std::uint64_t base_lsn) {
  const bool save = what == Replacing::SaveWithoutWal;
  const std::string would = save ? "saving without the WAL would" : "open_with with the WAL would replace the index and";
  const std::string how_to =
      save ? "load it with the WAL (or without: load replays the log) and save that index, or set "
             "PersistConfig::discard_log to discard them"
           : std::string(kOpenWithHowTo);
  if (log.corrupt_offset) {
    throw PersistError::at(ErrorKind::CorruptLog, log_path,
                           "the log is damaged in the middle, with " + std::to_string(log.records_after_corruption) +
                               " records after the damage that " + (save ? "this index may lack" : "would be lost") +
                               "; " + would + " orphan them: repair the log (iqdb-persist wal repair) and " + how_to,
                           log.corrupt_offset);
  }
  if (log.above > 0) {
    throw PersistError::at(ErrorKind::WouldLoseWrites, log_path,
                           "the log holds " + std::to_string(log.above) + " acknowledged record" +
                               (log.above == 1 ? "" : "s") + " (LSN " + std::to_string(log.first_above) +
                               (log.above == 1 ? "" : ".." + std::to_string(log.last_above)) + ") that " +
                               (save ? "this index does not contain (it covers LSN " + std::to_string(base_lsn) + ")"
                                     : "its snapshot does not hold") +
                               "; " + would + " orphan them: " + how_to);
  }
  if (snapshot_lsn > base_lsn) {
    throw PersistError::at(ErrorKind::WouldLoseWrites, snapshot_path,
                           "the snapshot holds the log's writes up to LSN " + std::to_string(snapshot_lsn) +
                               ", this index covers LSN " + std::to_string(base_lsn) +
                               " only (a writer with the WAL checkpointed, or reopened it after a save without "
                               "the WAL, since it was loaded, or it was opened with open_with); saving would "
                               "replace acknowledged writes: " + how_to);
  }
}

}  // namespace

FileHeader save_without_wal(const PersistConfig& config, std::uint64_t base_lsn,
                            const std::function<FileHeader(std::uint64_t last_lsn, bool durable)>& write) {
  FileSystem& fs = fs_of(config);
  const std::shared_ptr<IndexStorage> storage = storage_of(config);
  // Locked while another writer holds it. (Local files: PATH.lock, and the
  // temporary files a crash or a failure left are removed, as when a WAL
  // writer opens.)
  const std::unique_ptr<FileLock> lock = storage->lock_writer();

  const std::uint64_t snapshot_lsn = snapshot_lsn_of(fs, config.path);
  const LogHoldings log = look_at_log(*storage, base_lsn, config.discard_log);
  if (!config.discard_log) {
    refuse_losing_writes(Replacing::SaveWithoutWal, config.path, log, storage->log_path(), snapshot_lsn, base_lsn);
  }

  // The highest LSN the files account for: a later load with the WAL then
  // finds every log record folded and the log continuing after the snapshot.
  const std::uint64_t last_lsn = std::max({base_lsn, snapshot_lsn, log.end});
  const bool removing_log = config.discard_log && log.exists;
  // The log goes only once the snapshot that covers it is durable.
  FileHeader written =
      write(last_lsn, removing_log || config.fsync_policy.mode() != FsyncPolicy::Mode::Never);
  if (removing_log) storage->remove_log();
  return written;
}

void refuse_replacing_writes(FileSystem& files, IndexStorage& storage, const fs::path& snapshot_path) {
  // What the snapshot holds (one that cannot be read holds nothing a load
  // would return, as for a save); the log's records above it.
  std::uint64_t snapshot_lsn = 0;
  std::uint64_t vectors = 0;
  if (files.exists(snapshot_path)) {
    try {
      const FileHeader h = inspect_snapshot(files, snapshot_path).header;
      snapshot_lsn = h.last_lsn;
      vectors = h.n_vectors;
    } catch (const PersistError& e) {
      if (e.kind() == ErrorKind::Io && e.sys_errno() != ENOENT) throw;
    }
  }
  const LogHoldings log = look_at_log(storage, snapshot_lsn, false);
  refuse_losing_writes(Replacing::OpenWith, snapshot_path, log, storage.log_path(), 0, 0);
  if (vectors > 0) {
    throw PersistError::at(ErrorKind::WouldLoseWrites, snapshot_path,
                           "the snapshot holds " + std::to_string(vectors) + " vector" + (vectors == 1 ? "" : "s") +
                               " (LSN " + std::to_string(snapshot_lsn) +
                               "); open_with with the WAL would replace the index and lose them: " +
                               std::string(kOpenWithHowTo));
  }
}

}  // namespace iqdb::persist::detail
