// Batches under FsyncPolicy::Always against single inserts (issue 14, "a
// write path without copies"), with each batch built inside the timed region
// as a user builds it, from vectors the caller holds:
//   - WriteBatch::insert (copied into the batch's float arena),
//   - WriteBatch::insert_rows_ref (one contiguous n x dim block, referenced).
// Every round runs every case once, in a fresh directory; the ratio of a
// round is batch inserts/s over single inserts/s of the same round, and the
// goal (>= 100x) holds for the minimum over the rounds. Beside them, the
// disk's own ceiling for that ratio in the same round: pwrite() +
// fdatasync() of one insert's frame bytes against those of one batch's.
//
// `peer` mode times one C++ operation for the Python benchmark
// (python/bench/bench_python.py), so both sides do the same work:
//   iqdb_batch_bench [--dir DIR] [--rounds N] [--single-ops N] [--batches N] [--no-prefault]
// (--no-prefault: FlatIndex's touched-reserve worker off, the before of an
// A/B in one binary; docs/PERFORMANCE.md "Batch of 1000 under Always").
//   iqdb_batch_bench peer batch|load|single|threads --dir DIR --n N   # prints wall and CPU seconds
//                                     (single, threads: then the records per fsync of the log)
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <iqdb/persist.hpp>

#include "bench_util.hpp"

namespace fs = std::filesystem;
using namespace iqdb::persist;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t kDim = 128;
constexpr std::size_t kBatch = 1000;
constexpr double kGoal = 100.0;
// Log bytes (docs/FORMAT.md, "Write-ahead log"): a frame's header, LSNs and
// count take 28 bytes; an insert with a u64 id, kDim floats and no metadata
// takes 1 + 1 + 8 + 4 + 4 kDim + 1.
constexpr std::size_t kFrameOverhead = 28;
constexpr std::size_t kInsertBytes = 1 + 1 + 8 + 4 + kDim * 4 + 1;

struct Options {
  fs::path dir = "bench-batch-tmp";
  int rounds = 3;
  std::size_t single_ops = 1000;
  std::size_t batches = 20;
};

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// n x kDim normal floats, row-major.
std::vector<float> make_rows(std::size_t n) {
  std::mt19937 rng(42);
  std::normal_distribution<float> g;
  std::vector<float> v(n * kDim);
  for (float& f : v) f = g(rng);
  return v;
}

PersistConfig wal_cfg(const fs::path& d, FsyncPolicy p) {
  PersistConfig cfg(d / "db.iqdb");
  cfg.wal_enabled = true;
  cfg.fsync_policy = p;
  return cfg;
}

std::span<const float> row(const std::vector<float>& rows, std::size_t i) {
  return std::span<const float>(rows).subspan((i % (rows.size() / kDim)) * kDim, kDim);
}

using Db = PersistedIndex<FlatIndex>;
Db fresh(const fs::path& d, FsyncPolicy p) { return Db::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), wal_cfg(d, p)); }

// Single inserts under Always: inserts/s.
double singles(const fs::path& d, std::size_t n, const std::vector<float>& rows) {
  auto db = fresh(d, FsyncPolicy::always());
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) db.insert(i, row(rows, i));
  return static_cast<double>(n) / since(t0);
}

// Batches of kBatch copied into the arena, built in the timed region: inserts/s.
double arena_batches(const fs::path& d, std::size_t batches, const std::vector<float>& rows) {
  auto db = fresh(d, FsyncPolicy::always());
  const auto t0 = Clock::now();
  for (std::size_t b = 0; b < batches; ++b) {
    WriteBatch batch;
    for (std::size_t i = 0; i < kBatch; ++i) batch.insert(b * kBatch + i, row(rows, b * kBatch + i));
    db.write(batch);
  }
  return static_cast<double>(batches * kBatch) / since(t0);
}

