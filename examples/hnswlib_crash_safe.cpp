// An hnswlib graph that survives a crash: write-ahead logging through the
// hnswlib adapter (docs/ADAPTERS.md).
//   example_hnswlib_crash_safe [FILE]
// The first run builds a graph, inserts vectors (each logged and fsynced
// before addPoint), marks one deleted, and then "crashes" (exits without
// saving). Run it again: the graph is rebuilt from the snapshot, whose
// loader checks every count and link before using it (unlike hnswlib's own
// loadIndex, hnswlib#673), and the log is replayed onto it.
#include <cstdio>
#include <cstdlib>
#include <iqdb/persist.hpp>
#include <iqdb/persist/adapters/hnswlib.hpp>
#include <random>
#include <vector>

namespace {

constexpr std::size_t kDim = 8;

// A pseudo-random vector per id, the same on every run.
std::vector<float> vector_for(std::uint64_t id) {
  std::mt19937_64 rng(id);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(kDim);
  for (float& x : v) x = u(rng);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace iqdb::persist;
  PersistConfig cfg(argc > 1 ? argv[1] : "hnswlib-example.iqdb");
  cfg.wal_enabled = true;
  cfg.fsync_policy = FsyncPolicy::always();

  try {
    if (!default_file_system().exists(cfg.path)) {
      HnswlibParams params;
      params.M = 12;
      params.ef_construction = 100;
      params.ef = 50;
      auto db = PersistedIndex<HnswlibIndex>::open_with(HnswlibIndex(kDim, DistanceMetric::Euclidean, params), cfg);
      for (std::uint64_t id = 1; id <= 500; ++id) db.insert(id, vector_for(id));
      db.erase(42);  // markDelete: skipped by searches from now on
      std::printf("logged %llu mutations; exiting without save (run me again)\n",
                  static_cast<unsigned long long>(db.last_lsn()));
      std::fflush(stdout);
      std::_Exit(0);
    }

    auto db = PersistedIndex<HnswlibIndex>::load(cfg);
    const auto hits = db.read([](const HnswlibIndex& ix) { return ix.search(vector_for(7), 1); });
    std::printf("recovered %llu vectors up to LSN %llu; nearest to vector 7: %llu\n",
                static_cast<unsigned long long>(db.index().size()), static_cast<unsigned long long>(db.last_lsn()),
                hits.empty() ? 0ULL : static_cast<unsigned long long>(hits[0].id));
    db.checkpoint();
    return db.index().size() == 499 && !db.index().contains(42) && !hits.empty() && hits[0].id == 7 ? 0 : 1;
  } catch (const PersistError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
