// The iqdb-persist tool, driven through cli::run(): inspect and verify on
// snapshots built byte by byte from the 1.0 format facts (v1, v2) or saved by
// the library (v3, checked against the raw bytes), exit codes, and the demo.
// Reference CRCs come from zlib, JSON is parsed with nlohmann-json.
#include <gtest/gtest.h>

// The tool is optional (IQDB_PERSIST_BUILD_TOOLS); without it there is nothing to test.
#if !__has_include("iqdb-persist/cli.hpp")
TEST(Cli, NotBuilt) { GTEST_SKIP() << "built without the iqdb-persist tool (IQDB_PERSIST_BUILD_TOOLS=OFF)"; }
#else

#include <rapidcheck/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <iqdb/persist.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "iqdb-persist/cli.hpp"
#include "iqdb-persist/command.hpp"
#include "support/cli_runner.hpp"
#include "support/forked_child.hpp"
#include "support/format_builders.hpp"
#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;
using test::Bytes;
using test::TempDir;

// ---------------------------------------------------------------- helpers

using test::CliResult;
using test::run_cli;

std::uint32_t zlib_crc(const std::vector<std::byte>& b, std::size_t from = 0) {
  uLong c = crc32_z(0L, Z_NULL, 0);
  c = crc32_z(c, reinterpret_cast<const Bytef*>(b.data() + from), b.size() - from);
  return static_cast<std::uint32_t>(c);
}

std::uint64_t le(const std::vector<std::byte>& b, std::size_t at, std::size_t width) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < width; ++i) v |= std::to_integer<std::uint64_t>(b.at(at + i)) << (8 * i);
  return v;
}

std::string hex32(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
  std::vector<std::byte> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>((i * 31 + seed * 7 + 1) & 0xff);
  return out;
}

// What inspect must report about a file.
struct Expected {
  std::uint32_t format_version = 0;
  std::string index_type;
  std::uint64_t dim = 0;
  std::string metric;
  std::uint64_t n_vectors = 0;
  std::uint32_t crc32 = 0;
  std::string compression;
  std::uint64_t uncompressed_len = 0;
  std::uint64_t file_size = 0;
  std::optional<std::uint64_t> last_lsn;  // v3 only (null in JSON before v3)
  // v3, compression byte 0, optional flag bit 0 (aligned block) set.
  bool mappable = false;
  // v3, optional flag bit 1 (written by a save without the WAL).
  std::optional<bool> saved_without_wal{};
};

struct Fixture {
  std::string name;
  std::vector<std::byte> bytes;
  Expected expected;
};

// A version-1 snapshot (docs/FORMAT.md): the payload region is the payload.
Fixture v1_file(std::string name, const std::string& tag, std::uint64_t dim, std::uint8_t metric_tag,
                std::string metric, std::uint64_t n, const std::vector<std::byte>& payload) {
  Bytes b;
  b.str("IQDBPRST").u32(1).u64(tag.size()).str(tag).u64(dim).u8(metric_tag).u64(n).u32(zlib_crc(payload));
  b.append(payload);
  Expected e{1, tag, dim, std::move(metric), n, zlib_crc(payload), "none", payload.size(), b.size(), std::nullopt};
  return {std::move(name), b.data(), e};
}

// A version-2 snapshot: the payload region opens with the preamble
// (scheme u8, uncompressed_len u64) and the CRC covers it.
Fixture v2_file(std::string name, const std::string& tag, std::uint64_t dim, std::uint8_t metric_tag,
                std::string metric, std::uint64_t n, std::uint8_t scheme, std::string scheme_name,
                std::uint64_t uncompressed_len, const std::vector<std::byte>& stored) {
  Bytes region;
  region.u8(scheme).u64(uncompressed_len).append(stored);
  const std::uint32_t crc = zlib_crc(region.data());
  Bytes b;
  b.str("IQDBPRST").u32(2).u64(tag.size()).str(tag).u64(dim).u8(metric_tag).u64(n).u32(crc);
  b.append(region.data());
  Expected e{2, tag, dim, std::move(metric), n, crc, std::move(scheme_name), uncompressed_len, b.size(), std::nullopt};
  return {std::move(name), b.data(), e};
}

FlatIndex small_index() {
  FlatIndex idx(5, DistanceMetric::Cosine);
  for (std::uint64_t i = 0; i < 40; ++i) {
    const float f = static_cast<float>(i);
    idx.insert(i, std::vector<float>{f, 1.0f, -f, 0.5f * f, 2.0f},
               i % 7 == 0 ? std::optional<Metadata>(Metadata{{"k", Value("v" + std::to_string(i))}}) : std::nullopt);
  }
  return idx;
}

// A version-3 snapshot saved by the library. The expected fields come from
// what was saved and from the raw bytes (src/format/header.cpp layout):
// header_len u32 at 12, tag_len u32 at 24, then the tag, dim 8, metric 1,
// compression 1, n_vectors 8, last_lsn 8, uncompressed_len 8.
Fixture v3_file(const TempDir& dir, std::string name, Compression c, std::string compression_name,
                std::optional<std::uint64_t> known_payload_len, bool with_wal = false) {
  PersistConfig cfg(dir / (name + ".iqdb"));
  cfg.compression = c;
  cfg.wal_enabled = with_wal;
  // Without the WAL, save() writes the snapshot; with it, open_with does.
  auto db = PersistedIndex<FlatIndex>::open_with(small_index(), cfg);
  if (!with_wal) db.save();
  db.close();
  std::vector<std::byte> bytes = test::read_file(cfg.path);
  fs::remove(cfg.path);
  const std::size_t header_len = le(bytes, 12, 4);
  const std::size_t tag_len = le(bytes, 24, 4);
  const std::size_t last_lsn_at = 28 + tag_len + 8 + 1 + 1 + 8;
  const std::uint64_t uncompressed_len = le(bytes, last_lsn_at + 8, 8);
  // Uncompressed, the payload is what follows the header; compressed, it is
  // the same index's payload, so as long as the uncompressed file's.
  EXPECT_EQ(uncompressed_len, known_payload_len.value_or(bytes.size() - header_len)) << name;
  Expected e{3,
             "flat",
             5,
             "Cosine",
             40,
             zlib_crc(bytes, header_len),
             std::move(compression_name),
             uncompressed_len,
             bytes.size(),
             le(bytes, last_lsn_at, 8)};
  EXPECT_EQ(*e.last_lsn, 0u) << "no write-ahead log, nothing folded";
  e.mappable = bytes[28 + tag_len + 8 + 1] == std::byte{0} && (le(bytes, 20, 4) & 1) != 0;
  e.saved_without_wal = (le(bytes, 20, 4) & 2) != 0;
  EXPECT_EQ(*e.saved_without_wal, !with_wal) << name;
  return {std::move(name), std::move(bytes), e};
}

// Every fixture: each snapshot version, metric and compression name.
std::vector<Fixture> all_fixtures(const TempDir& dir) {
  std::vector<Fixture> f;
  f.push_back(v1_file("v1-hnsw", "hnsw", 7, 3, "Manhattan", 5, pattern(37, 1)));
  f.push_back(v1_file("v1-flat-empty", "flat", 1, 4, "Hamming", 0, {}));
  f.push_back(v2_file("v2-none", "flat", 3, 1, "DotProduct", 12, 0, "none", 64, pattern(64, 2)));
  f.push_back(v2_file("v2-zstd", "ivf-pq-\xc3\xbc", 96, 2, "Euclidean", 1000, 1, "zstd", 4000, pattern(100, 3)));
  f.push_back(v2_file("v2-lz4", "hnsw", 128, 0, "Cosine", 3, 2, "lz4", 300, pattern(50, 4)));
  Fixture none = v3_file(dir, "v3-none", Compression::none(), "none", std::nullopt);
  const std::uint64_t payload_len = none.expected.uncompressed_len;
  f.push_back(std::move(none));
  f.push_back(v3_file(dir, "v3-zstd", Compression::zstd(3), "zstd", payload_len));
  f.push_back(v3_file(dir, "v3-lz4", Compression::lz4(), "lz4", payload_len));
  f.push_back(v3_file(dir, "v3-wal", Compression::none(), "none", payload_len, /*with_wal=*/true));
  return f;
}

