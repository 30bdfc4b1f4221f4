// Issue 13, part 0: the single-writer lock binds every writer, WAL or not,
// and a program without the WAL never loses or hides the writes a log holds.
//
//  - save / checkpoint take "<path>.lock" while they write (Locked while
//    another writer, WAL or not, holds it), in this process or another;
//  - load without the WAL replays, read-only, the log records its snapshot
//    lacks (a torn tail ignored, mid-log corruption a CorruptLog);
//  - save without the WAL refuses (WouldLoseWrites) to replace files that
//    hold acknowledged writes its index lacks, unless discard_log is set,
//    which writes the snapshot so that it covers the whole log and then
//    removes the log (a crash in between loads as the new snapshot).
//
// Every check compares with an independent model: the ids and vectors the
// test was told were acknowledged.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <atomic>
#include <functional>
#include <iqdb/persist.hpp>
#include <thread>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/crash_sim.hpp"
#include "support/fault_fs.hpp"
#include "support/forked_child.hpp"
#include "support/test_util.hpp"
#include "support/wal_test_util.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;
using namespace test;

constexpr std::size_t kDim = 4;

std::vector<float> vec_of(std::uint64_t i) {
  return {static_cast<float>(i), -static_cast<float>(i), 0.25f * static_cast<float>(i), 1.0f};
}

FlatIndex empty_index() { return FlatIndex(kDim, DistanceMetric::Euclidean); }

template <class Db>
void put(Db& db, Model& model, std::uint64_t i) {
  db.insert(i, vec_of(i));
  model[VectorId(i)] = Entry{vec_of(i), std::nullopt};
}

PersistConfig plain(const fs::path& p, FileSystem* file_system = nullptr) {
  PersistConfig cfg(p);
  cfg.file_system = file_system;
  return cfg;
}

// The exit code a child reports for the error a call threw.
int code_of(const std::optional<ErrorKind>& kind) {
  if (!kind) return 0;
  return 10 + static_cast<int>(*kind);
}

// The state the WAL program of the issue leaves: 10 vectors inserted and
// checkpointed, then one more (in the log only) — or, without the
// checkpoint, all 11 in the log.
PersistedIndex<FlatIndex> wal_writer(const PersistConfig& cfg, Model& model, bool checkpoint) {
  auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), cfg);
  for (std::uint64_t i = 1; i <= 10; ++i) put(db, model, i);
  if (checkpoint) db.checkpoint();
  put(db, model, 11);
  return db;
}

// ---------------------------------------------------------------- the issue, one process

TEST(WriterLock, SaveWithoutWalIsLockedOutWhileAWalWriterRunsAfterACheckpoint) {
  TempDir dir;
  const fs::path path = dir / "x.iqdb";
  const PersistConfig wcfg = wal_config(path, FsyncPolicy::always());
  Model model;
  auto writer = wal_writer(wcfg, model, /*checkpoint=*/true);

  auto other = PersistedIndex<FlatIndex>::open_with(empty_index(), plain(path));  // writes nothing
  other.insert(500, vec_of(500));
  EXPECT_EQ(error_of([&] { other.save(); }), ErrorKind::Locked);
  EXPECT_EQ(error_of([&] { other.checkpoint(); }), ErrorKind::Locked);

  writer.close();
  auto again = PersistedIndex<FlatIndex>::load(wcfg);
  EXPECT_EQ(diff(again.index(), model), "");
}

// The lock file removed under a live writer (or its directory moved and
// another made at the old path): a second writer locks a new file at the
// path. Where the first writer's log is still at the path, the second is
// refused (Locked naming the log: the first holds it open), whether it
// loads the index (it used to append to the same log, the two writers'
// frames overwriting each other's, acknowledged inserts of the second lost
// without an error: an outside hunt) or replaces it; the first goes on,
// and every write it acknowledged is there. Where the directory was moved,
// the second writes its own index; the first one's checkpoint, which writes
// by path, would replace it: it checks that its lock file is still the one
// at the path, Fenced, for good, and the second writer's index stays whole.
TEST(WriterLock, AWriterWhoseLockFileWasReplacedIsFencedAtItsCheckpoint) {
  for (const bool move_directory : {false, true}) {
    SCOPED_TRACE(move_directory ? "directory moved" : "lock file removed");
    TempDir dir;
    const fs::path home = dir / "home";
    fs::create_directories(home);
    const fs::path path = home / "x.iqdb";
    Model first_model;
    auto first = wal_writer(wal_config(path, FsyncPolicy::always()), first_model, /*checkpoint=*/true);
    if (move_directory) {
      fs::rename(home, dir / "moved");
      fs::create_directories(home);
    } else {
      fs::remove(fs::path(path.string() + ".lock"));
    }
    PersistConfig replacing = wal_config(path, FsyncPolicy::always());
    replacing.discard_log = true;
    if (!move_directory) {
      for (int i = 0; i < 2; ++i) {
        try {
          if (i == 0) {
            PersistedIndex<FlatIndex>::load(wal_config(path, FsyncPolicy::always()));
          } else {
            PersistedIndex<FlatIndex>::open_with(empty_index(), replacing);
          }
          ADD_FAILURE() << "a second writer opened while the first has the log open";
        } catch (const PersistError& e) {
          EXPECT_EQ(e.kind(), ErrorKind::Locked) << e.what();
          EXPECT_EQ(e.path(), wal::log_path_for(path)) << e.what();
        }
      }
      for (std::uint64_t i = 50; i < 55; ++i) put(first, first_model, i);
      EXPECT_EQ(first.failure(), std::nullopt);
      first.close();
      EXPECT_EQ(diff(PersistedIndex<FlatIndex>::load(wal_config(path, FsyncPolicy::always())).index(), first_model),
                "");
      continue;
    }
    Model second_model;
    auto second = wal_writer(replacing, second_model, /*checkpoint=*/false);
    for (std::uint64_t i = 100; i < 110; ++i) put(second, second_model, i);

    EXPECT_EQ(error_of([&] { first.checkpoint(); }), ErrorKind::Fenced);
    EXPECT_EQ(error_of([&] { first.insert(900, vec_of(900)); }), ErrorKind::Fenced);
    second.close();
    EXPECT_EQ(diff(PersistedIndex<FlatIndex>::load(wal_config(path, FsyncPolicy::always())).index(), second_model), "");
  }
}

