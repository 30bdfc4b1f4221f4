// The mapped load (PersistConfig::map_snapshot; docs/API.md, "Mapped load";
// docs/FORMAT.md, "The flat payload", version 2): the file's bytes against
// an independently built byte sequence, the mapped index against a copied
// one and a plain model, damage found before the load returns, mutations
// and checkpoints while mapped, and what other processes writing to or
// truncating the mapped file do (real processes, fork).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <vector>

#include "iqdb/persist.hpp"
#include "support/format_builders.hpp"
#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

using test::Buf;
using test::TempDir;

constexpr std::uint64_t kDim = 8;
constexpr std::size_t kPage = 4096;
constexpr std::uint64_t kHeaderLen = 78 + 4;  // docs/FORMAT.md: 78 + N, tag "flat"

// Row i's vector: distinct, exact in f32.
std::vector<float> row_vec(std::uint64_t i) {
  std::vector<float> v(kDim);
  for (std::uint64_t j = 0; j < kDim; ++j) v[j] = static_cast<float>(i * 16 + j) + 0.25f;
  return v;
}

FlatIndex make_index(std::uint64_t n) {
  FlatIndex index(kDim, DistanceMetric::Euclidean);
  for (std::uint64_t i = 0; i < n; ++i) index.insert(i + 1000, row_vec(i));
  return index;
}

PersistConfig config_for(const std::filesystem::path& p, bool map, Compression c = Compression::none()) {
  PersistConfig cfg(p);
  cfg.fsync_policy = FsyncPolicy::never();
  cfg.compression = c;
  cfg.map_snapshot = map;
  return cfg;
}

void save(FlatIndex index, const PersistConfig& cfg) { PersistedIndex<FlatIndex>::open_with(std::move(index), cfg).save(); }

// The flat payload, version 2, built by hand from docs/FORMAT.md: u64 ids,
// no metadata, then pad_len u32 and zeros so that the vectors start at a
// multiple of 4096 in a file whose header is kHeaderLen bytes.
Buf expected_payload(std::uint64_t n) {
  test::Bytes b;
  b.u32(2).u64(kDim).u8(2).u64(n).u8(0);
  for (std::uint64_t i = 0; i < n; ++i) b.u64(i + 1000);
  b.u64(0);
  const std::uint64_t vectors_at = kHeaderLen + b.size() + 4;
  const std::uint64_t pad = (kPage - vectors_at % kPage) % kPage;
  b.u32(static_cast<std::uint32_t>(pad));
  for (std::uint64_t k = 0; k < pad; ++k) b.u8(0);
  for (std::uint64_t i = 0; i < n; ++i) {
    for (const float x : row_vec(i)) b.f32(x);
  }
  return b.data();
}

// File offset of the vectors in a file written by this library (n rows).
std::uint64_t vectors_offset(std::uint64_t n) {
  const Buf p = expected_payload(n);
  return kHeaderLen + p.size() - n * kDim * sizeof(float);
}

TEST(MappedLoadFormat, FileMatchesTheDocumentedBytes) {
  TempDir dir;
  const auto path = dir / "a.iqdb";
  for (const std::uint64_t n : {1u, 3u, 500u, 511u, 512u}) {
    save(make_index(n), config_for(path, false));
    test::V3Fields v;
    v.f = {"flat", kDim, 2, n};
    v.optional = 1 | 2;  // aligned block; saved without the WAL
    const Buf payload = expected_payload(n);
    EXPECT_EQ(test::read_file(path), test::v3_file(v, payload.size(), payload)) << n << " rows";
    EXPECT_EQ(vectors_offset(n) % kPage, 0u);
  }
  // docs/FORMAT.md's worked example: 3 vectors, pad_len 3956 at payload
  // position 54, the vectors at file offset 4096, 4192 bytes in all.
  save(make_index(3), config_for(path, false));
  const Buf file = test::read_file(path);
  ASSERT_EQ(file.size(), 4192u);
  EXPECT_EQ(test::get_u32(file, kHeaderLen + 54), 3956u);
  EXPECT_EQ(std::memcmp(file.data() + 4096, row_vec(0).data(), kDim * sizeof(float)), 0);
}

