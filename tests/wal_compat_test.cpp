// Reference (WAL version 1) logs: written here byte by byte from
// docs/FORMAT.md, beside a version-2 snapshot also built
// byte by byte (flat payload), with CRCs from zlib. Loading in WAL mode must
// replay them exactly, then migrate the log to version 2.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <cstring>
#include <iqdb/persist.hpp>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "support/format_builders.hpp"
#include "support/test_util.hpp"
#include "support/wal_test_util.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;
using test::Bytes;

// ---------------------------------------------------------------- model

using test::diff;
using test::Entry;
using test::Model;

std::uint32_t zcrc(const std::vector<std::byte>& b) {
  return static_cast<std::uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(b.data()), static_cast<uInt>(b.size())));
}

// ---------------------------------------------------------------- reference encoders

constexpr std::uint64_t kDim = 3;
constexpr std::uint8_t kMetricDotProduct = 1;

using test::put_id;
using test::put_value;

// Entries in ascending key order (std::map iterates so).
void put_entries(Bytes& b, const Metadata& m) {
  b.u32(static_cast<std::uint32_t>(m.size()));
  for (const auto& [k, v] : m) {
    b.u32(static_cast<std::uint32_t>(k.size())).str(k);
    put_value(b, v);
  }
}

// A version-2 snapshot of `rows` (in storage order): header, CRC over the
// region after it, compression preamble (scheme 0 = none), flat payload.
std::vector<std::byte> v2_snapshot(const std::vector<std::pair<VectorId, Entry>>& rows) {
  Bytes payload;
  payload.u32(1).u64(kDim).u8(kMetricDotProduct).u64(rows.size());
  payload.u8(1);  // ids tagged (mixed u64 and byte ids)
  for (const auto& [id, e] : rows) {
    if (id.is_u64()) {
      payload.u8(0).u64(id.as_u64());
    } else {
      payload.u8(1).u64(id.as_bytes().size()).str(id.as_bytes());
    }
  }
  std::uint64_t with_meta = 0;
  for (const auto& r : rows) with_meta += r.second.meta ? 1 : 0;
  payload.u64(with_meta);
  for (std::uint64_t row = 0; row < rows.size(); ++row) {
    if (!rows[row].second.meta) continue;
    payload.u64(row);
    put_entries(payload, *rows[row].second.meta);
  }
  for (const auto& r : rows) {
    for (float f : r.second.vec) payload.f32(f);
  }

  Bytes region;
  region.u8(0).u64(payload.size()).append(payload.data());
  Bytes file;
  file.str("IQDBPRST").u32(2).u64(4).str("flat").u64(kDim).u8(kMetricDotProduct).u64(rows.size());
  file.u32(zcrc(region.data())).append(region.data());
  return file.data();
}

std::vector<std::byte> v1_insert(const VectorId& id, const std::vector<float>& v, const std::optional<Metadata>& m) {
  Bytes b;
  b.u8(1);
  put_id(b, id);
  b.u32(static_cast<std::uint32_t>(v.size()));
  for (float f : v) b.f32(f);
  if (m) {
    b.u8(1);
    put_entries(b, *m);
  } else {
    b.u8(0);
  }
  return b.data();
}

std::vector<std::byte> v1_erase(const VectorId& id) {
  Bytes b;
  b.u8(2);
  put_id(b, id);
  return b.data();
}

// A v1 log: the 12-byte header and the frames; `starts` receives each
// frame's offset.
std::vector<std::byte> v1_log(const std::vector<std::vector<std::byte>>& bodies, std::vector<std::uint64_t>* starts) {
  Bytes log;
  log.str(std::string("IQDBWAL\0", 8)).u32(1);
  for (const auto& body : bodies) {
    if (starts != nullptr) starts->push_back(log.size());
    log.u32(static_cast<std::uint32_t>(body.size())).u32(zcrc(body)).append(body);
  }
  return log.data();
}

// ---------------------------------------------------------------- the fixture's content

const VectorId kSnapB = VectorId::bytes("snap-b");
const VectorId kLogX = VectorId::bytes(std::string("lo\0g\xff", 5));

std::vector<std::pair<VectorId, Entry>> snapshot_rows() {
  return {
      {VectorId(1), Entry{{1.0f, 2.0f, 3.0f}, std::nullopt}},
      {kSnapB, Entry{{-1.0f, 0.25f, 8.0f}, Metadata{{"a", Value(5)}, {"z", Value("q")}}}},
      {VectorId(2), Entry{{0.0f, -0.0f, 1e-30f}, std::nullopt}},
  };
}

// One logged mutation and what it does to the model.
struct Logged {
  std::vector<std::byte> body;
  void (*apply)(Model&);
};

