// Write-ahead log basics: replay, checkpoint, torn tail, locking, batches.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <stdexcept>
#include <thread>

#include <iqdb/persist.hpp>

#include "support/test_util.hpp"
#include "support/wal_test_util.hpp"

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

// f(wal, dir, config) once without the WAL and once with it (Always), each
// in a fresh directory, under a trace naming the mode.
template <class F>
void with_and_without_wal(F&& f) {
  for (const bool wal : {false, true}) {
    SCOPED_TRACE(wal ? "WAL" : "no WAL");
    test::TempDir dir;
    f(wal, dir, wal ? wal_config(dir / "db.iqdb") : PersistConfig(dir / "db.iqdb"));
  }
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

// open_with that throws leaves an index passed as an rvalue as it was, so a
// caller (the Python module) can hand it back; an lvalue is copied.
TEST(WalBasic, OpenWithThatFailsHandsTheIndexBack) {
  test::TempDir dir;
  const auto cfg = wal_config(dir / "db.iqdb");
  auto writer = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
  FlatIndex ix(4, DistanceMetric::Euclidean);
  for (std::uint64_t i = 1; i <= 3; ++i) ix.insert(i, vec_of(i));
  const auto holds_three = [&] {
    if (ix.size() != 3) return false;
    for (std::uint64_t i = 1; i <= 3; ++i) {
      const auto v = ix.get(i);
      const std::vector<float> want = vec_of(i);
      if (!std::equal(v.begin(), v.end(), want.begin(), want.end())) return false;
    }
    return true;
  };
  try {
    auto second = PersistedIndex<FlatIndex>::open_with(std::move(ix), cfg);
    FAIL() << "a second writer opened";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Locked);
  }
  EXPECT_TRUE(holds_three());
  PersistConfig bad(dir / "other.iqdb");
  bad.checkpoint_log_bytes = 100;  // invalid without the WAL
  EXPECT_THROW(PersistedIndex<FlatIndex>::open_with(std::move(ix), bad), PersistError);
  EXPECT_TRUE(holds_three());
  writer.close();
  auto db = PersistedIndex<FlatIndex>::open_with(ix, cfg);  // a copy
  EXPECT_TRUE(holds_three());
  EXPECT_EQ(db.index().size(), 3U);
}

// After close(), with or without the WAL, mutations, save and checkpoint are
// refused and change no file; the index stays readable.
TEST(WalBasic, AClosedIndexRefusesMutationsAndSaves) {
  with_and_without_wal([](bool, const test::TempDir& dir, const PersistConfig& cfg) {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    db.insert(1, vec_of(1));
    db.insert(2, vec_of(2));
    db.save();
    db.close();
    const std::vector<std::byte> before = test::read_file(dir / "db.iqdb");
    const auto refused = [](auto&& call) {
      try {
        call();
      } catch (const PersistError& e) {
        return e.kind() == ErrorKind::InvalidArgument && std::string(e.what()).find("closed") != std::string::npos;
      }
      return false;
    };
    EXPECT_TRUE(refused([&] { db.insert(3, vec_of(3)); }));
    EXPECT_TRUE(refused([&] { db.erase(1); }));
    WriteBatch b;
    b.insert(4, vec_of(4));
    EXPECT_TRUE(refused([&] { db.write(b); }));
    EXPECT_TRUE(refused([&] { db.save(); }));
    EXPECT_TRUE(refused([&] { db.checkpoint(); }));
    if (cfg.wal_enabled) {
      EXPECT_TRUE(refused([&] { db.sync(); }));
    } else {
      db.sync();  // nothing to sync without the WAL: it returns, closed or not (docs/API.md)
    }
    EXPECT_EQ(db.read([](const FlatIndex& ix) { return ix.size(); }), 2U);
    EXPECT_TRUE(test::read_file(dir / "db.iqdb") == before);
    EXPECT_EQ(PersistedIndex<FlatIndex>::load(cfg).index().size(), 2U);
  });
}

