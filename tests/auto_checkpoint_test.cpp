// Automatic checkpoints (PersistConfig::checkpoint_log_bytes): the log, and
// so a load's replay, stay bounded without checkpoint() calls; nothing
// acknowledged is lost, with concurrent writers, a failing snapshot write,
// or a process SIGKILLed at random instants. The model is a std::map of
// what was acknowledged; the log is measured by scanning its file.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <iqdb/persist.hpp>
#include <random>
#include <thread>
#include <vector>

#include "support/acking_child.hpp"
#include "support/fault_fs.hpp"
#include "support/test_util.hpp"
#include "support/wal_test_util.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test::Entry;
using test::Model;

constexpr std::uint64_t kBound = 16 << 10;

std::vector<float> vec_of(std::uint64_t i) {
  const auto f = static_cast<float>(i);
  return {f, f + 0.5f, -f, 1.0f};
}

PersistConfig auto_config(const fs::path& p, std::uint64_t bound, FsyncPolicy policy = FsyncPolicy::always(),
                          FileSystem* file_system = nullptr) {
  PersistConfig cfg = test::wal_config(p, policy, file_system);
  cfg.checkpoint_log_bytes = bound;
  return cfg;
}

void put(PersistedIndex<FlatIndex>& db, Model& model, std::uint64_t i) {
  db.insert(i, vec_of(i));
  model[VectorId(i)] = Entry{vec_of(i), std::nullopt};
}

// The bytes of the log's header and valid frames, read from the file.
std::uint64_t log_bytes(const PersistConfig& cfg) {
  return wal::scan_log(default_file_system(), wal::log_path_for(cfg.path), nullptr, wal::ScanMode::Report)
      .valid_bytes;
}

// Waits (at most 20 s: a liveness bound, not a timing) until pred() holds.
template <class Pred>
bool eventually(Pred pred) {
  const auto until = std::chrono::steady_clock::now() + 20s;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

TEST(AutoCheckpoint, KeepsTheLogAndTheReplayBounded) {
  test::TempDir dir;
  const PersistConfig cfg = auto_config(dir / "db.iqdb", kBound);
  Model model;
  constexpr std::uint64_t kInserts = 3000;  // about ten times the bound in frames
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    for (std::uint64_t i = 1; i <= kInserts; ++i) put(db, model, i);
    // The last commits may have reached the bound: that checkpoint then runs.
    ASSERT_TRUE(eventually([&] { return log_bytes(cfg) < kBound; })) << log_bytes(cfg);
    const wal::WalStats s = db.wal_stats();
    EXPECT_GE(s.auto_checkpoints, 3u);
    EXPECT_EQ(s.auto_checkpoint_failures, 0u);
    EXPECT_EQ(db.auto_checkpoint_failure(), std::nullopt);
    EXPECT_EQ(s.records, kInserts);
    // The snapshot holds everything but what the log holds now.
    const std::uint64_t snapshot_lsn = inspect_snapshot(default_file_system(), cfg.path).header.last_lsn;
    const wal::ScanResult scan =
        wal::scan_log(default_file_system(), wal::log_path_for(cfg.path), nullptr, wal::ScanMode::Strict);
    EXPECT_EQ(snapshot_lsn + scan.records, kInserts);
    db.close();
  }
  // A reload replays less than one bound's worth of records and has them all.
  auto again = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_LT(again.wal_stats().recovered_records * 40, kBound);  // a frame here is over 40 bytes
  EXPECT_EQ(again.last_lsn(), kInserts);
  EXPECT_EQ(test::diff(again.index(), model), "");
}

