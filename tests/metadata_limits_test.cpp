// A metadata key is refused at insert when a snapshot could not hold it:
// read_metadata accepts keys of at most kMaxMetadataKeyBytes, so a longer
// key accepted by insert would be logged and saved, and the index would then
// fail to load. The longest allowed key round-trips through the log, a
// checkpoint and a save.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include <iqdb/persist.hpp>

#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

TEST(MetadataLimits, KeyLongerThanASnapshotHoldsIsRefusedAndNotLogged) {
  test::TempDir dir;
  PersistConfig cfg(dir / "x.iqdb");
  cfg.wal_enabled = true;
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), cfg);
  const std::vector<float> v{1.0f, 2.0f};
  const std::string too_long(kMaxMetadataKeyBytes + 1, 'k');
  try {
    db.insert(1, v, Metadata{{too_long, Value(1)}});
    FAIL() << "a key of " << too_long.size() << " bytes was accepted";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument) << e.what();
  }
  EXPECT_EQ(db.last_lsn(), 0u) << "the refused insert was logged";
  EXPECT_FALSE(db.index().contains(1));
}

TEST(MetadataLimits, LongestAllowedKeyRoundTripsThroughLogCheckpointAndSave) {
  test::TempDir dir;
  PersistConfig cfg(dir / "x.iqdb");
  cfg.wal_enabled = true;
  const std::string longest(kMaxMetadataKeyBytes, 'k');
  const std::vector<float> v{1.0f, 2.0f};
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), cfg);
    db.insert(1, v, Metadata{{longest, Value("a")}});
    db.close();
  }
  {
    auto db = PersistedIndex<FlatIndex>::load(cfg);  // replayed from the log
    ASSERT_NE(db.index().metadata(1), nullptr);
    EXPECT_EQ(db.index().metadata(1)->at(longest).as_string(), "a");
    (void)db.checkpoint();  // now in a snapshot
    db.close();
  }
  auto again = PersistedIndex<FlatIndex>::load(cfg);
  ASSERT_NE(again.index().metadata(1), nullptr);
  EXPECT_EQ(again.index().metadata(1)->at(longest).as_string(), "a");
}

}  // namespace
}  // namespace iqdb::persist