// Inside read(f), a call back into the same index would wait for f's own
// read lock (a mutation, a save; with the WAL also the engine's lock, held
// by a commit that waits for the write lock): each is refused with
// InvalidArgument before anything is logged or written, a nested read runs,
// and after read() returns the index works as before. (Before, these calls
// hung.)
TEST(WalBasic, CallsBackFromInsideReadAreRefused) {
  with_and_without_wal([](bool wal, const test::TempDir& dir, const PersistConfig& cfg) {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    db.insert(1, vec_of(1));
    db.save();
    const std::uint64_t lsn = db.last_lsn();
    const std::vector<std::byte> snapshot = test::read_file(dir / "db.iqdb");
    const auto refused = [](auto&& call) { return test::error_of(call) == ErrorKind::InvalidArgument; };
    const std::size_t seen = db.read([&](const FlatIndex& index) {
      EXPECT_TRUE(refused([&] { db.insert(2, vec_of(2)); }));
      EXPECT_TRUE(refused([&] { db.erase(1); }));
      WriteBatch b;
      b.insert(3, vec_of(3));
      EXPECT_TRUE(refused([&] { db.write(b); }));
      EXPECT_TRUE(refused([&] { db.save(); }));
      EXPECT_TRUE(refused([&] { db.checkpoint(); }));
      EXPECT_TRUE(refused([&] { db.sync(); }));
      EXPECT_TRUE(refused([&] { db.close(); }));
      if (wal) {
        EXPECT_TRUE(refused([&] { (void)db.last_lsn(); }));
        EXPECT_TRUE(refused([&] { (void)db.wal_stats(); }));
        EXPECT_TRUE(refused([&] { (void)db.failure(); }));
        EXPECT_TRUE(refused([&] { (void)db.auto_checkpoint_failure(); }));
      } else {
        EXPECT_EQ(db.last_lsn(), lsn);  // no lock behind these without the WAL
        EXPECT_FALSE(db.failure());
      }
      EXPECT_EQ(db.read([](const FlatIndex& again) { return again.size(); }), 1U);  // nested
      return index.size();
    });
    EXPECT_EQ(seen, 1U);
    EXPECT_EQ(db.last_lsn(), lsn);
    EXPECT_TRUE(test::read_file(dir / "db.iqdb") == snapshot);
    if (wal) {
      EXPECT_EQ(db.wal_stats().commits, 1U);  // the refused mutations were not logged
    }
    db.insert(2, vec_of(2));
    db.close();
    const auto loaded = PersistedIndex<FlatIndex>::load(cfg);
    EXPECT_EQ(loaded.index().size(), wal ? 2U : 1U);  // without the WAL, insert 2 was never saved
    EXPECT_FALSE(loaded.index().contains(3));
  });
}