TEST(MappedLoadFormat, CompressedFilesAreNotMappable) {
  TempDir dir;
  const auto path = dir / "c.iqdb";
  save(make_index(100), config_for(path, false, Compression::lz4()));
  const FileHeader h = inspect_snapshot(default_file_system(), path).header;
  EXPECT_EQ(h.optional_flags, 2u);  // saved without the WAL; no aligned block
  EXPECT_FALSE(is_mappable(h));
  save(make_index(100), config_for(path, false));
  EXPECT_TRUE(is_mappable(inspect_snapshot(default_file_system(), path).header));
}

TEST(MappedLoad, EqualsTheCopiedLoadAndIsAlignedInPlace) {
  TempDir dir;
  const auto path = dir / "m.iqdb";
  save(make_index(3000), config_for(path, false));
  auto copied = PersistedIndex<FlatIndex>::load(config_for(path, false));
  auto mapped = PersistedIndex<FlatIndex>::load(config_for(path, true));
  EXPECT_FALSE(copied.index().mapped());
  ASSERT_TRUE(mapped.index().mapped());
  EXPECT_TRUE(mapped.index() == copied.index());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(mapped.index().vector_at(0).data()) % kPage, 0u);
  for (std::uint64_t i = 0; i < 3000; i += 97) {
    const auto v = mapped.index().get(VectorId(i + 1000));
    ASSERT_EQ(std::vector<float>(v.begin(), v.end()), row_vec(i));
  }
  EXPECT_EQ(mapped.index().search(row_vec(42), 3), copied.index().search(row_vec(42), 3));
  EXPECT_NO_THROW(mapped.index().check_mapping());
}

// ------------------------------------------------------------------ 2 MiB page-table entries
// Where the page cache holds a file in 2 MiB folios, the kernel maps them
// with one page-table entry each, if the address and the file offset are
// equal modulo 2 MiB. Both halves of that are the library's: the writer's
// large writes fill aligned 2 MiB of the file each, and the mapped load
// places the vectors at a congruent address (docs/PERFORMANCE.md, "Mapped
// load"). Whether the kernel then uses 2 MiB entries is the platform's; the
// bench reports it.
constexpr std::uint64_t kHuge = std::uint64_t{2} << 20;

// Records where each append to a file it creates lands.
class AppendLog final : public FileSystemWrapper {
 public:
  struct Write {
    std::uint64_t at;
    std::uint64_t size;
  };
  AppendLog() : FileSystemWrapper(default_file_system()) {}
  std::unique_ptr<WritableFile> create_exclusive(const std::filesystem::path& p) override {
    return std::make_unique<File>(target().create_exclusive(p), writes);
  }
  std::vector<Write> writes;

 private:
  class File final : public WritableFileWrapper {
   public:
    File(std::unique_ptr<WritableFile> f, std::vector<Write>& log) : WritableFileWrapper(std::move(f)), log_(log) {}
    void append(std::span<const std::byte> d) override {
      log_.push_back({pos_, d.size()});
      pos_ += d.size();
      WritableFileWrapper::append(d);
    }

   private:
    std::vector<Write>& log_;
    std::uint64_t pos_ = 0;
  };
};

