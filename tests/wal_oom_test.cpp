// Out of memory in the middle of a logged mutation: for every allocation a
// commit makes, make exactly that one fail (std::bad_alloc) and check that
// the process survives it with a consistent index and log:
//  - the call either succeeds or throws;
//  - if it threw and the index still accepts writes, nothing of the mutation
//    is in memory or in the log (recovery gives the state before it);
//  - if it threw and the index refuses writes (poisoned), recovery gives the
//    state before it or after it, never anything else;
//  - if it succeeded, the index and recovery hold it.
// Under AddressSanitizer this also catches the commit queue keeping the
// address of an entry of a call that has already unwound. And out of memory
// at any point of a save or load: no file descriptor, temporary file or
// lock is left behind (FilesOutOfMemory).
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iqdb/persist.hpp>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "support/test_util.hpp"

namespace {
// Countdown of operator-new calls until the one that fails; 0 = disarmed.
std::atomic<long> g_fail_in{0};
std::atomic<long> g_failed{0};

void* counted_alloc(std::size_t n) {
  long k = g_fail_in.load(std::memory_order_relaxed);
  while (k > 0) {
    if (g_fail_in.compare_exchange_weak(k, k - 1, std::memory_order_relaxed)) {
      if (k == 1) {
        g_failed.fetch_add(1, std::memory_order_relaxed);
        throw std::bad_alloc();
      }
      break;
    }
  }
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
}  // namespace

// The replacements this executable uses (the aligned and nothrow forms keep
// the library's defaults: nothing on the commit path uses them).
void* operator new(std::size_t n) { return counted_alloc(n); }
void* operator new[](std::size_t n) { return counted_alloc(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace iqdb::persist {
namespace {

using Model = std::map<VectorId, std::vector<float>>;

std::vector<float> vec_of(std::uint64_t i) { return {static_cast<float>(i), 1.0f, -2.0f, 0.25f}; }

Model model_of(const FlatIndex& index, const Model& expected_ids) {
  Model m;
  for (const auto& [id, v] : expected_ids) {
    const auto got = index.get(id);
    if (!got.empty()) m[id] = std::vector<float>(got.begin(), got.end());
  }
  return m;
}

// The index holds exactly `m` (no more ids: sizes agree; same vectors).
bool holds(const FlatIndex& index, const Model& m) { return index.size() == m.size() && model_of(index, m) == m; }

struct Arm {
  explicit Arm(long k) {
    g_failed = 0;
    g_fail_in = k;
  }
  ~Arm() { g_fail_in = 0; }
  bool fired() const { return g_failed.load() > 0; }
};

enum class Call { Insert, Erase, Batch };

const char* name(Call c) { return c == Call::Insert ? "insert" : c == Call::Erase ? "erase" : "batch"; }

void run(FsyncPolicy policy, Call call) {
  SCOPED_TRACE(std::string(name(call)) + (policy.mode() == FsyncPolicy::Mode::Always ? " under always" : " under never"));
  long fired_points = 0;
  for (long k = 1;; ++k) {
    SCOPED_TRACE("failing allocation #" + std::to_string(k));
    test::TempDir dir;
    PersistConfig cfg(dir / "db.iqdb");
    cfg.wal_enabled = true;
    cfg.fsync_policy = policy;
    Model before;
    for (std::uint64_t i = 1; i <= 3; ++i) before[VectorId(i)] = vec_of(i);
    Model after = before;
    if (call == Call::Insert) after[VectorId(10)] = vec_of(10);
    if (call == Call::Erase) after.erase(VectorId(2));
    WriteBatch batch;
    if (call == Call::Batch) {
      batch.insert(10, vec_of(10)).insert(11, vec_of(11)).erase(1);
      after[VectorId(10)] = vec_of(10);
      after[VectorId(11)] = vec_of(11);
      after.erase(VectorId(1));
    }
    Model all = after;
    all.insert(before.begin(), before.end());

    bool threw = false, poisoned = false, fired = false;
    {
      auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
      for (const auto& [id, v] : before) db.insert(id, v);
      {
        Arm arm(k);
        try {
          switch (call) {
            case Call::Insert: db.insert(10, vec_of(10)); break;
            case Call::Erase: db.erase(2); break;
            case Call::Batch: db.write(batch); break;
          }
        } catch (const std::bad_alloc&) {
          threw = true;
        } catch (const PersistError& e) {
          // Allowed only as the consequence of the failure (a poisoned
          // engine, or a batch applied in part and refused).
          threw = true;
          EXPECT_EQ(e.kind(), ErrorKind::Poisoned) << e.what();
        }
        fired = arm.fired();
      }
      if (!fired) {
        EXPECT_FALSE(threw);
        EXPECT_TRUE(holds(db.index(), after));
        break;  // k is past the last allocation of the call: every point was tried
      }
      ++fired_points;
      poisoned = db.failure().has_value();
      if (!threw) {
        // The failure was absorbed (a cache that could not grow): the call
        // must have done all it promised.
        EXPECT_FALSE(poisoned) << *db.failure();
        EXPECT_TRUE(holds(db.index(), after)) << "succeeded but the index does not hold the mutation";
      } else if (!poisoned) {
        EXPECT_TRUE(holds(db.index(), before)) << "failed, not poisoned, but the index changed";
        // It still accepts writes, and they land.
        db.insert(20, vec_of(20));
      } else {
        EXPECT_THROW(db.insert(20, vec_of(20)), PersistError);
      }
    }
    auto loaded = PersistedIndex<FlatIndex>::load(cfg);
    Model got_before = before, got_after = after;
    if (threw && !poisoned) {
      got_before[VectorId(20)] = vec_of(20);
      EXPECT_TRUE(holds(loaded.index(), got_before)) << "a failed call reappeared after recovery";
    } else if (!threw) {
      EXPECT_TRUE(holds(loaded.index(), got_after)) << "an acknowledged call was lost";
    } else {
      EXPECT_TRUE(holds(loaded.index(), got_before) || holds(loaded.index(), got_after))
          << "recovery after a poisoned commit is neither before nor after it";
    }
    if (::testing::Test::HasFailure()) return;
    ASSERT_LT(k, 10000) << "the call never stops allocating";
  }
  if (fired_points == 0) {
    // The call allocates nothing at all (an erase under Always does not):
    // nothing to inject. Make sure that is not the replacement missing.
    Arm arm(1);
    EXPECT_THROW((void)std::make_unique<int>(1), std::bad_alloc) << "operator new is not replaced";
  }
}

// The insert that grows FlatIndex's id table (the 9th id: 16 slots hold 8):
// whichever allocation fails, the index is left exactly as it was.
TEST(FlatIndexOutOfMemory, EveryAllocationOfAnInsertThatGrowsTheIdTable) {
  FlatIndex base(4, DistanceMetric::Euclidean);
  for (std::uint64_t i = 0; i < 8; ++i) base.insert(i, vec_of(i));
  long fired_points = 0;
  for (long k = 1; k < 1000; ++k) {
    FlatIndex index = base;
    bool threw = false, fired = false;
    {
      Arm arm(k);
      try {
        index.insert(8, vec_of(8));
      } catch (const std::bad_alloc&) {
        threw = true;
      }
      fired = arm.fired();
    }
    if (!fired) break;
    ++fired_points;
    ASSERT_TRUE(threw) << "allocation #" << k;
    ASSERT_TRUE(index == base) << "allocation #" << k << " failed and the index changed";
    for (std::uint64_t i = 0; i < 8; ++i) ASSERT_TRUE(index.contains(i)) << "allocation #" << k << ", id " << i;
    index.insert(8, vec_of(8));  // and it still works
    ASSERT_TRUE(index.contains(8));
  }
  EXPECT_GE(fired_points, 2);  // at least the vector of ids and the table
}

TEST(WalOutOfMemory, EveryAllocationOfAnInsertUnderAlways) { run(FsyncPolicy::always(), Call::Insert); }
TEST(WalOutOfMemory, EveryAllocationOfAnEraseUnderAlways) { run(FsyncPolicy::always(), Call::Erase); }
TEST(WalOutOfMemory, EveryAllocationOfABatchUnderAlways) { run(FsyncPolicy::always(), Call::Batch); }
TEST(WalOutOfMemory, EveryAllocationOfAnInsertUnderNever) { run(FsyncPolicy::never(), Call::Insert); }
TEST(WalOutOfMemory, EveryAllocationOfABatchUnderNever) { run(FsyncPolicy::never(), Call::Batch); }

}  // namespace
}  // namespace iqdb::persist

// ---------------------------------------------------------------- files and locks

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;

std::size_t open_fds() {
  std::size_t n = 0;
  for (const auto& e : fs::directory_iterator("/proc/self/fd")) n += e.path().empty() ? 0 : 1;
  return n;
}

std::size_t temporaries_in(const fs::path& dir) {
  std::size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += e.path().filename().string().find(".tmp-") != std::string::npos;
  return n;
}

// For every allocation `op` makes, make exactly that one fail: afterwards
// the process holds no more file descriptors than before, no temporary
// file is left, and the writer lock is free (the descriptors of a file or
// a lock opened just before an allocation that failed used to leak, the
// lock's with its flock held for the life of the process).
void no_leak_at_any_allocation(const PersistConfig& cfg, const std::function<void()>& op) {
  const fs::path dir = cfg.path.parent_path();
  fs::path lock_path = cfg.path;
  lock_path += ".lock";
  long fired_points = 0;
  for (long k = 1;; ++k) {
    SCOPED_TRACE("failing allocation #" + std::to_string(k));
    const std::size_t fds = open_fds();
    bool fired = false;
    {
      Arm arm(k);
      try {
        op();
      } catch (const std::bad_alloc&) {
      } catch (const PersistError& e) {
        // A loader reports it as its own error: Io (ENOMEM), never damage
        // of a file that is intact (InvalidPayload, before).
        EXPECT_EQ(to_string(e.kind()), "io") << e.what();
        EXPECT_EQ(e.sys_errno(), ENOMEM) << e.what();
      }
      fired = arm.fired();
    }
    EXPECT_EQ(open_fds(), fds);
    EXPECT_EQ(temporaries_in(dir), 0u);
    EXPECT_NO_THROW((void)default_file_system().lock(lock_path));
    if (!fired) break;  // past the last allocation: every point was tried
    ++fired_points;
    ASSERT_LT(k, 100000);
  }
  EXPECT_GT(fired_points, 5);
}

PersistConfig saved_index(const fs::path& path, bool wal) {
  PersistConfig cfg(path);
  cfg.wal_enabled = wal;
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
  for (std::uint64_t i = 1; i <= 3; ++i) db.insert(i, vec_of(i));
  db.save();
  return cfg;
}

TEST(FilesOutOfMemory, EveryAllocationOfASaveWithoutTheWal) {
  test::TempDir dir;
  const PersistConfig cfg = saved_index(dir / "db.iqdb", false);
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  no_leak_at_any_allocation(cfg, [&] { db.save(); });
}

TEST(FilesOutOfMemory, EveryAllocationOfALoad) {
  test::TempDir dir;
  for (const bool wal : {false, true}) {
    SCOPED_TRACE(wal ? "with the WAL" : "without");
    const PersistConfig cfg = saved_index(dir / (wal ? "wal.iqdb" : "plain.iqdb"), wal);
    no_leak_at_any_allocation(cfg, [&] { (void)PersistedIndex<FlatIndex>::load(cfg); });
  }
}

TEST(FilesOutOfMemory, EveryAllocationOfAMappedLoad) {
  test::TempDir dir;
  PersistConfig cfg = saved_index(dir / "db.iqdb", false);
  cfg.map_snapshot = true;
  no_leak_at_any_allocation(cfg, [&] { (void)PersistedIndex<FlatIndex>::load(cfg); });
}

}  // namespace
}  // namespace iqdb::persist
