// Snapshot round trips: FlatIndex -> PersistedIndex::save -> load gives the
// same index (ids, vector bits, metadata, storage order) and the same search
// results, under every compression and metric; the header says what the
// index is. The expected payload length is computed here from the flat
// payload layout (u32 version, u64 dim, u8 metric, u64 n, u8 id encoding,
// ids, u64 metadata count, metadata records, n*dim f32).
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <bit>
#include <cstring>
#include <filesystem>
#include <iqdb/persist.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

const std::vector<DistanceMetric> kMetrics = {DistanceMetric::Cosine, DistanceMetric::DotProduct,
                                              DistanceMetric::Euclidean, DistanceMetric::Manhattan,
                                              DistanceMetric::Hamming};

struct NamedCompression {
  const char* name;
  Compression compression;
  CompressionScheme scheme;  // what the header must say
};
const std::vector<NamedCompression> kCompressions = {
    {"none", Compression::none(), CompressionScheme::None},
    {"zstd1", Compression::zstd(1), CompressionScheme::Zstd},
    {"zstd3", Compression::zstd(3), CompressionScheme::Zstd},
    {"zstd19", Compression::zstd(19), CompressionScheme::Zstd},
    {"lz4", Compression::lz4(), CompressionScheme::Lz4Frame},
    // zstd's own worker threads: another encoder, the same format.
    {"zstd3x2", Compression::zstd(3, 2), CompressionScheme::Zstd},
};

// v3 header: magic 8, version, header_len, required_flags, optional_flags,
// tag_len (u32 each), tag, dim u64, metric u8, compression u8, n_vectors,
// last_lsn, uncompressed_len, stored_len (u64 each), payload_crc, header_crc (u32).
constexpr std::uint64_t kV3HeaderFixedBytes = 8 + 5 * 4 + 8 + 1 + 1 + 4 * 8 + 4 + 4;

// ---------------------------------------------------------------- model of the payload size

std::uint64_t value_bytes(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::String:
      return 4 + v.as_string().size();
    case Value::Kind::Int:
      return 8;
    case Value::Kind::Float:
      return 8;
    case Value::Kind::Bool:
      return 1;
    case Value::Kind::Null:
      return 0;
  }
  return 0;
}

std::uint64_t expected_payload_len(const FlatIndex& index) {
  std::uint64_t len = 4 + 8 + 1 + 8 + 1;
  bool all_u64 = true;
  for (std::size_t r = 0; r < index.size(); ++r) all_u64 = all_u64 && index.id_at(r).is_u64();
  for (std::size_t r = 0; r < index.size(); ++r) {
    const VectorId& id = index.id_at(r);
    len += all_u64 ? 8 : (id.is_u64() ? 1 + 8 : 1 + 8 + id.as_bytes().size());
  }
  len += 8;
  for (std::size_t r = 0; r < index.size(); ++r) {
    const Metadata* m = index.metadata_at(r);
    if (m == nullptr) continue;
    len += 8 + 4;
    for (const auto& [key, value] : *m) len += 4 + key.size() + 1 + value_bytes(value);
  }
  // Flat payload version 2: pad_len u32 and zeros, so that the vectors start
  // at a multiple of 4096 in the file (header: 78 + 4 bytes for "flat").
  len += 4;
  len += (4096 - (78 + 4 + len) % 4096) % 4096;
  return len + index.size() * index.dim() * 4;
}

// ---------------------------------------------------------------- comparisons

// Same rows in the same order, vectors bit for bit, same metadata.
::testing::AssertionResult same_index(const FlatIndex& a, const FlatIndex& b) {
  if (a.dim() != b.dim()) return ::testing::AssertionFailure() << "dim " << a.dim() << " vs " << b.dim();
  if (a.metric() != b.metric()) return ::testing::AssertionFailure() << "metric differs";
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "size " << a.size() << " vs " << b.size();
  for (std::size_t r = 0; r < a.size(); ++r) {
    if (!(a.id_at(r) == b.id_at(r))) return ::testing::AssertionFailure() << "id at row " << r;
    const auto x = a.vector_at(r), y = b.vector_at(r);
    if (std::memcmp(x.data(), y.data(), x.size_bytes()) != 0)
      return ::testing::AssertionFailure() << "vector bits at row " << r;
    const Metadata* m = a.metadata_at(r);
    const Metadata* n = b.metadata_at(r);
    if ((m == nullptr) != (n == nullptr) || (m != nullptr && *m != *n))
      return ::testing::AssertionFailure() << "metadata at row " << r;
  }
  if (!(a == b)) return ::testing::AssertionFailure() << "operator== disagrees with a row-by-row comparison";
  return ::testing::AssertionSuccess();
}

