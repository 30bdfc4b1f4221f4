// Write-ahead log benchmarks: each figure beside its raw limit measured in
// the same run, as a ratio. The cases run in interleaved rounds (every case
// once per round, in a fresh directory), so that a slow spell of the disk
// hits every case alike; a ratio is the median over the rounds of the ratio
// within a round. Usage (docs/PERFORMANCE.md):
//   iqdb_wal_bench [--dir DIR] [--sync-ops N] [--nosync-ops N] [--replay-records N] [--repeats N] [--no-rocksdb]
//                  [--no-prefault]
//   iqdb_wal_bench --group-profile [--dir DIR] [--sync-ops N] [--repeats N] [--commit-spin US]
// (--group-profile: only Always inserts from 1 and 4 threads, with the CPU
// time and context switches of the process per commit. --no-prefault:
// FlatIndex's touched-reserve worker off, to see what it costs or saves.)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <iqdb/persist.hpp>

#include "bench_util.hpp"

#ifdef IQDB_BENCH_HAVE_ROCKSDB
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#endif

namespace fs = std::filesystem;
using namespace iqdb::persist;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t kDim = 128;
// The frame of one dim-128 insert with a u64 id and no metadata:
// 8 (frame header) + 20 (lsn, count, synced lsn) + 1 + 1 + 8 + 4 + 512 + 1.
constexpr std::size_t kRecordBytes = 8 + 20 + 1 + 1 + 8 + 4 + kDim * 4 + 1;

struct Options {
  fs::path dir = "bench-wal-tmp";
  std::size_t sync_ops = 3000;
  std::size_t nosync_ops = 200000;
  std::size_t replay_records = 1000000;
  bool rocksdb = true;
  int repeats = 5;
  // Before each unwarmed case: the pause after which this VM has handed
  // freed memory back to the host (see docs/PERFORMANCE.md, "Why the
  // benchmark warms memory"), so that it meets memory as a program started
  // on an idle machine does.
  int settle_ms = 3000;
  bool group_profile = false;
  int commit_spin_us = -1;  // -1: PersistConfig's default
};

// Commits per fdatasync of each multi-threaded run (WalStats).
std::vector<double> g_commits_per_sync;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void die(const char* what) { iqdb::persist::bench::die_errno(what); }

std::vector<std::vector<float>> make_vectors(std::size_t n) {
  std::mt19937 rng(42);
  std::normal_distribution<float> g;
  std::vector<std::vector<float>> v(std::min<std::size_t>(n, 4096), std::vector<float>(kDim));
  for (auto& x : v)
    for (auto& f : x) f = g(rng);
  return v;
}

// ---------------------------------------------------------------- raw limits

