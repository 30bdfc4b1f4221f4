// iqdb-persist checkpoint PATH: load a snapshot and its write-ahead log and
// fold them into a new snapshot (and an empty log), offline. PATH may be
// rados://POOL/NAME (the index's writer lock there, a new generation and log).
// Index types: those of index_types.hpp.
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "iqdb-persist/command.hpp"
#include "iqdb-persist/fold_copy.hpp"
#include "iqdb-persist/index_types.hpp"
#include "iqdb-persist/location.hpp"
#include "iqdb-persist/report.hpp"
#include "iqdb/persist/flat_index.hpp"
#include "iqdb/persist/persisted_index.hpp"
#include "iqdb/persist/snapshot.hpp"

namespace iqdb::persist::cli {
namespace {

struct CheckpointOptions {
  std::string file;
  RadosArgs rados;
};

template <class I>
int checkpoint_as(const Location& where, const CheckpointOptions& opts, const SnapshotSummary& before,
                  const Console& console) {
  PersistConfig cfg = where.config();
  cfg.wal_enabled = true;
  cfg.fsync_policy = FsyncPolicy::always();
  cfg.compression = compression_of(before.header);  // keep the snapshot's
  refuse_dropping_unsynced_frames(where);  // (before the load, which would cut them)
  auto db = PersistedIndex<I>::load(cfg);  // takes the writer lock, replays the log
  // (Not last_lsn() minus the snapshot's: the open of a snapshot saved
  // without the WAL claims one LSN more, folding nothing.)
  const std::uint64_t folded = db.wal_stats().recovered_records;
  const FileHeader after = db.checkpoint();
  db.close();
  console.out << "checkpointed " << opts.file << ": " << after.n_vectors << " vectors, snapshot LSN "
              << before.header.last_lsn << " -> " << after.last_lsn << " (" << folded
              << " log records folded), format " << before.header.format_version << " -> " << after.format_version
              << ", log emptied\n";
  return kExitOk;
}

int checkpoint(const CheckpointOptions& opts, const Console& console) {
  const Location where = Location::open(opts.file, opts.rados);
  const SnapshotSummary before = inspect_snapshot(where.fs(), where.path());
  const std::string_view type = before.header.index_type;
  const std::optional<int> status =
      with_index_type(type, [&]<class I>() { return checkpoint_as<I>(where, opts, before, console); });
  if (status) return *status;
  throw PersistError::at(ErrorKind::Unsupported, opts.file,
                         "offline checkpoint needs the index type to apply log records; this build knows " +
                             known_index_types() +
                             ", the snapshot holds '" + printable(type) +
                             "' (checkpoint it from a program that knows it: PersistedIndex::checkpoint)");
}

}  // namespace

void register_checkpoint(CommandSet& commands) {
  auto opts = std::make_shared<CheckpointOptions>();
  CLI::App& cmd = commands.add(
      "checkpoint",
      "Fold a snapshot's write-ahead log into a new snapshot, offline (flat; faiss and hnswlib in builds with them)",
      [opts](const Console& console) { return checkpoint(*opts, console); });
  cmd.add_option("FILE", opts->file, "The snapshot (its log is FILE.wal), or rados://POOL/NAME")
      ->required()
      ->type_name("PATH");
  add_rados_options(cmd, opts->rados);
}

}  // namespace iqdb::persist::cli
