// Corrupted snapshots: every single-byte change (the 8 single-bit flips, 0x00,
// 0xFF and +1) at every offset, and every truncation, of a small FlatIndex
// snapshot in each format version and compression this library reads; then a
// hostile value in each place a count or length is read from disk.
//
// Every load must end in a typed PersistError or in an index identical to the
// one put in: never a crash, another exception, or an allocation beyond
// test::alloc_bound(file size) (support/alloc_guard.hpp). Where the contract
// says which error (damage to checksummed bytes is ChecksumMismatch; a
// truncated header TruncatedHeader; ...) the kind is asserted too.
//
// Fixtures: versions 1 and 2 built byte by byte from
// docs/FORMAT.md by support/format_builders.hpp (CRC from
// zlib, the zstd frame from libzstd's streaming encoder, the LZ4 block from
// LZ4_compress_default);
// version 3 written by the library, which is the subject: the model is the
// rows put in. Observed outcomes: docs/reliability/corruption.md.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "iqdb/persist.hpp"
#include "support/alloc_guard.hpp"
#include "support/corruption_util.hpp"
#include "support/format_builders.hpp"
#include "support/mem_fs.hpp"
#include "support/test_util.hpp"

IQDB_TEST_COUNT_OPERATOR_NEW();

namespace iqdb::persist {
namespace {

namespace fsx = std::filesystem;
// Buf, Bytes, the reference encoders (format_builders.hpp), in-memory files,
// the sweep helpers (corruption_util.hpp).
using namespace test;
using V3Header = V3Fields;  // tag "flat", dim 4, Euclidean unless set

// ------------------------------------------------------------------ the model

constexpr std::uint64_t kDim = 4;
constexpr std::uint8_t kMetricTag = 2;  // Euclidean

using Row = test::FlatRow;

// Four vectors of dim 4: u64 and byte ids, metadata of every value kind.
const std::vector<Row>& model_rows() {
  static const std::vector<Row> rows = [] {
    std::vector<Row> r;
    r.push_back({VectorId(7), {1.0f, -2.5f, 0.125f, 3e7f}, std::nullopt});
    r.push_back({VectorId::bytes("doc-\xC3\xA9"), {0.5f, 0.25f, -0.0f, 1e-3f},
                 Metadata{{"color", Value("red")}, {"n", Value(5)}}});
    r.push_back({VectorId(std::uint64_t{1} << 40), {9.f, 8.f, 7.f, 6.f},
                 Metadata{{"f", Value(2.5)}, {"ok", Value(true)}, {"z", Value()}}});
    r.push_back({VectorId::bytes(std::string("\x00\xFF", 2)), {-1.f, -1.f, 2.f, 2.f}, std::nullopt});
    return r;
  }();
  return rows;
}

::testing::AssertionResult matches(const FlatIndex& index, const std::vector<Row>& rows) {
  if (index.dim() != kDim) return ::testing::AssertionFailure() << "dim " << index.dim();
  if (index.metric() != DistanceMetric::Euclidean) return ::testing::AssertionFailure() << "metric";
  if (index.size() != rows.size()) return ::testing::AssertionFailure() << "size " << index.size();
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (!(index.id_at(i) == rows[i].id)) return ::testing::AssertionFailure() << "id of row " << i;
    const auto v = index.vector_at(i);
    if (v.size() != rows[i].vec.size() || std::memcmp(v.data(), rows[i].vec.data(), v.size_bytes()) != 0) {
      return ::testing::AssertionFailure() << "vector of row " << i;
    }
    const Metadata* m = index.metadata_at(i);
    if ((m != nullptr) != rows[i].meta.has_value() || (m != nullptr && *m != *rows[i].meta)) {
      return ::testing::AssertionFailure() << "metadata of row " << i;
    }
  }
  return ::testing::AssertionSuccess();
}

// ------------------------------------------------------------------ byte-level encoders (support/format_builders.hpp)

// The flat payload of the model rows (tagged ids).
Buf model_payload() { return test::flat_payload(kDim, kMetricTag, model_rows(), /*tagged_ids=*/true); }

// v1 / v2 files of tag "flat", dim kDim (the model's), Euclidean, `n` vectors in the header.
Buf v1_file(const Buf& payload, std::uint64_t n) { return test::v1_file({"flat", kDim, kMetricTag, n}, payload); }
Buf v2_file(std::uint8_t scheme, std::uint64_t ulen, const Buf& stored, std::uint64_t n) {
  return test::v2_file({"flat", kDim, kMetricTag, n}, scheme, ulen, stored);
}

// libzstd's streaming encoder handed the whole payload (what the reference
// writes: no content size in the frame header).
Buf zstd_stream(const Buf& in) { return test::zstd_stream(in, false, test::ZstdFeed::Whole); }

// ------------------------------------------------------------------ loading from memory

// Serves one snapshot from memory (thousands of variants, no disk I/O);
// everything else goes to the real file system.
using MemFs = test::SingleFileMemFs;
const fsx::path kMemPath = "/nonexistent-iqdb-corruption/snap.iqdb";

struct Outcome {
  std::optional<FlatIndex> index;   // loaded
  std::optional<ErrorKind> kind;    // PersistError
  std::string what;                 // its message, or a foreign exception's
  bool foreign = false;             // an exception that is not a PersistError
  test::AllocStats alloc;
  std::string label() const {
    if (index) return "loaded";
    if (kind) return std::string(to_string(*kind));
    return "FOREIGN EXCEPTION";
  }
};

Outcome load_flat(MemFs& fs, const ReadLimits& limits = {}) {
  PersistConfig cfg(fs.path());
  cfg.file_system = &fs;
  cfg.limits = limits;
  Outcome out;
  test::AllocGuard guard;
  try {
    auto db = PersistedIndex<FlatIndex>::load(cfg);
    out.alloc = guard.stats();
    out.index.emplace(std::move(db.index_mut()));
  } catch (const PersistError& e) {
    out.alloc = guard.stats();
    out.kind = e.kind();
    out.what = e.what();
  } catch (const std::exception& e) {
    out.alloc = guard.stats();
    out.foreign = true;
    out.what = e.what();
  }
  return out;
}

// ------------------------------------------------------------------ fixtures

struct Region {
  std::uint64_t begin;
  std::uint64_t end;
  std::string name;
};

struct Fixture {
  std::string name;
  Buf file;
  std::vector<Region> regions;    // cover the whole file, in order
  std::uint64_t header_end = 0;   // the header is [0, header_end)
  std::uint64_t region_start = 0; // first byte of the CRC-covered region (v2: the preamble)
  std::uint32_t version = 0;
};

std::string region_of(const Fixture& f, std::uint64_t off) {
  for (const Region& r : f.regions) {
    if (off >= r.begin && off < r.end) return r.name;
  }
  return "?";
}

std::vector<Region> layout(std::initializer_list<std::pair<const char*, std::uint64_t>> fields) {
  std::vector<Region> out;
  std::uint64_t at = 0;
  for (const auto& [name, len] : fields) {
    out.push_back({at, at + len, name});
    at += len;
  }
  return out;
}

// A v3 snapshot of the model rows written by the library.
Buf library_v3(Compression c) {
  test::TempDir dir;
  PersistConfig cfg(dir / "s.iqdb");
  cfg.compression = c;
  cfg.fsync_policy = FsyncPolicy::never();
  FlatIndex index(kDim, DistanceMetric::Euclidean);
  for (const Row& r : model_rows()) index.insert(r.id, r.vec, r.meta);
  auto db = PersistedIndex<FlatIndex>::open_with(std::move(index), cfg);
  db.save();
  return test::read_file(cfg.path);
}

enum class Kind { V1, V2None, V2Zstd, V2Lz4, V3None, V3Zstd, V3Lz4 };

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::V1: return "v1";
    case Kind::V2None: return "v2_none";
    case Kind::V2Zstd: return "v2_zstd";
    case Kind::V2Lz4: return "v2_lz4_block";
    case Kind::V3None: return "v3_none";
    case Kind::V3Zstd: return "v3_zstd";
    case Kind::V3Lz4: return "v3_lz4_frame";
  }
  return "?";
}
void PrintTo(Kind k, std::ostream* os) { *os << kind_name(k); }

