// The zstd window: a frame may ask for a window of up to 2^31 bytes whatever
// the payload it holds. The reader must (a) read every frame the reference
// can write — a streaming encoder at levels 20-22 declares a 2^27-byte window
// and no content size, even for a small payload — and (b) never let a tiny
// hostile file make it allocate such a window (fuzz finding `zstd-window`,
// docs/reliability/fuzzing.md). The frames here are made with libzstd
// directly, the headers byte by byte from docs/FORMAT.md.
#include <gtest/gtest.h>
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

#include <cstring>
#include <iqdb/persist.hpp>
#include <vector>

#include "support/alloc_guard.hpp"
#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

using Bytes = std::vector<std::byte>;

template <class T>
void put(Bytes& b, T v) {
  const auto* p = reinterpret_cast<const std::byte*>(&v);
  b.insert(b.end(), p, p + sizeof v);
}

// The flat payload (docs/FORMAT.md, "The flat payload") of `count` vectors
// of `dim` floats, ids 0..count-1, no metadata; vector i is vecs(i).
template <class F>
Bytes flat_payload(std::uint64_t dim, std::uint64_t count, F vecs) {
  Bytes b;
  put<std::uint32_t>(b, 1);
  put<std::uint64_t>(b, dim);
  put<std::uint8_t>(b, 2);  // Euclidean
  put<std::uint64_t>(b, count);
  put<std::uint8_t>(b, 0);  // every id a u64
  for (std::uint64_t i = 0; i < count; ++i) put<std::uint64_t>(b, i);
  put<std::uint64_t>(b, 0);  // no metadata
  for (std::uint64_t i = 0; i < count; ++i) {
    for (std::uint64_t j = 0; j < dim; ++j) put<float>(b, vecs(i, j));
  }
  return b;
}

// A reference version-2 snapshot: header, CRC over the rest, preamble
// (scheme 1 = zstd, uncompressed_len), the frame.
Bytes v2_snapshot(std::uint64_t dim, std::uint64_t count, std::uint64_t uncompressed_len, const Bytes& frame) {
  Bytes region;
  put<std::uint8_t>(region, 1);
  put<std::uint64_t>(region, uncompressed_len);
  region.insert(region.end(), frame.begin(), frame.end());
  Bytes b;
  for (char c : std::string("IQDBPRST")) b.push_back(static_cast<std::byte>(c));
  put<std::uint32_t>(b, 2);
  put<std::uint64_t>(b, 4);
  for (char c : std::string("flat")) b.push_back(static_cast<std::byte>(c));
  put<std::uint64_t>(b, dim);
  put<std::uint8_t>(b, 2);
  put<std::uint64_t>(b, count);
  put<std::uint32_t>(b, checksum::compute(region.data(), region.size()));
  b.insert(b.end(), region.begin(), region.end());
  return b;
}

// What a streaming encoder writes when it is fed the input in pieces: no
// content size in the frame header, the level's full window.
Bytes zstd_streamed(const Bytes& in, int level, int window_log = 0, bool long_distance = false) {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level);
  if (window_log != 0) ZSTD_CCtx_setParameter(c, ZSTD_c_windowLog, window_log);
  if (long_distance) ZSTD_CCtx_setParameter(c, ZSTD_c_enableLongDistanceMatching, 1);
  Bytes out(ZSTD_compressBound(in.size()) + 1024);
  ZSTD_outBuffer o{out.data(), out.size(), 0};
  const std::size_t piece = 4096;
  for (std::size_t at = 0; at < in.size(); at += piece) {
    ZSTD_inBuffer i{in.data() + at, std::min(piece, in.size() - at), 0};
    while (i.pos < i.size) EXPECT_FALSE(ZSTD_isError(ZSTD_compressStream2(c, &o, &i, ZSTD_e_continue)));
  }
  ZSTD_inBuffer none{nullptr, 0, 0};
  std::size_t r = 0;
  do {
    r = ZSTD_compressStream2(c, &o, &none, ZSTD_e_end);
    EXPECT_FALSE(ZSTD_isError(r));
  } while (r != 0 && !ZSTD_isError(r));
  ZSTD_freeCCtx(c);
  out.resize(o.pos);
  return out;
}

ZSTD_frameHeader frame_header(const Bytes& frame) {
  ZSTD_frameHeader fh{};
  EXPECT_EQ(ZSTD_getFrameHeader(&fh, frame.data(), frame.size()), 0u);
  return fh;
}

using test::write_file;

float value(std::uint64_t i, std::uint64_t j) { return static_cast<float>((i * 31 + j * 7) % 1000) * 0.25f; }

void expect_loads_as(const std::filesystem::path& p, std::uint64_t dim, std::uint64_t count,
                     float (*vecs)(std::uint64_t, std::uint64_t)) {
  const auto db = PersistedIndex<FlatIndex>::load(PersistConfig(p));
  ASSERT_EQ(db.index().size(), count);
  for (std::uint64_t i = 0; i < count; i += std::max<std::uint64_t>(1, count / 50)) {
    const auto v = db.index().get(VectorId(i));
    ASSERT_EQ(v.size(), dim);
    for (std::uint64_t j = 0; j < dim; ++j) ASSERT_EQ(v[j], vecs(i, j)) << "vector " << i << " float " << j;
  }
}