// A lock file that cannot be looked at (its directory made unreadable for a
// while) says nothing about who holds the lock: the checkpoint fails with
// Io (EACCES) and the writer goes on once the directory is readable again.
// It used to be Fenced, for good, as if another writer had taken over. Run
// as an unprivileged user in a child process (root reads any directory).
TEST(WriterLock, ALockFileThatCannotBeLookedAtIsIoNotFenced) {
  TempDir dir;
  const fs::path home = dir / "home";
  fs::create_directories(home);
  const test::ChildResult child = test::run_in_child([&](int) {
    if (::geteuid() == 0) {
      constexpr uid_t kNobody = 65534;
      if (::chown(dir.path().c_str(), kNobody, kNobody) != 0 || ::chown(home.c_str(), kNobody, kNobody) != 0) {
        return 10;
      }
      if (::setgid(kNobody) != 0 || ::setuid(kNobody) != 0) return 11;
      // Where the directories above cannot be passed by another user (a
      // chroot whose root is 0700, say), there is nothing to test.
      if (::access(home.c_str(), R_OK | W_OK | X_OK) != 0) return 77;
    }
    Model model;
    auto db = wal_writer(wal_config(home / "x.iqdb", FsyncPolicy::always()), model, /*checkpoint=*/false);
    if (::chmod(home.c_str(), 0) != 0) return 12;
    int code = 0;
    try {
      db.checkpoint();
      code = 2;  // checkpointed through a directory it cannot read
    } catch (const PersistError& e) {
      if (e.kind() != ErrorKind::Io || e.sys_errno() != EACCES) code = 3;
    }
    if (::chmod(home.c_str(), 0700) != 0) return 13;
    if (code != 0) return code;
    if (db.failure().has_value()) return 4;
    put(db, model, 500);  // writes go on
    db.checkpoint();      // and so does the next checkpoint
    db.close();
    return diff(PersistedIndex<FlatIndex>::load(wal_config(home / "x.iqdb", FsyncPolicy::always())).index(), model)
                   .empty()
               ? 0
               : 5;
  });
  ASSERT_TRUE(WIFEXITED(child.status)) << "signal " << WTERMSIG(child.status);
  if (WEXITSTATUS(child.status) == 77) GTEST_SKIP() << "user nobody cannot reach " << home;
  EXPECT_EQ(WEXITSTATUS(child.status), 0) << "90: threw elsewhere; 2: no error; 3: not Io/EACCES; 4: poisoned; "
                                             "5: reloaded index differs; 10-13: setup";
}

TEST(WriterLock, SaveWithoutWalIsLockedOutWhileAWalWriterRunsWithoutACheckpoint) {
  TempDir dir;
  const fs::path path = dir / "x.iqdb";
  const PersistConfig wcfg = wal_config(path, FsyncPolicy::always());
  Model model;
  auto writer = wal_writer(wcfg, model, /*checkpoint=*/false);

  auto other = PersistedIndex<FlatIndex>::open_with(empty_index(), plain(path));
  other.insert(500, vec_of(500));  // must not be merged into the WAL program's index
  EXPECT_EQ(error_of([&] { other.save(); }), ErrorKind::Locked);

  writer.close();
  auto again = PersistedIndex<FlatIndex>::load(wcfg);
  EXPECT_EQ(diff(again.index(), model), "");
}