TEST(AutoCheckpoint, ConcurrentWritersLoseNothing) {
  test::TempDir dir;
  const PersistConfig cfg = auto_config(dir / "db.iqdb", 8 << 10);
  constexpr int kThreads = 4;
  constexpr std::uint64_t kEach = 600;
  Model model;
  for (int t = 0; t < kThreads; ++t) {
    for (std::uint64_t k = 0; k < kEach; ++k) {
      const std::uint64_t id = t * 1'000'000 + k;
      model[VectorId(id)] = Entry{vec_of(id), std::nullopt};
    }
  }
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&db, t] {
        for (std::uint64_t k = 0; k < kEach; ++k) {
          const std::uint64_t id = t * 1'000'000 + k;
          db.insert(id, vec_of(id));
          // Readers run beside the checkpoints' snapshot writes.
          if (k % 100 == 0) (void)db.read([](const FlatIndex& ix) { return ix.size(); });
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_GE(db.wal_stats().auto_checkpoints, 1u);
    EXPECT_EQ(db.wal_stats().auto_checkpoint_failures, 0u);
    EXPECT_EQ(test::diff(db.index(), model), "");
    db.close();
  }
  EXPECT_EQ(test::diff(PersistedIndex<FlatIndex>::load(cfg).index(), model), "");
}

TEST(AutoCheckpoint, AFailedOneIsReportedAndTriedAgainLater) {
  test::TempDir dir;
  test::FaultFs ffs;
  const PersistConfig cfg = auto_config(dir / "db.iqdb", kBound, FsyncPolicy::always(), &ffs);
  Model model;
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
  // The first automatic checkpoint's snapshot cannot be renamed into place.
  ffs.arm(test::Fault::fail({test::OpKind::Rename, ".db.iqdb.tmp-"}, 1, ENOSPC));
  std::uint64_t i = 0;
  while (db.wal_stats().auto_checkpoint_failures == 0 && i < 5000) put(db, model, ++i);
  ASSERT_TRUE(eventually([&] { return db.wal_stats().auto_checkpoint_failures == 1; }));
  const std::optional<std::string> why = db.auto_checkpoint_failure();
  ASSERT_TRUE(why.has_value());
  EXPECT_NE(why->find("No space left on device"), std::string::npos) << *why;
  EXPECT_EQ(db.failure(), std::nullopt) << "the log is intact: writes go on";
  EXPECT_EQ(db.wal_stats().auto_checkpoints, 0u);
  // The next try waits for the log to grow by the bound again; it succeeds.
  const std::uint64_t failed_at = log_bytes(cfg);
  EXPECT_GE(failed_at, kBound);
  const std::uint64_t first = i;
  while (db.wal_stats().auto_checkpoints == 0 && i < first + 5000) put(db, model, ++i);
  ASSERT_TRUE(eventually([&] { return db.wal_stats().auto_checkpoints == 1; }));
  EXPECT_EQ(db.wal_stats().auto_checkpoint_failures, 1u);
  EXPECT_EQ(db.auto_checkpoint_failure(), std::nullopt);
  EXPECT_EQ(ffs.fired(), 1u);
  // Not before the log had grown by the bound since the failure: the inserts
  // in between (each frame under 64 bytes) are at least that many bytes.
  EXPECT_GE((i - first) * 64, kBound);
  db.close();
  EXPECT_EQ(test::diff(PersistedIndex<FlatIndex>::load(test::wal_config(cfg.path, FsyncPolicy::always())).index(),
                       model),
            "");
}

// A write refused because an automatic checkpoint poisoned the engine finds
// the reason in auto_checkpoint_failure() at once: it is recorded before the
// checkpoint lets the writers in again, not after.
TEST(AutoCheckpoint, AWriteRefusedByTheFailureItPoisonedWithFindsItsReason) {
  for (int round = 0; round < 10; ++round) {
    test::TempDir dir;
    test::FaultFs ffs;
    const PersistConfig cfg = auto_config(dir / "db.iqdb", kBound, FsyncPolicy::always(), &ffs);
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    // A publish without an answer: the engine cannot tell which snapshot is
    // current, so it poisons (checkpoint.cpp).
    ffs.arm(test::Fault::fail({test::OpKind::Rename, ".db.iqdb.tmp-"}, 1, ETIMEDOUT));
    Model model;
    std::uint64_t i = 0;
    bool refused = false;
    while (!refused && i < 20'000) {
      try {
        put(db, model, ++i);
      } catch (const PersistError&) {
        refused = true;
      }
    }
    ASSERT_TRUE(refused) << "round " << round << ": no write was refused";
    ASSERT_TRUE(db.failure().has_value());
    const std::optional<std::string> why = db.auto_checkpoint_failure();
    ASSERT_TRUE(why.has_value()) << "round " << round << ": refused (" << *db.failure()
                                 << ") with no automatic checkpoint failure to show";
    EXPECT_NE(why->find(std::strerror(ETIMEDOUT)), std::string::npos) << *why;
  }
}