double raw_append_sync(const fs::path& d, std::size_t n) {
  const std::vector<char> rec(kRecordBytes, 'x');
  const int fd = ::open((d / "raw.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) die("open");
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    if (::write(fd, rec.data(), rec.size()) != static_cast<ssize_t>(rec.size())) die("write");
    if (::fdatasync(fd) != 0) die("fdatasync");
  }
  const double s = seconds_since(t0);
  ::close(fd);
  return static_cast<double>(n) / s;
}

double raw_prezeroed_sync(const fs::path& d, std::size_t n) {
  const std::vector<char> rec(kRecordBytes, 'x');
  const int fd = ::open((d / "raw.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) die("open");
  const std::vector<char> zeros(1 << 20, 0);
  for (std::size_t w = 0; w < n * kRecordBytes; w += zeros.size()) {
    if (::write(fd, zeros.data(), zeros.size()) != static_cast<ssize_t>(zeros.size())) die("write");
  }
  if (::fsync(fd) != 0) die("fsync");
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    if (::pwrite(fd, rec.data(), rec.size(), static_cast<off_t>(i * kRecordBytes)) != static_cast<ssize_t>(rec.size()))
      die("pwrite");
    if (::fdatasync(fd) != 0) die("fdatasync");
  }
  const double s = seconds_since(t0);
  ::close(fd);
  return static_cast<double>(n) / s;
}

double raw_append_nosync(const fs::path& d, std::size_t n) {
  const std::vector<char> rec(kRecordBytes, 'x');
  const int fd = ::open((d / "raw.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) die("open");
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    if (::write(fd, rec.data(), rec.size()) != static_cast<ssize_t>(rec.size())) die("write");
  }
  const double s = seconds_since(t0);
  ::close(fd);
  return static_cast<double>(n) / s;
}

// The stricter limit for an insert under Never (issue 14): the raw write()
// loop plus the first touch of the same bytes of fresh memory (an anonymous
// mapping in base pages, as FlatIndex's vectors grown by appends are; unmapped
// outside the timer), which an index that keeps the vectors must pay too.
double raw_append_nosync_touch(const fs::path& d, std::size_t n) {
  const std::vector<char> rec(kRecordBytes, 'x');
  const int fd = ::open((d / "raw.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) die("open");
  const std::size_t bytes = n * kRecordBytes;
  const auto t0 = Clock::now();
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  (void)::madvise(p, bytes, MADV_NOHUGEPAGE);  // as FlatIndex's vectors grown by appends
  auto* mem = static_cast<char*>(p);
  for (std::size_t i = 0; i < n; ++i) {
    if (::write(fd, rec.data(), rec.size()) != static_cast<ssize_t>(rec.size())) die("write");
    std::memcpy(mem + i * kRecordBytes, rec.data(), rec.size());
  }
  const double s = seconds_since(t0);
  ::munmap(p, bytes);
  ::close(fd);
  return static_cast<double>(n) / s;
}

// ---------------------------------------------------------------- iqdb-persist

// An index that keeps nothing: isolates the cost of the log path (encode,
// validate, CRC, append, policy) from the cost of applying to a real index.
struct NullIndex {
  static constexpr std::string_view index_type = "null";
  std::uint64_t n = 0;
  void insert(const VectorId&, std::span<const float>, std::optional<Metadata> = {}) { ++n; }
  void erase(const VectorId&) { --n; }
  bool contains(const VectorId&) const noexcept { return false; }
  std::uint64_t size() const noexcept { return n; }
  std::uint64_t dim() const noexcept { return kDim; }
  DistanceMetric metric() const noexcept { return DistanceMetric::Euclidean; }
  void save_to(PayloadWriter& w) const { w.write_u64(n); }
  static NullIndex load_from(PayloadReader& r) { return NullIndex{r.read_u64()}; }
};
static_assert(Persistable<NullIndex>);

double null_index_inserts(const fs::path& d, std::size_t n, const std::vector<std::vector<float>>& vecs) {
  PersistConfig cfg(d / "null.iqdb");
  cfg.wal_enabled = true;
  cfg.fsync_policy = FsyncPolicy::never();
  auto db = PersistedIndex<NullIndex>::open_with(NullIndex{}, cfg);
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) db.insert(i, vecs[i % vecs.size()]);
  return static_cast<double>(n) / seconds_since(t0);
}

PersistConfig wal_cfg(const fs::path& d, FsyncPolicy p) {
  PersistConfig cfg(d / "db.iqdb");
  cfg.wal_enabled = true;
  cfg.fsync_policy = p;
  return cfg;
}

// Inserts 0..n-1 from `threads` threads (thread t: t, t + threads, ...);
// returns when all are done.
void insert_from_threads(PersistedIndex<FlatIndex>& db, std::size_t n, int threads,
                         const std::vector<std::vector<float>>& vecs) {
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      for (std::size_t i = static_cast<std::size_t>(t); i < n; i += static_cast<std::size_t>(threads)) {
        db.insert(i, vecs[i % vecs.size()]);
      }
    });
  }
  for (auto& th : ts) th.join();
}

double iqdb_inserts(const fs::path& d, std::size_t n, FsyncPolicy policy, int threads,
                    const std::vector<std::vector<float>>& vecs) {
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), wal_cfg(d, policy));
  const auto t0 = Clock::now();
  insert_from_threads(db, n, threads, vecs);
  const double s = seconds_since(t0);
  if (threads > 1) {
    const wal::WalStats st = db.wal_stats();
    g_commits_per_sync.push_back(static_cast<double>(st.commits) / static_cast<double>(std::max<std::uint64_t>(1, st.log_syncs)));
  }
  return static_cast<double>(n) / s;
}

// What a run of Always inserts cost the whole process, per commit.
struct CommitCost {
  double per_second = 0;
  double cpu_us = 0;         // user + system CPU time of all threads
  double voluntary = 0;      // context switches: waits (futex, fdatasync)
  double involuntary = 0;    // preemptions
  double commits_per_sync = 0;
};