// A save without the WAL takes the writer lock as a WAL writer's open
// does, and like it removes the temporary files of saves and checkpoints
// that a crash or a failure left (docs/FORMAT.md): it used to take the lock
// alone, so without the WAL they stayed for ever. Nothing else goes.
TEST(WriterLock, SaveWithoutWalRemovesStaleTemporaries) {
  test::TempDir dir;
  const fs::path path = dir / "db.iqdb";
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), plain(path));
  db.insert(1, vec_of(1));
  const std::vector<std::byte> junk = test::Bytes().str("left by a crash").data();
  const fs::path stale_snapshot = dir / ".db.iqdb.tmp-00000000deadbeef";
  const fs::path stale_log = dir / ".db.iqdb.wal.tmp-00000000deadbeef";
  const fs::path others = dir / ".other.iqdb.tmp-00000000deadbeef";
  // Index "db.iqdb.tmp-x.iqdb"'s temporary: it starts with db.iqdb's prefix.
  const fs::path look_alike = dir / ".db.iqdb.tmp-x.iqdb.tmp-00000000deadbeef";
  for (const fs::path& p : {stale_snapshot, stale_log, others, look_alike}) test::write_file(p, junk);
  db.save();
  EXPECT_FALSE(fs::exists(stale_snapshot));
  EXPECT_FALSE(fs::exists(stale_log));
  EXPECT_TRUE(fs::exists(others));      // another index's
  EXPECT_TRUE(fs::exists(look_alike));  // and another's
  EXPECT_EQ(diff(PersistedIndex<FlatIndex>::load(plain(path)).index(), Model{{VectorId(1), Entry{vec_of(1), std::nullopt}}}), "");
}

TEST(WriterLock, LoadWithoutWalReplaysTheLogReadOnly) {
  TempDir dir;
  const fs::path path = dir / "x.iqdb";
  const PersistConfig wcfg = wal_config(path, FsyncPolicy::always());
  Model model;
  auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), wcfg);
  for (std::uint64_t i = 1; i <= 10; ++i) put(db, model, i);
  const Buf log_before = read_file(wal::log_path_for(path));

  // While the writer runs (a reader takes no lock) and after it closed.
  {
    auto reader = PersistedIndex<FlatIndex>::load(plain(path));
    EXPECT_EQ(diff(reader.index(), model), "");
  }
  db.close();
  auto reader = PersistedIndex<FlatIndex>::load(plain(path));
  EXPECT_EQ(diff(reader.index(), model), "");
  EXPECT_EQ(read_file(wal::log_path_for(path)), log_before) << "a read-only load modified the log";
}

// ---------------------------------------------------------------- the issue, two processes

TEST(WriterLock, AnotherProcessSavingWithoutWalIsLockedOut) {
  for (const bool checkpoint : {true, false}) {
    SCOPED_TRACE(checkpoint ? "after a checkpoint" : "without a checkpoint");
    TempDir dir;
    const fs::path path = dir / "x.iqdb";
    const PersistConfig wcfg = wal_config(path, FsyncPolicy::always());
    Model model;
    auto writer = wal_writer(wcfg, model, checkpoint);

    const int child = test::in_child([&] {
      auto other = PersistedIndex<FlatIndex>::open_with(empty_index(), plain(path));
      other.insert(500, vec_of(500));
      return code_of(error_of([&] { other.save(); }));
    });
    EXPECT_EQ(child, code_of(ErrorKind::Locked)) << "0 = the child's save succeeded";

    // The writer goes on, and everything it acknowledged survives.
    put(writer, model, 12);
    writer.close();
    auto again = PersistedIndex<FlatIndex>::load(wcfg);
    EXPECT_EQ(diff(again.index(), model), "");
  }
}

TEST(WriterLock, AnotherProcessLoadsWithoutWalWhileTheWriterRuns) {
  TempDir dir;
  const fs::path path = dir / "x.iqdb";
  const PersistConfig wcfg = wal_config(path, FsyncPolicy::always());
  Model model;
  auto writer = wal_writer(wcfg, model, /*checkpoint=*/true);
  const int child = test::in_child([&] {
    auto reader = PersistedIndex<FlatIndex>::load(plain(path));
    return diff(reader.index(), model).empty() ? 0 : 1;
  });
  EXPECT_EQ(child, 0) << "1 = the reader saw other content, 98 = its load threw";
}


// ---------------------------------------------------------------- the writer lock

fs::path lock_of(const fs::path& p) {
  fs::path l = p;
  l += ".lock";
  return l;
}

// Whether the writer lock is held (by someone else) when a snapshot is
// renamed into place and when a log is removed.
class LockProbe : public FileSystemWrapper {
 public:
  LockProbe(FileSystem& target, fs::path lock_path) : FileSystemWrapper(target), lock_path_(std::move(lock_path)) {}
  void rename(const fs::path& from, const fs::path& to) override {
    held_at_rename.push_back(held());
    FileSystemWrapper::rename(from, to);
  }
  void remove(const fs::path& p) override {
    if (p.extension() == ".wal") held_at_log_remove.push_back(held());
    FileSystemWrapper::remove(p);
  }
  std::vector<bool> held_at_rename;
  std::vector<bool> held_at_log_remove;

 private:
  bool held() { return error_of([&] { target().lock(lock_path_); }) == ErrorKind::Locked; }
  fs::path lock_path_;
};

