// Write-ahead log basics: replay, checkpoint, torn tail, locking, batches.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include <iqdb/persist.hpp>

#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

std::vector<float> vec_of(std::uint64_t i, std::size_t dim = 4) {
  std::vector<float> v(dim);
  for (std::size_t d = 0; d < dim; ++d) v[d] = static_cast<float>(i * 10 + d);
  return v;
}

PersistConfig wal_config(const std::filesystem::path& p, FsyncPolicy policy = FsyncPolicy::always()) {
  PersistConfig cfg(p);
  cfg.wal_enabled = true;
  cfg.fsync_policy = policy;
  return cfg;
}

// A FlatIndex that remembers the room replay reserves before it starts.
struct ReserveSpy : FlatIndex {
  explicit ReserveSpy(FlatIndex f) : FlatIndex(std::move(f)) {}
  static ReserveSpy load_from(PayloadReader& r) { return ReserveSpy(FlatIndex::load_from(r)); }
  void reserve(std::uint64_t n) {
    reserved = n;
    FlatIndex::reserve(n);
  }
  static inline std::uint64_t reserved = 0;
};

// The log is grown ahead of its frames in zero-filled steps (1 MiB first):
// replay's size hint counts the frames, not that padding.
TEST(WalBasic, ReplayReservesForTheFramesNotThePadding) {
  test::TempDir dir;
  const auto cfg = wal_config(dir / "db.iqdb", FsyncPolicy::never());
  constexpr std::uint64_t kRecords = 3000;  // 59-byte frames: ~177 KB, then ~870 KB of zeros
  {
    auto db = PersistedIndex<ReserveSpy>::open_with(ReserveSpy(FlatIndex(4, DistanceMetric::Euclidean)), cfg);
    for (std::uint64_t i = 0; i < kRecords; ++i) db.insert(i, vec_of(i));
    db.close();
  }
  ASSERT_GE(std::filesystem::file_size(dir / "db.iqdb.wal"), std::uint64_t{1} << 20);
  ReserveSpy::reserved = 0;
  const auto db = PersistedIndex<ReserveSpy>::load(cfg);
  EXPECT_EQ(db.index().size(), kRecords);
  // At most the rest of the last frame's 4 KiB block is counted (69 frames
  // of 59 bytes), not the padding (17,000 more).
  EXPECT_GE(ReserveSpy::reserved, kRecords);
  EXPECT_LE(ReserveSpy::reserved, kRecords + 4096 / 59);
}

// Under Never, small frames are copied into a mapped window of the log and
// large ones (over 16 KiB: batches) written with pwrite; interleaved across
// several 4 MiB windows, then the process killed without closing, every
// mutation is replayed with its own vector (compared with the values the
// ids define, not with what the writer kept).
TEST(WalBasic, NeverInterleavesMappedAndWrittenFramesAcrossWindows) {
  test::TempDir dir;
  const auto cfg = wal_config(dir / "db.iqdb", FsyncPolicy::never());
  constexpr std::size_t kDim = 128;
  constexpr std::uint64_t kRounds = 30, kBatch = 300, kSingles = 40;  // ~4.9 MB of batches
  const auto id_of = [](std::uint64_t round, std::uint64_t i) { return round * 1000 + i; };
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), cfg);
    for (std::uint64_t r = 0; r < kRounds; ++r) {
      for (std::uint64_t i = 0; i < kSingles; ++i) db.insert(id_of(r, i), vec_of(id_of(r, i), kDim));
      WriteBatch b;
      for (std::uint64_t i = kSingles; i < kSingles + kBatch; ++i) b.insert(id_of(r, i), vec_of(id_of(r, i), kDim));
      db.write(b);
    }
    db.erase(id_of(0, 0));
    ::kill(::getpid(), SIGKILL);  // a process crash: no close, no sync
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the writer failed before its crash";
  const auto db = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(db.index().size(), kRounds * (kSingles + kBatch) - 1);
  EXPECT_FALSE(db.index().contains(id_of(0, 0)));
  for (std::uint64_t r = 0; r < kRounds; ++r) {
    for (std::uint64_t i = (r == 0 ? 1 : 0); i < kSingles + kBatch; ++i) {
      const auto got = db.index().get(id_of(r, i));
      const auto want = vec_of(id_of(r, i), kDim);
      ASSERT_TRUE(std::equal(got.begin(), got.end(), want.begin(), want.end())) << "id " << id_of(r, i);
    }
  }
}

TEST(WalBasic, AcknowledgedMutationsSurviveReopenWithoutSave) {
  test::TempDir dir;
  const auto cfg = wal_config(dir / "db.iqdb");
  FlatIndex model(4, DistanceMetric::Euclidean);
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    for (std::uint64_t i = 0; i < 50; ++i) {
      db.insert(i, vec_of(i), Metadata{{"i", Value(static_cast<std::int64_t>(i))}});
      model.insert(i, vec_of(i), Metadata{{"i", Value(static_cast<std::int64_t>(i))}});
    }
    for (std::uint64_t i = 0; i < 50; i += 3) {
      db.erase(i);
      model.erase(i);
    }
    EXPECT_EQ(db.last_lsn(), 50u + 17u);
    // No save: the process "ends" here.
  }
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_TRUE(db.index() == model);
  EXPECT_EQ(db.last_lsn(), 67u);
}

