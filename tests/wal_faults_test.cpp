// The fsync policies as seen at the file-system seam, and what happens when
// the disk fails: fsync errors poison the log (fsyncgate), a full disk or a
// short write on the log or on a checkpoint's snapshot leaves the index and
// the files consistent, and a second process is locked out.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <future>
#include <iqdb/persist.hpp>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "support/fault_fs.hpp"
#include "support/sync_gate.hpp"
#include "support/test_util.hpp"
#include "support/wal_test_util.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;
// FaultFs (support/fault_fs.hpp); the model Entry / Model / diff and
// wal_config (support/wal_test_util.hpp).
using namespace test;

std::vector<float> vec_of(std::uint64_t i) {
  return {static_cast<float>(i), 2.0f * static_cast<float>(i), 0.5f, -1.0f};
}

std::optional<Metadata> meta_of(std::uint64_t i) {
  if (i % 2 == 0) return std::nullopt;
  return Metadata{{"i", Value(static_cast<std::int64_t>(i))}};
}

// Encoded size of the frame of one insert of vec_of(i), meta_of(i) with a
// u64 id (from the log grammar): frame header 8, LSN + count 12, op 1, id 9,
// vec_len 4, floats 16, has_meta 1, and for {"i": Int} 4 + (4 + 1) + (1 + 8).
std::uint64_t frame_size(std::uint64_t i) { return 8 + 20 + 1 + 9 + 4 + 16 + 1 + (meta_of(i) ? 4 + 5 + 9 : 0); }

constexpr std::uint64_t kLogHeader = 40;

void put(PersistedIndex<FlatIndex>& db, Model& model, std::uint64_t i) {
  db.insert(i, vec_of(i), meta_of(i));
  model[VectorId(i)] = Entry{vec_of(i), meta_of(i)};
}

bool contains(const PersistedIndex<FlatIndex>& db, std::uint64_t id) {
  return db.read([&](const FlatIndex& index) { return index.contains(id); });
}

std::size_t count_on(const std::vector<FsOp>& ops, OpKind kind, const fs::path& path) {
  std::size_t n = 0;
  for (const FsOp& op : ops) n += op.kind == kind && op.path == path ? 1 : 0;
  return n;
}

// Reopen with the real file system: the recovered index is `model`, or
// `alt` (the state had a write whose failure was reported reached the log:
// its outcome is unknown to the caller, so either is correct).
void expect_recovers(const PersistConfig& cfg, const Model& model, const std::optional<Model>& alt = {}) {
  PersistConfig real = cfg;
  real.file_system = nullptr;
  auto db = PersistedIndex<FlatIndex>::load(real);
  const std::string as_model = diff(db.index(), model);
  if (alt && !as_model.empty()) {
    EXPECT_EQ(diff(db.index(), *alt), "") << "nor the acknowledged state: " << as_model;
  } else {
    EXPECT_EQ(as_model, "");
  }
}

Model with(Model m, std::uint64_t id) {
  m[VectorId(id)] = Entry{vec_of(id), meta_of(id)};
  return m;
}

// A writer still waiting after 20 s waits for ever, and so would its
// future's destructor: report it and end the test process.
template <typename T>
void must_return(std::future<T>& f, const char* who) {
  if (f.wait_for(std::chrono::seconds(20)) == std::future_status::ready) return;
  std::fprintf(stderr, "FAILED: %s still waits after 20 s\n", who);
  std::fflush(nullptr);
  std::_Exit(1);
}

// ---------------------------------------------------------------- policies at the seam

TEST(WalFsyncPolicy, PeriodicSyncsTheLogWithoutFurtherCalls) {
  test::TempDir dir;
  FaultFs ffs;
  const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::periodic(std::chrono::milliseconds(50)), &ffs);
  const fs::path log = wal::log_path_for(cfg.path);
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
  ffs.clear();
  db.insert(1, vec_of(1));
  // No further calls: the background flusher must sync the log. Poll with a
  // generous bound (this observes the mechanism, not its speed).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  std::vector<FsOp> ops;
  while (std::chrono::steady_clock::now() < deadline) {
    ops = ffs.log();
    if (count_on(ops, OpKind::DataSync, log) > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_GE(count_on(ops, OpKind::DataSync, log), 1u) << "no fdatasync of the log within 30 s";
  // The sync came after the frame's write.
  std::size_t write_at = ops.size(), sync_at = ops.size();
  for (std::size_t i = 0; i < ops.size(); ++i) {
    if (ops[i].path != log) continue;
    if (ops[i].kind == OpKind::WriteAt && write_at == ops.size()) write_at = i;
    if (ops[i].kind == OpKind::DataSync && sync_at == ops.size()) sync_at = i;
  }
  EXPECT_LT(write_at, sync_at);
}

TEST(WalFsyncPolicy, NeverSyncsNothing) {
  test::TempDir dir;
  FaultFs ffs;
  const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::never(), &ffs);
  Model model;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    ffs.clear();
    for (std::uint64_t i = 1; i <= 50; ++i) put(db, model, i);
    db.erase(7);
    model.erase(VectorId(7));
    WriteBatch b;
    b.insert(100, vec_of(100)).erase(8);
    db.write(b);
    model[VectorId(100)] = Entry{vec_of(100), std::nullopt};
    model.erase(VectorId(8));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_EQ(ffs.count(OpKind::DataSync), 0u);
    EXPECT_EQ(ffs.count(OpKind::Sync), 0u);
    db.close();
    EXPECT_EQ(ffs.count(OpKind::DataSync), 0u);
    EXPECT_EQ(ffs.count(OpKind::Sync), 0u);
    EXPECT_EQ(ffs.count(OpKind::WriteAt) + ffs.count(OpKind::Append), 52u);  // one write per frame
  }
  expect_recovers(cfg, model);  // a process crash loses nothing: the OS has it
}