TEST(WriterLock, SaveWithoutWalHoldsTheLockWhileItWritesAndOnlyThen) {
  TempDir dir;
  const fs::path path = dir / "x.iqdb";
  LockProbe probe(default_file_system(), lock_of(path));
  PersistConfig cfg = plain(path, &probe);
  auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), cfg);
  Model model;
  put(db, model, 1);
  db.save();
  put(db, model, 2);
  db.checkpoint();  // without a WAL: save()
  EXPECT_EQ(probe.held_at_rename, (std::vector<bool>{true, true}));

  // open_with, load and the object's life in between take no lock: a WAL
  // writer can open the index while this object exists.
  auto reader = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(diff(reader.index(), model), "");
  auto writer = PersistedIndex<FlatIndex>::load(wal_config(path, FsyncPolicy::always()));
  EXPECT_EQ(error_of([&] { db.save(); }), ErrorKind::Locked);
  writer.close();
  // The lock is free again; what refuses the save now is the LSN. The
  // writer's open wrote the state db saved again, one LSN higher (db's
  // snapshot was saved without the WAL), and db was loaded before that.
  EXPECT_EQ(error_of([&] { db.save(); }), ErrorKind::WouldLoseWrites);
  auto again = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(error_of([&] { again.save(); }), std::nullopt);
}

TEST(WriterLock, AnyHolderOfTheLockKeepsSavesOutButNotReaders) {
  TempDir dir;
  const fs::path path = dir / "x.iqdb";
  Model model;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), plain(path));
    for (std::uint64_t i = 1; i <= 3; ++i) put(db, model, i);
    db.save();
  }
  // Held as a save without the WAL holds it, by another process.
  HeldChild holder([&] { return std::shared_ptr<void>(default_file_system().lock(lock_of(path))); });

  auto db = PersistedIndex<FlatIndex>::load(plain(path));  // readers take no lock
  EXPECT_EQ(diff(db.index(), model), "");
  put(db, model, 4);
  EXPECT_EQ(error_of([&] { db.save(); }), ErrorKind::Locked);
  EXPECT_EQ(error_of([&] { PersistedIndex<FlatIndex>::load(wal_config(path, FsyncPolicy::always())); }),
            ErrorKind::Locked);
  EXPECT_EQ(error_of([&] {
              PersistedIndex<FlatIndex>::open_with(empty_index(), wal_config(path, FsyncPolicy::always()));
            }),
            ErrorKind::Locked);

  EXPECT_EQ(holder.finish(), 0);  // 98: the child could not take the lock

  db.save();
  auto again = PersistedIndex<FlatIndex>::load(plain(path));
  EXPECT_EQ(diff(again.index(), model), "");
}

// ---------------------------------------------------------------- saves that would lose writes

TEST(WriterLock, SaveWithoutWalAfterTheWriterClosedRefusesToOrphanTheLog) {
  for (const bool checkpoint : {true, false}) {
    SCOPED_TRACE(checkpoint ? "after a checkpoint" : "without a checkpoint");
    TempDir dir;
    const fs::path path = dir / "x.iqdb";
    const PersistConfig wcfg = wal_config(path, FsyncPolicy::always());
    Model model;
    wal_writer(wcfg, model, checkpoint).close();
    const Buf snapshot_before = read_file(path);

    auto other = PersistedIndex<FlatIndex>::open_with(empty_index(), plain(path));
    other.insert(500, vec_of(500));
    try {
      other.save();
      ADD_FAILURE() << "the save replaced an index whose log holds acknowledged records";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::WouldLoseWrites) << e.what();
      EXPECT_EQ(e.path(), wal::log_path_for(path));
      const std::string what = e.what();
      const std::string range = checkpoint ? "1 acknowledged record (LSN 11)" : "11 acknowledged records (LSN 1..11)";
      EXPECT_NE(what.find(range), std::string::npos) << what;
      EXPECT_NE(what.find("discard_log"), std::string::npos) << what;
      EXPECT_NE(what.find("x.iqdb.wal"), std::string::npos) << what;
    }
    EXPECT_EQ(read_file(path), snapshot_before);
    auto with_wal = PersistedIndex<FlatIndex>::load(wcfg);
    EXPECT_EQ(diff(with_wal.index(), model), "");
    with_wal.close();
    auto without = PersistedIndex<FlatIndex>::load(plain(path));
    EXPECT_EQ(diff(without.index(), model), "");
  }
}

TEST(WriterLock, SaveWithoutWalRefusesToReplaceACheckpointedIndexItLacks) {
  TempDir dir;
  const fs::path path = dir / "x.iqdb";
  const PersistConfig wcfg = wal_config(path, FsyncPolicy::always());
  Model model;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), wcfg);
    for (std::uint64_t i = 1; i <= 10; ++i) put(db, model, i);
    db.checkpoint();  // the log is empty now: the 10 are in the snapshot only
    db.close();
  }
  auto other = PersistedIndex<FlatIndex>::open_with(empty_index(), plain(path));
  other.insert(500, vec_of(500));
  try {
    other.save();
    ADD_FAILURE() << "the save replaced a snapshot holding acknowledged writes";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::WouldLoseWrites) << e.what();
    EXPECT_EQ(e.path(), path);
  }
  auto again = PersistedIndex<FlatIndex>::load(wcfg);
  EXPECT_EQ(diff(again.index(), model), "");
}

