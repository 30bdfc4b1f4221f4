// WriteBatch without a copy per mutation: the float arena (insert), referenced
// vectors (insert_ref) and contiguous rows (insert_rows_ref), checked against
// an independent model (std::map of owned std::vector<float>), and a batch of
// rows SIGKILLed mid-stream recovering all or nothing.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <iqdb/persist.hpp>
#include <random>

#include "support/alloc_guard.hpp"
#include "support/acking_child.hpp"
#include "support/test_util.hpp"
#include "support/wal_test_util.hpp"

IQDB_TEST_COUNT_OPERATOR_NEW();

namespace iqdb::persist {
namespace {

constexpr std::size_t kDim = 8;

// Row-major n x kDim floats; element (i, d) = seed * 1000 + i * 10 + d.
std::vector<float> rows_of(std::size_t n, std::size_t seed) {
  std::vector<float> v(n * kDim);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t d = 0; d < kDim; ++d) v[i * kDim + d] = static_cast<float>(seed * 1000 + i * 10 + d);
  }
  return v;
}

// The model's entries for ids[i] -> row i of rows (copied: independent of the batch).
void model_rows(test::Model& m, std::span<const std::uint64_t> ids, const std::vector<float>& rows) {
  for (std::size_t i = 0; i < ids.size(); ++i) {
    m[ids[i]] = test::Entry{{rows.begin() + static_cast<std::ptrdiff_t>(i * kDim),
                             rows.begin() + static_cast<std::ptrdiff_t>((i + 1) * kDim)},
                            std::nullopt};
  }
}

FlatIndex empty_index() { return FlatIndex(kDim, DistanceMetric::Euclidean); }

TEST(WriteBatch, ArenaCopiesVectorsWithoutAnAllocationPerInsert) {
  ASSERT_TRUE(test::operator_new_is_counted());
  constexpr std::size_t kN = 1000;
  std::vector<float> rows = rows_of(kN, 1);
  std::size_t allocations = 0;
  WriteBatch b;
  {
    test::AllocGuard g;
    b.reserve(kN);
    for (std::size_t i = 0; i < kN; ++i) b.insert(i, std::span<const float>(rows).subspan(i * kDim, kDim));
    allocations = g.stats().allocations;
  }
  // The mutation list (1) and one arena block (16384 floats, 64 KiB: the 8000 floats fit).
  EXPECT_LE(allocations, 3U);
  // Owned copies: the caller's memory may change afterwards.
  const std::vector<float> expect = rows;
  std::fill(rows.begin(), rows.end(), -1.0f);
  ASSERT_EQ(b.size(), kN);
  for (std::size_t i = 0; i < kN; ++i) {
    const auto& m = b.mutations()[i];
    EXPECT_EQ(m.id, VectorId(i));
    ASSERT_EQ(m.vector.size(), kDim);
    EXPECT_EQ(0, std::memcmp(m.vector.data(), expect.data() + i * kDim, kDim * sizeof(float))) << i;
  }
}

TEST(WriteBatch, VectorsStayValidAcrossMovesAndBlockGrowth) {
  WriteBatch b;
  std::vector<std::vector<float>> model;
  for (std::size_t i = 0; i < 3000; ++i) {  // 3000 x 40 floats: several arena blocks
    std::vector<float> v(40, static_cast<float>(i));
    b.insert(i, v);
    model.push_back(v);
  }
  WriteBatch moved = std::move(b);
  const WriteBatch copied = moved;  // a deep copy
  moved.clear();
  ASSERT_EQ(copied.size(), model.size());
  for (std::size_t i = 0; i < model.size(); ++i) {
    const std::vector<float> got = copied.mutations()[i].vector;  // converts (older code's spelling)
    EXPECT_EQ(got, model[i]) << i;
  }
}

TEST(WriteBatch, RowsOfTheWrongShapeAreRefusedAndNothingIsAdded) {
  WriteBatch b;
  const std::vector<std::uint64_t> ids = {1, 2, 3};
  const std::vector<float> rows = rows_of(3, 0);
  EXPECT_EQ(test::error_of([&] { b.insert_rows_ref(ids, std::span<const float>(rows).first(23), kDim); }),
            ErrorKind::InvalidArgument);
  EXPECT_EQ(test::error_of([&] { b.insert_rows_ref(ids, rows, 0); }), ErrorKind::InvalidArgument);
  EXPECT_EQ(test::error_of([&] { b.insert_rows_ref({}, rows, kDim); }), ErrorKind::InvalidArgument);
  EXPECT_TRUE(b.empty());
  b.insert_rows_ref({}, {}, kDim);
  EXPECT_TRUE(b.empty());
}

