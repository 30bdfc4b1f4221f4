// PersistedIndex<FlatIndex> on RADOS against plain librados doing the same
// I/O (docs/PERFORMANCE.md, "RADOS"). Needs a cluster: CEPH_CONF and a pool
// (IQDB_RADOS_POOL or --pool), as scripts/ceph-cluster.sh run sets them:
//
//   scripts/ceph-cluster.sh run --osds 3 -- BUILD/bench/iqdb_rados_wal_bench
//
// Each figure is a ratio to its limit measured in the same run:
//  - WAL Always, one thread: records per second against a loop of
//    synchronous rados_append calls of the same record size (goal >= 0.9);
//    also against a loop of the log's own operation shape (cmpxattr of the
//    epoch, write at the object's end, setxattr of its size), which splits
//    the gap between the operation's shape and the engine;
//  - 4 and 16 threads: against one thread (goals >= 3 and >= 8: group commit);
//  - save and load of N x dim vectors (default 1M x 128: start the cluster
//    with --memstore-mib 3072, 1 GiB memstore OSDs hold three generations of
//    at most ~300 MB) without the WAL: against aio writes / reads of the same
//    bytes to objects of the same stripe size with the same operations in
//    flight (goal <= 1.15 x the time). The read limit reads into one fresh
//    (untouched) buffer of the snapshot's size, as a program that wants the
//    bytes in memory does (bench_util's time_read_fresh for a file); the
//    figure for reused buffers (librados's transfer alone) is printed too.
//    Each round times a save and its limit, then --load-pairs (default 3)
//    pairs of a load and its limit; --snapshot-only skips the WAL part.
//  - --watchers N: N read replicas (each its own client, in this process)
//    follow every WAL run, woken by the writer's notifications (watch/notify
//    on NAME.notify, polling every 10 s): the writer then notifies them
//    after its commits. Default 0: no replica watches (the writer's notifier
//    finds no watcher and sends about 4 notifies a second).
//  - --gc-pool-objects N (alone): the garbage collection after a publish in
//    a pool that holds N other objects (no goal: it probes generations,
//    where a listing of the pool grows with N), beside collect_garbage,
//    which lists, and a listing alone.
// Timed: what a user's code does (the inserts; save(); load()); connecting,
// opening the index and creating the data are not. Before each timed save,
// load and limit, memory is touched and freed (bench::prepare_memory: this
// VM's free page reporting, docs/PERFORMANCE.md) unless --cold-memory; and
// before each timed save and write limit, as many bytes are written to the
// OSDs and removed again (prime_osds) unless --cold-osds.
#include <rados/librados.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.hpp"
#include "iqdb/persist.hpp"
#include "iqdb/persist/rados.hpp"

namespace iqdb::persist {
namespace {

using bench::die;
using bench::seconds;

struct Args {
  std::string pool;
  std::uint64_t records = 2000;  // per WAL run
  std::uint64_t vectors = 1000000;
  std::uint64_t dim = 128;
  int repeats = 3;
  int load_pairs = 3;  // load / limit pairs per round
  int watchers = 0;    // read replicas following each WAL run
  bool cold_osds = false;  // --cold-osds: no prime_osds() before the timed writes
};

std::string unique(const std::string& what) {
  std::random_device rd;
  return "bench-" + what + "-" + std::to_string(rd() % 1000000000u);
}

// CPU seconds (user + system) this process has used, all threads.
double cpu_seconds() {
  rusage u{};
  (void)getrusage(RUSAGE_SELF, &u);
  const auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) * 1e-6; };
  return s(u.ru_utime) + s(u.ru_stime);
}

// This process's CPU seconds and minor page faults (all threads): a load
// whose client library gets fresh memory for its message buffers faults
// once per 4 KiB page, which on this VM costs more than the copy.
struct Usage {
  double cpu = 0;
  long faults = 0;
};
Usage usage_now() {
  rusage u{};
  (void)getrusage(RUSAGE_SELF, &u);
  return {cpu_seconds(), u.ru_minflt};
}
Usage usage_since(const Usage& before) {
  const Usage now = usage_now();
  return {now.cpu - before.cpu, now.faults - before.faults};
}