Fixture make_fixture(Kind k) {
  const Buf payload = model_payload();
  const std::uint64_t n = model_rows().size();
  Fixture f;
  f.name = kind_name(k);
  // v1 / v2 header fields for tag "flat".
  const auto v12 = [&](std::uint64_t total, bool v2) {
    const std::uint64_t fixed = 41 + 4;
    std::vector<Region> r = layout({{"magic", 8}, {"version", 4}, {"tag_len", 8}, {"tag", 4}, {"dim", 8},
                                    {"metric", 1}, {"n_vectors", 8}, {"crc", 4}});
    if (v2) r.push_back({fixed, fixed + 9, "preamble"});
    r.push_back({v2 ? fixed + 9 : fixed, total, "payload"});
    f.header_end = fixed;
    f.region_start = fixed;
    return r;
  };
  switch (k) {
    case Kind::V1:
      f.file = v1_file(payload, n);
      f.regions = v12(f.file.size(), false);
      f.version = 1;
      return f;
    case Kind::V2None:
    case Kind::V2Zstd:
    case Kind::V2Lz4: {
      const std::uint8_t scheme = k == Kind::V2None ? 0 : k == Kind::V2Zstd ? 1 : 2;
      const Buf stored = scheme == 0 ? payload : scheme == 1 ? zstd_stream(payload) : lz4_block(payload);
      f.file = v2_file(scheme, payload.size(), stored, n);
      f.regions = v12(f.file.size(), true);
      f.version = 2;
      return f;
    }
    case Kind::V3None:
    case Kind::V3Zstd:
    case Kind::V3Lz4: {
      f.file = library_v3(k == Kind::V3None   ? Compression::none()
                          : k == Kind::V3Zstd ? Compression::zstd(3)
                                              : Compression::lz4());
      const std::uint64_t hlen = 78 + 4;
      f.regions = layout({{"magic", 8}, {"version", 4}, {"header_len", 4}, {"required_flags", 4},
                          {"optional_flags", 4}, {"tag_len", 4}, {"tag", 4}, {"dim", 8}, {"metric", 1},
                          {"compression", 1}, {"n_vectors", 8}, {"last_lsn", 8}, {"uncompressed_len", 8},
                          {"stored_len", 8}, {"payload_crc", 4}, {"header_crc", 4}});
      f.regions.push_back({hlen, f.file.size(), "payload"});
      f.header_end = hlen;
      f.region_start = hlen;
      f.version = 3;
      return f;
    }
  }
  return f;
}