TEST(WriteBatch, ReferencedRowsAreOneCommitOneSyncAndReplay) {
  test::TempDir dir;
  const auto cfg = test::wal_config(dir / "db.iqdb", FsyncPolicy::always());
  const std::vector<std::uint64_t> ids = {7, 3, 99, 12, 5};
  const std::vector<float> rows = rows_of(ids.size(), 2);
  const std::vector<float> extra(kDim, 0.5f);
  test::Model model;
  model_rows(model, ids, rows);
  model[VectorId::bytes("b")] = test::Entry{extra, Metadata{{"k", "v"}}};
  {
    auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), cfg);
    WriteBatch b;
    b.insert_rows_ref(ids, rows, kDim).insert_ref(VectorId::bytes("b"), extra, Metadata{{"k", "v"}});
    db.write(b);
    const wal::WalStats st = db.wal_stats();
    EXPECT_EQ(st.commits, 1U);
    EXPECT_EQ(st.records, ids.size() + 1);
    EXPECT_EQ(st.log_syncs, 1U);
    EXPECT_EQ(db.last_lsn(), ids.size() + 1);
    EXPECT_EQ(test::diff(db.index(), model), "");
  }
  const auto again = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(again.wal_stats().recovered_records, ids.size() + 1);
  EXPECT_EQ(test::diff(again.index(), model), "");
}

// A batch too large for one log frame (256 MiB here) is refused with
// nothing logged, the index not poisoned. When its vectors alone exceed the
// limit, before anything is encoded: the frame used to be encoded in full
// (grown past 256 MiB) and only then measured. When its records are larger
// than their vectors say (1 MiB ids), as soon as the encoding passes it.
TEST(WriteBatch, ABatchBeyondTheFrameLimitIsRefusedBeforeItIsEncoded) {
  ASSERT_TRUE(test::operator_new_is_counted());
  test::TempDir dir;
  constexpr std::size_t kWide = 4096;
  const std::size_t rows_n = wal::MAX_FRAME_LEN / (kWide * sizeof(float)) + 64;  // 16,448 rows of 16 KiB
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kWide, DistanceMetric::Euclidean),
                                                 test::wal_config(dir / "db.iqdb", FsyncPolicy::always()));
  {
    std::vector<float> rows(kWide * rows_n, 0.25f);
    std::vector<std::uint64_t> ids(rows_n);
    for (std::size_t i = 0; i < rows_n; ++i) ids[i] = i + 1;
    WriteBatch b;
    b.insert_rows_ref(ids, rows, kWide);
    test::AllocGuard g;
    try {
      db.write(b);
      ADD_FAILURE() << "a batch beyond the frame limit was logged";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find("frame limit"), std::string::npos) << e.what();
    }
    EXPECT_LT(g.stats().peak_bytes, std::size_t{16} << 20);
  }
  {
    // 260 inserts of 1 MiB ids (the longest the readers take) and 4096 floats:
    // their vectors alone are 4 MiB, their records 264 MiB.
    WriteBatch b;
    const std::vector<float> v(kWide, 0.5f);
    for (int i = 0; i < 260; ++i) {
      std::string id(std::size_t{1} << 20, 'a');
      id[0] = static_cast<char>(i);
      id[1] = static_cast<char>(i >> 8);
      b.insert_ref(VectorId::bytes(id), v);
    }
    EXPECT_EQ(test::error_of([&] { db.write(b); }), ErrorKind::InvalidArgument);
  }
  EXPECT_EQ(db.last_lsn(), 0U);
  EXPECT_EQ(db.failure(), std::nullopt);
  const std::vector<float> one(kWide, 1.0f);
  db.insert(7, one);  // not poisoned
  db.close();
  const auto again = PersistedIndex<FlatIndex>::load(test::wal_config(dir / "db.iqdb", FsyncPolicy::always()));
  ASSERT_EQ(again.index().size(), 1U);
  EXPECT_TRUE(again.index().contains(VectorId(std::uint64_t{7})));
}

