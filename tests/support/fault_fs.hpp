// FaultFs: a recording, fault-injecting file system for tests.
//
// Wraps any FileSystem (the real POSIX one by default) through the public
// seam, records every operation in order, and fails chosen operations:
//
//   test::FaultFs fs;                                   // over the POSIX file system
//   PersistConfig cfg(dir / "v.iqdb");
//   cfg.file_system = &fs;
//   fs.arm(test::Fault::fail({test::OpKind::Sync}, 1, EIO));   // the first fsync fails
//   EXPECT_THROW(db.save(), PersistError);
//   EXPECT_EQ(fs.fired(), 1u);
//   for (const test::FsOp& op : fs.log()) ...
//
// What is recorded (one FsOp per call, in call order, when the call is
// attempted, i.e. before it is forwarded; calls that fail, injected or real,
// are recorded too):
//   Create, OpenAppend, OpenRead, Rename, Remove, SyncDir, Lock   file-system calls
//   Append, WriteAt, Sync, DataSync, Truncate, StartWriteback, Close
//                                                    calls on a WritableFile it returned
// exists(), list_dir(), random_u64(), reads and the best-effort close in a
// file's destructor are not recorded and never fail by injection (subclass
// FaultFs to change them, e.g. a fixed random_u64()).
//
// An injected failure throws PersistError::io(path, "<op> (injected)", errno)
// without forwarding the call (nothing happens on the target), except:
//   - Close: the target file is closed first, then the error is thrown (as
//     close(2) releases the descriptor even when it reports an error);
//   - a short write (Append / WriteAt): a prefix of the bytes is written to
//     the target, then the error is thrown (errno ENOSPC unless told otherwise).
//
// limit_size() gives files a disk of a fixed size instead: a write that
// would end past it writes what fits, then fails (ENOSPC, or EDQUOT for a
// quota), however many writes came before.
//
// Thread safety: all methods may be called from any thread; the log and the
// armed faults are guarded by one mutex. A WritableFile returned by FaultFs
// refers to it and must not outlive it.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "iqdb/persist/file_system.hpp"

namespace iqdb::persist::test {

enum class OpKind {
  Create,
  OpenAppend,
  OpenRead,
  Append,
  WriteAt,
  Sync,
  DataSync,
  Truncate,
  StartWriteback,
  Close,
  Rename,
  Remove,
  SyncDir,
  Lock,
};

// "create", "open_append", ..., "lock".
std::string_view to_string(OpKind kind) noexcept;

// One recorded operation.
struct FsOp {
  OpKind kind = OpKind::Create;
  std::filesystem::path path;   // the file (Rename: the source; SyncDir: the directory)
  std::filesystem::path path2;  // Rename: the target; empty otherwise
  // Append: the file position written at (the file's size when opened plus
  //   what was written through this handle since); WriteAt / StartWriteback:
  //   the offset given; Truncate: the new size; 0 otherwise.
  std::uint64_t offset = 0;
  // Append / WriteAt: bytes asked to write; StartWriteback: the length; 0 otherwise.
  std::uint64_t length = 0;
  // This call was failed by an armed Fault.
  bool injected = false;
};

// Which operations a Fault counts. Empty fields match anything.
struct OpMatch {
  OpMatch() = default;
  OpMatch(std::optional<OpKind> k, std::string path = {})  // NOLINT: implicit, so {OpKind::Sync} reads well
      : kind(k), path_contains(std::move(path)) {}

  std::optional<OpKind> kind;
  // A substring of the op's path (or, for Rename, of either path).
  std::string path_contains;

  bool matches(const FsOp& op) const;
};

// A fault to inject: the nth operation (1-based) matching `match`, counted
// from when the fault is armed, fails.
struct Fault {
  OpMatch match;
  std::uint64_t nth = 1;
  int err = EIO;
  // Also fail every matching operation after the nth (a disk that stays broken).
  bool sticky = false;
  // Append / WriteAt only: write this many leading bytes (clamped to the
  // request; nullopt = half of it, rounded down) before failing with `err`.
  // Ignored for other kinds, which simply fail.
  bool short_write = false;
  std::optional<std::size_t> short_keep;

