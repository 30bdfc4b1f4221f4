// The atomic save under injected faults: whatever step of
// PersistedIndex::save fails, the error is an Io PersistError carrying the
// errno, the previous snapshot is byte-identical and no temporary file is
// left behind (a failure of the final directory fsync happens after the
// rename: the new file is then complete and in place). Plus where the
// temporary file lives, symlinked targets and what each FsyncPolicy syncs.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <bit>
#include <filesystem>
#include <functional>
#include <iqdb/persist.hpp>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "support/fault_fs.hpp"
#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;
using test::Fault;
using test::FaultFs;
using test::FsOp;
using test::OpKind;

// ---------------------------------------------------------------- fixtures

// About 6 MB of incompressible vectors (random bit patterns): more than one
// 4 MiB writer buffer even after compression, so a save makes several appends.
const FlatIndex& big_index() {
  static const FlatIndex index = [] {
    constexpr std::uint64_t kN = 6000, kDim = 256;
    std::mt19937 rng(4);
    FlatIndex built(kDim, DistanceMetric::DotProduct);
    std::vector<float> v(kDim);
    for (std::uint64_t i = 0; i < kN; ++i) {
      for (float& f : v) f = std::bit_cast<float>(static_cast<std::uint32_t>(rng()));
      built.insert(i, v);
    }
    return built;
  }();
  return index;
}

FlatIndex small_index(float base) {
  FlatIndex index(3, DistanceMetric::Euclidean);
  for (std::uint64_t i = 0; i < 10; ++i) {
    const float f = base + static_cast<float>(i);
    index.insert(i, std::vector<float>{f, f, -f}, Metadata{{"i", Value(i)}});
  }
  return index;
}

PersistConfig config(const fs::path& path, Compression c, FileSystem* file_system) {
  PersistConfig cfg(path);
  cfg.compression = c;
  cfg.file_system = file_system;
  return cfg;
}

void save(const FlatIndex& index, const PersistConfig& cfg) {
  auto db = PersistedIndex<FlatIndex>::open_with(index, cfg);
  db.save();
}

std::vector<FsOp> of_kind(const std::vector<FsOp>& log, OpKind kind) {
  std::vector<FsOp> out;
  std::copy_if(log.begin(), log.end(), std::back_inserter(out), [kind](const FsOp& op) { return op.kind == kind; });
  return out;
}

// Index in `log` of the first op of `kind` at or after `from` (log.size() if none).
std::size_t find_op(const std::vector<FsOp>& log, OpKind kind, std::size_t from = 0) {
  for (std::size_t i = from; i < log.size(); ++i) {
    if (log[i].kind == kind) return i;
  }
  return log.size();
}

struct NamedCompression {
  const char* name;
  Compression compression;
};
const std::vector<NamedCompression> kCompressions = {
    {"none", Compression::none()}, {"zstd", Compression::zstd(3)}, {"lz4", Compression::lz4()}};

// ---------------------------------------------------------------- a fault at every step