TEST(WriterLock, AStaleIndexWithoutWalRefusesToReplaceWritesMadeSinceItWasLoaded) {
  TempDir dir;
  const fs::path path = dir / "x.iqdb";
  const PersistConfig wcfg = wal_config(path, FsyncPolicy::always());
  Model model;
  wal_writer(wcfg, model, /*checkpoint=*/true).close();

  auto stale = PersistedIndex<FlatIndex>::load(plain(path));  // covers LSN 11
  EXPECT_EQ(diff(stale.index(), model), "");
  {
    auto db = PersistedIndex<FlatIndex>::load(wcfg);
    put(db, model, 12);
    put(db, model, 13);
    db.checkpoint();  // 12 and 13 now live in the snapshot alone
    db.close();
  }
  stale.insert(500, vec_of(500));
  EXPECT_EQ(error_of([&] { stale.save(); }), ErrorKind::WouldLoseWrites);
  auto again = PersistedIndex<FlatIndex>::load(wcfg);
  EXPECT_EQ(diff(again.index(), model), "");
}

// A load with the WAL gives `model`, takes a write, and a reload after it
// gives the model with that write.
void expect_wal_goes_on_from(const PersistConfig& wcfg, const Model& model) {
  Model next = model;
  {
    auto with_wal = PersistedIndex<FlatIndex>::load(wcfg);
    EXPECT_EQ(diff(with_wal.index(), model), "");
    put(with_wal, next, 300);
    with_wal.close();
  }
  auto again = PersistedIndex<FlatIndex>::load(wcfg);
  EXPECT_EQ(diff(again.index(), next), "");
}

// A save without the WAL of an index loaded without it keeps everything,
// and a later load with the WAL agrees (the snapshot carries the LSN its
// state covers, not 0).
TEST(WriterLock, LoadedWithoutWalThenSavedTheWalLoadAgrees) {
  for (const int variant : {0, 1, 2}) {
    // 0: log record 11 after a checkpoint; 1: 11 records, no checkpoint;
    // 2: checkpoint, empty log.
    SCOPED_TRACE(variant);
    TempDir dir;
    const fs::path path = dir / "x.iqdb";
    const PersistConfig wcfg = wal_config(path, FsyncPolicy::always());
    Model model;
    {
      auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), wcfg);
      for (std::uint64_t i = 1; i <= 10; ++i) put(db, model, i);
      if (variant != 1) db.checkpoint();
      if (variant != 2) put(db, model, 11);
      db.close();
    }
    const std::uint64_t covered = variant == 2 ? 10 : 11;
    {
      auto db = PersistedIndex<FlatIndex>::load(plain(path));
      EXPECT_EQ(diff(db.index(), model), "");
      EXPECT_EQ(db.last_lsn(), covered);
      put(db, model, 100);
      db.erase(3);
      model.erase(VectorId(3));
      db.save();
      db.save();  // again: its own snapshot is no newer than what it covers
    }
    {
      auto db = PersistedIndex<FlatIndex>::load(plain(path));
      EXPECT_EQ(diff(db.index(), model), "");
    }
    expect_wal_goes_on_from(wcfg, model);
  }
}

// ---------------------------------------------------------------- discard_log

Model replacement(PersistedIndex<FlatIndex>& db) {
  Model m;
  for (std::uint64_t i = 200; i < 205; ++i) put(db, m, i);
  return m;
}

TEST(WriterLock, DiscardLogReplacesTheLogsWrites) {
  for (const bool checkpoint : {true, false}) {
    SCOPED_TRACE(checkpoint ? "after a checkpoint" : "without a checkpoint");
    TempDir dir;
    const fs::path path = dir / "x.iqdb";
    const PersistConfig wcfg = wal_config(path, FsyncPolicy::always());
    Model old_model;
    wal_writer(wcfg, old_model, checkpoint).close();

    PersistConfig cfg = plain(path);
    cfg.discard_log = true;
    cfg.fsync_policy = FsyncPolicy::never();  // the discard is durable all the same
    auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), cfg);
    const Model model = replacement(db);
    db.save();
    EXPECT_FALSE(fs::exists(wal::log_path_for(path)));

    auto without = PersistedIndex<FlatIndex>::load(plain(path));
    EXPECT_EQ(diff(without.index(), model), "");
    expect_wal_goes_on_from(wcfg, model);
  }
}

