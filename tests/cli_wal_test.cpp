// `iqdb-persist wal dump / wal repair / checkpoint`, checked against the
// mutations the test itself made.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include <iqdb/persist.hpp>

#include "iqdb-persist/cli.hpp"
#include "support/cli_runner.hpp"
#include "support/format_builders.hpp"
#include "support/test_util.hpp"
#include "support/wal_test_util.hpp"

namespace iqdb::persist {
namespace {

using nlohmann::json;

using test::run_cli;

std::vector<json> json_lines(const std::string& s) {
  std::vector<json> v;
  std::istringstream in(s);
  for (std::string line; std::getline(in, line);) v.push_back(json::parse(line));
  return v;
}

// A new index at cfg's path with ids 1..n logged (each its own frame), then
// closed (after a sync() when `sync`).
void log_ids(const PersistConfig& cfg, std::uint64_t n, bool sync) {
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
  for (std::uint64_t i = 1; i <= n; ++i) db.insert(i, std::vector<float>{1, 2, 3, static_cast<float>(i)});
  if (sync) db.sync();
}

PersistConfig make_db(const test::TempDir& dir) {
  PersistConfig cfg(dir / "db.iqdb");
  cfg.wal_enabled = true;
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), cfg);
  db.insert(7, std::vector<float>{1.5f, -2.0f},
            Metadata{{"b", Value(true)}, {"f", Value(0.25)}, {"i", Value(-3)}, {"n", Value()}, {"s", Value("x")}});
  db.insert(VectorId::bytes(std::string("\x01\xab", 2)), std::vector<float>{0.0f, 1.0f});
  WriteBatch b;
  b.erase(7).insert(9, std::vector<float>{3.0f, 4.0f});
  db.write(b);
  return cfg;
}

TEST(CliWal, DumpJsonLinesMatchTheMutations) {
  test::TempDir dir;
  const PersistConfig cfg = make_db(dir);
  const test::CliResult r = run_cli({"wal", "dump", "--json", wal::log_path_for(cfg.path).string()});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 5u);
  // 40-byte header, then frames: 8-byte frame header + 20-byte body prefix
  // (first_lsn, count, synced_lsn) + the ops, from the encoding rules.
  const auto insert_len = [](std::size_t id_len, std::size_t dim, std::size_t meta_len) {
    return 1 + 1 + id_len + 4 + 4 * dim + 1 + meta_len;
  };
  const std::size_t meta = 4 + (4 + 1 + 1 + 1) + (4 + 1 + 1 + 8) + (4 + 1 + 1 + 8) + (4 + 1 + 1) + (4 + 1 + 1 + 4 + 1);
  const std::size_t f1 = 8 + 20 + insert_len(8, 2, meta);
  const std::size_t f2 = 8 + 20 + insert_len(8 + 2, 2, 0);
  const std::size_t f3 = 8 + 20 + (1 + 1 + 8) + insert_len(8, 2, 0);
  EXPECT_EQ(lines[0], json::parse(R"({"lsn":1,"op":"insert","id":7,"vector":[1.5,-2.0],
      "metadata":{"b":true,"f":0.25,"i":-3,"n":null,"s":"x"},"offset":40})"));
  // Inserted without metadata: null, not {}.
  json second = json::parse(R"({"lsn":2,"op":"insert","id":{"hex":"01ab"},"vector":[0.0,1.0],"metadata":null})");
  second["offset"] = 40 + f1;
  EXPECT_EQ(lines[1], second);
  json third = json::parse(R"({"lsn":3,"op":"erase","id":7,"batch":{"index":0,"records":2}})");
  third["offset"] = 40 + f1 + f2;
  EXPECT_EQ(lines[2], third);
  json fourth = json::parse(R"({"lsn":4,"op":"insert","id":9,"vector":[3.0,4.0],"metadata":null,
      "batch":{"index":1,"records":2}})");
  fourth["offset"] = 40 + f1 + f2;
  EXPECT_EQ(lines[3], fourth);
  EXPECT_EQ(lines[4], (json{{"version", 2},
                            {"base_lsn", 1},
                            {"records", 4},
                            {"frames", 3},
                            {"valid_bytes", 40 + f1 + f2 + f3},
                            {"torn_tail_bytes", 0},
                            {"unsynced_frames_dropped", 0},
                            {"corrupt_offset", nullptr}}));
}

