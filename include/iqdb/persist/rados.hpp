// Snapshots in a Ceph RADOS pool (optional component iqdb::persist_rados,
// built when librados is found; docs/DISTRIBUTED.md).
//
// A snapshot named NAME in pool POOL (`rados://POOL/NAME`) is the same bytes
// a local snapshot file holds, striped over objects `NAME.snap.<gen>.<k>`,
// and published by one atomic, compare-guarded update of `NAME.head`.
// RadosSnapshotStore is a FileSystem: write_snapshot / read_snapshot (and
// so every check they make) work on it unchanged, with the path
// `store.path_of(NAME)`; save_to_rados / load_from_rados wrap them.
//
// RadosWriterLock makes one writer of NAME the only one: an exclusive
// cls_lock lock with a lease, and a fencing epoch every publish compares.
//
// rados_persist_config gives a PersistConfig whose snapshot and write-ahead
// log live in the pool: PersistedIndex<I> (open_with, load, insert, erase,
// write, save, checkpoint, sync, close), with or without the WAL, works on
// it as on local files. The log is objects NAME.log.<gen>.<k>; every group
// commit is one RADOS operation, fenced by the writer's epoch. Read replicas
// (ReadReplica, replica.hpp) follow it and are woken through a watch on
// NAME.notify, which the writer notifies after commits and publishes.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "iqdb/persist/config.hpp"
#include "iqdb/persist/file_system.hpp"
#include "iqdb/persist/format.hpp"
#include "iqdb/persist/index.hpp"
#include "iqdb/persist/snapshot.hpp"

namespace iqdb::persist {

// Where a snapshot lives: `rados://POOL/NAME`, and how to reach the cluster.
struct RadosLocation {
  std::string pool;
  std::string name;  // no '/', no control characters, at most 200 bytes
  // The cluster's configuration file; empty: $CEPH_CONF, then Ceph's usual
  // search (/etc/ceph/ceph.conf, ~/.ceph/config, ./ceph.conf).
  std::string conf_path;
  // The client's id: the cephx user is client.<id>.
  std::string client_id = "admin";

  // Parses `rados://POOL/NAME`; throws PersistError(InvalidArgument).
  static RadosLocation parse(std::string_view url);
  // `rados://POOL/NAME`.
  std::string url() const;
};

struct RadosOptions {
  // Client time-outs, so that a dead or unreachable cluster is an error in
  // bounded time, never a hang: rados_osd_op_timeout (every object
  // operation), rados_mon_op_timeout (monitor commands), client_mount_timeout
  // (connecting). Whole seconds, at least 1.
  std::chrono::seconds op_timeout{30};
  std::chrono::seconds connect_timeout{10};
  // Bytes per stripe object (4 KiB .. 128 MiB, Ceph's osd_max_object_size).
  std::uint64_t stripe_size = std::uint64_t{32} << 20;
  // Bytes per write and per read operation (4 KiB .. 64 MiB: below
  // osd_max_write_size, 90 MB).
  std::uint32_t io_chunk = std::uint32_t{4} << 20;
  // Writes, or reads ahead, in flight at once (1 .. 64). Memory: about
  // (max_in_flight + 1) * io_chunk while saving or loading.
  std::uint32_t max_in_flight = 8;
  // After a publish, keep the generation it superseded (so that a reader
  // that opened it just before can finish); older ones are removed.
  bool keep_previous_generation = true;
  // How long the generations a publish of this store superseded stay
  // readable before its collection removes them (whole seconds, 0 .. 86400):
  // a reader has at least this long after a publish to finish the
  // generation it opened, however many publishes follow (with 0 it has
  // until the next publish, keep_previous_generation, or none). The
  // collection waits on the store's own thread; one not yet due when the
  // store is destroyed is left to the next publish's collection (any
  // writer's) or to collect_garbage, which removes at once.
  std::chrono::seconds reader_grace{0};
  // The write-ahead log: bytes per log object (4 KiB .. 64 MiB). A group
  // commit goes to the current object when it fits, else to a new one; a
  // group larger than this gets an object of its own.
  std::uint64_t log_object_size = std::uint64_t{8} << 20;
  // Read replicas' wake-ups: how long the writer's notify of NAME.notify
  // waits for the watchers' acknowledgements (whole seconds, 1 .. 60;
  // librados counts in seconds). Commits never wait for it; a watcher that
  // died holds each later notification back this long until its watch
  // expires on the OSD (osd_client_watch_timeout, 30 s by default).
  std::chrono::seconds notify_timeout{1};
  // The least time from one notify to the next (0 .. 1000 ms): a writer
  // that commits continuously notifies at most this often, which bounds
  // what its replicas cost the cluster (each notify is about five messages
  // and wakes each replica to a catch-up) at the price of up to this much
  // more lag while it does (docs/PERFORMANCE.md, "Read replicas": 0 and
  // 5 ms measured). A commit after a quieter spell is notified at once.
  std::chrono::milliseconds notify_gap{5};
};

// What NAME.head says (a validated, published head).
struct RadosHead {
  std::uint64_t generation = 0;
  std::uint64_t total_size = 0;  // bytes of the snapshot
  std::uint64_t stripe_size = 0;
  std::uint64_t stripe_count = 0;
  std::vector<std::uint32_t> stripe_crcs;  // CRC-32 of each stripe object's bytes
};

// The FileSystem seam over one pool. Paths are `rados://POOL/NAME` (what
// path_of gives); the temporary name replace_file_atomically makes beside
// it is a generation being written. create_exclusive allocates a new
// generation; the stripes stream out with bounded aio writes in flight;
// rename publishes it (one atomic operation on NAME.head that fails with
// PersistError(Locked) when another writer published first); remove of the
// temporary name deletes the unpublished stripes. open_read opens the
// published generation (stripes fetched ahead in parallel, each stripe's CRC
// checked). After a publish, leftovers (unpublished or superseded
// generations) are removed, behind it on a thread of the store's own; a
// reader never removes anything.
//
// Thread-safe. open_append and lock are Unsupported (the log is not a file
// on RADOS: rados_persist_config's storage writes log objects; the writer
// lock is RadosWriterLock, below); sync_dir does nothing (a
// completed RADOS write is on every replica). While a RadosWriterLock taken
// through this store holds NAME, publishes of NAME carry its fencing check.
// In a child of fork() the client is the parent's: every call that would
// reach the cluster throws PersistError(Forked), and the destructor
// abandons the client instead of shutting it down (docs/API.md, "fork()").
class RadosSnapshotStore final : public FileSystem {
 public:
  // Connects (bounded by options.connect_timeout) and opens location.pool.
  // Throws PersistError(Io) naming the location when that fails.
  static std::unique_ptr<RadosSnapshotStore> open(const RadosLocation& location, const RadosOptions& options = {});
  ~RadosSnapshotStore() override;
  RadosSnapshotStore(const RadosSnapshotStore&) = delete;
  RadosSnapshotStore& operator=(const RadosSnapshotStore&) = delete;