// A raw client for the limits.
struct Raw {
  rados_t cluster = nullptr;
  rados_ioctx_t io = nullptr;
  explicit Raw(const std::string& pool) {
    // A time-out, so that a full cluster is an error, not a hang.
    if (rados_create2(&cluster, "ceph", "client.admin", 0) != 0 || rados_conf_read_file(cluster, nullptr) != 0 ||
        rados_conf_set(cluster, "rados_osd_op_timeout", "60") != 0 || rados_connect(cluster) != 0 || rados_ioctx_create(cluster, pool.c_str(), &io) != 0) {
      die("cannot connect to the cluster (CEPH_CONF) or open pool " + pool);
    }
  }
  ~Raw() {
    rados_ioctx_destroy(io);
    rados_shutdown(cluster);
  }
  Raw(const Raw&) = delete;
  Raw& operator=(const Raw&) = delete;
};

std::vector<float> row(std::uint64_t id, std::uint64_t dim) {
  std::vector<float> v(dim);
  for (std::uint64_t i = 0; i < dim; ++i) v[i] = static_cast<float>((id * 31 + i) % 1000) * 0.001f;
  return v;
}

PersistConfig config(const Args& a, const std::string& name, bool wal) {
  RadosLocation loc;
  loc.pool = a.pool;
  loc.name = name;
  PersistConfig cfg = rados_persist_config(loc);
  cfg.wal_enabled = wal;
  cfg.fsync_policy = FsyncPolicy::always();
  return cfg;
}

// Records per second of `threads` writers inserting a.records in all, and
// the log bytes per record.
struct WalRun {
  double rate = 0;
  double bytes_per_record = 0;
  double records_per_append = 0;
  double cpu_us_per_record = 0;  // this process's CPU in the timed region
};

WalRun wal_run(const Args& a, int threads) {
  const std::string name = unique("wal");
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(a.dim, DistanceMetric::Euclidean), config(a, name, true));
  std::vector<ReadReplica<FlatIndex>> replicas;
  for (int k = 0; k < a.watchers; ++k) {
    replicas.push_back(ReadReplica<FlatIndex>::open(config(a, name, false)));
    FollowOptions o;
    o.interval = std::chrono::seconds(10);
    replicas.back().start_following(o);
  }
  for (auto& r : replicas) {
    for (int w = 0; w < 5000 && !r.watching(); ++w) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (!r.watching()) die("a replica's watch did not stand within 5 s");
  }
  std::vector<std::vector<float>> rows;
  for (std::uint64_t i = 0; i < a.records; ++i) rows.push_back(row(i, a.dim));
  const std::uint64_t before = db.wal_stats().log_syncs;
  std::atomic<std::uint64_t> next{0};
  const double cpu0 = cpu_seconds();
  const double t = seconds([&] {
    std::vector<std::thread> ts;
    for (int k = 0; k < threads; ++k) {
      ts.emplace_back([&] {
        for (std::uint64_t i = next++; i < a.records; i = next++) db.insert(i + 1, rows[i]);
      });
    }
    for (auto& th : ts) th.join();
  });
  WalRun r;
  r.cpu_us_per_record = (cpu_seconds() - cpu0) / static_cast<double>(a.records) * 1e6;
  r.rate = static_cast<double>(a.records) / t;
  r.records_per_append = static_cast<double>(a.records) / static_cast<double>(db.wal_stats().log_syncs - before);
  replicas.clear();
  db.close();
  // The log's bytes: every object of the log of the published generation.
  Raw raw(a.pool);
  const auto head = RadosSnapshotStore::open(RadosLocation{a.pool, name, "", "admin"})->head(name);
  std::uint64_t bytes = 0;
  for (std::uint64_t k = 0;; ++k) {
    std::uint64_t size = 0;
    std::time_t mtime = 0;
    const std::string oid = name + ".log." + std::to_string(head->generation) + "." + std::to_string(k);
    if (rados_stat(raw.io, oid.c_str(), &size, &mtime) != 0) break;
    bytes += size;
  }
  r.bytes_per_record = static_cast<double>(bytes - 40) / static_cast<double>(a.records);  // less the header
  return r;
}

