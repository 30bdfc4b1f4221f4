// Helpers shared by the adapter tests (faiss_adapter_test.cpp,
// hnswlib_adapter_test.cpp): data, configurations, crash images, and
// payloads held in memory.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <iqdb/persist.hpp>
#include <random>
#include <string>
#include <vector>

namespace iqdb::persist::test {

// n x d standard normal floats, row-major (std::mt19937 seeded with `seed`).
inline std::vector<float> gaussian(std::size_t n, std::size_t d, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> v(n * d);
  for (float& x : v) x = g(rng);
  return v;
}

// Row i of the row-major `x` of d columns.
inline std::vector<float> row(const std::vector<float>& x, std::size_t i, std::size_t d) {
  return {x.begin() + static_cast<std::ptrdiff_t>(i * d), x.begin() + static_cast<std::ptrdiff_t>((i + 1) * d)};
}

// Logs and snapshots are not fsynced: the crash images below are what a
// process crash leaves (power loss is the core's business, tested there),
// and fsyncs would dominate these tests' time.
inline PersistConfig config_for(const std::filesystem::path& p, bool wal) {
  PersistConfig cfg(p);
  cfg.wal_enabled = wal;
  cfg.fsync_policy = FsyncPolicy::never();
  return cfg;
}

// What a crash leaves: the snapshot and the log as they are on disk now,
// copied to `to_dir`; returns the copy's snapshot path.
inline std::filesystem::path crash_image(const PersistConfig& cfg, const std::filesystem::path& to_dir) {
  namespace fs = std::filesystem;
  fs::create_directories(to_dir);
  const fs::path snap = to_dir / cfg.path.filename();
  fs::copy_file(cfg.path, snap, fs::copy_options::overwrite_existing);
  const fs::path log = wal::log_path_for(cfg.path);
  if (fs::exists(log)) fs::copy_file(log, wal::log_path_for(snap), fs::copy_options::overwrite_existing);
  return snap;
}

// A payload written to memory.
class BufferWriter final : public PayloadWriter {
 public:
  void write(const void* data, std::size_t size) override {
    const auto* p = static_cast<const std::byte*>(data);
    bytes.insert(bytes.end(), p, p + size);
  }
  std::uint64_t bytes_written() const noexcept override { return bytes.size(); }
  std::vector<std::byte> bytes;
};

// A payload read from memory (refers to `b`, which must outlive it).
class BufferReader final : public PayloadReader {
 public:
  explicit BufferReader(const std::vector<std::byte>& b) : b_(b) {}
  void read(void* dst, std::size_t size) override {
    if (size > remaining()) throw PersistError(ErrorKind::TruncatedPayload, "payload ends");
    std::memcpy(dst, b_.data() + pos_, size);
    pos_ += size;
  }
  std::uint64_t remaining() const noexcept override { return b_.size() - pos_; }

 private:
  const std::vector<std::byte>& b_;
  std::size_t pos_ = 0;
};

// Cosine over vectors of any finite length (the adapters' tests): ids 1-4
// along (1,1,1) with components 1, 1e20, 1e-30 and 1e-40 (squared lengths
// that overflow or underflow a float), ids 10 and 11 along two axes. A
// search for (q,q,q), q of any length too, must return ids 1-4 first, each
// at `along` (the index's own figure for cosine 1), then an axis at
// `axis` (its figure for cosine 1/sqrt(3)).
template <class Index>
void check_cosine_over_any_length(Index& ix, float along, float axis) {
  const float lengths[] = {1.0f, 1e20f, 1e-30f, 1e-40f};
  for (std::uint64_t i = 0; i < 4; ++i) ix.insert(i + 1, std::vector<float>(3, lengths[i]));
  ix.insert(10, std::vector<float>{1, 0, 0});
  ix.insert(11, std::vector<float>{0, 1, 0});
  for (const float q : {1.0f, 1e20f, 1e-40f}) {
    SCOPED_TRACE("query component " + std::to_string(q));
    const auto hits = ix.search(std::vector<float>(3, q), 6);
    ASSERT_EQ(hits.size(), 6u);
    for (std::size_t i = 0; i < 4; ++i) {
      EXPECT_GE(hits[i].id, 1u);
      EXPECT_LE(hits[i].id, 4u);
      EXPECT_NEAR(hits[i].distance, along, 1e-5f) << "id " << hits[i].id;
    }
    EXPECT_NEAR(hits[4].distance, axis, 1e-5f);
  }
}

}  // namespace iqdb::persist::test
