// Logs larger than the reader's window: the log reader reads the next chunk
// of the file on another thread while the current one is decoded (src/wal/
// log_reader.cpp, Window). Frames smaller than a chunk, larger than the room
// kept in front of a chunk (2 MiB), and larger than a chunk (4 MiB) cross
// the chunk boundaries here; recovery must equal the model, a torn tail must
// be cut, and damage deep in the file must be reported at its frame.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <iostream>
#include <iqdb/persist.hpp>
#include <map>
#include <string>
#include <vector>

#include "support/alloc_guard.hpp"
#include "support/forked_child.hpp"
#include "support/test_util.hpp"
#include "support/wal_test_util.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;

constexpr std::uint64_t kDim = 256;  // 1 KiB per vector

std::vector<float> vec_of(std::uint64_t i) {
  std::vector<float> v(kDim);
  for (std::uint64_t j = 0; j < kDim; ++j) v[j] = static_cast<float>(i) + static_cast<float>(j) * 0.5f;
  return v;
}

using Model = std::map<std::uint64_t, bool>;  // id -> present

struct Written {
  Model after_each_call_but_last;
  Model final_model;
  std::vector<std::uint64_t> frame_ends;  // where the frame of each call ends (one frame per call)
};

::testing::AssertionResult equals(const FlatIndex& index, const Model& m) {
  std::size_t present = 0;
  for (const auto& [id, in] : m) {
    if (!in) {
      if (index.contains(VectorId(id))) return ::testing::AssertionFailure() << "erased id " << id << " is present";
      continue;
    }
    ++present;
    const auto v = index.get(VectorId(id));
    if (v.size() != kDim) return ::testing::AssertionFailure() << "id " << id << " is missing";
    const auto want = vec_of(id);
    if (!std::equal(v.begin(), v.end(), want.begin())) return ::testing::AssertionFailure() << "vector " << id << " differs";
  }
  if (index.size() != present) return ::testing::AssertionFailure() << "size " << index.size() << ", model " << present;
  return ::testing::AssertionSuccess();
}

PersistConfig config(const fs::path& dir) {
  PersistConfig cfg(dir / "db.iqdb");
  cfg.wal_enabled = true;
  cfg.fsync_policy = FsyncPolicy::never();
  return cfg;
}

Written write_log(const PersistConfig& cfg) {
  Written w;
  Model m;
  const fs::path log = cfg.path.string() + ".wal";
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), cfg);
  std::uint64_t next = 0;
  std::size_t calls = 0;
  const auto singles = [&](std::uint64_t n) {
    for (std::uint64_t k = 0; k < n; ++k, ++next) {
      w.after_each_call_but_last = m;
      if (next % 7 == 3 && m.count(next - 3) != 0) {
        db.erase(VectorId(next - 3));
        m[next - 3] = false;
      } else {
        db.insert(next, vec_of(next));
        m[next] = true;
      }
      ++calls;
    }
  };
  const auto batch = [&](std::uint64_t n) {
    w.after_each_call_but_last = m;
    WriteBatch b;
    for (std::uint64_t k = 0; k < n; ++k, ++next) {
      b.insert(next, vec_of(next));
      m[next] = true;
    }
    db.write(b);
    ++calls;
  };
  singles(3000);  // ~3 MiB of 1 KiB frames
  batch(3000);    // a 3 MiB frame: larger than the room in front of a chunk
  singles(500);
  batch(5000);    // a 5 MiB frame: larger than a chunk
  singles(4000);
  // Under Never nothing is known durable, and damage followed only by frames
  // written before it was durable reads as a power loss (a torn tail; see
  // docs/RELIABILITY.md, "Recovery rules"). After this sync the last frame
  // records everything before it as durable: damage there is corruption.
  db.sync();
  batch(1500);  // the last call
  db.close();
  w.final_model = m;
  // The frames, walked by their length fields (docs/FORMAT.md: a 40-byte
  // header, then frames of an 8-byte header and a body of `len` bytes, then
  // zero padding): one per call.
  const std::vector<std::byte> bytes = test::read_file(log);
  std::uint64_t at = 40;
  while (at + 8 <= bytes.size()) {
    std::uint32_t len = 0;
    std::memcpy(&len, bytes.data() + at, 4);  // little-endian, as the test hosts
    if (len == 0) break;
    at += 8 + len;
    w.frame_ends.push_back(at);
  }
  EXPECT_EQ(w.frame_ends.size(), calls) << "one frame per call";
  return w;
}

TEST(WalLargeLog, ReplaysFramesAcrossEveryChunkBoundary) {
  test::TempDir dir;
  const PersistConfig cfg = config(dir.path());
  const Written w = write_log(cfg);
  ASSERT_GT(w.frame_ends.back(), std::uint64_t{12} << 20);
  const auto db = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_TRUE(equals(db.index(), w.final_model));
}

