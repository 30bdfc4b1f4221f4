// The crash simulator (ALICE / CrashMonkey style) on the file-system seam.
//
// A workload runs once on an in-memory file system that records every call;
// then, for every crash point, every disk a power loss may leave (per the
// model in docs/reliability/crash-simulation.md) is recovered with
// PersistedIndex<FlatIndex>::load and checked against an independent model.
//
// Scale: IQDB_CRASH_SIM_SCALE=quick (default, for CI) or full (longer
// workloads, more torn-write cut points). The report is printed at the end;
// IQDB_CRASH_SIM_REPORT=<file> also writes it to a file.
//
// The first tests check the simulator itself: SimFs against the real POSIX
// file system (a differential property), the crash states of small traces
// against hand-written expectations, a live crash against the replayed
// trace, and negative controls (a file system that ignores fsync must be
// caught).
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iqdb/persist.hpp>
#include <map>
#include <mutex>
#include <optional>
#include <ostream>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/crash_sim.hpp"
#include "support/crash_sim_harness.hpp"
#include "support/sync_gate.hpp"
#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;
using namespace test::crash;

// ---------------------------------------------------------------- scale

enum class Scale { Quick, Full };

Scale scale() {
  const char* s = std::getenv("IQDB_CRASH_SIM_SCALE");
  if (s == nullptr || std::string(s).empty() || std::string(s) == "quick") return Scale::Quick;
  if (std::string(s) == "full") return Scale::Full;
  throw std::invalid_argument(std::string("IQDB_CRASH_SIM_SCALE=") + s + ": expected quick or full");
}

const char* scale_name() { return scale() == Scale::Full ? "full" : "quick"; }

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAsan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAsan = true;
#else
constexpr bool kAsan = false;
#endif
#else
constexpr bool kAsan = false;
#endif

const fs::path kDir = "/db";
const fs::path kPath = "/db/vectors.iqdb";

std::vector<std::byte> bytes_of(const std::string& s) {
  std::vector<std::byte> b(s.size());
  std::transform(s.begin(), s.end(), b.begin(), [](char c) { return static_cast<std::byte>(c); });
  return b;
}