double rusage_us(const timeval& tv) { return static_cast<double>(tv.tv_sec) * 1e6 + static_cast<double>(tv.tv_usec); }

CommitCost profile_inserts(const fs::path& d, std::size_t per_thread, int threads, int spin_us,
                           const std::vector<std::vector<float>>& vecs) {
  PersistConfig cfg = wal_cfg(d, FsyncPolicy::always());
  if (spin_us >= 0) cfg.commit_spin = std::chrono::microseconds(spin_us);
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), cfg);
  const std::size_t n = per_thread * static_cast<std::size_t>(threads);
  rusage before{}, after{};
  getrusage(RUSAGE_SELF, &before);
  const auto t0 = Clock::now();
  insert_from_threads(db, n, threads, vecs);
  const double s = seconds_since(t0);
  getrusage(RUSAGE_SELF, &after);
  const auto per = [&](double x) { return x / static_cast<double>(n); };
  const wal::WalStats st = db.wal_stats();
  CommitCost c;
  c.per_second = static_cast<double>(n) / s;
  c.cpu_us = per(rusage_us(after.ru_utime) - rusage_us(before.ru_utime) + rusage_us(after.ru_stime) -
                 rusage_us(before.ru_stime));
  c.voluntary = per(static_cast<double>(after.ru_nvcsw - before.ru_nvcsw));
  c.involuntary = per(static_cast<double>(after.ru_nivcsw - before.ru_nivcsw));
  c.commits_per_sync = static_cast<double>(st.commits) / static_cast<double>(std::max<std::uint64_t>(1, st.log_syncs));
  return c;
}

// --group-profile: in interleaved rounds, 1 thread, 4 threads with
// --commit-spin (default: PersistConfig's), 4 threads never spinning; the
// medians, and each 4-thread case's ratio to 1 thread within a round (the
// median of the rounds).
int group_profile(const Options& o) {
  const auto vecs = make_vectors(o.sync_ops * 4);
  struct Variant {
    const char* name;
    int threads;
    int spin_us;
    std::vector<CommitCost> runs;
    std::vector<double> ratios;
  };
  std::vector<Variant> vs = {{"1 thread", 1, o.commit_spin_us, {}, {}},
                             {"4 threads", 4, o.commit_spin_us, {}, {}},
                             {"4, spin 0", 4, 0, {}, {}}};
  for (int r = 0; r < o.repeats; ++r) {
    for (Variant& v : vs) {
      const fs::path d = o.dir / "run";
      fs::remove_all(d);
      fs::create_directories(d);
      ::sync();
      v.runs.push_back(profile_inserts(d, o.sync_ops, v.threads, v.spin_us, vecs));
      v.ratios.push_back(v.runs.back().per_second / vs.front().runs.back().per_second);
      fs::remove_all(d);
    }
  }
  const auto med = [](const std::vector<CommitCost>& v, double CommitCost::*f) {
    std::vector<double> x;
    for (const CommitCost& c : v) x.push_back(c.*f);
    return bench::median(x);
  };
  std::printf("group commit profile, Always, %zu inserts per thread, commit_spin %d us (-1: default), %d rounds\n",
              o.sync_ops, o.commit_spin_us, o.repeats);
  std::printf("%-10s %10s %8s %14s %14s %16s %13s\n", "case", "commits/s", "x 1 thr", "CPU us/commit",
              "vol cs/commit", "invol cs/commit", "commits/sync");
  for (const Variant& v : vs) {
    std::printf("%-10s %10.0f %8.2f %14.1f %14.2f %16.2f %13.2f\n", v.name, med(v.runs, &CommitCost::per_second),
                bench::median(v.ratios), med(v.runs, &CommitCost::cpu_us), med(v.runs, &CommitCost::voluntary),
                med(v.runs, &CommitCost::involuntary), med(v.runs, &CommitCost::commits_per_sync));
  }
  return 0;
}