const Fixture& fixture(Kind k) {
  static std::map<Kind, Fixture> cache;
  auto it = cache.find(k);
  if (it == cache.end()) it = cache.emplace(k, make_fixture(k)).first;
  return it->second;
}

class SnapshotCorruption : public ::testing::TestWithParam<Kind> {};

// The untouched fixture loads to the model: what every variant is compared to.
TEST_P(SnapshotCorruption, OriginalLoadsToTheModel) {
  const Fixture& f = fixture(GetParam());
  ASSERT_TRUE(test::operator_new_is_counted());
  MemFs fs(kMemPath);
  fs.set(f.file);
  const Outcome o = load_flat(fs);
  ASSERT_TRUE(o.index.has_value()) << f.name << ": " << o.what;
  EXPECT_TRUE(matches(*o.index, model_rows())) << f.name;
  if (f.version == 3) {
    // The v3 layout the sweep's regions assume (docs/FORMAT.md, tag "flat"),
    // read from the library's bytes: header_len, stored_len, both CRCs.
    const auto u32_at = [&](std::size_t at) {
      std::uint32_t v = 0;
      std::memcpy(&v, f.file.data() + at, 4);
      return v;
    };
    const auto u64_at = [&](std::size_t at) {
      std::uint64_t v = 0;
      std::memcpy(&v, f.file.data() + at, 8);
      return v;
    };
    ASSERT_EQ(u32_at(12), f.header_end);
    EXPECT_EQ(u64_at(66), f.file.size() - f.header_end);
    EXPECT_EQ(u32_at(74), zcrc(f.file.data() + f.header_end, f.file.size() - f.header_end));
    EXPECT_EQ(u32_at(78), zcrc(f.file.data(), 78));
  }
  EXPECT_GT(o.alloc.allocations, 0u) << "the allocation counter sees nothing";
  EXPECT_LE(o.alloc.peak_bytes, test::alloc_bound(f.file.size()));
  EXPECT_EQ(outcome_of([&] { verify_snapshot(fs, fs.path(), ReadLimits{}); }), "ok");
  EXPECT_EQ(outcome_of([&] { inspect_snapshot(fs, fs.path()); }), "ok");
  std::cout << "[fixture] " << f.name << ": " << f.file.size() << " bytes, load peak " << o.alloc.peak_bytes
            << " bytes in " << o.alloc.allocations << " allocations\n";
}

TEST_P(SnapshotCorruption, EverySingleByteChange) {
  const Fixture& f = fixture(GetParam());
  MemFs fs(kMemPath);
  Summary summary;
  Summary verify_summary;
  int variants = 0;
  std::size_t worst_peak = 0;
  for (std::size_t off = 0; off < f.file.size(); ++off) {
    const auto orig = static_cast<std::uint8_t>(f.file[off]);
    const std::string region = region_of(f, off);
    for (std::uint8_t v : changed_values(orig)) {
      Buf bad = f.file;
      bad[off] = static_cast<std::byte>(v);
      fs.set(bad);
      const Outcome o = load_flat(fs);
      ++variants;
      const std::string where = f.name + " offset " + std::to_string(off) + " (" + region + ") byte " +
                                std::to_string(orig) + " -> " + std::to_string(v);
      ASSERT_FALSE(o.foreign) << where << ": " << o.what;
      // Exactly one of: a typed error, or the original index.
      if (o.index) {
        EXPECT_TRUE(matches(*o.index, model_rows())) << where;
      }
      // Every byte of every version is covered by a checksum or checked against
      // the payload (v1/v2 dim, metric, n_vectors; the tag against "flat"):
      // no single-byte change can load.
      EXPECT_FALSE(o.index.has_value()) << where << ": a damaged file loaded";
      // Damage to checksummed bytes is reported as such, whatever decoding
      // error it caused first.
      const bool crc_covered = off >= f.region_start || region == "crc" ||
                               (f.version == 3 && off >= 16);  // v3: header CRC over bytes [0, 78+N)
      if (crc_covered && o.kind) {
        EXPECT_EQ(*o.kind, ErrorKind::ChecksumMismatch) << where << ": " << o.what;
      }
      if (region == "magic" && o.kind) {
        EXPECT_EQ(*o.kind, ErrorKind::BadMagic) << where;
      }
      EXPECT_LE(o.alloc.peak_bytes, test::alloc_bound(bad.size())) << where;
      EXPECT_LE(o.alloc.largest, test::alloc_bound(bad.size())) << where;
      worst_peak = std::max(worst_peak, o.alloc.peak_bytes);
      ++summary[region][o.label()];

      const std::string inspected = outcome_of([&] { inspect_snapshot(fs, fs.path()); });
      EXPECT_EQ(inspected.find("FOREIGN"), std::string::npos) << where << ": inspect: " << inspected;
      // verify decodes the payload as a load does (without building the
      // index): run on every header variant and on every third payload
      // offset, which keeps the sweep to seconds under AddressSanitizer.
      if (off < f.header_end || off % 3 == 0) {
        const std::string verified = outcome_of([&] { verify_snapshot(fs, fs.path(), ReadLimits{}); });
        EXPECT_EQ(verified.find("FOREIGN"), std::string::npos) << where << ": verify: " << verified;
        // verify checks the checksums and decompression, not the index: it
        // may pass only where no checksum covers the byte (v1/v2 header fields).
        if (crc_covered || region == "magic") {
          EXPECT_NE(verified, "ok") << where;
        }
        ++verify_summary[region][verified];
      }
    }
  }
  std::cout << "[fixture] " << f.name << ": " << variants << " single-byte variants over " << f.file.size()
            << " bytes; worst load peak " << worst_peak << " bytes\n";
  print_summary(f.name + " load, single-byte changes", summary);
  print_summary(f.name + " verify, single-byte changes", verify_summary);
}

