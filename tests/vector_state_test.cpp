// After every call into the library the upper halves of the vector registers
// are clean, so the caller's SSE code (FAISS, hnswlib, the user's own) runs at
// full speed. The check reads the CPU's own record of which register state is
// in use (XINUSE, xgetbv with ECX = 1): deterministic, no timing.
//
// The model is the CPU itself: the first test shows that ISA-L's CRC kernel
// does leave the state dirty on this CPU (otherwise every test here would pass
// without a fix, and they skip, saying so).
#include <gtest/gtest.h>
#include <isa-l/crc.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include <cstdint>
#include <optional>
#include <vector>

#include <iqdb/persist.hpp>

#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

// XINUSE bits of the state SSE code pays for when it is in use: 2 (the upper
// 128 bits of YMM0-15) and 6 (the upper 256 bits of ZMM0-15). Bit 7
// (ZMM16-31) does not count: SSE code cannot name those registers.
constexpr std::uint64_t kUpperHalves = (1u << 2) | (1u << 6);

// The XINUSE bitmap, or nullopt where the CPU cannot report it (no AVX, or
// no XGETBV with ECX = 1).
std::optional<std::uint64_t> xinuse() {
#if defined(__x86_64__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d) == 0) return std::nullopt;
  const bool osxsave = (c & (1u << 27)) != 0;
  const bool avx = (c & (1u << 28)) != 0;
  if (!osxsave || !avx) return std::nullopt;
  if (__get_cpuid_count(0xD, 1, &a, &b, &c, &d) == 0 || (a & (1u << 2)) == 0) return std::nullopt;
  std::uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(1u));
  return (static_cast<std::uint64_t>(hi) << 32) | lo;
#else
  return std::nullopt;
#endif
}

bool upper_halves_dirty() { return (*xinuse() & kUpperHalves) != 0; }

// Skips the test unless the CPU reports XINUSE and ISA-L's raw CRC of 4 KiB
// dirties the upper halves on it (AVX-512 / VPCLMULQDQ CPUs).
void require_dirtying_cpu() {
  if (!xinuse()) GTEST_SKIP() << "this CPU cannot report XINUSE (no AVX or no xgetbv(1)): nothing to check";
  std::vector<unsigned char> block(4096, 0x5a);
  const std::uint32_t crc = crc32_gzip_refl(0, block.data(), block.size());
  const bool dirty = upper_halves_dirty();
  EXPECT_NE(crc, 0u);
  if (!dirty) GTEST_SKIP() << "ISA-L's CRC kernel leaves the registers clean on this CPU: nothing to fix here";
}

TEST(VectorState, RawIsaLCrcDirtiesTheUpperHalvesOnThisCpu) {
  require_dirtying_cpu();
  // Reaching here means the raw kernel left them dirty; a vzeroupper-free
  // return from the library would do the same to its callers.
  SUCCEED();
}

TEST(VectorState, ChecksumLeavesThemClean) {
  require_dirtying_cpu();
  std::vector<std::byte> block(4096, std::byte{0x5a});
  for (const std::size_t n : {std::size_t{64}, std::size_t{256}, std::size_t{4096}}) {
    (void)checksum::compute(block.data(), n);
    EXPECT_FALSE(upper_halves_dirty()) << "after checksum::compute of " << n << " bytes";
    checksum::Crc32 c;
    c.update(block.data(), n);
    EXPECT_FALSE(upper_halves_dirty()) << "after Crc32::update of " << n << " bytes";
    EXPECT_EQ(c.value(), checksum::compute(block.data(), n));
  }
}

FlatIndex sample_index(std::size_t n) {
  FlatIndex index(32, DistanceMetric::Euclidean);
  std::vector<float> v(32);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < v.size(); ++j) v[j] = static_cast<float>(i * 31 + j);
    index.insert(static_cast<std::uint64_t>(i), v);
  }
  return index;
}

// Save and load under each compression: every CRC the library computes on the
// way, and zstd's and lz4's own code, leave the state clean for the caller.
TEST(VectorState, SaveAndLoadLeaveThemClean) {
  require_dirtying_cpu();
  for (const Compression c : {Compression::none(), Compression::lz4(), Compression::zstd(3)}) {
    test::TempDir dir;
    PersistConfig cfg(dir / "x.iqdb");
    cfg.compression = c;
    auto db = PersistedIndex<FlatIndex>::open_with(sample_index(2000), cfg);
    (void)db.save();
    EXPECT_FALSE(upper_halves_dirty()) << "after save, compression " << static_cast<int>(c.kind());
    auto loaded = PersistedIndex<FlatIndex>::load(cfg);
    EXPECT_FALSE(upper_halves_dirty()) << "after load, compression " << static_cast<int>(c.kind());
    EXPECT_EQ(loaded.index().size(), 2000u);
  }
}

// The WAL: an append (CRC of the frame), a checkpoint and a replay.
TEST(VectorState, WalAppendCheckpointAndReplayLeaveThemClean) {
  require_dirtying_cpu();
  test::TempDir dir;
  PersistConfig cfg(dir / "x.iqdb");
  cfg.wal_enabled = true;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(sample_index(100), cfg);
    EXPECT_FALSE(upper_halves_dirty()) << "after open_with";
    std::vector<float> v(32, 1.0f);
    for (std::uint64_t id = 1000; id < 1200; ++id) {
      db.insert(id, v);  // 128-byte vectors: frames of a few hundred bytes
      ASSERT_FALSE(upper_halves_dirty()) << "after insert " << id;
    }
    WriteBatch batch;
    for (std::uint64_t id = 2000; id < 2100; ++id) batch.insert(id, v);
    db.write(batch);  // one frame of ~15 KiB
    EXPECT_FALSE(upper_halves_dirty()) << "after a batch";
    (void)db.checkpoint();
    EXPECT_FALSE(upper_halves_dirty()) << "after checkpoint";
    for (std::uint64_t id = 3000; id < 3100; ++id) db.insert(id, v);
    db.close();
  }
  auto again = PersistedIndex<FlatIndex>::load(cfg);  // replays 100 records
  EXPECT_FALSE(upper_halves_dirty()) << "after load with replay";
  EXPECT_EQ(again.index().size(), 500u);
}

}  // namespace
}  // namespace iqdb::persist
