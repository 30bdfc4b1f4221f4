// The second translation unit of hnswlib_multi_tu_test: it includes the
// adapter's header (and not hnswlib's), builds, saves, loads and searches.
#include <cstdint>
#include <filesystem>
#include <iqdb/persist.hpp>
#include <iqdb/persist/adapters/hnswlib.hpp>
#include <random>
#include <vector>

#include "adapters/hnswlib_multi_tu.hpp"

namespace iqdb::persist::test {

std::vector<float> multi_tu_vector(std::uint64_t i) {
  std::mt19937_64 rng(i);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::vector<float> v(kMultiTuDim);
  for (float& x : v) x = gauss(rng);
  return v;
}

HnswlibIndex multi_tu_index(std::uint64_t n) {
  HnswlibIndex ix(kMultiTuDim, DistanceMetric::Euclidean, {.M = 8, .ef_construction = 50});
  for (std::uint64_t i = 0; i < n; ++i) {
    ix.insert(i, multi_tu_vector(i), Metadata{{"i", Value(static_cast<std::int64_t>(i))}});
  }
  return ix;
}

std::vector<HnswlibIndex::Hit> multi_tu_load_and_search(const std::filesystem::path& file,
                                                        const std::vector<float>& query, std::size_t k) {
  const auto db = PersistedIndex<HnswlibIndex>::load(PersistConfig(file));
  return db.read([&](const HnswlibIndex& ix) { return ix.search(query, k); });
}

}  // namespace iqdb::persist::test