fs::path write_fixture(const TempDir& dir, const Fixture& f) {
  const fs::path p = dir / (f.name + ".iqdb");
  test::write_file(p, f.bytes);
  return p;
}

// ---------------------------------------------------------------- checkers

// Text output: "name<spaces>value[ (human size)]" lines, values in one column.
void expect_text(const std::string& out, const Expected& e) {
  std::map<std::string, std::string> got;
  std::set<std::size_t> value_columns;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    const std::size_t name_end = line.find(' ');
    ASSERT_NE(name_end, std::string::npos) << line;
    const std::size_t value_at = line.find_first_not_of(' ', name_end);
    ASSERT_NE(value_at, std::string::npos) << line;
    value_columns.insert(value_at);
    got[line.substr(0, name_end)] = line.substr(value_at, line.find(' ', value_at) - value_at);
  }
  std::map<std::string, std::string> want = {
      {"format_version", std::to_string(e.format_version)},
      {"index_type", e.index_type},
      {"dim", std::to_string(e.dim)},
      {"metric", e.metric},
      {"n_vectors", std::to_string(e.n_vectors)},
      {"crc32", hex32(e.crc32)},
      {"compression", e.compression},
      {"uncompressed_len", std::to_string(e.uncompressed_len)},
      {"file_size", std::to_string(e.file_size)},
  };
  if (e.last_lsn) want["last_lsn"] = std::to_string(*e.last_lsn);
  want["mappable"] = e.mappable ? "yes" : "no";
  if (e.saved_without_wal) want["saved_without_wal"] = *e.saved_without_wal ? "yes" : "no";
  EXPECT_EQ(got, want);
  EXPECT_EQ(value_columns.size(), 1u) << "values are not aligned:\n" << out;
}

void expect_json(const std::string& out, const Expected& e) {
  const nlohmann::json j = nlohmann::json::parse(out);
  ASSERT_TRUE(j.is_object());
  std::set<std::string> keys;
  for (const auto& [k, v] : j.items()) keys.insert(k);
  EXPECT_EQ(keys, (std::set<std::string>{"format_version", "index_type", "dim", "metric", "n_vectors", "crc32",
                                         "compression", "uncompressed_len", "file_size", "last_lsn",
                                         "mappable", "saved_without_wal"}));
  EXPECT_EQ(j.at("mappable").get<bool>(), e.mappable);
  if (e.saved_without_wal) {
    EXPECT_EQ(j.at("saved_without_wal").get<bool>(), *e.saved_without_wal);
  } else {
    EXPECT_TRUE(j.at("saved_without_wal").is_null());
  }
  for (const char* k : {"format_version", "dim", "n_vectors", "crc32", "uncompressed_len", "file_size"}) {
    EXPECT_TRUE(j.at(k).is_number_unsigned()) << k;
  }
  EXPECT_EQ(j.at("format_version").get<std::uint64_t>(), e.format_version);
  EXPECT_EQ(j.at("index_type").get<std::string>(), e.index_type);
  EXPECT_EQ(j.at("dim").get<std::uint64_t>(), e.dim);
  EXPECT_EQ(j.at("metric").get<std::string>(), e.metric);
  EXPECT_EQ(j.at("n_vectors").get<std::uint64_t>(), e.n_vectors);
  EXPECT_EQ(j.at("crc32").get<std::uint64_t>(), e.crc32);
  EXPECT_EQ(j.at("compression").get<std::string>(), e.compression);
  EXPECT_EQ(j.at("uncompressed_len").get<std::uint64_t>(), e.uncompressed_len);
  EXPECT_EQ(j.at("file_size").get<std::uint64_t>(), e.file_size);
  if (e.last_lsn) {
    EXPECT_EQ(j.at("last_lsn").get<std::uint64_t>(), *e.last_lsn);
  } else {
    EXPECT_TRUE(j.at("last_lsn").is_null()) << "version " << e.format_version << " has no LSN field";
  }
}

// ---------------------------------------------------------------- inspect

TEST(CliInspect, ReportsTheHeaderOfEveryVersionTextAndJson) {
  TempDir dir;
  for (const Fixture& f : all_fixtures(dir)) {
    SCOPED_TRACE(f.name);
    const std::string path = write_fixture(dir, f).string();

    const CliResult text = run_cli({"inspect", path});
    EXPECT_EQ(text.code, 0) << text.err;
    EXPECT_EQ(text.err, "");
    expect_text(text.out, f.expected);

    const CliResult json = run_cli({"inspect", path, "--json"});
    EXPECT_EQ(json.code, 0) << json.err;
    EXPECT_EQ(json.err, "");
    expect_json(json.out, f.expected);
  }
}

// Any tag, dim, metric, count and payload of a v1 file is reported as written.
RC_GTEST_PROP(CliInspect, ReportsArbitraryV1Headers, ()) {
  const std::string tag = *rc::gen::nonEmpty(rc::gen::container<std::string>(rc::gen::inRange('a', 'z')));
  const auto dim = *rc::gen::arbitrary<std::uint64_t>();
  const auto metric_tag = *rc::gen::inRange<std::uint8_t>(0, 5);
  const auto n = *rc::gen::arbitrary<std::uint64_t>();
  const auto payload_len = *rc::gen::inRange<std::size_t>(0, 300);
  const auto seed = *rc::gen::arbitrary<unsigned>();
  static const char* const kNames[] = {"Cosine", "DotProduct", "Euclidean", "Manhattan", "Hamming"};
  const Fixture f = v1_file("prop", tag, dim, metric_tag, kNames[metric_tag], n, pattern(payload_len, seed));
  TempDir dir;
  const std::string path = write_fixture(dir, f).string();
  const CliResult r = run_cli({"inspect", "--json", path});
  RC_ASSERT(r.code == 0);
  const nlohmann::json j = nlohmann::json::parse(r.out);
  RC_ASSERT(j.at("index_type").get<std::string>() == tag);
  RC_ASSERT(j.at("dim").get<std::uint64_t>() == dim);
  RC_ASSERT(j.at("metric").get<std::string>() == std::string(kNames[metric_tag]));
  RC_ASSERT(j.at("n_vectors").get<std::uint64_t>() == n);
  RC_ASSERT(j.at("crc32").get<std::uint32_t>() == f.expected.crc32);
  RC_ASSERT(j.at("uncompressed_len").get<std::uint64_t>() == payload_len);
  RC_ASSERT(j.at("file_size").get<std::uint64_t>() == f.bytes.size());
}

TEST(CliInspect, ReadsOnlyTheHeader) {
  TempDir dir;
  Fixture f = v1_file("v1", "flat", 4, 2, "Euclidean", 2, pattern(40, 9));
  f.bytes.back() ^= std::byte{0x01};  // payload damage: the header is still intact
  const std::string path = write_fixture(dir, f).string();
  EXPECT_EQ(run_cli({"inspect", path}).code, 0);
  EXPECT_EQ(run_cli({"verify", path}).code, 1);
}