// The limit: synchronous appends of `size` bytes, one after the other.
double append_limit(const Args& a, std::size_t size) {
  Raw raw(a.pool);
  const std::string oid = unique("append");
  std::vector<char> rec(size, 'x');
  const double t = seconds([&] {
    for (std::uint64_t i = 0; i < a.records; ++i) {
      if (rados_append(raw.io, oid.c_str(), rec.data(), rec.size()) < 0) die("rados_append failed");
    }
  });
  return static_cast<double>(a.records) / t;
}

// The log's operation shape in a plain loop: one synchronous write
// operation per record, comparing the epoch attribute, writing at the
// object's end and setting its size attribute (docs/FORMAT.md, "RADOS
// objects of the write-ahead log"); the first also creates the object.
double compound_limit(const Args& a, std::size_t size) {
  Raw raw(a.pool);
  const std::string oid = unique("compound");
  const std::string epoch = "1";
  std::vector<char> rec(size, 'x');
  std::uint64_t end = 0;
  const double t = seconds([&] {
    for (std::uint64_t i = 0; i < a.records; ++i) {
      rados_write_op_t op = rados_create_write_op();
      if (i == 0) {
        rados_write_op_create(op, LIBRADOS_CREATE_EXCLUSIVE, nullptr);
        rados_write_op_setxattr(op, "iqdb.epoch", epoch.data(), epoch.size());
      } else {
        rados_write_op_cmpxattr(op, "iqdb.epoch", LIBRADOS_CMPXATTR_OP_EQ, epoch.data(), epoch.size());
      }
      rados_write_op_write(op, rec.data(), rec.size(), end);
      end += rec.size();
      const std::string size_attr = std::to_string(end);
      rados_write_op_setxattr(op, "iqdb.size", size_attr.data(), size_attr.size());
      const int r = rados_write_op_operate(op, raw.io, oid.c_str(), nullptr, 0);
      rados_release_write_op(op);
      if (r < 0) die("compound write operation failed");
    }
  });
  (void)rados_remove(raw.io, oid.c_str());
  return static_cast<double>(a.records) / t;
}

enum class Limit { Write, ReadReused, ReadFresh };

// `n` bytes of new anonymous memory advised for huge pages, as FlatIndex
// takes for its vectors (a plain malloc gets 4 KiB pages: on this VM each
// first touch then costs several times more, which would flatter the load).
char* map_fresh(std::uint64_t n) {
  void* p = ::mmap(nullptr, static_cast<std::size_t>(n), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap failed");
  (void)::madvise(p, static_cast<std::size_t>(n), MADV_HUGEPAGE);
  return static_cast<char*>(p);
}

// The limit for a save / load: aio writes (or reads) of `total` bytes in
// io_chunk pieces to objects of stripe_size bytes, max_in_flight at once.
// Writes and ReadReused go from / to max_in_flight + 1 buffers in turn;
// ReadFresh reads each piece to its place in one new buffer of `total`
// bytes (mapped in the timed region, not touched before, unmapped after it).
double striped_limit(const Args& a, std::uint64_t total, Limit kind, const std::string& prefix, Usage* used = nullptr) {
  const RadosOptions o;
  Raw raw(a.pool);
  const bool write = kind == Limit::Write;
  std::vector<char> buf(static_cast<std::size_t>(o.io_chunk) * (o.max_in_flight + 1), 'y');
  char* fresh = nullptr;
  std::deque<rados_completion_t> flying;
  const auto reap = [&] {
    rados_aio_wait_for_complete(flying.front());
    if (rados_aio_get_return_value(flying.front()) < 0) die("aio failed");
    rados_aio_release(flying.front());
    flying.pop_front();
  };
  std::size_t slot = 0;
  bench::prepare_memory();
  const Usage before = usage_now();
  const double t = seconds([&] {
    if (kind == Limit::ReadFresh) fresh = map_fresh(total);
    for (std::uint64_t off = 0; off < total;) {
      const std::uint64_t k = off / o.stripe_size;
      const std::uint64_t in = off - k * o.stripe_size;
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>({o.io_chunk, total - off, o.stripe_size - in}));
      const std::string oid = prefix + "." + std::to_string(k);
      rados_completion_t c = nullptr;
      rados_aio_create_completion2(nullptr, nullptr, &c);
      char* at = fresh != nullptr ? fresh + off : buf.data() + (slot++ % (o.max_in_flight + 1)) * o.io_chunk;
      const int r = write ? rados_aio_write(raw.io, oid.c_str(), c, at, n, in)
                          : rados_aio_read(raw.io, oid.c_str(), c, at, n, in);
      if (r < 0) die("aio submit failed");
      flying.push_back(c);
      while (flying.size() >= o.max_in_flight) reap();
      off += n;
    }
    while (!flying.empty()) reap();
  });
  if (used != nullptr) *used = usage_since(before);
  if (fresh != nullptr) ::munmap(fresh, static_cast<std::size_t>(total));
  return t;
}