double iqdb_batches(const fs::path& d, std::size_t batches, std::size_t batch_size,
                    const std::vector<std::vector<float>>& vecs) {
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean),
                                                 wal_cfg(d, FsyncPolicy::always()));
  std::vector<WriteBatch> prepared(batches);
  for (std::size_t b = 0; b < batches; ++b) {
    for (std::size_t i = 0; i < batch_size; ++i) {
      const std::size_t id = b * batch_size + i;
      prepared[b].insert(id, vecs[id % vecs.size()]);
    }
  }
  const auto t0 = Clock::now();
  for (const WriteBatch& b : prepared) db.write(b);
  const double s = seconds_since(t0);
  return static_cast<double>(batches * batch_size) / s;
}

double iqdb_replay(const fs::path& d, std::size_t n, const std::vector<std::vector<float>>& vecs,
                   const std::function<void()>& before_load) {
  const PersistConfig cfg = wal_cfg(d, FsyncPolicy::never());
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), cfg);
    for (std::size_t i = 0; i < n; ++i) db.insert(i, vecs[i % vecs.size()]);
    // A log at rest (written back, in the page cache), as after a process
    // crash: not one whose writeback competes with the replay.
    db.sync();
    db.close();
  }
  before_load();
  const auto t0 = Clock::now();
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  const double s = seconds_since(t0);
  if (db.index().size() != n) {
    std::fprintf(stderr, "replay recovered %zu of %zu\n", static_cast<std::size_t>(db.index().size()), n);
    std::exit(1);
  }
  return static_cast<double>(n) / s;
}

#ifdef IQDB_BENCH_HAVE_ROCKSDB
double rocksdb_sync(const fs::path& d, std::size_t n, int threads) {
  rocksdb::Options opt;
  opt.create_if_missing = true;
  rocksdb::DB* raw = nullptr;
  if (!rocksdb::DB::Open(opt, (d / "rocks").string(), &raw).ok()) die("rocksdb open");
  std::unique_ptr<rocksdb::DB> db(raw);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  const std::string value(kRecordBytes - 8, 'v');
  std::vector<std::thread> ts;
  const auto t0 = Clock::now();
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      for (std::size_t i = static_cast<std::size_t>(t); i < n; i += static_cast<std::size_t>(threads)) {
        char key[8];
        std::memcpy(key, &i, 8);
        if (!db->Put(wo, rocksdb::Slice(key, 8), value).ok()) die("rocksdb put");
      }
    });
  }
  for (auto& th : ts) th.join();
  return static_cast<double>(n) / seconds_since(t0);
}
#endif