const Metadata& all_kinds() {
  static const Metadata m = {{"b", Value(true)},
                             {"f", Value(2.5)},
                             {"i", Value(static_cast<std::int64_t>(-7))},
                             {"n", Value()},
                             {"s", Value("h\xc3\xa9llo")}};
  return m;
}

std::vector<Logged> log_records() {
  return {
      {v1_insert(VectorId(10), {0.5f, 1.5f, 2.5f}, all_kinds()),
       [](Model& m) { m[VectorId(10)] = Entry{{0.5f, 1.5f, 2.5f}, all_kinds()}; }},
      {v1_insert(kLogX, {9.0f, 8.0f, 7.0f}, std::nullopt),
       [](Model& m) { m[kLogX] = Entry{{9.0f, 8.0f, 7.0f}, std::nullopt}; }},
      {v1_erase(VectorId(1)), [](Model& m) { m.erase(VectorId(1)); }},
      {v1_erase(kSnapB), [](Model& m) { m.erase(kSnapB); }},
      {v1_insert(VectorId(11), {std::nanf(""), -1.0f, 3.0f}, Metadata{{"only", Value(std::nan(""))}}),
       [](Model& m) { m[VectorId(11)] = Entry{{std::nanf(""), -1.0f, 3.0f}, Metadata{{"only", Value(std::nan(""))}}}; }},
      {v1_erase(VectorId(10)), [](Model& m) { m.erase(VectorId(10)); }},
      {v1_insert(VectorId(10), {4.0f, 4.0f, 4.0f}, Metadata{{"again", Value(false)}}),
       [](Model& m) { m[VectorId(10)] = Entry{{4.0f, 4.0f, 4.0f}, Metadata{{"again", Value(false)}}}; }},
  };
}

Model snapshot_model() {
  Model m;
  for (const auto& [id, e] : snapshot_rows()) m[id] = e;
  return m;
}

// The model after the first `n` logged records.
Model model_after(std::size_t n) {
  Model m = snapshot_model();
  const auto recs = log_records();
  for (std::size_t i = 0; i < n; ++i) recs[i].apply(m);
  return m;
}

PersistConfig wal_config(const fs::path& p) {
  PersistConfig cfg(p);
  cfg.wal_enabled = true;
  return cfg;
}

fs::path log_of(const PersistConfig& cfg) { return wal::log_path_for(cfg.path); }

// Writes the snapshot and the v1 log (all records) into `dir`.
PersistConfig write_fixture(const test::TempDir& dir, std::vector<std::uint64_t>* starts = nullptr) {
  const PersistConfig cfg = wal_config(dir / "db.iqdb");
  test::write_file(cfg.path, v2_snapshot(snapshot_rows()));
  std::vector<std::vector<std::byte>> bodies;
  for (const Logged& l : log_records()) bodies.push_back(l.body);
  test::write_file(log_of(cfg), v1_log(bodies, starts));
  return cfg;
}

// After a load that folded `records` v1 records: the snapshot is version 3
// and counts them, the log is an empty version-2 log continuing after them.
void expect_migrated(const PersistConfig& cfg, std::uint64_t records) {
  const SnapshotSummary s = inspect_snapshot(default_file_system(), cfg.path);
  EXPECT_EQ(s.header.format_version, 3u);
  EXPECT_EQ(s.header.last_lsn, records);
  const wal::ScanResult scan = wal::scan_log(default_file_system(), log_of(cfg), {});
  EXPECT_EQ(scan.version, 2u);
  EXPECT_EQ(scan.records, 0u);
  EXPECT_EQ(scan.base_lsn, records + 1);
}

// ---------------------------------------------------------------- tests

// Without the WAL the reference log is replayed too, read-only: the log is
// neither migrated nor changed (issue 13: the snapshot alone hid its writes).
TEST(WalCompat, FixtureLoadsWithoutTheWalReplayingTheLogReadOnly) {
  test::TempDir dir;
  const PersistConfig cfg = write_fixture(dir);
  const std::vector<std::byte> log_before = test::read_file(log_of(cfg));
  PersistConfig plain(cfg.path);
  auto db = PersistedIndex<FlatIndex>::load(plain);
  EXPECT_EQ(diff(db.index(), model_after(log_records().size())), "");
  EXPECT_EQ(db.index().metric(), DistanceMetric::DotProduct);
  EXPECT_EQ(db.last_lsn(), log_records().size());
  EXPECT_EQ(test::read_file(log_of(cfg)), log_before);

  // A save without the WAL of a fresh index would orphan the log's records
  // (numbered 1..n in a version-1 log): refused.
  auto fresh = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::DotProduct), plain);
  EXPECT_EQ(test::error_of([&] { fresh.save(); }), ErrorKind::WouldLoseWrites);
  // Saving the replayed index is safe, and the WAL load (which migrates the
  // log) agrees with it.
  db.save();
  auto with_wal = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(diff(with_wal.index(), model_after(log_records().size())), "");
}