// The vector block (6.4 MB here, written straight from the index's memory)
// reaches the file in writes none of which crosses a multiple of 2 MiB, and
// together they cover it: the block's first write ends on the first
// boundary after its start, the rest fill whole 2 MiB.
TEST(MappedLoadHugePages, VectorWritesEndOnTwoMiBBoundaries) {
  TempDir dir;
  AppendLog fs;
  const std::uint64_t n = 200000;
  PersistConfig cfg = config_for(dir / "h.iqdb", false);
  cfg.file_system = &fs;
  save(make_index(n), cfg);
  const std::uint64_t vec_at = vectors_offset(n);
  const std::uint64_t vec_end = vec_at + n * kDim * sizeof(float);
  ASSERT_GT(vec_end - vec_at, 3 * kHuge);
  std::uint64_t covered = 0;
  std::size_t whole = 0;
  for (const AppendLog::Write& w : fs.writes) {
    if (w.at + w.size <= vec_at || w.at >= vec_end) continue;
    ASSERT_GE(w.at, vec_at) << "a write mixes the vectors with what precedes them";
    EXPECT_EQ(w.at / kHuge, (w.at + w.size - 1) / kHuge) << "the write at " << w.at << " of " << w.size << " bytes";
    covered += std::min(w.at + w.size, vec_end) - w.at;
    if (w.size == kHuge) ++whole;
  }
  EXPECT_EQ(covered, vec_end - vec_at);
  EXPECT_EQ(whole, (vec_end / kHuge) - (vec_at + kHuge - 1) / kHuge);
  auto db = PersistedIndex<FlatIndex>::load(config_for(dir / "h.iqdb", true));
  EXPECT_TRUE(db.index() == make_index(n));
}