TEST_P(SnapshotCorruption, EveryTruncation) {
  const Fixture& f = fixture(GetParam());
  MemFs fs(kMemPath);
  Summary summary;
  for (std::size_t len = 0; len <= f.file.size(); ++len) {
    fs.set(Buf(f.file.begin(), f.file.begin() + static_cast<std::ptrdiff_t>(len)));
    const Outcome o = load_flat(fs);
    const std::string where = f.name + " truncated to " + std::to_string(len) + " of " + std::to_string(f.file.size());
    ASSERT_FALSE(o.foreign) << where << ": " << o.what;
    EXPECT_LE(o.alloc.peak_bytes, test::alloc_bound(len)) << where;
    EXPECT_LE(o.alloc.largest, test::alloc_bound(len)) << where;
    const std::string verified = outcome_of([&] { verify_snapshot(fs, fs.path(), ReadLimits{}); });
    EXPECT_EQ(verified.find("FOREIGN"), std::string::npos) << where << ": " << verified;
    if (len == f.file.size()) {
      ASSERT_TRUE(o.index.has_value()) << where << ": " << o.what;
      EXPECT_TRUE(matches(*o.index, model_rows()));
      continue;
    }
    ASSERT_FALSE(o.index.has_value()) << where << ": a truncated file loaded";
    EXPECT_NE(verified, "ok") << where;
    // The expected kind follows from where the file ends.
    ErrorKind want;
    if (len < f.header_end) {
      want = ErrorKind::TruncatedHeader;
    } else if (f.version == 3) {
      want = ErrorKind::TruncatedPayload;  // stored_len exceeds what the file holds
    } else if (f.version == 2 && len < f.header_end + 9) {
      want = ErrorKind::TruncatedPayload;  // inside the compression preamble
    } else {
      want = ErrorKind::ChecksumMismatch;  // v1/v2: the region's CRC no longer matches
    }
    EXPECT_EQ(*o.kind, want) << where << ": " << o.what;
    ++summary[len < f.header_end ? "inside header" : "after header"][o.label()];
  }
  print_summary(f.name + " load, truncations", summary);
}

INSTANTIATE_TEST_SUITE_P(AllReadableFormats, SnapshotCorruption,
                         ::testing::Values(Kind::V1, Kind::V2None, Kind::V2Zstd, Kind::V2Lz4, Kind::V3None,
                                           Kind::V3Zstd, Kind::V3Lz4),
                         [](const ::testing::TestParamInfo<Kind>& i) { return std::string(kind_name(i.param)); });

// ------------------------------------------------------------------ hostile counts in the flat payload

// A flat payload whose fields are spelled out, for planting hostile values.
Bytes payload_prefix(std::uint64_t dim, std::uint64_t count, std::uint8_t id_encoding) {
  Bytes p;
  p.u32(1).u64(dim).u8(kMetricTag).u64(count).u8(id_encoding);
  return p;
}

struct HostileCase {
  std::string name;
  Buf payload;
  std::uint64_t header_n;  // n_vectors in the header
};