std::string text_of(const Content& c) {
  const std::vector<std::byte> b = c.bytes();
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// ---------------------------------------------------------------- Content

TEST(ContentTest, WritesReadsAndTruncatesLikeAFile) {
  Content c;
  c.write(4, bytes_of("abc"));
  EXPECT_EQ(c.size(), 7u);
  EXPECT_EQ(text_of(c), std::string("\0\0\0\0abc", 7));
  c.write(0, std::vector<std::byte>(10));  // zeros past the end: stored as size only
  EXPECT_EQ(c.size(), 10u);
  EXPECT_EQ(text_of(c), std::string(10, '\0'));
  EXPECT_TRUE(c.stored().empty());
  c.write(2, bytes_of("xy"));
  c.truncate(3);
  EXPECT_EQ(text_of(c), std::string("\0\0x", 3));
  c.extend(5);
  EXPECT_EQ(text_of(c), std::string("\0\0x\0\0", 5));
  std::byte buf[8];
  EXPECT_EQ(c.read(1, buf), 4u);
  EXPECT_EQ(static_cast<char>(buf[1]), 'x');
  EXPECT_EQ(c.read(5, buf), 0u);

  Content a(bytes_of("hello"));
  Content b = a;  // shares bytes until written
  b.write(0, bytes_of("J"));
  EXPECT_EQ(text_of(a), "hello");
  EXPECT_EQ(text_of(b), "Jello");
  EXPECT_FALSE(a == b);
  b.write(0, bytes_of("h"));
  EXPECT_TRUE(a == b);
  EXPECT_EQ(a.hash(), b.hash());
}

// ---------------------------------------------------------------- SimFs vs POSIX

// One file-system script, run on any FileSystem; each call's observable
// result is appended to a transcript (errors by kind and errno, never by
// message), so two file systems can be compared.
class Script {
 public:
  Script(FileSystem& fs, fs::path dir) : fs_(fs), dir_(std::move(dir)) {}

  void run(std::uint64_t cmd) {
    const auto kind = static_cast<unsigned>(cmd % 15);
    const std::string a = name(cmd >> 4);
    const std::string b = name(cmd >> 6);
    const std::size_t slot = (cmd >> 8) % 3;
    const std::uint64_t off = (cmd >> 10) % 24;
    const std::size_t len = static_cast<std::size_t>((cmd >> 15) % 9);
    const auto fill = static_cast<char>('a' + (cmd >> 19) % 26);
    out_ += std::to_string(kind) + ":";
    try {
      switch (kind) {
        case 0: files_[slot] = fs_.create_exclusive(dir_ / a); break;
        case 1: files_[slot] = fs_.open_append(dir_ / a); break;
        case 2: case 3:
          if (files_[slot]) files_[slot]->append(bytes_of(std::string(len, fill)));
          break;
        case 4:
          if (files_[slot]) files_[slot]->write_at(off, bytes_of(std::string(len, fill)));
          break;
        case 5:
          if (files_[slot]) files_[slot]->truncate(off);
          break;
        case 6:
          if (files_[slot]) {
            files_[slot]->sync();
            files_[slot]->datasync();
          }
          break;
        case 7:
          if (files_[slot]) files_[slot]->close();
          files_[slot].reset();
          break;
        case 8: fs_.rename(dir_ / a, dir_ / b); break;
        case 9: fs_.remove(dir_ / a); break;
        case 10: out_ += fs_.exists(dir_ / a) ? "yes" : "no"; break;
        case 11: {
          std::vector<std::string> names = fs_.list_dir(dir_);
          std::sort(names.begin(), names.end());
          for (const std::string& n : names) out_ += n + ",";
          break;
        }
        case 12: {
          const auto f = fs_.open_read(dir_ / a);
          std::vector<std::byte> buf(64);
          const std::size_t n = f->read_at(0, buf);
          out_ += std::to_string(f->size()) + "=" + std::string(reinterpret_cast<const char*>(buf.data()), n);
          break;
        }
        case 13: locks_[slot] = fs_.lock(dir_ / a); break;
        case 14: locks_[slot].reset(); break;
        default: break;
      }
      out_ += "ok";
    } catch (const PersistError& e) {
      out_ += "error " + std::string(to_string(e.kind())) + " errno " + std::to_string(e.sys_errno());
    }
    out_ += "\n";
  }

  // Every file's contents, by name (read back through the seam).
  std::string contents() {
    std::string s;
    std::vector<std::string> names = fs_.list_dir(dir_);
    std::sort(names.begin(), names.end());
    for (const std::string& n : names) {
      const auto f = fs_.open_read(dir_ / n);
      std::vector<std::byte> buf(static_cast<std::size_t>(f->size()));
      f->read_at(0, buf);
      s += n + "=" + std::string(reinterpret_cast<const char*>(buf.data()), buf.size()) + ";";
    }
    return s;
  }

  const std::string& transcript() const noexcept { return out_; }

 private:
  static std::string name(std::uint64_t v) {
    static const char* const names[] = {"a", "b", "c", "a"};
    return names[v % 4];
  }

  FileSystem& fs_;
  fs::path dir_;
  std::unique_ptr<WritableFile> files_[3];
  std::unique_ptr<FileLock> locks_[3];
  std::string out_;
};

RC_GTEST_PROP(SimFsTest, BehavesLikeThePosixFileSystem, (const std::vector<std::uint64_t>& cmds)) {
  test::TempDir dir;
  std::string posix_out;
  std::string posix_files;
  {
    Script posix(default_file_system(), dir.path());
    for (const std::uint64_t c : cmds) posix.run(c);
    posix_out = posix.transcript();
    posix_files = posix.contents();
  }
  SimFs sim({"/sim"});
  Script simulated(sim, "/sim");
  for (const std::uint64_t c : cmds) simulated.run(c);
  RC_ASSERT(simulated.transcript() == posix_out);
  RC_ASSERT(simulated.contents() == posix_files);
}

TEST(SimFsTest, LocksConflictUntilReleasedAndRandomIsSeeded) {
  SimFs fs({"/db"});
  auto l1 = fs.lock("/db/x.lock");
  try {
    fs.lock("/db/x.lock");
    ADD_FAILURE() << "second lock taken";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Locked);
  }
  l1.reset();
  EXPECT_NO_THROW(fs.lock("/db/x.lock"));

  SimFs a({"/d"}, SimFs::Options{7, true});
  SimFs b({"/d"}, SimFs::Options{7, true});
  SimFs c({"/d"}, SimFs::Options{8, true});
  const std::uint64_t a1 = a.random_u64();
  EXPECT_EQ(a1, b.random_u64());
  EXPECT_NE(a1, c.random_u64());
  EXPECT_NE(a1, a.random_u64());
}