TEST(AutoCheckpoint, ALogLoadedPastTheBoundIsCheckpointedAtOnce) {
  test::TempDir dir;
  const PersistConfig plain = test::wal_config(dir / "db.iqdb", FsyncPolicy::never());
  Model model;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), plain);
    for (std::uint64_t i = 1; i <= 1000; ++i) put(db, model, i);
    db.close();
  }
  ASSERT_GE(log_bytes(plain), kBound);
  const PersistConfig cfg = auto_config(plain.path, kBound, FsyncPolicy::never());
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(db.wal_stats().recovered_records, 1000u);
  // No mutation asks for it: the load found the log past the bound.
  ASSERT_TRUE(eventually([&] { return db.wal_stats().auto_checkpoints == 1; }));
  EXPECT_LT(log_bytes(cfg), kBound);
  db.close();
  EXPECT_EQ(test::diff(PersistedIndex<FlatIndex>::load(cfg).index(), model), "");
}

TEST(AutoCheckpoint, NeedsTheWalAndAReplicaIgnoresIt) {
  test::TempDir dir;
  PersistConfig cfg(dir / "db.iqdb");
  cfg.checkpoint_log_bytes = kBound;
  try {
    (void)PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    FAIL() << "open_with accepted checkpoint_log_bytes without the WAL";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument) << e.what();
  }
  EXPECT_TRUE(dir.entries().empty());
  const PersistConfig with_wal = test::wal_config(cfg.path, FsyncPolicy::always());
  PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), with_wal).close();
  try {
    (void)PersistedIndex<FlatIndex>::load(cfg);
    FAIL() << "load accepted checkpoint_log_bytes without the WAL";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument) << e.what();
  }
  auto replica = ReadReplica<FlatIndex>::open(cfg);
  EXPECT_EQ(replica.index().size(), 0u);
}

// Killed at random instants while automatic checkpoints come one after the
// other (a bound of 4 KiB: one every ~70 inserts), the index loads with
// every insert the child acknowledged.
TEST(AutoCheckpoint, KilledAtRandomInstantsLosesNothingAcknowledged) {
  std::mt19937 rng(20261205);
  for (int round = 0; round < 6; ++round) {
    test::TempDir dir;
    const PersistConfig cfg = auto_config(dir / "db.iqdb", 4 << 10);
    PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg).close();
    test::AckingChild child([&](const test::AckingChild::Ack& ack) {
      auto db = PersistedIndex<FlatIndex>::load(cfg);
      for (std::uint64_t i = 1;; ++i) {
        db.insert(i, vec_of(i));
        ack(i);
      }
    });
    ASSERT_TRUE(child.started());
    const std::optional<std::uint64_t> first = child.first_ack();
    ASSERT_TRUE(first.has_value());
    ::usleep(std::uniform_int_distribution<unsigned>(20000, 300000)(rng));
    child.kill();
    const std::uint64_t acked = child.last_ack(*first);
    const auto db = PersistedIndex<FlatIndex>::load(test::wal_config(cfg.path, FsyncPolicy::always()));
    const std::uint64_t n = db.index().size();
    ASSERT_GE(n, acked) << "round " << round << ": an acknowledged insert was lost";
    ASSERT_LE(n, acked + 1) << "round " << round;  // at most the one in flight
    Model model;
    for (std::uint64_t i = 1; i <= n; ++i) model[VectorId(i)] = Entry{vec_of(i), std::nullopt};
    EXPECT_EQ(test::diff(db.index(), model), "") << "round " << round;
    // Checkpoints did happen in the child: the snapshot holds most of it.
    if (acked > 500) {
      EXPECT_GT(inspect_snapshot(default_file_system(), cfg.path).header.last_lsn, 0u) << "round " << round;
    }
  }
}

}  // namespace
}  // namespace iqdb::persist