TEST(AtomicSave, FaultAtEveryStepKeepsPreviousFile) {
  for (const NamedCompression& c : kCompressions) {
    SCOPED_TRACE(c.name);
    test::TempDir dir;
    const fs::path target = dir / "v.iqdb";
    save(small_index(0), config(target, c.compression, nullptr));
    const std::vector<std::byte> before = test::read_file(target);

    // A clean save through the recorder: the steps to fail, and the file a
    // complete save leaves.
    FaultFs recorder;
    save(big_index(), config(target, c.compression, &recorder));
    const std::vector<FsOp> steps = recorder.log();
    const std::vector<std::byte> complete = test::read_file(target);
    ASSERT_GE(of_kind(steps, OpKind::Append).size(), 3u) << "want several appends (header + >1 buffer)";
    ASSERT_EQ(of_kind(steps, OpKind::WriteAt).size(), 1u);
    ASSERT_EQ(of_kind(steps, OpKind::SyncDir).size(), 1u);
    test::write_file(target, before);
    std::string plan;
    for (const FsOp& op : steps) plan += std::string(test::to_string(op.kind)) + " ";
    SCOPED_TRACE("clean save: " + plan);

    struct Mode {
      const char* name;
      int err;
      bool short_write;
    };
    for (const Mode mode :
         {Mode{"EIO", EIO, false}, Mode{"ENOSPC", ENOSPC, false}, Mode{"short write", ENOSPC, true}}) {
      for (std::size_t i = 0; i < steps.size(); ++i) {
        const OpKind kind = steps[i].kind;
        if (mode.short_write && kind != OpKind::Append && kind != OpKind::WriteAt) continue;
        SCOPED_TRACE(std::string(mode.name) + " at step " + std::to_string(i) + " (" +
                     std::string(test::to_string(kind)) + ")");
        FaultFs faulty;
        faulty.arm(mode.short_write ? Fault::short_write_then({}, i + 1) : Fault::fail({}, i + 1, mode.err));
        try {
          save(big_index(), config(target, c.compression, &faulty));
          ADD_FAILURE() << "save succeeded";
        } catch (const PersistError& e) {
          EXPECT_EQ(e.kind(), ErrorKind::Io) << e.what();
          EXPECT_EQ(e.sys_errno(), mode.err) << e.what();
          // Names the temporary file, the target, or (sync_dir) the directory.
          EXPECT_TRUE(e.path() == dir.path() || e.path().parent_path() == dir.path()) << e.what();
        }
        EXPECT_EQ(faulty.fired(), 1u);
        const std::vector<FsOp> log = faulty.log();
        ASSERT_GT(log.size(), i);
        EXPECT_EQ(log[i].kind, kind);  // the same step failed
        EXPECT_TRUE(log[i].injected);

        // No temp file left; the writer lock's file stays (a save holds the lock).
        EXPECT_EQ(dir.entries(), (std::vector<std::string>{"v.iqdb", "v.iqdb.lock"}));
        if (kind == OpKind::SyncDir) {
          // After the rename: the new snapshot is complete and in place.
          EXPECT_TRUE(test::read_file(target) == complete);
          EXPECT_TRUE(PersistedIndex<FlatIndex>::load(config(target, c.compression, nullptr)).index() == big_index());
          test::write_file(target, before);
        } else {
          EXPECT_TRUE(test::read_file(target) == before);
        }
      }
    }
  }
}

// When removing the temporary file fails too, the caller still sees the
// original error, and the target is untouched.
TEST(AtomicSave, CleanupFailureDoesNotMaskTheError) {
  test::TempDir dir;
  const fs::path target = dir / "v.iqdb";
  save(small_index(0), config(target, Compression::none(), nullptr));
  const std::vector<std::byte> before = test::read_file(target);

  FaultFs faulty;
  faulty.arm(Fault::fail({OpKind::Sync}, 1, EIO));
  faulty.arm(Fault::fail({OpKind::Remove}, 1, EACCES));
  try {
    save(small_index(100), config(target, Compression::none(), &faulty));
    ADD_FAILURE() << "save succeeded";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Io);
    EXPECT_EQ(e.sys_errno(), EIO) << e.what();
  }
  EXPECT_EQ(faulty.fired(), 2u);  // the remove was attempted
  EXPECT_TRUE(test::read_file(target) == before);
  // The stray temporary file is the one created, hidden.
  const auto creates = of_kind(faulty.log(), OpKind::Create);
  ASSERT_EQ(creates.size(), 1u);
  std::vector<std::string> want = {creates[0].path.filename().string(), "v.iqdb", "v.iqdb.lock"};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(dir.entries(), want);
}

// ---------------------------------------------------------------- the temporary file

TEST(AtomicSave, TempFileIsHiddenInTargetDirAndUnpredictable) {
  test::TempDir dir;
  const fs::path target = dir / "v.iqdb";
  FaultFs recorder;
  save(small_index(0), config(target, Compression::none(), &recorder));
  save(small_index(1), config(target, Compression::none(), &recorder));
  const std::vector<FsOp> log = recorder.log();
  const auto creates = of_kind(log, OpKind::Create);
  const auto renames = of_kind(log, OpKind::Rename);
  ASSERT_EQ(creates.size(), 2u);
  ASSERT_EQ(renames.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    const fs::path& temp = creates[i].path;
    EXPECT_EQ(temp.parent_path(), dir.path()) << temp;         // same directory: rename stays on one file system
    EXPECT_EQ(temp.filename().string().front(), '.') << temp;  // hidden
    EXPECT_NE(temp, target);
    EXPECT_EQ(renames[i].path, temp);
    EXPECT_EQ(renames[i].path2, target);
  }
  EXPECT_NE(creates[0].path, creates[1].path);  // a fresh random name each time
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"v.iqdb", "v.iqdb.lock"}));
}