TEST(SimFsTest, AfterACrashEveryCallFailsAndNothingChanges) {
  SimFs fs({"/db"});
  auto f = fs.create_exclusive("/db/a");
  f->append(bytes_of("one"));
  f->sync();
  fs.crash_after(fs.op_count() + 1);
  f->append(bytes_of("two"));  // the last op allowed
  const std::size_t n = fs.op_count();
  const Image live = fs.live_image();
  const Image durable = fs.durable_image();
  EXPECT_THROW(f->append(bytes_of("three")), PersistError);
  EXPECT_THROW(f->sync(), PersistError);
  EXPECT_THROW(fs.rename("/db/a", "/db/b"), PersistError);
  EXPECT_THROW(fs.sync_dir("/db"), PersistError);
  EXPECT_THROW(fs.exists("/db/a"), PersistError);
  EXPECT_TRUE(fs.crashed());
  EXPECT_EQ(fs.op_count(), n);
  EXPECT_EQ(fs.live_image(), live);
  EXPECT_EQ(fs.durable_image(), durable);
  EXPECT_EQ(text_of(live.at("/db/a")), "onetwo");
  EXPECT_TRUE(durable.empty());  // the create was never made durable by a directory fsync
}

// ---------------------------------------------------------------- crash states

// The crash states of what `script` does to a fresh SimFs, as a set of
// "name=content;" strings (content with zeros shown as '0').
std::set<std::string> states_after(const std::function<void(SimFs&)>& script, StateOptions o = {}) {
  SimFs fs({"/d"});
  script(fs);
  std::set<std::string> out;
  for (const CrashState& s : fs.crash_states(o)) {
    std::string t;
    for (const auto& [path, c] : s.image) {
      std::string text = text_of(c);
      std::replace(text.begin(), text.end(), '\0', '0');
      t += path.filename().string() + "=" + text + ";";
    }
    out.insert(t);
  }
  return out;
}

void make_durable_file(SimFs& fs, const fs::path& p, const std::string& text) {
  auto f = fs.create_exclusive(p);
  f->append(bytes_of(text));
  f->sync();
  f->close();
  fs.sync_dir(p.parent_path());
}

TEST(CrashStatesTest, NothingPendingMeansOneState) {
  EXPECT_EQ(states_after([](SimFs& fs) { make_durable_file(fs, "/d/a", "abc"); }),
            (std::set<std::string>{"a=abc;"}));
}

TEST(CrashStatesTest, AnUnsyncedNewFileMayBeMissingEmptyPartOrWhole) {
  const auto s = states_after([](SimFs& fs) {
    auto f = fs.create_exclusive("/d/a");
    f->append(bytes_of("xyz"));
  });
  // The create not persisted; persisted without the data; with it; or with
  // its size but not its data (zeros).
  EXPECT_EQ(s, (std::set<std::string>{"", "a=;", "a=xyz;", "a=000;"}));
}

TEST(CrashStatesTest, SyncedDataButUnsyncedDirectoryMayLoseTheFile) {
  const auto s = states_after([](SimFs& fs) {
    auto f = fs.create_exclusive("/d/a");
    f->append(bytes_of("xyz"));
    f->sync();
  });
  EXPECT_EQ(s, (std::set<std::string>{"", "a=xyz;"}));
}

void three_appends(SimFs& fs) {
  make_durable_file(fs, "/d/a", "");
  auto f = fs.open_append("/d/a");
  f->append(bytes_of("1"));
  f->append(bytes_of("2"));
  f->append(bytes_of("3"));
}

TEST(CrashStatesTest, UnsyncedWritesPersistAsPrefixesOrWithOneDropped) {
  StateOptions one_byte_sectors;
  one_byte_sectors.sector = 1;
  EXPECT_EQ(states_after(three_appends, one_byte_sectors),
            (std::set<std::string>{
                "a=;", "a=1;", "a=12;", "a=123;",  // prefixes
                "a=023;", "a=103;",                // one dropped (a hole reads as zeros)
                "a=0;", "a=10;", "a=120;",         // the next write: size grew, data lost
            }));
}

TEST(CrashStatesTest, WritesInOneSectorPersistTogetherInOrder) {
  // The three bytes share a 512-byte sector: whenever it is written back it
  // holds every write made so far, so no write lands without the earlier ones.
  EXPECT_EQ(states_after(three_appends),
            (std::set<std::string>{"a=;", "a=1;", "a=12;", "a=123;", "a=0;", "a=10;", "a=120;"}));
}

TEST(CrashStatesTest, AWritePersistsInSectorAlignedPieces) {
  const std::string big(1500, 'x');
  StateOptions o;
  o.torn_cuts = 2;
  const auto s = states_after(
      [&](SimFs& fs) {
        make_durable_file(fs, "/d/a", "");
        auto f = fs.open_append("/d/a");
        f->append(bytes_of(big));
      },
      o);
  EXPECT_EQ(s, (std::set<std::string>{
                   "a=;",
                   "a=" + big + ";",
                   "a=" + std::string(512, 'x') + ";",
                   "a=" + std::string(1024, 'x') + ";",
                   "a=" + std::string(1500, '0') + ";",
                   "a=" + std::string(512, 'x') + std::string(988, '0') + ";",
               }));
}

