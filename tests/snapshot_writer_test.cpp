// The snapshot writer's stored stream: a compressed save hands its output to
// a writer thread of its own (src/snapshot/snapshot_writer.cpp, FileSink)
// while the saving thread compresses on. Checked against independent
// models: zlib's CRC-32 of the stored bytes, and libzstd / liblz4 decoding
// them back to the payload the body wrote. The failure paths (an append
// failing on the writer thread, the body throwing while the writer runs)
// leave the previous file and nothing else. Also run under ThreadSanitizer
// (scripts/test.sh).
#include <gtest/gtest.h>
#include <lz4frame.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "iqdb/persist.hpp"
#include "support/fault_fs.hpp"
#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;
using test::Buf;

// The payloads: 64-byte blocks, each either pseudo-random or a copy of the
// one before (half and half), so that both codecs find matches and store
// about half of it. The tests use 16 and 24 MiB: several of the sink's
// 4 MiB buffers, so the two buffers take turns several times.
Buf make_payload(std::size_t size, std::uint32_t seed) {
  Buf p(size);
  std::mt19937 rng(seed);
  for (std::size_t b = 0; b < size; b += 64) {
    const std::size_t n = std::min<std::size_t>(64, size - b);
    const bool copy = b >= 64 && rng() % 2 == 0;
    for (std::size_t i = 0; i < n; ++i) p[b + i] = copy ? p[b + i - 64] : static_cast<std::byte>(rng());
  }
  return p;
}

