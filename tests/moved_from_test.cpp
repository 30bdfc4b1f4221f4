// Objects the library hands out stay usable after they were moved from:
// a moved-from VectorId is the u64 id 0 (an empty byte id, which every
// reader refuses, was logged and saved and then made the index unloadable),
// a WriteBatch and a FlatIndex are empty and take new mutations (both
// crashed), and a PersistedIndex throws InvalidArgument (it dereferenced
// null). What each stores round-trips through the log and a snapshot.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include <iqdb/persist.hpp>

#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

const std::vector<float> kV{1.0f, 2.0f};

PersistConfig wal_config(const test::TempDir& dir) {
  PersistConfig cfg(dir / "x.iqdb");
  cfg.wal_enabled = true;
  return cfg;
}

TEST(MovedFrom, AVectorIdIsTheU64IdZero) {
  VectorId a = VectorId::bytes("key");
  VectorId b = std::move(a);
  EXPECT_EQ(b, VectorId::bytes("key"));
  EXPECT_TRUE(a.is_u64());  // NOLINT(bugprone-use-after-move): what is tested
  EXPECT_EQ(a.as_u64(), 0u);
  VectorId c = VectorId::bytes("other");
  c = std::move(b);
  EXPECT_EQ(c, VectorId::bytes("key"));
  EXPECT_EQ(b, VectorId(0));  // NOLINT(bugprone-use-after-move)
}

// The index stays loadable with what was acknowledged, before and after a
// checkpoint.
TEST(MovedFrom, AMovedFromByteIdInsertedThroughTheLogLoadsBack) {
  test::TempDir dir;
  const PersistConfig cfg = wal_config(dir);
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), cfg);
    db.insert(VectorId::bytes("first"), kV);
    VectorId a = VectorId::bytes("key");
    const VectorId keep = std::move(a);
    db.insert(a, kV);  // NOLINT(bugprone-use-after-move): the id 0
    db.insert(keep, kV);
    db.close();
  }
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(db.index().size(), 3u);
  EXPECT_TRUE(db.index().contains(VectorId(0)));
  EXPECT_TRUE(db.index().contains(VectorId::bytes("key")));
  (void)db.checkpoint();
  db.close();
  EXPECT_EQ(PersistedIndex<FlatIndex>::load(cfg).index().size(), 3u);
}

TEST(MovedFrom, AWriteBatchIsEmptyAndTakesNewMutations) {
  WriteBatch b;
  b.insert(1, kV).insert(2, kV);
  WriteBatch c = std::move(b);
  EXPECT_EQ(c.size(), 2u);
  EXPECT_TRUE(b.empty());  // NOLINT(bugprone-use-after-move)
  b.insert(3, kV);         // crashed: the moved-from arena claimed room it no longer had
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(std::vector<float>(b.mutations()[0].vector), kV);
  WriteBatch d;
  d.insert(9, std::vector<float>{5.0f, 6.0f});
  d = std::move(c);
  EXPECT_TRUE(c.empty());  // NOLINT(bugprone-use-after-move)
  c.insert(4, kV);
  EXPECT_EQ(std::vector<float>(c.mutations()[0].vector), kV);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d.mutations()[1].id, VectorId(2));
}

TEST(MovedFrom, AFlatIndexIsEmptyAndUsable) {
  FlatIndex ix(2, DistanceMetric::Euclidean);
  ix.insert(1, kV);
  test::TempDir dir;
  auto db = PersistedIndex<FlatIndex>::open_with(std::move(ix), PersistConfig(dir / "x.iqdb"));
  EXPECT_EQ(db.index().size(), 1u);
  // The moved-from index: every call works on an empty index.
  EXPECT_EQ(ix.size(), 0u);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(ix.dim(), 2u);
  EXPECT_FALSE(ix.contains(1));
  EXPECT_TRUE(ix.get(1).empty());
  EXPECT_EQ(ix.metadata(1), nullptr);
  EXPECT_TRUE(ix.search(kV, 3).empty());
  try {
    ix.erase(1);
    FAIL() << "erase of an absent id succeeded";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::IdNotFound);
  }
  const FlatIndex copy = ix;  // copies of it too
  EXPECT_EQ(copy.size(), 0u);
  ix.insert(7, kV);
  EXPECT_TRUE(ix.contains(7));
  EXPECT_EQ(ix.search(kV, 1).at(0).id, VectorId(7));
  FlatIndex other(2, DistanceMetric::Euclidean);
  other = std::move(ix);
  EXPECT_TRUE(other.contains(7));
  ix.reserve(10);  // NOLINT(bugprone-use-after-move)
  ix.insert(8, kV);
  EXPECT_EQ(ix.size(), 1u);
}

TEST(MovedFrom, APersistedIndexRefusesEveryCall) {
  test::TempDir dir;
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), wal_config(dir));
  db.insert(1, kV);
  auto other = std::move(db);
  EXPECT_FALSE(db.valid());  // NOLINT(bugprone-use-after-move)
  EXPECT_TRUE(other.valid());
  const auto refused = [](auto&& call, const char* what) {
    try {
      call();
      ADD_FAILURE() << what << " on a moved-from PersistedIndex did not throw";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument) << what << ": " << e.what();
    }
  };
  refused([&] { db.insert(2, kV); }, "insert");
  refused([&] { db.erase(1); }, "erase");
  refused([&] { db.write(WriteBatch{}); }, "write of an empty batch");
  refused([&] { db.write(WriteBatch{}.insert(3, kV)); }, "write");
  refused([&] { (void)db.save(); }, "save");
  refused([&] { (void)db.checkpoint(); }, "checkpoint");
  refused([&] { db.sync(); }, "sync");
  refused([&] { db.close(); }, "close");
  refused([&] { (void)db.last_lsn(); }, "last_lsn");
  refused([&] { (void)db.failure(); }, "failure");
  refused([&] { (void)db.auto_checkpoint_failure(); }, "auto_checkpoint_failure");
  refused([&] { (void)db.wal_stats(); }, "wal_stats");
  refused([&] { db.read([](const FlatIndex&) { return 0; }); }, "read");
  // The object it moved to has everything.
  other.insert(2, kV);
  EXPECT_EQ(other.last_lsn(), 2u);
  other.close();
}

// An empty batch changes nothing, but is refused where any write is.
TEST(MovedFrom, AnEmptyBatchIsRefusedAfterClose) {
  test::TempDir dir;
  for (const bool wal : {true, false}) {
    PersistConfig cfg(dir / (wal ? "w.iqdb" : "n.iqdb"));
    cfg.wal_enabled = wal;
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), cfg);
    db.write(WriteBatch{});  // open: accepted, nothing logged
    EXPECT_EQ(db.last_lsn(), 0u);
    db.close();
    try {
      db.write(WriteBatch{});
      ADD_FAILURE() << "an empty write after close() was accepted (wal " << wal << ")";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument) << e.what();
    }
  }
}

}  // namespace
}  // namespace iqdb::persist