bool same_hits(const std::vector<SearchHit>& a, const std::vector<SearchHit>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!(a[i].id == b[i].id) ||
        std::bit_cast<std::uint32_t>(a[i].distance) != std::bit_cast<std::uint32_t>(b[i].distance))
      return false;
  }
  return true;
}

// What is wrong with the header of the snapshot of `index` at `path` (empty
// when nothing is). `written` is what save() returned.
std::string header_problems(const FlatIndex& index, const NamedCompression& c, const FileHeader& written,
                            const std::filesystem::path& path) {
  const SnapshotSummary s = inspect_snapshot(default_file_system(), path);
  const FileHeader& h = s.header;
  std::string out;
  const auto check = [&](bool ok, const char* what) {
    if (!ok) out += std::string(what) + "; ";
  };
  check(h.format_version == 3, "format_version");
  check(h.index_type == "flat", "index_type");
  check(h.dim == index.dim(), "dim");
  check(h.metric == index.metric(), "metric");
  check(h.n_vectors == index.size(), "n_vectors");
  check(h.compression == c.scheme, "compression scheme");
  check(h.uncompressed_len == expected_payload_len(index), "uncompressed_len");
  check(h.last_lsn == 0, "last_lsn");
  check(h.payload_offset == kV3HeaderFixedBytes + 4, "payload_offset");  // tag "flat"
  check(s.file_size == std::filesystem::file_size(path), "file_size");
  check(s.file_size == h.payload_offset + h.stored_len, "stored_len vs file size");
  check(c.scheme != CompressionScheme::None || h.stored_len == h.uncompressed_len, "stored_len (no compression)");
  // What save() reports is what the file says.
  check(written.uncompressed_len == h.uncompressed_len && written.stored_len == h.stored_len &&
            written.payload_crc == h.payload_crc && written.header_crc == h.header_crc,
        "save() result differs from the file");
  return out;
}

// Save `index` with `c` to `path`, check the header (problems appended to
// `problems`), load it back and return it.
FlatIndex round_trip(const FlatIndex& index, const NamedCompression& c, const std::filesystem::path& path,
                     std::string& problems) {
  PersistConfig cfg(path);
  cfg.compression = c.compression;
  cfg.fsync_policy = FsyncPolicy::never();  // durability is atomic_save_test's business
  auto db = PersistedIndex<FlatIndex>::open_with(index, cfg);
  const FileHeader written = db.save();
  const std::string p = header_problems(index, c, written, path);
  if (!p.empty()) problems += std::string(c.name) + ": " + p;
  return PersistedIndex<FlatIndex>::load(cfg).index();
}

// ---------------------------------------------------------------- generators

// Finite half-integers most of the time (many ties), sometimes any bit pattern
// (NaN payloads, infinities, denormals, -0) which must survive bit for bit.
rc::Gen<float> gen_float() {
  return rc::gen::weightedOneOf<float>(
      {{4, rc::gen::map(rc::gen::inRange(-16, 17), [](int i) { return static_cast<float>(i) / 2.0f; })},
       {2, rc::gen::arbitrary<float>()},
       {1,
        rc::gen::map(rc::gen::arbitrary<std::uint32_t>(), [](std::uint32_t u) { return std::bit_cast<float>(u); })}});
}

rc::Gen<Value> gen_value() {
  return rc::gen::oneOf(
      // Any bytes, as the code points U+0000..U+00FF in UTF-8 (metadata is UTF-8).
      rc::gen::map(rc::gen::arbitrary<std::string>(),
                   [](const std::string& s) { return Value(test::latin1_to_utf8(s)); }),
      rc::gen::map(rc::gen::arbitrary<std::int64_t>(), [](std::int64_t i) { return Value(i); }),
      rc::gen::map(rc::gen::arbitrary<std::uint64_t>(),
                   [](std::uint64_t u) { return Value(std::bit_cast<double>(u)); }),
      rc::gen::map(rc::gen::arbitrary<bool>(), [](bool b) { return Value(b); }), rc::gen::just(Value()));
}

// Metadata keys are UTF-8: printable ASCII here.
rc::Gen<std::string> gen_key() { return rc::gen::container<std::string>(rc::gen::inRange<char>(32, 127)); }

enum class IdMode { U64, Bytes, Mixed };

