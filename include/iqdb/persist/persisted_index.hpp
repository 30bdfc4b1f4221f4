// PersistedIndex: an index with durable, crash-safe persistence.
//
//   using namespace iqdb::persist;
//   PersistConfig cfg("vectors.iqdb");
//   auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(128, DistanceMetric::Cosine), cfg);
//   db.insert(42, vec);
//   db.save();                                            // atomic snapshot
//   auto again = PersistedIndex<FlatIndex>::load(cfg);    // verified load
//
// With cfg.wal_enabled, every insert / erase / write is logged (and made
// durable per cfg.fsync_policy) before it is applied and acknowledged, and
// load() replays the log. See docs/API.md and docs/RELIABILITY.md.
#pragma once

#include <algorithm>
#include <atomic>
#include <concepts>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <shared_mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "iqdb/persist/config.hpp"
#include "iqdb/persist/detail/batch_presence.hpp"
#include "iqdb/persist/detail/exception_text.hpp"
#include "iqdb/persist/detail/index_storage.hpp"
#include "iqdb/persist/detail/read_scope.hpp"
#include "iqdb/persist/detail/rw_lock.hpp"
#include "iqdb/persist/detail/wal_engine.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/file_system.hpp"
#include "iqdb/persist/index.hpp"
#include "iqdb/persist/snapshot.hpp"
#include "iqdb/persist/write_batch.hpp"

namespace iqdb::persist {

namespace detail {
inline FileSystem& fs_of(const PersistConfig& cfg) {
  if (cfg.storage) return cfg.storage->snapshot_fs();
  return cfg.file_system != nullptr ? *cfg.file_system : default_file_system();
}
// Validates a config (throws InvalidArgument).
void validate_config(const PersistConfig& cfg);
// The same, for a PersistedIndex (a read replica ignores what only a writer uses).
void validate_writer_config(const PersistConfig& cfg);
// save() without a WAL. Holds the writer lock ("<path>.lock"; Locked while
// another writer, WAL or not, holds it) while it looks at the files and
// writes. Refuses (WouldLoseWrites; a damaged log: CorruptLog) to replace
// acknowledged writes the files hold above `base_lsn` — log records, a
// snapshot with a higher last LSN — unless config.discard_log. Writes the
// snapshot through write(last_lsn, durable) with the highest LSN the files
// account for (so that a later load with the WAL finds the snapshot and the
// log consistent); with discard_log, then removes the log durably.
FileHeader save_without_wal(const PersistConfig& config, std::uint64_t base_lsn,
                            const std::function<FileHeader(std::uint64_t last_lsn, bool durable)>& write);

// The steps of a load into `loaded`, shared by PersistedIndex::load and
// ReadReplica: the snapshot, the records of the log, a size hint.
template <Persistable I>
struct Loader {
  const PersistConfig& config;
  std::optional<I>& loaded;

  // Read the snapshot at config.path (verified) into `loaded`.
  std::function<FileHeader()> load_snapshot() const {
    return [c = &config, out = &loaded] {
      const FileHeader h = read_snapshot(fs_of(*c), c->path, I::index_type, c->limits,
                                         [&](PayloadReader& r, const FileHeader&) { out->emplace(I::load_from(r)); },
                                         c->map_snapshot);
      check_against_header(**out, h, c->path);
      return h;
    };
  }

  // The index's own insert / erase refuse what does not apply (a record
  // that does: the engine reports CorruptLog with its offset).
  std::function<void(const wal::RecordView&)> replay() const {
    return [out = &loaded](const wal::RecordView& r) { apply_record(**out, r); };
  }