std::vector<HostileCase> hostile_payloads() {
  std::vector<HostileCase> out;
  const auto add = [&](std::string name, Bytes b, std::uint64_t n = 4) { out.push_back({std::move(name), b.data(), n}); };

  // Vector count (checked against the bytes that remain: >= 4*dim + 1 each).
  for (std::uint64_t n : {std::uint64_t{1} << 60, ~std::uint64_t{0}, std::uint64_t{1} << 32}) {
    Bytes b = payload_prefix(kDim, n, 1);
    add("vector_count_" + std::to_string(n), pad(b, 200), n);
  }
  {
    // One more vector than 200 remaining bytes could hold at 17 bytes each.
    Bytes b = payload_prefix(kDim, 200 / 17 + 1, 1);
    add("vector_count_just_over", pad(b, 200 - 1), 200 / 17 + 1);
  }
  // Dim: zero, overflowing dim * 4, and huge with a count the bytes cannot hold.
  for (std::uint64_t dim : {std::uint64_t{0}, std::uint64_t{1} << 62, ~std::uint64_t{0}, std::uint64_t{1} << 40}) {
    Bytes b = payload_prefix(dim, 2, 1);
    add("dim_" + std::to_string(dim), pad(b, 100), 2);
  }
  {
    // Ids all u64 (encoding 0): 8 + 4*dim bytes each; a count that passes the
    // generic bound (4*dim + 1) but not this one.
    const std::size_t rest = 100;
    Bytes c = payload_prefix(1, rest / 5, 0);
    add("u64_id_count", pad(c, rest - 1), rest / 5);
  }
  // Byte id length: huge, and one more than the bytes that remain.
  for (std::uint64_t len : {std::uint64_t{1} << 63, ~std::uint64_t{0}, std::uint64_t{100}}) {
    Bytes b = payload_prefix(kDim, 1, 1);
    b.u8(1).u64(len);
    add("byte_id_len_" + std::to_string(len), pad(b, 99), 1);
  }
  // Metadata record count: huge; more than the vectors.
  for (std::uint64_t m : {std::uint64_t{1} << 60, ~std::uint64_t{0}, std::uint64_t{2}}) {
    Bytes b = payload_prefix(kDim, 1, 1);
    b.u8(0).u64(5).u64(m);
    add("metadata_count_" + std::to_string(m), pad(b, 100), 1);
  }
  // Entries in one record (u32; >= 5 bytes each).
  for (std::uint32_t e : {0xFFFFFFFFu, 0x80000000u, 30u}) {
    Bytes b = payload_prefix(kDim, 1, 1);
    b.u8(0).u64(5).u64(1).u64(0).u32(e);
    add("metadata_entries_" + std::to_string(e), pad(b, 100), 1);
  }
  // Key length (u32).
  for (std::uint32_t k : {0xFFFFFFFFu, 0x10000001u, 101u}) {
    Bytes b = payload_prefix(kDim, 1, 1);
    b.u8(0).u64(5).u64(1).u64(0).u32(1).u32(k);
    add("metadata_key_len_" + std::to_string(k), pad(b, 100), 1);
  }
  // String value length (u32).
  for (std::uint32_t s : {0xFFFFFFFFu, 0x10000001u, 101u}) {
    Bytes b = payload_prefix(kDim, 1, 1);
    b.u8(0).u64(5).u64(1).u64(0).u32(1).u32(1).str("k").u8(0).u32(s);
    add("string_value_len_" + std::to_string(s), pad(b, 100), 1);
  }
  return out;
}

enum class Container { V1, V2None, V2Zstd, V2Lz4, V3None, V3Zstd };

Buf wrap(Container c, const HostileCase& h) {
  const Buf& p = h.payload;
  switch (c) {
    case Container::V1: return v1_file(p, h.header_n);
    case Container::V2None: return v2_file(0, p.size(), p, h.header_n);
    case Container::V2Zstd: return v2_file(1, p.size(), zstd_stream(p), h.header_n);
    case Container::V2Lz4: return v2_file(2, p.size(), lz4_block(p), h.header_n);
    case Container::V3None: {
      V3Header hd;
      hd.f.n = h.header_n;
      return v3_file(hd, p.size(), p);
    }
    case Container::V3Zstd: {
      V3Header hd;
      hd.f.n = h.header_n;
      hd.compression = 1;
      return v3_file(hd, p.size(), zstd_stream(p));
    }
  }
  return {};
}

// Every count and length in the payload is checked against the bytes that
// remain before anything is allocated for it: the file's checksums are right,
// so the error is the decoder's own (InvalidPayload or TruncatedPayload), and
// nothing larger than the file (plus fixed buffers) is allocated.
TEST(SnapshotHostileCounts, FlatPayloadCountsAreBoundedBeforeAllocation) {
  ASSERT_TRUE(test::operator_new_is_counted());
  MemFs fs(kMemPath);
  for (Container c : {Container::V1, Container::V2None, Container::V2Zstd, Container::V2Lz4, Container::V3None,
                      Container::V3Zstd}) {
    for (const HostileCase& h : hostile_payloads()) {
      const Buf file = wrap(c, h);
      fs.set(file);
      const Outcome o = load_flat(fs);
      const std::string where = h.name + " in container " + std::to_string(static_cast<int>(c));
      ASSERT_FALSE(o.foreign) << where << ": " << o.what;
      ASSERT_TRUE(o.kind.has_value()) << where << ": loaded";
      EXPECT_TRUE(*o.kind == ErrorKind::InvalidPayload || *o.kind == ErrorKind::TruncatedPayload)
          << where << ": " << o.what;
      // "Nothing large": the payloads here are ~100-300 bytes; the fixed
      // buffers of a load (header probe, zstd input buffer) are under 256 KiB.
      EXPECT_LE(o.alloc.largest, 256u << 10) << where;
      EXPECT_LE(o.alloc.peak_bytes, 1u << 20) << where;
    }
  }
}

