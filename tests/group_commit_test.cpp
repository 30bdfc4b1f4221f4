// Group commit bounded by the log sink's per-operation limit
// (LogSink::max_group_bytes; RADOS: one write operation, docs/DISTRIBUTED.md
// "The log in RADOS"). The local files have no limit; a test storage wraps
// them with a small one and records what each sync covers, which is then
// read back by an independent parser of the frame layout (docs/FORMAT.md,
// "Version 2": length u32, crc u32, first_lsn u64, count u32, little
// endian). Every test name contains "Concurrent": the ThreadSanitizer stage
// runs `ctest -R Concurren`.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <iqdb/persist.hpp>
#include <mutex>
#include <thread>
#include <vector>

#include "iqdb/persist/detail/index_storage.hpp"
#include "support/test_util.hpp"
#include "support/wal_test_util.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;
using test::diff;
using test::Model;

constexpr std::size_t kDim = 64;
constexpr std::size_t kFrameHeader = 8;  // length u32, crc u32
constexpr std::size_t kFirstLsnAt = 8;   // the body's first_lsn u64
constexpr std::size_t kCountAt = 16;     // the body's count u32

std::uint64_t le(const std::byte* p, std::size_t n) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < n; ++i) v |= std::to_integer<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

// The bytes one sync made durable, in log order from `offset`.
struct SyncedOp {
  std::uint64_t offset = 0;
  std::vector<std::byte> bytes;
};

// A local log whose sink claims a per-operation limit, and records what each
// datasync() covers (the leader's thread alone writes and syncs).
class RecordingSink final : public detail::LogSink {
 public:
  RecordingSink(std::unique_ptr<detail::LogSink> inner, std::uint64_t limit, std::vector<SyncedOp>& ops,
                std::mutex& mu)
      : inner_(std::move(inner)), limit_(limit), ops_(ops), mu_(mu) {}
  void append(std::span<const std::byte> frame) override {
    note(inner_->end(), frame);
    inner_->append(frame);
  }
  void datasync() override {
    // A slow device: writers pile up behind the sync, so groups are full.
    std::this_thread::sleep_for(std::chrono::microseconds(500));
    inner_->datasync();
    std::lock_guard g(mu_);
    if (!open_.bytes.empty()) ops_.push_back(std::move(open_));
    open_ = {};
  }
  void stage(std::span<const std::byte> frame) override { inner_->stage(frame); }
  void take_staged(Staged& out, std::uint64_t upto) override { inner_->take_staged(out, upto); }
  void write_staged(const Staged& s) override {
    note(s.offset, s.bytes);
    inner_->write_staged(s);
  }
  void cut(std::uint64_t end) override { inner_->cut(end); }
  void close() override { inner_->close(); }
  void use_mapping() noexcept override { inner_->use_mapping(); }
  std::uint64_t end() const noexcept override { return inner_->end(); }
  std::uint64_t salt() const noexcept override { return inner_->salt(); }
  std::uint64_t max_group_bytes() const noexcept override { return limit_; }

 private:
  void note(std::uint64_t offset, std::span<const std::byte> bytes) {
    std::lock_guard g(mu_);
    if (open_.bytes.empty()) open_.offset = offset;
    open_.bytes.insert(open_.bytes.end(), bytes.begin(), bytes.end());
  }
  std::unique_ptr<detail::LogSink> inner_;
  std::uint64_t limit_;
  std::vector<SyncedOp>& ops_;
  std::mutex& mu_;
  SyncedOp open_;
};

// The local files, with RecordingSink logs.
class LimitedStorage final : public IndexStorage {
 public:
  LimitedStorage(const fs::path& snapshot, std::uint64_t limit)
      : inner_(detail::make_local_storage(default_file_system(), snapshot)), limit_(limit) {}
  FileSystem& snapshot_fs() override { return inner_->snapshot_fs(); }
  std::unique_ptr<FileLock> lock_writer() override { return inner_->lock_writer(); }
  bool log_exists() override { return inner_->log_exists(); }
  std::unique_ptr<ReadableFile> open_log() override { return inner_->open_log(); }
  std::unique_ptr<ReadableFile> open_log_with_snapshot(const std::function<FileHeader()>& load,
                                                       FileHeader& loaded) override {
    return inner_->open_log_with_snapshot(load, loaded);
  }
  std::unique_ptr<detail::FollowedLog> follow_log_with_snapshot(const std::function<FileHeader()>& load,
                                                                FileHeader& loaded) override {
    return inner_->follow_log_with_snapshot(load, loaded);
  }
  std::unique_ptr<detail::FollowedLog> follow_current_log() override { return inner_->follow_current_log(); }
  bool replaced(const detail::FollowedLog& log, std::uint64_t salt) override { return inner_->replaced(log, salt); }
  void check_scan(const wal::ScanResult& scan) override { inner_->check_scan(scan); }
  std::unique_ptr<detail::LogSink> create_log(std::uint64_t base_lsn) override {
    return wrap(inner_->create_log(base_lsn));
  }
  std::unique_ptr<detail::LogSink> continue_log(std::uint64_t salt, std::uint64_t end,
                                                std::uint64_t file_size) override {
    return wrap(inner_->continue_log(salt, end, file_size));
  }
  void remove_log() override { inner_->remove_log(); }
  fs::path log_path() const override { return inner_->log_path(); }
  std::uint64_t max_frame_bytes() const noexcept override { return inner_->max_frame_bytes(); }

  // What the syncs covered so far.
  std::vector<SyncedOp> ops() {
    std::lock_guard g(mu_);
    return ops_;
  }

