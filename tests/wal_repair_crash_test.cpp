// `iqdb-persist wal repair` (wal::repair_log) killed midway: a child process
// repairs a log damaged in its middle and is SIGKILLed at random instants.
// The log is then byte for byte either the original or the repaired one
// (the original cut at the start of the damaged frame), and a repair run
// afterwards finishes the job: a load holds exactly the records before the
// damage (docs/RELIABILITY.md, "Repairing a damaged log").
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <iostream>
#include <iqdb/persist.hpp>
#include <random>
#include <thread>

#include "support/test_util.hpp"
#include "support/wal_test_util.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kDim = 32;
constexpr std::uint64_t kRecords = 6000;
constexpr std::uint64_t kBatch = 10;      // records per frame
constexpr std::uint64_t kDamaged = 4001;  // the first record of the damaged frame
constexpr std::size_t kFlipInFrame = 24;   // a byte of the frame's body

std::vector<float> vec_of(std::uint64_t id) {
  std::vector<float> v(kDim);
  for (std::size_t d = 0; d < kDim; ++d) v[d] = static_cast<float>(id) + static_cast<float>(d) / 64.0f;
  return v;
}

// Runs wal::repair_log in a child, SIGKILLed after `delay` (unless it ended
// first); true when the kill came before the child ended.
bool repair_killed_after(const fs::path& log, std::chrono::microseconds delay) {
  const pid_t pid = fork();
  if (pid == 0) {
    try {
      wal::repair_log(default_file_system(), log);
    } catch (...) {
      _exit(3);
    }
    _exit(0);
  }
  std::this_thread::sleep_for(delay);
  int status = 0;
  const bool ended = waitpid(pid, &status, WNOHANG) == pid;
  if (!ended) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  EXPECT_TRUE(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 0)) << "the repair failed";
  return WIFSIGNALED(status);
}

class WalRepairKilled : public ::testing::Test {
 protected:
  // kRecords inserts in batches under Always; the frame of record kDamaged gets
  // a flipped byte (the frames after it vouch that it was durable: mid-log
  // corruption, which only a repair gets past).
  void SetUp() override {
    path_ = dir_.path() / "idx.iqdb";
    log_ = wal::log_path_for(path_);
    {
      auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean),
                                                     test::wal_config(path_, FsyncPolicy::always()));
      for (std::uint64_t id = 1; id <= kRecords; id += kBatch) {
        WriteBatch b;
        for (std::uint64_t i = id; i < id + kBatch; ++i) b.insert(i, vec_of(i));
        db.write(b);
      }
      db.close();
    }
    std::uint64_t damaged_at = 0;
    wal::scan_log(default_file_system(), log_, [&](const wal::RecordView& r) {
      if (r.id->as_u64() == kDamaged) damaged_at = r.frame_offset;
    });
    ASSERT_GT(damaged_at, 0u);
    original_ = test::read_file(log_);
    original_[damaged_at + kFlipInFrame] ^= std::byte{0x40};
    test::write_file(log_, original_);
    repaired_.assign(original_.begin(), original_.begin() + static_cast<std::ptrdiff_t>(damaged_at));
    snapshot_ = test::read_file(path_);
    for (std::uint64_t id = 1; id < kDamaged; ++id) model_[VectorId(id)].vec = vec_of(id);
  }

  // How long a repair of the damaged log takes here (the median of three).
  std::chrono::microseconds repair_time() {
    std::vector<Clock::duration> took;
    for (int i = 0; i < 3; ++i) {
      test::write_file(log_, original_);
      const auto t0 = Clock::now();
      wal::repair_log(default_file_system(), log_);
      took.push_back(Clock::now() - t0);
    }
    std::sort(took.begin(), took.end());
    return std::chrono::duration_cast<std::chrono::microseconds>(took[1]);
  }

  test::TempDir dir_;
  fs::path path_, log_;
  std::vector<std::byte> original_, repaired_, snapshot_;
  test::Model model_;
};

TEST_F(WalRepairKilled, LeavesTheOriginalOrTheRepairedLogAndARerunFinishes) {
  const auto took = repair_time();
  std::cout << "[ MEASURED ] a repair takes " << took.count() << " us\n";
  // Kills from before the child starts to after the repair would have ended
  // (fork and process start-up included).
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_int_distribution<std::int64_t> delay(0, 2 * took.count() + 2000);
  constexpr int kRounds = 30;
  int original = 0, repaired = 0, killed = 0;
  for (int round = 0; round < kRounds; ++round) {
    test::write_file(path_, snapshot_);  // as the loads of the last round left it
    test::write_file(log_, original_);
    if (repair_killed_after(log_, std::chrono::microseconds(delay(rng)))) ++killed;
    const std::vector<std::byte> now = test::read_file(log_);
    const bool is_original = now == original_, is_repaired = now == repaired_;
    ASSERT_TRUE(is_original || is_repaired) << "round " << round << ": a log of " << now.size()
                                            << " bytes, neither the original nor the repaired one";
    original += is_original ? 1 : 0;
    repaired += is_repaired ? 1 : 0;
    if (is_original) {
      EXPECT_EQ(test::error_of([&] { (void)PersistedIndex<FlatIndex>::load(test::wal_config(path_, FsyncPolicy::always())); }),
                ErrorKind::CorruptLog);
    }
    // A repair run afterwards gives the repaired log, and a load the
    // records before the damage, each exactly.
    wal::repair_log(default_file_system(), log_);
    ASSERT_EQ(test::read_file(log_), repaired_) << "round " << round;
    auto db = PersistedIndex<FlatIndex>::load(test::wal_config(path_, FsyncPolicy::always()));
    ASSERT_EQ(test::diff(db.index(), model_), "") << "round " << round;
    db.close();
  }
  std::cout << "[ MEASURED ] " << kRounds << " rounds: " << killed << " repairs killed; left " << original
            << " original logs, " << repaired << " repaired ones\n";
  EXPECT_GT(original, 0) << "no kill came before the cut";
}

}  // namespace
}  // namespace iqdb::persist