TEST(WalFsyncPolicy, AlwaysSyncsEachMutationBeforeItReturns) {
  test::TempDir dir;
  FaultFs ffs;
  const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::always(), &ffs);
  const fs::path log = wal::log_path_for(cfg.path);
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
  std::uint64_t end = kLogHeader;
  const auto check = [&](std::uint64_t frame_len, const char* what) {
    SCOPED_TRACE(what);
    const std::vector<FsOp> ops = ffs.log();  // everything recorded before the call returned
    std::optional<std::size_t> write, sync;
    std::size_t writes = 0;
    for (std::size_t k = 0; k < ops.size(); ++k) {
      if (ops[k].path != log) continue;
      if (ops[k].kind == OpKind::WriteAt || ops[k].kind == OpKind::Append) {
        ++writes;
        if (ops[k].offset == end && ops[k].length == frame_len) write = k;
      }
      if (ops[k].kind == OpKind::DataSync && write && !sync) sync = k;
    }
    EXPECT_EQ(writes, 1u);
    ASSERT_TRUE(write.has_value()) << "no write of " << frame_len << " bytes at " << end;
    ASSERT_TRUE(sync.has_value()) << "no fdatasync of the log after the frame's write";
    end += frame_len;
  };
  for (std::uint64_t i = 1; i <= 5; ++i) {
    ffs.clear();
    db.insert(i, vec_of(i), meta_of(i));
    check(frame_size(i), "insert");
  }
  ffs.clear();
  db.erase(3);
  check(8 + 20 + 1 + 9, "erase");
  ffs.clear();
  WriteBatch b;
  b.insert(10, vec_of(10)).insert(12, vec_of(12)).erase(10);
  db.write(b);
  check(8 + 20 + 2 * (frame_size(10) - 28) + (1 + 9), "batch: one frame, one sync");
}

// ---------------------------------------------------------------- fsyncgate

TEST(WalFaults, FailedLogFsyncPoisonsTheIndex) {
  test::TempDir dir;
  FaultFs ffs;
  const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::always(), &ffs);
  Model model;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    for (std::uint64_t i = 1; i <= 3; ++i) put(db, model, i);
    ffs.arm(Fault::fail(OpMatch{OpKind::DataSync, "db.iqdb.wal"}, 1, EIO));
    try {
      db.insert(4, vec_of(4), meta_of(4));
      FAIL() << "the insert whose fsync failed returned";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Io) << e.what();
      EXPECT_EQ(e.sys_errno(), EIO);
    }
    EXPECT_EQ(ffs.fired(), 1u);
    EXPECT_FALSE(contains(db, 4));
    EXPECT_EQ(diff(db.index(), model), "");
    // The kernel may have dropped the pages a retried fsync would call
    // clean: no later write may be acknowledged.
    EXPECT_EQ(error_of([&] { db.insert(5, vec_of(5)); }), ErrorKind::Poisoned);
    EXPECT_EQ(error_of([&] { db.erase(1); }), ErrorKind::Poisoned);
    WriteBatch b;
    b.insert(6, vec_of(6));
    EXPECT_EQ(error_of([&] { db.write(b); }), ErrorKind::Poisoned);
    EXPECT_EQ(error_of([&] { db.sync(); }), ErrorKind::Poisoned);
    EXPECT_EQ(error_of([&] { db.checkpoint(); }), ErrorKind::Poisoned);
    EXPECT_FALSE(contains(db, 5));
    EXPECT_TRUE(contains(db, 1));
  }
  expect_recovers(cfg, model, with(model, 4));
}

TEST(WalFaults, FailedPeriodicFsyncPoisonsTheNextWrite) {
  test::TempDir dir;
  FaultFs ffs;
  const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::periodic(std::chrono::milliseconds(5)), &ffs);
  Model model;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    put(db, model, 1);
    db.sync();
    ffs.arm(Fault::fail(OpMatch{OpKind::DataSync, "db.iqdb.wal"}, 1, EIO));
    EXPECT_EQ(db.failure(), std::nullopt);
    db.insert(2, vec_of(2), meta_of(2));  // acknowledged before the flusher's sync
    // The fault fires inside the flusher's fdatasync; the engine learns of it
    // when that call returns. Wait for that (a write in between is still
    // accepted: it races the failure, not follows it).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!db.failure() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    ASSERT_EQ(ffs.fired(), 1u) << "the flusher never synced";
    ASSERT_TRUE(db.failure().has_value()) << "the failed flusher sync did not poison the log";
    EXPECT_NE(db.failure()->find("Input/output error"), std::string::npos) << *db.failure();
    EXPECT_EQ(error_of([&] { db.insert(3, vec_of(3)); }), ErrorKind::Poisoned);
    EXPECT_EQ(error_of([&] { db.sync(); }), ErrorKind::Poisoned);
  }
  expect_recovers(cfg, model, with(model, 2));
}

// A checkpoint on a disk without room for a new log's first step of zero
// padding (1 MiB) starts a log of its header alone, which grows as any log
// does. It used to fail after its snapshot was published, which refused
// every later write (Poisoned) until a reopen, though the frames had room.
// A used-up quota (EDQUOT) likewise: only ENOSPC was taken for no room here
// until an outside hunt found it (the log's growth ahead took both).
TEST(WalFaults, ACheckpointWithoutRoomForTheNewLogsPaddingGoesOn) {
  for (const int no_room : {ENOSPC, EDQUOT})
  for (const FsyncPolicy policy : {FsyncPolicy::always(), FsyncPolicy::never()}) {
    SCOPED_TRACE(std::string(no_room == ENOSPC ? "ENOSPC, " : "EDQUOT, ") +
                 (policy.mode() == FsyncPolicy::Mode::Always ? "always" : "never"));
    test::TempDir dir;
    FaultFs ffs;
    const PersistConfig cfg = wal_config(dir / "db.iqdb", policy, &ffs);
    Model model;
    {
      auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
      for (std::uint64_t i = 1; i <= 50; ++i) put(db, model, i);
      ffs.limit_size(".db.iqdb.wal.tmp-", 200, no_room);  // the header fits, the padding does not
      const FileHeader h = db.checkpoint();
      EXPECT_EQ(h.last_lsn, 50u);
      EXPECT_GE(ffs.fired(), 1u) << "the padding was never refused";
      EXPECT_EQ(db.failure(), std::nullopt);
      ffs.disarm();
      for (std::uint64_t i = 51; i <= 100; ++i) put(db, model, i);
      db.sync();
      db.close();
    }
    expect_recovers(cfg, model);
  }
}