 private:
  std::unique_ptr<detail::LogSink> wrap(std::unique_ptr<detail::LogSink> s) {
    return std::make_unique<RecordingSink>(std::move(s), limit_, ops_, mu_);
  }
  std::shared_ptr<IndexStorage> inner_;
  std::uint64_t limit_;
  std::mutex mu_;
  std::vector<SyncedOp> ops_;
};

// The frames of one synced operation: (first_lsn, count); fails the test
// when the bytes are not whole frames.
std::vector<std::pair<std::uint64_t, std::uint64_t>> frames_of(const SyncedOp& op) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  std::size_t at = 0;
  while (at + kFrameHeader <= op.bytes.size()) {
    const std::uint64_t len = le(&op.bytes[at], 4);
    EXPECT_LE(at + kFrameHeader + len, op.bytes.size()) << "a frame cut at offset " << op.offset + at;
    if (at + kFrameHeader + len > op.bytes.size() || len < kCountAt + 4 - kFrameHeader) break;
    out.emplace_back(le(&op.bytes[at + kFirstLsnAt], 8), le(&op.bytes[at + kCountAt], 4));
    at += kFrameHeader + len;
  }
  EXPECT_EQ(at, op.bytes.size()) << "an operation that is not whole frames, at " << op.offset;
  return out;
}

std::vector<float> vec_of(std::uint64_t id) {
  std::vector<float> v(kDim);
  for (std::size_t d = 0; d < kDim; ++d) v[d] = static_cast<float>((id * 13 + d * 5) % 97) / 8.0f;
  return v;
}

// Thread t's batch j: `rows` rows with ids t * 1e6 + j * 1000 + r.
WriteBatch batch_of(std::uint64_t t, std::uint64_t j, std::size_t rows, Model& acked) {
  WriteBatch b;
  for (std::uint64_t r = 0; r < rows; ++r) {
    const std::uint64_t id = t * 1000000 + j * 1000 + r;
    b.insert(id, vec_of(id));
    acked[VectorId(id)].vec = vec_of(id);
  }
  return b;
}

// Several threads write batches of ~4.3 KB under Always through a sink whose
// per-operation limit is 10 KB (two frames); one thread's every fifth batch
// is ~17 KB, over the limit by itself. Every call succeeds; each sync covers
// whole frames within the limit (or one frame alone), the syncs follow each
// other with no gap and the LSNs with no gap or reordering; a reload holds
// exactly what was acknowledged, each thread's batches in its own order.
TEST(GroupCommitBound, ConcurrentBatchesStayWithinTheSinksLimit) {
  constexpr std::uint64_t kLimit = 10000;
  constexpr int kThreads = 4;
  constexpr std::uint64_t kBatches = 40;
  constexpr std::size_t kRows = 16, kBigRows = 64;
  test::TempDir dir;
  const fs::path path = dir.path() / "idx.iqdb";
  auto storage = std::make_shared<LimitedStorage>(path, kLimit);
  PersistConfig cfg = test::wal_config(path, FsyncPolicy::always());
  cfg.storage = storage;
  std::vector<Model> acked(kThreads);
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), cfg);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        const auto tt = static_cast<std::uint64_t>(t);
        for (std::uint64_t j = 0; j < kBatches; ++j) {
          Model next;
          const std::size_t rows = t == 0 && j % 5 == 4 ? kBigRows : kRows;
          db.write(batch_of(tt + 1, j, rows, next));  // throws (fails the test) on any error
          acked[tt].insert(next.begin(), next.end());
        }
      });
    }
    for (auto& th : threads) th.join();
    db.close();
  }
  const std::vector<SyncedOp> ops = storage->ops();
  ASSERT_FALSE(ops.empty());
  std::uint64_t next_offset = ops.front().offset, next_lsn = 0, frames = 0;
  std::size_t grouped = 0, alone_over = 0;
  for (const SyncedOp& op : ops) {
    EXPECT_EQ(op.offset, next_offset) << "a gap or an overlap between syncs";
    next_offset = op.offset + op.bytes.size();
    const auto fr = frames_of(op);
    EXPECT_TRUE(op.bytes.size() <= kLimit || fr.size() == 1)
        << op.bytes.size() << " bytes in " << fr.size() << " frames in one operation";
    if (fr.size() > 1) ++grouped;
    if (op.bytes.size() > kLimit) ++alone_over;
    for (const auto& [first, count] : fr) {
      if (next_lsn != 0) {
        EXPECT_EQ(first, next_lsn) << "LSNs out of order";
      }
      next_lsn = first + count;
      ++frames;
    }
  }
  EXPECT_EQ(frames, kThreads * kBatches);
  EXPECT_EQ(alone_over, kBatches / 5) << "each large batch went out alone";
  EXPECT_GT(grouped, 0u) << "concurrent writers still share syncs";

  // A load of the plain local files (not through the test storage).
  Model all;
  for (const Model& m : acked) all.insert(m.begin(), m.end());
  auto again = PersistedIndex<FlatIndex>::load(test::wal_config(path, FsyncPolicy::always()));
  EXPECT_EQ(diff(again.index(), all), "");
  // Each thread's batches are in the log in the order it wrote them.
  std::vector<std::uint64_t> last(kThreads + 1, 0);
  wal::scan_log(default_file_system(), wal::log_path_for(path), [&](const wal::RecordView& r) {
    const std::uint64_t id = r.id->as_u64(), t = id / 1000000;
    ASSERT_LT(t, last.size());
    EXPECT_LT(last[t], id + 1) << "thread " << t << "'s batches reordered";
    last[t] = id + 1;
  });
}

}  // namespace
}  // namespace iqdb::persist