// Writes the payload in pieces of 1 to 70,000 bytes: small ones gathered by
// the payload buffer, and some of 64 KiB and more that go on directly.
void write_in_pieces(PayloadWriter& w, const Buf& payload, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::size_t at = 0;
  while (at < payload.size()) {
    const std::size_t n = std::min<std::size_t>(payload.size() - at, 1 + rng() % 70'000);
    w.write(payload.data() + at, n);
    at += n;
  }
}

// The stored payload decoded by the codec's own library, not the project's.
Buf decode_independently(CompressionScheme scheme, const Buf& stored, std::uint64_t uncompressed_len) {
  Buf out(static_cast<std::size_t>(uncompressed_len));
  if (scheme == CompressionScheme::Zstd) {
    const std::size_t r = ZSTD_decompress(out.data(), out.size(), stored.data(), stored.size());
    if (ZSTD_isError(r)) throw std::runtime_error(ZSTD_getErrorName(r));
    out.resize(r);
    return out;
  }
  if (scheme == CompressionScheme::Lz4Frame) {
    LZ4F_dctx* ctx = nullptr;
    if (LZ4F_isError(LZ4F_createDecompressionContext(&ctx, LZ4F_VERSION))) throw std::runtime_error("lz4 context");
    std::size_t in_at = 0, out_at = 0;
    for (;;) {
      std::size_t out_n = out.size() - out_at, in_n = stored.size() - in_at;
      const std::size_t r = LZ4F_decompress(ctx, out.data() + out_at, &out_n, stored.data() + in_at, &in_n, nullptr);
      if (LZ4F_isError(r)) {
        LZ4F_freeDecompressionContext(ctx);
        throw std::runtime_error(LZ4F_getErrorName(r));
      }
      in_at += in_n;
      out_at += out_n;
      if (r == 0 || (in_n == 0 && out_n == 0)) break;
    }
    LZ4F_freeDecompressionContext(ctx);
    out.resize(out_at);
    return out;
  }
  return stored;
}

// Records which threads appended to the files it creates.
class ThreadRecordingFs final : public FileSystemWrapper {
 public:
  ThreadRecordingFs() : FileSystemWrapper(default_file_system()) {}
  std::unique_ptr<WritableFile> create_exclusive(const fs::path& p) override {
    return std::make_unique<File>(*this, FileSystemWrapper::create_exclusive(p));
  }
  std::set<std::thread::id> appenders() const {
    std::lock_guard lock(mu_);
    return appenders_;
  }

 private:
  class File final : public WritableFileWrapper {
   public:
    File(ThreadRecordingFs& owner, std::unique_ptr<WritableFile> target)
        : WritableFileWrapper(std::move(target)), owner_(owner) {}
    void append(std::span<const std::byte> d) override {
      {
        std::lock_guard lock(owner_.mu_);
        owner_.appenders_.insert(std::this_thread::get_id());
      }
      WritableFileWrapper::append(d);
    }

   private:
    ThreadRecordingFs& owner_;
  };

  mutable std::mutex mu_;
  std::set<std::thread::id> appenders_;
};

const SnapshotInfo kInfo{"raw-test", 4, DistanceMetric::Euclidean, 0, 7};

// A small snapshot at `path`, for a failing save to leave as it was: its bytes.
Buf save_previous(const fs::path& path, std::uint32_t seed) {
  const Buf payload = make_payload(1000, seed);
  write_snapshot(default_file_system(), path, kInfo, Compression::none(), true,
                 [&](PayloadWriter& w) { w.write(payload.data(), payload.size()); });
  return test::read_file(path);
}

struct Codec {
  const char* name;
  Compression compression;
};

class SnapshotWriterStream : public ::testing::TestWithParam<Codec> {};

TEST_P(SnapshotWriterStream, StoredBytesAreThePayloadCompressedInOrder) {
  test::TempDir dir;
  const fs::path path = dir / "s.iqdb";
  const Buf payload = make_payload(std::size_t{24} << 20, 11);
  ThreadRecordingFs recording;
  const FileHeader h = write_snapshot(recording, path, kInfo, GetParam().compression, true,
                                      [&](PayloadWriter& w) { write_in_pieces(w, payload, 12); });

  const Buf file = test::read_file(path);
  ASSERT_EQ(file.size(), h.payload_offset + h.stored_len);
  const Buf stored(file.begin() + static_cast<std::ptrdiff_t>(h.payload_offset), file.end());
  EXPECT_EQ(h.payload_crc, static_cast<std::uint32_t>(crc32_z(0, reinterpret_cast<const Bytef*>(stored.data()),
                                                               stored.size())));
  EXPECT_EQ(h.uncompressed_len, payload.size());
  EXPECT_LT(h.stored_len, payload.size() * 3 / 4);  // compressed, not stored raw
  EXPECT_TRUE(decode_independently(h.compression, stored, h.uncompressed_len) == payload);

  // The library's reader agrees, checksum included.
  Buf back(payload.size());
  read_snapshot(default_file_system(), path, "raw-test", ReadLimits{},
                [&](PayloadReader& r, const FileHeader&) { r.read(back.data(), back.size()); });
  EXPECT_TRUE(back == payload);

  // With a second core, the stored bytes were appended by a thread other
  // than the saving one (the header placeholder by the saving one).
  const std::set<std::thread::id> appenders = recording.appenders();
  if (std::thread::hardware_concurrency() > 1) {
    EXPECT_EQ(appenders.size(), 2u);
    EXPECT_EQ(appenders.count(std::this_thread::get_id()), 1u);
  } else {
    EXPECT_EQ(appenders, std::set<std::thread::id>{std::this_thread::get_id()});
  }
}

// An append that fails on the writer thread fails the save with that
// error: the previous file stays, no temporary is left, and nothing is
// appended after the failure.
TEST_P(SnapshotWriterStream, AppendFailingOnTheWriterThreadFailsTheSave) {
  test::TempDir dir;
  const fs::path path = dir / "s.iqdb";
  const Buf before = save_previous(path, 1);

  const Buf payload = make_payload(std::size_t{24} << 20, 21);
  for (const std::uint64_t nth : {2u, 3u, 5u}) {  // the 1st append is the header placeholder
    SCOPED_TRACE("append " + std::to_string(nth) + " fails");
    test::FaultFs faulty;
    faulty.arm(test::Fault::fail({test::OpKind::Append}, nth, ENOSPC));
    try {
      write_snapshot(faulty, path, kInfo, GetParam().compression, true,
                     [&](PayloadWriter& w) { write_in_pieces(w, payload, 22); });
      ADD_FAILURE() << "save succeeded";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Io) << e.what();
      EXPECT_EQ(e.sys_errno(), ENOSPC) << e.what();
      EXPECT_FALSE(e.path().empty()) << e.what();
    }
    EXPECT_EQ(faulty.fired(), 1u);
    std::size_t appends = 0, appends_after = 0;
    bool failed = false;
    for (const test::FsOp& op : faulty.log()) {
      if (op.kind != test::OpKind::Append) continue;
      ++appends;
      if (failed) ++appends_after;
      if (op.injected) failed = true;
    }
    EXPECT_EQ(appends, nth);
    EXPECT_EQ(appends_after, 0u);
    EXPECT_TRUE(test::read_file(path) == before);
    EXPECT_EQ(dir.entries(), std::vector<std::string>{"s.iqdb"});
  }
}