// sync() whose own fdatasync fails throws that failure (Io, its errno), as
// a commit's does, and poisons the log: the next call throws Poisoned. It
// used to throw Poisoned ("failed earlier") at once, the Io error dropped.
TEST(WalFaults, ASyncWhoseOwnFdatasyncFailsThrowsItsIoError) {
  for (const FsyncPolicy policy : {FsyncPolicy::never(), FsyncPolicy::periodic(std::chrono::hours(1))}) {
    SCOPED_TRACE(policy.mode() == FsyncPolicy::Mode::Never ? "never" : "periodic");
    test::TempDir dir;
    FaultFs ffs;
    const PersistConfig cfg = wal_config(dir / "db.iqdb", policy, &ffs);
    Model model;
    {
      auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
      put(db, model, 1);
      ffs.arm(Fault::fail(OpMatch{OpKind::DataSync, "db.iqdb.wal"}, 1, EIO));
      try {
        db.sync();
        ADD_FAILURE() << "the sync succeeded";
      } catch (const PersistError& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Io) << e.what();
        EXPECT_EQ(e.sys_errno(), EIO) << e.what();
      }
      EXPECT_EQ(ffs.fired(), 1u);
      ASSERT_TRUE(db.failure().has_value());
      EXPECT_EQ(error_of([&] { db.sync(); }), ErrorKind::Poisoned);
      EXPECT_EQ(error_of([&] { db.insert(3, vec_of(3)); }), ErrorKind::Poisoned);
    }
    // The insert was acknowledged before the sync (Never / Periodic): kept.
    expect_recovers(cfg, model, model);
  }
}

// Under Always a commit's fdatasync fails (the disk is dying: its data may
// have reached the disk all the same), and cutting its frame off the log
// fails too: the frame stays, and its insert, reported as failed, comes
// back on recovery. The error and failure() say so (they used to say
// nothing, as if the documented "does not reappear" held). When the cut
// succeeds, they do not, and the insert does not come back. The same for an
// append that writes half its frame before failing. Anything but a
// PersistError is thrown as it was; failure() says so.
TEST(WalFaults, AFailureWhoseCutFailsSaysTheRecordsMayReappear) {
  const std::string kNote = "the failed records could not be cut off the log and may reappear on recovery";
  for (const bool append : {false, true}) {
    for (const bool cut_fails : {false, true}) {
      SCOPED_TRACE(std::string(append ? "append" : "fdatasync") + (cut_fails ? " and cut fail" : " fails"));
      test::TempDir dir;
      FaultFs ffs;
      const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::always(), &ffs);
      Model model;
      {
        auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
        for (std::uint64_t i = 1; i <= 3; ++i) put(db, model, i);
        ffs.arm(append ? Fault::short_write_then({OpKind::WriteAt, "db.iqdb.wal"}, 1, 30, EIO)
                       : Fault::fail({OpKind::DataSync, "db.iqdb.wal"}, 1, EIO));
        if (cut_fails) ffs.arm(Fault::fail({OpKind::Truncate, "db.iqdb.wal"}, 1, EIO));
        try {
          db.insert(4, vec_of(4), meta_of(4));
          FAIL() << "the failed insert returned";
        } catch (const PersistError& e) {
          EXPECT_EQ(e.kind(), ErrorKind::Io) << e.what();
          EXPECT_EQ(e.sys_errno(), EIO);
          EXPECT_EQ(e.path(), dir / "db.iqdb.wal");
          EXPECT_EQ(std::string(e.what()).find(kNote) != std::string::npos, cut_fails) << e.what();
        }
        EXPECT_EQ(ffs.fired(), cut_fails ? 2u : 1u);
        ASSERT_TRUE(db.failure().has_value());
        EXPECT_EQ(db.failure()->find(kNote) != std::string::npos, cut_fails) << *db.failure();
        EXPECT_EQ(error_of([&] { db.insert(5, vec_of(5)); }), ErrorKind::Poisoned);
        EXPECT_EQ(diff(db.index(), model), "");
      }
      if (!cut_fails) {
        expect_recovers(cfg, model);  // the guarantee
      } else if (!append) {
        expect_recovers(cfg, with(model, 4));  // what the note warns of: the whole frame stayed
      } else {
        expect_recovers(cfg, model);  // (a torn frame: dropped)
      }
    }
  }
  // A sync and a cut that throw something else.
  test::TempDir dir;
  FaultFs ffs;
  ffs.on_injected([](const FsOp&) { throw 42; });
  const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::always(), &ffs);
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
  Model model;
  put(db, model, 1);
  ffs.arm(Fault::fail({OpKind::DataSync, "db.iqdb.wal"}, 1, EIO));
  ffs.arm(Fault::fail({OpKind::Truncate, "db.iqdb.wal"}, 1, EIO));
  try {
    db.insert(4, vec_of(4), meta_of(4));
    FAIL() << "the failed insert returned";
  } catch (int thrown) {
    EXPECT_EQ(thrown, 42);
  }
  ASSERT_TRUE(db.failure().has_value());
  EXPECT_NE(db.failure()->find("not a std::exception"), std::string::npos) << *db.failure();
  EXPECT_NE(db.failure()->find(kNote), std::string::npos) << *db.failure();
}