// What the log holds survives the trip to JSON: no metadata is null, empty
// metadata {}, and non-finite floats are strings (tagged in metadata, where a
// string value could read the same).
TEST(CliWal, DumpJsonKeepsNoneEmptyAndNonFiniteApart) {
  test::TempDir dir;
  PersistConfig cfg(dir / "db.iqdb");
  cfg.wal_enabled = true;
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), cfg);
  const std::vector<float> v{1.0f, 2.0f};
  db.insert(1, v);
  db.insert(2, v, Metadata{});
  db.insert(3, v, Metadata{{"nan", Value(std::nan(""))},
                           {"inf", Value(-std::numeric_limits<double>::infinity())},
                           {"s", Value("NaN")}});
  db.close();
  const test::CliResult r = run_cli({"wal", "dump", "--json", wal::log_path_for(cfg.path).string()});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_TRUE(lines[0].at("metadata").is_null());
  EXPECT_EQ(lines[1].at("metadata"), json::object());
  EXPECT_EQ(lines[2].at("metadata"),
            json::parse(R"({"nan":{"float":"NaN"},"inf":{"float":"-Infinity"},"s":"NaN"})"));
}

TEST(CliWal, RepairIsADryRunWithoutYesThenCutsTheTornTail) {
  test::TempDir dir;
  const PersistConfig cfg = make_db(dir);
  const auto log = wal::log_path_for(cfg.path);
  const test::CliResult clean = run_cli({"wal", "repair", log.string()});
  EXPECT_EQ(clean.code, 0);
  EXPECT_NE(clean.out.find("nothing to repair"), std::string::npos);

  // Tear the last frame: cut the file inside it.
  const test::CliResult dumped = run_cli({"wal", "dump", "--json", log.string()});
  const std::uint64_t valid = json_lines(dumped.out).back()["valid_bytes"];
  std::filesystem::resize_file(log, valid - 3);
  const test::CliResult dry = run_cli({"wal", "repair", log.string()});
  EXPECT_EQ(dry.code, 1);
  EXPECT_EQ(std::filesystem::file_size(log), valid - 3);  // unchanged
  const test::CliResult yes = run_cli({"wal", "repair", "--yes", log.string()});
  EXPECT_EQ(yes.code, 0) << yes.err;
  const auto after = json_lines(run_cli({"wal", "dump", "--json", log.string()}).out).back();
  EXPECT_EQ(after["records"], 2);  // the batch frame (2 records) was the torn one
  EXPECT_EQ(after["torn_tail_bytes"], 0);
  EXPECT_EQ(std::filesystem::file_size(log), after["valid_bytes"].get<std::uint64_t>());
}

// Under Never no frame is known durable: frames after a damaged one are a
// torn tail that a load drops. Dump and repair say so (repair said "0
// intact records" while it cut three intact frames).
TEST(CliWal, DumpAndRepairCountTheIntactUnsyncedFramesTheyDrop) {
  test::TempDir dir;
  const PersistConfig cfg = test::wal_config(dir / "db.iqdb", FsyncPolicy::never());
  log_ids(cfg, 5, /*sync=*/false);
  const auto log = wal::log_path_for(cfg.path);
  std::vector<std::byte> bytes = test::read_file(log);
  std::uint32_t len1 = 0;
  std::memcpy(&len1, bytes.data() + 40, 4);  // frame 1's length (little-endian host)
  const std::size_t frame2 = 40 + len1 + 8;
  std::fill(bytes.begin() + static_cast<std::ptrdiff_t>(frame2), bytes.begin() + static_cast<std::ptrdiff_t>(frame2 + 20),
            std::byte{0});  // frame 2's head never reached the disk
  test::write_file(log, bytes);
  const test::CliResult dumped = run_cli({"wal", "dump", "--json", log.string()});
  EXPECT_EQ(dumped.code, 0) << dumped.err;
  const auto summary = json_lines(dumped.out).back();
  EXPECT_EQ(summary["records"], 1);
  EXPECT_EQ(summary["unsynced_frames_dropped"], 3);
  const test::CliResult text = run_cli({"wal", "dump", log.string()});
  EXPECT_NE(text.out.find("holding 3 intact frames"), std::string::npos) << text.out;
  const test::CliResult dry = run_cli({"wal", "repair", log.string()});
  EXPECT_EQ(dry.code, 1);
  EXPECT_NE(dry.out.find("3 intact unsynced frames"), std::string::npos) << dry.out;
}

