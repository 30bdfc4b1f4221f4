// The durability engine behind PersistedIndex in WAL mode (not a public API:
// PersistedIndex is a template, so it lives in a header).
//
// It owns the single-writer lock, the log file, group commit, the periodic
// flusher and the checkpoint protocol. It knows nothing of the index type:
// PersistedIndex passes callbacks that validate, apply and serialise.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "iqdb/persist/config.hpp"
#include "iqdb/persist/detail/function_ref.hpp"
#include "iqdb/persist/format.hpp"
#include "iqdb/persist/types.hpp"
#include "iqdb/persist/wal.hpp"

namespace iqdb::persist::detail {

struct MutationRef {
  wal::Op op;
  const VectorId* id;
  std::span<const float> vector;
  const Metadata* metadata;
};

class WalEngine {
 public:
  // Presence of an id as changed by mutations logged but not yet applied to
  // the index: nullopt when none of them touches it (then the index decides).
  using PendingPresence = FunctionRef<std::optional<bool>(const VectorId&)>;
  // Throws (before anything is logged) when the mutations must be refused.
  // pending_size_delta: inserts minus erases of the mutations logged but not
  // yet applied (the index's size will have changed by that much when these
  // mutations apply).
  using Validate = FunctionRef<void(const PendingPresence&, std::int64_t pending_size_delta)>;
  // Applies the mutations of one commit to the index; on failure, leaves the
  // index as it was and throws.
  using Apply = FunctionRef<void()>;
  // Writes a durable snapshot of the index with this last LSN.
  using WriteSnapshot = std::function<void(std::uint64_t last_lsn)>;
  using Replay = std::function<void(const wal::RecordView&)>;
  // Called once before replay with an estimate of the records to come and
  // of the bytes the log's frames take (at most its size; which bounds what
  // they can hold).
  using ReserveHint = std::function<void(std::uint64_t records, std::uint64_t log_bytes)>;

  // open_with: take the lock, write the base snapshot, start a new log.
  static std::unique_ptr<WalEngine> create(const PersistConfig& cfg, const WriteSnapshot& write_snapshot);
  // load: take the lock, load the snapshot (load_snapshot returns its
  // header), replay the log records after its last LSN, cut a torn tail off.
  // A version-1 (reference) log is folded into a new snapshot and replaced by
  // a version-2 log at once.
  static std::unique_ptr<WalEngine> open(const PersistConfig& cfg, const std::function<FileHeader()>& load_snapshot,
                                         const Replay& replay, const WriteSnapshot& write_snapshot,
                                         const ReserveHint& reserve = {});

  // load without the WAL: what the loaded state covers.
  struct ReadOnlyReplay {
    std::uint64_t last_lsn = 0;  // the snapshot's last LSN, or the last replayed record's
    wal::WalStats stats;         // recovered_records, torn_tail_bytes, unsynced_frames_dropped
  };
  // load without the WAL: no lock, no file changed. Opens the log (if any)
  // first, then loads the snapshot, then replays the log records after the
  // snapshot's last LSN, as open() does (a torn tail is ignored, mid-log
  // corruption and missing records throw CorruptLog); a version-1 log too.
  // In that order a checkpoint, or a save that removes the log, running
  // meanwhile in another process leaves a consistent pair: a snapshot
  // written after the log was opened covers every record the log holds.
  static ReadOnlyReplay replay_read_only(const PersistConfig& cfg, const std::function<FileHeader()>& load_snapshot,
                                         const Replay& replay, const ReserveHint& reserve = {});

  WalEngine(const WalEngine&) = delete;
  WalEngine& operator=(const WalEngine&) = delete;
  ~WalEngine();  // close(), errors swallowed

  // Validate, log (one frame), make durable per the policy, apply, return.
  // Thread-safe; concurrent commits under FsyncPolicy::Always share fsyncs.
  void commit(std::span<const MutationRef> ops, Validate validate, Apply apply);

  // Fold the log into a new snapshot and start an empty log. Blocks commits
  // (not readers) while it runs.
  void checkpoint(const WriteSnapshot& write_snapshot);

  // From now on, checkpoint with write_snapshot on a thread of the engine's
  // own whenever the log reaches log_bytes (PersistConfig::
  // checkpoint_log_bytes); 0 does nothing. write_snapshot must stay valid
  // until close() or the destructor, which stop that thread first.
  void start_auto_checkpoint(std::uint64_t log_bytes, WriteSnapshot write_snapshot);
  // The last automatic checkpoint's error; nullopt after one succeeded.
  std::optional<std::string> auto_checkpoint_failure() const;

  // Make every logged record durable now.
  void sync();
  // Stop the flusher, sync (unless FsyncPolicy::Never), release the lock.
  void close();

  std::uint64_t last_lsn() const;
  // Why writes are refused after a failed write or fsync of the log;
  // nullopt while the log is healthy.
  std::optional<std::string> failure() const;
  wal::WalStats stats() const;

  class Impl;

 private:
  explicit WalEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace iqdb::persist::detail