// A FileSystem of the program's may throw anything, not only
// std::exception. A sync that throws something else fails like any failed
// sync: the caller gets the exception, the record is cut off the log (it
// used to stay there and come back at recovery, though its insert had
// failed; the leader's seat stayed taken), the index is poisoned, and the
// next writer is refused. Under Periodic the exception is the flusher
// thread's, where it used to end the process (std::terminate).
TEST(WalFaults, ASyncThatThrowsANonStandardExceptionPoisonsTheIndex) {
  test::TempDir dir;
  FaultFs ffs;
  ffs.on_injected([](const FsOp&) { throw 42; });
  const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::always(), &ffs);
  Model model;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    for (std::uint64_t i = 1; i <= 3; ++i) put(db, model, i);
    ffs.arm(Fault::fail(OpMatch{OpKind::DataSync, "db.iqdb.wal"}, 1, EIO));
    try {
      db.insert(4, vec_of(4), meta_of(4));
      FAIL() << "the insert whose sync threw returned";
    } catch (int thrown) {
      EXPECT_EQ(thrown, 42);
    }
    EXPECT_EQ(ffs.fired(), 1u);
    EXPECT_FALSE(contains(db, 4));
    ASSERT_TRUE(db.failure().has_value());
    EXPECT_NE(db.failure()->find("not a std::exception"), std::string::npos) << *db.failure();
    // From another thread, so that a writer left waiting fails the test
    // instead of hanging it.
    auto next = std::async(std::launch::async, [&] { return error_of([&] { db.insert(5, vec_of(5)); }); });
    must_return(next, "the next insert");
    EXPECT_EQ(next.get(), ErrorKind::Poisoned);
    EXPECT_EQ(error_of([&] { db.sync(); }), ErrorKind::Poisoned);
    EXPECT_EQ(diff(db.index(), model), "");
  }
  expect_recovers(cfg, model);
}

TEST(WalFaults, AFlusherSyncThatThrowsANonStandardExceptionPoisonsTheIndex) {
  test::TempDir dir;
  FaultFs ffs;
  ffs.on_injected([](const FsOp&) { throw 42; });
  const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::periodic(std::chrono::milliseconds(5)), &ffs);
  Model model;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    put(db, model, 1);
    db.sync();
    ffs.arm(Fault::fail(OpMatch{OpKind::DataSync, "db.iqdb.wal"}, 1, EIO));
    db.insert(2, vec_of(2), meta_of(2));  // acknowledged before the flusher's sync
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!db.failure() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    ASSERT_EQ(ffs.fired(), 1u) << "the flusher never synced";
    ASSERT_TRUE(db.failure().has_value()) << "the flusher's failed sync did not poison the log";
    EXPECT_NE(db.failure()->find("not a std::exception"), std::string::npos) << *db.failure();
    EXPECT_EQ(error_of([&] { db.insert(3, vec_of(3)); }), ErrorKind::Poisoned);
  }
  expect_recovers(cfg, model, with(model, 2));
}

// ---------------------------------------------------------------- the log append fails

struct AppendFault {
  const char* name;
  Fault fault;
  int err;
  // Part of the frame reaches the file before the error.
  bool partial;
};

void PrintTo(const AppendFault& f, std::ostream* os) { *os << f.name; }

class WalLogAppendFault : public ::testing::TestWithParam<AppendFault> {};

const OpMatch kLogWrite{OpKind::WriteAt, "db.iqdb.wal"};

TEST_P(WalLogAppendFault, TypedErrorIndexUnchangedAcknowledgedWritesRecovered) {
  for (const bool batch : {false, true}) {
    SCOPED_TRACE(batch ? "batch" : "single insert");
    test::TempDir dir;
    FaultFs ffs;
    const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::always(), &ffs);
    Model model;
    {
      auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
      for (std::uint64_t i = 1; i <= 3; ++i) put(db, model, i);
      ffs.arm(GetParam().fault);
      try {
        if (batch) {
          WriteBatch b;
          b.insert(4, vec_of(4), meta_of(4)).insert(5, vec_of(5)).erase(1);
          db.write(b);
        } else {
          db.insert(4, vec_of(4), meta_of(4));
        }
        FAIL() << "the failed append returned";
      } catch (const PersistError& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Io) << e.what();
        EXPECT_EQ(e.sys_errno(), GetParam().err) << e.what();
      }
      EXPECT_EQ(ffs.fired(), 1u);
      EXPECT_EQ(diff(db.index(), model), "");  // nothing of it applied
      EXPECT_EQ(error_of([&] { db.insert(9, vec_of(9)); }), ErrorKind::Poisoned);
      EXPECT_EQ(diff(db.index(), model), "");
    }
    // Nothing written: exactly the acknowledged state. A short write leaves
    // a prefix of the frame in the file, and the engine poisons the log but
    // does not cut that prefix off: when the bytes that did not land are
    // zeros anyway (the last byte of an insert without metadata is its
    // has_meta = 0, over zero preallocation), the frame is complete and
    // passes its CRC, so the mutation reported as failed comes back after
    // a restart. Its outcome is unknown to the caller, so we accept either,
    // all or nothing for a batch (see the report).
    std::optional<Model> alt;
    if (GetParam().partial) {
      alt = model;
      if (batch) {
        (*alt)[VectorId(4)] = Entry{vec_of(4), meta_of(4)};
        (*alt)[VectorId(5)] = Entry{vec_of(5), std::nullopt};
        alt->erase(VectorId(1));
      } else {
        alt = with(model, 4);
      }
    }
    expect_recovers(cfg, model, alt);
    // And the recovered log takes new writes.
    PersistConfig real = cfg;
    real.file_system = nullptr;
    {
      auto db = PersistedIndex<FlatIndex>::load(real);
      put(db, model, 20);
      if (alt) alt = with(*alt, 20);
      db.close();
    }
    expect_recovers(real, model, alt);
  }
}

Fault sticky(Fault f) {
  f.sticky = true;
  return f;
}