// The bulk content does not shrink (each shrink step is a save and a load;
// shrinking n, dim, the metric and the compression is what explains a failure).
// A random FlatIndex with n vectors (unique ids of the given mode), random
// metadata on some rows, and a few erases so storage order is not insertion order.
FlatIndex gen_index(std::uint64_t dim, DistanceMetric metric, std::size_t n, IdMode mode) {
  FlatIndex index(dim, metric);
  std::set<VectorId> used;
  while (index.size() < n) {
    const bool bytes = mode == IdMode::Bytes || (mode == IdMode::Mixed && *rc::gen::arbitrary<bool>());
    const VectorId id = bytes
                            ? VectorId::bytes(*rc::gen::noShrink(rc::gen::nonEmpty(rc::gen::arbitrary<std::string>())))
                            : VectorId(*rc::gen::noShrink(rc::gen::arbitrary<std::uint64_t>()));
    if (!used.insert(id).second) continue;
    const auto vec =
        *rc::gen::noShrink(rc::gen::container<std::vector<float>>(static_cast<std::size_t>(dim), gen_float()));
    std::optional<Metadata> meta;
    if (*rc::gen::inRange(0, 3) == 0) meta = *rc::gen::noShrink(rc::gen::container<Metadata>(gen_key(), gen_value()));
    index.insert(id, vec, std::move(meta));
  }
  const auto erases = *rc::gen::inRange<std::size_t>(0, n / 4 + 1);
  for (std::size_t i = 0; i < erases && index.size() > 1; ++i) {
    const VectorId victim = index.id_at(*rc::gen::inRange<std::size_t>(0, static_cast<std::size_t>(index.size())));
    index.erase(victim);
  }
  return index;
}

// ---------------------------------------------------------------- properties

// One random compression per case (zstd 19 less often: each of its saves
// allocates ~100 MB of tables); the deterministic test below covers every
// (compression, metric) pair. Non-empty indexes here; empty ones have their
// own test.
RC_GTEST_PROP(SnapshotRoundTrip, KeepsIndexAndSearches, ()) {
  const auto dim = *rc::gen::inRange<std::uint64_t>(1, 17);
  const auto metric = *rc::gen::elementOf(kMetrics);
  const auto mode = *rc::gen::element(IdMode::U64, IdMode::Bytes, IdMode::Mixed);
  const auto n = *rc::gen::inRange<std::size_t>(1, 48);
  const NamedCompression c =
      kCompressions[*rc::gen::weightedElement<std::size_t>({{3, 0}, {3, 1}, {3, 2}, {1, 3}, {3, 4}})];
  const FlatIndex index = gen_index(dim, metric, n, mode);
  const auto queries = *rc::gen::noShrink(rc::gen::container<std::vector<std::vector<float>>>(
      3, rc::gen::container<std::vector<float>>(static_cast<std::size_t>(dim), gen_float())));
  const auto k = *rc::gen::inRange<std::size_t>(1, n + 3);
  RC_TAG(c.name);

  test::TempDir dir;
  std::string problems;
  const FlatIndex loaded = round_trip(index, c, dir / "v.iqdb", problems);
  if (!problems.empty()) RC_FAIL(problems);
  const auto same = same_index(index, loaded);
  if (!same) RC_FAIL(same.message());
  for (const auto& q : queries) RC_ASSERT(same_hits(index.search(q, k), loaded.search(q, k)));
  RC_ASSERT(dir.entries() == (std::vector<std::string>{"v.iqdb", "v.iqdb.lock"}));  // save holds the writer lock
}

// Every (compression, metric) pair at least once, deterministically.
TEST(SnapshotRoundTrip, EveryCompressionTimesEveryMetric) {
  test::TempDir dir;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1, 1);
  for (DistanceMetric metric : kMetrics) {
    FlatIndex index(6, metric);
    for (std::uint64_t i = 0; i < 40; ++i) {
      std::vector<float> v(6);
      for (float& f : v) f = u(rng);
      if (i % 3 == 0) {
        index.insert(VectorId::bytes("id-" + std::to_string(i)), v, Metadata{{"i", Value(i)}, {"s", Value("x")}});
      } else {
        index.insert(i, v);
      }
    }
    std::vector<float> q(6);
    for (float& f : q) f = u(rng);
    for (const NamedCompression& c : kCompressions) {
      SCOPED_TRACE(std::string(c.name) + " " + std::string(to_string(metric)));
      std::string problems;
      const FlatIndex loaded = round_trip(index, c, dir / "m.iqdb", problems);
      EXPECT_EQ(problems, "");
      EXPECT_TRUE(same_index(index, loaded));
      EXPECT_TRUE(same_hits(index.search(q, 10), loaded.search(q, 10)));
    }
  }
}

TEST(SnapshotRoundTrip, EmptyIndex) {
  test::TempDir dir;
  for (std::uint64_t dim : {1u, 4u, 5u, 1000u}) {
    for (DistanceMetric metric : {dim % 2 == 0 ? DistanceMetric::Cosine : DistanceMetric::Hamming}) {
      for (const NamedCompression& c : kCompressions) {
        SCOPED_TRACE(std::string(c.name) + " dim " + std::to_string(dim));
        const FlatIndex empty(dim, metric);
        try {
          std::string problems;
          const FlatIndex loaded = round_trip(empty, c, dir / "e.iqdb", problems);
          EXPECT_EQ(problems, "");
          EXPECT_TRUE(same_index(empty, loaded));
          EXPECT_TRUE(loaded.search(std::vector<float>(dim, 1.0f), 5).empty());
        } catch (const PersistError& e) {
          ADD_FAILURE() << e.what();
        }
      }
    }
  }
}

