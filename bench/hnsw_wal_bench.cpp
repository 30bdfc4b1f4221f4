// What a CRC costs the index code that runs after it (docs/ADAPTERS.md,
// "Vector registers after a CRC"): FAISS HNSW inserts through the adapter
// with the WAL on, and a WAL replay into an HNSW index, each against the same
// HNSW adds made by FAISS alone in the same run (the limit: the adapter adds
// a log append, a CRC and a validation per insert, no more).
//
// Before the library cleared the upper halves of the vector registers after
// ISA-L's CRC, each insert's HNSW add ran in FAISS's SSE code with that state
// dirty, about 3x slower on AVX-512 CPUs; this benchmark shows the ratio.
//
//   iqdb_hnsw_wal_bench --dir build/bench-data [--vectors N] [--dim D] [--reps R]
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iqdb/persist.hpp>
#include <iqdb/persist/adapters/faiss.hpp>
#include <memory>
#include <random>
#include <vector>

namespace {

using namespace iqdb::persist;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string dir;
  std::uint64_t vectors = 10000;
  int dim = 64;
  int reps = 3;
};

std::unique_ptr<faiss::Index> empty_hnsw(int dim) {
  auto hnsw = std::make_unique<faiss::IndexHNSWFlat>(dim, 16);
  auto index = std::make_unique<faiss::IndexIDMap2>(hnsw.get());
  index->own_fields = true;
  hnsw.release();
  return index;
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Round {
  double raw = 0;     // FAISS alone: one add_with_ids per vector
  double insert = 0;  // PersistedIndex<FaissIndex>::insert per vector, WAL on (FsyncPolicy::never)
  double replay = 0;  // PersistedIndex<FaissIndex>::load replaying those inserts
};

// FAISS alone: one add_with_ids per vector into a new index.
double faiss_alone(const Options& o, const std::vector<float>& data) {
  const auto dim = static_cast<std::size_t>(o.dim);
  auto index = empty_hnsw(o.dim);
  const auto t = Clock::now();
  for (std::uint64_t i = 0; i < o.vectors; ++i) {
    const auto id = static_cast<faiss::Index::idx_t>(i);
    index->add_with_ids(1, data.data() + i * dim, &id);
  }
  return seconds_since(t);
}

Round round(const Options& o, const std::vector<float>& data, int r) {
  Round out;
  const auto dim = static_cast<std::size_t>(o.dim);
  out.raw = faiss_alone(o, data);
  PersistConfig cfg(fs::path(o.dir) / ("hnsw-wal-" + std::to_string(r) + ".iqdb"));
  cfg.wal_enabled = true;
  cfg.fsync_policy = FsyncPolicy::never();  // the CPU path: no fsync hides the effect
  {
    auto db = PersistedIndex<FaissIndex>::open_with(FaissIndex(empty_hnsw(o.dim)), cfg);
    const auto t = Clock::now();
    for (std::uint64_t i = 0; i < o.vectors; ++i) db.insert(i, std::span<const float>(data.data() + i * dim, dim));
    out.insert = seconds_since(t);
    db.close();  // leaves every insert in the log for the replay
  }
  {
    const auto t = Clock::now();
    auto db = PersistedIndex<FaissIndex>::load(cfg);
    out.replay = seconds_since(t);
    if (db.index().size() != o.vectors) {
      std::fprintf(stderr, "replay gave %zu vectors, expected %llu\n", static_cast<std::size_t>(db.index().size()),
                   static_cast<unsigned long long>(o.vectors));
      std::exit(1);
    }
  }
  fs::remove(cfg.path);
  fs::remove(wal::log_path_for(cfg.path));
  fs::remove(fs::path(cfg.path) += ".lock");
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"FAISS HNSW inserts and WAL replay through the adapter against FAISS alone"};
  app.add_option("--dir", o.dir, "Directory for the files")->required();
  app.add_option("--vectors", o.vectors, "Vectors per round");
  app.add_option("--dim", o.dim, "Dimension");
  app.add_option("--reps", o.reps, "Rounds (medians are reported)");
  CLI11_PARSE(app, argc, argv);
  fs::create_directories(o.dir);

  std::mt19937_64 rng(42);
  std::normal_distribution<float> g;
  std::vector<float> data(o.vectors * static_cast<std::size_t>(o.dim));
  for (float& x : data) x = g(rng);

  // Before this process has called into the library: the clean baseline.
  // The rounds' own FAISS-alone runs come after library calls on the same
  // thread, as a user's code does; they are as fast only if those calls
  // left the vector registers clean.
  const double clean = faiss_alone(o, data);
  std::vector<double> raw, insert, replay, insert_ratio, replay_ratio;
  for (int r = 0; r < o.reps; ++r) {
    const Round x = round(o, data, r);
    raw.push_back(x.raw);
    insert.push_back(x.insert);
    replay.push_back(x.replay);
    insert_ratio.push_back(x.insert / x.raw);
    replay_ratio.push_back(x.replay / x.raw);
  }
  std::printf("HNSW (M 16), %llu x %d, medians of %d rounds\n", static_cast<unsigned long long>(o.vectors), o.dim,
              o.reps);
  std::printf("  FAISS alone, before any library call   %8.3f s\n", clean);
  std::printf("  FAISS alone, after library calls       %8.3f s   %.2fx before any\n", median(raw),
              median(raw) / clean);
  std::printf("  adapter insert, WAL on (Never)         %8.3f s   %.2fx FAISS alone\n", median(insert),
              median(insert_ratio));
  std::printf("  WAL replay into HNSW (load)            %8.3f s   %.2fx FAISS alone\n", median(replay),
              median(replay_ratio));
  return 0;
}