INSTANTIATE_TEST_SUITE_P(
    Kind, WalLogAppendFault,
    ::testing::Values(AppendFault{"DiskFullNothingWritten", Fault::fail(kLogWrite, 1, ENOSPC), ENOSPC, false},
                      AppendFault{"ShortWriteHalf", Fault::short_write_then(kLogWrite, 1), ENOSPC, true},
                      AppendFault{"ShortWriteFrameHeaderOnly", Fault::short_write_then(kLogWrite, 1, 8), ENOSPC, true},
                      // All but the last byte of the single insert's 51-byte frame.
                      AppendFault{"ShortWriteAllButOneByte", Fault::short_write_then(kLogWrite, 1, 50), ENOSPC, true},
                      AppendFault{"IoErrorStaysBroken", sticky(Fault::fail(kLogWrite, 1, EIO)), EIO, false}),
    [](const ::testing::TestParamInfo<AppendFault>& i) { return std::string(i.param.name); });

// ---------------------------------------------------------------- no room ahead of the log

// The log's file system has room for `kRoom` bytes of each log: the zeros
// the writer grows ahead of its frames (written under Always, allocated
// under Periodic and Never: through FaultFs both are writes) find no room
// long before the frames do. That stops the growth ahead; it fails no
// commit (each used to fail once the growth had found no room, with "growing
// the log ahead (write) failed", the disk half free). Every batch whose frame
// fits commits; a checkpoint's new log grows ahead again; the first batch
// whose own frame does not fit fails, typed, and poisons the index; recovery
// gives exactly the acknowledged batches.
struct NoRoomCase {
  const char* name;
  FsyncPolicy policy;
  int err;
};

void PrintTo(const NoRoomCase& c, std::ostream* os) { *os << c.name; }

class WalNoRoomAhead : public ::testing::TestWithParam<NoRoomCase> {};

TEST_P(WalNoRoomAhead, CommitsGoOnUntilTheirOwnFramesFindNoRoom) {
  constexpr std::uint64_t kRoom = (std::uint64_t{3} << 20) + 12345;
  test::TempDir dir;
  FaultFs ffs;
  ffs.limit_size("db.iqdb.wal", kRoom, GetParam().err);
  const PersistConfig cfg = wal_config(dir / "db.iqdb", GetParam().policy, &ffs);
  const fs::path log = dir / "db.iqdb.wal";
  Model model;
  std::uint64_t next = 1;
  // A batch of 200 inserts (a frame of 8 KB); a pause after every
  // fourth, in which the log's thread grows it ahead.
  std::size_t commits = 0;
  const auto commit = [&](PersistedIndex<FlatIndex>& db) {
    WriteBatch b;
    for (std::uint64_t k = 0; k < 200; ++k) b.insert(next + k, vec_of(next + k), meta_of(next + k));
    db.write(b);
    for (std::uint64_t k = 0; k < 200; ++k, ++next) model[VectorId(next)] = Entry{vec_of(next), meta_of(next)};
    if (++commits % 4 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(3));
  };
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    // Until the growth ahead found no room, then 1 MiB of frames more.
    while (ffs.fired() == 0) {
      ASSERT_NO_THROW(commit(db)) << "commit " << commits << ", before any growth found no room";
      ASSERT_LE(fs::file_size(log), kRoom);
    }
    const std::size_t at_full = commits;
    while (commits < at_full + 130) ASSERT_NO_THROW(commit(db)) << "commit " << commits << ", " << commits - at_full
                                                                 << " after the growth found no room";
    EXPECT_EQ(db.failure(), std::nullopt);

    // A new log grows ahead again: its file reaches 2 MiB while its frames
    // are within the first MiB (a writer grows it itself only past that).
    db.checkpoint();
    const std::size_t at_new = commits;
    while (commits < at_new + 90) ASSERT_NO_THROW(commit(db));  // 720 KB of frames
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (fs::file_size(log) < (std::uint64_t{2} << 20) && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    EXPECT_GE(fs::file_size(log), std::uint64_t{2} << 20) << "the new log was not grown ahead";

    // Up to the room: then the batch whose frame does not fit fails.
    std::optional<PersistError> failed;
    while (!failed && commits < at_new + 1000) {
      try {
        commit(db);
      } catch (const PersistError& e) {
        failed = e;
      }
    }
    ASSERT_TRUE(failed.has_value()) << "no commit failed";
    EXPECT_EQ(failed->kind(), ErrorKind::Io) << failed->what();
    EXPECT_EQ(failed->sys_errno(), GetParam().err) << failed->what();
    EXPECT_GE(commits - at_new, 380u) << "commits stopped short of the room";  // 3 MiB of 8 KB frames
    EXPECT_TRUE(db.failure().has_value());
    EXPECT_EQ(error_of([&] { db.insert(next, vec_of(next)); }), ErrorKind::Poisoned);
    EXPECT_EQ(diff(db.index(), model), "");
  }
  expect_recovers(cfg, model);
}

INSTANTIATE_TEST_SUITE_P(
    Policies, WalNoRoomAhead,
    ::testing::Values(NoRoomCase{"AlwaysDiskFull", FsyncPolicy::always(), ENOSPC},
                      NoRoomCase{"AlwaysQuota", FsyncPolicy::always(), EDQUOT},
                      NoRoomCase{"PeriodicDiskFull", FsyncPolicy::periodic(std::chrono::milliseconds(5)), ENOSPC},
                      NoRoomCase{"NeverDiskFull", FsyncPolicy::never(), ENOSPC}),
    [](const ::testing::TestParamInfo<NoRoomCase>& i) { return std::string(i.param.name); });

// ---------------------------------------------------------------- the checkpoint's snapshot fails

struct SnapshotFault {
  const char* name;
  Fault fault;
  // The failure strikes before the new snapshot replaces the old one.
  bool before_rename;
};

void PrintTo(const SnapshotFault& f, std::ostream* os) { *os << f.name; }

class WalCheckpointSnapshotFault : public ::testing::TestWithParam<SnapshotFault> {};