  std::function<void(std::uint64_t, std::uint64_t)> reserve() const {
    return [out = &loaded](std::uint64_t records, std::uint64_t log_bytes) {
      if constexpr (requires(I& i) { i.reserve(records); }) {
        // A hint only. Every insert record carries dim floats, so the log's
        // size bounds how many it can hold whatever the snapshot's dim: a
        // small log never makes it allocate much. A refused allocation is
        // harmless (replay grows the index as it goes).
        // And at kMaxReserveHint rows: the log's size is its apparent size,
        // which a sparse file (or zero blocks inside real frames) can make
        // far larger than what its frames hold, and the id table's part of
        // a reserve is touched at once (2 slots a row). A longer replay
        // grows the index as it goes.
        constexpr std::uint64_t kMaxReserveHint = std::uint64_t{1} << 22;
        const std::uint64_t per_record = std::max<std::uint64_t>(1, (*out)->dim() * sizeof(float));
        try {
          (*out)->reserve(std::min({records, log_bytes / per_record, kMaxReserveHint}));
        } catch (const std::bad_alloc&) {
        } catch (const std::length_error&) {
        }
      } else {
        (void)out;  // an index without reserve() takes no hint
      }
    };
  }

  static void apply_record(I& index, const wal::RecordView& r) {
    if (r.op == wal::Op::Insert) {
      index.insert(*r.id, r.vector, r.metadata ? std::optional<Metadata>(*r.metadata) : std::nullopt);
    } else {
      index.erase(*r.id);
    }
  }

  static void check_against_header(const I& index, const FileHeader& h, const std::filesystem::path& path) {
    const auto mismatch = [&](const char* field, std::uint64_t header, std::uint64_t payload) {
      throw PersistError::at(ErrorKind::InvalidPayload, path,
                             std::string("header says ") + field + " " + std::to_string(header) +
                                 ", the payload holds " + std::to_string(payload));
    };
    if (index.dim() != h.dim) mismatch("dim", h.dim, index.dim());
    if (index.metric() != h.metric)
      mismatch("metric", static_cast<std::uint64_t>(h.metric), static_cast<std::uint64_t>(index.metric()));
    if (index.size() != h.n_vectors) mismatch("n_vectors", h.n_vectors, index.size());
  }
};
}  // namespace detail

template <Persistable I>
class ReadReplica;

// Thread safety: insert, erase, write, save, checkpoint, sync and read may be
// called from any number of threads at once. Mutations are serialised; under
// FsyncPolicy::Always concurrent mutations share fsyncs (group commit). read()
// runs alongside mutations and alongside a checkpoint's snapshot write.
// index() / index_mut() are unsynchronised: use them only while no other
// thread calls into this object. With PersistConfig::checkpoint_log_bytes a
// thread of the object's own reads the index whenever it checkpoints: then
// change it only through the mutations, never through index_mut(). The object itself is movable, not copyable;
// moving it while other threads use it is not safe.
template <Persistable I>
class PersistedIndex {
 public:
  // Wrap an in-memory index. Without a WAL nothing is written (and no lock
  // taken) until save(); the index covers LSN 0. With a WAL: takes the
  // writer lock (Locked if held elsewhere), writes a base snapshot of
  // `index` and starts an empty log. An index already at the path is
  // replaced only if it holds nothing (no log record above its snapshot, a
  // snapshot of no vector) or config.discard_log is set; else
  // WouldLoseWrites (CorruptLog: its log is damaged in the middle) and
  // nothing is changed.
  //
  // If it throws (a bad config, Locked, an I/O error, Io with EAGAIN when
  // the flusher or checkpointer thread cannot be started), an index passed
  // as an rvalue is handed back: it holds what it held before the call.
  static PersistedIndex open_with(I&& index, PersistConfig config) {
    detail::validate_writer_config(config);
    auto s = std::make_unique<State>(std::move(index), std::move(config));
    if (s->config.wal_enabled) {
      State* st = s.get();
      try {
        s->engine = detail::WalEngine::create(s->config, [st](std::uint64_t lsn) { st->write_snapshot(lsn, true); });
        start_auto_checkpoint(*s);
      } catch (...) {
        s->engine.reset();  // (stopped: no thread of its own reads the index any more)
        index = std::move(s->index);
        throw;
      }
    }
    return PersistedIndex(std::move(s));
  }
  static PersistedIndex open_with(const I& index, PersistConfig config)
    requires std::copy_constructible<I>
  {
    return open_with(I(index), std::move(config));
  }