// ---------------------------------------------------------------- exit codes

// A command line, the exit code it must give and a word its diagnostics must hold.
struct ErrorCase {
  std::string name;
  std::vector<std::string> args;
  int code;
  std::string in_err;  // expected in the diagnostics
};

TEST(CliExitCodes, DamagedMissingAndMisusedFiles) {
  TempDir dir;
  const std::vector<Fixture> fixtures = all_fixtures(dir);
  const auto fixture = [&](const std::string& name) {
    for (const Fixture& f : fixtures) {
      if (f.name == name) return f;
    }
    throw std::runtime_error("no fixture " + name);
  };
  const auto damaged = [&](const std::string& name, const std::string& from,
                           const std::function<void(std::vector<std::byte>&)>& damage) {
    Fixture f = fixture(from);
    f.name = name;
    damage(f.bytes);
    return write_fixture(dir, f).string();
  };
  const auto flip = [](std::size_t from_end) {
    return [from_end](std::vector<std::byte>& b) { b[b.size() - from_end] ^= std::byte{0x40}; };
  };
  const auto truncate_to = [](std::size_t size) { return [size](std::vector<std::byte>& b) { b.resize(size); }; };

  const std::string v3_flipped = damaged("v3-flipped", "v3-none", flip(10));
  const std::string v3_zstd_flipped = damaged("v3-zstd-flipped", "v3-zstd", flip(20));
  const std::string v1_flipped = damaged("v1-flipped", "v1-hnsw", flip(1));
  const std::string v2_flipped = damaged("v2-flipped", "v2-none", flip(3));
  const std::string v3_cut = damaged("v3-cut", "v3-none", [](std::vector<std::byte>& b) { b.resize(b.size() - 7); });
  const std::string v3_header_cut = damaged("v3-header-cut", "v3-none", truncate_to(30));
  const std::string v3_header_flipped = damaged("v3-header-flipped", "v3-none", [](std::vector<std::byte>& b) {
    b[28 + 4] ^= std::byte{0x01};  // dim, covered by the header CRC
  });
  const std::string bad_magic = damaged("bad-magic", "v1-hnsw", [](std::vector<std::byte>& b) { b[0] = std::byte{'X'}; });
  const std::string bad_version = damaged("bad-version", "v1-hnsw", [](std::vector<std::byte>& b) { b[8] = std::byte{9}; });
  const std::string empty = damaged("empty", "v1-hnsw", truncate_to(0));
  const std::string missing = (dir / "missing.iqdb").string();

  const std::vector<ErrorCase> cases = {
      {"verify payload bit flip v3", {"verify", v3_flipped}, 1, "checksum_mismatch"},
      {"verify payload bit flip v3 zstd", {"verify", v3_zstd_flipped}, 1, "checksum_mismatch"},
      {"verify payload bit flip v1", {"verify", v1_flipped}, 1, "checksum_mismatch"},
      {"verify payload bit flip v2", {"verify", v2_flipped}, 1, "checksum_mismatch"},
      {"verify truncated payload", {"verify", v3_cut}, 1, "truncated_payload"},
      {"verify truncated header", {"verify", v3_header_cut}, 1, "truncated_header"},
      {"verify header bit flip", {"verify", v3_header_flipped}, 1, "checksum_mismatch"},
      {"verify bad magic", {"verify", bad_magic}, 1, "bad_magic"},
      {"verify bad version", {"verify", bad_version}, 1, "unsupported_version"},
      {"verify empty file", {"verify", empty}, 1, "truncated_header"},
      {"verify missing file", {"verify", missing}, 2, "missing.iqdb"},
      {"verify a directory", {"verify", dir.path().string()}, 2, "io"},
      {"inspect truncated header", {"inspect", v3_header_cut}, 1, "truncated_header"},
      {"inspect header bit flip", {"inspect", v3_header_flipped}, 1, "checksum_mismatch"},
      {"inspect bad magic", {"inspect", "--json", bad_magic}, 1, "bad_magic"},
      {"inspect missing file", {"inspect", missing}, 2, "missing.iqdb"},
      {"no arguments", {}, 2, "subcommand"},
      {"unknown subcommand", {"frobnicate"}, 2, "frobnicate"},
      {"unknown nested subcommand", {"wal", "dumb", v3_flipped}, 2, "Unknown subcommand: dumb"},
      {"nested subcommand missing", {"wal"}, 2, "subcommand"},
      {"verify without a file", {"verify"}, 2, "FILE"},
      {"verify with two files", {"verify", v3_flipped, v1_flipped}, 2, ""},
      {"inspect unknown option", {"inspect", "--yaml", v3_flipped}, 2, "--yaml"},
      {"demo zero vectors", {"demo", "--vectors", "0", "--dir", (dir / "d").string()}, 2, "vectors"},
      {"demo non-numeric dim", {"demo", "--dim", "wide", "--dir", (dir / "d").string()}, 2, "dim"},
      {"demo non-numeric vectors", {"demo", "--vectors", "abc", "--dir", (dir / "d").string()}, 2, "Failed parsing abc"},
  };
  for (const ErrorCase& c : cases) {
    SCOPED_TRACE(c.name);
    const CliResult r = run_cli(c.args);
    EXPECT_EQ(r.code, c.code) << r.out << r.err;
    EXPECT_EQ(r.out, "");
    EXPECT_NE(r.err, "");
    EXPECT_NE(r.err.find(c.in_err), std::string::npos) << r.err;
    // A command line the parser refuses is reported as every error is,
    // "error: <kind>: <message>" (CLI11 printed its bare message before).
    if (c.code == 2 && c.in_err != "io" && c.in_err != "missing.iqdb") {
      EXPECT_EQ(r.err.rfind("error: invalid_argument: ", 0), 0u) << r.err;
    }
  }
  EXPECT_FALSE(fs::exists(dir / "d")) << "a rejected demo wrote nothing";
}

// Intact bytes pass; the payload is then built into the index its header
// names, where the build knows the type: the v1 and v2 fixtures' stand-in
// payloads under the tag "flat" are not flat indexes, and verify said OK on
// them (an outside hunt: and on a v3 file whose header's count was changed
// and its CRC recomputed, which no load takes).
TEST(CliVerify, IntactFilesOfEveryVersionPass) {
  TempDir dir;
  const auto fixtures = all_fixtures(dir);
  for (const Fixture& f : fixtures) {
    if (f.expected.compression != "none" && f.expected.format_version < 3) continue;  // stand-in payloads
    SCOPED_TRACE(f.name);
    const std::string path = write_fixture(dir, f).string();
    const CliResult r = run_cli({"verify", path});
    const bool stand_in = f.expected.format_version < 3 && f.expected.index_type == "flat";
    if (stand_in) {
      EXPECT_EQ(r.code, 1) << r.out;
      EXPECT_EQ(r.err.rfind("DAMAGED: " + path + "\n", 0), 0u) << r.err;
      continue;
    }
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(r.out.rfind("OK: " + path + " ", 0), 0u) << r.out;
    EXPECT_EQ(r.out.find("not built into an index") != std::string::npos, f.expected.index_type != "flat") << r.out;
    EXPECT_EQ(r.err, "") << "no progress indicator when stderr is not a terminal";
  }
  // v3, a header that contradicts its payload, its CRC recomputed.
  const auto v3 = std::find_if(fixtures.begin(), fixtures.end(), [](const Fixture& f) { return f.name == "v3-none"; });
  ASSERT_NE(v3, fixtures.end());
  Fixture lying = *v3;
  lying.name = "v3-count-changed";
  const std::size_t tag_len = le(lying.bytes, 24, 4);
  lying.bytes[28 + tag_len + 10] ^= std::byte{0x01};  // n_vectors 40 -> 41
  test::fix_v3_header_crc(lying.bytes);
  const std::string path = write_fixture(dir, lying).string();
  const CliResult r = run_cli({"verify", path});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.err.find("invalid_payload"), std::string::npos) << r.err;
}