void remove_striped(const Args& a, std::uint64_t total, const std::string& prefix) {
  const RadosOptions o;
  Raw raw(a.pool);
  for (std::uint64_t k = 0; k * o.stripe_size < total; ++k) {
    (void)rados_remove(raw.io, (prefix + "." + std::to_string(k)).c_str());
  }
}

void bench_wal(const Args& a) {
  std::printf("WAL, FsyncPolicy::Always, %llu records of dim %llu per run (median of %d runs)\n",
              static_cast<unsigned long long>(a.records), static_cast<unsigned long long>(a.dim), a.repeats);
  std::vector<double> one, limit, compound, four, sixteen, per4, per16, vs_limit, vs_compound;
  std::vector<double> cpu[3];  // client CPU microseconds per record: 1 thread, append loop, op-shape loop
  // The record size the limits write: the log bytes a record takes.
  Args probe = a;
  probe.records = 50;
  const double bytes = wal_run(probe, 1).bytes_per_record;
  const auto size = static_cast<std::size_t>(bytes);
  for (int i = 0; i < a.repeats; ++i) {
    // The three one-thread loops in a rotating order: the machine's load
    // drifts, and none of them should always run first.
    for (int k = 0; k < 3; ++k) {
      const double cpu0 = cpu_seconds();
      switch ((i + k) % 3) {
        case 0: {
          const WalRun w = wal_run(a, 1);
          one.push_back(w.rate);
          cpu[0].push_back(w.cpu_us_per_record);
          break;
        }
        case 1: limit.push_back(append_limit(a, size)); break;
        default: compound.push_back(compound_limit(a, size)); break;
      }
      if ((i + k) % 3 != 0) cpu[(i + k) % 3].push_back((cpu_seconds() - cpu0) / static_cast<double>(a.records) * 1e6);
    }
    vs_limit.push_back(one.back() / limit.back());
    vs_compound.push_back(one.back() / compound.back());
    std::printf("  run %d: 1 thread %.0f rec/s, rados_append loop %.0f, op-shape loop %.0f\n", i + 1, one.back(),
                limit.back(), compound.back());
    const WalRun w4 = wal_run(a, 4);
    four.push_back(w4.rate);
    per4.push_back(w4.records_per_append);
    const WalRun w16 = wal_run(a, 16);
    sixteen.push_back(w16.rate);
    per16.push_back(w16.records_per_append);
  }
  const double l = bench::median(limit), o = bench::median(one), c = bench::median(compound);
  std::printf("  record bytes in the log           %.0f\n", bytes);
  std::printf("  limit: rados_append loop          %8.0f rec/s\n", l);
  std::printf("  the log's op shape, plain loop    %8.0f rec/s   %.2fx the limit\n", c, c / l);
  std::printf("  1 thread                          %8.0f rec/s   %.2fx the limit (goal >= 0.9), %.2fx the op-shape loop"
              " (medians of the per-run ratios)\n",
              o, bench::median(vs_limit), bench::median(vs_compound));
  std::printf("  client CPU per record (this process, all threads, the timed loop only; the limits' include connecting):"
              " 1 thread %.0f us, rados_append loop %.0f us, op-shape loop %.0f us\n",
              bench::median(cpu[0]), bench::median(cpu[1]), bench::median(cpu[2]));
  std::printf("  4 threads                         %8.0f rec/s   %.2fx 1 thread (goal >= 3), %.1f records per append\n",
              bench::median(four), bench::median(four) / o, bench::median(per4));
  std::printf("  16 threads                        %8.0f rec/s   %.2fx 1 thread (goal >= 8), %.1f records per append\n",
              bench::median(sixteen), bench::median(sixteen) / o, bench::median(per16));
}

