// Replica lag under a steady insert load (issue 11; docs/PERFORMANCE.md,
// "Read replicas"): 4 writer threads insert under FsyncPolicy::Always into a
// PersistedIndex<FlatIndex> with the WAL; a ReadReplica (its own client on
// RADOS) catches up every --interval-ms, as its background follower does.
// Lag of a record: from the moment its insert returned in the writer (it is
// acknowledged) to the end of the first catch-up after which the replica
// holds it (0 when the replica held it before the writer's call returned).
// Each writer thread inserts ids in order, so after every catch-up the
// replica's progress is found per thread with contains().
//
// --watch: the replica's background follower instead, woken by the writer's
// notifications (RADOS watch/notify) and polling only every --interval-ms
// (say 10000); the measuring thread looks at the replica's LSN every
// millisecond (lag resolution ~1 ms) and then counts the catch-ups it made
// while nothing was written for --idle-seconds (default 2); --min-gap-ms G
// sets FollowOptions::min_gap, --notify-gap-ms G the writer's
// RadosOptions::notify_gap (default 5 ms, the library's).
//
//   scripts/ceph-cluster.sh run --osds 3 -- BUILD/bench/iqdb_replica_bench --seconds 10   # RADOS (IQDB_RADOS_POOL)
//   scripts/ceph-cluster.sh run --osds 3 -- BUILD/bench/iqdb_replica_bench --seconds 10 --watch --interval-ms 10000
//   BUILD/bench/iqdb_replica_bench --dir build/bench-data --seconds 10                    # local files
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "iqdb/persist.hpp"
#ifdef IQDB_BENCH_WITH_RADOS
#include "iqdb/persist/rados.hpp"
#endif

namespace iqdb::persist {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::uint64_t kIdStride = std::uint64_t{1} << 32;  // thread t inserts t * kIdStride + i

struct Args {
  std::string pool;
  std::string dir;
  int threads = 4;
  double seconds = 10;
  int interval_ms = 5;
  std::uint64_t dim = 128;
  std::uint64_t checkpoint_every = 0;  // records between checkpoints (0: none)
  bool watch = false;                  // the background follower, woken by the writer
  double idle_seconds = 2;             // --watch: catch-ups counted while nothing is written
  int min_gap_ms = 0;                  // --watch: FollowOptions::min_gap
  int notify_gap_ms = 5;               // the writer's RadosOptions::notify_gap (its default)
};

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "iqdb_replica_bench: %s\n", why.c_str());
  std::exit(2);
}

PersistConfig config_of(const Args& a, const std::string& name) {
#ifdef IQDB_BENCH_WITH_RADOS
  if (!a.pool.empty()) {
    RadosLocation loc;
    loc.pool = a.pool;
    loc.name = name;
    RadosOptions o;
    o.notify_gap = std::chrono::milliseconds(a.notify_gap_ms);
    return rados_persist_config(loc, o);  // a client of its own each call
  }
#endif
  return PersistConfig(std::filesystem::path(a.dir) / (name + ".iqdb"));
}

double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