TEST_P(WalCheckpointSnapshotFault, OldFilesRemainAndEverythingAcknowledgedRecovers) {
  test::TempDir dir;
  FaultFs ffs;
  const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::always(), &ffs);
  const fs::path log = wal::log_path_for(cfg.path);
  Model model;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    for (std::uint64_t i = 1; i <= 5; ++i) put(db, model, i);
    const std::vector<std::byte> snapshot_before = test::read_file(cfg.path);
    const std::vector<std::byte> log_before = test::read_file(log);
    ffs.arm(GetParam().fault);
    try {
      db.checkpoint();
      FAIL() << "the checkpoint returned";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Io) << e.what();
    }
    EXPECT_EQ(ffs.fired(), 1u);
    if (GetParam().before_rename) {
      EXPECT_EQ(test::read_file(cfg.path), snapshot_before);
    }
    EXPECT_EQ(test::read_file(log), log_before);
    EXPECT_EQ(dir.entries(), (std::vector<std::string>{"db.iqdb", "db.iqdb.lock", "db.iqdb.wal"}));
    EXPECT_EQ(diff(db.index(), model), "");
    // Whether the index still takes writes is the engine's call (the log
    // itself is intact); what it acknowledges must survive.
    for (std::uint64_t i = 6; i <= 7; ++i) {
      try {
        put(db, model, i);
      } catch (const PersistError&) {
      }
    }
  }
  expect_recovers(cfg, model);
}

INSTANTIATE_TEST_SUITE_P(
    Where, WalCheckpointSnapshotFault,
    ::testing::Values(
        SnapshotFault{"DiskFullWritingPayload", Fault::short_write_then({OpKind::Append, ".db.iqdb.tmp-"}, 1), true},
        SnapshotFault{"DiskFullWritingHeader", Fault::fail({OpKind::WriteAt, ".db.iqdb.tmp-"}, 1, ENOSPC), true},
        SnapshotFault{"FsyncFails", Fault::fail({OpKind::Sync, ".db.iqdb.tmp-"}, 1, EIO), true},
        SnapshotFault{"RenameFails", Fault::fail({OpKind::Rename, ".db.iqdb.tmp-"}, 1, ENOSPC), true},
        SnapshotFault{"DirectorySyncFails", Fault::fail({OpKind::SyncDir, ""}, 1, EIO), false}),
    [](const ::testing::TestParamInfo<SnapshotFault>& i) { return std::string(i.param.name); });

// A checkpoint whose snapshot publish gets no answer (ETIMEDOUT, as a
// RADOS operation past op_timeout) may still take effect: the new snapshot,
// whose log was never started, could become the current one, and a record
// appended to the old log afterwards would then be lost on reload. The index
// refuses writes until a reopen tells which snapshot is current; a failure
// known as such (RenameFails above) does not.
TEST(WalFaults, ACheckpointWhosePublishHadNoAnswerRefusesWrites) {
  test::TempDir dir;
  FaultFs ffs;
  const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::always(), &ffs);
  Model model;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    for (std::uint64_t i = 1; i <= 5; ++i) put(db, model, i);
    ffs.arm(Fault::fail({OpKind::Rename, ".db.iqdb.tmp-"}, 1, ETIMEDOUT));
    EXPECT_EQ(error_of([&] { db.checkpoint(); }), ErrorKind::Io);
    EXPECT_EQ(ffs.fired(), 1u);
    EXPECT_TRUE(db.failure().has_value());
    EXPECT_EQ(error_of([&] { db.insert(6, vec_of(6)); }), ErrorKind::Poisoned);
    EXPECT_EQ(diff(db.index(), model), "");
  }
  expect_recovers(cfg, model);
}

// The new log of a checkpoint has replaced the old one (the rename is
// done) when opening it fails with something that is not a PersistError:
// the engine used to go on appending to the old, unlinked log, and the
// inserts it acknowledged were lost at the next load. Poisoned now, as for
// a PersistError there.
TEST(WalFaults, ACheckpointWhoseNewLogFailsToOpenWithAnyExceptionRefusesWrites) {
  for (const bool int_thrown : {false, true}) {
    SCOPED_TRACE(int_thrown ? "an int" : "a std::runtime_error");
    test::TempDir dir;
    FaultFs ffs;
    ffs.on_injected([int_thrown](const FsOp&) {
      if (int_thrown) throw 42;
      throw std::runtime_error("a program's file system failed");
    });
    const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::always(), &ffs);
    Model model;
    {
      auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
      for (std::uint64_t i = 1; i <= 5; ++i) put(db, model, i);
      // replace_file_atomically creates the new log as a temporary file and
      // renames it in; the first open_append of the log is the one after.
      ffs.arm(Fault::fail({OpKind::OpenAppend, "db.iqdb.wal"}, 1, EIO));
      bool failed = false;
      try {
        db.checkpoint();
      } catch (...) {
        failed = true;
      }
      EXPECT_TRUE(failed);
      EXPECT_EQ(ffs.fired(), 1u);
      ASSERT_TRUE(db.failure().has_value());
      EXPECT_EQ(error_of([&] { db.insert(6, vec_of(6)); }), ErrorKind::Poisoned);
      EXPECT_EQ(diff(db.index(), model), "");
    }
    expect_recovers(cfg, model);
  }
}

// A log append that writes the frame and then throws something that is
// not a PersistError: the frame is cut off and the engine poisoned, as for
// a PersistError (it used to stay in the log, unpoisoned, and the failed
// insert came back at the next load).
TEST(WalFaults, AnAppendThatThrowsANonStandardExceptionIsCutOff) {
  test::TempDir dir;
  FaultFs ffs;
  ffs.on_injected([](const FsOp&) { throw std::runtime_error("a program's file system failed"); });
  const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::always(), &ffs);
  Model model;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    for (std::uint64_t i = 1; i <= 3; ++i) put(db, model, i);
    // The whole frame reaches the file, then the hook throws.
    ffs.arm(Fault::short_write_then(kLogWrite, 1, std::numeric_limits<std::size_t>::max()));
    EXPECT_THROW(db.insert(4, vec_of(4), meta_of(4)), std::runtime_error);
    EXPECT_EQ(ffs.fired(), 1u);
    ASSERT_TRUE(db.failure().has_value());
    EXPECT_NE(db.failure()->find("a program's file system failed"), std::string::npos) << *db.failure();
    EXPECT_EQ(error_of([&] { db.insert(5, vec_of(5)); }), ErrorKind::Poisoned);
    EXPECT_EQ(diff(db.index(), model), "");
  }
  expect_recovers(cfg, model);
}