struct Row {
  std::string name;
  double value;
  std::string limit_name;
  double ratio;   // value / limit (the median of the per-round ratios)
  double target;  // ratio target (ratio >= target); 0 = informational
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--dir") o.dir = next();
    else if (a == "--sync-ops") o.sync_ops = std::stoul(next());
    else if (a == "--nosync-ops") o.nosync_ops = std::stoul(next());
    else if (a == "--replay-records") o.replay_records = std::stoul(next());
    else if (a == "--repeats") o.repeats = std::stoi(next());
    else if (a == "--no-rocksdb") o.rocksdb = false;
    else if (a == "--settle-ms") o.settle_ms = std::stoi(next());
    else if (a == "--group-profile") o.group_profile = true;
    else if (a == "--commit-spin") o.commit_spin_us = std::stoi(next());
    else if (a == "--no-prefault") iqdb::persist::detail::prefault::set_enabled(false);
    else {
      std::fprintf(stderr,
                   "usage: %s [--dir DIR] [--sync-ops N] [--nosync-ops N] [--replay-records N] [--repeats N] "
                   "[--no-rocksdb] [--settle-ms MS] [--group-profile [--commit-spin US]] [--no-prefault]\n",
                   argv[0]);
      return 2;
    }
  }
  fs::create_directories(o.dir);
  if (o.group_profile) return group_profile(o);
  const auto vecs = make_vectors(o.nosync_ops);
  bench::set_program_name(argv[0]);
  std::printf("iqdb-persist WAL benchmark: dim %zu, %zu-byte frames, dir %s, %d interleaved rounds (medians)%s\n\n",
              kDim, kRecordBytes, fs::absolute(o.dir).c_str(), o.repeats,
              iqdb::persist::detail::prefault::enabled() ? "" : ", touched-reserve worker off");

  // Before a case that builds a large index, warm about the memory that
  // index will take (bench_util.hpp, prepare_memory: this VM returns free
  // memory to the host). Warming much more than the case uses was measured
  // to slow the case down instead (0.42x instead of 0.60x for Never).
  const auto warm_for = [](std::size_t records) {
    bench::set_warm_bytes(records * (kDim * 4 + 64) + (std::size_t{64} << 20));
    bench::prepare_memory();
  };

  struct Case {
    std::string name;
    std::function<double(const fs::path&)> run;
    std::vector<double> values;
  };
  std::vector<Case> cases;
  const auto add = [&](std::string name, std::function<double(const fs::path&)> f) {
    cases.push_back({std::move(name), std::move(f), {}});
    return cases.size() - 1;
  };
  const std::size_t append_sync = add("raw write()+fdatasync() append", [&](const fs::path& d) { return raw_append_sync(d, o.sync_ops); });
  const std::size_t prezeroed = add("raw pwrite()+fdatasync() pre-zeroed", [&](const fs::path& d) { return raw_prezeroed_sync(d, o.sync_ops); });
  const std::size_t nosync = add("raw write() loop, no sync", [&](const fs::path& d) { return raw_append_nosync(d, o.nosync_ops); });
  const std::size_t always1 = add("insert, Always, 1 thread", [&](const fs::path& d) {
    return iqdb_inserts(d, o.sync_ops, FsyncPolicy::always(), 1, vecs);
  });
  const std::size_t batch1000 = add("batch of 1000, Always", [&](const fs::path& d) {
    return iqdb_batches(d, std::max<std::size_t>(o.sync_ops / 100, 10), 1000, vecs);
  });
  const std::size_t never1 = add("insert, Never, 1 thread", [&](const fs::path& d) {
    warm_for(o.nosync_ops);
    return iqdb_inserts(d, o.nosync_ops, FsyncPolicy::never(), 1, vecs);
  });
  // Unwarmed, as users meet it: no warming, after a pause that lets the VM
  // take freed memory back; beside the raw loops run the same way.
  const auto settle = [&] { std::this_thread::sleep_for(std::chrono::milliseconds(o.settle_ms)); };
  const std::size_t nosync_cold = add("raw write() loop, unwarmed", [&](const fs::path& d) {
    settle();
    return raw_append_nosync(d, o.nosync_ops);
  });
  const std::size_t touch_cold = add("raw write() + first touch, unwarmed", [&](const fs::path& d) {
    settle();
    return raw_append_nosync_touch(d, o.nosync_ops);
  });
  const std::size_t never_cold = add("insert, Never, 1 thread, unwarmed", [&](const fs::path& d) {
    settle();
    return iqdb_inserts(d, o.nosync_ops, FsyncPolicy::never(), 1, vecs);
  });
  const std::size_t log_only = add("  log path only (index that keeps nothing)", [&](const fs::path& d) { return null_index_inserts(d, o.nosync_ops, vecs); });
  const std::size_t always4 = add("insert, Always, 4 threads (group commit)", [&](const fs::path& d) {
    return iqdb_inserts(d, o.sync_ops * 4, FsyncPolicy::always(), 4, vecs);
  });
  std::size_t rocks1 = 0, rocks4 = 0;
  bool have_rocks = false;
#ifdef IQDB_BENCH_HAVE_ROCKSDB
  if (o.rocksdb) {
    have_rocks = true;
    rocks1 = add("RocksDB Put sync=true, 1 thread", [&](const fs::path& d) { return rocksdb_sync(d, o.sync_ops, 1); });
    rocks4 = add("RocksDB Put sync=true, 4 threads", [&](const fs::path& d) { return rocksdb_sync(d, o.sync_ops * 4, 4); });
  }