TEST(WalLargeLog, ATornLastFrameIsCutAtItsStart) {
  test::TempDir dir;
  const PersistConfig cfg = config(dir.path());
  const Written w = write_log(cfg);
  const fs::path log = cfg.path.string() + ".wal";
  const std::uint64_t last_start = w.frame_ends[w.frame_ends.size() - 2];
  fs::resize_file(log, last_start + (w.frame_ends.back() - last_start) / 2);
  {
    const auto db = PersistedIndex<FlatIndex>::load(cfg);
    EXPECT_TRUE(equals(db.index(), w.after_each_call_but_last));
  }
  EXPECT_EQ(fs::file_size(log), last_start) << "the torn tail was not cut";
}

TEST(WalLargeLog, DamageDeepInTheFileIsReportedAtItsFrame) {
  test::TempDir dir;
  const PersistConfig cfg = config(dir.path());
  const Written w = write_log(cfg);
  const fs::path log = cfg.path.string() + ".wal";
  std::vector<std::byte> bytes = test::read_file(log);
  // One byte in frames at several depths: inside a chunk, in the 5 MiB
  // frame, and in the single inserts after it.
  for (const std::size_t call : {std::size_t{1200}, std::size_t{3501}, std::size_t{5000}}) {
    SCOPED_TRACE(call);
    const std::uint64_t start = w.frame_ends[call - 1], end = w.frame_ends[call];
    std::vector<std::byte> damaged = bytes;
    damaged[static_cast<std::size_t>(start + (end - start) / 2)] ^= std::byte{0x20};
    test::write_file(log, damaged);
    try {
      (void)PersistedIndex<FlatIndex>::load(cfg);
      ADD_FAILURE() << "loaded a log damaged in the middle";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::CorruptLog) << e.what();
      EXPECT_EQ(e.offset(), start) << e.what();
    }
  }
}

// A log whose apparent size is far beyond its frames (a sparse file, here
// 512 MiB with non-zero 4 KiB blocks exactly where the replay's estimate of
// the frames' end looks, and zeros everywhere else): the load's reserve hint
// followed the apparent size, and the id table it reserved for ~10 million
// rows was touched at once (about 280 MiB for a log of ten records; 533 MiB
// at 1 GiB). The hint is
// now capped (persisted_index.hpp, kMaxReserveHint). Measured in a child:
// its peak resident memory over the load.
TEST(WalLargeLog, ASparseLogsApparentSizeDoesNotDriveTheReserve) {
  if (test::address_sanitizer_active()) GTEST_SKIP() << "resident memory means nothing under ASan";
  test::TempDir dir;
  const PersistConfig cfg = test::wal_config(dir / "db.iqdb", FsyncPolicy::always());
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    for (std::uint64_t i = 1; i <= 10; ++i) db.insert(i, std::vector<float>{1.0f, 2.0f, 3.0f, static_cast<float>(i)});
    db.close();
  }
  const fs::path log = wal::log_path_for(cfg.path);
  constexpr std::uint64_t kBlock = 4096;
  constexpr std::uint64_t kApparent = std::uint64_t{1} << 29;
  const int fd = ::open(log.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(kApparent)), 0);
  // Where the binary search for the first zero block looks (replay.cpp,
  // frames_end_estimate), each made non-zero so that it goes on upwards.
  const std::vector<std::byte> junk(kBlock, std::byte{0x5a});
  std::uint64_t lo = 0, hi = kApparent / kBlock, probes = 0;
  while (lo < hi) {
    const std::uint64_t mid = lo + (hi - lo) / 2;
    if (mid >= 2) {  // (the header and the frames are in blocks 0 and 1)
      ASSERT_EQ(::pwrite(fd, junk.data(), kBlock, static_cast<off_t>(mid * kBlock)), static_cast<ssize_t>(kBlock));
      ++probes;
    }
    lo = mid + 1;
  }
  ::close(fd);
  ASSERT_GT(probes, 10u);
  const test::ChildResult r = test::run_in_child([&](int report) {
    rusage before{};
    ::getrusage(RUSAGE_SELF, &before);
    auto db = PersistedIndex<FlatIndex>::load(cfg);
    rusage after{};
    ::getrusage(RUSAGE_SELF, &after);
    const std::string line = std::to_string(db.index().size()) + " rows, peak resident grew by " +
                             std::to_string((after.ru_maxrss - before.ru_maxrss) / 1024) + " MiB";
    (void)::write(report, line.data(), line.size());
    if (db.index().size() != 10) return 1;
    return after.ru_maxrss - before.ru_maxrss < 200 * 1024 ? 0 : 2;  // ru_maxrss is in KiB
  });
  EXPECT_TRUE(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0) << r.report << " (status " << r.status << ")";
  std::cout << "[ MEASURED ] " << r.report << "\n";
}

}  // namespace
}  // namespace iqdb::persist