  static Fault fail(OpMatch m, std::uint64_t nth, int err) {
    Fault f;
    f.match = std::move(m);
    f.nth = nth;
    f.err = err;
    return f;
  }
  static Fault short_write_then(OpMatch m, std::uint64_t nth, std::optional<std::size_t> keep = std::nullopt,
                                int err = ENOSPC) {
    Fault f = fail(std::move(m), nth, err);
    f.short_write = true;
    f.short_keep = keep;
    return f;
  }
};

class FaultFs : public FileSystemWrapper {
 public:
  explicit FaultFs(FileSystem& target = default_file_system()) : FileSystemWrapper(target) {}

  // Arm a fault (several may be armed; each counts its own matches).
  void arm(Fault fault);
  // Room for `bytes` in each file whose path contains `path_contains`
  // (each counted alone, from offset 0): an Append or WriteAt that would
  // end past it writes the bytes that fit, then fails with `err`, recorded
  // as injected (WritableFile::allocate_zeros writes through write_at
  // here, so growth is limited too; truncate is not). An armed Fault that
  // fails the same operation comes first. One limit at a time: another
  // call replaces it; disarm() lifts it.
  void limit_size(std::string path_contains, std::uint64_t bytes, int err = ENOSPC);
  // Remove every armed fault, and the limit.
  void disarm();
  // How many operations have been failed by injection since construction or clear().
  std::size_t fired() const;

  // A copy of the operations recorded so far, in order.
  std::vector<FsOp> log() const;
  // Number of recorded operations of `kind`.
  std::size_t count(OpKind kind) const;
  // Forget the log and the fired count (armed faults stay armed).
  void clear();
  // Called with each operation an armed fault fails, on the calling thread,
  // right before the injected error is thrown (a short write: once its
  // prefix is written): a test's look at the state the failure meets, e.g.
  // a frame written and not yet synced. The hook may throw instead (say,
  // something that is not a PersistError, as a FileSystem of a program's
  // may). No lock of FaultFs is held during the call.
  void on_injected(std::function<void(const FsOp&)> hook);

  // FileSystem
  std::unique_ptr<WritableFile> create_exclusive(const std::filesystem::path& p) override;
  std::unique_ptr<WritableFile> open_append(const std::filesystem::path& p) override;
  std::unique_ptr<ReadableFile> open_read(const std::filesystem::path& p) override;
  void rename(const std::filesystem::path& from, const std::filesystem::path& to) override;
  void remove(const std::filesystem::path& p) override;
  void sync_dir(const std::filesystem::path& d) override;
  std::unique_ptr<FileLock> lock(const std::filesystem::path& p) override;

 private:
  class File;
  friend class File;

  // What to do with an operation once recorded.
  struct Verdict {
    bool fail = false;
    int err = 0;
    std::optional<std::size_t> keep;  // short write: bytes to write before failing
  };
  Verdict record(FsOp op);
  // Record `op`; throw the injected error unless it is a short write.
  Verdict record_or_throw(FsOp op, std::string_view what);
  // Call the on_injected hook, if any, with an op about to fail.
  void run_hook(const FsOp& op);

  struct Armed {
    Fault fault;
    std::uint64_t seen = 0;
  };
  struct Limit {
    std::string path_contains;
    std::uint64_t bytes = 0;
    int err = ENOSPC;
  };
  mutable std::mutex mu_;
  std::vector<FsOp> log_;
  std::vector<Armed> armed_;
  std::optional<Limit> limit_;
  std::size_t fired_ = 0;
  std::function<void(const FsOp&)> hook_;
};

}  // namespace iqdb::persist::test