// The mapped vectors sit at an address equal to their file offset modulo
// 2 MiB, for files whose vectors start anywhere in a 2 MiB window.
TEST(MappedLoadHugePages, MappedVectorsAreCongruentToTheirFileOffset) {
  TempDir dir;
  const auto path = dir / "c.iqdb";
  std::vector<std::uint64_t> seen;
  for (const std::uint64_t n : {600u, 70000u, 140000u, 150000u}) {
    save(make_index(n), config_for(path, false));
    auto db = PersistedIndex<FlatIndex>::load(config_for(path, true));
    ASSERT_TRUE(db.index().mapped());
    const auto addr = reinterpret_cast<std::uintptr_t>(db.index().vector_at(0).data());
    EXPECT_EQ(addr % kHuge, vectors_offset(n) % kHuge) << n << " rows";
    seen.push_back(vectors_offset(n) % kHuge);
    EXPECT_TRUE(db.index() == make_index(n));
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(std::unique(seen.begin(), seen.end()), seen.end()) << "the cases should differ modulo 2 MiB";
}

TEST(MappedLoad, OtherFilesFallBackToCopying) {
  TempDir dir;
  const auto path = dir / "f.iqdb";
  for (const Compression c : {Compression::lz4(), Compression::zstd(3)}) {
    save(make_index(200), config_for(path, false, c));
    auto db = PersistedIndex<FlatIndex>::load(config_for(path, true, c));
    EXPECT_FALSE(db.index().mapped());
    EXPECT_TRUE(db.index() == make_index(200));
  }
  // A version-1 flat payload (no padding field), hand built.
  std::vector<test::FlatRow> rows;
  for (std::uint64_t i = 0; i < 5; ++i) rows.push_back({VectorId(i + 1000), row_vec(i), std::nullopt});
  const Buf v1 = test::flat_payload(kDim, 2, rows, false);
  test::V3Fields v;
  v.f = {"flat", kDim, 2, 5};
  test::write_file(path, test::v3_file(v, v1.size(), v1));
  auto db = PersistedIndex<FlatIndex>::load(config_for(path, true));
  EXPECT_FALSE(db.index().mapped());
  EXPECT_TRUE(db.index() == make_index(5));
}

// Damage anywhere is found before load() returns; nothing mapped escapes.
TEST(MappedLoad, DamageIsFoundBeforeTheLoadReturns) {
  TempDir dir;
  const auto path = dir / "d.iqdb";
  const std::uint64_t n = 2000;
  save(make_index(n), config_for(path, false));
  const Buf good = test::read_file(path);
  const std::uint64_t vec_at = vectors_offset(n);
  for (const std::uint64_t at : {kHeaderLen + 30, vec_at, vec_at + 4096 * 3 + 5, good.size() - 1}) {
    Buf bad = good;
    bad[at] ^= std::byte{0x40};
    test::write_file(path, bad);
    EXPECT_EQ(test::error_of([&] { (void)PersistedIndex<FlatIndex>::load(config_for(path, true)); }),
              ErrorKind::ChecksumMismatch)
        << "byte " << at;
  }
}

// A payload whose CRC is right but whose padding is not what version 2
// allows: structural checks run on the mapped path too.
TEST(MappedLoad, HostilePaddingIsRefused) {
  TempDir dir;
  const auto path = dir / "p.iqdb";
  const std::uint64_t n = 3;
  const Buf payload = expected_payload(n);
  const std::size_t pad_field = 4 + 8 + 1 + 8 + 1 + n * 8 + 8;
  test::V3Fields v;
  v.f = {"flat", kDim, 2, n};
  Buf nonzero = payload;
  nonzero[pad_field + 4 + 7] = std::byte{1};
  Buf too_long = payload;
  const std::uint32_t big = 4096;
  std::memcpy(too_long.data() + pad_field, &big, 4);
  for (const Buf& p : {nonzero, too_long}) {
    test::write_file(path, test::v3_file(v, p.size(), p));
    EXPECT_EQ(test::error_of([&] { (void)PersistedIndex<FlatIndex>::load(config_for(path, true)); }),
              ErrorKind::InvalidPayload);
  }
}

// Writes after a mapped load: appends land in the reservation, an erase
// copies the page it writes, growth past the reservation moves to memory of
// the index's own; none of it reaches the file. Checked against a model.
TEST(MappedLoad, MutationsWorkAndNeverReachTheFile) {
  TempDir dir;
  const auto path = dir / "w.iqdb";
  const std::uint64_t n = 1500;
  save(make_index(n), config_for(path, false));
  const Buf before = test::read_file(path);
  auto db = PersistedIndex<FlatIndex>::load(config_for(path, true));
  ASSERT_TRUE(db.index().mapped());
  std::map<std::uint64_t, std::vector<float>> model;
  for (std::uint64_t i = 0; i < n; ++i) model[i + 1000] = row_vec(i);
  db.erase(VectorId(1000));  // row 0: the last row is moved over it
  model.erase(1000);
  for (std::uint64_t i = n; i < n + 100; ++i) {
    db.insert(VectorId(i + 1000), row_vec(i));
    model[i + 1000] = row_vec(i);
  }
  EXPECT_TRUE(db.index().mapped());  // within the reservation
  const auto check = [&] {
    ASSERT_EQ(db.index().size(), model.size());
    for (const auto& [id, v] : model) {
      const auto got = db.index().get(VectorId(id));
      ASSERT_EQ(std::vector<float>(got.begin(), got.end()), v) << id;
    }
  };
  check();
  for (std::uint64_t i = n + 100; i < 3 * n; ++i) {  // past twice the loaded size
    db.insert(VectorId(i + 1000), row_vec(i));
    model[i + 1000] = row_vec(i);
  }
  EXPECT_FALSE(db.index().mapped());
  check();
  EXPECT_EQ(test::read_file(path), before);
}

// An index saved without metadata loads without a per-row metadata array
// (docs/API.md, "Mapped load": memory); metadata given to it afterwards, by
// an insert, an erase that moves a row, a checkpoint and a reload, still
// ends where the model says, mapped or copied.
TEST(MappedLoad, MetadataAddedAfterALoadWithoutAny) {
  for (const bool map : {true, false}) {
    TempDir dir;
    const auto path = dir / "meta.iqdb";
    const std::uint64_t n = 600;
    save(make_index(n), config_for(path, false));
    PersistConfig cfg = config_for(path, map);
    cfg.wal_enabled = true;
    std::map<std::uint64_t, std::optional<Metadata>> model;  // id -> its metadata
    for (std::uint64_t i = 0; i < n; ++i) model[i + 1000] = std::nullopt;
    {
      auto db = PersistedIndex<FlatIndex>::load(cfg);
      ASSERT_EQ(db.index().mapped(), map);
      for (std::uint64_t i = 0; i < n; i += 50) EXPECT_EQ(db.index().metadata(VectorId(i + 1000)), nullptr);
      db.insert(VectorId(7), row_vec(n), Metadata{{"tag", Value("seven")}});
      model[7] = Metadata{{"tag", Value("seven")}};
      db.insert(VectorId(8), row_vec(n + 1));
      model[8] = std::nullopt;
      db.erase(VectorId(1000));  // row 0: the last row (id 8, none) moves over it
      model.erase(1000);
      db.erase(VectorId(1001));  // row 1: the last row (id 7, with metadata) moves over it
      model.erase(1001);
      WriteBatch b;
      b.insert(VectorId(9), row_vec(n + 2), Metadata{{"k", Value(std::int64_t{9})}});
      db.write(b);
      model[9] = Metadata{{"k", Value(std::int64_t{9})}};
      db.checkpoint();
      db.insert(VectorId(10), row_vec(n + 3), Metadata{{"last", Value(true)}});  // in the log only
      model[10] = Metadata{{"last", Value(true)}};
    }
    auto again = PersistedIndex<FlatIndex>::load(cfg);
    ASSERT_EQ(again.index().size(), model.size());
    for (const auto& [id, meta] : model) {
      const Metadata* got = again.index().metadata(VectorId(id));
      ASSERT_EQ(got != nullptr, meta.has_value()) << id << (map ? " mapped" : " copied");
      if (got != nullptr) {
        EXPECT_EQ(*got, *meta) << id;
      }
    }
  }
}

// FlatIndex keeps u64 ids at 8 bytes a row and widens to VectorId on the
// first byte id: an index that held a byte id (and lost it again) equals,
// saves the same bytes as, and loads (mapped) the same as one that never did.
TEST(MappedLoad, IdsOfEitherFormSaveAndLoadAlike) {
  TempDir dir;
  FlatIndex narrow = make_index(300);
  FlatIndex wide = make_index(300);
  wide.insert(VectorId::bytes("byte id"), row_vec(300));
  EXPECT_FALSE(wide == narrow);
  EXPECT_EQ(wide.id_at(300), VectorId::bytes("byte id"));
  const auto got = wide.get(VectorId(1299));
  EXPECT_EQ(std::vector<float>(got.begin(), got.end()), row_vec(299));
  wide.erase(VectorId::bytes("byte id"));
  EXPECT_TRUE(wide == narrow);
  save(narrow, config_for(dir / "n.iqdb", false));
  save(wide, config_for(dir / "w.iqdb", false));
  EXPECT_EQ(test::read_file(dir / "w.iqdb"), test::read_file(dir / "n.iqdb"));
  test::V3Fields v;  // the bytes of docs/FORMAT.md, as in FileMatchesTheDocumentedBytes
  v.f = {"flat", kDim, 2, 300};
  v.optional = 1 | 2;
  const Buf payload = expected_payload(300);
  EXPECT_EQ(test::read_file(dir / "n.iqdb"), test::v3_file(v, payload.size(), payload));
  auto loaded = PersistedIndex<FlatIndex>::load(config_for(dir / "w.iqdb", true));
  EXPECT_TRUE(loaded.index().mapped());
  EXPECT_TRUE(loaded.index() == narrow);
}

// A checkpoint replaces the file by a rename while it is mapped: the
// mapping keeps the old file, the new file holds the new state.
TEST(MappedLoad, CheckpointWhileMapped) {
  TempDir dir;
  const auto path = dir / "k.iqdb";
  save(make_index(1000), config_for(path, false));
  PersistConfig cfg = config_for(path, true);
  cfg.wal_enabled = true;
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  ASSERT_TRUE(db.index().mapped());
  db.insert(VectorId(5), row_vec(5000));
  db.checkpoint();
  db.erase(VectorId(1001));
  db.checkpoint();
  EXPECT_NO_THROW(db.index().check_mapping());
  FlatIndex model = make_index(1000);
  model.insert(VectorId(5), row_vec(5000));
  model.erase(VectorId(1001));
  EXPECT_TRUE(db.index() == model);
  db.close();
  auto again = PersistedIndex<FlatIndex>::load(config_for(path, true));
  EXPECT_TRUE(again.index().mapped());
  EXPECT_TRUE(again.index() == model);
}

// Another process writes into the mapped file in place (outside the
// library's contract: it replaces snapshots by rename). Linux shows the new
// bytes in pages this process has not written (MAP_PRIVATE copies only on
// write); check_mapping() detects the write. Pages it has written keep its
// own bytes.
TEST(MappedLoadHostile, OverwriteInPlaceIsDetected) {
  TempDir dir;
  const auto path = dir / "o.iqdb";
  const std::uint64_t n = 4096;  // 128 KiB of vectors: 32 pages
  save(make_index(n), config_for(path, false));
  auto db = PersistedIndex<FlatIndex>::load(config_for(path, true));
  ASSERT_TRUE(db.index().mapped());
  db.erase(VectorId(1000));  // writes row 0: its page is now private
  const float ours = db.index().vector_at(0)[0];
  const std::uint64_t far_row = n - 100;  // a page not written here
  ::usleep(20000);  // a later modification time than the save's
  const float theirs = -7.5f;
  EXPECT_EQ(test::in_child([&] {
              const std::uint64_t at = vectors_offset(n) + far_row * kDim * sizeof(float);
              const int fd = ::open(path.c_str(), O_WRONLY);
              if (fd < 0 || ::pwrite(fd, &theirs, 4, static_cast<off_t>(at)) != 4) return 1;
              ::close(fd);
              return 0;
            }),
            0);
  EXPECT_EQ(db.index().vector_at(0)[0], ours);
  EXPECT_EQ(db.index().vector_at(far_row)[0], theirs);  // documented: seen
  EXPECT_EQ(test::error_of([&] { db.index().check_mapping(); }), ErrorKind::InvalidPayload);
}

// Another process truncates the mapped file: check_mapping() says so; a
// read of a page past the new end is SIGBUS (documented), which ends the
// process that mapped the file, here a child: this test process goes on.
TEST(MappedLoadHostile, TruncationIsDetectedAndTouchingIsSigbus) {
  TempDir dir;
  const auto path = dir / "t.iqdb";
  const std::uint64_t n = 4096;
  save(make_index(n), config_for(path, false));
  const auto truncate_elsewhere = [&] {
    return test::in_child([&] { return ::truncate(path.c_str(), 4096) == 0 ? 0 : 1; });
  };
  const auto mapped_then_truncated = [&](bool touch) {
    auto db = PersistedIndex<FlatIndex>::load(config_for(path, true));
    if (!db.index().mapped()) return 2;
    ::usleep(20000);
    if (truncate_elsewhere() != 0) return 3;
    if (touch) {
      ::signal(SIGBUS, SIG_DFL);  // the default disposition (a sanitizer installs its own)
      volatile float x = db.index().vector_at(n - 1)[0];
      (void)x;
      return 4;  // not reached: SIGBUS
    }
    return test::error_of([&] { db.index().check_mapping(); }) == ErrorKind::InvalidPayload ? 0 : 5;
  };
  EXPECT_EQ(test::in_child([&] { return mapped_then_truncated(false); }), 0);
  save(make_index(n), config_for(path, false));
  EXPECT_EQ(test::in_child([&] { return mapped_then_truncated(true); }), 128 + SIGBUS);
}

}  // namespace
}  // namespace iqdb::persist
