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

// Metadata that is not UTF-8 is refused by the index's own insert too (a
// FlatIndex filled before open_with): a snapshot's reader refuses it
// (docs/FORMAT.md), so an index holding it would be saved and then fail to
// load. Before, only the library's logged mutations checked it.
TEST(MetadataLimits, MetadataThatIsNotUtf8IsRefusedByTheIndexItself) {
  FlatIndex ix(2, DistanceMetric::Euclidean);
  const std::vector<float> v{1.0f, 2.0f};
  const Metadata bad[] = {Metadata{{"\xff", Value(1)}}, Metadata{{"k", Value(std::string("\xc3"))}},
                          Metadata{{"k", Value(std::string("\xed\xbf\xbf"))}}};
  for (const Metadata& m : bad) {
    try {
      ix.insert(1, v, m);
      ADD_FAILURE() << "metadata that is not UTF-8 was stored";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find("not valid UTF-8"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(ix.size(), 0u);
  const Metadata good{{"caf\xc3\xa9", Value(std::string("\xf0\x9f\x98\x80"))}};
  ix.insert(1, v, good);
  test::TempDir dir;
  const PersistConfig cfg(dir / "x.iqdb");
  PersistedIndex<FlatIndex>::open_with(std::move(ix), cfg).save();
  const auto back = PersistedIndex<FlatIndex>::load(cfg);
  ASSERT_NE(back.index().metadata(1), nullptr);
  EXPECT_EQ(*back.index().metadata(1), good);
}

}  // namespace
}  // namespace iqdb::persist
