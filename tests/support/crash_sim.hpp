// Crash simulation on the file-system seam, in the spirit of ALICE ("All File
// Systems Are Not Created Equal", OSDI '14) and CrashMonkey.
//
//   test::crash::SimFs fs({"/db"});                  // in memory, records every call
//   PersistConfig cfg("/db/v.iqdb");
//   cfg.file_system = &fs;
//   ... run a workload ...
//   test::crash::replay(fs.dirs(), fs.initial_image(), fs.trace(), {},
//       [&](std::size_t point, const DiskModel& disk) {
//         for (const CrashState& s : disk.crash_states({})) ... recover from s.image ...
//       });
//
// Three pieces:
//  - SimFs: an in-memory FileSystem implementing the whole seam with POSIX
//    semantics (O_EXCL create, rename replacing its target, flock-like
//    locks, ...). It records every call as an Op, in order (reads through an
//    open ReadableFile excepted: they change nothing). crash() /
//    crash_after() make every later call fail without recording anything, so
//    the code still running after a "crash" (destructors) cannot change what
//    the crash left behind.
//  - DiskModel: what a disk holds after a sequence of Ops: the live state
//    (what a process sees) and the durable state (what survives a power loss
//    for sure: file contents as of their last fsync / fdatasync, directory
//    entries as of their directory's last fsync), plus the operations that
//    happened since (pending). crash_states() builds the disk images a real
//    file system may leave after a power loss at this instant: the durable
//    state plus chosen subsets of the pending operations, some of them torn.
//    The model and its limits are in docs/reliability/crash-simulation.md.
//  - replay(): re-applies a recorded trace op by op and hands the DiskModel
//    to a visitor at every crash point.
//
// Directories are fixed when the SimFs is made (no mkdir / rmdir in the seam)
// and always exist; files live in them, by full path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "iqdb/persist/file_system.hpp"

namespace iqdb::persist::test::crash {

// The bytes of a file. Trailing zeros are not stored (a preallocated,
// zero-filled log of 1 MiB costs only what was written into it), and the bytes
// are shared between copies until one of them changes (copy on write), so
// that building thousands of disk images stays cheap.
class Content {
 public:
  Content() = default;
  explicit Content(std::span<const std::byte> bytes) { write(0, bytes); }

  std::uint64_t size() const noexcept { return size_; }
  // pwrite: bytes between the old end and `offset` read as zeros.
  void write(std::uint64_t offset, std::span<const std::byte> data);
  // ftruncate: shrinks, or grows with zeros.
  void truncate(std::uint64_t size);
  // Grow to `size` with zeros (no-op when already as long).
  void extend(std::uint64_t size) {
    if (size > size_) truncate(size);
  }
  // pread: up to dst.size() bytes at `offset`; the count (less only at the end).
  std::size_t read(std::uint64_t offset, std::span<std::byte> dst) const;
  std::vector<std::byte> bytes() const;
  // The stored bytes: bytes() without its trailing zeros.
  std::span<const std::byte> stored() const noexcept {
    return data_ ? std::span<const std::byte>(*data_) : std::span<const std::byte>();
  }
  std::uint64_t hash() const;

  friend bool operator==(const Content& a, const Content& b);

 private:
  std::vector<std::byte>& mutable_data();

  std::shared_ptr<std::vector<std::byte>> data_;  // no trailing zeros; may be null
  std::uint64_t size_ = 0;
  mutable std::optional<std::uint64_t> hash_;
};

// The regular files on a disk, by full path.
using Image = std::map<std::filesystem::path, Content>;
std::uint64_t image_hash(const Image& image);
// "v.iqdb (2120 bytes), v.iqdb.wal (1048576 bytes)".
std::string describe(const Image& image);

enum class OpKind {
  Create,          // create_exclusive, or lock() creating its file
  OpenAppend,
  OpenRead,
  Write,           // append or write_at
  Sync,            // fsync
  DataSync,        // fdatasync
  Truncate,
  StartWriteback,  // a hint: changes nothing
  Close,
  Rename,
  Remove,
  SyncDir,
  Lock,
  Exists,
  ListDir,
};
std::string_view to_string(OpKind kind) noexcept;

// One recorded call.
struct Op {
  OpKind kind = OpKind::Create;
  std::filesystem::path path;   // Rename: the source; SyncDir / ListDir: the directory
  std::filesystem::path path2;  // Rename: the target
  // The inode: of the file written / synced / truncated / closed / locked; of
  // the file created; of the file renamed; of the file removed (0 when the
  // name did not exist).
  std::uint64_t ino = 0;
  std::uint64_t offset = 0;    // Write: where; Truncate: the new size
  std::uint64_t old_size = 0;  // Write / Truncate: the file's size before
  std::shared_ptr<const std::vector<std::byte>> data;  // Write: the bytes

  std::uint64_t length() const noexcept { return data ? data->size() : 0; }
  // Whether a crash after this op may leave other states than one before it.
  bool changes_disk() const noexcept;
  // "write v.iqdb.wal @1234 +96".
  std::string describe() const;
};

// Which states crash_states() builds (see docs/reliability/crash-simulation.md).
struct StateOptions {
  // The unit in which file data reaches the disk: a sector is written whole
  // or not at all, and holds the file's content as of one instant.
  std::uint64_t sector = 512;
  // Torn versions of a pending write that spans sector boundaries: a
  // sector-aligned prefix of it persisted. 1: the first boundary; 2: first
  // and last; 3 or more: also boundaries evenly spread in between.
  std::size_t torn_cuts = 2;
  // A write that extended the file persisted as a longer file of zeros
  // (size updated, data not), alone or after a torn prefix.
  bool zero_extension = true;
  // Every pending op lost alone, the others persisted (for a write: the
  // sectors no later persisted op touched keep their older content).
  bool single_drops = true;
  // Per file / directory: each prefix of its pending ops (and each single
  // one dropped), the other files' pending ops all lost or all persisted.
  bool per_component = true;
};

// One disk a crash may leave, and how it was made.
struct CrashState {
  std::string how;
  Image image;
};

class DiskModel {
 public:
  explicit DiskModel(std::set<std::filesystem::path> dirs);
  // Start from `image` (every file durable). Inodes are numbered 1, 2, ... in
  // path order, so two models loaded from one image agree on them.
  DiskModel(std::set<std::filesystem::path> dirs, const Image& image);