// The largest count the checks accept is one the bytes could hold; what it
// reserves up front is then a bounded multiple of the file's size. Measured
// on a 1 MiB payload of dim 1 whose count claims every 5 bytes is a vector
// (4 bytes of floats + 1 id byte, the generic minimum): this is the
// amplification kAllocFactor must cover, with no slack to hide behind.
TEST(SnapshotHostileCounts, LargestAcceptedCountCostsABoundedMultipleOfTheFile) {
  MemFs fs(kMemPath);
  const std::size_t rest = std::size_t{1} << 20;
  Bytes b = payload_prefix(1, rest / 5, 1);
  for (std::size_t i = 0; i < rest / 9; ++i) b.u8(0).u64(i);  // u64 ids until the bytes run out
  while (b.size() < rest + 22) b.u8(0);
  V3Header hd;
  hd.f.dim = 1;
  hd.f.n = rest / 5;
  const Buf file = v3_file(hd, b.size(), b.data());
  fs.set(file);
  const Outcome o = load_flat(fs);
  ASSERT_TRUE(o.kind.has_value()) << o.what;
  const double factor = static_cast<double>(o.alloc.peak_bytes) / static_cast<double>(file.size());
  std::cout << "[amplification] worst accepted vector count: peak " << o.alloc.peak_bytes << " bytes for a "
            << file.size() << "-byte file (" << factor << "x)\n";
  EXPECT_LE(o.alloc.peak_bytes, test::kAllocFactor * file.size());
}

// Legitimate data with the highest in-memory cost per byte on disk: metadata
// maps with many tiny entries. Also within kAllocFactor.
TEST(SnapshotHostileCounts, DenseMetadataStaysWithinTheFactor) {
  MemFs fs(kMemPath);
  FlatIndex index(1, DistanceMetric::Euclidean);
  // Two-byte keys with null values: 7 bytes per entry on disk (key length 4,
  // key 2, tag 1), the least an entry can take beyond the first few keys.
  Metadata m;
  for (char a = 0x20; a < 0x7F; ++a) {
    for (char b = 0x20; b < 0x7F; ++b) m.emplace(std::string{a, b}, Value());
  }
  for (std::uint64_t i = 0; i < 4; ++i) index.insert(i, std::vector<float>{1.f}, m);
  test::TempDir dir;
  PersistConfig cfg(dir / "m.iqdb");
  cfg.fsync_policy = FsyncPolicy::never();
  auto db = PersistedIndex<FlatIndex>::open_with(std::move(index), cfg);
  db.save();
  const Buf file = test::read_file(cfg.path);
  fs.set(file);
  const Outcome o = load_flat(fs);
  ASSERT_TRUE(o.index.has_value()) << o.what;
  const double factor = static_cast<double>(o.alloc.peak_bytes) / static_cast<double>(file.size());
  std::cout << "[amplification] dense metadata: peak " << o.alloc.peak_bytes << " bytes for a " << file.size()
            << "-byte file (" << factor << "x)\n";
  EXPECT_LE(o.alloc.peak_bytes, test::kAllocFactor * file.size());
}

// ------------------------------------------------------------------ hostile header lengths

struct HeaderCase {
  std::string name;
  Buf file;
  ErrorKind want;
  ReadLimits limits{};
};