TEST(ZstdWindow, ReadsAReferenceUltraLevelFrameOfASmallPayload) {
  test::TempDir dir;
  const Bytes payload = flat_payload(8, 100, value);
  const Bytes frame = zstd_streamed(payload, 22);
  const ZSTD_frameHeader fh = frame_header(frame);
  ASSERT_EQ(fh.frameContentSize, ZSTD_CONTENTSIZE_UNKNOWN) << "the fixture must not declare its content size";
  ASSERT_EQ(fh.windowSize, std::uint64_t{1} << 27) << "the fixture must ask for the level-22 window";
  write_file(dir / "ultra.iqdb", v2_snapshot(8, 100, payload.size(), frame));
  expect_loads_as(dir / "ultra.iqdb", 8, 100, value);
}

// Repeats at a distance of ~9 MiB: decodable only with a window above the
// reader's 8 MiB streaming window, so this takes the whole-payload path for
// real (the frame refers back past what a streaming window would hold).
float repeating(std::uint64_t i, std::uint64_t j) { return value(i % 2300, j); }

TEST(ZstdWindow, ReadsAFrameWhoseMatchesReachFurtherThanTheStreamingWindow) {
  test::TempDir dir;
  const std::uint64_t dim = 1024, count = 4000;  // 16 MiB of floats; period 2300 vectors = 9.0 MiB
  const Bytes payload = flat_payload(dim, count, repeating);
  const Bytes frame = zstd_streamed(payload, 1, 27, /*long_distance=*/true);
  ASSERT_LT(frame.size(), payload.size() / 2) << "the long-distance matches were not found";
  ASSERT_EQ(frame_header(frame).windowSize, std::uint64_t{1} << 27);
  write_file(dir / "far.iqdb", v2_snapshot(dim, count, payload.size(), frame));
  expect_loads_as(dir / "far.iqdb", dim, count, repeating);
  // The streaming path alone could not have read it: the same frame with a
  // window capped at 2^23 fails in libzstd itself.
  ZSTD_DCtx* d = ZSTD_createDCtx();
  ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, 23);
  Bytes out(1 << 20);
  ZSTD_inBuffer in{frame.data(), frame.size(), 0};
  ZSTD_outBuffer o{out.data(), out.size(), 0};
  EXPECT_TRUE(ZSTD_isError(ZSTD_decompressStream(d, &o, &in)));
  ZSTD_freeDCtx(d);
}

// A payload above 8 MiB, where levels 20-22 would pick windows of 2^25-2^27.
TEST(ZstdWindow, TheLibraryWritesFramesWithinTheStreamingWindowAtEveryLevel) {
  test::TempDir dir;
  const std::uint64_t dim = 1024, count = 2300;  // 9 MiB of floats
  FlatIndex index(dim, DistanceMetric::Euclidean);
  for (std::uint64_t i = 0; i < count; ++i) {
    std::vector<float> v(dim);
    for (std::uint64_t j = 0; j < dim; ++j) v[j] = value(i, j);
    index.insert(i, v);
  }
  for (int level : {1, 20, 22}) {
    SCOPED_TRACE(level);
    PersistConfig cfg(dir / ("l" + std::to_string(level) + ".iqdb"));
    cfg.compression = Compression::zstd(level);
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(index), cfg);
    const FileHeader h = db.save();
    // Find the frame after the header and check the window it declares.
    const Bytes all = test::read_file(cfg.path);
    ASSERT_GT(all.size(), h.payload_offset);
    const Bytes frame(all.begin() + static_cast<std::ptrdiff_t>(h.payload_offset), all.end());
    EXPECT_LE(frame_header(frame).windowSize, std::uint64_t{1} << 23);
    expect_loads_as(cfg.path, dim, count, value);
  }
}

// The fuzz finding: a valid header and a 10-byte frame asking for a 2^27
// window with one 1-byte raw block, while the header declares 1 byte of
// payload. Loading must fail (the payload is not a flat index) with a typed
// error, in a process whose address space is capped far below 128 MiB more.
TEST(ZstdWindow, AHostileWindowCostsNoMoreThanTheDeclaredPayload) {
  test::TempDir dir;
  for (const int window_log : {27, 31}) {
    SCOPED_TRACE(window_log);
    Bytes frame;
    put<std::uint32_t>(frame, 0xFD2FB528u);                            // magic
    put<std::uint8_t>(frame, 0x00);                                      // FHD: no content size, not single segment
    put<std::uint8_t>(frame, static_cast<std::uint8_t>((window_log - 10) << 3));  // window descriptor
    put<std::uint8_t>(frame, 0x09);  // block header: last, raw, size 1 (3 bytes LE: 1 << 3 | 0 << 1 | 1)
    put<std::uint8_t>(frame, 0x00);
    put<std::uint8_t>(frame, 0x00);
    put<std::uint8_t>(frame, 0x42);  // the byte
    ASSERT_EQ(frame_header(frame).windowSize, std::uint64_t{1} << window_log);
    const auto path = dir / ("hostile" + std::to_string(window_log) + ".iqdb");
    write_file(path, v2_snapshot(8, 1, 1, frame));
    const test::ChildOutcome r = test::run_capped(std::size_t{32} << 20, [&] {
      try {
        (void)PersistedIndex<FlatIndex>::load(PersistConfig(path));
        return 1;  // loaded: wrong
      } catch (const PersistError& e) {
        return e.kind() == ErrorKind::InvalidPayload || e.kind() == ErrorKind::TruncatedPayload ? 0 : 2;
      }
    });
    EXPECT_TRUE(r.exited && r.code == 0) << r.describe();
  }
}

}  // namespace
}  // namespace iqdb::persist