// Before each timed save and each write limit: `total` bytes written to
// objects of the same striping and removed again, untimed. Both write the
// same number of new bytes into the OSDs, and a memstore OSD takes what it
// stores from its process's memory: memory it freed earlier (objects
// removed) is handed out again at once, new memory costs a fault per page
// in this VM (docs/PERFORMANCE.md, "Why the benchmark warms memory"). The
// save frees the generation before last at its end, the limit's objects are
// removed at the end of a round: without this step, whichever of the two
// ran right after such a removal wrote into freed memory and the other into
// new (measured: the same aio writes took 2.52 s in one round, 0.74 s in
// the next). With it, both find as much freed memory in the OSDs.
void prime_osds(const Args& a, std::uint64_t total) {
  if (a.cold_osds || total == 0) return;
  const std::string prefix = unique("prime");
  (void)striped_limit(a, total, Limit::Write, prefix);
  remove_striped(a, total, prefix);
}

void bench_snapshot(const Args& a) {
  const std::string name = unique("snap");
  // The store is kept here to wait for the removals that run behind each
  // publish (RadosSnapshotStore::wait_for_garbage_collection), untimed, so
  // that they never overlap the next timed region.
  const std::shared_ptr<RadosSnapshotStore> store = RadosSnapshotStore::open(RadosLocation{a.pool, name, "", "admin"});
  PersistConfig cfg = rados_persist_config(store, name);
  cfg.fsync_policy = FsyncPolicy::always();
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(a.dim, DistanceMetric::Euclidean), cfg);
  {
    std::vector<float> v(a.dim);
    for (std::uint64_t i = 0; i < a.vectors; ++i) {
      for (std::uint64_t d = 0; d < a.dim; ++d) v[d] = static_cast<float>((i + d) % 997);
      db.index_mut().insert(i, v);
    }
  }
  std::vector<double> save, wlimit, load, rlimit, reused, save_ratio, load_ratio, reused_ratio, load_cpu, rlimit_cpu;
  std::vector<double> load_faults, rlimit_faults;
  std::vector<double> behind;  // the wait for the removals after each timed save
  Usage load_used, rlimit_used;
  // One save, untimed, for the snapshot's size (the limits and prime_osds
  // need it before the first timed save).
  (void)db.save();
  const std::uint64_t total =
      RadosSnapshotStore::open(RadosLocation{a.pool, name, "", "admin"})->head(name)->total_size;
  const auto time_save = [&] {
    prime_osds(a, total);
    bench::prepare_memory();
    save.push_back(seconds([&] { (void)db.save(); }));
    behind.push_back(seconds([&] { store->wait_for_garbage_collection(); }));
  };
  const auto time_load = [&] {
    const PersistConfig lc = config(a, name, false);  // connects: not timed, as for the limits
    bench::prepare_memory();
    // The loaded index is dropped after the timed region, as the limit
    // unmaps its buffer after its own.
    std::optional<PersistedIndex<FlatIndex>> loaded;
    const Usage before = usage_now();
    load.push_back(seconds([&] { loaded.emplace(PersistedIndex<FlatIndex>::load(lc)); }));
    load_used = usage_since(before);
  };
  std::printf("Snapshot of %llu x %llu, default RadosOptions: %d rounds, each a save and its limit, then %d pairs of a "
              "load and its limit (order alternating)\n",
              static_cast<unsigned long long>(a.vectors), static_cast<unsigned long long>(a.dim), a.repeats,
              a.load_pairs);
  for (int i = 0; i < a.repeats; ++i) {
    const std::string prefix = unique("raw");
    // The first round saves first, the next one writes first, and so on.
    for (int k = 0; k < 2; ++k) {
      if ((i + k) % 2 == 0) {
        time_save();
      } else {
        prime_osds(a, total);
        wlimit.push_back(striped_limit(a, total, Limit::Write, prefix));
      }
    }
    save_ratio.push_back(save.back() / wlimit.back());
    std::printf("  round %d: save %.2f s, aio writes %.2f s: %.2fx\n", i + 1, save.back(), wlimit.back(),
                save_ratio.back());
    // Loads are short and the machine's load drifts: several load / limit
    // pairs per round, each ratio taken within its pair.
    for (int p = 0; p < a.load_pairs; ++p) {
      for (int k = 0; k < 2; ++k) {
        if ((i + p + k) % 2 == 0) {
          time_load();
        } else {
          rlimit.push_back(striped_limit(a, total, Limit::ReadFresh, prefix, &rlimit_used));
        }
      }
      reused.push_back(striped_limit(a, total, Limit::ReadReused, prefix));
      load_ratio.push_back(load.back() / rlimit.back());
      reused_ratio.push_back(load.back() / reused.back());
      load_cpu.push_back(load_used.cpu);
      rlimit_cpu.push_back(rlimit_used.cpu);
      load_faults.push_back(static_cast<double>(load_used.faults));
      rlimit_faults.push_back(static_cast<double>(rlimit_used.faults));
      std::printf("    load %.2f s, aio reads into a fresh buffer %.2f s (%.2fx), into reused buffers %.2f s (%.2fx); "
                  "CPU load %.2f s / reads %.2f s, page faults %ld / %ld\n",
                  load.back(), rlimit.back(), load_ratio.back(), reused.back(), reused_ratio.back(), load_used.cpu,
                  rlimit_used.cpu, load_used.faults, rlimit_used.faults);
    }
    remove_striped(a, total, prefix);  // memstore keeps every replica in RAM
  }
  std::printf("  snapshot %.0f MB; medians: save %.2f s, aio writes %.2f s; load %.2f s, aio reads %.2f s (fresh buffer), "
              "%.2f s (reused buffers)\n",
              static_cast<double>(total) / 1e6, bench::median(save), bench::median(wlimit), bench::median(load),
              bench::median(rlimit), bench::median(reused));
  std::printf("  save / aio writes: %.2fx (median of the rounds' ratios; goal <= 1.15)\n", bench::median(save_ratio));
  std::printf("  after each save, the removal of the superseded generation still running behind it: median %.0f ms "
              "(context: waited for untimed)\n",
              bench::median(behind) * 1e3);
  std::printf("  load / aio reads into a fresh buffer: %.2fx (median of the pairs' ratios; goal <= 1.15)\n",
              bench::median(load_ratio));
  std::printf("  load / aio reads into reused buffers (transfer only): %.2fx\n", bench::median(reused_ratio));
  std::printf("  medians, this process's CPU: load %.2f s, aio reads into a fresh buffer %.2f s; minor page faults: "
              "%.0f / %.0f\n",
              bench::median(load_cpu), bench::median(rlimit_cpu), bench::median(load_faults),
              bench::median(rlimit_faults));
}