  // Load the snapshot at config.path: verified (header, checksum, index type,
  // and the rebuilt index agrees with the header's dim, metric and count).
  // With a WAL: takes the writer lock, replays the log records the snapshot
  // does not hold yet, and cuts a torn tail off the log. Without: takes no
  // lock and changes no file, but replays the same records read-only (a torn
  // tail is ignored; a damaged log throws as with the WAL), so that no
  // acknowledged write is hidden; last_lsn() is then the LSN the loaded
  // state covers.
  static PersistedIndex load(PersistConfig config) {
    detail::validate_writer_config(config);
    std::optional<I> loaded;
    const detail::Loader<I> l{config, loaded};
    if (!config.wal_enabled) {
      const auto r = detail::WalEngine::replay_read_only(config, l.load_snapshot(), l.replay(), l.reserve());
      auto s = std::make_unique<State>(std::move(*loaded), std::move(config));
      s->base_lsn.store(r.last_lsn);
      s->load_stats = r.stats;
      return PersistedIndex(std::move(s));
    }
    return open_log(config, loaded, l.load_snapshot());
  }

  PersistedIndex(PersistedIndex&&) noexcept = default;
  PersistedIndex& operator=(PersistedIndex&&) noexcept = default;
  // Closes (see close()); errors are swallowed: call close() to see them.
  ~PersistedIndex() = default;

  // False once moved from: then every call but index(), index_mut() and
  // config() (whose precondition valid() is) throws InvalidArgument.
  bool valid() const noexcept { return s_ != nullptr; }

  // Unsynchronised access (see the class comment).
  const I& index() const noexcept { return s_->index; }
  // Changes made through index_mut() bypass the log: they become durable only
  // with the next save() / checkpoint().
  I& index_mut() noexcept { return s_->index; }
  const PersistConfig& config() const noexcept { return s_->config; }

  // Run f(const I&) under the read lock, alongside other readers and
  // mutations' logging; returns what f returns. Inside f, calls back into
  // this object would wait for f's own lock: they throw InvalidArgument
  // (mutations, save, checkpoint, sync, close; with a WAL also last_lsn,
  // wal_stats, failure, auto_checkpoint_failure); a nested read runs its f
  // at once.
  template <class F>
  decltype(auto) read(F&& f) const {
    check_valid();
    if (detail::ReadScope::active(s_.get())) return std::forward<F>(f)(std::as_const(s_->index));
    std::shared_lock lk(s_->mu);
    const detail::ReadScope scope(s_.get());
    return std::forward<F>(f)(std::as_const(s_->index));
  }

  // Insert a vector. Validated first (dimension, id absent, index-specific
  // checks): a mutation the index would reject throws and changes nothing,
  // and is never logged. With a WAL, the call returns once the record is
  // durable per the fsync policy and applied.
  void insert(const VectorId& id, std::span<const float> vec, std::optional<Metadata> meta = {}) {
    const detail::MutationRef m{wal::Op::Insert, &id, vec, meta ? &*meta : nullptr};
    commit({&m, 1}, [&] {
      std::unique_lock lk(s_->mu);
      s_->index.insert(id, vec, std::move(meta));
    });
  }

  // Erase a vector (IdNotFound if absent).
  void erase(const VectorId& id) {
    const detail::MutationRef m{wal::Op::Erase, &id, {}, nullptr};
    commit({&m, 1}, [&] {
      std::unique_lock lk(s_->mu);
      s_->index.erase(id);
    });
  }