TEST(WalBasic, RejectedMutationsAreNeverLogged) {
  test::TempDir dir;
  const auto cfg = wal_config(dir / "db.iqdb");
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    db.insert(1, vec_of(1));
    EXPECT_THROW(db.insert(1, vec_of(1)), PersistError);
    EXPECT_THROW(db.erase(2), PersistError);
    EXPECT_THROW(db.insert(3, vec_of(3, 5)), PersistError);
    EXPECT_EQ(db.last_lsn(), 1u);
  }
  std::uint64_t records = 0;
  const auto scan = wal::scan_log(default_file_system(), wal::log_path_for(cfg.path),
                                  [&](const wal::RecordView&) { ++records; });
  EXPECT_EQ(records, 1u);
  EXPECT_EQ(scan.torn_tail_bytes, 0u);
}

TEST(WalBasic, CheckpointFoldsLogAndStartsEmptyOne) {
  test::TempDir dir;
  const auto cfg = wal_config(dir / "db.iqdb");
  FlatIndex model(4, DistanceMetric::Euclidean);
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    for (std::uint64_t i = 0; i < 20; ++i) {
      db.insert(i, vec_of(i));
      model.insert(i, vec_of(i));
    }
    const FileHeader h = db.checkpoint();
    EXPECT_EQ(h.last_lsn, 20u);
    for (std::uint64_t i = 20; i < 25; ++i) {
      db.insert(i, vec_of(i));
      model.insert(i, vec_of(i));
    }
  }
  std::vector<std::uint64_t> lsns;
  const auto scan = wal::scan_log(default_file_system(), wal::log_path_for(cfg.path),
                                  [&](const wal::RecordView& r) { lsns.push_back(*r.lsn); });
  EXPECT_EQ(scan.base_lsn, 21u);
  EXPECT_EQ(lsns, (std::vector<std::uint64_t>{21, 22, 23, 24, 25}));
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_TRUE(db.index() == model);
}

TEST(WalBasic, SecondWriterIsLockedOut) {
  test::TempDir dir;
  const auto cfg = wal_config(dir / "db.iqdb");
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
  try {
    auto other = PersistedIndex<FlatIndex>::load(cfg);
    FAIL() << "second writer opened";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Locked);
  }
  db.close();
  EXPECT_NO_THROW(PersistedIndex<FlatIndex>::load(cfg));
}

TEST(WalBasic, BatchIsOneFrame) {
  test::TempDir dir;
  const auto cfg = wal_config(dir / "db.iqdb");
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    WriteBatch b;
    for (std::uint64_t i = 0; i < 10; ++i) b.insert(i, vec_of(i));
    b.erase(3);
    b.insert(3, vec_of(33));
    db.write(b);
    WriteBatch bad;
    bad.insert(100, vec_of(100));
    bad.erase(555);  // missing: the whole batch is refused
    EXPECT_THROW(db.write(bad), PersistError);
    EXPECT_FALSE(db.index().contains(100));
  }
  const auto scan = wal::scan_log(default_file_system(), wal::log_path_for(cfg.path), {});
  EXPECT_EQ(scan.frames, 1u);
  EXPECT_EQ(scan.records, 12u);
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(db.index().size(), 10u);
  EXPECT_EQ(db.index().get(3)[0], 330.0f);
}

// Each mutation of a batch is validated against the state the earlier ones
// leave, with or without a WAL; a conflict refuses the whole batch.
TEST(WalBasic, BatchMutationsSeeTheOnesBeforeThem) {
  test::TempDir dir;
  for (const bool wal : {false, true}) {
    SCOPED_TRACE(wal ? "wal" : "no wal");
    PersistConfig cfg = wal ? wal_config(dir / "w.iqdb") : PersistConfig(dir / "n.iqdb");
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    db.insert(1, vec_of(1));
    const auto refused = [&](WriteBatch& b, ErrorKind kind) {
      try {
        db.write(b);
        ADD_FAILURE() << "the batch was accepted";
      } catch (const PersistError& e) {
        EXPECT_EQ(e.kind(), kind) << e.what();
      }
      EXPECT_EQ(db.index().size(), 1u);
      EXPECT_TRUE(db.index().contains(1));
    };
    WriteBatch twice;
    twice.insert(2, vec_of(2)).insert(2, vec_of(2));
    refused(twice, ErrorKind::DuplicateId);
    WriteBatch erase_twice;
    erase_twice.erase(1).erase(1);
    refused(erase_twice, ErrorKind::IdNotFound);
    WriteBatch erase_then_use;
    erase_then_use.insert(3, vec_of(3)).erase(1).insert(1, vec_of(11)).erase(3).insert(3, vec_of(33));
    db.write(erase_then_use);
    EXPECT_EQ(db.index().size(), 2u);
    EXPECT_EQ(db.index().get(1)[0], 110.0f);
    EXPECT_EQ(db.index().get(3)[0], 330.0f);
    // Many distinct ids and a repeat at the end (the batch table's probing).
    WriteBatch big;
    for (std::uint64_t i = 100; i < 1100; ++i) big.insert(i, vec_of(i));
    big.insert(777, vec_of(7));
    try {
      db.write(big);
      ADD_FAILURE() << "the batch was accepted";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::DuplicateId) << e.what();
    }
    EXPECT_EQ(db.index().size(), 2u);
  }
}

}  // namespace
}  // namespace iqdb::persist
