// The common case: build an index, save it atomically, load it back verified.
//   example_save_load [FILE]
#include <iqdb/persist.hpp>

#include <cstdio>
#include <random>
#include <vector>

int main(int argc, char** argv) {
  using namespace iqdb::persist;
  PersistConfig cfg(argc > 1 ? argv[1] : "example.iqdb");
  cfg.compression = Compression::zstd(3);

  std::mt19937 rng(7);
  std::normal_distribution<float> g;
  FlatIndex index(64, DistanceMetric::Cosine);
  std::vector<float> v(64);
  for (std::uint64_t id = 0; id < 10000; ++id) {
    for (float& x : v) x = g(rng);
    index.insert(id, v, id % 100 == 0 ? std::optional<Metadata>(Metadata{{"bucket", Value(id / 100)}}) : std::nullopt);
  }

  try {
    auto db = PersistedIndex<FlatIndex>::open_with(std::move(index), cfg);
    const FileHeader written = db.save();
    auto loaded = PersistedIndex<FlatIndex>::load(cfg);
    const auto hits = loaded.index().search(v, 3);
    // The last vector inserted is its own nearest neighbour, at distance 0.
    const bool ok = loaded.index().size() == 10000 && !hits.empty() && hits[0].id == VectorId(std::uint64_t{9999}) &&
                    hits[0].distance < 1e-5f && loaded.index().metadata(VectorId(std::uint64_t{9900})) != nullptr;
    std::printf("saved %llu vectors (%llu bytes stored), loaded %llu; nearest to the last vector: %s at %.4f\n",
                static_cast<unsigned long long>(written.n_vectors),
                static_cast<unsigned long long>(written.stored_len),
                static_cast<unsigned long long>(loaded.index().size()), hits.at(0).id.to_string().c_str(),
                static_cast<double>(hits.at(0).distance));
    if (!ok) std::fprintf(stderr, "the loaded index differs from the saved one\n");
    return ok ? 0 : 1;
  } catch (const PersistError& e) {
    std::fprintf(stderr, "%s\n", e.what());  // names the file, the kind and, for corruption, the offset
    return 1;
  }
}