// A file system whose "randomness" is fixed, so a test can plant a file at
// the temporary name: `plant` runs when the save draws the name, after it
// took the writer lock (which removes stale temporaries of this index).
class FixedRandomFs : public FaultFs {
 public:
  std::uint64_t random_u64() override {
    if (plant) std::exchange(plant, nullptr)();  // once
    return 0x0123456789abcdefULL;
  }
  std::function<void()> plant;
};

TEST(AtomicSave, ExistingFileAtTempNameIsNeverClobbered) {
  test::TempDir dir;
  test::TempDir elsewhere;
  const fs::path target = dir / "v.iqdb";
  FixedRandomFs fixed;
  save(small_index(0), config(target, Compression::none(), &fixed));
  const auto creates = of_kind(fixed.log(), OpKind::Create);
  ASSERT_EQ(creates.size(), 1u);
  const fs::path temp = creates[0].path;
  const std::vector<std::byte> saved = test::read_file(target);
  const std::vector<std::byte> precious = test::Bytes().str("precious bytes").data();

  struct Case {
    const char* name;
    bool symlink;  // plant a symbolic link to a victim file instead of a file
  };
  for (const Case& c : {Case{"regular file", false}, Case{"symlink", true}}) {
    SCOPED_TRACE(c.name);
    const fs::path victim = elsewhere / "victim";
    // Planted between the lock's clean-up and the create: what another
    // program could do at any time.
    fixed.plant = [&] {
      if (c.symlink) {
        test::write_file(victim, precious);
        fs::create_symlink(victim, temp);
      } else {
        test::write_file(temp, precious);
      }
    };
    try {
      save(small_index(7), config(target, Compression::none(), &fixed));
      ADD_FAILURE() << "save succeeded over an existing temporary name";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Io);
      EXPECT_EQ(e.sys_errno(), EEXIST) << e.what();
    }
    EXPECT_FALSE(fixed.plant) << "the save never drew a temporary name";
    EXPECT_TRUE(test::read_file(target) == saved);
    if (c.symlink) {
      EXPECT_TRUE(fs::is_symlink(temp));
      EXPECT_TRUE(test::read_file(victim) == precious);
    } else {
      EXPECT_TRUE(test::read_file(temp) == precious);
    }
    fs::remove(temp);
  }
}

// Saving to a path that is a symbolic link replaces the link with the new
// file; the file the link pointed to is never written.
TEST(AtomicSave, SymlinkedTargetIsReplacedNotWrittenThrough) {
  test::TempDir dir;
  test::TempDir elsewhere;
  for (const bool outside : {false, true}) {
    SCOPED_TRACE(outside ? "link to another directory" : "link in the same directory");
    const fs::path real = (outside ? elsewhere.path() : dir.path()) / "real.iqdb";
    const fs::path link = dir / "link.iqdb";
    save(small_index(0), config(real, Compression::zstd(3), nullptr));
    const std::vector<std::byte> real_before = test::read_file(real);
    fs::create_symlink(real, link);

    FaultFs recorder;
    const FlatIndex next = small_index(50);
    save(next, config(link, Compression::zstd(3), &recorder));

    EXPECT_FALSE(fs::is_symlink(link));
    EXPECT_TRUE(fs::is_regular_file(link));
    EXPECT_TRUE(test::read_file(real) == real_before);
    EXPECT_TRUE(PersistedIndex<FlatIndex>::load(config(link, Compression::none(), nullptr)).index() == next);
    for (const FsOp& op : of_kind(recorder.log(), OpKind::Create)) EXPECT_EQ(op.path.parent_path(), dir.path());
    fs::remove(link);
    fs::remove(real);
  }
}

