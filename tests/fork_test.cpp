// A child of fork() and the indexes it inherits (docs/API.md, "fork()").
//
// A child shares its parent's log, lock and files but has none of its
// threads. Before, a child's insert through an inherited WAL index was
// acknowledged (fsynced, under Always) into the parent's log at the
// parent's offsets and then lost; dropping the index in the child hung
// (the periodic flusher's thread is not there to join); and a child that
// outlived its parent's close() kept the index locked. Now:
//  - the child reads the inherited index (search, contains, size) as it was
//    at the fork;
//  - every write, sync and checkpoint through it is refused with Forked,
//    before anything reaches the files;
//  - close() and the destructor return at once and touch nothing;
//  - the child never holds the writer lock: the parent's close() frees it
//    for the next writer while the child lives, and the child cannot open a
//    second writer while the parent holds it;
//  - the parent loses nothing (checked against an independent model).
// A hang in a child ends it with SIGALRM, so it fails the test instead of
// stopping the suite. The same on RADOS: tests/rados/rados_wal_test.cpp.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "iqdb/persist.hpp"
#include "support/test_util.hpp"
#include "support/wal_test_util.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using namespace test;

constexpr std::size_t kDim = 4;
constexpr unsigned kChildSeconds = 30;  // then SIGALRM: a hang fails the test

std::vector<float> vec_of(std::uint64_t i) {
  return {static_cast<float>(i), -static_cast<float>(i), 0.25f * static_cast<float>(i), 1.0f};
}

void put(PersistedIndex<FlatIndex>& db, Model& model, std::uint64_t i) {
  db.insert(i, vec_of(i));
  model[VectorId(i)] = Entry{vec_of(i), std::nullopt};
}

// The number of the first check that failed (1, 2, ...), 0 when all held.
class Checks {
 public:
  Checks& operator()(bool ok) {
    ++n_;
    if (!ok && first_ == 0) first_ = n_;
    return *this;
  }
  int result() const noexcept { return first_; }

 private:
  int n_ = 0;
  int first_ = 0;
};

bool refused_as_forked(const std::function<void()>& f) { return error_of(f) == ErrorKind::Forked; }

// In the child: reads work, writes are refused, close and the destructor
// return. `db` is the inherited index, holding ids 0..9.
int child_uses_inherited(PersistedIndex<FlatIndex>& db) {
  ::alarm(kChildSeconds);
  Checks check;
  const FlatIndex& ix = db.index();
  check(ix.size() == 10);
  check(ix.contains(VectorId(std::uint64_t{3})) && !ix.contains(VectorId(std::uint64_t{100})));
  const auto hits = ix.search(vec_of(7), 1);
  check(hits.size() == 1 && hits[0].id == VectorId(std::uint64_t{7}));
  check(db.last_lsn() == 10);
  check(refused_as_forked([&] { db.insert(std::uint64_t{100}, vec_of(100)); }));
  check(refused_as_forked([&] { db.erase(VectorId(std::uint64_t{3})); }));
  WriteBatch b;
  b.insert(std::uint64_t{101}, vec_of(101));
  check(refused_as_forked([&] { db.write(b); }));
  check(refused_as_forked([&] { db.sync(); }));
  check(refused_as_forked([&] { db.checkpoint(); }));
  check(refused_as_forked([&] { db.save(); }));
  const auto why = db.failure();
  check(why.has_value() && why->find("fork") != std::string::npos);
  check(ix.size() == 10 && !ix.contains(VectorId(std::uint64_t{101})));  // nothing applied either
  db.close();  // returns at once
  return check.result();
}

struct Mode {
  const char* name;
  FsyncPolicy policy;
  std::uint64_t checkpoint_log_bytes;  // an automatic checkpointer's thread too
};

class ForkTest : public ::testing::TestWithParam<Mode> {};