// The discarding save writes the snapshot, then removes the log. A crash
// between the two (here: the removal fails, as if the process died there)
// leaves the new snapshot beside the old log: every load gives the new
// index, and the WAL goes on from there.
TEST(WriterLock, DiscardLogCrashBetweenSnapshotAndLogRemovalLoadsTheNewIndex) {
  TempDir dir;
  const fs::path path = dir / "x.iqdb";
  const PersistConfig wcfg = wal_config(path, FsyncPolicy::always());
  Model old_model;
  wal_writer(wcfg, old_model, /*checkpoint=*/true).close();

  FaultFs faults;
  PersistConfig cfg = plain(path, &faults);
  cfg.discard_log = true;
  auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), cfg);
  const Model model = replacement(db);
  faults.arm(Fault::fail({OpKind::Remove, ".wal"}, 1, EIO));
  EXPECT_EQ(error_of([&] { db.save(); }), ErrorKind::Io);
  EXPECT_EQ(faults.fired(), 1u);
  ASSERT_TRUE(fs::exists(wal::log_path_for(path)));
  // The order on the disk: the snapshot is durable (file and directory)
  // before the log is removed.
  const std::vector<FsOp> ops = faults.log();
  std::size_t rename_at = 0, dir_sync_at = 0, remove_at = 0;
  for (std::size_t i = 0; i < ops.size(); ++i) {
    if (ops[i].kind == OpKind::Rename && ops[i].path2 == path) rename_at = i + 1;
    if (ops[i].kind == OpKind::SyncDir && rename_at != 0 && dir_sync_at == 0) dir_sync_at = i + 1;
    if (ops[i].kind == OpKind::Remove && ops[i].path == wal::log_path_for(path)) remove_at = i + 1;
  }
  EXPECT_NE(rename_at, 0u);
  EXPECT_LT(rename_at, dir_sync_at);
  EXPECT_LT(dir_sync_at, remove_at);

  {
    auto without = PersistedIndex<FlatIndex>::load(plain(path));
    EXPECT_EQ(diff(without.index(), model), "");
    without.save();  // without discard_log: the log holds nothing it lacks
  }
  expect_wal_goes_on_from(wcfg, model);
}

// The same under the crash simulator: a power loss at every instant of the
// discarding save, in every state the disk may then hold, recovers (with the
// WAL and without) to the old index whole or the new one whole, and to the
// new one once the save returned.
TEST(WriterLock, DiscardLogSurvivesAPowerLossAtEveryInstant) {
  namespace cs = test::crash;
  const fs::path dir = "/db";
  const fs::path path = dir / "x.iqdb";
  cs::SimFs sim({dir});
  Model old_model;
  {
    auto db = wal_writer(wal_config(path, FsyncPolicy::always(), &sim), old_model, /*checkpoint=*/true);
    put(db, old_model, 12);
    db.close();
  }
  PersistConfig cfg = plain(path, &sim);
  cfg.discard_log = true;
  auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), cfg);
  const Model model = replacement(db);
  const std::size_t begin = sim.op_count();
  db.save();
  const std::size_t end = sim.op_count();

  std::size_t states = 0;
  cs::replay(sim.dirs(), sim.initial_image(), sim.trace(), [&](std::size_t point, const cs::DiskModel& disk) {
    if (point < begin) return;
    for (const cs::CrashState& st : disk.crash_states({})) {
      ++states;
      for (const bool wal : {true, false}) {
        cs::SimFs after(sim.dirs(), st.image, {0x5eed, false});
        const PersistConfig rcfg = wal ? wal_config(path, FsyncPolicy::always(), &after) : plain(path, &after);
        try {
          auto r = PersistedIndex<FlatIndex>::load(rcfg);
          const bool is_new = diff(r.index(), model).empty();
          const bool is_old = diff(r.index(), old_model).empty();
          EXPECT_TRUE(is_new || (is_old && point < end))
              << "point " << point << " (" << st.how << "), " << (wal ? "WAL" : "no WAL") << ": "
              << (is_old ? "the old index after the save returned" : diff(r.index(), model));
        } catch (const PersistError& e) {
          ADD_FAILURE() << "point " << point << " (" << st.how << "): " << e.what();
        }
      }
    }
  });
  EXPECT_GT(states, 0u);
}

// ---------------------------------------------------------------- read-only replay

// The log offsets of each record's frame, in order.
std::vector<std::uint64_t> frame_offsets(const fs::path& log) {
  std::vector<std::uint64_t> at;
  wal::scan_log(default_file_system(), log, [&](const wal::RecordView& r) { at.push_back(r.frame_offset); });
  return at;
}