// A FIFO at the path (or a device, or a socket: someone else's) is never
// replaced: an open_with with the WAL and a checkpoint renamed their
// snapshot over it (as root, an index at /dev/null replaced the system's
// /dev/null: an outside hunt), while a save without the WAL refused to open
// it. Every path refuses with Io (EINVAL) naming it, and the FIFO stays.
TEST(AtomicSave, ANonRegularFileAtThePathIsNeverReplaced) {
  test::TempDir dir;
  const fs::path fifo = dir / "fifo.iqdb";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const auto expect_refused = [&](const std::function<void()>& f, const char* what) {
    try {
      f();
      ADD_FAILURE() << what << ": replaced the FIFO";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Io) << what << ": " << e.what();
      EXPECT_EQ(e.path(), fifo) << what;
    }
    EXPECT_TRUE(fs::is_fifo(fifo)) << what;
  };
  PersistConfig wal(fifo);
  wal.wal_enabled = true;
  expect_refused([&] { (void)PersistedIndex<FlatIndex>::open_with(small_index(5), wal); }, "open_with, WAL");
  expect_refused([&] { PersistedIndex<FlatIndex>::open_with(small_index(5), PersistConfig(fifo)).save(); },
                 "save, no WAL");
  // A checkpoint of an index whose snapshot was replaced by a FIFO meanwhile.
  const fs::path path = dir / "db.iqdb";
  PersistConfig cfg(path);
  cfg.wal_enabled = true;
  auto db = PersistedIndex<FlatIndex>::open_with(small_index(5), cfg);
  fs::remove(path);
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  try {
    db.checkpoint();
    ADD_FAILURE() << "checkpoint replaced the FIFO";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.path(), path) << e.what();
  }
  EXPECT_TRUE(fs::is_fifo(path));
}

// ---------------------------------------------------------------- fsync policy

TEST(AtomicSave, FsyncNeverSyncsNothing) {
  test::TempDir dir;
  FaultFs recorder;
  PersistConfig cfg = config(dir / "v.iqdb", Compression::lz4(), &recorder);
  cfg.fsync_policy = FsyncPolicy::never();
  const FlatIndex index = small_index(3);
  save(index, cfg);
  EXPECT_EQ(recorder.count(OpKind::Sync), 0u);
  EXPECT_EQ(recorder.count(OpKind::DataSync), 0u);
  EXPECT_EQ(recorder.count(OpKind::SyncDir), 0u);
  EXPECT_EQ(recorder.count(OpKind::StartWriteback), 0u);
  // Still atomic: written to a temporary file and renamed.
  EXPECT_EQ(recorder.count(OpKind::Create), 1u);
  EXPECT_EQ(recorder.count(OpKind::Rename), 1u);
  EXPECT_TRUE(PersistedIndex<FlatIndex>::load(cfg).index() == index);
}

// Always (and Periodic: snapshots are fsynced before save() returns): every
// write, then fsync of the file, close, rename, fsync of the directory.
TEST(AtomicSave, DurablePoliciesSyncFileBeforeRenameAndDirAfter) {
  for (const FsyncPolicy policy : {FsyncPolicy::always(), FsyncPolicy::periodic(std::chrono::milliseconds(100))}) {
    SCOPED_TRACE(policy.mode() == FsyncPolicy::Mode::Always ? "always" : "periodic");
    test::TempDir dir;
    const fs::path target = dir / "v.iqdb";
    FaultFs recorder;
    PersistConfig cfg = config(target, Compression::zstd(3), &recorder);
    cfg.fsync_policy = policy;
    save(small_index(5), cfg);
    const std::vector<FsOp> log = recorder.log();

    const std::size_t create = find_op(log, OpKind::Create);
    ASSERT_LT(create, log.size());
    const fs::path temp = log[create].path;
    std::size_t last_write = create;
    for (std::size_t i = 0; i < log.size(); ++i) {
      if (log[i].kind == OpKind::Append || log[i].kind == OpKind::WriteAt) {
        EXPECT_EQ(log[i].path, temp);
        last_write = i;
      }
    }
    const std::size_t sync = find_op(log, OpKind::Sync, last_write);
    const std::size_t close = find_op(log, OpKind::Close, last_write);
    const std::size_t rename = find_op(log, OpKind::Rename);
    const std::size_t sync_dir = find_op(log, OpKind::SyncDir);
    ASSERT_LT(sync_dir, log.size());
    EXPECT_LT(last_write, sync);
    EXPECT_LT(sync, close);
    EXPECT_LT(close, rename);
    EXPECT_LT(rename, sync_dir);
    EXPECT_EQ(log[sync].path, temp);
    EXPECT_EQ(log[rename].path, temp);
    EXPECT_EQ(log[rename].path2, target);
    EXPECT_EQ(log[sync_dir].path, dir.path());
    EXPECT_EQ(recorder.count(OpKind::SyncDir), 1u);
  }
}

// ---------------------------------------------------------------- FaultFs itself