// Output that cannot all be written (a full disk, /dev/full) is a failure:
// exit 2 and a message, never 0 with a cut-off report, whichever command
// printed it; a command that failed already keeps its own code. Before,
// every command exited 0. (A stream whose buffer of 16 bytes takes the
// first `room` bytes and then refuses, as a nearly full disk does.)
TEST(CliExitCodes, OutputThatCannotBeWrittenExitsTwo) {
  struct Full : std::streambuf {
    explicit Full(std::size_t bytes) : room(bytes) { setp(buf, buf + sizeof buf); }
    int_type overflow(int_type c) override {
      if (sync() != 0) return traits_type::eof();
      if (!traits_type::eq_int_type(c, traits_type::eof())) sputc(traits_type::to_char_type(c));
      return traits_type::not_eof(c);
    }
    int sync() override {
      const auto n = static_cast<std::size_t>(pptr() - pbase());
      if (n > room) return -1;
      room -= n;
      setp(buf, buf + sizeof buf);
      return 0;
    }
    char buf[16];
    std::size_t room;
  };
  TempDir dir;
  const std::vector<Fixture> fixtures = all_fixtures(dir);
  const auto v3 = std::find_if(fixtures.begin(), fixtures.end(), [](const Fixture& f) { return f.name == "v3-none"; });
  ASSERT_NE(v3, fixtures.end());
  Fixture fixture = *v3;
  const std::string path = write_fixture(dir, fixture).string();
  const std::vector<std::vector<std::string>> commands = {
      {"--version"}, {"--help"}, {"inspect", path}, {"inspect", path, "--json"}, {"verify", path}};
  for (const auto& args : commands) {
    for (const std::size_t room : {std::size_t{0}, std::size_t{20}}) {
      SCOPED_TRACE(args.front() + " " + args.back() + ", room for " + std::to_string(room) + " bytes");
      Full buf(room);
      std::ostream out(&buf);
      std::ostringstream err;
      EXPECT_EQ(cli::run(args, out, err), 2);
      EXPECT_NE(err.str().find("error: io: the output could not be written"), std::string::npos) << err.str();
    }
  }
  // A failure already reported keeps its code (1: a damaged file).
  fixture.bytes[fixture.bytes.size() - 10] ^= std::byte{0x40};
  fixture.name = "v3-flipped";
  const std::string damaged = write_fixture(dir, fixture).string();
  Full buf(0);
  std::ostream out(&buf);
  std::ostringstream err;
  EXPECT_EQ(cli::run({"verify", damaged}, out, err), 1) << err.str();
}

// ---------------------------------------------------------------- help, version

TEST(CliHelp, VersionAndHelp) {
  const CliResult v = run_cli({"--version"});
  EXPECT_EQ(v.code, 0);
  EXPECT_EQ(v.out, "iqdb-persist " + std::string(VERSION) +
                       "\nsnapshot format: writes version 3, reads versions 1 to 3"
                       "\nwrite-ahead log format: writes version 2, reads versions 1 to 2\n");

  const CliResult h = run_cli({"--help"});
  EXPECT_EQ(h.code, 0);
  for (const char* word : {"inspect", "verify", "copy", "demo", "--version"}) {
    EXPECT_NE(h.out.find(word), std::string::npos) << word;
  }
  const struct {
    const char* command;
    const char* option;
  } subcommands[] = {{"inspect", "--json"}, {"verify", "FILE"}, {"copy", "--snapshot-only"}, {"demo", "--vectors"}};
  for (const auto& s : subcommands) {
    const CliResult r = run_cli({s.command, "--help"});
    EXPECT_EQ(r.code, 0) << s.command;
    EXPECT_NE(r.out.find(s.option), std::string::npos) << s.command << ":\n" << r.out;
  }
}

// ---------------------------------------------------------------- dispatch

// Subcommands added by path, nested ones included (`wal dump`, `wal repair`
// are how the write-ahead-log tools will plug in), run the right action.
TEST(CliDispatch, NestedSubcommandsRunTheirOwnAction) {
  const struct {
    std::vector<std::string> args;
    std::string ran;  // empty: a usage error
  } cases[] = {
      {{"wal", "repair", "x.wal"}, "wal repair x.wal"},
      {{"wal", "dump", "y.wal"}, "wal dump y.wal"},
      {{"check", "z"}, "check z"},
      {{"wal"}, ""},
      {{"wal", "x.wal"}, ""},
      {{}, ""},
  };
  for (const auto& c : cases) {
    CLI::App app{"test", "t"};
    app.require_subcommand(1);
    cli::CommandSet commands(app);
    std::string ran;
    auto file = std::make_shared<std::string>();
    for (const std::string path : {"wal dump", "check", "wal repair"}) {
      commands.add(path, "", [&ran, file, path](const cli::Console&) {
        ran = path + " " + *file;
        return 0;
      }).add_option("FILE", *file)->required();
    }
    std::vector<std::string> reversed(c.args.rbegin(), c.args.rend());
    std::ostringstream sink;
    const cli::Console console{sink, sink};
    try {
      app.parse(reversed);
      const cli::Action* action = commands.chosen();
      ASSERT_NE(action, nullptr);
      (*action)(console);
    } catch (const CLI::ParseError&) {
      ran = "";
    }
    EXPECT_EQ(ran, c.ran) << testing::PrintToString(c.args);
  }
}

// ---------------------------------------------------------------- demo

