// The iqdb-persist tool on adapter snapshots: inspect and verify read any
// snapshot without decoding its payload, so they work on FAISS and hnswlib
// snapshots as on flat ones (checked against the file's own bytes, the CRC
// from zlib); damage is reported; `demo --faiss` runs end to end.
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <iqdb/persist.hpp>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "iqdb-persist/cli.hpp"
#include "support/cli_runner.hpp"
#include "support/test_util.hpp"

#if defined(IQDB_TEST_HAVE_FAISS)
#include <faiss/IndexFlat.h>
#include <faiss/IndexIDMap.h>

#include <iqdb/persist/adapters/faiss.hpp>
#endif
#if defined(IQDB_TEST_HAVE_HNSWLIB)
#include <iqdb/persist/adapters/hnswlib.hpp>
#endif

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

using test::CliResult;
using test::run_cli;

std::uint64_t le(const std::vector<std::byte>& b, std::size_t at, int n) {
  std::uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<std::uint64_t>(b[at + static_cast<std::size_t>(i)]);
  return v;
}

std::uint32_t zlib_crc(const std::vector<std::byte>& b, std::size_t from) {
  uLong c = crc32_z(0L, Z_NULL, 0);
  c = crc32_z(c, reinterpret_cast<const Bytef*>(b.data() + from), b.size() - from);
  return static_cast<std::uint32_t>(c);
}

std::vector<float> vec(std::mt19937& rng, std::size_t d) {
  std::normal_distribution<float> g;
  std::vector<float> v(d);
  for (float& x : v) x = g(rng);
  return v;
}

// inspect (text and JSON) and verify on an intact snapshot, then on one with
// a payload byte flipped.
void check_tool_on(const fs::path& file, const std::string& type, std::uint64_t dim, const std::string& metric,
                   std::uint64_t n, const std::string& compression) {
  const std::vector<std::byte> bytes = test::read_file(file);
  const CliResult json = run_cli({"inspect", "--json", file.string()});
  ASSERT_EQ(json.code, 0) << json.err;
  const nlohmann::json j = nlohmann::json::parse(json.out);
  EXPECT_EQ(j.at("format_version"), 3);
  EXPECT_EQ(j.at("index_type"), type);
  EXPECT_EQ(j.at("dim"), dim);
  EXPECT_EQ(j.at("metric"), metric);
  EXPECT_EQ(j.at("n_vectors"), n);
  EXPECT_EQ(j.at("compression"), compression);
  EXPECT_EQ(j.at("file_size"), bytes.size());
  // v3: header_len u32 at byte 12; the payload (CRC-covered) follows the header.
  EXPECT_EQ(j.at("crc32"), zlib_crc(bytes, static_cast<std::size_t>(le(bytes, 12, 4))));
  const CliResult text = run_cli({"inspect", file.string()});
  EXPECT_EQ(text.code, 0);
  EXPECT_NE(text.out.find(type), std::string::npos) << text.out;
  EXPECT_EQ(run_cli({"verify", file.string()}).code, 0);

  std::vector<std::byte> damaged = bytes;
  damaged[bytes.size() - bytes.size() / 3] ^= std::byte{0x10};
  const fs::path bad = file.parent_path() / ("damaged-" + file.filename().string());
  test::write_file(bad, damaged);
  EXPECT_EQ(run_cli({"inspect", bad.string()}).code, 0);  // the header is intact
  const CliResult verify = run_cli({"verify", bad.string()});
  EXPECT_EQ(verify.code, 1);
  EXPECT_NE((verify.out + verify.err).find("checksum"), std::string::npos) << verify.out << verify.err;
}

#if defined(IQDB_TEST_HAVE_FAISS)
TEST(AdapterCli, InspectAndVerifyReadFaissSnapshots) {
  TempDir dir;
  for (const Compression c : {Compression::none(), Compression::zstd(3)}) {
    const bool zstd = c.kind() == Compression::Kind::Zstd;
    SCOPED_TRACE(zstd ? "zstd" : "none");
    auto inner = std::make_unique<faiss::IndexFlatL2>(12);
    auto map = std::make_unique<faiss::IndexIDMap2>(inner.get());
    map->own_fields = true;
    inner.release();
    FaissIndex ix(std::move(map));
    std::mt19937 rng(1);
    for (std::uint64_t i = 0; i < 500; ++i) ix.insert(10 * i, vec(rng, 12));
    PersistConfig cfg(dir / (zstd ? "f-zstd.iqdb" : "f.iqdb"));
    cfg.compression = c;
    auto db = PersistedIndex<FaissIndex>::open_with(std::move(ix), cfg);
    db.save();
    check_tool_on(cfg.path, "faiss", 12, "Euclidean", 500, zstd ? "zstd" : "none");
    // The library agrees about the damaged copy.
    PersistConfig bad(cfg.path.parent_path() / ("damaged-" + cfg.path.filename().string()));
    try {
      (void)PersistedIndex<FaissIndex>::load(bad);
      ADD_FAILURE() << "damaged snapshot loaded";
    } catch (const PersistError& e) {
      EXPECT_TRUE(e.kind() == ErrorKind::ChecksumMismatch || e.kind() == ErrorKind::Compression) << e.what();
    }
  }
}