  // Apply a batch: validated as a whole (each mutation sees the ones before
  // it), logged as one record group with one fsync, all or nothing on recovery.
  void write(const WriteBatch& batch) {
    if (batch.empty()) {  // nothing to do, but refused where any write would be
      commit({}, [] {});
      return;
    }
    std::vector<detail::MutationRef> refs;
    refs.reserve(batch.size());
    std::uint64_t inserts = 0;
    for (const auto& m : batch.mutations()) {
      refs.push_back({m.op, &m.id, m.vector, m.metadata ? &*m.metadata : nullptr});
      inserts += m.op == wal::Op::Insert ? 1 : 0;
    }
    commit(refs, [&] {
      std::unique_lock lk(s_->mu);
      // Room for the batch at once (one growth step, not one per insert). A
      // hint: a refused allocation leaves the inserts to grow the index.
      if constexpr (requires(I& i) { i.reserve(inserts); }) {
        try {
          s_->index.reserve(inserts);
        } catch (const std::bad_alloc&) {
        }
      }
      std::size_t applied = 0;
      try {
        for (const auto& m : batch.mutations()) {
          if (m.op == wal::Op::Insert) {
            s_->index.insert(m.id, m.vector, m.metadata);
          } else {
            s_->index.erase(m.id);
          }
          ++applied;
        }
      } catch (...) {
        if (applied == 0) throw;
        // Part of the batch is in the index and cannot be taken back
        // generically: refuse further writes; a reopen replays what is durable.
        // (Without a WAL the index itself refuses them, and saves, which
        // would persist half a batch: set while the write lock is held, so a
        // save waiting for the read lock sees it.) Whatever the index threw,
        // a std::exception or not.
        std::string why = detail::partial_batch_reason(std::current_exception());
        if (!s_->engine) {
          const std::lock_guard f(s_->failure_mu);
          try {
            s_->failure = why;
          } catch (...) {
            s_->failure.emplace("out of memory");  // fits the small-string buffer: no allocation
          }
        }
        throw PersistError(ErrorKind::Poisoned, std::move(why));
      }
    });
  }

  // Write a snapshot atomically: the previous file stays intact until the new
  // one is complete (and, unless FsyncPolicy::Never, durable). With a WAL this
  // is checkpoint(). Without, it holds the writer lock while it writes
  // (Locked while another writer, WAL or not, holds it) and refuses
  // (WouldLoseWrites) to replace acknowledged writes the files hold and the
  // index lacks: log records above last_lsn(), a snapshot with a higher last
  // LSN; PersistConfig::discard_log replaces them.
  FileHeader save() {
    check_valid();
    detail::ReadScope::refuse(s_.get(), "save()");
    if (s_->engine) return checkpoint();
    // One save at a time: the writer lock would refuse a second one.
    std::lock_guard save_lk(s_->save_mu);
    throw_if_unusable();
    std::shared_lock lk(s_->mu);
    throw_if_unusable();  // a batch that failed in part while this waited for the lock
    State* st = s_.get();
    FileHeader h = detail::save_without_wal(st->config, st->base_lsn.load(),
                                                  [st](std::uint64_t lsn, bool durable) {
                                                    return st->write_snapshot(lsn, durable, /*without_wal=*/true);
                                                  });
    st->base_lsn.store(h.last_lsn);
    return h;
  }

  // With a WAL: fold the log into a new snapshot and start an empty log, such
  // that a crash at any instant recovers exactly the acknowledged state.
  // Blocks mutations while it runs, not read(): it waits for the commits in
  // flight to finish (under Always, their sync), and mutations called
  // meanwhile wait for it (a writer committing in a loop cannot put it
  // off). Without a WAL: save().
  FileHeader checkpoint() {
    check_valid();
    detail::ReadScope::refuse(s_.get(), "checkpoint()");
    if (!s_->engine) return save();
    FileHeader written;
    State* st = s_.get();
    s_->engine->checkpoint([&](std::uint64_t lsn) {
      std::shared_lock lk(st->mu);
      written = st->write_snapshot(lsn, true);
    });
    return written;
  }

  // Make every acknowledged mutation durable now (a no-op without a WAL).
  void sync() {
    check_valid();
    detail::ReadScope::refuse(s_.get(), "sync()");
    if (s_->engine) s_->engine->sync();
  }

  // Release the writer lock after making the log durable (unless
  // FsyncPolicy::Never). Further mutations fail. Reports errors, unlike the
  // destructor.
  void close() {
    check_valid();
    detail::ReadScope::refuse(s_.get(), "close()");
    if (s_->engine) {
      s_->engine->close();
    } else {
      const std::lock_guard save_lk(s_->save_mu);  // after a save that runs
      const std::lock_guard lk(s_->write_mu);      // and a mutation that runs
      s_->closed = true;
    }
  }