// Files the demo cannot write (here each lock file's place is taken by a
// directory, which root cannot write either): exit 2, as every command
// gives for Io (it gave 1, a failed check).
TEST(CliDemo, FilesItCannotWriteExitTwo) {
  TempDir dir;
  for (const char* c : {"none", "zstd", "lz4"}) fs::create_directories(dir / (std::string("demo-") + c + ".iqdb.lock"));
  const CliResult r = run_cli({"demo", "--dir", dir.path().string(), "--vectors", "10", "--dim", "4"});
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("io: "), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("3 of 3 checks FAILED"), std::string::npos) << r.out;
  // Nothing was saved: no command to try on a file that is not there.
  EXPECT_EQ(r.out.find("try: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("No snapshot was saved in " + dir.path().string()), std::string::npos) << r.out;
  // One saved (lz4's): the command to try names it.
  fs::remove(dir / "demo-lz4.iqdb.lock");
  const CliResult one = run_cli({"demo", "--dir", dir.path().string(), "--vectors", "10", "--dim", "4"});
  EXPECT_EQ(one.code, 2) << one.out << one.err;
  EXPECT_NE(one.out.find("try: iqdb-persist verify " + (dir / "demo-lz4.iqdb").string()), std::string::npos)
      << one.out;
}

TEST(CliDemo, SmallRunSavesThreeVerifiedFiles) {
  TempDir dir;
  const fs::path out_dir = dir / "not-yet-created";
  const CliResult r = run_cli({"demo", "--dir", out_dir.string(), "--vectors", "2000", "--dim", "16"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_EQ(r.err, "");
  const std::string last_line = r.out.substr(r.out.rfind('\n', r.out.size() - 2) + 1);
  EXPECT_EQ(last_line.rfind("demo: all checks passed", 0), 0u) << last_line;

  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(out_dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  // Each save holds its file's writer lock, whose (empty) file stays.
  EXPECT_EQ(names, (std::vector<std::string>{"demo-lz4.iqdb", "demo-lz4.iqdb.lock", "demo-none.iqdb",
                                             "demo-none.iqdb.lock", "demo-zstd.iqdb", "demo-zstd.iqdb.lock"}));

  std::uint32_t none_crc = 0;
  for (const std::string& compression : std::vector<std::string>{"none", "zstd", "lz4"}) {
    SCOPED_TRACE(compression);
    const fs::path file = out_dir / ("demo-" + compression + ".iqdb");
    const std::vector<std::byte> bytes = test::read_file(file);
    const CliResult inspect = run_cli({"inspect", "--json", file.string()});
    ASSERT_EQ(inspect.code, 0) << inspect.err;
    const nlohmann::json j = nlohmann::json::parse(inspect.out);
    EXPECT_EQ(j.at("format_version"), 3);
    EXPECT_EQ(j.at("index_type"), "flat");
    EXPECT_EQ(j.at("dim"), 16);
    EXPECT_EQ(j.at("metric"), "Euclidean");
    EXPECT_EQ(j.at("n_vectors"), 2000);
    EXPECT_EQ(j.at("compression"), compression);
    EXPECT_EQ(j.at("file_size"), bytes.size());
    EXPECT_EQ(j.at("crc32"), zlib_crc(bytes, le(bytes, 12, 4)));
    if (compression == "none") none_crc = j.at("crc32").get<std::uint32_t>();
    EXPECT_EQ(run_cli({"verify", file.string()}).code, 0);
  }
  EXPECT_NE(none_crc, 0u);

  // Same seed, same data: a second run writes the same uncompressed file.
  const fs::path again = dir / "again";
  ASSERT_EQ(run_cli({"demo", "--dir", again.string(), "--vectors", "2000", "--dim", "16"}).code, 0);
  EXPECT_EQ(test::read_file(again / "demo-none.iqdb"), test::read_file(out_dir / "demo-none.iqdb"));
}

// ---------------------------------------------------------------- copy

// Every snapshot version copies byte for byte (the fixtures are built from
// the format's facts, not by the tool). (Over an existing index at the same
// LSN or above, a copy claims one more: CliCopy.LocksAndLogs.)
TEST(CliCopy, EveryVersionCopiesByteForByte) {
  TempDir dir;
  const fs::path dst = dir / "copy.iqdb";
  for (const Fixture& f : all_fixtures(dir)) {
    if (f.expected.compression != "none" && f.expected.format_version < 3) continue;  // stand-in payloads
    SCOPED_TRACE(f.name);
    const fs::path src = write_fixture(dir, f);
    fs::remove(dst);
    const CliResult r = run_cli({"copy", src.string(), dst.string()});
    ASSERT_EQ(r.code, 0) << r.out << r.err;
    EXPECT_EQ(r.err, "");
    EXPECT_EQ(r.out.rfind("copied " + src.string() + " -> " + dst.string(), 0), 0u) << r.out;
    EXPECT_NE(r.out.find(std::to_string(f.expected.n_vectors) + " vectors x " + std::to_string(f.expected.dim)),
              std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find(hex32(f.expected.crc32)), std::string::npos) << r.out;
    EXPECT_EQ(test::read_file(dst), f.bytes);
  }
}

// The copy loads as the index that was saved, compared with the test's own
// list of what it inserted.
TEST(CliCopy, CopyLoadsAsTheSavedIndex) {
  TempDir dir;
  PersistConfig cfg(dir / "src.iqdb");
  cfg.compression = Compression::zstd(3);
  PersistedIndex<FlatIndex>::open_with(small_index(), cfg).save();
  const fs::path dst = dir / "sub-dst.iqdb";
  ASSERT_EQ(run_cli({"copy", cfg.path.string(), dst.string()}).code, 0);
  const auto db = PersistedIndex<FlatIndex>::load(PersistConfig(dst));
  ASSERT_EQ(db.index().size(), 40u);
  for (std::uint64_t i = 0; i < 40; ++i) {
    const float f = static_cast<float>(i);
    const auto v = db.index().get(i);
    EXPECT_EQ(std::vector<float>(v.begin(), v.end()), (std::vector<float>{f, 1.0f, -f, 0.5f * f, 2.0f})) << i;
    const Metadata* m = db.index().metadata(i);
    EXPECT_EQ(m != nullptr, i % 7 == 0) << i;
  }
  EXPECT_EQ(test::read_file(dst), test::read_file(cfg.path));
}

// A damaged source (a byte flipped in the payload, or in the header) is
// refused, naming the file, and the destination keeps its old bytes; no
// temporary file is left behind.
TEST(CliCopy, DamagedSourcePublishesNothing) {
  TempDir dir;
  const std::vector<Fixture> fixtures = all_fixtures(dir);
  const Fixture& good = fixtures.at(5);  // v3-none
  const fs::path dst = write_fixture(dir, fixtures.at(0));
  for (const std::size_t at : {good.bytes.size() - 3, std::size_t{20}}) {
    SCOPED_TRACE(at);
    std::vector<std::byte> bad = good.bytes;
    bad[at] ^= std::byte{0x10};
    const fs::path src = dir / "bad.iqdb";
    test::write_file(src, bad);
    const CliResult r = run_cli({"copy", "--force", src.string(), dst.string()});
    EXPECT_EQ(r.code, 1) << r.out << r.err;
    EXPECT_EQ(r.out, "");
    EXPECT_NE(r.err.find("DAMAGED: " + src.string()), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("checksum_mismatch"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("nothing was copied"), std::string::npos) << r.err;
    EXPECT_EQ(test::read_file(dst), fixtures.at(0).bytes);
    for (const std::string& e : dir.entries()) EXPECT_EQ(e.find(".tmp-"), std::string::npos) << e;
  }
  // A missing source: exit 2, as for every file that cannot be opened.
  EXPECT_EQ(run_cli({"copy", "--force", (dir / "none.iqdb").string(), dst.string()}).code, 2);
  // The same file twice.
  EXPECT_EQ(run_cli({"copy", dst.string(), dst.string()}).code, 2);  // a usage error
  EXPECT_EQ(test::read_file(dst), fixtures.at(0).bytes);
}

// A destination held by a live writer is refused (Locked); so are a source
// whose log holds records after its snapshot (unless --snapshot-only) and a
// destination whose log holds records its snapshot lacks. A destination
// whose log is all folded loses that log with the copy, so that it never
// replays onto the new snapshot.
TEST(CliCopy, LocksAndLogs) {
  TempDir dir;
  PersistConfig src(dir / "src.iqdb");
  PersistedIndex<FlatIndex>::open_with(small_index(), src).save();
  const std::vector<std::byte> src_bytes = test::read_file(src.path);

  PersistConfig live(dir / "live.iqdb");
  live.wal_enabled = true;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), live);
    db.insert(1, std::vector<float>{1, 2});
    const std::vector<std::byte> before = test::read_file(live.path);
    const CliResult r = run_cli({"copy", "--force", src.path.string(), live.path.string()});
    EXPECT_EQ(r.code, 1) << r.out << r.err;
    EXPECT_NE(r.err.find("locked"), std::string::npos) << r.err;
    EXPECT_EQ(test::read_file(live.path), before);
    db.close();
  }
  // live.iqdb.wal holds LSN 1, its snapshot LSN 0: refused without --force
  // (an index is there), and with it (its log holds a record).
  CliResult r = run_cli({"copy", src.path.string(), live.path.string()});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
  r = run_cli({"copy", "--force", src.path.string(), live.path.string()});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("would_lose_writes"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(wal::log_path_for(live.path).string()), std::string::npos) << r.err;
  // As a source, --snapshot-only copies the snapshot's bytes alone.
  const fs::path dst = dir / "dst.iqdb";
  r = run_cli({"copy", "--snapshot-only", live.path.string(), dst.string()});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(test::read_file(dst), test::read_file(live.path));

  // Folded: the copy replaces the snapshot and removes the log. The index
  // there was at LSN 1, the source's at 0: the copy claims LSN 2 (written
  // anew, not the source's bytes), so that LSNs at the path only go up.
  ASSERT_EQ(run_cli({"checkpoint", live.path.string()}).code, 0);
  ASSERT_TRUE(fs::exists(wal::log_path_for(live.path)));
  ASSERT_EQ(inspect_snapshot(default_file_system(), live.path).header.last_lsn, 1u);
  r = run_cli({"copy", "--force", src.path.string(), live.path.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("last LSN 2"), std::string::npos) << r.out;
  EXPECT_EQ(inspect_snapshot(default_file_system(), live.path).header.last_lsn, 2u);
  EXPECT_FALSE(fs::exists(wal::log_path_for(live.path)));
  // Over an index at a lower LSN, the copy is the source's bytes.
  const fs::path older = dir / "older.iqdb";
  test::write_file(older, src_bytes);
  ASSERT_EQ(run_cli({"copy", "--force", live.path.string(), older.string()}).code, 0);
  EXPECT_EQ(test::read_file(older), test::read_file(live.path));
  PersistConfig reopen = live;
  const auto db = PersistedIndex<FlatIndex>::load(reopen);
  EXPECT_EQ(db.index().size(), 40u);
  EXPECT_EQ(db.index().dim(), 5u);  // the source's, nothing of the old log replayed
}

PersistConfig with_wal(const fs::path& path) {
  PersistConfig cfg(path);
  cfg.wal_enabled = true;
  return cfg;
}

// A copy over an index that replicas follow, from a source at a lower LSN:
// the replica loads the copy anew once a writer there logs. Before, the
// copy kept the source's LSN 2 under the replica's 10, and the replica
// applied the writer's records 11.. onto the old contents.
TEST(CliCopy, OverAnIndexItClaimsAnLsnAboveItsReplicas) {
  TempDir dir;
  const PersistConfig src = with_wal(dir / "src.iqdb");
  const PersistConfig dst = with_wal(dir / "dst.iqdb");
  const auto fill = [](const PersistConfig& cfg, std::uint64_t first, std::uint64_t n) {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), cfg);
    for (std::uint64_t id = first; id < first + n; ++id) db.insert(id, std::vector<float>{float(id), 1});
    db.checkpoint();
    db.close();
  };
  fill(src, 500, 2);  // LSN 2
  fill(dst, 1, 10);   // LSN 10
  auto replica = ReadReplica<FlatIndex>::open(dst);
  ASSERT_EQ(replica.last_lsn(), 10u);
  const CliResult r = run_cli({"copy", "--force", src.path.string(), dst.path.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(inspect_snapshot(default_file_system(), dst.path).header.last_lsn, 11u);
  auto writer = PersistedIndex<FlatIndex>::load(dst);
  writer.insert(600, std::vector<float>{600, 1});
  (void)replica.catch_up();
  const std::vector<std::uint64_t> want{500, 501, 600};
  std::vector<std::uint64_t> got;
  replica.read([&](const FlatIndex& ix) {
    for (std::size_t row = 0; row < ix.size(); ++row) got.push_back(ix.id_at(row).as_u64());
  });
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, want);
  EXPECT_EQ(replica.last_lsn(), writer.last_lsn());
}

// Restoring a backup over an index whose snapshot cannot be read: with
// --force it is replaced (before, the copy stopped at the destination's
// damage and nothing could replace it but removing the files). A local log
// beside it goes, and the copy claims an LSN above its records. Without
// --force it is refused as any index there. Refused with --force too: a
// file that is not a snapshot, one a newer version wrote, an index's log
// or lock file, and a readable snapshot whose log is damaged (the log may
// hold writes: wal repair first).
TEST(CliCopy, ForceReplacesAnIndexWhoseSnapshotIsDamaged) {
  TempDir dir;
  const PersistConfig src(dir / "src.iqdb");
  PersistedIndex<FlatIndex>::open_with(small_index(), src).save();
  const std::vector<std::byte> src_bytes = test::read_file(src.path);

  // A file that is not a snapshot at all (a destination mistyped): refused.
  const fs::path garbage = dir / "garbage.txt";
  const std::vector<std::byte> text(300, std::byte{0x5a});
  test::write_file(garbage, text);
  CliResult r = run_cli({"copy", "--force", src.path.string(), garbage.string()});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("bad_magic"), std::string::npos) << r.err;
  EXPECT_EQ(test::read_file(garbage), text);

  // A snapshot whose header CRC does not match (a byte of it flipped).
  const fs::path damaged = dir / "damaged.iqdb";
  std::vector<std::byte> bad = src_bytes;
  bad[30] ^= std::byte{0x40};
  test::write_file(damaged, bad);
  r = run_cli({"copy", src.path.string(), damaged.string()});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
  r = run_cli({"copy", "--force", src.path.string(), damaged.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("could not be read (checksum_mismatch"), std::string::npos) << r.out;
  EXPECT_EQ(test::read_file(damaged), src_bytes);  // the source's bytes: nothing to claim above

  // A snapshot cut short beside a log of 3 records (LSNs 1..3).
  const PersistConfig logged = with_wal(dir / "logged.iqdb");
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), logged);
    for (std::uint64_t id = 1; id <= 3; ++id) db.insert(id, std::vector<float>{float(id), 0});
    db.close();
  }
  fs::resize_file(logged.path, 30);
  r = run_cli({"copy", "--force", src.path.string(), logged.path.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("could not be read (truncated_header"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(wal::log_path_for(logged.path)));
  EXPECT_EQ(inspect_snapshot(default_file_system(), logged.path).header.last_lsn, 4u);
  const auto db = PersistedIndex<FlatIndex>::load(logged);
  EXPECT_EQ(db.index().size(), 40u);  // the source's, nothing of the old log
  EXPECT_EQ(db.last_lsn(), 4u);

  // Written by a newer version (format version 4): not damage, refused.
  const fs::path newer = dir / "newer.iqdb";
  std::vector<std::byte> v4 = src_bytes;
  v4[8] = std::byte{4};  // format_version u32 at offset 8
  test::write_file(newer, v4);
  r = run_cli({"copy", "--force", src.path.string(), newer.string()});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("unsupported_version"), std::string::npos) << r.err;
  EXPECT_EQ(test::read_file(newer), v4);

  // An index's log or lock file is not a destination, with --force either
  // (before: a log, unreadable as a snapshot, was replaced by one).
  for (const fs::path& part : {wal::log_path_for(logged.path), fs::path(logged.path.string() + ".lock")}) {
    test::write_file(part, {std::byte{1}});
    r = run_cli({"copy", "--force", src.path.string(), part.string()});
    EXPECT_EQ(r.code, 2) << r.out << r.err;
    EXPECT_NE(r.err.find("not an index; copy to " + logged.path.string()), std::string::npos) << r.err;
    EXPECT_EQ(test::read_file(part), std::vector<std::byte>{std::byte{1}});
    EXPECT_FALSE(fs::exists(part.string() + ".lock"));
    fs::remove(part);
  }

  // A readable snapshot, its log damaged in the middle: refused, unchanged.
  const PersistConfig torn = with_wal(dir / "torn.iqdb");
  {
    auto w = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), torn);
    for (std::uint64_t id = 1; id <= 3; ++id) w.insert(id, std::vector<float>{float(id), 0});
    w.close();
  }
  std::vector<std::byte> log = test::read_file(wal::log_path_for(torn.path));
  ASSERT_GT(log.size(), 150u);
  log[100] ^= std::byte{0xff};  // inside the second of three frames (40, 91, 142: iqdb-persist wal dump)
  test::write_file(wal::log_path_for(torn.path), log);
  const std::vector<std::byte> before = test::read_file(torn.path);
  r = run_cli({"copy", "--force", src.path.string(), torn.path.string()});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("corrupt_log"), std::string::npos) << r.out << r.err;
  EXPECT_EQ(test::read_file(torn.path), before);
  EXPECT_EQ(test::read_file(wal::log_path_for(torn.path)), log);
}