// The body failing while the writer thread has buffers in hand: the body's
// own exception reaches the caller, the writer is stopped and joined, the
// previous file stays and no temporary is left.
TEST_P(SnapshotWriterStream, BodyFailingWhileTheWriterRunsLeavesThePreviousFile) {
  test::TempDir dir;
  const fs::path path = dir / "s.iqdb";
  const Buf before = save_previous(path, 2);

  const Buf payload = make_payload(std::size_t{16} << 20, 31);
  EXPECT_THROW(write_snapshot(default_file_system(), path, kInfo, GetParam().compression, true,
                              [&](PayloadWriter& w) {
                                write_in_pieces(w, payload, 32);
                                throw std::runtime_error("the index failed half way");
                              }),
               std::runtime_error);
  EXPECT_TRUE(test::read_file(path) == before);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"s.iqdb"});
}

INSTANTIATE_TEST_SUITE_P(EachCodec, SnapshotWriterStream,
                         ::testing::Values(Codec{"zstd", Compression::zstd(1)}, Codec{"lz4", Compression::lz4()},
                                           Codec{"zstd_x2", Compression::zstd(3, 2)}),
                         [](const ::testing::TestParamInfo<Codec>& i) { return std::string(i.param.name); });

// A compressed index round trip through the public API, large enough for
// the writer thread: what was inserted is what loads.
TEST(SnapshotWriterIndex, CompressedFlatIndexRoundTrips) {
  test::TempDir dir;
  constexpr std::uint64_t kN = 30'000, kDim = 64;  // 7.7 MB of vectors
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::vector<float>> rows(kN, std::vector<float>(kDim));
  FlatIndex index(kDim, DistanceMetric::Euclidean);
  for (std::uint64_t i = 0; i < kN; ++i) {
    for (float& x : rows[i]) x = normal(rng);
    if (i % 1000 == 0) {
      index.insert(i * 7 + 1, rows[i], Metadata{{"i", Value(static_cast<std::int64_t>(i))}});
    } else {
      index.insert(i * 7 + 1, rows[i]);
    }
  }
  for (const Compression c : {Compression::zstd(), Compression::lz4()}) {
    PersistConfig cfg(dir / "f.iqdb");
    cfg.compression = c;
    {
      auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(index), cfg);
      db.save();
    }
    auto loaded = PersistedIndex<FlatIndex>::load(cfg);
    ASSERT_EQ(loaded.index().size(), kN);
    for (std::uint64_t i = 0; i < kN; i += 997) {
      const std::span<const float> v = loaded.index().get(i * 7 + 1);
      ASSERT_EQ(v.size(), kDim);
      EXPECT_TRUE(std::equal(v.begin(), v.end(), rows[i].begin())) << i;
    }
    const Metadata* m = loaded.index().metadata(VectorId(std::uint64_t{5000} * 7 + 1));
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(*m, (Metadata{{"i", Value(std::int64_t{5000})}}));
  }
}

}  // namespace
}  // namespace iqdb::persist