TEST(WalCompat, ReferenceLogIsReplayedThenMigrated) {
  test::TempDir dir;
  const PersistConfig cfg = write_fixture(dir);
  const std::size_t n = log_records().size();
  Model model = model_after(n);
  {
    auto db = PersistedIndex<FlatIndex>::load(cfg);
    EXPECT_EQ(diff(db.index(), model), "");
    EXPECT_EQ(db.index().dim(), kDim);
    EXPECT_EQ(db.index().metric(), DistanceMetric::DotProduct);
    EXPECT_EQ(db.last_lsn(), n);
    expect_migrated(cfg, n);
    db.close();
  }
  {
    // The migrated files give the same index, and take new writes.
    auto db = PersistedIndex<FlatIndex>::load(cfg);
    EXPECT_EQ(diff(db.index(), model), "");
    db.insert(VectorId::bytes("after"), std::vector<float>{1, 1, 1});
    db.erase(VectorId(2));
    db.close();
  }
  model[VectorId::bytes("after")] = Entry{{1, 1, 1}, std::nullopt};
  model.erase(VectorId(2));
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(diff(db.index(), model), "");
  EXPECT_EQ(db.last_lsn(), n + 2);
}

// Cut the final frame: `keep` of its bytes remain (from the frame header on).
class WalCompatTornFinalFrame : public ::testing::TestWithParam<std::uint64_t> {};

TEST_P(WalCompatTornFinalFrame, IsDropped) {
  test::TempDir dir;
  std::vector<std::uint64_t> starts;
  const PersistConfig cfg = write_fixture(dir, &starts);
  std::vector<std::byte> log = test::read_file(log_of(cfg));
  const std::uint64_t last = starts.back();
  const std::uint64_t keep = std::min<std::uint64_t>(GetParam(), log.size() - last - 1);
  log.resize(last + keep);
  test::write_file(log_of(cfg), log);

  const std::size_t n = log_records().size() - 1;
  {
    auto db = PersistedIndex<FlatIndex>::load(cfg);
    EXPECT_EQ(diff(db.index(), model_after(n)), "");
    expect_migrated(cfg, n);
  }
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(diff(db.index(), model_after(n)), "");
}

// 1 and 7 bytes of the frame header, the header alone, into the body, all
// but the last byte.
INSTANTIATE_TEST_SUITE_P(Keep, WalCompatTornFinalFrame, ::testing::Values(1u, 7u, 8u, 12u, 1000000u));

// A v1 log shorter than its 12-byte header holds nothing committed.
class WalCompatShortLog : public ::testing::TestWithParam<std::size_t> {};

TEST_P(WalCompatShortLog, HoldsNothing) {
  test::TempDir dir;
  const PersistConfig cfg = write_fixture(dir);
  std::vector<std::byte> log = test::read_file(log_of(cfg));
  log.resize(GetParam());
  test::write_file(log_of(cfg), log);
  {
    auto db = PersistedIndex<FlatIndex>::load(cfg);
    EXPECT_EQ(diff(db.index(), snapshot_model()), "");
    expect_migrated(cfg, 0);
  }
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(diff(db.index(), snapshot_model()), "");
}

INSTANTIATE_TEST_SUITE_P(Length, WalCompatShortLog, ::testing::Values(0u, 4u, 8u, 11u));

// The reference silently drops everything after a damaged frame; this
// library refuses the log and names the frame.
TEST(WalCompat, DamagedFrameInTheMiddleIsReportedNotDropped) {
  test::TempDir dir;
  std::vector<std::uint64_t> starts;
  const PersistConfig cfg = write_fixture(dir, &starts);
  std::vector<std::byte> log = test::read_file(log_of(cfg));
  log[starts[1] + 8 + 3] ^= std::byte{0x40};  // inside frame 2's body
  test::write_file(log_of(cfg), log);
  try {
    PersistedIndex<FlatIndex>::load(cfg);
    FAIL() << "loaded a v1 log with a damaged frame in the middle";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::CorruptLog) << e.what();
    EXPECT_EQ(e.offset(), std::optional<std::uint64_t>(starts[1])) << e.what();
  }
  // Nothing was migrated: the damaged v1 log is still there for repair.
  EXPECT_EQ(test::read_file(log_of(cfg)), log);
}

}  // namespace
}  // namespace iqdb::persist