TEST_P(ForkTest, AChildReadsAnInheritedWriterButNeverWritesThroughIt) {
  const TempDir dir;
  const fs::path path = dir.path() / "x.iqdb";
  PersistConfig cfg = wal_config(path, GetParam().policy);
  cfg.checkpoint_log_bytes = GetParam().checkpoint_log_bytes;
  Model model;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), cfg);
    for (std::uint64_t i = 0; i < 10; ++i) put(db, model, i);
    const auto log = read_file(wal::log_path_for(path));

    // The child uses the index, then drops it (its destructor runs there).
    EXPECT_EQ(in_child([&] {
                const int r = child_uses_inherited(db);
                { auto gone = std::move(db); }
                return r;
              }),
              0)
        << "the number of the child's first failed check (128 + 14: it hung)";
    // The child wrote nothing to the log (its bytes, as the log is grown
    // ahead of its frames).
    EXPECT_TRUE(read_file(wal::log_path_for(path)) == log);

    // A child that drops the index without using it.
    EXPECT_EQ(in_child([&] {
                ::alarm(kChildSeconds);
                { auto gone = std::move(db); }
                return 0;
              }),
              0);

    // The parent goes on as before.
    for (std::uint64_t i = 10; i < 20; ++i) put(db, model, i);
    EXPECT_EQ(db.failure(), std::nullopt);
    db.close();
  }
  auto again = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(diff(again.index(), model), "");
}

INSTANTIATE_TEST_SUITE_P(Policies, ForkTest,
                         ::testing::Values(Mode{"Always", FsyncPolicy::always(), 0},
                                           Mode{"Periodic", FsyncPolicy::periodic(5ms), 0},
                                           Mode{"Never", FsyncPolicy::never(), 0},
                                           Mode{"AutoCheckpoint", FsyncPolicy::always(), 4096}),
                         [](const auto& p) { return std::string(p.param.name); });

// A writer under Always holding ids 0..n-1, and the model of them.
class Fork : public ::testing::Test {
 protected:
  PersistedIndex<FlatIndex> writer_with(std::uint64_t n) {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), cfg);
    for (std::uint64_t i = 0; i < n; ++i) put(db, model, i);
    return db;
  }
  const TempDir dir;
  const fs::path path = dir.path() / "x.iqdb";
  const PersistConfig cfg = wal_config(path, FsyncPolicy::always());
  Model model;
};

TEST_F(Fork, AChildNeverHoldsTheWriterLock) {
  auto db = writer_with(5);

  // While the parent holds the lock, a child cannot open a second writer.
  EXPECT_EQ(in_child([&] {
              ::alarm(kChildSeconds);
              return error_of([&] { PersistedIndex<FlatIndex>::load(cfg); }) == ErrorKind::Locked ? 0 : 1;
            }),
            0);

  // A child that lives on after the parent's close() does not keep the
  // index locked: the next writer opens it.
  // (The child drops its copy of the lock's descriptor as it starts, before
  // fork() returns in it: HeldChild returns once the child runs.)
  HeldChild child([] {
    ::alarm(kChildSeconds);
    return std::shared_ptr<void>();
  });
  db.close();
  std::optional<ErrorKind> reopened;
  {
    std::optional<PersistedIndex<FlatIndex>> next;
    reopened = error_of([&] { next.emplace(PersistedIndex<FlatIndex>::load(cfg)); });
    if (next) {
      EXPECT_EQ(diff(next->index(), model), "");
      put(*next, model, 5);
    }
  }
  EXPECT_EQ(child.finish(), 0);
  EXPECT_EQ(reopened, std::nullopt) << "the child kept the writer lock after the parent's close()";
  EXPECT_EQ(diff(PersistedIndex<FlatIndex>::load(cfg).index(), model), "");
}