  // With a WAL: the LSN of the last logged mutation (0 before any). Without:
  // the LSN the state covers — the last log record replayed by load() or
  // the last LSN of the snapshot it loaded or saved (0 after open_with).
  std::uint64_t last_lsn() const {
    check_valid();
    if (!s_->engine) return s_->base_lsn.load();
    detail::ReadScope::refuse(s_.get(), "last_lsn()");
    return s_->engine->last_lsn();
  }

  // Why the last automatic checkpoint (PersistConfig::checkpoint_log_bytes)
  // failed; nullopt when none failed since the last one that succeeded, or
  // without automatic checkpoints. Mutations go on after such a failure
  // unless it left the log in doubt (then failure() says why).
  std::optional<std::string> auto_checkpoint_failure() const {
    check_valid();
    if (!s_->engine) return std::nullopt;
    detail::ReadScope::refuse(s_.get(), "auto_checkpoint_failure()");
    return s_->engine->auto_checkpoint_failure();
  }

  // Health check: why mutations are refused (ErrorKind::Poisoned) after a
  // write or fsync of the log failed, including a failure of the periodic
  // flusher that no caller saw, or (with or without the WAL) after a batch
  // was applied in part; nullopt while the index accepts writes. Reopen the
  // index to recover.
  std::optional<std::string> failure() const {
    check_valid();
    if (s_->engine) {
      detail::ReadScope::refuse(s_.get(), "failure()");
      return s_->engine->failure();
    }
    const std::lock_guard f(s_->failure_mu);
    return s_->failure;
  }

  // What the log did since the index was opened, and what recovery found
  // when it was loaded. Without a WAL: what load() replayed read-only
  // (recovered_records, torn_tail_bytes, unsynced_frames_dropped); the rest
  // is zero.
  wal::WalStats wal_stats() const {
    check_valid();
    if (!s_->engine) return s_->load_stats;
    detail::ReadScope::refuse(s_.get(), "wal_stats()");
    return s_->engine->stats();
  }

 private:
  struct State {
    State(I i, PersistConfig c) : index(std::move(i)), config(std::move(c)) {}
    FileHeader write_snapshot(std::uint64_t lsn, bool durable, bool without_wal = false) const {
      return write_index_snapshot(index, config, lsn, durable, without_wal);
    }
    I index;
    PersistConfig config;
    mutable detail::RwLock mu;     // guards index against read() during mutations; writers first
    std::mutex write_mu;           // serialises mutations without a WAL
    std::mutex save_mu;            // serialises saves without a WAL
    std::atomic<std::uint64_t> base_lsn{0};  // without a WAL: the LSN the state covers
    bool closed = false;           // without a WAL: close() ran (write_mu and save_mu held to set it)
    mutable std::mutex failure_mu;
    std::optional<std::string> failure;  // without a WAL: why mutations are refused (a batch applied in part)
    wal::WalStats load_stats;      // without a WAL: what load() replayed
    std::unique_ptr<detail::WalEngine> engine;
  };

  // Every PersistedIndex is made here, of a State that is complete (its
  // threads started: the constructor throws nothing).
  explicit PersistedIndex(std::unique_ptr<State> s) noexcept : s_(std::move(s)) {}

  // With a WAL and checkpoint_log_bytes: s's engine checkpoints by itself
  // from now on (State is not moved again: the callback's pointer stays
  // valid until the engine stops). Called before the PersistedIndex is
  // made, where a failure (Io, EAGAIN: no thread to be had) can still hand
  // the index back.
  static void start_auto_checkpoint(State& s) {
    if (!s.engine || s.config.checkpoint_log_bytes == 0) return;
    State* st = &s;
    s.engine->start_auto_checkpoint(s.config.checkpoint_log_bytes, [st](std::uint64_t lsn) {
      std::shared_lock lk(st->mu);
      st->write_snapshot(lsn, true);
    });
  }

  template <Persistable>
  friend class ReadReplica;