TEST(CrashStatesTest, ARenameWithoutDirectorySyncMayNotHappen) {
  const auto s = states_after([](SimFs& fs) {
    make_durable_file(fs, "/d/t", "old");
    make_durable_file(fs, "/d/n", "new");
    fs.rename("/d/n", "/d/t");
  });
  EXPECT_EQ(s, (std::set<std::string>{"n=new;t=old;", "t=new;"}));
}

TEST(CrashStatesTest, ARenamedUnsyncedFileMayArriveWithoutItsData) {
  // The ext4-without-auto_da_alloc hazard: rename persisted, data not.
  const auto s = states_after([](SimFs& fs) {
    make_durable_file(fs, "/d/t", "old");
    auto f = fs.create_exclusive("/d/n");
    f->append(bytes_of("new"));
    f->close();
    fs.rename("/d/n", "/d/t");
  });
  EXPECT_TRUE(s.count("t=old;")) << "rename lost";
  EXPECT_TRUE(s.count("t=new;")) << "everything persisted";
  EXPECT_TRUE(s.count("t=;")) << "the rename persisted, the data did not";
  EXPECT_TRUE(s.count("n=;t=old;")) << "only the create persisted";
  // Never a rename without its source's create.
  for (const std::string& x : s) EXPECT_EQ(x.find("n=new;t=new"), std::string::npos) << x;
}

TEST(CrashStatesTest, AnUnsyncedTruncateMayBeLost) {
  const auto s = states_after([](SimFs& fs) {
    make_durable_file(fs, "/d/a", "abcdef");
    auto f = fs.open_append("/d/a");
    f->truncate(2);
  });
  EXPECT_EQ(s, (std::set<std::string>{"a=abcdef;", "a=ab;"}));
}

TEST(CrashStatesTest, FirstStatesAreTheDurableAndTheLiveDisk) {
  SimFs fs({"/d"});
  make_durable_file(fs, "/d/a", "abc");
  auto f = fs.open_append("/d/a");
  f->append(bytes_of("def"));
  auto g = fs.create_exclusive("/d/b");
  const auto states = fs.crash_states({});
  ASSERT_GE(states.size(), 2u);
  EXPECT_EQ(states[0].image, fs.durable_image());
  EXPECT_EQ(states[1].image, fs.live_image());
  EXPECT_EQ(text_of(states[0].image.at("/d/a")), "abc");
  EXPECT_EQ(states[0].image.count("/d/b"), 0u);
  EXPECT_EQ(text_of(states[1].image.at("/d/a")), "abcdef");
}

// ---------------------------------------------------------------- workloads

struct Scenario {
  bool wal = true;
  FsyncPolicy policy = FsyncPolicy::always();
  Compression compression = Compression::none();
  std::uint64_t checkpoint_log_bytes = 0;  // automatic checkpoints when not 0
};

std::string policy_name(const FsyncPolicy& p) {
  switch (p.mode()) {
    case FsyncPolicy::Mode::Always: return "always";
    case FsyncPolicy::Mode::Periodic: return "periodic";
    case FsyncPolicy::Mode::Never: return "never";
  }
  return "?";
}

std::string compression_name(const Compression& c) {
  switch (c.kind()) {
    case Compression::Kind::None: return "none";
    case Compression::Kind::Zstd: return "zstd";
    case Compression::Kind::Lz4: return "lz4";
  }
  return "?";
}

std::string scenario_name(const Scenario& s) {
  return std::string(s.wal ? "wal" : "nowal") + "/" + policy_name(s.policy) + "/" + compression_name(s.compression) +
         (s.checkpoint_log_bytes != 0 ? "/auto" + std::to_string(s.checkpoint_log_bytes) : "");
}

// gtest and ctest name parameterised tests with this.
void PrintTo(const Scenario& s, std::ostream* os) { *os << scenario_name(s); }

PersistConfig config_for(const Scenario& s, FileSystem& fs) {
  PersistConfig cfg(kPath);
  cfg.wal_enabled = s.wal;
  cfg.fsync_policy = s.policy;
  cfg.compression = s.compression;
  cfg.checkpoint_log_bytes = s.checkpoint_log_bytes;
  cfg.file_system = &fs;
  return cfg;
}