  const std::string& pool() const noexcept;
  const RadosOptions& options() const noexcept;
  // `rados://POOL/NAME`: the path to give write_snapshot / read_snapshot.
  std::filesystem::path path_of(std::string_view name) const;
  // Object names.
  static std::string head_object(std::string_view name);
  static std::string stripe_object(std::string_view name, std::uint64_t generation, std::uint64_t stripe);

  // The published head of NAME, validated; nullopt when none was published.
  std::optional<RadosHead> head(std::string_view name);
  // Remove what no reader can need: stripe and log objects of generations
  // below the published one (except, with keep_previous_generation, the one
  // before it). Lists the pool. Returns the number of objects removed.
  // After every publish a collection runs on a thread of the store's own,
  // without listing the pool: it probes the generations between the head's
  // collection mark and the published one (docs/DISTRIBUTED.md, "Writing");
  // rename() returns once the new head is published, not after the
  // removals (errors there are ignored: the next publish retries), and
  // with options.reader_grace not before that grace has passed. The
  // store's destruction runs what is still queued and due. collect_garbage
  // itself grants no grace.
  std::size_t collect_garbage(std::string_view name);
  // Blocks until the collections queued when it is called have run (not
  // those that publishes queue meanwhile: a stream of publishes cannot put
  // it off); with a reader_grace, that is until their grace has passed.
  void wait_for_garbage_collection();

  // FileSystem.
  std::unique_ptr<WritableFile> create_exclusive(const std::filesystem::path& path) override;
  std::unique_ptr<WritableFile> open_append(const std::filesystem::path& path) override;
  std::unique_ptr<ReadableFile> open_read(const std::filesystem::path& path) override;
  void rename(const std::filesystem::path& from, const std::filesystem::path& to) override;
  void remove(const std::filesystem::path& path) override;
  void sync_dir(const std::filesystem::path& dir) override;
  bool exists(const std::filesystem::path& path) override;
  std::vector<std::string> list_dir(const std::filesystem::path& dir) override;
  std::unique_ptr<FileLock> lock(const std::filesystem::path& path) override;
  std::uint64_t random_u64() override;

  struct Impl;  // internal
  Impl& impl() noexcept { return *impl_; }  // internal