// The collection behind a publish in a pool that holds `others` objects of
// other indexes (or anything else): each checkpoint's collection probes the
// generations below the published one, where a listing of the pool costs
// what the pool holds. Times the collection after each of `a.repeats`
// publishes of a small index (wait_for_garbage_collection right after the
// save: the removals of the generation before the kept one) and
// collect_garbage (which lists the pool), and the listing alone.
void bench_collection(const Args& a, std::uint64_t others) {
  Raw raw(a.pool);
  const std::string prefix = unique("other") + "-";
  {
    // The pool's other objects (setup, untimed): 32 small writes in flight.
    std::deque<rados_completion_t> flying;
    const auto reap = [&] {
      (void)rados_aio_wait_for_complete(flying.front());
      if (rados_aio_get_return_value(flying.front()) < 0) die("writing the pool's other objects failed");
      rados_aio_release(flying.front());
      flying.pop_front();
    };
    for (std::uint64_t i = 0; i < others; ++i) {
      rados_completion_t c = nullptr;
      (void)rados_aio_create_completion2(nullptr, nullptr, &c);
      const std::string oid = prefix + std::to_string(i);
      if (rados_aio_write_full(raw.io, oid.c_str(), c, "x", 1) < 0) die("cannot write " + oid);
      flying.push_back(c);
      if (flying.size() >= 32) reap();
    }
    while (!flying.empty()) reap();
  }
  const std::string name = unique("gc");
  const std::shared_ptr<RadosSnapshotStore> store = RadosSnapshotStore::open(RadosLocation{a.pool, name, "", "admin"});
  PersistConfig cfg = rados_persist_config(store, name);
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(a.dim, DistanceMetric::Euclidean), cfg);
  for (std::uint64_t i = 0; i < 1000; ++i) db.index_mut().insert(i, row(i, a.dim));
  (void)db.save();
  (void)db.save();
  store->wait_for_garbage_collection();
  std::vector<double> behind, listed, listing;
  for (int r = 0; r < a.repeats; ++r) {
    (void)db.save();
    behind.push_back(seconds([&] { store->wait_for_garbage_collection(); }));
    listed.push_back(seconds([&] { (void)store->collect_garbage(name); }));
    listing.push_back(seconds([&] {
      rados_list_ctx_t ctx = nullptr;
      if (rados_nobjects_list_open(raw.io, &ctx) < 0) die("cannot list the pool");
      const char* entry = nullptr;
      while (rados_nobjects_list_next(ctx, &entry, nullptr, nullptr) == 0) {
      }
      rados_nobjects_list_close(ctx);
    }));
  }
  std::printf("collection after a publish, pool with %llu other objects (median of %d): %.1f ms probing; "
              "collect_garbage (lists the pool) %.1f ms; a listing of the pool alone %.1f ms\n",
              static_cast<unsigned long long>(others), a.repeats, bench::median(behind) * 1e3,
              bench::median(listed) * 1e3, bench::median(listing) * 1e3);
  db.close();
  store->remove(store->path_of(name));
  for (std::uint64_t i = 0; i < others; ++i) (void)rados_remove(raw.io, (prefix + std::to_string(i)).c_str());
}

}  // namespace
}  // namespace iqdb::persist

