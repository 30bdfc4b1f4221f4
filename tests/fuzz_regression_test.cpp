// Replays every file of fuzz/regressions/<target>/ (minimized inputs of past
// findings) and fuzz/corpus/<target>/ (the seed corpora) through the fuzz
// targets' own entry points, with the compiler and sanitizers of this build.
//
// A target fails the test by aborting (a failed oracle check, a sanitizer
// report, a crash) or by letting an exception other than PersistError
// escape; each target's header comment lists its oracles.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <ostream>
#include <string>
#include <vector>

// The targets are compiled into this test (each is one .cpp; without
// IQDB_FUZZ_DEFINE_ENTRY they define no libFuzzer entry point).
#include "../fuzz/flat_payload_fuzzer.cpp"
#include "../fuzz/head_record_fuzzer.cpp"
#include "../fuzz/header_fuzzer.cpp"
#include "../fuzz/snapshot_fuzzer.cpp"
#include "../fuzz/wal_replay_fuzzer.cpp"
#include "../fuzz/wal_scan_fuzzer.cpp"

namespace iqdb::persist::fuzz {
namespace {

const fs::path kFuzzDir = fs::path(__FILE__).parent_path().parent_path() / "fuzz";

std::vector<fs::path> files_under(const fs::path& dir) {
  std::vector<fs::path> out;
  if (!fs::is_directory(dir)) return out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::uint8_t> slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

struct Target {
  const char* name;
  std::function<void(std::span<const std::uint8_t>)> run;
};

const Target kTargets[] = {
    {"header", run_header},         {"snapshot", run_snapshot},         {"wal_scan", run_wal_scan},
    {"wal_replay", run_wal_replay}, {"flat_payload", run_flat_payload}, {"head_record", run_head_record},
};

void PrintTo(const Target& t, std::ostream* os) { *os << t.name; }

class FuzzReplay : public ::testing::TestWithParam<Target> {};

void replay(const Target& t, const fs::path& dir) {
  for (const fs::path& f : files_under(dir)) {
    SCOPED_TRACE(f.string());
    const std::vector<std::uint8_t> data = slurp(f);
    t.run(std::span<const std::uint8_t>(data.data(), data.size()));
  }
}

TEST_P(FuzzReplay, Regressions) { replay(GetParam(), kFuzzDir / "regressions" / GetParam().name); }

TEST_P(FuzzReplay, SeedCorpus) {
  const fs::path dir = kFuzzDir / "corpus" / GetParam().name;
  // The corpus is committed: an empty or missing one means this test checks nothing.
  ASSERT_GE(files_under(dir).size(), 3u) << dir;
  replay(GetParam(), dir);
}

INSTANTIATE_TEST_SUITE_P(Targets, FuzzReplay, ::testing::ValuesIn(kTargets),
                         [](const ::testing::TestParamInfo<Target>& i) { return std::string(i.param.name); });

// Finding wal-scan-quadratic (found by reading the scanner, confirmed with this
// input; too large for the fuzzers' 4 KiB inputs and for a committed file):
// after a damaged frame the scanner tries every later byte offset as a frame
// start and checksums the whole candidate frame each time. A 2 MiB log whose
// every 4th offset holds a plausible 1 MiB frame costs ~2^18 checksums of
// 1 MiB each (tens of seconds); a scan linear in the file takes milliseconds.
TEST(FuzzFindings, ScanAfterDamageIsNotQuadratic) {
  Bytes log;
  for (char c : kWalMagic) put_le(log, c);
  put_le<std::uint32_t>(log, 1);
  // Pattern 01 00 10 00: length 0x00100001 at every 4th offset, op byte 1 eight
  // bytes later; no CRC matches.
  while (log.size() < (std::size_t{2} << 20)) {
    for (const std::byte b : {std::byte{0x01}, std::byte{0x00}, std::byte{0x10}, std::byte{0x00}}) log.push_back(b);
  }
  MemFileSystem mfs;
  mfs.put("/db/q.iqdb.wal", log);
  // The work, counted in bytes checksummed rather than timed: the quadratic
  // search checksummed ~2^18 MiB here.
  const wal::ScanResult r = wal::scan_log(mfs, "/db/q.iqdb.wal", {}, wal::ScanMode::Report);
  EXPECT_EQ(r.records, 0u);
  EXPECT_EQ(r.valid_bytes, 12u);
  EXPECT_LE(r.bytes_checksummed, 9 * log.size() + (std::uint64_t{16} << 20))
      << "the scan after damage checksummed " << r.bytes_checksummed << " bytes of a " << log.size() << "-byte log";
  EXPECT_THROW(wal::scan_log(mfs, "/db/q.iqdb.wal", {}, wal::ScanMode::Strict), PersistError);
}

}  // namespace
}  // namespace iqdb::persist::fuzz