 private:
  explicit RadosSnapshotStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct RadosLockOptions {
  // How long the lock stays held without renewal (2 s .. 1 day). A writer
  // that stops (killed, paused, partitioned) loses it after this long; the
  // holder renews it every lease / 3.
  std::chrono::seconds lease{30};
  // When another writer holds the lock: false, fail at once with Locked;
  // true, wait (up to wait_timeout) for its lease to run out, then fence it
  // and take over.
  bool take_over = false;
  // take_over: how long to wait; 0 = 2 * lease + 30 s.
  std::chrono::seconds wait_timeout{0};
  // Fencing a writer that did not release the lock: blocklist its client
  // address for this long (needs the `osd blocklist` monitor capability).
  // false leaves only the epoch compare of every publish as the fence.
  bool blocklist_previous = true;
  std::chrono::seconds blocklist_expiry{3600};
  // true: once this writer failed to renew within its lease (or learned it
  // lost the lock), its writes fail with Fenced before they are sent.
  // false (for tests): they are sent anyway, so that the cluster's fence
  // (the blocklist, the epoch compare) is what refuses them.
  bool refuse_locally = true;
};

// The single writer of snapshot NAME in a store's pool: an exclusive
// cls_lock lock `iqdb.writer` on NAME.head with a lease, renewed by a
// background thread, and a fencing epoch (attribute iqdb.epoch of NAME.head)
// raised by each acquire. While held, every publish of NAME through `store`
// is applied only if NAME.head still carries this writer's epoch (a compare
// in the same RADOS operation). A writer that lost the lock (a newer writer
// took over after its lease ran out) gets PersistError(Fenced) from then on
// and nothing it publishes becomes visible. The store must outlive the lock.
// In a child of fork() the lock is the parent's: held() is false, check()
// throws Forked, release() and the destructor do nothing.
class RadosWriterLock {
 public:
  // Throws PersistError(Locked) when another writer holds the lock (or
  // still holds it after wait_timeout with take_over), Io when RADOS fails,
  // Fenced when this client itself is blocklisted.
  static std::unique_ptr<RadosWriterLock> acquire(RadosSnapshotStore& store, std::string_view name,
                                                  const RadosLockOptions& options = {});
  ~RadosWriterLock();  // release(), errors ignored
  RadosWriterLock(const RadosWriterLock&) = delete;
  RadosWriterLock& operator=(const RadosWriterLock&) = delete;

  // Stops renewing, clears this writer's address from NAME.head (so the
  // next writer need not fence it) and unlocks. Idempotent.
  void release();
  // This writer's fencing epoch (1 for the first writer of NAME).
  std::uint64_t epoch() const noexcept;
  // This client's address as the OSDs see it.
  const std::string& address() const noexcept;
  // The address of the previous writer this acquire blocklisted (it had not
  // released the lock); empty when none was.
  const std::string& fenced_writer() const noexcept;
  // False once the lock is lost (renewal refused, the lease ran out, or a
  // publish found a newer epoch) or released.
  bool held() const noexcept;
  // Throws PersistError(Fenced) when the lock is lost.
  void check() const;

  struct State;  // internal
  const State& state() const noexcept { return *s_; }  // internal

 private:
  explicit RadosWriterLock(std::unique_ptr<State> state);
  std::unique_ptr<State> s_;
};

// A PersistConfig for PersistedIndex<I> whose snapshot and write-ahead log
// live in RADOS as NAME (path = `rados://POOL/NAME`; set wal_enabled,
// fsync_policy, compression on it as for files). Opening for writing (a load
// or open_with with the WAL, a save without it) takes a RadosWriterLock with
// `lock`, held until close; a writer that lost it gets Fenced. The store
// (its client) is shared by every copy of the config; the first form
// connects one (RadosSnapshotStore::open).
PersistConfig rados_persist_config(const RadosLocation& location, const RadosOptions& options = {},
                                   const RadosLockOptions& lock = {});
PersistConfig rados_persist_config(std::shared_ptr<RadosSnapshotStore> store, std::string_view name,
                                   const RadosLockOptions& lock = {});

// Save `index` as snapshot NAME (atomic: readers see the previous snapshot
// or this one). Throws PersistError(Locked) when another writer published
// a generation since this one started, and, unless this store holds a
// RadosWriterLock for NAME, while any writer holds it (or stopped without
// releasing it): a save without the lock never replaces a live writer's
// snapshot. With the lock, Fenced once a newer writer took over.
template <Persistable I>
FileHeader save_to_rados(RadosSnapshotStore& store, std::string_view name, const I& index,
                         Compression compression = Compression::none(), std::uint64_t last_lsn = 0,
                         const ReadLimits& limits = {}) {
  const SnapshotInfo info{I::index_type, static_cast<std::uint64_t>(index.dim()), index.metric(),
                          static_cast<std::uint64_t>(index.size()), last_lsn};
  return write_snapshot(store, store.path_of(name), info, compression, true,
                        [&index](PayloadWriter& w) { index.save_to(w); }, limits);
}

// Load snapshot NAME, verified as a file is (header, CRC, payload checks),
// plus each stripe's CRC.
template <Persistable I>
I load_from_rados(RadosSnapshotStore& store, std::string_view name, const ReadLimits& limits = {}) {
  std::optional<I> loaded;
  read_snapshot(store, store.path_of(name), I::index_type, limits,
                [&](PayloadReader& r, const FileHeader&) { loaded.emplace(I::load_from(r)); });
  return std::move(*loaded);
}

}  // namespace iqdb::persist