// Batches of kBatch contiguous rows, referenced, built in the timed region: inserts/s.
double row_batches(const fs::path& d, std::size_t batches, const std::vector<float>& rows) {
  auto db = fresh(d, FsyncPolicy::always());
  const std::size_t per_block = rows.size() / kDim / kBatch;
  const auto t0 = Clock::now();
  std::vector<std::uint64_t> ids(kBatch);
  for (std::size_t b = 0; b < batches; ++b) {
    for (std::size_t i = 0; i < kBatch; ++i) ids[i] = b * kBatch + i;
    const auto block = std::span<const float>(rows).subspan((b % per_block) * kBatch * kDim, kBatch * kDim);
    db.write(WriteBatch().insert_rows_ref(ids, block, kDim));
  }
  return static_cast<double>(batches * kBatch) / since(t0);
}

// The disk's own ceiling for the ratio, as the log writes (into space
// zero-filled ahead, so that fdatasync carries data only): `writes` times a
// pwrite() of `bytes` + fdatasync(), each standing for `records` records.
// With `touch`, each write's bytes are also copied into fresh memory (an
// anonymous mapping in base pages as FlatIndex's vectors grown by inserts
// are, unmapped outside the timer): the first touch an index that keeps the
// vectors pays. Records/s.
double raw_synced_writes(const fs::path& d, std::size_t writes, std::size_t bytes, std::size_t records, bool touch) {
  const int fd = ::open((d / "raw.log").c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) bench::die_errno("open");
  const std::vector<char> zeros(writes * bytes, 0), rec(bytes, 'x');
  if (::write(fd, zeros.data(), zeros.size()) != static_cast<ssize_t>(zeros.size())) bench::die_errno("write");
  if (::fsync(fd) != 0) bench::die_errno("fsync");
  const auto t0 = Clock::now();
  void* mem = touch ? ::mmap(nullptr, writes * bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) : nullptr;
  if (mem == MAP_FAILED) bench::die_errno("mmap");
  if (touch) (void)::madvise(mem, writes * bytes, MADV_NOHUGEPAGE);  // as FlatIndex's vectors grown by inserts
  for (std::size_t i = 0; i < writes; ++i) {
    if (::pwrite(fd, rec.data(), bytes, static_cast<off_t>(i * bytes)) != static_cast<ssize_t>(bytes)) {
      bench::die_errno("pwrite");
    }
    if (::fdatasync(fd) != 0) bench::die_errno("fdatasync");
    if (touch) std::memcpy(static_cast<char*>(mem) + i * bytes, rec.data(), bytes);
  }
  const double s = since(t0);
  if (touch) ::munmap(mem, writes * bytes);
  ::close(fd);
  return static_cast<double>(writes * records) / s;
}

// ---------------------------------------------------------------- peer mode

// Rows per batch in peer mode: a log frame holds at most 256 MiB
// (wal::MAX_FRAME_LEN), so 1M x 128 goes in batches of 100,000 rows (51 MB).
constexpr std::size_t kPeerChunk = 100000;

// Threads of the `threads` op (the Python benchmark's 4 threads).
constexpr std::size_t kPeerThreads = 4;

// n single inserts under Always from kPeerThreads threads, thread i taking
// ids i, i + kPeerThreads, ... (group commit shares their fdatasyncs).
void threaded_singles(Db& db, std::size_t n, const std::vector<float>& rows) {
  std::vector<std::thread> ts;
  for (std::size_t t = 0; t < kPeerThreads; ++t) {
    ts.emplace_back([&db, &rows, n, t] {
      for (std::size_t i = t; i < n; i += kPeerThreads) db.insert(i, row(rows, i));
    });
  }
  for (std::thread& t : ts) t.join();
}

// Touches and frees the memory the timed region of an op over n rows may
// take (the index's vectors, the log's or the snapshot's page cache) right
// before it, as the Python peer does: in this VM, memory that stayed free
// for ~2 s is handed back to the host and costs a host fault per page when
// next touched (bench::prepare_memory, docs/PERFORMANCE.md "Why the
// benchmark warms memory"), which would otherwise favour whichever side
// happens to follow freshly freed memory.
void warm_memory(std::size_t n) {
  bench::set_warm_bytes(2 * n * kDim * sizeof(float) + (std::size_t{64} << 20));
  bench::prepare_memory();
}