std::vector<HeaderCase> hostile_headers() {
  const Buf payload = model_payload();
  const std::uint64_t n = model_rows().size();
  std::vector<HeaderCase> out;
  const auto v3 = [&](V3Header h, std::uint64_t ulen, const Buf& stored) { return v3_file(h, ulen, stored); };

  // header_len: beyond the 64 KiB maximum, below the fixed part, beyond the file.
  for (std::uint32_t hl : {0xFFFFFFFFu, 65537u, 10u}) {
    V3Header h;
    h.f.n = n;
    h.header_len = hl;
    Buf f = v3(h, payload.size(), payload);
    out.push_back({"v3_header_len_" + std::to_string(hl), f, ErrorKind::InvalidHeader});
  }
  {
    V3Header h;
    h.f.n = n;
    h.header_len = 60000;  // within range, more than the file holds
    out.push_back({"v3_header_len_past_eof", v3(h, payload.size(), payload), ErrorKind::TruncatedHeader});
  }
  // tag_len: huge, above 4096, beyond header_len.
  for (std::uint32_t tl : {0xFFFFFFFFu, 4097u, 5u}) {
    V3Header h;
    h.f.n = n;
    h.tag_len = tl;
    out.push_back({"v3_tag_len_" + std::to_string(tl), v3(h, payload.size(), payload), ErrorKind::InvalidHeader});
  }
  // stored_len: huge; one more than present.
  for (std::uint64_t sl : {std::uint64_t{1} << 63, ~std::uint64_t{0}, std::uint64_t{payload.size() + 1}}) {
    V3Header h;
    h.f.n = n;
    h.ulen = payload.size();
    h.stored_len = sl;
    h.payload_crc = zcrc(payload);
    Bytes f;
    f.append(v3_header(h)).append(payload);
    out.push_back({"v3_stored_len_" + std::to_string(sl), f.data(), ErrorKind::TruncatedPayload});
  }
  // uncompressed_len: not equal to stored_len without compression; beyond the
  // expansion guard with zstd; beyond ReadLimits::max_payload_bytes.
  for (std::uint64_t ul : {std::uint64_t{1} << 62, ~std::uint64_t{0}, std::uint64_t{payload.size() + 1}}) {
    V3Header h;
    h.f.n = n;
    out.push_back({"v3_none_ulen_" + std::to_string(ul), v3(h, ul, payload), ErrorKind::InvalidHeader});
  }
  {
    const Buf z = zstd_stream(payload);
    V3Header h;
    h.f.n = n;
    h.compression = 1;
    out.push_back({"v3_zstd_ulen_over_expansion", v3(h, 4096 * z.size() + 1, z), ErrorKind::Compression});
    out.push_back({"v3_zstd_ulen_2^62", v3(h, std::uint64_t{1} << 62, z), ErrorKind::InvalidHeader});
    HeaderCase limited{"v3_zstd_ulen_over_read_limit", v3(h, payload.size(), z), ErrorKind::InvalidHeader};
    limited.limits.max_payload_bytes = payload.size() - 1;
    out.push_back(limited);
    HeaderCase ratio{"v3_zstd_ulen_over_ratio_limit", v3(h, payload.size(), z), ErrorKind::Compression};
    ratio.limits.max_expansion_ratio = 1;
    out.push_back(ratio);
  }
  // v1/v2 tag length (u64): huge.
  {
    Bytes f;
    f.str("IQDBPRST").u32(2).u64(std::uint64_t{1} << 62).str("flat");
    out.push_back({"v2_tag_len_2^62", f.data(), ErrorKind::InvalidHeader});
  }
  // v2 preamble: declared length beyond the expansion guard, LZ4 (which would
  // allocate the whole declared length at once) and zstd.
  {
    const Buf l = lz4_block(payload);
    out.push_back({"v2_lz4_ulen_over_expansion", v2_file(2, 4096 * l.size() + 1, l, n), ErrorKind::Compression});
    out.push_back({"v2_lz4_ulen_2^62", v2_file(2, std::uint64_t{1} << 62, l, n), ErrorKind::InvalidHeader});
    const Buf z = zstd_stream(payload);
    out.push_back({"v2_zstd_ulen_2^63", v2_file(1, std::uint64_t{1} << 63, z, n), ErrorKind::InvalidHeader});
  }
  return out;
}

TEST(SnapshotHostileCounts, HeaderLengthsAreCheckedBeforeAllocation) {
  ASSERT_TRUE(test::operator_new_is_counted());
  MemFs fs(kMemPath);
  for (const HeaderCase& h : hostile_headers()) {
    fs.set(h.file);
    const Outcome o = load_flat(fs, h.limits);
    ASSERT_FALSE(o.foreign) << h.name << ": " << o.what;
    ASSERT_TRUE(o.kind.has_value()) << h.name << ": loaded";
    EXPECT_EQ(*o.kind, h.want) << h.name << ": " << o.what;
    EXPECT_LE(o.alloc.largest, 256u << 10) << h.name;
    EXPECT_LE(o.alloc.peak_bytes, 1u << 20) << h.name;
    // inspect and verify take the same header path.
    EXPECT_EQ(outcome_of([&] { verify_snapshot(fs, fs.path(), h.limits); }).find("FOREIGN"), std::string::npos);
    EXPECT_EQ(outcome_of([&] { inspect_snapshot(fs, fs.path()); }).find("FOREIGN"), std::string::npos);
  }
}

// ------------------------------------------------------------------ hostile lengths under a capped address space

// Child exit codes for run_capped.
constexpr int kTypedError = 0;
constexpr int kLoaded = 1;
constexpr int kWrongKind = 2;

int load_in_child(const Buf& file, std::optional<ErrorKind> want, const ReadLimits& limits = {}) {
  MemFs fs(kMemPath);
  fs.set(file);
  const Outcome o = load_flat(fs, limits);
  if (o.foreign) {
    std::cerr << "foreign exception: " << o.what << "\n";
    return 3;
  }
  if (o.index) return kLoaded;
  if (want && *o.kind != *want) {
    std::cerr << "got " << to_string(*o.kind) << ": " << o.what << "\n";
    return kWrongKind;
  }
  if (o.alloc.largest > test::alloc_bound(file.size())) {
    std::cerr << "largest allocation " << o.alloc.largest << "\n";
    return 4;
  }
  return kTypedError;
}

// What the process may map beyond what it maps already: enough for a load's
// threads and arenas, far below what a believed hostile length would take.
constexpr std::size_t kCap = std::size_t{512} << 20;