// Each refusal leaves nothing logged and the index as it was.
TEST(WriteBatch, AnInvalidRowBatchIsRefusedWhole) {
  test::TempDir dir;
  const auto cfg = test::wal_config(dir / "db.iqdb", FsyncPolicy::always());
  auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), cfg);
  const std::vector<float> first = rows_of(2, 3);
  db.write(WriteBatch().insert_rows_ref(std::vector<std::uint64_t>{1, 2}, first, kDim));
  test::Model model;
  model_rows(model, std::vector<std::uint64_t>{1, 2}, first);
  const auto refused = [&](const WriteBatch& b, ErrorKind kind) {
    EXPECT_EQ(test::error_of([&] { db.write(b); }), kind);
    EXPECT_EQ(db.last_lsn(), 2U);
    EXPECT_EQ(db.wal_stats().records, 2U);
    EXPECT_EQ(test::diff(db.index(), model), "");
  };
  const std::vector<float> wide = rows_of(4, 4);  // 4 rows of kDim read as 2 rows of 2 * kDim
  refused(WriteBatch().insert_rows_ref(std::vector<std::uint64_t>{10, 11}, wide, 2 * kDim), ErrorKind::InvalidArgument);
  const std::vector<float> three = rows_of(3, 5);
  refused(WriteBatch().insert_rows_ref(std::vector<std::uint64_t>{10, 11, 10}, three, kDim), ErrorKind::DuplicateId);
  refused(WriteBatch().insert_rows_ref(std::vector<std::uint64_t>{10, 2, 11}, three, kDim), ErrorKind::DuplicateId);
  db.close();
  const auto again = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(test::diff(again.index(), model), "");
}

// A child writes batches of rows under Always and reports each acknowledged
// batch through a pipe; it is SIGKILLed at a random instant. The parent's
// load holds every acknowledged batch, and each batch entirely or not at all.
TEST(WriteBatch, RowBatchesSurviveSigkillAllOrNothing) {
  constexpr std::size_t kBatch = 200;
  constexpr int kRounds = 4;
  std::mt19937 rng(12345);
  for (int round = 0; round < kRounds; ++round) {
    test::TempDir dir;
    const auto cfg = test::wal_config(dir / "db.iqdb", FsyncPolicy::always());
    PersistedIndex<FlatIndex>::open_with(empty_index(), cfg).close();
    test::AckingChild child([&](const test::AckingChild::Ack& ack) {
      auto db = PersistedIndex<FlatIndex>::load(cfg);
      for (std::uint32_t b = 0;; ++b) {
        std::vector<std::uint64_t> ids(kBatch);
        for (std::size_t i = 0; i < kBatch; ++i) ids[i] = b * kBatch + i;
        const std::vector<float> rows = rows_of(kBatch, b);
        db.write(WriteBatch().insert_rows_ref(ids, rows, kDim));
        ack(b);
      }
    });
    ASSERT_TRUE(child.started());
    // Killed at a random instant after the first acknowledged batch.
    const std::optional<std::uint64_t> first = child.first_ack();
    ASSERT_TRUE(first.has_value());
    ::usleep(std::uniform_int_distribution<unsigned>(0, 40000)(rng));
    child.kill();
    const std::uint64_t acked = child.last_ack(*first);
    const auto db = PersistedIndex<FlatIndex>::load(cfg);
    const std::uint64_t n = db.index().size();
    ASSERT_EQ(n % kBatch, 0U) << "a batch was recovered in part: " << n;
    ASSERT_GE(n / kBatch, acked + 1ULL) << "an acknowledged batch was lost";
    test::Model model;
    for (std::uint32_t b = 0; b < n / kBatch; ++b) {
      std::vector<std::uint64_t> ids(kBatch);
      for (std::size_t i = 0; i < kBatch; ++i) ids[i] = b * kBatch + i;
      model_rows(model, ids, rows_of(kBatch, b));
    }
    EXPECT_EQ(test::diff(db.index(), model), "") << "round " << round;
  }
}

}  // namespace
}  // namespace iqdb::persist
