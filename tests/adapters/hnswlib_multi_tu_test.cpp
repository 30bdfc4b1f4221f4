// The hnswlib adapter in a program of two translation units that both
// include its header (this one and hnswlib_multi_tu_other.cpp): it links and
// works from both. This one also includes hnswlib.h itself (to build a graph
// with hnswlib and hand it to the adapter): hnswlib's non-inline
// definitions here and in the adapter's library link together.
#include <gtest/gtest.h>
#include <hnswlib/hnswlib.h>

#include <cstdint>
#include <iqdb/persist.hpp>
#include <iqdb/persist/adapters/hnswlib.hpp>
#include <memory>
#include <vector>

#include "adapters/hnswlib_multi_tu.hpp"
#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

using test::kMultiTuDim;
using test::multi_tu_vector;

constexpr std::uint64_t kVectors = 200;

TEST(HnswlibMultiTu, AnIndexBuiltInOneUnitIsSavedInTheOtherAndLoadedBack) {
  const test::TempDir dir;
  const PersistConfig cfg(dir / "g.iqdb");
  HnswlibIndex built = test::multi_tu_index(kVectors);  // the other unit
  const std::vector<float> query = multi_tu_vector(kVectors + 1);
  const std::vector<HnswlibIndex::Hit> expected = built.search(query, 5);
  ASSERT_EQ(expected.size(), 5u);
  auto db = PersistedIndex<HnswlibIndex>::open_with(std::move(built), cfg);
  db.save();
  EXPECT_EQ(test::multi_tu_load_and_search(cfg.path, query, 5), expected);  // the other unit
  const auto here = PersistedIndex<HnswlibIndex>::load(cfg);
  EXPECT_EQ(here.index().search(query, 5), expected);
  ASSERT_NE(here.index().metadata(7), nullptr);
  EXPECT_EQ(*here.index().metadata(7), (Metadata{{"i", Value(std::int64_t{7})}}));
}

TEST(HnswlibMultiTu, AGraphBuiltWithHnswlibHereIsAdoptedAndLoadedInTheOtherUnit) {
  const test::TempDir dir;
  const PersistConfig cfg(dir / "adopted.iqdb");
  auto space = std::make_unique<hnswlib::L2Space>(kMultiTuDim);
  auto graph = std::make_unique<HnswlibIndex::Graph>(space.get(), kVectors, 8, 50, 42);
  for (std::uint64_t i = 0; i < kVectors; ++i) graph->addPoint(multi_tu_vector(i).data(), i);
  HnswlibIndex adopted(std::move(space), std::move(graph));
  EXPECT_EQ(adopted.size(), kVectors);
  const std::vector<float> query = multi_tu_vector(kVectors + 2);
  const std::vector<HnswlibIndex::Hit> expected = adopted.search(query, 5);
  auto db = PersistedIndex<HnswlibIndex>::open_with(std::move(adopted), cfg);
  db.save();
  EXPECT_EQ(test::multi_tu_load_and_search(cfg.path, query, 5), expected);
}

}  // namespace
}  // namespace iqdb::persist