  // Apply one recorded op (one a SimFs accepted, so it is valid here).
  void apply(const Op& op);
  std::uint64_t allocate_ino() noexcept { return next_ino_++; }

  const std::set<std::filesystem::path>& dirs() const noexcept { return dir_names_; }
  bool has_dir(const std::filesystem::path& dir) const { return dirs_.count(dir) != 0; }
  // Live state (what a process sees).
  std::optional<std::uint64_t> lookup(const std::filesystem::path& path) const;
  const Content& content(std::uint64_t ino) const;
  std::vector<std::string> list(const std::filesystem::path& dir) const;
  Image live_image() const;
  // Nothing pending persisted.
  Image durable_image() const;
  // Operations since the last fsync of their file / directory.
  std::size_t pending_ops() const;

  // The disks a power loss now may leave, distinct (by content), the first
  // two always "none" (the durable image) and "all" (the live image).
  std::vector<CrashState> crash_states(const StateOptions& options) const;

 private:
  struct Pending {
    std::size_t seq;
    Op op;
  };
  struct Inode {
    Content live;
    Content durable;
    std::vector<Pending> pending;
  };
  struct Dir {
    std::map<std::string, std::uint64_t> live;
    std::map<std::string, std::uint64_t> durable;
    std::vector<Pending> pending;
  };
  struct Unit;
  struct Choice;
  Image build(const std::vector<Unit>& units, const std::vector<Choice>& choices, std::uint64_t sector) const;
  Dir& dir_of(const std::filesystem::path& p);

  std::set<std::filesystem::path> dir_names_;
  std::map<std::filesystem::path, Dir> dirs_;
  std::map<std::uint64_t, Inode> inodes_;
  std::uint64_t next_ino_ = 1;
  std::size_t seq_ = 0;
};

// The in-memory file system. Thread-safe (one mutex). Files it returns refer
// to it and must not outlive it.
class SimFs : public FileSystem {
 public:
  struct Options {
    std::uint64_t seed = 0x5eed;  // random_u64() is a function of this alone
    bool record = true;           // keep the trace (recovery runs need not)
  };
  explicit SimFs(std::set<std::filesystem::path> dirs);
  SimFs(std::set<std::filesystem::path> dirs, Options options);
  // Start from `image`, every file durable.
  SimFs(std::set<std::filesystem::path> dirs, const Image& image, Options options);
  ~SimFs() override;

  // Calls recorded so far, in order.
  std::size_t op_count() const;
  std::vector<Op> trace() const;
  const Image& initial_image() const noexcept { return initial_; }
  const std::set<std::filesystem::path>& dirs() const noexcept { return dirs_; }

  // From now on every call (on the file system or on a file it returned)
  // fails with PersistError(Io, EIO) and changes nothing.
  void crash();
  // crash() once `n` ops have been recorded (the next call fails).
  void crash_after(std::size_t n);
  bool crashed() const;

  Image live_image() const;
  Image durable_image() const;
  // The model, for crash_states() at this instant (hold no other call).
  std::vector<CrashState> crash_states(const StateOptions& options) const;

  std::unique_ptr<WritableFile> create_exclusive(const std::filesystem::path& p) override;
  std::unique_ptr<WritableFile> open_append(const std::filesystem::path& p) override;
  std::unique_ptr<ReadableFile> open_read(const std::filesystem::path& p) override;
  void rename(const std::filesystem::path& from, const std::filesystem::path& to) override;
  void remove(const std::filesystem::path& p) override;
  void sync_dir(const std::filesystem::path& dir) override;
  bool exists(const std::filesystem::path& p) override;
  std::vector<std::string> list_dir(const std::filesystem::path& dir) override;
  std::unique_ptr<FileLock> lock(const std::filesystem::path& p) override;
  std::uint64_t random_u64() override;

 private:
  class File;
  class Reader;
  class Lock;
  friend class File;
  friend class Reader;
  friend class Lock;

  // With mu_ held: fail if crashed (or the crash point is reached).
  void check_alive(const std::filesystem::path& p, const char* what);
  void record(Op op);
  std::filesystem::path normal(const std::filesystem::path& p) const;

  std::set<std::filesystem::path> dirs_;
  Options options_;
  Image initial_;
  mutable std::mutex mu_;
  DiskModel disk_;
  std::vector<Op> trace_;
  std::size_t ops_ = 0;
  std::optional<std::size_t> crash_at_;
  bool crashed_ = false;
  std::set<std::uint64_t> locked_;
  std::uint64_t rng_;
};

// Re-apply `trace` from `initial` and call visit(point, disk) at every crash
// point: point p means "after the first p ops" (0 = before any). Points after
// ops that do not change the disk are skipped (the previous point stands for
// them).
void replay(const std::set<std::filesystem::path>& dirs, const Image& initial, const std::vector<Op>& trace,
            const std::function<void(std::size_t point, const DiskModel& disk)>& visit);

}  // namespace iqdb::persist::test::crash