// The recorder's own contract, since other tests build on it.
TEST(FaultFs, RecordsCountsAndInjects) {
  test::TempDir dir;
  const fs::path alpha = dir / "alpha.dat", beta = dir / "beta.dat";
  const std::vector<std::byte> six = test::Bytes().str("abcdef").data();
  FaultFs f;
  auto a = f.create_exclusive(alpha);
  a->append(six);
  a->write_at(2, std::span(six).first(2));
  a->sync();
  a->close();
  // The 2nd append to a path containing "beta.dat" writes 2 bytes, then fails.
  f.arm(Fault::short_write_then({OpKind::Append, "beta.dat"}, 2, 2));
  auto a2 = f.open_append(alpha);
  a2->append(six);  // not counted: another path
  a2->close();
  f.rename(alpha, beta);
  auto b = f.open_append(beta);
  b->append(six);  // 1st match
  try {
    b->append(six);  // 2nd match
    ADD_FAILURE() << "no injected failure";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Io);
    EXPECT_EQ(e.sys_errno(), ENOSPC);
    EXPECT_EQ(e.path(), beta);
  }
  b->close();
  EXPECT_TRUE(test::read_file(beta) == test::Bytes().str("ababef").str("abcdef").str("abcdef").str("ab").data());
  f.arm(Fault::fail({OpKind::SyncDir}, 1, EROFS));
  EXPECT_THROW(f.sync_dir(dir.path()), PersistError);
  f.remove(beta);
  EXPECT_FALSE(fs::exists(beta));

  const std::vector<FsOp> log = f.log();
  const std::vector<OpKind> kinds = {OpKind::Create, OpKind::Append,     OpKind::WriteAt, OpKind::Sync,
                                     OpKind::Close,  OpKind::OpenAppend, OpKind::Append,  OpKind::Close,
                                     OpKind::Rename, OpKind::OpenAppend, OpKind::Append,  OpKind::Append,
                                     OpKind::Close,  OpKind::SyncDir,    OpKind::Remove};
  ASSERT_EQ(log.size(), kinds.size());
  for (std::size_t i = 0; i < kinds.size(); ++i) {
    EXPECT_EQ(log[i].kind, kinds[i]) << i;
    EXPECT_EQ(log[i].injected, i == 11 || i == 13) << i;
  }
  EXPECT_EQ(log[1].offset, 0u);
  EXPECT_EQ(log[1].length, 6u);
  EXPECT_EQ(log[2].offset, 2u);
  EXPECT_EQ(log[2].length, 2u);
  EXPECT_EQ(log[6].offset, 6u);  // open_append starts at the end of the 6-byte file
  EXPECT_EQ(log[8].path, alpha);
  EXPECT_EQ(log[8].path2, beta);
  EXPECT_EQ(log[10].offset, 12u);
  EXPECT_EQ(log[11].offset, 18u);
  EXPECT_EQ(log[13].path, dir.path());
  EXPECT_EQ(f.count(OpKind::Append), 4u);
  EXPECT_EQ(f.count(OpKind::Close), 3u);
  EXPECT_EQ(f.fired(), 2u);
  f.clear();
  EXPECT_TRUE(f.log().empty());
  EXPECT_EQ(f.fired(), 0u);
}

// A sticky fault keeps failing; a one-shot fault fails once; disarm() stops both.
TEST(FaultFs, StickyAndDisarm) {
  test::TempDir dir;
  FaultFs f;
  f.arm(Fault::fail({OpKind::Create}, 1, EIO));
  Fault sticky = Fault::fail({OpKind::Remove}, 2, EBUSY);
  sticky.sticky = true;
  f.arm(sticky);
  EXPECT_THROW(f.create_exclusive(dir / "x"), PersistError);
  EXPECT_FALSE(fs::exists(dir / "x"));  // an injected failure does not reach the file system
  f.create_exclusive(dir / "x")->close();
  f.remove(dir / "missing");
  for (int i = 0; i < 3; ++i) EXPECT_THROW(f.remove(dir / "x"), PersistError);
  EXPECT_TRUE(fs::exists(dir / "x"));
  f.disarm();
  f.remove(dir / "x");
  EXPECT_FALSE(fs::exists(dir / "x"));
  EXPECT_EQ(f.fired(), 4u);
}

}  // namespace
}  // namespace iqdb::persist