TEST(SnapshotRoundTrip, ByteIdsOnly) {
  test::TempDir dir;
  FlatIndex index(3, DistanceMetric::Manhattan);
  const std::vector<std::string> ids = {std::string("\0", 1), "a", std::string(1000, 'x'),
                                        "\xff\xfe",           "0", "id with spaces"};
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const float f = static_cast<float>(i);
    index.insert(VectorId::bytes(ids[i]), std::vector<float>{f, -f, f * f},
                 i % 2 == 0 ? std::optional<Metadata>(Metadata{{"", Value()}, {"k", Value(-1.5)}}) : std::nullopt);
  }
  for (const NamedCompression& c : kCompressions) {
    SCOPED_TRACE(c.name);
    std::string problems;
    const FlatIndex loaded = round_trip(index, c, dir / "b.iqdb", problems);
    EXPECT_EQ(problems, "");
    EXPECT_TRUE(same_index(index, loaded));
    for (const std::string& id : ids) EXPECT_TRUE(loaded.contains(VectorId::bytes(id)));
    EXPECT_FALSE(loaded.contains(0));  // the byte id "0" is not the u64 id 0
  }
}

// ---------------------------------------------------------------- a larger index

// 50k x 32 floats (6.4 MB of vectors, mostly incompressible): more than one
// 4 MiB writer buffer before and after compression, so the streaming writer
// and reader cross buffer boundaries. Metadata on every 97th row, a few
// erases so storage order is not insertion order.
TEST(SnapshotRoundTrip, LargeIndexStreamsAcrossBuffers) {
  constexpr std::uint64_t kN = 50000, kDim = 32;
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> u(-1, 1);
  FlatIndex index(kDim, DistanceMetric::Euclidean);
  std::vector<float> v(kDim);
  for (std::uint64_t i = 0; i < kN; ++i) {
    for (float& f : v) f = u(rng);
    index.insert(
        i * 7919 + 3, v,
        i % 97 == 0 ? std::optional<Metadata>(Metadata{{"row", Value(i)}, {"tag", Value("abcd")}}) : std::nullopt);
  }
  for (std::uint64_t i = 0; i < kN; i += 1001) index.erase(i * 7919 + 3);

  std::vector<float> q(kDim);
  for (float& f : q) f = u(rng);
  test::TempDir dir;
  for (const NamedCompression& c : {kCompressions[0], kCompressions[2], kCompressions[4], kCompressions[5]}) {
    SCOPED_TRACE(c.name);
    std::string problems;
    const FlatIndex loaded = round_trip(index, c, dir / "big.iqdb", problems);
    EXPECT_EQ(problems, "");
    EXPECT_TRUE(same_index(index, loaded));
    EXPECT_TRUE(same_hits(index.search(q, 20), loaded.search(q, 20)));
    const SnapshotSummary s = inspect_snapshot(default_file_system(), dir / "big.iqdb");
    EXPECT_GT(s.header.stored_len, std::uint64_t{4} << 20);  // really more than one buffer
  }
}

// Compression threads outside 1..16 are refused before anything is
// written; an existing snapshot stays as it was.
TEST(SnapshotRoundTrip, CompressionThreadsOutOfRangeAreRefused) {
  test::TempDir dir;
  const auto path = dir / "t.iqdb";
  FlatIndex index(4, DistanceMetric::Euclidean);
  index.insert(1, std::vector<float>{1, 2, 3, 4});
  {
    PersistConfig cfg(path);
    cfg.compression = Compression::zstd(3, 2);
    PersistedIndex<FlatIndex>::open_with(FlatIndex(index), cfg).save();
  }
  const auto before = test::read_file(path);
  for (const int threads : {0, -1, Compression::kMaxThreads + 1}) {
    PersistConfig cfg(path);
    cfg.compression = Compression::zstd(3, threads);
    EXPECT_EQ(test::error_of([&] { PersistedIndex<FlatIndex>::open_with(FlatIndex(index), cfg).save(); }),
              ErrorKind::InvalidArgument)
        << threads;
    EXPECT_EQ(test::read_file(path), before) << threads;
  }
  PersistConfig ok(path);
  ok.compression = Compression::zstd(3, Compression::kMaxThreads);
  EXPECT_NO_THROW(PersistedIndex<FlatIndex>::open_with(FlatIndex(index), ok).save());
  EXPECT_TRUE(PersistedIndex<FlatIndex>::load(PersistConfig(path)).index() == index);
}

}  // namespace
}  // namespace iqdb::persist