// open_with with the WAL over an index whose files hold acknowledged writes
// (log records above its snapshot, or a snapshot holding vectors) used to
// replace it, every write lost. It refuses, changing no byte, unless
// discard_log; an index holding nothing is replaced.
TEST(WriterLock, OpenWithRefusesToReplaceAcknowledgedWrites) {
  enum class Holds { LogRecords, CheckpointOnly, DamagedLog };
  for (const Holds holds : {Holds::LogRecords, Holds::CheckpointOnly, Holds::DamagedLog}) {
    SCOPED_TRACE(static_cast<int>(holds));
    TempDir dir;
    const fs::path path = dir / "x.iqdb";
    const fs::path log = wal::log_path_for(path);
    const PersistConfig wcfg = wal_config(path, FsyncPolicy::always());
    Model old_model;
    {
      auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), wcfg);
      for (std::uint64_t i = 1; i <= 6; ++i) put(db, old_model, i);
      if (holds == Holds::CheckpointOnly) db.checkpoint();
    }
    if (holds == Holds::DamagedLog) {
      const std::vector<std::uint64_t> at = frame_offsets(log);
      ASSERT_EQ(at.size(), 6U);
      Buf bytes = read_file(log);
      bytes[at[1] + 30] ^= std::byte{0x40};  // inside record 2's vector; records 3.. vouch for it
      write_file(log, bytes);
    }
    const std::vector<std::byte> snapshot_before = read_file(path);
    const std::vector<std::byte> log_before = read_file(log);

    const ErrorKind expected = holds == Holds::DamagedLog ? ErrorKind::CorruptLog : ErrorKind::WouldLoseWrites;
    for (const FsyncPolicy policy : {FsyncPolicy::always(), FsyncPolicy::never()}) {
      FlatIndex fresh = empty_index();
      ASSERT_NO_THROW(fresh.insert(VectorId(77), vec_of(77)));
      EXPECT_EQ(error_of([&] {
                  PersistedIndex<FlatIndex>::open_with(std::move(fresh), wal_config(path, policy));
                }),
                expected);
      EXPECT_EQ(fresh.size(), 1U);  // handed back
      EXPECT_EQ(read_file(path), snapshot_before);
      EXPECT_EQ(read_file(log), log_before);
    }
    if (holds != Holds::DamagedLog) {
      EXPECT_EQ(diff(PersistedIndex<FlatIndex>::load(wcfg).index(), old_model), "");
    }

    PersistConfig replace = wcfg;
    replace.discard_log = true;
    Model model;
    {
      auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), replace);
      for (std::uint64_t i = 300; i < 303; ++i) put(db, model, i);
    }
    EXPECT_EQ(diff(PersistedIndex<FlatIndex>::load(wcfg).index(), model), "");
    EXPECT_EQ(diff(PersistedIndex<FlatIndex>::load(replace).index(), model), "");  // load ignores it
  }
}

TEST(WriterLock, OpenWithReplacesOnlyAnIndexHoldingNothing) {
  TempDir dir;
  const fs::path path = dir / "x.iqdb";
  const PersistConfig wcfg = wal_config(path, FsyncPolicy::always());
  // A new index, nothing logged; then the same over it (its snapshot claims
  // an LSN above the old files', 1, and still holds nothing), and again.
  for (int i = 0; i < 3; ++i) PersistedIndex<FlatIndex>::open_with(empty_index(), wcfg).close();
  EXPECT_GT(inspect_snapshot(default_file_system(), path).header.last_lsn, 0U);
  Model model;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), wcfg);
    put(db, model, 1);
    db.erase(VectorId(std::uint64_t{1}));  // empty again, but two records logged
    model.erase(VectorId(std::uint64_t{1}));
  }
  EXPECT_EQ(error_of([&] { PersistedIndex<FlatIndex>::open_with(empty_index(), wcfg); }),
            ErrorKind::WouldLoseWrites);
  {
    auto db = PersistedIndex<FlatIndex>::load(wcfg);
    db.checkpoint();  // folded: an empty snapshot, an empty log
  }
  {
    auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), wcfg);
    put(db, model, 2);
  }
  EXPECT_EQ(diff(PersistedIndex<FlatIndex>::load(wcfg).index(), model), "");

  // A snapshot saved without the WAL holding a vector is refused too (load
  // it with the WAL to go on with a log); an empty one is replaced.
  for (const bool holds_one : {true, false}) {
    TempDir other;
    const fs::path plain_path = other / "y.iqdb";
    {
      auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), plain(plain_path));
      Model ignored;
      if (holds_one) put(db, ignored, 5);
      db.save();
    }
    const PersistConfig cfg = wal_config(plain_path, FsyncPolicy::always());
    if (holds_one) {
      EXPECT_EQ(error_of([&] { PersistedIndex<FlatIndex>::open_with(empty_index(), cfg); }),
                ErrorKind::WouldLoseWrites);
      EXPECT_EQ(PersistedIndex<FlatIndex>::load(plain(plain_path)).index().size(), 1U);
      continue;
    }
    Model replaced;
    {
      auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), cfg);
      put(db, replaced, 6);
    }
    EXPECT_EQ(diff(PersistedIndex<FlatIndex>::load(plain(plain_path)).index(), replaced), "");
  }
}