Metadata meta_of(std::uint64_t i) {
  return Metadata{{"n", Value(static_cast<std::int64_t>(i))}, {"tag", Value(i % 2 == 0 ? "even" : "odd")}};
}

Model initial_model(std::uint64_t dim, std::uint64_t base) {
  Model m;
  for (std::uint64_t i = base; i < base + 3; ++i) {
    m[VectorId(i)] = Entry{vec_of(i, dim), i % 2 == 1 ? std::optional<Metadata>(meta_of(i)) : std::nullopt};
  }
  return m;
}

// The WAL workload: open_with, inserts, erases, batches, sync, checkpoint,
// save, close, load, more; the full scale adds a longer tail, a big batch
// and open_with over the existing index.
void wal_workload(Workload& w, Scale sc) {
  const std::uint64_t dim = sc == Scale::Full ? 64 : 24;
  const auto put = [&](const VectorId& id, std::uint64_t seed, bool meta = false) {
    w.insert(id, vec_of(seed, dim), meta ? std::optional<Metadata>(meta_of(seed)) : std::nullopt);
  };
  w.open_with(initial_model(dim, 1), dim);
  put(10, 10);
  put(11, 11, true);
  put(VectorId::bytes("alpha"), 100);
  w.erase(2);
  WriteBatch b1;
  b1.insert(20, vec_of(20, dim)).insert(21, vec_of(21, dim), meta_of(21)).erase(10);
  w.write(b1);
  // With automatic checkpoints every 600 bytes of log, b1 took it past the bound.
  const bool autos = w.config().checkpoint_log_bytes != 0;
  if (autos) w.wait_for_auto_checkpoints(1);
  w.sync();
  put(12, 12);
  w.erase(11);
  w.checkpoint();
  put(13, 13, true);
  WriteBatch b2;
  b2.insert(22, vec_of(22, dim)).erase(13).insert(VectorId::bytes("beta"), vec_of(101, dim));
  w.write(b2);
  put(14, 14);
  if (autos) w.wait_for_auto_checkpoints(2);
  w.save();
  put(15, 15);
  w.erase(1);
  w.close();
  w.reopen();
  put(16, 16, true);
  w.erase(3);
  w.close();
  if (sc != Scale::Full) return;
  w.reopen();
  // One frame larger than the log's preallocated first MiB: the writer
  // extends the zero-filled region, then writes the frame across its end.
  WriteBatch huge;
  for (std::uint64_t i = 1000; i < 5200; ++i) huge.insert(i, vec_of(i, dim));
  w.write(huge);
  WriteBatch big;
  for (std::uint64_t i = 200; i < 240; ++i) big.insert(i, vec_of(i, dim), i % 5 == 0 ? std::optional(meta_of(i)) : std::nullopt);
  w.write(big);
  for (std::uint64_t i = 30; i < 42; ++i) put(i, i, i % 4 == 0);
  w.sync();
  for (std::uint64_t i = 200; i < 210; ++i) w.erase(i);
  w.checkpoint();
  put(50, 50);
  w.close();
  // open_with over an existing index replaces it.
  w.open_with(initial_model(dim, 60), dim);
  put(70, 70);
  w.erase(61);
  w.close();
}

// Without a WAL only save() writes; the workload saves before it closes.
void nowal_workload(Workload& w, Scale sc) {
  const std::uint64_t dim = sc == Scale::Full ? 64 : 24;
  w.open_with(initial_model(dim, 1), dim);
  w.save();
  w.insert(10, vec_of(10, dim), meta_of(10));
  w.erase(2);
  w.save();
  w.insert(11, vec_of(11, dim));
  w.save();
  w.close();
}

struct Recorded {
  Report report;
  std::vector<Step> steps;
};

// Record the workload for `s` on a SimFs (through `wrap`, when given, which
// sits between the index and the recorder) and explore its crash states.
Recorded record_and_explore(const Scenario& s, const std::string& name, ExploreOptions options,
                       const std::function<FileSystem*(SimFs&)>& wrap = {}) {
  SimFs sim({kDir});
  FileSystem* used = wrap ? wrap(sim) : &sim;
  Workload w(sim, config_for(s, *used));
  if (s.wal) {
    wal_workload(w, scale());
  } else {
    nowal_workload(w, scale());
  }
  Recorded r;
  r.report = explore(name, sim, w, options);
  r.steps = w.steps();
  return r;
}

ExploreOptions options_for_scale() {
  ExploreOptions o;
  o.states.torn_cuts = scale() == Scale::Full ? 4 : 2;
  return o;
}

std::vector<Report>& all_reports() {
  static std::vector<Report> r;
  return r;
}