// --snapshot-only over an index at a higher LSN: the copy claims an LSN
// above it and holds the source's snapshot alone, not the records of its
// log (they are not copied, as without an index there).
TEST(CliCopy, SnapshotOnlyOverAnIndexLeavesTheSourcesLogOut) {
  TempDir dir;
  const PersistConfig src = with_wal(dir / "src.iqdb");
  const PersistConfig dst = with_wal(dir / "dst.iqdb");
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), src);
    db.insert(500, std::vector<float>{1, 1});
    db.insert(501, std::vector<float>{2, 2});
    db.checkpoint();                           // snapshot LSN 2
    db.insert(502, std::vector<float>{3, 3});  // LSN 3, in the log only
    db.close();
  }
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), dst);
    for (std::uint64_t id = 1; id <= 5; ++id) db.insert(id, std::vector<float>{float(id), 0});
    db.checkpoint();  // LSN 5
    db.close();
  }
  const CliResult r = run_cli({"copy", "--snapshot-only", "--force", src.path.string(), dst.path.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("up to LSN 5: the copy claims LSN 6"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("log held"), std::string::npos) << r.out;
  const auto copy = PersistedIndex<FlatIndex>::load(PersistConfig(dst.path));
  EXPECT_EQ(copy.last_lsn(), 6u);
  EXPECT_EQ(copy.index().size(), 2u);
  EXPECT_TRUE(copy.index().contains(500));
  EXPECT_TRUE(copy.index().contains(501));
  EXPECT_FALSE(copy.index().contains(502));
}

// What a test logged, row by row: the model a folded copy must load as.
using RowModel = std::map<std::uint64_t, std::vector<float>>;

void expect_rows(const FlatIndex& index, const RowModel& model) {
  ASSERT_EQ(index.size(), model.size());
  for (const auto& [id, v] : model) {
    const auto got = index.get(id);
    EXPECT_EQ(std::vector<float>(got.begin(), got.end()), v) << "id " << id;
  }
}

// A source whose log holds records after its snapshot, copied while its
// writer still has it open (the copy takes no lock on the source): the
// destination is one snapshot holding them, whose last LSN is the
// source's, equal to what the test logged; a writer that loads it with the
// WAL numbers its next record on from there. --snapshot-only copies the
// snapshot's bytes alone; an existing destination needs --force.
TEST(CliCopy, FoldsTheLogIntoOneSnapshot) {
  TempDir dir;
  PersistConfig cfg(dir / "src.iqdb");
  cfg.wal_enabled = true;
  cfg.compression = Compression::lz4();
  RowModel model;
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(3, DistanceMetric::Euclidean), cfg);
  const auto put = [&](std::uint64_t id) {
    const std::vector<float> v{static_cast<float>(id), 0.5f, -static_cast<float>(id)};
    db.insert(id, v);
    model[id] = v;
  };
  for (std::uint64_t id = 1; id <= 3; ++id) put(id);  // LSN 1..3
  db.checkpoint();                                    // snapshot LSN 3
  put(4);                                             // LSN 4
  put(5);                                             // LSN 5
  db.erase(1);                                        // LSN 6
  model.erase(1);
  WriteBatch batch;  // LSN 7, 8
  batch.insert(6, std::vector<float>{6, 6, 6});
  batch.erase(2);
  db.write(batch);
  model[6] = {6, 6, 6};
  model.erase(2);
  const std::vector<std::byte> snapshot_bytes = test::read_file(cfg.path);

  const fs::path dst = dir / "dst.iqdb";
  CliResult r = run_cli({"copy", cfg.path.string(), dst.string()});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("log held 5 records after its snapshot (LSN 3)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("last LSN 8"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(wal::log_path_for(dst)));
  const nlohmann::json j = nlohmann::json::parse(run_cli({"inspect", "--json", dst.string()}).out);
  EXPECT_EQ(j.at("last_lsn"), 8);
  EXPECT_EQ(j.at("n_vectors"), model.size());
  EXPECT_EQ(j.at("compression"), "lz4");  // the source's
  {
    PersistConfig back(dst);
    back.wal_enabled = true;
    auto w = PersistedIndex<FlatIndex>::load(back);
    expect_rows(w.index(), model);
    EXPECT_EQ(w.last_lsn(), 8u);
    w.insert(7, std::vector<float>{7, 7, 7});
    EXPECT_EQ(w.last_lsn(), 9u);
    w.close();
  }
  r = run_cli({"wal", "dump", "--json", wal::log_path_for(dst).string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"lsn\":9"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"base_lsn\":9"), std::string::npos) << r.out;

  // --snapshot-only: the snapshot's bytes (LSN 3) alone; over an index: --force.
  r = run_cli({"copy", "--snapshot-only", cfg.path.string(), dst.string()});
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("nothing was copied"), std::string::npos) << r.err;
  const fs::path alone = dir / "alone.iqdb";
  r = run_cli({"copy", "--snapshot-only", cfg.path.string(), alone.string()});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_EQ(test::read_file(alone), snapshot_bytes);
  db.close();

  // A byte flipped in the log's first frame (intact frames after it): the
  // source is damaged, nothing is copied.
  {
    std::vector<std::byte> log = test::read_file(wal::log_path_for(cfg.path));
    log.at(50) ^= std::byte{0x08};
    test::write_file(wal::log_path_for(cfg.path), log);
  }
  const fs::path none = dir / "none.iqdb";
  r = run_cli({"copy", cfg.path.string(), none.string()});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("DAMAGED: " + cfg.path.string()), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("corrupt_log"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(none));
}