int main(int argc, char** argv) {
  using namespace iqdb::persist;
  bench::set_program_name("iqdb_rados_wal_bench");
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  Args a;
  if (const char* p = std::getenv("IQDB_RADOS_POOL")) a.pool = p;
  bool wal = true, snap = true, cold = false;
  std::uint64_t gc_others = 0;  // --gc-pool-objects: the collection's benchmark alone
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&] {
      if (i + 1 >= argc) die(arg + " needs a value");
      return std::string(argv[++i]);
    };
    if (arg == "--pool") {
      a.pool = value();
    } else if (arg == "--records") {
      a.records = std::stoull(value());
    } else if (arg == "--vectors") {
      a.vectors = std::stoull(value());
    } else if (arg == "--dim") {
      a.dim = std::stoull(value());
    } else if (arg == "--repeats") {
      a.repeats = std::stoi(value());
    } else if (arg == "--load-pairs") {
      a.load_pairs = std::stoi(value());
    } else if (arg == "--wal-only") {
      snap = false;
    } else if (arg == "--snapshot-only") {
      wal = false;
    } else if (arg == "--cold-memory") {
      cold = true;
    } else if (arg == "--cold-osds") {
      a.cold_osds = true;
    } else if (arg == "--watchers") {
      a.watchers = std::max(0, std::stoi(value()));
    } else if (arg == "--gc-pool-objects") {
      gc_others = std::stoull(value());
    } else {
      die("usage: iqdb_rados_wal_bench [--pool P] [--records N] [--vectors N] [--dim D] [--repeats R] "
          "[--load-pairs P] [--wal-only | --snapshot-only] [--cold-memory] [--cold-osds] [--watchers N] "
          "[--gc-pool-objects N]");
    }
  }
  // As persist_bench: what the index takes, and 64 MiB.
  bench::set_warm_bytes(cold ? 0 : static_cast<std::size_t>(a.vectors * (4 * a.dim + 80) + (std::uint64_t{64} << 20)));
  if (a.pool.empty()) die("no pool: set IQDB_RADOS_POOL or pass --pool");
  try {
    if (gc_others > 0) {
      bench_collection(a, gc_others);
      return 0;
    }
    if (wal) bench_wal(a);
    if (snap) bench_snapshot(a);
  } catch (const std::exception& e) {
    die(e.what());
  }
  return 0;
}