// Metadata keys and string values are written as UTF-8 (docs/FORMAT.md),
// but an index used directly could store other bytes before its insert
// checked: the snapshots it was saved to load, those bytes as they were
// written (checked against the file's own bytes), in every container.
// Multi-byte UTF-8 loads as written too.
TEST(SnapshotMetadata, TextThatIsNotUtf8LoadsAsWritten) {
  MemFs fs(kMemPath);
  const auto rows_with = [](Metadata m) {
    return std::vector<test::FlatRow>{{VectorId(std::uint64_t{7}), {1.0f, 2.0f, 3.0f, 4.0f}, std::move(m)}};
  };
  const Metadata cases[] = {
      Metadata{{"\xff", Value(std::int64_t{1})}},
      Metadata{{"ab\xc3", Value(std::string("a\xc0\x80"))}},
      Metadata{{"k", Value(std::string("\xed\xa0\x80\xf4\x90\x80\x80"))}},
      Metadata{{"caf\xc3\xa9", Value(std::string("\xe6\x97\xa5\xe6\x9c\xac"))},
               {"k", Value(std::string("\xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf"))}},
  };
  for (const Metadata& m : cases) {
    const Buf payload = test::flat_payload(kDim, kMetricTag, rows_with(m), /*tagged_ids=*/true);
    for (Container c : {Container::V1, Container::V2Zstd, Container::V3None, Container::V3Zstd}) {
      const std::string where = m.begin()->first + " in container " + std::to_string(static_cast<int>(c));
      fs.set(wrap(c, HostileCase{"text", payload, 1}));
      const Outcome o = load_flat(fs);
      ASSERT_TRUE(o.index.has_value()) << where << ": " << o.what;
      ASSERT_NE(o.index->metadata_at(0), nullptr) << where;
      EXPECT_EQ(*o.index->metadata_at(0), m) << where;
    }
  }
}

TEST(SnapshotCapped, HeaderClaimingTwoToTheSixtyVectors) {
  const std::uint64_t huge = std::uint64_t{1} << 60;
  Bytes p = payload_prefix(kDim, huge, 1);
  const HostileCase h{"n", pad(p, 64).data(), huge};
  for (Container c : {Container::V1, Container::V2None, Container::V2Zstd, Container::V2Lz4, Container::V3None,
                      Container::V3Zstd}) {
    const Buf file = wrap(c, h);
    const test::ChildOutcome r = test::run_capped(kCap, [&] { return load_in_child(file, ErrorKind::InvalidPayload); });
    EXPECT_TRUE(r.exited && r.code == kTypedError) << "container " << static_cast<int>(c) << ": " << r.describe();
  }
}

// A zstd frame header is a dozen bytes that can ask for a 2^27-byte window
// (the decoder's cap): zstd mallocs it (invisible to the operator-new
// counter). Under the cap the load must still end in a typed error. A frame
// asking for more than the cap (2^31) is refused by zstd outright.
TEST(SnapshotCapped, ZstdFrameAskingForAHugeWindow) {
  for (std::uint8_t window_descriptor : {std::uint8_t{17 << 3}, std::uint8_t{21 << 3}}) {
    Bytes z;
    z.u32(0xFD2FB528u);  // zstd magic
    z.u8(0x00);          // no content size, not single-segment, no checksum, no dictionary
    z.u8(window_descriptor);  // window log = 10 + exponent
    // One last RLE block of 64 zero bytes: header = last(1) | type RLE(1) << 1 | size << 3.
    const std::uint32_t block = 1u | (1u << 1) | (64u << 3);
    z.u8(static_cast<std::uint8_t>(block)).u8(static_cast<std::uint8_t>(block >> 8)).u8(static_cast<std::uint8_t>(block >> 16));
    z.u8(0x00);
    V3Header h;
    h.compression = 1;
    const Buf file = v3_file(h, 64, z.data());
    const test::ChildOutcome r = test::run_capped(std::size_t{96} << 20, [&] { return load_in_child(file, std::nullopt); });
    EXPECT_TRUE(r.exited && r.code == kTypedError) << "window descriptor " << int(window_descriptor) << ": "
                                                   << r.describe();
  }
}

// A v2 LZ4 block must be decompressed in one piece: the declared length is
// allocated at once. The expansion guard bounds it by 4096 x the stored bytes
// before anything is allocated; a declared length just inside the guard is
// then a bounded allocation that fails cleanly when the block does not fill it.
TEST(SnapshotCapped, Lz4BlockDeclaringTheLargestAcceptedLength) {
  const Buf payload = model_payload();
  const Buf l = lz4_block(payload);
  for (std::uint64_t ulen : {std::uint64_t{4096} * l.size(), std::uint64_t{4096} * l.size() + 1}) {
    const Buf file = v2_file(2, ulen, l, model_rows().size());
    const test::ChildOutcome r = test::run_capped(kCap, [&] { return load_in_child(file, ErrorKind::Compression); });
    EXPECT_TRUE(r.exited && r.code == kTypedError) << "declared " << ulen << ": " << r.describe();
  }
}

}  // namespace
}  // namespace iqdb::persist