// Wall and CPU (all threads) seconds of a timed region.
struct PeerTimer {
  Clock::time_point wall = Clock::now();
  std::clock_t cpu = std::clock();
  // With `s`: then the records each fsync of the log covered (group commit).
  void print(const wal::WalStats* s = nullptr) const {
    std::printf("%.6f %.6f", since(wall), static_cast<double>(std::clock() - cpu) / CLOCKS_PER_SEC);
    if (s != nullptr) {
      std::printf(" %.3f", s->log_syncs == 0 ? 0.0 : static_cast<double>(s->records) / static_cast<double>(s->log_syncs));
    }
    std::printf("\n");
  }
};

// open_with + write() of n rows in batches of kPeerChunk (insert_rows_ref),
// WAL under Never, timed; then (untimed) the checkpoint `load` reads.
void peer_batch(const fs::path& d, std::size_t n) {
  const std::vector<float> rows = make_rows(n);
  std::vector<std::uint64_t> ids(n);
  for (std::size_t i = 0; i < n; ++i) ids[i] = i;
  warm_memory(n);
  const PeerTimer t;
  auto db = fresh(d, FsyncPolicy::never());
  for (std::size_t at = 0; at < n; at += kPeerChunk) {
    const std::size_t k = std::min(kPeerChunk, n - at);
    db.write(WriteBatch().insert_rows_ref(std::span(ids).subspan(at, k),
                                          std::span<const float>(rows).subspan(at * kDim, k * kDim), kDim));
  }
  t.print();
  db.checkpoint();
  db.close();
}

// n single inserts under Always from `threads` threads, timed after the open.
void peer_singles(const fs::path& d, std::size_t n, std::size_t threads) {
  const std::vector<float> rows = make_rows(std::min<std::size_t>(n, 4096));
  auto db = fresh(d, FsyncPolicy::always());
  warm_memory(n);
  const PeerTimer t;
  if (threads == 1) {
    for (std::size_t i = 0; i < n; ++i) db.insert(i, row(rows, i));
  } else {
    threaded_singles(db, n, rows);
  }
  const wal::WalStats stats = db.wal_stats();
  t.print(&stats);
}

// One C++ operation the Python benchmark compares with (the same calls as
// its Python peer); prints the wall and CPU seconds of the timed region.
//   batch:   open_with + n rows in batches of kPeerChunk, WAL under Never
//   load:    load() of the snapshot a previous `batch` + checkpoint left
//   single:  n single inserts under Always, one thread
//   threads: n single inserts under Always from kPeerThreads threads
int peer(const std::string& op, const fs::path& d, std::size_t n) {
  if (op == "batch") {
    peer_batch(d, n);
  } else if (op == "load") {
    warm_memory(n);
    const PeerTimer t;
    const auto db = Db::load(wal_cfg(d, FsyncPolicy::never()));
    t.print();
    if (db.index().size() != n) bench::die("load: wrong size");
  } else if (op == "single" || op == "threads") {
    peer_singles(d, n, op == "single" ? 1 : kPeerThreads);
  } else {
    bench::die("peer: unknown op " + op);
  }
  return 0;
}

struct Round {
  double single, arena, rows, raw_single, raw_batch, raw_batch_touch;
};

