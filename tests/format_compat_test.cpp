// Format compatibility: snapshot files built byte by byte from the reference
// format facts (docs/FORMAT.md for versions 1 and 2; the
// documented v3 layout of src/format/header.cpp) by support/format_builders.hpp,
// with CRCs from zlib and compressed payloads from libzstd / liblz4
// themselves. Every file must parse to exactly the fields put in and load to
// exactly the payload put in; every error kind is produced by a file crafted
// to cause it.
#include <gtest/gtest.h>
#include <lz4frame.h>
#include <zstd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "iqdb/persist.hpp"
#include "format/header.hpp"
#include "support/format_builders.hpp"
#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

namespace fsx = std::filesystem;
using test::Bytes;
using Buf = std::vector<std::byte>;

// ------------------------------------------------------------------ models (support/format_builders.hpp)

using test::fix_v3_header_crc;
using test::flat_payload;
using test::HeaderFields;
using test::lz4_block;
using test::v12_header;
using test::v1_file;
using test::v2_file;
using test::v2_region;
using test::v3_file;
using test::V3Fields;
using test::zcrc;
using test::zstd_stream;

// ------------------------------------------------------------------ compressors (the libraries themselves)

// zstd one-shot: the frame header carries the content size.
Buf zstd_oneshot(const Buf& in) {
  Buf out(ZSTD_compressBound(in.size()));
  const std::size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), 5);
  EXPECT_FALSE(ZSTD_isError(n));
  out.resize(n);
  EXPECT_EQ(ZSTD_getFrameContentSize(out.data(), out.size()), static_cast<unsigned long long>(in.size()));
  return out;
}

// One standard LZ4 frame (v3 scheme 3).
Buf lz4_frame(const Buf& in) {
  Buf out(LZ4F_compressFrameBound(in.size(), nullptr));
  const std::size_t n = LZ4F_compressFrame(out.data(), out.size(), in.data(), in.size(), nullptr);
  EXPECT_FALSE(LZ4F_isError(n));
  out.resize(n);
  return out;
}

// Compressible but not trivial bytes.
Buf sample_payload(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Buf out(n);
  for (std::size_t i = 0; i < n; ++i) {
    out[i] = static_cast<std::byte>(rng() % 7 == 0 ? rng() & 0xff : (i / 13) & 0x0f);
  }
  return out;
}

// ------------------------------------------------------------------ reading

// Read the payload through read_snapshot in pieces of varying size.
Buf read_payload(const fsx::path& path, std::string_view expected_type = {}, FileHeader* header = nullptr) {
  Buf got;
  const FileHeader h = read_snapshot(default_file_system(), path, expected_type, ReadLimits{},
                                     [&](PayloadReader& r, const FileHeader&) {
                                       got.resize(static_cast<std::size_t>(r.remaining()));
                                       std::size_t pos = 0, step = 1;
                                       while (pos < got.size()) {
                                         const std::size_t n = std::min(step, got.size() - pos);
                                         EXPECT_EQ(r.remaining(), got.size() - pos);
                                         r.read(got.data() + pos, n);
                                         pos += n;
                                         step = step * 3 + 1;
                                       }
                                       EXPECT_EQ(r.remaining(), 0u);
                                     });
  if (header != nullptr) *header = h;
  return got;
}

// Assert that `f` throws a PersistError of `kind` that names `path`.
std::optional<PersistError> expect_error(const std::function<void()>& f, ErrorKind kind, const fsx::path& path,
                                         const std::string& where) {
  try {
    f();
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), kind) << where << ": got " << to_string(e.kind()) << ": " << e.what();
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << where << ": " << e.what();
    EXPECT_EQ(e.path(), path) << where;
    return e;
  }
  ADD_FAILURE() << where << ": no error, expected " << to_string(kind);
  return std::nullopt;
}

std::function<void()> raw_load(const fsx::path& path) {
  return [path] { (void)read_payload(path); };
}
std::function<void()> flat_load(const fsx::path& path) {
  return [path] { (void)PersistedIndex<FlatIndex>::load(PersistConfig(path)); };
}
std::function<void()> inspect(const fsx::path& path) {
  return [path] { (void)inspect_snapshot(default_file_system(), path); };
}

// A second index type, to load a flat file as something else.
struct OtherIndex {
  static constexpr std::string_view index_type = "other";
  std::uint64_t dim_ = 1;

  void insert(const VectorId&, std::span<const float>, std::optional<Metadata>) {}
  void erase(const VectorId&) {}
  bool contains(const VectorId&) const { return false; }
  std::uint64_t size() const { return 0; }
  std::uint64_t dim() const { return dim_; }
  DistanceMetric metric() const { return DistanceMetric::Euclidean; }
  void save_to(PayloadWriter& w) const { w.write_u64(dim_); }
  static OtherIndex load_from(PayloadReader& r) { return OtherIndex{r.read_u64()}; }
};
static_assert(Persistable<OtherIndex>);

// ------------------------------------------------------------------ valid v1 / v2 / v3 files

struct CompatCase {
  std::string name;
  std::uint32_t version;
  std::uint8_t scheme;  // v2/v3 on-disk scheme
  std::function<Buf(const Buf&)> compress;
  std::size_t payload_len;
  HeaderFields fields;
};

void PrintTo(const CompatCase& c, std::ostream* os) { *os << c.name; }

Buf identity(const Buf& b) { return b; }