// A batch applied in part is reported Poisoned, and the index then refuses
// mutations and saves (a save would persist half a batch; with the WAL the
// engine is poisoned, and the batch's record cut off the log): the files
// keep the state before the batch. Whatever the index threw: an int (an
// index type of a program's may throw anything) used to leave the index
// half-changed and writable, and with the WAL an erase of an id of the
// half-applied batch was then logged, and the log no longer loaded.
void batch_applied_in_part(bool wal, bool throw_int) {
  test::TempDir dir;
  PersistConfig cfg(dir / "db.iqdb");
  if (wal) cfg = wal_config(dir / "db.iqdb", FsyncPolicy::always());
  auto db = PersistedIndex<test::FailOnce>::open_with(test::FailOnce(FlatIndex(4, DistanceMetric::Euclidean)), cfg);
  db.insert(1, vec_of(1));
  db.save();
  const std::vector<std::byte> saved = test::read_file(cfg.path);
  EXPECT_FALSE(db.failure().has_value());
  WriteBatch b;
  for (std::uint64_t id = 2; id <= 4; ++id) b.insert(id, vec_of(id));
  test::FailOnce::fail_id = 3;
  test::FailOnce::throw_int = throw_int;
  const auto kind_of = [](auto&& call) -> std::optional<ErrorKind> {
    try {
      call();
    } catch (const PersistError& e) {
      return e.kind();
    }
    return std::nullopt;
  };
  EXPECT_EQ(kind_of([&] { db.write(b); }), ErrorKind::Poisoned);
  test::FailOnce::throw_int = false;
  EXPECT_EQ(test::FailOnce::fail_id, 0U);  // the failure was injected
  ASSERT_TRUE(db.failure().has_value());
  EXPECT_NE(db.failure()->find("applied only in part"), std::string::npos) << *db.failure();
  if (throw_int) {
    EXPECT_NE(db.failure()->find("not a std::exception"), std::string::npos) << *db.failure();
  }
  EXPECT_EQ(kind_of([&] { db.erase(2); }), ErrorKind::Poisoned);  // 2 is in the index, not in the files
  EXPECT_EQ(kind_of([&] { db.insert(5, vec_of(5)); }), ErrorKind::Poisoned);
  EXPECT_EQ(kind_of([&] { db.save(); }), ErrorKind::Poisoned);
  EXPECT_TRUE(test::read_file(cfg.path) == saved);
  db.close();
  const auto again = PersistedIndex<test::FailOnce>::load(cfg);
  EXPECT_EQ(again.index().size(), 1U);
  EXPECT_TRUE(again.index().contains(1));
  EXPECT_FALSE(again.failure().has_value());
}

TEST(NoWal, ABatchAppliedInPartRefusesWritesAndSaves) { batch_applied_in_part(false, false); }
TEST(NoWal, ABatchAppliedInPartByANonStandardExceptionRefusesWritesAndSaves) { batch_applied_in_part(false, true); }
TEST(WalBasic, ABatchAppliedInPartRefusesWritesAndSaves) { batch_applied_in_part(true, false); }
TEST(WalBasic, ABatchAppliedInPartByANonStandardExceptionRefusesWritesAndSaves) { batch_applied_in_part(true, true); }

// sync() makes what was logged before it durable and returns, also while
// other threads go on writing under Periodic (nobody waits for those
// appends: it used to chase them, returning only once they stopped).
TEST(WalBasic, SyncReturnsWhileWritesGoOn) {
  test::TempDir dir;
  const auto cfg = wal_config(dir / "db.iqdb", FsyncPolicy::periodic(std::chrono::hours(1)));
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
  std::atomic<bool> stop{false}, writer_done{false};
  std::atomic<std::uint64_t> written{0};
  std::thread writer([&] {
    // Bounded, so that a sync() that chases the appends ends too (and fails).
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (std::uint64_t id = 1; !stop.load() && std::chrono::steady_clock::now() < give_up; ++id) {
      db.insert(id, vec_of(id));
      written.store(id);
    }
    writer_done.store(true);
  });
  while (written.load() < 1000) std::this_thread::yield();
  const std::uint64_t syncs = db.wal_stats().log_syncs;
  db.sync();
  const bool writer_ran_on = !writer_done.load();
  stop.store(true);
  writer.join();
  EXPECT_TRUE(writer_ran_on) << "sync() returned only once the writer stopped";
  EXPECT_GT(db.wal_stats().log_syncs, syncs);
}

// A periodic interval too long for the clock (now + interval overflows)
// must not make the flusher spin, syncing at once: it waits (a day at most).
TEST(WalBasic, PeriodicWithAHugeIntervalWaits) {
  test::TempDir dir;
  const auto cfg = wal_config(dir / "db.iqdb", FsyncPolicy::periodic(std::chrono::milliseconds::max()));
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
  db.insert(1, vec_of(1));
  const std::uint64_t syncs = db.wal_stats().log_syncs;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(db.wal_stats().log_syncs, syncs);  // a spinning flusher syncs the insert at once
  db.sync();
  EXPECT_EQ(db.wal_stats().log_syncs, syncs + 1);
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