std::string rerun_command() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return std::string("IQDB_CRASH_SIM_SCALE=") + scale_name() + " " +
         (ec ? std::string("build/release/tests/crash_simulation_test") : exe.string()) +
         " --gtest_filter='*CrashSimulation*'";
}

// Prints the table once every exploration ran.
class ReportPrinter : public ::testing::Environment {
 public:
  void TearDown() override {
    if (all_reports().empty()) return;
    std::string text = std::string("crash simulation, scale ") + scale_name() + (kAsan ? " (ASan build)" : "") +
                       "\nrerun: " + rerun_command() + "\n" + format_reports(all_reports());
    std::cout << "\n" << text << std::flush;
    if (const char* file = std::getenv("IQDB_CRASH_SIM_REPORT")) std::ofstream(file) << text;
  }
};
const auto* const kPrinter = ::testing::AddGlobalTestEnvironment(new ReportPrinter);

std::size_t outcome(const Report& r, const std::string& key) {
  const auto it = r.outcomes.find(key);
  return it == r.outcomes.end() ? 0 : it->second;
}

class CrashSimulation : public ::testing::TestWithParam<Scenario> {};

TEST_P(CrashSimulation, EveryCrashStateRecoversAPrefixWithEveryPromisedCall) {
  const Scenario s = GetParam();
  const Recorded run = record_and_explore(s, scenario_name(s), options_for_scale());
  const Report& r = run.report;
  all_reports().push_back(r);
  std::cout << format_reports({r});
  // The run must have explored something real: a crash point per op that
  // changes the disk, several states at most of them, recoveries that ran.
  EXPECT_GT(r.crash_points, 50u);
  EXPECT_GT(r.states, r.crash_points);
  EXPECT_GT(r.recoveries, 20u);
  EXPECT_GT(outcome(r, "recovered every call issued"), 0u);
  if (s.policy.mode() == FsyncPolicy::Mode::Always) {
    // Under Always a state may lose only the call in flight.
    EXPECT_EQ(outcome(r, "lost acknowledged calls the policy does not promise durable"), 0u);
  } else {
    // Unsynced acknowledged calls are lost somewhere (else the model is too weak).
    EXPECT_GT(outcome(r, "lost acknowledged calls the policy does not promise durable"), 0u);
  }
  // A violation is a durability bug in src/ (or an over-strict model): see
  // docs/reliability/crash-simulation.md before changing anything here.
  EXPECT_EQ(r.violations, 0u) << r.examples_text();
}

std::vector<Scenario> wal_scenarios() {
  std::vector<Scenario> out;
  for (const FsyncPolicy& p :
       {FsyncPolicy::always(), FsyncPolicy::periodic(std::chrono::hours(1)), FsyncPolicy::never()}) {
    for (const Compression& c : {Compression::none(), Compression::zstd(3), Compression::lz4()}) {
      out.push_back({true, p, c});
    }
  }
  // Automatic checkpoints (PersistConfig::checkpoint_log_bytes) from the
  // index's own thread, every few hundred bytes of log: their file-system
  // calls interleave with the workload's, and every crash point among them
  // must recover as a checkpoint() call's would.
  out.push_back({true, FsyncPolicy::always(), Compression::none(), 600});
  out.push_back({true, FsyncPolicy::never(), Compression::none(), 600});
  return out;
}

std::string param_name(const ::testing::TestParamInfo<Scenario>& info) {
  std::string n = scenario_name(info.param);
  std::replace(n.begin(), n.end(), '/', '_');
  return n;
}

INSTANTIATE_TEST_SUITE_P(Wal, CrashSimulation, ::testing::ValuesIn(wal_scenarios()), param_name);

// Without a WAL, save() under Always and Periodic is durable: no violation.
// Under Never it is not (documented: survives a process crash, not a power
// loss), and the simulator must find the states where a renamed snapshot
// arrived without its data.
TEST(CrashSimulationNoWal, DurableSavesNeverLoseTheSnapshotAndNeverSavesCanBeTorn) {
  for (const FsyncPolicy& p : {FsyncPolicy::always(), FsyncPolicy::never()}) {
    const Scenario s{false, p, Compression::zstd(3)};
    const Recorded run = record_and_explore(s, scenario_name(s), options_for_scale());
    const Report& r = run.report;
    all_reports().push_back(r);
    std::cout << format_reports({r});
    EXPECT_EQ(r.violations, 0u) << r.examples_text();
    std::size_t errors = 0;
    for (const auto& [k, v] : r.outcomes) {
      if (k.starts_with("typed error")) errors += v;
    }
    if (p.mode() == FsyncPolicy::Mode::Always) {
      EXPECT_EQ(errors, 0u);
    } else {
      EXPECT_GT(errors, 0u) << "no state with an unsynced, renamed snapshot: the model misses hazard (d)";
    }
  }
}

