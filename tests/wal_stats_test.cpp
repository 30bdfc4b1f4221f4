// PersistedIndex::wal_stats(): the counters agree with what the calls did
// and with the fdatasyncs seen at the file-system seam, and a load reports
// what recovery replayed and cut.
#include <gtest/gtest.h>

#include <filesystem>
#include <iqdb/persist.hpp>
#include <thread>
#include <vector>

#include "support/fault_fs.hpp"
#include "support/test_util.hpp"
#include "support/wal_test_util.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;

std::vector<float> vec_of(std::uint64_t i) { return {static_cast<float>(i), 1.0f, 2.0f, 3.0f}; }

PersistConfig config(const fs::path& p, FsyncPolicy policy, FileSystem* file_system = nullptr) {
  return test::wal_config(p, policy, file_system);
}

TEST(WalStats, CountCommitsRecordsAndTheSyncsSeenAtTheSeam) {
  test::TempDir dir;
  test::FaultFs ffs;
  const PersistConfig cfg = config(dir / "db.iqdb", FsyncPolicy::always(), &ffs);
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
  EXPECT_EQ(db.wal_stats().commits, 0u);
  const fs::path log = cfg.path.string() + ".wal";
  ffs.clear();
  for (std::uint64_t i = 0; i < 10; ++i) db.insert(i, vec_of(i));
  db.erase(3);
  WriteBatch b;
  b.insert(100, vec_of(100)).insert(101, vec_of(101)).erase(4);
  db.write(b);
  const wal::WalStats s = db.wal_stats();
  EXPECT_EQ(s.commits, 12u);
  EXPECT_EQ(s.records, 14u);
  std::size_t syncs = 0;
  for (const test::FsOp& op : ffs.log()) syncs += op.kind == test::OpKind::DataSync && op.path == log ? 1 : 0;
  EXPECT_EQ(s.log_syncs, syncs);
  EXPECT_EQ(s.log_syncs, 12u);  // one thread under Always: one fdatasync per call
  EXPECT_EQ(s.recovered_records, 0u);
  EXPECT_FALSE(s.migrated_v1_log);
}

TEST(WalStats, NeverSyncsNothingAndCountsTheSame) {
  test::TempDir dir;
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean),
                                                 config(dir / "db.iqdb", FsyncPolicy::never()));
  for (std::uint64_t i = 0; i < 5; ++i) db.insert(i, vec_of(i));
  EXPECT_EQ(db.wal_stats().commits, 5u);
  EXPECT_EQ(db.wal_stats().log_syncs, 0u);
}

TEST(WalStats, ConcurrentWritersAreAllCounted) {
  test::TempDir dir;
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean),
                                                 config(dir / "db.iqdb", FsyncPolicy::always()));
  constexpr std::uint64_t kThreads = 4, kEach = 100;
  std::vector<std::thread> ts;
  for (std::uint64_t t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      for (std::uint64_t i = 0; i < kEach; ++i) db.insert(t * kEach + i, vec_of(i));
    });
  }
  for (auto& t : ts) t.join();
  const wal::WalStats s = db.wal_stats();
  EXPECT_EQ(s.commits, kThreads * kEach);
  EXPECT_GE(s.log_syncs, 1u);
  EXPECT_LE(s.log_syncs, s.commits);
  EXPECT_EQ(db.index().size(), kThreads * kEach);
}

TEST(WalStats, LoadReportsWhatRecoveryReplayedAndCut) {
  test::TempDir dir;
  const PersistConfig cfg = config(dir / "db.iqdb", FsyncPolicy::always());
  const fs::path log = cfg.path.string() + ".wal";
  std::uint64_t before_last = 0;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    for (std::uint64_t i = 0; i < 7; ++i) db.insert(i, vec_of(i));
    db.checkpoint();  // folds 7 records into the snapshot
    for (std::uint64_t i = 7; i < 12; ++i) db.insert(i, vec_of(i));
    before_last = db.wal_stats().commits;
    ASSERT_EQ(before_last, 12u);
  }
  // The log now holds records 8..12 (LSNs) after its header, then zero
  // preallocation. Tear the last frame: cut into it and leave junk after.
  const std::vector<std::byte> bytes = test::read_file(log);
  std::uint64_t end = bytes.size();
  while (end > 0 && bytes[end - 1] == std::byte{0}) --end;  // the end of the last frame (its CRC or data is non-zero)
  std::vector<std::byte> torn(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(end - 10));
  torn.insert(torn.end(), {std::byte{0xAB}, std::byte{0xCD}, std::byte{0xEF}});
  test::write_file(log, torn);
  const auto db = PersistedIndex<FlatIndex>::load(cfg);
  const wal::WalStats s = db.wal_stats();
  EXPECT_EQ(s.recovered_records, 4u);  // 8..11; 12 was torn
  EXPECT_GT(s.torn_tail_bytes, 0u);
  EXPECT_EQ(s.commits, 0u);
  EXPECT_EQ(db.index().size(), 11u);
  EXPECT_FALSE(db.index().contains(VectorId(std::uint64_t{11})));
}

}  // namespace
}  // namespace iqdb::persist