// Under Never, records made durable by sync() and a clean close, then one
// frame in the middle damaged (the disk): the frames after it carry no mark
// of that sync, so a load takes them for a torn tail. `checkpoint` and
// `copy` folded the log with exit 0, dropping those intact frames for good
// (an outside hunt). They refuse now (exit 1, corrupt_log naming the log),
// changing nothing; `wal repair --yes` cuts them knowingly, and then both go
// on with the records before the damage.
TEST(CliWal, CheckpointAndCopyRefuseToDropIntactFramesAfterDamage) {
  test::TempDir dir;
  const PersistConfig cfg = test::wal_config(dir / "db.iqdb", FsyncPolicy::never());
  log_ids(cfg, 5, /*sync=*/true);
  const auto log = wal::log_path_for(cfg.path);
  std::vector<std::byte> bytes = test::read_file(log);
  std::uint32_t len1 = 0;
  std::memcpy(&len1, bytes.data() + 40, 4);  // frame 1's length (little-endian host)
  bytes[40 + len1 + 8 + 30] ^= std::byte{0x40};  // inside frame 2 (id 2's record); frames 3..5 intact
  test::write_file(log, bytes);
  const std::vector<std::byte> snapshot_before = test::read_file(cfg.path);
  const std::vector<std::byte> log_before = test::read_file(log);
  const std::filesystem::path copy_to = dir / "copy.iqdb";
  for (const std::vector<std::string>& args : {std::vector<std::string>{"checkpoint", cfg.path.string()},
                                               std::vector<std::string>{"copy", cfg.path.string(), copy_to.string()}}) {
    const test::CliResult r = run_cli(args);
    EXPECT_EQ(r.code, 1) << args[0] << ": " << r.out << r.err;
    EXPECT_NE(r.err.find("corrupt_log"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("3 intact frames"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(log.string()), std::string::npos) << r.err;
    EXPECT_EQ(test::read_file(cfg.path), snapshot_before) << args[0];
    EXPECT_EQ(test::read_file(log), log_before) << args[0];
    EXPECT_FALSE(std::filesystem::exists(copy_to)) << args[0];
  }
  const test::CliResult repaired = run_cli({"wal", "repair", "--yes", log.string()});
  ASSERT_EQ(repaired.code, 0) << repaired.out << repaired.err;
  const test::CliResult copied = run_cli({"copy", cfg.path.string(), copy_to.string()});
  ASSERT_EQ(copied.code, 0) << copied.err;
  const test::CliResult checkpointed = run_cli({"checkpoint", cfg.path.string()});
  ASSERT_EQ(checkpointed.code, 0) << checkpointed.err;
  for (const std::filesystem::path& p : {cfg.path, copy_to}) {
    const auto db = PersistedIndex<FlatIndex>::load(PersistConfig(p));
    EXPECT_EQ(db.index().size(), 1U) << p;
    EXPECT_TRUE(db.index().contains(VectorId(std::uint64_t{1}))) << p;
  }
}

// A frame whose checksum holds but whose contents are malformed (a record
// count of 0, rewritten with its CRC recomputed): loads refuse it
// (CorruptLog), and `wal repair --yes` refused too, with the same error and
// exit 1, leaving a log nothing could load or repair (an outside hunt). It
// is damage there: the dry run says what is dropped, --yes cuts the log
// before it, and the index loads with the records before it.
TEST(CliWal, RepairCutsAFrameWhoseChecksumHoldsButWhoseContentsAreMalformed) {
  test::TempDir dir;
  const PersistConfig cfg = test::wal_config(dir / "db.iqdb", FsyncPolicy::always());
  log_ids(cfg, 4, /*sync=*/false);
  const auto log = wal::log_path_for(cfg.path);
  std::vector<std::byte> bytes = test::read_file(log);
  std::uint64_t salt = 0;
  std::memcpy(&salt, bytes.data() + 16, 8);
  std::uint32_t len1 = 0, len2 = 0;
  std::memcpy(&len1, bytes.data() + 40, 4);
  const std::size_t frame2 = 40 + 8 + len1;
  std::memcpy(&len2, bytes.data() + frame2, 4);
  std::vector<std::byte> body(bytes.begin() + static_cast<std::ptrdiff_t>(frame2 + 8),
                              bytes.begin() + static_cast<std::ptrdiff_t>(frame2 + 8 + len2));
  std::fill(body.begin() + 8, body.begin() + 12, std::byte{0});  // its record count: 0
  const std::vector<std::byte> rewritten = test::v2_frame(salt, body);
  ASSERT_EQ(rewritten.size(), std::size_t{8} + len2);
  std::copy(rewritten.begin(), rewritten.end(), bytes.begin() + static_cast<std::ptrdiff_t>(frame2));
  test::write_file(log, bytes);
  EXPECT_EQ(test::error_of([&] { (void)PersistedIndex<FlatIndex>::load(cfg); }), ErrorKind::CorruptLog);

  const test::CliResult dry = run_cli({"wal", "repair", log.string()});
  EXPECT_EQ(dry.code, 1) << dry.out << dry.err;
  EXPECT_NE(dry.out.find("damaged frame at offset " + std::to_string(frame2) + ", followed by 2 intact frames"),
            std::string::npos)
      << dry.out;
  const test::CliResult yes = run_cli({"wal", "repair", "--yes", log.string()});
  ASSERT_EQ(yes.code, 0) << yes.out << yes.err;
  EXPECT_NE(yes.out.find("now ends at offset " + std::to_string(frame2) + " after 1 records"), std::string::npos)
      << yes.out;
  const auto db = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(db.index().size(), 1U);
  EXPECT_TRUE(db.index().contains(VectorId(std::uint64_t{1})));
}

TEST(CliWal, DumpReportsMidLogCorruptionWithExitOne) {
  test::TempDir dir;
  const PersistConfig cfg = make_db(dir);
  const auto log = wal::log_path_for(cfg.path);
  auto bytes = test::read_file(log);
  bytes[40 + 8 + 28] ^= std::byte{0x40};  // inside the first frame's ops
  test::write_file(log, bytes);
  const test::CliResult r = run_cli({"wal", "dump", "--json", log.string()});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("offset 40"), std::string::npos) << r.err;
  EXPECT_EQ(json_lines(r.out).back()["records"], 0);
}

TEST(CliWal, CheckpointFoldsTheLogOffline) {
  test::TempDir dir;
  const PersistConfig cfg = make_db(dir);
  const test::CliResult r = run_cli({"checkpoint", cfg.path.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto summary = inspect_snapshot(default_file_system(), cfg.path);
  EXPECT_EQ(summary.header.last_lsn, 4u);
  EXPECT_EQ(summary.header.n_vectors, 2u);
  const auto after = json_lines(run_cli({"wal", "dump", "--json", wal::log_path_for(cfg.path).string()}).out);
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0]["records"], 0);
  // A locked index cannot be checkpointed from outside.
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  const test::CliResult locked = run_cli({"checkpoint", cfg.path.string()});
  EXPECT_EQ(locked.code, 1);
  EXPECT_NE(locked.err.find("locked"), std::string::npos) << locked.err;
  EXPECT_TRUE(db.index().contains(9));
}

// A snapshot saved without the WAL, checkpointed: its open claims one LSN
// more (docs/FORMAT.md, "Saves without the WAL") and folds nothing, which
// the output says.
TEST(CliWal, CheckpointOfASaveWithoutTheWalFoldsNothing) {
  test::TempDir dir;
  PersistConfig plain(dir / "p.iqdb");
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), plain);
    db.insert(1, std::vector<float>{1, 2});
    (void)db.save();  // LSN 0, saved without the WAL
  }
  const test::CliResult r = run_cli({"checkpoint", plain.path.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("snapshot LSN 0 -> 1 (0 log records folded)"), std::string::npos) << r.out;
  const FileHeader h = inspect_snapshot(default_file_system(), plain.path).header;
  EXPECT_EQ(h.last_lsn, 1u);
  EXPECT_EQ(h.optional_flags & format::OPTIONAL_FLAG_SAVED_WITHOUT_WAL, 0u);
}

}  // namespace
}  // namespace iqdb::persist