// ---------------------------------------------------------------- negative controls

// Forwards everything, but fsync and fdatasync on files do nothing.
class ForgetfulFile : public WritableFileWrapper {
 public:
  using WritableFileWrapper::WritableFileWrapper;
  void sync() override {}
  void datasync() override {}
};
class ForgetfulFs : public FileSystemWrapper {
 public:
  ForgetfulFs(FileSystem& t, bool files, bool dirs) : FileSystemWrapper(t), files_(files), dirs_(dirs) {}
  std::unique_ptr<WritableFile> create_exclusive(const fs::path& p) override { return wrap(target().create_exclusive(p)); }
  std::unique_ptr<WritableFile> open_append(const fs::path& p) override { return wrap(target().open_append(p)); }
  void sync_dir(const fs::path& d) override {
    if (!dirs_) target().sync_dir(d);
  }

 private:
  std::unique_ptr<WritableFile> wrap(std::unique_ptr<WritableFile> f) {
    if (!files_) return f;
    return std::make_unique<ForgetfulFile>(std::move(f));
  }
  bool files_;
  bool dirs_;
};

// The checker must be able to fail: a library that skipped its fsyncs would
// lose acknowledged calls, and the simulator must say so.
TEST(CrashSimulationControl, ALibraryThatSkipsFsyncIsCaught) {
  ExploreOptions o = options_for_scale();
  o.crash_recoveries = false;
  o.stop_after = 1;
  for (const auto& [skip_files, skip_dirs] : {std::pair{true, false}, std::pair{false, true}}) {
    // Copies: clang 14 cannot capture a structured binding in a lambda.
    const bool files = skip_files;
    const bool dirs = skip_dirs;
    std::unique_ptr<ForgetfulFs> forgetful;
    const Recorded run = record_and_explore({true, FsyncPolicy::always(), Compression::none()},
                                       files ? "control: no file fsync" : "control: no dir fsync", o,
                                       [&](SimFs& sim) {
                                         forgetful = std::make_unique<ForgetfulFs>(sim, files, dirs);
                                         return forgetful.get();
                                       });
    EXPECT_GT(run.report.violations, 0u) << run.report.name;
    std::cout << "found, as it should:\n" << run.report.examples_text();
  }
}

// ---------------------------------------------------------------- group commit