// A fork while another thread takes and drops a lock: no child may be left
// with a descriptor on the lock file (the fork waits for a lock() in
// progress to record its descriptor, which the child then closes). Before
// the lock() held the registry from before it opened the file, most
// children of such a loop kept one, and with it the lock.
TEST_F(Fork, AForkDuringALockNeverLeavesTheChildItsDescriptor) {
  const fs::path lock_file = dir.path() / "busy.lock";
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> taken{0};
  std::thread locker([&] {
    while (!stop.load()) {
      try {
        auto l = default_file_system().lock(lock_file);
        taken.fetch_add(1);
      } catch (const PersistError&) {
        // Locked: a child still held it (the defect); the children say so.
      }
    }
  });
  while (taken.load() == 0) std::this_thread::yield();
  const fs::path resolved = fs::canonical(lock_file);  // as /proc/self/fd shows it
  int kept = 0;
  for (int i = 0; i < 200; ++i) {
    const int code = in_child([&] {
      for (const auto& e : fs::directory_iterator("/proc/self/fd")) {
        std::error_code ec;
        if (fs::read_symlink(e.path(), ec) == resolved) return 1;
      }
      return 0;
    });
    if (code != 0) ++kept;
  }
  stop.store(true);
  locker.join();
  EXPECT_EQ(kept, 0) << "children of 200 forks that kept a descriptor on the lock file";
  EXPECT_GT(taken.load(), 0u);
}

TEST_F(Fork, AChildOpensItsOwnIndexAsAnyProcessDoes) {
  auto db = writer_with(5);
  // A reader of its own (no lock): every acknowledged insert.
  EXPECT_EQ(in_child([&] {
              ::alarm(kChildSeconds);
              PersistConfig plain(path);
              auto mine = PersistedIndex<FlatIndex>::load(plain);
              return diff(mine.index(), model).empty() ? 0 : 1;
            }),
            0);
  // A writer of its own once the parent closed, opened in the child.
  db.close();
  EXPECT_EQ(in_child([&] {
              ::alarm(kChildSeconds);
              auto mine = PersistedIndex<FlatIndex>::load(cfg);
              mine.insert(std::uint64_t{50}, vec_of(50));
              mine.close();
              return 0;
            }),
            0);
  model[VectorId(std::uint64_t{50})] = Entry{vec_of(50), std::nullopt};
  EXPECT_EQ(diff(PersistedIndex<FlatIndex>::load(cfg).index(), model), "");
}

TEST_F(Fork, AChildReadsAnInheritedReplicaButNeverFollows) {
  auto db = writer_with(10);
  auto replica = ReadReplica<FlatIndex>::open(PersistConfig(path));
  ASSERT_EQ(replica.last_lsn(), 10u);

  EXPECT_EQ(in_child([&] {
              ::alarm(kChildSeconds);
              Checks check;
              check(replica.read([](const FlatIndex& ix) { return ix.size(); }) == 10);
              check(replica.last_lsn() == 10);
              check(refused_as_forked([&] { replica.catch_up(); }));
              check(refused_as_forked([&] { replica.lag(); }));
              check(refused_as_forked([&] { replica.stats(); }));
              check(refused_as_forked([&] { replica.start_following(1ms); }));
              check(refused_as_forked([&] { (void)std::move(replica).promote(); }));
              const auto why = replica.failure();
              check(why.has_value() && why->find("fork") != std::string::npos);
              replica.stop_following();
              { auto gone = std::move(replica); }
              return check.result();
            }),
            0)
      << "the number of the child's first failed check (128 + 14: it hung)";

  // A replica whose background follower was running at the fork: dropping
  // it in the child does not wait for a thread that is not there.
  replica.start_following(1ms);
  EXPECT_EQ(in_child([&] {
              ::alarm(kChildSeconds);
              { auto gone = std::move(replica); }
              return 0;
            }),
            0)
      << "128 + 14: the child hung";

  // The parent's replica goes on following.
  for (std::uint64_t i = 10; i < 15; ++i) put(db, model, i);
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (replica.last_lsn() < 15 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
  replica.stop_following();
  EXPECT_EQ(replica.failure(), std::nullopt);
  EXPECT_EQ(diff(replica.index(), model), "");
}

}  // namespace
}  // namespace iqdb::persist