#endif
  std::size_t replay = 0;
  if (o.replay_records > 0) {
    replay = add("replay of " + std::to_string(o.replay_records) + " records (records/s)",
                 [&](const fs::path& d) { return iqdb_replay(d, o.replay_records, vecs, [&] { warm_for(o.replay_records); }); });
  }
  for (int r = 0; r < o.repeats; ++r) {
    for (Case& c : cases) {
      const fs::path d = o.dir / "run";
      fs::remove_all(d);
      fs::create_directories(d);
      // Start every case from a settled disk: no case pays for the
      // writeback of the one before it (the replay case writes ~1 GB).
      ::sync();
      c.values.push_back(c.run(d));
      fs::remove_all(d);
    }
  }
  const auto value = [&](std::size_t i) { return bench::median(cases[i].values); };
  // The median over the rounds of value / limit within each round.
  const auto ratio = [&](std::size_t i, std::size_t limit) {
    std::vector<double> r;
    for (std::size_t k = 0; k < cases[i].values.size(); ++k) r.push_back(cases[i].values[k] / cases[limit].values[k]);
    return bench::median(r);
  };
  std::vector<Row> rows = {
      {cases[append_sync].name, value(append_sync), "", 0, 0},
      {cases[prezeroed].name, value(prezeroed), "append loop", ratio(prezeroed, append_sync), 0},
      {cases[nosync].name, value(nosync), "", 0, 0},
      {cases[always1].name, value(always1), "append loop", ratio(always1, append_sync), 1.0},
      {cases[always1].name, value(always1), "pre-zeroed loop", ratio(always1, prezeroed), 0},
      {cases[batch1000].name, value(batch1000), "insert Always 1 thread", ratio(batch1000, always1), 100.0},
      {cases[never1].name, value(never1), "raw write() loop", ratio(never1, nosync), 0.8},
      {cases[nosync_cold].name, value(nosync_cold), "", 0, 0},
      {cases[touch_cold].name, value(touch_cold), "raw write() loop, unwarmed", ratio(touch_cold, nosync_cold), 0},
      {cases[never_cold].name, value(never_cold), "raw write() loop, unwarmed", ratio(never_cold, nosync_cold), 0.8},
      {cases[never_cold].name, value(never_cold), "write() + first touch", ratio(never_cold, touch_cold), 0.8},
      {cases[log_only].name, value(log_only), "raw write() loop", ratio(log_only, nosync), 0},
      {cases[always4].name, value(always4), "insert Always 1 thread", ratio(always4, always1), 3.0},
  };
  if (have_rocks) {
    rows.push_back({cases[rocks1].name, value(rocks1), "append loop", ratio(rocks1, append_sync), 0});
    rows.push_back({cases[rocks4].name, value(rocks4), "append loop", ratio(rocks4, append_sync), 0});
    rows.push_back({cases[always4].name, value(always4), "RocksDB sync, 4 threads", ratio(always4, rocks4), 2.0});
  }
  if (o.replay_records > 0) rows.push_back({cases[replay].name, value(replay), "2,000,000 records/s", value(replay) / 2e6, 1.0});

  std::printf("%-46s %14s   %-26s %8s  %8s  %s\n", "measurement", "ops/s", "compared with", "ratio", "target",
              "");
  bool all = true;
  for (const Row& r : rows) {
    if (r.limit_name.empty()) {
      std::printf("%-46s %14.0f\n", r.name.c_str(), r.value);
      continue;
    }
    const bool ok = r.target == 0 || r.ratio >= r.target;
    all = all && ok;
    char target[32] = "";
    if (r.target > 0) std::snprintf(target, sizeof target, ">= %.2f", r.target);
    std::printf("%-46s %14.0f   %-26s %8.2f  %8s  %s\n", r.name.c_str(), r.value, r.limit_name.c_str(), r.ratio, target,
                r.target > 0 ? (ok ? "PASS" : "MISS") : "");
  }
  // Per round: the Never rows, warmed and not.
  const auto per_round = [&](const char* what, std::size_t i, std::size_t limit) {
    std::printf("  %-52s", what);
    for (std::size_t k = 0; k < cases[i].values.size(); ++k) std::printf(" %6.2f", cases[i].values[k] / cases[limit].values[k]);
    std::printf("\n");
  };
  std::printf("\nper round:\n");
  per_round("Never, warmed / raw write() loop", never1, nosync);
  per_round("Never, unwarmed / raw write() loop, unwarmed", never_cold, nosync_cold);
  per_round("Never, unwarmed / write() + first touch, unwarmed", never_cold, touch_cold);
  per_round("write() + first touch / write() loop, both unwarmed", touch_cold, nosync_cold);
  per_round("batch of 1000 / insert Always", batch1000, always1);
  if (!g_commits_per_sync.empty()) {
    std::printf("\ngroup commit, 4 threads: %.2f commits per fdatasync (median of the rounds; WalStats)\n",
                bench::median(g_commits_per_sync));
  }
  fs::remove_all(o.dir);
  return all ? 0 : 1;
}