void run(const Args& a) {
  const std::string name = "replica-bench-" + std::to_string(Clock::now().time_since_epoch().count() % 1000000000);
  PersistConfig wcfg = config_of(a, name);
  wcfg.wal_enabled = true;
  wcfg.fsync_policy = FsyncPolicy::always();
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(a.dim, DistanceMetric::Euclidean), wcfg);
  auto replica = ReadReplica<FlatIndex>::open(config_of(a, name));

  const auto threads = static_cast<std::size_t>(a.threads);
  std::vector<std::vector<Clock::time_point>> acked(threads);  // per thread, by insert number
  std::vector<std::atomic<std::size_t>> published(threads);     // acks readable by the replica thread
  for (auto& n : published) n.store(0);
  std::vector<std::vector<double>> lags(threads);
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> records{0};
  for (auto& v : acked) v.reserve(static_cast<std::size_t>(a.seconds * 20000) + 1024);

  if (a.watch) {
    // Steady state: the watch stands, and the writer's notifier has left
    // the quiet period it keeps after a notify that reached no watcher
    // (src/rados/change_notify.hpp), before anything is written.
    FollowOptions o;
    o.interval = std::chrono::milliseconds(a.interval_ms);
    o.min_gap = std::chrono::milliseconds(a.min_gap_ms);
    replica.start_following(o);
    for (int w = 0; w < 10000 && !replica.watching(); ++w) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (!replica.watching()) die("the replica's watch did not stand within 10 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  std::vector<std::thread> writers;
  for (std::size_t t = 0; t < threads; ++t) {
    writers.emplace_back([&, t] {
      std::vector<float> v(a.dim, static_cast<float>(t));
      for (std::uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
        db.insert(t * kIdStride + i, v);
        if (acked[t].size() == acked[t].capacity()) break;  // never reallocate under the reader
        acked[t].push_back(Clock::now());
        published[t].store(acked[t].size(), std::memory_order_release);
        const std::uint64_t n = records.fetch_add(1) + 1;
        if (a.checkpoint_every != 0 && t == 0 && n % a.checkpoint_every < threads) db.checkpoint();
      }
    });
  }
  // The writers stop on every way out of the measuring loop.
  struct JoinOnExit {
    std::atomic<bool>& stop;
    std::vector<std::thread>& threads;
    ~JoinOnExit() {
      stop.store(true);
      for (auto& w : threads) {
        if (w.joinable()) w.join();
      }
    }
  } join_on_exit{stop, writers};
  std::uint64_t catch_ups = 0;
  std::vector<double> catch_up_ms;
  std::vector<std::size_t> seen(threads, 0);  // per thread: inserts the replica holds
  const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(a.seconds));
  const std::uint64_t catch_ups_before = replica.stats().catch_ups;
  std::uint64_t lsn_seen = replica.last_lsn();
  while (Clock::now() < until) {
    Clock::time_point visible;
    if (a.watch) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      const std::uint64_t lsn = replica.last_lsn();
      if (lsn == lsn_seen) continue;
      lsn_seen = lsn;
      visible = Clock::now();
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(a.interval_ms));
      const Clock::time_point began = Clock::now();
      replica.catch_up();
      ++catch_ups;
      visible = Clock::now();
      catch_up_ms.push_back(std::chrono::duration<double, std::milli>(visible - began).count());
    }
    replica.read([&](const FlatIndex& ix) {
      for (std::size_t t = 0; t < threads; ++t) {
        const std::size_t ready = published[t].load(std::memory_order_acquire);
        while (seen[t] < ready && ix.contains(VectorId(t * kIdStride + seen[t]))) {
          lags[t].push_back(std::max(0.0, std::chrono::duration<double, std::milli>(visible - acked[t][seen[t]]).count()));
          ++seen[t];
        }
      }
      return 0;
    });
  }
  stop.store(true);
  for (auto& w : writers) w.join();
  double idle_rate = 0;
  if (a.watch) {
    catch_ups = replica.stats().catch_ups - catch_ups_before;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the last notifications' rounds
    const std::uint64_t idle0 = replica.stats().catch_ups;
    std::this_thread::sleep_for(std::chrono::duration<double>(a.idle_seconds));
    idle_rate = static_cast<double>(replica.stats().catch_ups - idle0) / a.idle_seconds;
  }
  std::vector<double> all;
  for (auto& l : lags) all.insert(all.end(), l.begin(), l.end());
  const ReplicaLag end_lag = replica.lag();
  const double p50 = percentile(all, 0.5), p99 = percentile(all, 0.99), pmax = percentile(all, 1.0);
  std::printf("%s, %d writer threads under Always, dim %llu, %.0f s: %llu records (%.0f/s), %llu measured\n",
              a.pool.empty() ? "local files" : ("rados pool " + a.pool).c_str(), a.threads,
              static_cast<unsigned long long>(a.dim), a.seconds, static_cast<unsigned long long>(records.load()),
              static_cast<double>(records.load()) / a.seconds, static_cast<unsigned long long>(all.size()));
  const ReplicaStats rs = replica.stats();
  if (a.watch) {
    std::printf("  replica woken by the writer (notify_gap %d ms, min_gap %d ms), polling every %d ms (%llu catch-ups, "
                "%.1f/s; %llu notifications, %llu watches; %llu loads anew)\n",
                a.notify_gap_ms, a.min_gap_ms, a.interval_ms, static_cast<unsigned long long>(catch_ups),
                static_cast<double>(catch_ups) / a.seconds,
                static_cast<unsigned long long>(rs.notifications), static_cast<unsigned long long>(rs.watches),
                static_cast<unsigned long long>(rs.reloads));
    std::printf("  idle (nothing written) for %.0f s: %.1f catch-ups/s\n", a.idle_seconds, idle_rate);
  } else {
    std::printf("  replica catch-up every %d ms (%llu catch-ups, %llu loads anew)\n", a.interval_ms,
                static_cast<unsigned long long>(catch_ups), static_cast<unsigned long long>(rs.reloads));
    std::printf("  one catch-up took: median %.2f ms, p99 %.2f ms, max %.2f ms\n", percentile(catch_up_ms, 0.5),
                percentile(catch_up_ms, 0.99), percentile(catch_up_ms, 1.0));
  }
  std::printf("  lag, acknowledged -> visible in the replica: median %.2f ms, p99 %.2f ms, max %.2f ms\n", p50, p99, pmax);
  std::printf("  at the end: %llu records behind\n", static_cast<unsigned long long>(end_lag.records_behind));
  db.close();
}

}  // namespace
}  // namespace iqdb::persist