std::vector<CompatCase> compat_cases() {
  const HeaderFields flat{"flat", 16, 0, 123};
  const HeaderFields hnsw{"hnsw", 7, 4, 0};
  const HeaderFields utf8{"ivf-\xC3\xA9t\xC3\xA9-\xF0\x9F\x98\x80", 0xFFFFFFFFFFULL, 3, ~std::uint64_t{0}};
  const HeaderFields empty_tag{"", 1, 1, 1};
  const auto zs = [](const Buf& b) { return zstd_stream(b); };
  const auto zsc = [](const Buf& b) { return zstd_stream(b, true); };
  std::vector<CompatCase> cases = {
      {"v1_empty", 1, 0, identity, 0, flat},
      {"v1_small", 1, 0, identity, 1, hnsw},
      {"v1_medium", 1, 0, identity, 5000, utf8},
      {"v1_empty_tag", 1, 0, identity, 100, empty_tag},
      {"v1_large", 1, 0, identity, 3'000'000, flat},
      {"v2_none_empty", 2, 0, identity, 0, flat},
      {"v2_none", 2, 0, identity, 4097, utf8},
      {"v2_zstd_stream_empty", 2, 1, zs, 0, flat},
      {"v2_zstd_stream", 2, 1, zs, 300'000, hnsw},
      {"v2_zstd_stream_large", 2, 1, zs, 3'000'000, flat},
      {"v2_zstd_stream_checksum", 2, 1, zsc, 70'000, utf8},
      {"v2_zstd_oneshot", 2, 1, zstd_oneshot, 300'000, flat},
      {"v2_zstd_oneshot_small", 2, 1, zstd_oneshot, 3, empty_tag},
      {"v2_lz4_block_empty", 2, 2, lz4_block, 0, flat},
      {"v2_lz4_block", 2, 2, lz4_block, 300'000, hnsw},
      {"v2_lz4_block_small", 2, 2, lz4_block, 5, utf8},
      {"v3_none", 3, 0, identity, 1000, flat},
      {"v3_zstd_stream", 3, 1, zs, 300'000, hnsw},
      {"v3_zstd_oneshot", 3, 1, zstd_oneshot, 1000, utf8},
      {"v3_lz4_frame", 3, 3, lz4_frame, 300'000, flat},
  };
  return cases;
}

// The file and the header the model says parse_header must return.
struct Built {
  Buf file;
  Buf payload;
  FileHeader want;
};

Built build(const CompatCase& c, std::uint64_t seed) {
  Built b;
  b.payload = sample_payload(c.payload_len, seed);
  const Buf stored = c.compress(b.payload);
  const std::uint64_t fixed = 8 + 4 + 8 + c.fields.tag.size() + 8 + 1 + 8 + 4;  // 41 + N
  FileHeader& w = b.want;
  w.format_version = c.version;
  w.index_type = c.fields.tag;
  w.dim = c.fields.dim;
  w.metric = static_cast<DistanceMetric>(c.fields.metric);
  w.n_vectors = c.fields.n;
  w.compression = static_cast<CompressionScheme>(c.scheme);
  w.uncompressed_len = b.payload.size();
  w.stored_len = stored.size();
  if (c.version == 1) {
    b.file = v1_file(c.fields, b.payload);
    w.payload_crc = zcrc(b.payload);
    w.crc_offset = w.payload_offset = fixed;
  } else if (c.version == 2) {
    b.file = v2_file(c.fields, c.scheme, b.payload.size(), stored);
    w.payload_crc = zcrc(v2_region(c.scheme, b.payload.size(), stored));
    w.crc_offset = fixed;
    w.payload_offset = fixed + 9;
  } else {
    V3Fields v;
    v.f = c.fields;
    v.compression = c.scheme;
    v.last_lsn = 0x0102030405ULL;
    v.optional = 0x10;
    b.file = v3_file(v, b.payload.size(), stored);
    w.payload_crc = zcrc(stored);
    w.last_lsn = v.last_lsn;
    w.optional_flags = v.optional;
    w.crc_offset = w.payload_offset = 78 + c.fields.tag.size();
    w.header_crc = zcrc(b.file.data(), w.payload_offset - 4);
  }
  return b;
}

void expect_header_eq(const FileHeader& got, const FileHeader& want, const std::string& where) {
  EXPECT_EQ(got.format_version, want.format_version) << where;
  EXPECT_EQ(got.index_type, want.index_type) << where;
  EXPECT_EQ(got.dim, want.dim) << where;
  EXPECT_EQ(got.metric, want.metric) << where;
  EXPECT_EQ(got.n_vectors, want.n_vectors) << where;
  EXPECT_EQ(got.payload_crc, want.payload_crc) << where;
  EXPECT_EQ(got.compression, want.compression) << where;
  EXPECT_EQ(got.uncompressed_len, want.uncompressed_len) << where;
  EXPECT_EQ(got.stored_len, want.stored_len) << where;
  EXPECT_EQ(got.required_flags, want.required_flags) << where;
  EXPECT_EQ(got.optional_flags, want.optional_flags) << where;
  EXPECT_EQ(got.last_lsn, want.last_lsn) << where;
  EXPECT_EQ(got.header_crc, want.header_crc) << where;
  EXPECT_EQ(got.crc_offset, want.crc_offset) << where;
  EXPECT_EQ(got.payload_offset, want.payload_offset) << where;
}

class FormatCompat : public ::testing::TestWithParam<CompatCase> {};

TEST_P(FormatCompat, ParsesAndLoadsByteBuiltFile) {
  const CompatCase& c = GetParam();
  const Built b = build(c, c.payload_len * 31 + c.version);
  test::TempDir dir;
  const fsx::path path = dir / (c.name + ".iqdb");
  test::write_file(path, b.file);

  // parse_header on the leading bytes (as read_header would pass them).
  const std::size_t probe = std::min<std::size_t>(b.file.size(), format::HEADER_PROBE_LEN);
  expect_header_eq(format::parse_header(std::span(b.file.data(), probe), b.file.size(), path), b.want,
                   "parse_header");
  // read_header on the open file.
  const auto file = default_file_system().open_read(path);
  expect_header_eq(format::read_header(*file), b.want, "read_header");
  // inspect_snapshot.
  const SnapshotSummary s = inspect_snapshot(default_file_system(), path);
  expect_header_eq(s.header, b.want, "inspect_snapshot");
  EXPECT_EQ(s.file_size, b.file.size());

  // read_snapshot hands the body exactly the payload put in.
  FileHeader h;
  const Buf got = read_payload(path, {}, &h);
  EXPECT_TRUE(got == b.payload) << "payload differs; sizes " << got.size() << " vs " << b.payload.size();
  expect_header_eq(h, b.want, "read_snapshot");
  // With the matching expected type too.
  EXPECT_TRUE(read_payload(path, c.fields.tag) == b.payload);
  // And verify_snapshot accepts the file.
  EXPECT_EQ(verify_snapshot(default_file_system(), path, ReadLimits{}).file_size, b.file.size());
}

INSTANTIATE_TEST_SUITE_P(AllVersions, FormatCompat, ::testing::ValuesIn(compat_cases()),
                         [](const auto& param_info) { return param_info.param.name; });

// A large v1/v2 payload region beyond the header probe: the header is still found.
TEST(FormatCompatLayout, V1StoredLenIsEverythingAfterTheHeader) {
  const HeaderFields f{"t", 2, 2, 0};
  const Buf payload = sample_payload(123, 5);
  const Buf file = v1_file(f, payload);
  const FileHeader h = format::parse_header(file, file.size(), "x.iqdb");
  EXPECT_EQ(h.payload_offset, 42u);
  EXPECT_EQ(h.stored_len, 123u);
  EXPECT_EQ(h.uncompressed_len, 123u);
}

// ------------------------------------------------------------------ a full FlatIndex v2 file

// The flat payload layout (src/index/flat_index.cpp, FlatIndex::save_to) is
// spelled out at test::flat_payload (support/format_builders.hpp).
using Row = test::FlatRow;

std::vector<Row> sample_rows(std::uint64_t dim, std::size_t n, bool byte_ids, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-10.0f, 10.0f);
  std::vector<Row> rows;
  for (std::size_t i = 0; i < n; ++i) {
    Row r{VectorId(std::uint64_t{1000} + i * 7919), {}, std::nullopt};
    if (byte_ids && i % 3 == 1) r.id = VectorId::bytes("id-" + std::to_string(i) + std::string(1, '\0') + "\xff");
    if (byte_ids && i == 0) r.id = VectorId(~std::uint64_t{0});
    for (std::uint64_t d = 0; d < dim; ++d) r.vec.push_back(u(rng));
    if (i % 4 == 0) {
      Metadata m;
      m[""] = Value(static_cast<std::int64_t>(i) - 5);
      m["name"] = Value("row " + std::to_string(i) + " \xC3\xA9");
      m["score"] = Value(0.25 * static_cast<double>(i));
      m["flag"] = Value(i % 8 == 0);
      m["none"] = Value();
      m["empty"] = Value(std::string());
      m["\xE2\x82\xAC"] = Value(std::int64_t{-9'000'000'000'000'000'000});
      r.meta = std::move(m);
    } else if (i % 4 == 2) {
      r.meta = Metadata{};  // present but empty
    }
    rows.push_back(std::move(r));
  }
  return rows;
}

float model_euclidean(const std::vector<float>& a, std::span<const float> b) {
  float s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const float d = a[i] - b[i];
    s += d * d;
  }
  return std::sqrt(s);
}

void expect_index_holds(const FlatIndex& idx, std::uint64_t dim, DistanceMetric metric, const std::vector<Row>& rows,
                        const std::string& where, bool check_search = true) {
  ASSERT_EQ(idx.size(), rows.size()) << where;
  EXPECT_EQ(idx.dim(), dim) << where;
  EXPECT_EQ(idx.metric(), metric) << where;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    ASSERT_TRUE(idx.contains(r.id)) << where << " row " << i;
    const std::span<const float> got = idx.get(r.id);
    ASSERT_EQ(got.size(), dim) << where;
    EXPECT_EQ(std::memcmp(got.data(), r.vec.data(), dim * sizeof(float)), 0) << where << " row " << i;
    EXPECT_EQ(idx.id_at(i), r.id) << where << " storage order";
    const Metadata* m = idx.metadata(r.id);
    if (!r.meta) {
      EXPECT_EQ(m, nullptr) << where << " row " << i;
    } else {
      ASSERT_NE(m, nullptr) << where << " row " << i;
      EXPECT_TRUE(*m == *r.meta) << where << " row " << i;
    }
  }
  EXPECT_FALSE(idx.contains(VectorId(std::uint64_t{3})));
  if (!check_search || metric != DistanceMetric::Euclidean || rows.empty()) return;
  // search(): each stored vector is its own nearest neighbour, and the full
  // ranking matches a brute-force model.
  for (std::size_t q = 0; q < rows.size(); q += 5) {
    const auto hits = idx.search(rows[q].vec, rows.size());
    ASSERT_EQ(hits.size(), rows.size()) << where;
    EXPECT_EQ(hits[0].id, rows[q].id) << where << " query " << q;
    EXPECT_EQ(hits[0].distance, 0.0f) << where;
    std::vector<std::pair<float, std::size_t>> model;
    for (std::size_t i = 0; i < rows.size(); ++i) model.emplace_back(model_euclidean(rows[i].vec, rows[q].vec), i);
    std::sort(model.begin(), model.end());
    for (std::size_t k = 0; k < rows.size(); ++k) {
      EXPECT_EQ(hits[k].id, rows[model[k].second].id) << where << " query " << q << " rank " << k;
      EXPECT_FLOAT_EQ(hits[k].distance, model[k].first) << where;
    }
  }
}

struct FlatCase {
  std::string name;
  std::uint32_t version;
  std::uint8_t scheme;
  bool byte_ids;
  std::size_t n;
};

void PrintTo(const FlatCase& c, std::ostream* os) { *os << c.name; }

class FlatCompat : public ::testing::TestWithParam<FlatCase> {};

TEST_P(FlatCompat, LoadsByteBuiltFlatFile) {
  const FlatCase& c = GetParam();
  constexpr std::uint64_t kDim = 5;
  const std::vector<Row> rows = sample_rows(kDim, c.n, c.byte_ids, c.n + c.scheme);
  const Buf payload = flat_payload(kDim, 2, rows, c.byte_ids);
  const HeaderFields f{"flat", kDim, 2, rows.size()};
  Buf file;
  if (c.version == 1) {
    file = v1_file(f, payload);
  } else {
    Buf stored = payload;
    if (c.scheme == 1) stored = zstd_stream(payload);
    if (c.scheme == 2) stored = lz4_block(payload);
    file = v2_file(f, c.scheme, payload.size(), stored);
  }
  test::TempDir dir;
  PersistConfig cfg(dir / "flat.iqdb");
  test::write_file(cfg.path, file);
  const auto db = PersistedIndex<FlatIndex>::load(cfg);
  expect_index_holds(db.index(), kDim, DistanceMetric::Euclidean, rows, c.name);
}

INSTANTIATE_TEST_SUITE_P(
    AllEncodings, FlatCompat,
    ::testing::Values(FlatCase{"v1_u64_ids", 1, 0, false, 60}, FlatCase{"v1_tagged_ids", 1, 0, true, 60},
                      FlatCase{"v1_one_row", 1, 0, false, 1}, FlatCase{"v2_none_tagged", 2, 0, true, 40},
                      FlatCase{"v2_zstd_u64", 2, 1, false, 500}, FlatCase{"v2_zstd_tagged", 2, 1, true, 500},
                      FlatCase{"v2_lz4_u64", 2, 2, false, 500}, FlatCase{"v2_lz4_tagged", 2, 2, true, 77},
                      // Many rows: the load's id table is filled ahead of
                      // the row being placed (FlatIndex::IdTable::insert_all).
                      FlatCase{"v1_many_u64_ids", 1, 0, false, 5000}, FlatCase{"v1_many_tagged_ids", 1, 0, true, 3001}),
    [](const auto& param_info) { return param_info.param.name; });

// A payload that names one id twice, far apart (a u64 id, and a byte id),
// or in the last two rows, is refused (InvalidPayload), never loaded with one of
// the two rows unreachable.
TEST(FlatCompatDuplicates, AnIdTwiceAnywhereIsRefused) {
  constexpr std::uint64_t kDim = 5;
  struct Dup {
    bool byte_ids;
    std::size_t first, second;
  };
  for (const Dup d : {Dup{false, 5, 3999}, Dup{true, 1, 3001}, Dup{false, 3998, 3999}, Dup{true, 0, 17}}) {
    std::vector<Row> rows = sample_rows(kDim, 4000, d.byte_ids, 7);
    rows[d.second].id = rows[d.first].id;
    const Buf file = v1_file({"flat", kDim, 2, rows.size()}, flat_payload(kDim, 2, rows, d.byte_ids));
    test::TempDir dir;
    PersistConfig cfg(dir / "dup.iqdb");
    test::write_file(cfg.path, file);
    try {
      (void)PersistedIndex<FlatIndex>::load(cfg);
      ADD_FAILURE() << "rows " << d.first << " and " << d.second << " share an id, yet the load succeeded";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidPayload) << e.what();
      EXPECT_NE(std::string(e.what()).find("duplicate vector id"), std::string::npos) << e.what();
    }
  }
}

// An index with no vectors is a valid flat payload of 30 bytes whatever its dim.
// KNOWN BUG (src/index/flat_index.cpp, FlatIndex::load_from, the check
// `dim > r.remaining() / sizeof(float)` right after reading dim): it demands
// room for one vector even when count is 0, so an empty index of dim >= 5
// (which FlatIndex::save_to writes) cannot be loaded ("dimension 5 is out of
// range"). Fix: bound dim only against overflow there (e.g. dim >
// (UINT64_MAX - 1) / sizeof(float)) and let read_count(dim * 4 + 1) bound the
// count against the bytes that remain. This test fails until then.
TEST(FlatCompatValues, EmptyIndexLoadsForAnyDim) {
  test::TempDir dir;
  for (const std::uint64_t dim : {std::uint64_t{1}, std::uint64_t{4}, std::uint64_t{5}, std::uint64_t{128}}) {
    const Buf payload = flat_payload(dim, 0, {}, false);
    EXPECT_EQ(payload.size(), 30u);
    PersistConfig cfg(dir / ("empty" + std::to_string(dim) + ".iqdb"));
    test::write_file(cfg.path, v1_file({"flat", dim, 0, 0}, payload));
    try {
      const auto db = PersistedIndex<FlatIndex>::load(cfg);
      EXPECT_EQ(db.index().size(), 0u);
      EXPECT_EQ(db.index().dim(), dim);
      EXPECT_EQ(db.index().metric(), DistanceMetric::Cosine);
    } catch (const PersistError& e) {
      ADD_FAILURE() << "dim " << dim << ": " << e.what();
    }
  }
}

TEST(FlatCompatValues, FloatBitPatternsAndEveryMetricSurvive) {
  const std::vector<float> special = {-0.0f,
                                      std::numeric_limits<float>::denorm_min(),
                                      std::numeric_limits<float>::infinity(),
                                      -std::numeric_limits<float>::max(),
                                      std::bit_cast<float>(0x7fc12345u)};  // NaN with a payload
  test::TempDir dir;
  for (std::uint8_t metric = 0; metric <= 4; ++metric) {
    std::vector<Row> rows = {{VectorId(1), special, std::nullopt},
                             {VectorId::bytes("b"), {1, 2, 3, 4, 5}, Metadata{{"nan", Value(std::nan("7"))}}}};
    const Buf payload = flat_payload(5, metric, rows, true);
    PersistConfig cfg(dir / ("m" + std::to_string(metric) + ".iqdb"));
    test::write_file(cfg.path, v2_file({"flat", 5, metric, 2}, 1, payload.size(), zstd_stream(payload)));
    const auto db = PersistedIndex<FlatIndex>::load(cfg);
    expect_index_holds(db.index(), 5, static_cast<DistanceMetric>(metric), rows, "metric " + std::to_string(metric),
                       /*check_search=*/false);
  }
}

TEST(FlatCompatValues, OtherIndexTypeLoadsItsOwnFile) {
  // Positive control for the InvalidIndexType case below.
  test::TempDir dir;
  PersistConfig cfg(dir / "other.iqdb");
  test::write_file(cfg.path, v1_file({"other", 9, 2, 0}, Bytes().u64(9).data()));
  EXPECT_EQ(PersistedIndex<OtherIndex>::load(cfg).index().dim(), 9u);
}

// ------------------------------------------------------------------ error kinds

class FormatErrors : public ::testing::Test {
 protected:
  fsx::path put(const std::string& name, const Buf& bytes) {
    const fsx::path p = dir_ / name;
    test::write_file(p, bytes);
    return p;
  }
  static Buf cut(Buf b, std::size_t len) {
    b.resize(len);
    return b;
  }
  static Buf flip(Buf b, std::size_t at, std::uint8_t mask = 0x01) {
    b.at(at) ^= static_cast<std::byte>(mask);
    return b;
  }
  // A valid FlatIndex v1 file.
  static Buf good_flat_v1(std::vector<Row>* rows_out = nullptr) {
    const std::vector<Row> rows = sample_rows(3, 10, false, 1);
    if (rows_out != nullptr) *rows_out = rows;
    return v1_file({"flat", 3, 2, rows.size()}, flat_payload(3, 2, rows, false));
  }

  test::TempDir dir_;
};

TEST_F(FormatErrors, Io) {
  const fsx::path missing = dir_ / "missing.iqdb";
  for (const auto& [name, f] : std::vector<std::pair<std::string, std::function<void()>>>{
           {"read_snapshot", raw_load(missing)}, {"load", flat_load(missing)}, {"inspect", inspect(missing)}}) {
    const auto e = expect_error(f, ErrorKind::Io, missing, name);
    if (e) {
      EXPECT_EQ(e->sys_errno(), ENOENT) << name;
    }
  }
}

TEST_F(FormatErrors, BadMagic) {
  Buf bad = v1_file({}, sample_payload(10, 1));
  bad[7] = static_cast<std::byte>('X');
  for (const auto& [name, bytes] : std::vector<std::pair<std::string, Buf>>{
           {"last_magic_byte", bad},
           {"text", Bytes().str("hello, world: not a snapshot").data()},
           {"short_wrong", Bytes().str("IQ").u8(0).data()},
           {"wal_magic", Bytes().str("IQDBWAL").u8(0).u32(1).data()}}) {
    const fsx::path p = put(name, bytes);
    expect_error(raw_load(p), ErrorKind::BadMagic, p, name);
    expect_error(inspect(p), ErrorKind::BadMagic, p, name + " inspect");
  }
}

TEST_F(FormatErrors, UnsupportedVersion) {
  for (const std::uint32_t v : {0u, 4u, 0xFFFFFFFFu}) {
    const Buf file = v12_header(v, {}, 0);
    const fsx::path p = put("v" + std::to_string(v), file);
    expect_error(raw_load(p), ErrorKind::UnsupportedVersion, p, "version " + std::to_string(v));
    expect_error(inspect(p), ErrorKind::UnsupportedVersion, p, "inspect version " + std::to_string(v));
  }
}

TEST_F(FormatErrors, ChecksumMismatchPayloadByteFlipped) {
  const Buf payload = sample_payload(1000, 3);
  const HeaderFields f;
  const std::size_t at = 41 + f.tag.size();  // first payload byte
  struct Flip {
    std::string name;
    Buf file;
    std::size_t crc_from;  // first byte the CRC covers
    std::size_t byte;      // byte to damage
  };
  const Buf v1 = v1_file(f, payload);
  const Buf v2z = v2_file(f, 1, payload.size(), zstd_stream(payload));
  const Buf v2l = v2_file(f, 2, payload.size(), lz4_block(payload));
  const Buf v2n = v2_file(f, 0, payload.size(), payload);
  V3Fields v3f;
  v3f.compression = 1;
  const Buf v3z = v3_file(v3f, payload.size(), zstd_stream(payload));
  const std::size_t v3h = 78 + f.tag.size();
  const std::vector<Flip> flips = {
      {"v1_first", v1, at, at},
      {"v1_middle", v1, at, at + 500},
      {"v1_last", v1, at, v1.size() - 1},
      {"v2_none", v2n, at, at + 9 + 17},
      {"v2_zstd_frame_header", v2z, at, at + 9 + 4},
      {"v2_zstd_middle", v2z, at, at + 9 + (v2z.size() - at - 9) / 2},
      {"v2_zstd_last", v2z, at, v2z.size() - 1},
      {"v2_lz4_middle", v2l, at, at + 9 + (v2l.size() - at - 9) / 2},
      {"v2_lz4_first", v2l, at, at + 9},
      {"v3_zstd_middle", v3z, v3h, v3h + (v3z.size() - v3h) / 2},
  };
  for (const Flip& fl : flips) {
    for (const std::uint8_t mask : {std::uint8_t{0x01}, std::uint8_t{0x80}, std::uint8_t{0xff}}) {
      const Buf bad = flip(fl.file, fl.byte, mask);
      const fsx::path p = put(fl.name, bad);
      const std::string where = fl.name + " mask " + std::to_string(mask);
      std::uint32_t stored = 0;
      const std::size_t crc_at = fl.name.starts_with("v3") ? 78 + f.tag.size() - 8 : at - 4;
      std::memcpy(&stored, bad.data() + crc_at, 4);
      const auto e = expect_error(raw_load(p), ErrorKind::ChecksumMismatch, p, where);
      if (e && e->kind() == ErrorKind::ChecksumMismatch) {
        EXPECT_EQ(e->expected_crc(), stored) << where;
        EXPECT_EQ(e->computed_crc(), zcrc(bad.data() + fl.crc_from, bad.size() - fl.crc_from)) << where;
      }
    }
  }
  // The stored CRC itself damaged.
  const fsx::path p = put("crc_field", flip(v1, at - 2));
  const auto e = expect_error(raw_load(p), ErrorKind::ChecksumMismatch, p, "crc field");
  if (e) {
    EXPECT_EQ(e->computed_crc(), zcrc(payload));
  }
}

TEST_F(FormatErrors, ChecksumMismatchFlatPayloadLoad) {
  // Damage inside a real flat payload: reported as a checksum error, whatever
  // the decoder made of the bytes first.
  const Buf good = good_flat_v1();
  const std::size_t at = 45;
  for (const std::size_t off : {std::size_t{0}, std::size_t{4}, std::size_t{13}, std::size_t{21}, std::size_t{30},
                                good.size() - at - 1}) {
    const fsx::path p = put("flat", flip(good, at + off, 0x40));
    expect_error(flat_load(p), ErrorKind::ChecksumMismatch, p, "payload offset " + std::to_string(off));
  }
}

TEST_F(FormatErrors, ChecksumMismatchV3HeaderField) {
  V3Fields v;
  v.f = {"flat", 3, 2, 0};
  const Buf good = v3_file(v, 8, Bytes().u64(1).data());
  const std::size_t header_len = 78 + 4;
  // dim (first byte), metric, n_vectors, last_lsn, payload_crc, header_crc.
  for (const std::size_t at : {std::size_t{32}, std::size_t{40}, std::size_t{42}, std::size_t{50}, std::size_t{74},
                               std::size_t{80}}) {
    const Buf bad = flip(good, at, 0x04);
    const fsx::path p = put("v3h", bad);
    const std::string where = "header byte " + std::to_string(at);
    std::uint32_t stored = 0;
    std::memcpy(&stored, bad.data() + header_len - 4, 4);
    for (const auto& f : {raw_load(p), inspect(p)}) {
      const auto e = expect_error(f, ErrorKind::ChecksumMismatch, p, where);
      if (e && e->kind() == ErrorKind::ChecksumMismatch) {
        EXPECT_EQ(e->expected_crc(), stored) << where;
        EXPECT_EQ(e->computed_crc(), zcrc(bad.data(), header_len - 4)) << where;
      }
    }
  }
}

// The v2 CRC covers the compression preamble "so corruption is caught before
// anything is decompressed" (docs/FORMAT.md), and read_snapshot promises
// ChecksumMismatch when decoding fails and the checksum does not match.
// A damaged preamble must therefore be reported as ChecksumMismatch, not as an
// error about the damaged value.
// KNOWN BUG (src/format/header.cpp parse_v1_v2 + src/snapshot/snapshot_reader.cpp
// check_lengths): the preamble's scheme and length are acted on before the CRC
// is compared, so some of these report Compression / InvalidHeader. This test
// fails until that is fixed.
TEST_F(FormatErrors, ChecksumMismatchV2PreambleByteFlipped) {
  const Buf payload = sample_payload(2000, 9);
  const HeaderFields f;
  const std::size_t pre = 41 + f.tag.size();
  for (const std::uint8_t scheme : {std::uint8_t{0}, std::uint8_t{1}, std::uint8_t{2}}) {
    const Buf stored = scheme == 0 ? payload : scheme == 1 ? zstd_stream(payload) : lz4_block(payload);
    const Buf good = v2_file(f, scheme, payload.size(), stored);
    for (std::size_t i = 0; i < 9; ++i) {
      for (const std::uint8_t mask : {std::uint8_t{0x01}, std::uint8_t{0x08}, std::uint8_t{0x80}}) {
        const Buf bad = flip(good, pre + i, mask);
        const fsx::path p = put("pre", bad);
        const std::string where =
            "scheme " + std::to_string(scheme) + " preamble byte " + std::to_string(i) + " mask " + std::to_string(mask);
        const auto e = expect_error(raw_load(p), ErrorKind::ChecksumMismatch, p, where);
        if (e && e->kind() == ErrorKind::ChecksumMismatch) {
          EXPECT_EQ(e->computed_crc(), zcrc(bad.data() + pre, bad.size() - pre)) << where;
        }
      }
    }
  }
}

TEST_F(FormatErrors, TruncatedHeader) {
  const HeaderFields f{"flat", 3, 2, 0};
  const Buf v1 = v1_file(f, sample_payload(20, 1));
  const Buf v2 = v2_file(f, 0, 20, sample_payload(20, 1));
  V3Fields v;
  v.f = f;
  const Buf v3 = v3_file(v, 20, sample_payload(20, 1));
  const std::vector<std::pair<std::string, Buf>> cases = {
      // An empty file: the magic comparison runs over zero bytes.
      // KNOWN BUG, visible only under UBSan: src/format/header.cpp parse_header
      // calls std::memcmp(prefix.data(), ...) with prefix.data() == nullptr
      // (size 0), which is undefined behaviour ("null pointer passed as
      // argument 1"). Fix: skip the memcmp when magic_have == 0 (or compare
      // with std::equal).
      {"empty_file", {}},
      {"inside_magic", cut(v1, 5)},
      {"inside_version", cut(v1, 10)},
      {"v1_inside_tag_len", cut(v1, 15)},
      {"v1_inside_tag", cut(v1, 20 + 2)},
      {"v1_tag_longer_than_file", Bytes().str("IQDBPRST").u32(1).u64(100).str("abc").data()},
      {"v1_inside_dim", cut(v1, 24 + 3)},
      {"v1_before_metric", cut(v1, 32)},
      {"v1_inside_n_vectors", cut(v1, 33 + 4)},
      {"v1_inside_crc", cut(v1, 41 + 2)},
      {"v2_inside_dim", cut(v2, 30)},
      {"v3_inside_header_len", cut(v3, 14)},
      {"v3_inside_tag", cut(v3, 30)},
      {"v3_inside_fields", cut(v3, 60)},
      {"v3_inside_header_crc", cut(v3, 78 + 4 - 1)},
  };
  for (const auto& [name, bytes] : cases) {
    const fsx::path p = put(name, bytes);
    expect_error(raw_load(p), ErrorKind::TruncatedHeader, p, name);
    expect_error(inspect(p), ErrorKind::TruncatedHeader, p, name + " inspect");
  }
}

TEST_F(FormatErrors, TruncatedPayload) {
  V3Fields v;
  const Buf payload = sample_payload(300, 2);
  const Buf v3n = v3_file(v, payload.size(), payload);
  v.compression = 1;
  const Buf v3z = v3_file(v, payload.size(), zstd_stream(payload));
  const Buf v2 = v2_file({}, 1, payload.size(), zstd_stream(payload));
  const std::vector<std::pair<std::string, Buf>> cases = {
      {"v3_none_cut_by_one", cut(v3n, v3n.size() - 1)},
      {"v3_none_cut_to_header", cut(v3n, 82)},
      {"v3_zstd_cut", cut(v3z, v3z.size() - 5)},
      {"v2_inside_preamble", cut(v2, 45 + 4)},
      {"v2_no_preamble", cut(v2, 45)},
  };
  for (const auto& [name, bytes] : cases) {
    const fsx::path p = put(name, bytes);
    expect_error(raw_load(p), ErrorKind::TruncatedPayload, p, name);
    expect_error(inspect(p), ErrorKind::TruncatedPayload, p, name + " inspect");
  }
}

TEST_F(FormatErrors, InvalidMetric) {
  V3Fields v;
  v.f.metric = 5;
  const std::vector<std::pair<std::string, Buf>> cases = {
      {"v1_metric_5", v1_file({"flat", 3, 5, 0}, {})},
      {"v1_metric_255", v1_file({"flat", 3, 255, 0}, {})},
      {"v2_metric_5", v2_file({"flat", 3, 5, 0}, 0, 0, {})},
      {"v3_metric_5", v3_file(v, 0, {})},
  };
  for (const auto& [name, bytes] : cases) {
    const fsx::path p = put(name, bytes);
    expect_error(raw_load(p), ErrorKind::InvalidMetric, p, name);
    expect_error(inspect(p), ErrorKind::InvalidMetric, p, name + " inspect");
  }
}

TEST_F(FormatErrors, InvalidIndexType) {
  const fsx::path p = put("flat.iqdb", good_flat_v1());
  {
    const auto e = expect_error([&] { (void)PersistedIndex<OtherIndex>::load(PersistConfig(p)); },
                                ErrorKind::InvalidIndexType, p, "PersistedIndex<OtherIndex>");
    if (e) {
      EXPECT_EQ(e->found(), "flat");
      EXPECT_EQ(e->expected(), "other");
    }
  }
  {
    const auto e = expect_error([&] { (void)read_payload(p, "hnsw"); }, ErrorKind::InvalidIndexType, p, "read hnsw");
    if (e) {
      EXPECT_EQ(e->found(), "flat");
      EXPECT_EQ(e->expected(), "hnsw");
    }
  }
  // And an "other" file loaded as FlatIndex.
  const fsx::path q = put("other.iqdb", v2_file({"other", 9, 2, 0}, 0, 8, Bytes().u64(9).data()));
  const auto e = expect_error(flat_load(q), ErrorKind::InvalidIndexType, q, "FlatIndex from other");
  if (e) {
    EXPECT_EQ(e->found(), "other");
    EXPECT_EQ(e->expected(), "flat");
  }
}

TEST_F(FormatErrors, InvalidHeader) {
  Buf long_tag = v1_file({std::string(4097, 'a'), 3, 2, 0}, {});
  V3Fields v;
  v.f.tag = std::string(4097, 'b');
  V3Fields v3bad;
  v3bad.f.tag = "fl\xC3";
  const std::vector<std::pair<std::string, Buf>> cases = {
      {"v1_tag_len_4097", long_tag},
      {"v1_tag_len_huge", Bytes().str("IQDBPRST").u32(1).u64(~std::uint64_t{0}).str("flat").data()},
      {"v2_tag_len_4097", v2_file({std::string(4097, 'a'), 3, 2, 0}, 0, 0, {})},
      {"v1_tag_not_utf8", v1_file({"fl\xFF\xFE", 3, 2, 0}, {})},
      {"v1_tag_overlong", v1_file({"\xC0\xAF", 3, 2, 0}, {})},
      {"v2_tag_surrogate", v2_file({"\xED\xB0\x80", 3, 2, 0}, 0, 0, {})},
      {"v3_tag_len_4097", v3_file(v, 0, {})},
      {"v3_tag_truncated_utf8", v3_file(v3bad, 0, {})},
  };
  for (const auto& [name, bytes] : cases) {
    const fsx::path p = put(name, bytes);
    expect_error(raw_load(p), ErrorKind::InvalidHeader, p, name);
    expect_error(inspect(p), ErrorKind::InvalidHeader, p, name + " inspect");
  }
  // A 4096-byte tag is still fine.
  const fsx::path ok = put("max_tag", v1_file({std::string(4096, 'a'), 3, 2, 0}, {}));
  EXPECT_EQ(inspect_snapshot(default_file_system(), ok).header.index_type.size(), 4096u);
}

TEST_F(FormatErrors, InvalidPayload) {
  std::vector<Row> rows;
  const Buf good = good_flat_v1(&rows);
  {  // positive control
    const fsx::path p = put("good", good);
    EXPECT_EQ(PersistedIndex<FlatIndex>::load(PersistConfig(p)).index().size(), rows.size());
  }
  const Buf payload = flat_payload(3, 2, rows, false);
  const HeaderFields f{"flat", 3, 2, rows.size()};
  Buf bad_count = payload;
  const std::uint64_t huge = std::uint64_t{1} << 40;
  std::memcpy(bad_count.data() + 13, &huge, 8);  // count after version u32, dim u64, metric u8
  Buf count_plus_one = payload;
  const std::uint64_t more = rows.size() + 1;
  std::memcpy(count_plus_one.data() + 13, &more, 8);
  Buf trailing = payload;
  trailing.push_back(std::byte{0});
  trailing.push_back(std::byte{7});
  Buf bad_version = payload;
  bad_version[0] = std::byte{2};
  Buf bad_encoding = payload;
  bad_encoding[21] = std::byte{7};

  const std::vector<std::pair<std::string, Buf>> cases = {
      {"v1_count_huge", v1_file(f, bad_count)},
      {"v1_count_plus_one", v1_file(f, count_plus_one)},
      {"v1_trailing_bytes", v1_file(f, trailing)},
      {"v2_trailing_bytes_zstd", v2_file(f, 1, trailing.size(), zstd_stream(trailing))},
      {"v1_payload_version_2", v1_file(f, bad_version)},
      {"v1_id_encoding_7", v1_file(f, bad_encoding)},
      {"v1_header_dim_disagrees", v1_file({"flat", 4, 2, rows.size()}, payload)},
      {"v1_header_metric_disagrees", v1_file({"flat", 3, 0, rows.size()}, payload)},
      {"v1_header_count_disagrees", v1_file({"flat", 3, 2, rows.size() + 1}, payload)},
  };
  for (const auto& [name, bytes] : cases) {
    const fsx::path p = put(name, bytes);
    expect_error(flat_load(p), ErrorKind::InvalidPayload, p, name);
  }
  // A payload that simply ends is truncated rather than malformed.
  const fsx::path p = put("empty_payload", v1_file(f, {}));
  expect_error(flat_load(p), ErrorKind::TruncatedPayload, p, "v1 empty payload");
}

TEST_F(FormatErrors, Compression) {
  const Buf payload = sample_payload(5000, 4);
  const HeaderFields f;
  Bytes garbage;
  garbage.str("GARB");
  std::mt19937_64 rng(8);
  for (int i = 0; i < 60; ++i) garbage.u8(static_cast<std::uint8_t>(rng()));
  Buf zstd_bad_checksum = zstd_stream(payload, true);
  zstd_bad_checksum.back() ^= std::byte{0x55};  // the frame's content checksum
  const Buf lz4 = lz4_block(payload);
  V3Fields scheme4;
  scheme4.compression = 4;
  const std::vector<std::pair<std::string, Buf>> cases = {
      {"v2_zstd_garbage", v2_file(f, 1, 100, garbage.data())},
      {"v2_zstd_frame_checksum", v2_file(f, 1, payload.size(), zstd_bad_checksum)},
      {"v2_zstd_longer_than_declared", v2_file(f, 1, payload.size() - 1, zstd_stream(payload))},
      {"v2_lz4_garbage", v2_file(f, 2, 100, Bytes().u8(0xff).u8(0xff).u8(0xff).data())},
      {"v2_lz4_shorter_than_declared", v2_file(f, 2, payload.size() + 10, lz4)},
      {"v2_lz4_longer_than_declared", v2_file(f, 2, payload.size() - 10, lz4)},
      {"v2_scheme_3", v2_file(f, 3, payload.size(), lz4_frame(payload))},  // LZ4 frame is v3 only
      {"v2_scheme_9", v2_file(f, 9, payload.size(), payload)},
      {"v3_scheme_4", v3_file(scheme4, payload.size(), payload)},
  };
  for (const auto& [name, bytes] : cases) {
    const fsx::path p = put(name, bytes);
    expect_error(raw_load(p), ErrorKind::Compression, p, name);
  }
  for (const std::string name : {"v2_scheme_3", "v2_scheme_9", "v3_scheme_4"}) {
    expect_error(inspect(dir_ / name), ErrorKind::Compression, dir_ / name, name + " inspect");
  }
}

// Decompression-bomb guard: a declared uncompressed length above 4096 x the
// stored bytes is refused before any decompression (the body never runs);
// exactly 4096 x passes the guard.
TEST_F(FormatErrors, CompressionBombGuard) {
  const Buf payload = sample_payload(3000, 6);
  for (const std::uint8_t scheme : {std::uint8_t{1}, std::uint8_t{2}}) {
    const Buf stored = scheme == 1 ? zstd_stream(payload) : lz4_block(payload);
    const std::uint64_t limit = std::uint64_t{4096} * stored.size();
    for (const std::uint64_t declared : {limit + 1, limit * 1000, ~std::uint64_t{0} >> 30}) {
      const fsx::path p = put("bomb", v2_file({}, scheme, declared, stored));
      bool body_ran = false;
      const std::string where = "scheme " + std::to_string(scheme) + " declared " + std::to_string(declared);
      expect_error(
          [&] {
            read_snapshot(default_file_system(), p, {}, ReadLimits{},
                          [&](PayloadReader&, const FileHeader&) { body_ran = true; });
          },
          ErrorKind::Compression, p, where);
      EXPECT_FALSE(body_ran) << where;
    }
    // At the limit the guard lets it through (the stream is then too short).
    const fsx::path p = put("at_limit", v2_file({}, scheme, limit, stored));
    bool body_ran = false;
    try {
      read_snapshot(default_file_system(), p, {}, ReadLimits{}, [&](PayloadReader& r, const FileHeader&) {
        body_ran = true;
        Buf sink(static_cast<std::size_t>(r.remaining()));
        r.read(sink.data(), sink.size());
      });
      ADD_FAILURE() << "a payload shorter than declared was accepted";
    } catch (const PersistError& e) {
      // zstd streams: the stream ends early; LZ4 blocks: decompressed to fewer bytes than declared.
      EXPECT_EQ(e.kind(), scheme == 1 ? ErrorKind::TruncatedPayload : ErrorKind::Compression) << e.what();
    }
    EXPECT_EQ(body_ran, scheme == 1) << "scheme " << int{scheme};  // the LZ4 block decodes up front
  }
}

TEST_F(FormatErrors, Unsupported) {
  for (const std::uint32_t flag : {1u, 2u, 0x80000000u, 0xFFFFFFFFu}) {
    V3Fields v;
    v.required = flag;
    const Buf file = v3_file(v, 8, Bytes().u64(1).data());
    const fsx::path p = put("req", file);
    expect_error(raw_load(p), ErrorKind::Unsupported, p, "required flag " + std::to_string(flag));
    expect_error(inspect(p), ErrorKind::Unsupported, p, "inspect required flag " + std::to_string(flag));
    // The same bit flipped in place without fixing the CRC is a checksum error instead.
    V3Fields clean;
    Buf flipped = v3_file(clean, 8, Bytes().u64(1).data());
    std::memcpy(flipped.data() + 16, &flag, 4);
    const fsx::path q = put("req_nocrc", flipped);
    expect_error(raw_load(q), ErrorKind::ChecksumMismatch, q, "flag without crc fix");
    fix_v3_header_crc(flipped);
    const fsx::path r = put("req_fixed", flipped);
    expect_error(raw_load(r), ErrorKind::Unsupported, r, "flag with crc fix");
  }
  // Optional flags are ignored.
  V3Fields v;
  v.optional = 0xFFFFFFFFu;
  const fsx::path p = put("opt", v3_file(v, 8, Bytes().u64(1).data()));
  EXPECT_EQ(read_payload(p), Bytes().u64(1).data());
}

TEST_F(FormatErrors, V3TrailingBytesAreInvalidPayload) {
  V3Fields v;
  Buf file = v3_file(v, 8, Bytes().u64(1).data());
  file.push_back(std::byte{0});
  const fsx::path p = put("trail", file);
  expect_error(raw_load(p), ErrorKind::InvalidPayload, p, "v3 trailing byte");
}

}  // namespace
}  // namespace iqdb::persist
