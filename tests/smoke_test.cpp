// End-to-end smoke: the README's five-line example, for every compression.
#include <gtest/gtest.h>

#include <iqdb/persist.hpp>

#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

TEST(Smoke, SaveLoadRoundTripEveryCompression) {
  test::TempDir dir;
  for (Compression c : {Compression::none(), Compression::zstd(3), Compression::lz4()}) {
    PersistConfig cfg(dir / "v.iqdb");
    cfg.compression = c;
    FlatIndex idx(4, DistanceMetric::Euclidean);
    for (std::uint64_t i = 0; i < 100; ++i) {
      const float f = static_cast<float>(i);
      idx.insert(i, std::vector<float>{f, f + 1, f * 2, -f}, i % 3 == 0 ? std::optional<Metadata>(Metadata{{"k", Value(static_cast<std::int64_t>(i))}}) : std::nullopt);
    }
    idx.insert(VectorId::bytes("abc"), std::vector<float>{1, 2, 3, 4});
    auto db = PersistedIndex<FlatIndex>::open_with(idx, cfg);
    db.save();
    auto back = PersistedIndex<FlatIndex>::load(cfg);
    EXPECT_TRUE(back.index() == idx);
    EXPECT_EQ(back.index().size(), 101u);
    EXPECT_EQ(dir.entries(), (std::vector<std::string>{"v.iqdb", "v.iqdb.lock"}));  // save holds the writer lock
  }
}

}  // namespace
}  // namespace iqdb::persist
