// Writes the seed corpora of the fuzz targets: small valid inputs (each under
// 4 KiB; `snapshot`'s and `flat_payload`'s under 8 KiB) plus a few damaged ones, one directory per
// target.
//
//   make_seeds <out-dir>        # writes <out-dir>/<target>/<name>
//
// Version-3 snapshots and version-2 logs come from the library itself;
// version-1/2 snapshots and version-1 logs are built byte by byte from the
// reference format facts (docs/FORMAT.md), with CRCs from
// zlib and compression from libzstd / liblz4, and flat payloads byte by byte
// from docs/FORMAT.md. Deterministic: the same bytes on every run.
#include <lz4.h>
#include <zlib.h>
#include <zstd.h>

#include <cstdio>
#include <fstream>
#include <stdexcept>

#include "fuzz_support.hpp"

namespace iqdb::persist::fuzz {
namespace {

// ---------------------------------------------------------------- output

fs::path g_out;

void emit(const std::string& target, const std::string& name, std::uint8_t flags, const Bytes& body,
          bool with_flags = true) {
  Bytes b;
  if (with_flags) b.push_back(std::byte{flags});
  b.insert(b.end(), body.begin(), body.end());
  // fuzz/run.sh's -max_len: 8 KiB for `snapshot` and `flat_payload` (an
  // uncompressed v3 file, and the payload the library writes, align the
  // vector block at 4096 bytes: docs/FORMAT.md), 4 KiB otherwise.
  const std::size_t limit = target == "snapshot" || target == "flat_payload" ? 8192 : 4096;
  if (b.size() >= limit) throw std::runtime_error(target + "/" + name + " is " + std::to_string(b.size()) + " bytes");
  const fs::path dir = g_out / target;
  fs::create_directories(dir);
  std::ofstream f(dir / name, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  if (!f) throw std::runtime_error("cannot write " + (dir / name).string());
}

// ---------------------------------------------------------------- byte builders (from the format documents)

struct B {
  Bytes b;
  B& u8(std::uint8_t v) { return put_le(b, v), *this; }
  B& u32(std::uint32_t v) { return put_le(b, v), *this; }
  B& u64(std::uint64_t v) { return put_le(b, v), *this; }
  B& i64(std::int64_t v) { return put_le(b, v), *this; }
  B& f32(float v) { return put_le(b, v), *this; }
  B& f64(double v) { return put_le(b, v), *this; }
  B& str(std::string_view s) {
    const auto* p = reinterpret_cast<const std::byte*>(s.data());
    b.insert(b.end(), p, p + s.size());
    return *this;
  }
  B& raw(const Bytes& x) {
    b.insert(b.end(), x.begin(), x.end());
    return *this;
  }
};

std::uint32_t zcrc(const Bytes& b, std::size_t from = 0) {
  return static_cast<std::uint32_t>(
      crc32(0, reinterpret_cast<const Bytef*>(b.data()) + from, static_cast<uInt>(b.size() - from)));
}

// Flat payload (docs/FORMAT.md): dim 3, DotProduct, ids 10 (u64) and "id-b"
// (bytes), metadata on row 1 with one entry of each value kind.
Bytes flat_payload_tagged() {
  B p;
  p.u32(1).u64(3).u8(1).u64(2).u8(1);
  p.u8(0).u64(10);
  p.u8(1).u64(4).str("id-b");
  p.u64(1);                       // one metadata record
  p.u64(1).u32(5);                // row 1, 5 entries, keys ascending
  p.u32(1).str("a").u8(0).u32(2).str("hi");
  p.u32(1).str("b").u8(1).i64(-7);
  p.u32(1).str("c").u8(2).f64(0.25);
  p.u32(1).str("d").u8(3).u8(1);
  p.u32(1).str("e").u8(4);
  p.f32(1).f32(2).f32(3).f32(-1).f32(0).f32(0.5f);
  return p.b;
}

// Flat payload, u64 ids only: dim 2, Cosine, ids 1, 2, 3, no metadata.
Bytes flat_payload_u64() {
  B p;
  p.u32(1).u64(2).u8(0).u64(3).u8(0);
  p.u64(1).u64(2).u64(3);
  p.u64(0);
  for (int i = 0; i < 6; ++i) p.f32(static_cast<float>(i) * 0.5f);
  return p.b;
}

// Reference snapshot, version 1 or 2 (docs/FORMAT.md).
Bytes ref_snapshot(std::uint32_t version, std::uint64_t dim, std::uint8_t metric, std::uint64_t n,
                   const Bytes& payload_region) {
  B h;
  h.str("IQDBPRST").u32(version).u64(4).str("flat").u64(dim).u8(metric).u64(n);
  h.u32(zcrc(payload_region));
  h.raw(payload_region);
  return h.b;
}

Bytes v2_region(std::uint8_t scheme, const Bytes& payload) {
  B r;
  r.u8(scheme).u64(payload.size());
  if (scheme == 0) {
    r.raw(payload);
  } else if (scheme == 1) {
    Bytes z(ZSTD_compressBound(payload.size()));
    const std::size_t n = ZSTD_compress(z.data(), z.size(), payload.data(), payload.size(), 3);
    if (ZSTD_isError(n)) throw std::runtime_error("zstd");
    z.resize(n);
    r.raw(z);
  } else {
    Bytes z(static_cast<std::size_t>(LZ4_compressBound(static_cast<int>(payload.size()))));
    const int n = LZ4_compress_default(reinterpret_cast<const char*>(payload.data()), reinterpret_cast<char*>(z.data()),
                                       static_cast<int>(payload.size()), static_cast<int>(z.size()));
    if (n <= 0) throw std::runtime_error("lz4");
    z.resize(static_cast<std::size_t>(n));
    r.raw(z);
  }
  return r.b;
}

// Reference log, version 1: frames of (length, zlib CRC of the body, body).
Bytes ref_log(const std::vector<Bytes>& bodies) {
  B l;
  l.str(std::string_view("IQDBWAL\0", 8)).u32(1);
  for (const Bytes& body : bodies) l.u32(static_cast<std::uint32_t>(body.size())).u32(zcrc(body)).raw(body);
  return l.b;
}

Bytes op_insert_u64(std::uint64_t id, std::vector<float> v, bool with_meta) {
  B o;
  o.u8(1).u8(0).u64(id).u32(static_cast<std::uint32_t>(v.size()));
  for (float f : v) o.f32(f);
  o.u8(with_meta ? 1 : 0);
  if (with_meta) o.u32(2).u32(3).str("tag").u8(0).u32(3).str("red").u32(4).str("year").u8(1).i64(2024);
  return o.b;
}
Bytes op_insert_bytes(std::string_view id, std::vector<float> v) {
  B o;
  o.u8(1).u8(1).u64(id.size()).str(id).u32(static_cast<std::uint32_t>(v.size()));
  for (float f : v) o.f32(f);
  o.u8(0);
  return o.b;
}
Bytes op_erase_u64(std::uint64_t id) {
  B o;
  o.u8(2).u8(0).u64(id);
  return o.b;
}

// ---------------------------------------------------------------- library-made files

FlatIndex small_index(std::uint64_t dim) {
  FlatIndex ix(dim, DistanceMetric::Cosine);
  std::vector<float> v(static_cast<std::size_t>(dim));
  for (std::uint64_t i = 0; i < 3; ++i) {
    for (std::size_t j = 0; j < v.size(); ++j) v[j] = static_cast<float>(i * 10 + j) - 4.5f;
    if (i == 1) {
      ix.insert(VectorId::bytes("b\xc3\xa9"), v, Metadata{{"n", Value(std::int64_t{3})}, {"s", Value("x")}});
    } else {
      ix.insert(i + 100, v);
    }
  }
  return ix;
}

// 512 zero vectors of dim 64 (128 KiB of payload): compresses well.
FlatIndex sparse_index() {
  FlatIndex ix(64, DistanceMetric::Euclidean);
  const std::vector<float> zero(64, 0.0f);
  for (std::uint64_t i = 0; i < 512; ++i) ix.insert(i, zero);
  return ix;
}

Bytes v3_snapshot(const FlatIndex& ix, Compression c, std::uint64_t last_lsn = 0) {
  MemFileSystem mfs;
  const SnapshotInfo info{FlatIndex::index_type, ix.dim(), ix.metric(), ix.size(), last_lsn};
  write_snapshot(mfs, "/s", info, c, false, [&](PayloadWriter& w) { ix.save_to(w); });
  return mfs.get("/s");
}

Bytes payload_of(const FlatIndex& ix) {
  VectorPayloadWriter w;
  ix.save_to(w);
  return w.bytes();
}

// A version-2 log written by the library over wal_base_index().
Bytes library_log(const std::function<void(PersistedIndex<FlatIndex>&)>& ops) {
  MemFileSystem mfs;
  PersistConfig cfg(kDbPath);
  cfg.file_system = &mfs;
  cfg.wal_enabled = true;
  cfg.fsync_policy = FsyncPolicy::never();
  auto db = PersistedIndex<FlatIndex>::open_with(wal_base_index(), cfg);
  ops(db);
  db.close();
  // A new log is made with zeros past its frames (1 MiB in all: the
  // preallocation, docs/FORMAT.md): the seed ends with its last frame.
  Bytes log = mfs.get(kLogPath);
  log.resize(static_cast<std::size_t>(wal::scan_log(mfs, kLogPath, {}).valid_bytes));
  return log;
}

void basic_ops(PersistedIndex<FlatIndex>& db) {
  const float a[2] = {5, 6};
  const float b[2] = {-1, 0.25f};
  db.insert(3, a, Metadata{{"color", Value("blue")}, {"ok", Value(true)}});
  db.erase(1);
  db.insert(VectorId::bytes("k7"), b);
  WriteBatch batch;
  batch.insert(4, a).erase(3).insert(5, b, Metadata{{"f", Value(1.5)}, {"z", Value()}});
  db.write(batch);
}

// ---------------------------------------------------------------- the corpora

void header_and_snapshot() {
  const Bytes p_tag = flat_payload_tagged();
  const Bytes p_u64 = flat_payload_u64();
  struct Seed {
    std::string name;
    Bytes file;
  };
  const std::vector<Seed> seeds = {
      {"v1-none", ref_snapshot(1, 3, 1, 2, p_tag)},
      {"v1-u64", ref_snapshot(1, 2, 0, 3, p_u64)},
      {"v2-none", ref_snapshot(2, 3, 1, 2, v2_region(0, p_tag))},
      {"v2-zstd", ref_snapshot(2, 3, 1, 2, v2_region(1, p_tag))},
      {"v2-lz4-block", ref_snapshot(2, 3, 1, 2, v2_region(2, p_tag))},
      {"v3-none", v3_snapshot(small_index(4), Compression::none(), 7)},
      {"v3-zstd", v3_snapshot(small_index(4), Compression::zstd(3))},
      {"v3-lz4-frame", v3_snapshot(small_index(4), Compression::lz4())},
      {"v3-empty", v3_snapshot(FlatIndex(8, DistanceMetric::Hamming), Compression::none())},
      {"v3-sparse-lz4-frame", v3_snapshot(sparse_index(), Compression::lz4())},
      {"v2-sparse-lz4-block", ref_snapshot(2, 64, 2, 512, v2_region(2, payload_of(sparse_index())))},
  };
  for (const Seed& s : seeds) {
    emit("snapshot", s.name, 0, s.file);
    const Bytes head(s.file.begin(), s.file.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(s.file.size(), 200)));
    emit("header", s.name, 0, s.file.size() <= 200 ? s.file : head, true);
  }
  // With fix-ups and the other re-save schemes.
  emit("snapshot", "v3-none-fixup-zstd", 1 | 2 | 4, v3_snapshot(small_index(2), Compression::none()));
  emit("snapshot", "v2-zstd-fixup-lz4", 1 | 8, ref_snapshot(2, 3, 1, 2, v2_region(1, p_tag)));
  // Also loaded from a real file with map_snapshot: mapped (aligned,
  // uncompressed) and copied (zstd).
  emit("snapshot", "v3-none-mapped", 16, v3_snapshot(small_index(4), Compression::none(), 7));
  emit("snapshot", "v3-zstd-mapped", 16, v3_snapshot(small_index(4), Compression::zstd(3)));
  const Bytes big = v3_snapshot(small_index(1), Compression::none());
  emit("header", "v3-fixup-big-file", 1 | 6, Bytes(big.begin(), big.begin() + 200));  // the file's first bytes
}

void wal_scan() {
  const Bytes v2 = library_log(basic_ops);
  emit("wal_scan", "v2-basic", 0, v2);
  emit("wal_scan", "v2-basic-fixup", 1, v2);
  // A torn tail: the last frame cut short.
  emit("wal_scan", "v2-torn-tail", 0, Bytes(v2.begin(), v2.end() - 7));
  // Zero padding after the last frame (what preallocation leaves).
  Bytes padded = v2;
  padded.resize(padded.size() + 64);
  emit("wal_scan", "v2-zero-padding", 0, padded);
  // Mid-log corruption: a byte of the first frame's body flipped, frames after it intact.
  Bytes mid = v2;
  mid[40 + 8 + 14] ^= std::byte{0x40};
  emit("wal_scan", "v2-mid-log-corruption", 0, mid);
  const Bytes v1 = ref_log({op_insert_u64(3, {1, 2}, true), op_erase_u64(1), op_insert_bytes("xy", {0, -1})});
  emit("wal_scan", "v1-basic", 0, v1);
  emit("wal_scan", "v1-torn-tail", 0, Bytes(v1.begin(), v1.end() - 3));
  emit("wal_scan", "v1-header-only", 0, ref_log({}));
  emit("wal_scan", "empty", 0, {});
}

// With flag bit 3 the target inserts metadata made of the input's last 4
// bytes: end those seeds with 4 zero bytes (zero padding after the last
// frame, the clean end of a log), so that the metadata is valid UTF-8.
Bytes zero_tail(Bytes log) {
  log.resize(log.size() + 4);
  return log;
}

void wal_replay() {
  const Bytes v2 = library_log(basic_ops);
  emit("wal_replay", "v2-basic", 0, v2);
  emit("wal_replay", "v2-basic-folded2-insert", 2 | 8, zero_tail(v2));
  emit("wal_replay", "v2-basic-always-checkpoint", 1 | 4 | 16 | 32, v2);
  emit("wal_replay", "v2-torn-tail", 0, Bytes(v2.begin(), v2.end() - 5));
  emit("wal_replay", "v2-empty-log-insert", 8 | 16, zero_tail(library_log([](PersistedIndex<FlatIndex>&) {})));
  const Bytes v1 = ref_log({op_insert_u64(3, {1, 2}, true), op_erase_u64(1), op_insert_bytes("xy", {0, -1})});
  emit("wal_replay", "v1-basic", 0, v1);
  emit("wal_replay", "v1-folded2-insert", 2 | 8, zero_tail(v1));
  emit("wal_replay", "v1-torn-tail", 16, Bytes(v1.begin(), v1.end() - 3));
}

void flat_payload() {
  emit("flat_payload", "tagged-all-kinds", 0, flat_payload_tagged(), false);
  emit("flat_payload", "u64-ids", 0, flat_payload_u64(), false);
  emit("flat_payload", "library-small", 0, payload_of(small_index(3)), false);
  emit("flat_payload", "library-empty", 0, payload_of(FlatIndex(1, DistanceMetric::Manhattan)), false);
}

// A RADOS head record (docs/DISTRIBUTED.md, "The head object"), byte by
// byte: C = crcs.size() stripe CRCs, the record's CRC over all before it.
Bytes head_record(std::uint64_t gen, std::uint64_t prev, std::uint64_t total, std::uint64_t stripe,
                  const std::vector<std::uint32_t>& crcs) {
  B r;
  r.str("IQDBHEAD").u32(1).u32(static_cast<std::uint32_t>(68 + 4 * crcs.size())).u32(0).u32(0);
  r.u64(gen).u64(prev).u64(total).u64(stripe).u64(crcs.size());
  for (const std::uint32_t c : crcs) r.u32(c);
  r.u32(zcrc(r.b));
  return r.b;
}

void head_records() {
  emit("head_record", "one-stripe", 0, head_record(1, 0, 5000, 65536, {0x12345678}));
  emit("head_record", "three-stripes", 0, head_record(9, 7, 2 * 4096 + 1, 4096, {1, 2, 0xffffffff}));
  // Geometry that does not add up (total fills two stripes, three declared):
  // with bit 0 the target recomputes the CRC, so only the geometry is wrong.
  Bytes bad = head_record(3, 2, 4096 + 1, 4096, {1, 2, 3});
  bad[bad.size() - 1] ^= std::byte{1};
  emit("head_record", "bad-geometry-fixup", 1, bad);
  // A generation attribute's text (bit 1: the first 16 bytes).
  emit("head_record", "generation-text", 2, B().str("00000000000000ff").b);
}

}  // namespace
}  // namespace iqdb::persist::fuzz

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <out-dir>\n", argv[0]);
    return 2;
  }
  using namespace iqdb::persist::fuzz;
  g_out = argv[1];
  header_and_snapshot();
  wal_scan();
  wal_replay();
  flat_payload();
  head_records();
  return 0;
}