// Under Always a group's second commit cannot be applied, and cutting its
// record off the log fails with something that is not a PersistError: the
// engine is poisoned and every waiting writer returns (the exception used
// to leave the leader's sync with its seat taken: the refused writer and
// every later one waited for ever). What the log then holds decides at
// the next load (the refused insert may be there: the cut failed).
TEST(WalFaults, ARollbackWhoseCutThrowsANonStandardExceptionLeavesNoWriterWaiting) {
  test::TempDir dir;
  FaultFs ffs;
  ffs.on_injected([](const FsOp&) { throw std::runtime_error("a program's file system failed"); });
  test::SyncGateFs gate(ffs);
  const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::always(), &gate);
  Model model;
  {
    auto db = PersistedIndex<test::FailOnce>::open_with(test::FailOnce(FlatIndex(4, DistanceMetric::Euclidean)), cfg);
    db.insert(100, vec_of(100));
    model[VectorId(100)] = Entry{vec_of(100), std::nullopt};
    const auto logged = [&](std::uint64_t lsn) {
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      while (db.last_lsn() < lsn && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      return db.last_lsn() >= lsn;
    };
    // A leads, its sync held; B and C queue behind it: one group, whose
    // second commit (C, id 13) the index refuses.
    gate.close();
    auto a = std::async(std::launch::async, [&] { db.insert(1, vec_of(1)); });
    EXPECT_TRUE(gate.wait_for_a_waiter(std::chrono::seconds(20)));
    auto b = std::async(std::launch::async, [&] { db.insert(2, vec_of(2)); });
    EXPECT_TRUE(logged(3));
    test::FailOnce::fail_id = 13;
    auto c = std::async(std::launch::async, [&] { db.insert(13, vec_of(13)); });
    EXPECT_TRUE(logged(4));
    ffs.arm(Fault::fail({OpKind::Truncate, "db.iqdb.wal"}, 1, EIO));
    gate.open();  // (EXPECTs above: the gate must open whatever happened)
    must_return(a, "A");
    must_return(b, "B");
    must_return(c, "the refused insert");
    EXPECT_NO_THROW(a.get());
    EXPECT_NO_THROW(b.get());
    EXPECT_THROW(c.get(), std::runtime_error);
    EXPECT_EQ(test::FailOnce::fail_id, 0u);  // the failure was injected
    EXPECT_EQ(ffs.fired(), 1u);
    model[VectorId(1)] = Entry{vec_of(1), std::nullopt};
    model[VectorId(2)] = Entry{vec_of(2), std::nullopt};
    ASSERT_TRUE(db.failure().has_value());
    EXPECT_NE(db.failure()->find("a program's file system failed"), std::string::npos) << *db.failure();
    auto later = std::async(std::launch::async, [&] { return error_of([&] { db.insert(5, vec_of(5)); }); });
    must_return(later, "a later insert");
    EXPECT_EQ(later.get(), ErrorKind::Poisoned);
  }
  Model with13 = model;
  with13[VectorId(13)] = Entry{vec_of(13), std::nullopt};
  expect_recovers(cfg, model, with13);  // (FailOnce's snapshots are "flat")
}

// ---------------------------------------------------------------- two processes

TEST(WalFaults, SecondProcessIsLockedOutUntilTheWriterCloses) {
  test::TempDir dir;
  const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::always());
  // Exit codes of the child: 0 = what the test wants, others say what happened.
  enum : int { kLocked = 0, kOtherError = 1, kOpened = 2, kOpenedRight = 0, kOpenedWrong = 3 };
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
  Model model;
  for (std::uint64_t i = 1; i <= 3; ++i) put(db, model, i);

  const int while_open = test::in_child([&] {
    try {
      auto other = PersistedIndex<FlatIndex>::load(cfg);
      return static_cast<int>(kOpened);
    } catch (const PersistError& e) {
      return static_cast<int>(e.kind() == ErrorKind::Locked ? kLocked : kOtherError);
    }
  });
  EXPECT_EQ(while_open, kLocked) << "1 = another error, 2 = the child opened the index";

  db.close();
  const int after_close = test::in_child([&] {
    auto other = PersistedIndex<FlatIndex>::load(cfg);
    return static_cast<int>(diff(other.index(), model).empty() ? kOpenedRight : kOpenedWrong);
  });
  EXPECT_EQ(after_close, kOpenedRight) << "3 = wrong content, 98 = the load threw";
}

// Under Never and Periodic, frames are copied into a mapping of the log's
// preallocated space (FileSystem::map_for_write) rather than written: a
// process that is killed (no close, no destructor) must still leave every
// acknowledged record to the next load, as write() would. Enough records to
// cross several 1 MiB preallocation steps and 4 MiB mapping windows, and
// batches whose frames are larger than what is left of a window.
class WalProcessKill : public ::testing::TestWithParam<FsyncPolicy> {};