TEST(AdapterCli, DemoRunsOnAFaissIndex) {
  TempDir dir;
  const fs::path out_dir = dir / "demo";
  const CliResult r = run_cli({"demo", "--faiss", "--dir", out_dir.string(), "--vectors", "1500", "--dim", "16"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("demo: all checks passed"), std::string::npos) << r.out;
  for (const std::string c : {"none", "zstd", "lz4"}) {
    const fs::path f = out_dir / ("demo-faiss-" + c + ".iqdb");
    ASSERT_TRUE(fs::exists(f)) << f;
    const nlohmann::json j = nlohmann::json::parse(run_cli({"inspect", "--json", f.string()}).out);
    EXPECT_EQ(j.at("index_type"), "faiss");
    EXPECT_EQ(j.at("n_vectors"), 1500);
    EXPECT_EQ(run_cli({"verify", f.string()}).code, 0);
  }
  const CliResult hnsw = run_cli(
      {"demo", "--faiss", "--faiss-index", "hnsw", "--dir", (dir / "h").string(), "--vectors", "800", "--dim", "8"});
  EXPECT_EQ(hnsw.code, 0) << hnsw.out << hnsw.err;
  EXPECT_EQ(run_cli({"demo", "--faiss-index", "ivf"}).code, 2);  // needs --faiss
}

// `checkpoint` folds a FAISS index's log offline, as the hnswlib one below.
TEST(AdapterCli, CheckpointFoldsAFaissIndexsLog) {
  TempDir dir;
  PersistConfig cfg(dir / "f.iqdb");
  cfg.wal_enabled = true;
  std::mt19937 rng(4);
  std::vector<std::vector<float>> rows;
  for (std::uint64_t i = 0; i < 30; ++i) rows.push_back(vec(rng, 5));
  {
    auto map = std::make_unique<faiss::IndexIDMap2>(new faiss::IndexFlatL2(5));
    map->own_fields = true;
    auto db = PersistedIndex<FaissIndex>::open_with(FaissIndex(std::move(map)), cfg);
    for (std::uint64_t i = 0; i < 30; ++i) db.insert(100 + i, rows[i]);  // LSN 1..30
    db.erase(107);                                                        // LSN 31
    db.close();
  }
  const CliResult r = run_cli({"checkpoint", cfg.path.string()});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("(31 log records folded)"), std::string::npos) << r.out;
  const SnapshotSummary after = inspect_snapshot(default_file_system(), cfg.path);
  EXPECT_EQ(after.header.last_lsn, 31u);
  EXPECT_EQ(after.header.n_vectors, 29u);
  auto db = PersistedIndex<FaissIndex>::load(PersistConfig(cfg.path));
  EXPECT_EQ(db.index().size(), 29u);
  EXPECT_FALSE(db.index().contains(107));
  for (std::uint64_t i = 0; i < 30; ++i) {
    if (i == 7) continue;
    const auto hits = db.index().search(rows[i], 1);
    ASSERT_EQ(hits.size(), 1u);
    EXPECT_EQ(hits[0].id, 100 + i);
  }
}
#endif

#if defined(IQDB_TEST_HAVE_HNSWLIB)
TEST(AdapterCli, InspectAndVerifyReadHnswlibSnapshots) {
  TempDir dir;
  HnswlibIndex ix(10, DistanceMetric::Cosine, HnswlibParams{6, 32, 16, 1, 0});
  std::mt19937 rng(2);
  for (std::uint64_t i = 0; i < 300; ++i) ix.insert(i, vec(rng, 10));
  ix.erase(7);
  PersistConfig cfg(dir / "h.iqdb");
  cfg.compression = Compression::lz4();
  auto db = PersistedIndex<HnswlibIndex>::open_with(std::move(ix), cfg);
  db.save();
  check_tool_on(cfg.path, "hnswlib", 10, "Cosine", 299, "lz4");
}

// `checkpoint` folds an hnswlib index's log offline (it refused every type
// but flat before, and `copy` advised it for them): the snapshot then holds
// every logged mutation at the log's last LSN, the log is empty, and the
// loaded index answers as a model of the mutations says.
TEST(AdapterCli, CheckpointFoldsAnHnswlibIndexsLog) {
  TempDir dir;
  PersistConfig cfg(dir / "h.iqdb");
  cfg.wal_enabled = true;
  cfg.compression = Compression::zstd(3);
  std::mt19937 rng(3);
  std::vector<std::vector<float>> rows;
  for (std::uint64_t i = 0; i < 60; ++i) rows.push_back(vec(rng, 6));
  {
    HnswlibIndex ix(6, DistanceMetric::Euclidean, HnswlibParams{6, 32, 64, 1, 0});
    auto db = PersistedIndex<HnswlibIndex>::open_with(std::move(ix), cfg);
    for (std::uint64_t i = 0; i < 40; ++i) db.insert(i, rows[i]);  // LSN 1..40, in the log
    db.erase(5);                                                    // LSN 41
    db.close();
  }
  ASSERT_EQ(inspect_snapshot(default_file_system(), cfg.path).header.last_lsn, 0u);
  const CliResult r = run_cli({"checkpoint", cfg.path.string()});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("(41 log records folded)"), std::string::npos) << r.out;
  const SnapshotSummary after = inspect_snapshot(default_file_system(), cfg.path);
  EXPECT_EQ(after.header.index_type, "hnswlib");
  EXPECT_EQ(after.header.last_lsn, 41u);
  EXPECT_EQ(after.header.n_vectors, 39u);
  EXPECT_EQ(after.header.compression, CompressionScheme::Zstd);
  PersistConfig plain(cfg.path);  // without the WAL: the snapshot alone
  auto db = PersistedIndex<HnswlibIndex>::load(plain);
  EXPECT_EQ(db.index().size(), 39u);
  EXPECT_FALSE(db.index().contains(5));
  for (std::uint64_t i = 0; i < 40; ++i) {
    if (i == 5) continue;
    const auto hits = db.index().search(rows[i], 1);
    ASSERT_EQ(hits.size(), 1u);
    EXPECT_EQ(hits[0].id, i);
    EXPECT_EQ(hits[0].distance, 0.0f);
  }
}
#endif

}  // namespace
}  // namespace iqdb::persist