int main(int argc, char** argv) {
  using namespace iqdb::persist;
  Args a;
  if (const char* p = std::getenv("IQDB_RADOS_POOL")) a.pool = p;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&] {
      if (i + 1 >= argc) die(arg + " needs a value");
      return std::string(argv[++i]);
    };
    if (arg == "--pool") {
      a.pool = value();
    } else if (arg == "--dir") {
      a.dir = value();
      a.pool.clear();
    } else if (arg == "--threads") {
      a.threads = std::max(1, std::stoi(value()));
    } else if (arg == "--seconds") {
      a.seconds = std::stod(value());
    } else if (arg == "--interval-ms") {
      a.interval_ms = std::max(0, std::stoi(value()));
    } else if (arg == "--dim") {
      a.dim = std::stoull(value());
    } else if (arg == "--checkpoint-every") {
      a.checkpoint_every = std::stoull(value());
    } else if (arg == "--watch") {
      a.watch = true;
    } else if (arg == "--idle-seconds") {
      a.idle_seconds = std::max(0.1, std::stod(value()));
    } else if (arg == "--min-gap-ms") {
      a.min_gap_ms = std::max(0, std::stoi(value()));
    } else if (arg == "--notify-gap-ms") {
      a.notify_gap_ms = std::max(0, std::stoi(value()));
    } else {
      die("usage: iqdb_replica_bench [--pool P | --dir D] [--threads 4] [--seconds 10] [--interval-ms 5] [--dim 128] "
          "[--checkpoint-every N] [--watch [--idle-seconds 2] [--min-gap-ms 0]] [--notify-gap-ms 5]");
    }
  }
#ifndef IQDB_BENCH_WITH_RADOS
  if (!a.pool.empty() && a.dir.empty()) die("built without the RADOS component: pass --dir");
#endif
  if (a.pool.empty() && a.dir.empty()) die("pass --dir D (local files) or --pool P / IQDB_RADOS_POOL (RADOS)");
  if (!a.dir.empty()) std::filesystem::create_directories(a.dir);
  try {
    run(a);
  } catch (const std::exception& e) {
    die(e.what());
  }
  return 0;
}