// 100000 random vectors of 64 dims (26 MB saved).
FlatIndex big_index(std::uint64_t seed) {
  FlatIndex big(64, DistanceMetric::Euclidean);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  std::vector<float> v(64);
  for (std::uint64_t id = 0; id < 100000; ++id) {
    for (float& x : v) x = value(rng);
    big.insert(id, v);
  }
  return big;
}

// `copy --force src dst` in a forked process, SIGKILLed at 1/8 .. 6/8 of
// `full` (how long a whole copy took), dst holding `old_bytes` before each:
// dst must then be the old bytes or `new_bytes`. At least one must have
// been killed; a last whole copy leaves `new_bytes` and no temporary.
void expect_killed_copies_leave_old_or_new(const TempDir& dir, const fs::path& src, const fs::path& dst,
                                           const std::vector<std::byte>& old_bytes,
                                           const std::vector<std::byte>& new_bytes, std::chrono::microseconds full) {
  int killed = 0;
  for (int i = 0; i < 6; ++i) {
    test::write_file(dst, old_bytes);
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) _exit(cli::run({"copy", "--force", src.string(), dst.string()}, std::cout, std::cerr));
    std::this_thread::sleep_for(full * (i + 1) / 8);
    ::kill(child, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    killed += WIFSIGNALED(status) ? 1 : 0;
    const std::vector<std::byte> now = test::read_file(dst);
    EXPECT_TRUE(now == old_bytes || now == new_bytes) << "iteration " << i << ": " << now.size() << " bytes";
  }
  EXPECT_GT(killed, 0) << "every copy finished before it was killed";
  // The next copy takes the writer lock and removes the killed ones'
  // temporaries. (Over the old bytes again: over a copy that was published
  // before its kill, at the same LSN, it would claim one LSN more.)
  test::write_file(dst, old_bytes);
  ASSERT_EQ(run_cli({"copy", "--force", src.string(), dst.string()}).code, 0);
  EXPECT_EQ(test::read_file(dst), new_bytes);
  for (const std::string& e : dir.entries()) EXPECT_EQ(e.find(".dst.iqdb.tmp-"), std::string::npos) << e;
}