TEST_P(WalProcessKill, AKilledProcessLeavesEveryAcknowledgedRecord) {
  test::TempDir dir;
  const PersistConfig cfg = wal_config(dir / "db.iqdb", GetParam());
  constexpr std::uint64_t kSingles = 90'000;
  constexpr std::uint64_t kBatch = 20'000;
  const auto workload = [&](const std::function<void(std::uint64_t)>& insert,
                            const std::function<void(std::uint64_t, std::uint64_t)>& batch) {
    for (std::uint64_t i = 0; i < kSingles; ++i) {
      insert(i);
      if (i % 30'000 == 29'999) batch(1'000'000 + i * 100, kBatch);  // ~1.2 MB frames
    }
  };
  Model model;
  workload([&](std::uint64_t i) { model[VectorId(i)] = Entry{vec_of(i), meta_of(i)}; },
           [&](std::uint64_t first, std::uint64_t n) {
             for (std::uint64_t k = first; k < first + n; ++k) model[VectorId(k)] = Entry{vec_of(k), std::nullopt};
           });
  const int status = test::in_child([&] {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    workload([&](std::uint64_t i) { db.insert(i, vec_of(i), meta_of(i)); },
             [&](std::uint64_t first, std::uint64_t n) {
               WriteBatch b;
               for (std::uint64_t k = first; k < first + n; ++k) b.insert(k, vec_of(k));
               db.write(b);
             });
    ::kill(::getpid(), SIGKILL);
    return 0;
  });
  ASSERT_EQ(status, 128 + SIGKILL) << "98: the child threw";
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(db.index().size(), model.size());
  EXPECT_EQ(diff(db.index(), model), "");
  // And the log goes on from there.
  put(db, model, 5'000'001);
  db.close();
  EXPECT_EQ(diff(PersistedIndex<FlatIndex>::load(cfg).index(), model), "");
}

INSTANTIATE_TEST_SUITE_P(Policies, WalProcessKill,
                         ::testing::Values(FsyncPolicy::never(), FsyncPolicy::periodic(std::chrono::hours(1))),
                         [](const auto& p) { return p.param.mode() == FsyncPolicy::Mode::Never ? "never" : "periodic"; });

// The seam's mapped writes: offered by the POSIX file system for files
// opened to append, never through a WritableFileWrapper (fault injection
// then sees every write), and stores into a mapping are writes to the file.
TEST(WalMappedWrites, StoresIntoAMappingAreWritesToTheFile) {
  test::TempDir dir;
  const fs::path p = dir / "f";
  test::write_file(p, std::vector<std::byte>(3 * 4096, std::byte{0}));
  FileSystem& posix = default_file_system();
  {
    const std::unique_ptr<WritableFile> f = posix.open_append(p);
    EXPECT_EQ(f->map_for_write(100, 4096), nullptr) << "offsets are whole pages";
    const std::unique_ptr<WriteMapping> m = f->map_for_write(4096, 2 * 4096);
    ASSERT_NE(m, nullptr);
    ASSERT_EQ(m->bytes().size(), 2u * 4096);
    m->bytes()[0] = std::byte{0xAB};
    m->bytes()[2 * 4096 - 1] = std::byte{0xCD};
    WritableFileWrapper wrapped(posix.open_append(p));
    EXPECT_EQ(wrapped.map_for_write(0, 4096), nullptr);
  }
  const std::vector<std::byte> bytes = test::read_file(p);
  ASSERT_EQ(bytes.size(), 3u * 4096);
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    const std::byte want = i == 4096 ? std::byte{0xAB} : i == 3 * 4096 - 1 ? std::byte{0xCD} : std::byte{0};
    ASSERT_EQ(bytes[i], want) << "byte " << i;
  }
}

// The space a mapped log grows into (Periodic, Never): allocate_zeros of the
// POSIX file system extends the file with blocks allocated and reading as
// zeros, zeroes what was there before, moves the append position as a write
// would, and takes no page-cache pages (fallocate, not writes of zeros);
// through a WritableFileWrapper it is a write of zeros, which fault
// injection sees. Known bytes: the file's contents against a model.
TEST(WalMappedWrites, AllocateZerosAllocatesWithoutWriting) {
  test::TempDir dir;
  const fs::path p = dir / "f";
  std::vector<std::byte> model(8192, std::byte{0x5A});
  test::write_file(p, model);
  FileSystem& posix = default_file_system();
  constexpr std::uint64_t kGrow = std::uint64_t{8} << 20;
  {
    const std::unique_ptr<WritableFile> f = posix.open_append(p);
    f->allocate_zeros(4096, 100);  // over existing bytes: zeroed
    f->allocate_zeros(8192, kGrow);
    f->append(std::vector<std::byte>(10, std::byte{0x11}));  // at the new end
    f->close();
  }
  std::fill(model.begin() + 4096, model.begin() + 4196, std::byte{0});
  model.resize(8192 + kGrow, std::byte{0});
  model.insert(model.end(), 10, std::byte{0x11});
  EXPECT_TRUE(test::read_file(p) == model);

  if (test::on_tmpfs(p)) GTEST_SKIP() << "tmpfs allocates pages for fallocate";
  struct stat st {};
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_GE(static_cast<std::uint64_t>(st.st_blocks) * 512, 8192 + kGrow) << "the grown space is not allocated";
  // Drop what the test's own writes and reads cached, then grow again: the
  // new range must not come into the page cache.
  const int fd = ::open(p.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  ::close(fd);
  const std::uint64_t at = (8192 + kGrow + 10 + 4095) / 4096 * 4096;
  {
    const std::unique_ptr<WritableFile> f = posix.open_append(p);
    f->allocate_zeros(at, kGrow);
    f->close();
  }
  EXPECT_EQ(test::resident_pages(p, at, kGrow), 0u) << "of " << kGrow / 4096 << " pages: zeros were written";

  // Through a wrapper: writes of zeros, each seen by the wrapped file.
  struct Counting final : WritableFileWrapper {
    using WritableFileWrapper::WritableFileWrapper;
    std::uint64_t zero_bytes = 0;
    void write_at(std::uint64_t o, std::span<const std::byte> d) override {
      if (std::all_of(d.begin(), d.end(), [](std::byte b) { return b == std::byte{0}; })) zero_bytes += d.size();
      WritableFileWrapper::write_at(o, d);
    }
  };
  Counting wrapped(posix.open_append(p));
  wrapped.allocate_zeros(at + kGrow, 3 << 20);
  EXPECT_EQ(wrapped.zero_bytes, 3u << 20);
  wrapped.close();
  EXPECT_EQ(fs::file_size(p), at + kGrow + (3 << 20));
}

}  // namespace
}  // namespace iqdb::persist