bool wait_for_commits(const PersistedIndex<FlatIndex>& db, std::uint64_t n) {
  for (int i = 0; i < 60000 && db.wal_stats().commits < n; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return db.wal_stats().commits >= n;
}

// Under FsyncPolicy::Always, concurrent inserts share fdatasyncs (group
// commit): while a leader syncs, others queue their frames and wait. Here
// writer A leads; B, C and D queue one after the other during A's sync (the
// gate makes the order deterministic); then one of them writes all three
// frames and syncs them. A power loss before that second sync may persist
// D's and C's sectors but not B's: B and C, D were never acknowledged, so
// losing them is fine, but recovery must still open the index (it must never
// fail under Always).
//
// This found a durability bug (fixed): the log reader took B's frame for
// damage followed by intact frames (C, D) and load() threw CorruptLog, in a
// state reachable under Always. Frames now record the durable frontier
// (synced_lsn); see docs/reliability/crash-simulation.md, "Findings".
TEST(CrashSimulationGroupCommit, UnderAlwaysAnOutOfOrderWritebackStillRecovers) {
  SimFs sim({kDir});
  // Holds writer A inside its sync, once its fdatasync is done.
  test::SyncGateFs gate(sim, test::SyncGateFs::When::AfterSync);
  const PersistConfig cfg = config_for({true, FsyncPolicy::always(), Compression::none()}, gate);
  // 4 KiB vectors: each frame covers pages of its own (but its first and
  // last sector, which it shares with its neighbours).
  const std::uint64_t dim = 1024;
  std::vector<Model> models{initial_model(dim, 1)};
  std::vector<Step> steps;
  std::optional<PersistedIndex<FlatIndex>> db;
  {
    Step s{"open_with (3 vectors)", sim.op_count(), 0, 0, 0};
    FlatIndex index(dim, DistanceMetric::Euclidean);
    for (const auto& [id, e] : models[0]) index.insert(id, e.vec, e.meta);
    db.emplace(PersistedIndex<FlatIndex>::open_with(std::move(index), cfg));
    s.end = sim.op_count();
    steps.push_back(s);
  }
  const std::vector<std::uint64_t> ids = {10, 11, 12, 13};  // A, B, C, D: their log order
  std::vector<Step> calls(ids.size());
  std::vector<std::thread> threads;
  struct Joiner {  // on every exit, an ASSERT's too: let the writers finish
    test::SyncGateFs& gate;
    std::vector<std::thread>& threads;
    ~Joiner() {
      gate.open();
      for (std::thread& t : threads) {
        if (t.joinable()) t.join();
      }
    }
  } joiner{gate, threads};
  const auto start = [&](std::size_t k) {
    threads.emplace_back([&, k] {
      calls[k].begin = sim.op_count();
      db->insert(ids[k], vec_of(ids[k], dim));
      calls[k].end = sim.op_count();
    });
  };
  gate.close(test::SyncGateFs::Hold::Next);
  start(0);
  ASSERT_TRUE(gate.wait_for_a_waiter());
  for (std::size_t k = 1; k < ids.size(); ++k) {
    start(k);
    ASSERT_TRUE(wait_for_commits(*db, k + 1)) << "writer " << k << " did not queue its frame";
  }
  gate.open();
  for (std::thread& t : threads) t.join();
  for (std::size_t k = 0; k < ids.size(); ++k) {
    Model m = models.back();
    m[VectorId(ids[k])] = Entry{vec_of(ids[k], dim), std::nullopt};
    models.push_back(std::move(m));
    calls[k].what = "insert " + std::to_string(ids[k]);
    calls[k].model = calls[k].promises = static_cast<std::int64_t>(k + 1);
    steps.push_back(calls[k]);
  }
  {
    Step s{"close", sim.op_count(), 0, static_cast<std::int64_t>(ids.size()), static_cast<std::int64_t>(ids.size())};
    db->close();
    s.end = sim.op_count();
    steps.push_back(s);
  }
  db.reset();
  // The frames landed in log order: A's, then B's, C's and D's in one write
  // (else the gate did not hold).
  const std::vector<Op> trace = sim.trace();  // a copy: keep it alive for the pointers below
  std::vector<const Op*> writes;
  for (const Op& op : trace) {
    if (op.kind == OpKind::Write && op.path == fs::path(kPath.string() + ".wal") && op.length() > 4096) {
      writes.push_back(&op);
    }
  }
  ASSERT_EQ(writes.size(), 2u);
  const std::uint64_t frame = writes[0]->length();
  EXPECT_GT(frame, dim * 4);
  EXPECT_EQ(writes[1]->offset, writes[0]->offset + frame);
  EXPECT_EQ(writes[1]->length(), 3 * frame);

  const Report r = explore("wal/always/group-commit", sim, cfg, steps, models, options_for_scale());
  all_reports().push_back(r);
  std::cout << format_reports({r});
  EXPECT_GT(r.crash_points, 10u);
  EXPECT_EQ(r.violations, 0u) << r.examples_text();
}

// ---------------------------------------------------------------- live crash

// Crashing the workload for real at op p (every later call fails, the index
// is destroyed, its destructor's calls fail too) leaves exactly the live and
// durable disks that replaying the recorded trace to p gives: the recording
// is complete and deterministic, and nothing after a crash reaches the disk.
TEST(CrashSimulationLive, ACrashMidRunLeavesWhatTheReplayedTraceSays) {
  const Scenario s{true, FsyncPolicy::always(), Compression::none()};
  SimFs full({kDir});
  {
    Workload w(full, config_for(s, full));
    wal_workload(w, Scale::Quick);
  }
  const std::vector<Op> trace = full.trace();
  std::vector<std::size_t> points;
  std::map<std::size_t, std::pair<Image, Image>> expected;  // point -> (durable, live)
  replay(full.dirs(), full.initial_image(), trace, [&](std::size_t p, const DiskModel& d) {
    if (p % 5 == 3) expected[p] = {d.durable_image(), d.live_image()};
  });
  ASSERT_GT(expected.size(), 10u);
  for (const auto& [p, images] : expected) {
    SimFs sim({kDir});
    sim.crash_after(p);
    bool crashed = false;
    try {
      Workload w(sim, config_for(s, sim));
      wal_workload(w, Scale::Quick);
    } catch (const PersistError& e) {
      crashed = true;
      EXPECT_EQ(e.sys_errno(), EIO) << e.what();
    }
    EXPECT_EQ(crashed, p < trace.size()) << p;
    EXPECT_EQ(sim.op_count(), p);
    EXPECT_TRUE(sim.durable_image() == images.first) << "point " << p;
    EXPECT_TRUE(sim.live_image() == images.second) << "point " << p;
  }
}

}  // namespace
}  // namespace iqdb::persist