  // load() with the WAL: the writer lock, the snapshot through
  // load_snapshot (into `loaded`), the log replayed onto it. A promoted
  // replica passes its own state as the snapshot (replica.hpp).
  // (config is not moved from: load_snapshot may refer to it.)
  static PersistedIndex open_log(const PersistConfig& config, std::optional<I>& loaded,
                                 const std::function<FileHeader()>& load_snapshot) {
    const detail::Loader<I> l{config, loaded};
    const auto write_snapshot = [&](std::uint64_t lsn) { write_index_snapshot(*loaded, config, lsn, true); };
    auto engine = detail::WalEngine::open(config, load_snapshot, l.replay(), write_snapshot, l.reserve());
    auto s = std::make_unique<State>(std::move(*loaded), config);
    s->engine = std::move(engine);
    start_auto_checkpoint(*s);
    return PersistedIndex(std::move(s));
  }

  static FileHeader write_index_snapshot(const I& index, const PersistConfig& config, std::uint64_t lsn,
                                         bool durable, bool without_wal = false) {
    const SnapshotInfo info{I::index_type, static_cast<std::uint64_t>(index.dim()), index.metric(),
                            static_cast<std::uint64_t>(index.size()), lsn,
                            without_wal ? format::OPTIONAL_FLAG_SAVED_WITHOUT_WAL : 0u};
    return write_snapshot(detail::fs_of(config), config.path, info, config.compression, durable,
                          [&index](PayloadWriter& w) { index.save_to(w); }, config.limits);
  }

  // Validation shared by both modes: each mutation sees the ones before it in
  // the same commit, then mutations logged but not applied, then the index.
  void validate(std::span<const detail::MutationRef> ops, const detail::WalEngine::PendingPresence* pending,
                std::int64_t pending_size_delta) const {
    const I& index = s_->index;
    // The index's size when the next mutation applies: after the mutations
    // logged but not applied, and the earlier ones of this batch.
    std::int64_t size = static_cast<std::int64_t>(index.size()) + pending_size_delta;
    // Within a batch: the presence each id has after the mutations before it.
    detail::BatchPresence local(ops.size());
    for (const detail::MutationRef& m : ops) {
      bool present;
      bool known = false;
      bool* const in_batch = local.slot(*m.id, known);
      if (known) {
        present = *in_batch;
      } else if (const auto p = pending != nullptr ? (*pending)(*m.id) : std::nullopt) {
        present = *p;
      } else {
        present = index.contains(*m.id);
      }
      if (m.op == wal::Op::Insert) {
        detail::check_insert(index, present, *m.id, m.vector, m.metadata,
                             static_cast<std::uint64_t>(std::max<std::int64_t>(size, 0)));
        ++size;
      } else {
        detail::check_erase(index, present, *m.id);
        --size;
      }
      if (in_batch != nullptr) *in_batch = m.op == wal::Op::Insert;
    }
  }

  template <class Apply>
  void commit(std::span<const detail::MutationRef> ops, Apply&& apply) {
    check_valid();
    detail::ReadScope::refuse(s_.get(), "a mutation (insert, erase, write)");
    if (s_->engine) {
      // The index changes only inside the engine's commit lock, so validation
      // reads it without the read lock.
      const auto v = [&](const detail::WalEngine::PendingPresence& pending, std::int64_t delta) {
        validate(ops, &pending, delta);
      };
      s_->engine->commit(ops, v, apply);
      return;
    }
    std::lock_guard lk(s_->write_mu);
    throw_if_unusable();
    validate(ops, nullptr, 0);
    apply();
  }

  void check_valid() const {
    if (!s_) throw PersistError::argument("this PersistedIndex was moved from");
  }

  // Without a WAL (the engine refuses by itself): after close(), or after a
  // batch was applied in part.
  void throw_if_unusable() const {
    if (s_->closed) throw PersistError::at(ErrorKind::InvalidArgument, s_->config.path, "the index is closed");
    const std::lock_guard f(s_->failure_mu);
    if (s_->failure) throw PersistError::at(ErrorKind::Poisoned, s_->config.path, *s_->failure);
  }

  std::unique_ptr<State> s_;
};

}  // namespace iqdb::persist