TEST(WriterLock, LoadWithoutWalIgnoresATornTailAndChangesNothing) {
  TempDir dir;
  const fs::path path = dir / "x.iqdb";
  const fs::path log = wal::log_path_for(path);
  const PersistConfig wcfg = wal_config(path, FsyncPolicy::always());
  Model model;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), wcfg);
    for (std::uint64_t i = 1; i <= 10; ++i) put(db, model, i);
    db.close();
  }
  // Record 10's frame torn: only its first bytes reached the disk (as after
  // a crash during its write, before it was acknowledged).
  const std::vector<std::uint64_t> at = frame_offsets(log);
  ASSERT_EQ(at.size(), 10u);
  Buf bytes = read_file(log);
  for (std::size_t i = at[9] + 12; i < bytes.size(); ++i) bytes[i] = std::byte{0};
  write_file(log, bytes);
  model.erase(VectorId(10));

  auto db = PersistedIndex<FlatIndex>::load(plain(path));
  EXPECT_EQ(diff(db.index(), model), "");
  EXPECT_EQ(db.last_lsn(), 9u);
  EXPECT_EQ(db.wal_stats().recovered_records, 9u);
  EXPECT_GT(db.wal_stats().torn_tail_bytes, 0u);
  EXPECT_EQ(read_file(log), bytes) << "a load without the WAL changed the log";
  // Saving it is safe (the torn record was never acknowledged), and the WAL
  // load agrees.
  put(db, model, 100);
  db.save();
  auto with_wal = PersistedIndex<FlatIndex>::load(wcfg);
  EXPECT_EQ(diff(with_wal.index(), model), "");
}

TEST(WriterLock, LoadWithoutWalReportsMidLogCorruptionAsTheWalLoadDoes) {
  TempDir dir;
  const fs::path path = dir / "x.iqdb";
  const fs::path log = wal::log_path_for(path);
  const PersistConfig wcfg = wal_config(path, FsyncPolicy::always());
  {
    Model model;
    auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), wcfg);
    for (std::uint64_t i = 1; i <= 10; ++i) put(db, model, i);
    db.close();
  }
  const std::vector<std::uint64_t> at = frame_offsets(log);
  ASSERT_EQ(at.size(), 10u);
  Buf bytes = read_file(log);
  bytes[at[2] + 30] ^= std::byte{0x40};  // inside record 3's vector; records 4.. vouch for it
  write_file(log, bytes);

  std::optional<std::uint64_t> wal_offset;
  try {
    PersistedIndex<FlatIndex>::load(wcfg);
    ADD_FAILURE() << "the WAL load accepted a corrupt log";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::CorruptLog);
    wal_offset = e.offset();
  }
  try {
    PersistedIndex<FlatIndex>::load(plain(path));
    ADD_FAILURE() << "the load without the WAL accepted a corrupt log";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::CorruptLog);
    EXPECT_EQ(e.offset(), wal_offset);
    EXPECT_EQ(e.path(), log);
  }
  // A save without the WAL would orphan what follows the damage: refused,
  // unless told to discard.
  auto other = PersistedIndex<FlatIndex>::open_with(empty_index(), plain(path));
  Model model;
  put(other, model, 500);
  EXPECT_EQ(error_of([&] { other.save(); }), ErrorKind::CorruptLog);
  PersistConfig discard = plain(path);
  discard.discard_log = true;
  auto replacing = PersistedIndex<FlatIndex>::open_with(empty_index(), discard);
  put(replacing, model, 501);
  model.erase(VectorId(500));
  replacing.save();
  auto with_wal = PersistedIndex<FlatIndex>::load(wcfg);
  EXPECT_EQ(diff(with_wal.index(), model), "");
}

// Readers without the WAL load while a writer appends and checkpoints: each
// sees a prefix of the acknowledged inserts, never less than what was
// acknowledged when it started, and never a "missing records" error from a
// checkpoint replacing the snapshot and the log between its two reads.
TEST(WriterLock, LoadsWithoutWalDuringCheckpointsSeeAConsistentPrefix) {
  TempDir dir;
  const fs::path path = dir / "x.iqdb";
  const PersistConfig wcfg = wal_config(path, FsyncPolicy::never());
  auto db = PersistedIndex<FlatIndex>::open_with(empty_index(), wcfg);
  std::atomic<std::uint64_t> acked{0};
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (std::uint64_t i = 1; i <= 3000 && !stop; ++i) {
      db.insert(i, vec_of(i));
      acked.store(i);
      if (i % 50 == 0) db.checkpoint();
    }
    stop = true;
  });
  std::size_t loads = 0;
  std::string failure;
  while (!stop && failure.empty()) {
    const std::uint64_t before = acked.load();
    try {
      auto r = PersistedIndex<FlatIndex>::load(plain(path));
      const FlatIndex& idx = r.index();
      const std::uint64_t n = idx.size();
      if (n < before) failure = "saw " + std::to_string(n) + " of " + std::to_string(before) + " acknowledged";
      for (std::uint64_t i = 1; i <= n && failure.empty(); ++i) {
        if (!idx.contains(i)) failure = "not a prefix: " + std::to_string(i) + " missing";
      }
      if (failure.empty() && r.last_lsn() != n) failure = "last_lsn " + std::to_string(r.last_lsn());
    } catch (const PersistError& e) {
      failure = e.what();
    }
    ++loads;
  }
  stop = true;
  writer.join();
  EXPECT_EQ(failure, "");
  EXPECT_GT(loads, 0u);
}

}  // namespace
}  // namespace iqdb::persist