// How long a whole `copy src dst` takes here.
std::chrono::microseconds time_copy(const fs::path& src, const fs::path& dst) {
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(run_cli({"copy", src.string(), dst.string()}).code, 0);
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
}

// The tool killed (SIGKILL, a forked process) at random instants of a copy
// over an existing file: the destination is always the old file or the
// new one, whole, never a mix.
TEST(CliCopy, KilledCopyLeavesOldOrNew) {
  TempDir dir;
  PersistConfig src(dir / "big.iqdb");
  src.wal_enabled = true;
  {
    // At LSN 1, above the old file's 0: the copy is the snapshot's bytes.
    auto db = PersistedIndex<FlatIndex>::open_with(big_index(21), src);
    db.insert(200000, std::vector<float>(64, 0.25f));
    db.checkpoint();
    db.close();
  }
  const std::vector<std::byte> new_bytes = test::read_file(src.path);
  const auto full = time_copy(src.path, dir / "timed.iqdb");
  expect_killed_copies_leave_old_or_new(dir, src.path, dir / "dst.iqdb", all_fixtures(dir).at(5).bytes, new_bytes,
                                        full);
}

// A folded copy whose snapshot cannot be written (a full disk: here the
// file-size limit of the process running the tool, which fails the write
// that flushes the snapshot's last buffer) leaves DST as it was, its log
// included, as the message says. Before, the destination's log (holding
// nothing past its snapshot) was removed once the index was serialised,
// before the snapshot's bytes had all been written.
TEST(CliCopy, AFoldedCopyThatCannotBeWrittenLeavesTheDestinationsLog) {
  TempDir dir;
  PersistConfig src(dir / "src.iqdb");
  src.wal_enabled = true;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(3, DistanceMetric::Euclidean), src);
    for (std::uint64_t id = 1; id <= 400; ++id) db.insert(id, std::vector<float>{static_cast<float>(id), 2, 3});  // logged
    db.close();
  }
  PersistConfig dst(dir / "dst.iqdb");
  dst.wal_enabled = true;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(3, DistanceMetric::Euclidean), dst);
    db.insert(9, std::vector<float>{9, 9, 9});
    db.checkpoint();  // the log holds nothing past the snapshot
    db.close();
  }
  const fs::path dst_log = wal::log_path_for(dst.path);
  ASSERT_TRUE(fs::exists(dst_log));
  const std::vector<std::byte> dst_snapshot = test::read_file(dst.path);
  const std::vector<std::byte> dst_log_bytes = test::read_file(dst_log);

  const test::ChildResult child = test::run_in_child([&](int report) {
    ::signal(SIGXFSZ, SIG_IGN);  // a write past the limit fails with EFBIG instead
    const rlimit limit{6000, 6000};  // past the snapshot's header, short of its 400 rows
    if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) return 91;
    std::ostringstream out, err;
    const int code = cli::run({"copy", "--force", src.path.string(), dst.path.string()}, out, err);
    const std::string text = err.str();
    (void)!::write(report, text.data(), text.size());
    return code;
  });
  const std::string& err = child.report;
  ASSERT_TRUE(WIFEXITED(child.status));
  EXPECT_EQ(WEXITSTATUS(child.status), 2) << err;
  EXPECT_NE(err.find("nothing was copied"), std::string::npos) << err;
  EXPECT_TRUE(fs::exists(dst_log)) << "the destination's log was removed by a copy that failed";
  EXPECT_TRUE(test::read_file(dst.path) == dst_snapshot);
  if (fs::exists(dst_log)) {
    EXPECT_TRUE(test::read_file(dst_log) == dst_log_bytes);
  }
}

// A destination that is no regular file is refused, with or without
// --force, saying what it is, before anything is created beside it. Before,
// a directory, a FIFO or a dangling symbolic link was "an index exists at
// the destination; pass --force" and then an io error with --force (and
// DST.lock was created beside /dev/null); an empty path was a rename error.
TEST(CliCopy, ADestinationThatIsNoRegularFileIsRefusedSayingWhatItIs) {
  TempDir dir;
  const std::string src = write_fixture(dir, all_fixtures(dir).front()).string();
  fs::create_directory(dir / "a-dir");
  ASSERT_EQ(::mkfifo((dir / "a-fifo").c_str(), 0600), 0);
  fs::create_symlink(dir / "nowhere", dir / "a-link");
  const struct {
    const char* name;
    const char* says;
  } cases[] = {{"a-dir", "the destination is a directory"},
               {"a-fifo", "the destination is not a regular file"},
               {"a-link", "the destination is a symbolic link"}};
  for (const auto& c : cases) {
    for (const bool force : {false, true}) {
      SCOPED_TRACE(std::string(c.name) + (force ? " --force" : ""));
      std::vector<std::string> args{"copy", src, (dir / c.name).string()};
      if (force) args.push_back("--force");
      const CliResult r = run_cli(args);
      EXPECT_EQ(r.code, 2) << r.err;
      EXPECT_NE(r.err.find(c.says), std::string::npos) << r.err;
      EXPECT_FALSE(fs::exists(dir / (std::string(c.name) + ".lock")));
    }
  }
  const CliResult r = run_cli({"copy", src, ""});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("an empty path names no file"), std::string::npos) << r.err;
}

// The same for a copy that folds a log: the tool SIGKILLed at random
// instants of a folded copy over an existing file leaves the old file or
// the whole new snapshot (all rows and the 3 logged ones, last LSN 3).
TEST(CliCopy, KilledFoldedCopyLeavesOldOrNew) {
  TempDir dir;
  PersistConfig src(dir / "big.iqdb");
  src.wal_enabled = true;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(big_index(22), src);  // base snapshot, LSN 0
    const std::vector<float> v(64, 0.5f);
    for (std::uint64_t id = 100000; id < 100003; ++id) db.insert(id, v);  // LSN 1..3, in the log
    db.close();
  }
  const fs::path timed = dir / "timed.iqdb";
  const auto full = time_copy(src.path, timed);
  const std::vector<std::byte> new_bytes = test::read_file(timed);
  {
    const auto copy = PersistedIndex<FlatIndex>::load(PersistConfig(timed));
    EXPECT_EQ(copy.index().size(), 100003u);
    EXPECT_EQ(copy.last_lsn(), 3u);
    EXPECT_EQ(copy.index().get(100002)[63], 0.5f);
  }
  expect_killed_copies_leave_old_or_new(dir, src.path, dir / "dst.iqdb", all_fixtures(dir).at(5).bytes, new_bytes,
                                        full);
}

}  // namespace
}  // namespace iqdb::persist

#endif  // __has_include("iqdb-persist/cli.hpp")