int table(const Options& o) {
  const std::vector<float> rows = make_rows(kBatch * 8);
  std::printf("iqdb-persist batch benchmark: dim %zu, batches of %zu under Always built in the timed region, "
              "%d rounds, touched-reserve worker %s\n\n",
              kDim, kBatch, o.rounds, detail::prefault::enabled() ? "on" : "off");
  std::printf("%-6s %13s %14s %7s %14s %7s  %13s %14s %7s %14s %7s\n", "round", "single ins/s", "arena batch/s",
              "ratio", "rows batch/s", "ratio", "raw single/s", "raw batch/s", "ratio", "+touch", "ratio");
  double worst = 1e300;
  for (int r = 0; r < o.rounds; ++r) {
    const auto in_fresh_dir = [&](auto&& f) {
      const fs::path d = o.dir / "run";
      fs::remove_all(d);
      fs::create_directories(d);
      const double v = f(d);
      fs::remove_all(d);
      return v;
    };
    const Round x{in_fresh_dir([&](const fs::path& d) { return singles(d, o.single_ops, rows); }),
                  in_fresh_dir([&](const fs::path& d) { return arena_batches(d, o.batches, rows); }),
                  in_fresh_dir([&](const fs::path& d) { return row_batches(d, o.batches, rows); }),
                  in_fresh_dir([&](const fs::path& d) {
                    return raw_synced_writes(d, o.single_ops, kFrameOverhead + kInsertBytes, 1, false);
                  }),
                  in_fresh_dir([&](const fs::path& d) {
                    return raw_synced_writes(d, o.batches, kFrameOverhead + kBatch * kInsertBytes, kBatch, false);
                  }),
                  in_fresh_dir([&](const fs::path& d) {
                    return raw_synced_writes(d, o.batches, kFrameOverhead + kBatch * kInsertBytes, kBatch, true);
                  })};
    worst = std::min({worst, x.arena / x.single, x.rows / x.single});
    std::printf("%-6d %13.0f %14.0f %7.1f %14.0f %7.1f  %13.0f %14.0f %7.1f %14.0f %7.1f\n", r + 1, x.single, x.arena,
                x.arena / x.single, x.rows, x.rows / x.single, x.raw_single, x.raw_batch, x.raw_batch / x.raw_single,
                x.raw_batch_touch, x.raw_batch_touch / x.raw_single);
  }
  std::printf("\nraw: pwrite() + fdatasync() of one insert's frame (%zu bytes) against one batch's frame (%zu "
              "bytes), into zero-filled space: the disk's own ceiling for the ratio; +touch: each batch's bytes "
              "also copied into fresh memory\n",
              kFrameOverhead + kInsertBytes, kFrameOverhead + kBatch * kInsertBytes);
  const bool ok = worst >= kGoal;
  std::printf("\nworst batch / single ratio over the rounds: %.1f (goal >= %.0f): %s\n", worst, kGoal,
              ok ? "PASS" : "MISS");
  fs::remove_all(o.dir);
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  bench::set_program_name(argv[0]);
  Options o;
  bool no_prefault = false;
  std::string peer_op;
  std::size_t n = 0;
  CLI::App app{"Batches of 1000 under Always, built in the timed region, against single inserts"};
  app.add_option("--dir", o.dir, "Directory for the files (not tmpfs)")->capture_default_str();
  app.add_option("--rounds", o.rounds, "Rounds (every case once each)")->capture_default_str()->check(CLI::Range(1, 1000));
  app.add_option("--single-ops", o.single_ops, "Single inserts per round")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 30));
  app.add_option("--batches", o.batches, "Batches per case and round")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20));
  app.add_flag("--no-prefault", no_prefault, "FlatIndex's touched-reserve worker off");
  CLI::App* peer_cmd = app.add_subcommand("peer", "Time one C++ operation for python/bench/bench_python.py");
  peer_cmd->add_option("op", peer_op, "The operation")->required()->check(CLI::IsMember({"batch", "load", "single", "threads"}));
  peer_cmd->add_option("--n", n, "Rows or inserts")->required()->check(CLI::Range(std::size_t{1}, std::size_t{1} << 32));
  peer_cmd->fallthrough();  // --dir may follow the operation
  CLI11_PARSE(app, argc, argv);
  if (no_prefault) detail::prefault::set_enabled(false);
  if (!peer_op.empty()) return peer(peer_op, o.dir, n);
  fs::create_directories(o.dir);
  return table(o);
}
