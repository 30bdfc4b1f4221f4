// The POSIX implementation of the file-system seam. Every system call of the
// library is made here and nowhere else.
#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <mutex>
#include <random>
#include <utility>
#include <vector>

#include "iqdb/persist/detail/process_bound.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/file_system.hpp"
#include "fs/file_mapping.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;

// An fd closed when the scope ends, unless released to its owner: a failure
// (out of memory) between opening a file and handing it over must not leak
// it, nor keep a lock's flock held.
class FdGuard {
 public:
  explicit FdGuard(int fd) noexcept : fd_(fd) {}
  ~FdGuard() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  int get() const noexcept { return fd_; }
  int release() noexcept { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// Retry on EINTR.
template <class F>
auto retry(F f) {
  for (;;) {
    auto r = f();
    if (r != -1 || errno != EINTR) return r;
  }
}

// Whether the file system holding `fd` writes a store into an allocated
// block in place, always: then a store into a shared mapping of space
// allocated ahead (the log's padding) never needs space of its own, and
// never fails. ext2/3/4 and tmpfs do. A copy-on-write file system (btrfs,
// ZFS, bcachefs) needs new space for every writeback of a page, and a full
// disk then ends the process with SIGBUS at a store into a page written
// back before. XFS is one as soon as a block is shared (reflink, on by
// default: `cp` of the live log, coreutils 9, shares its blocks), and a
// store into a page of a shut-down XFS (its own answer to a metadata I/O
// error) is a SIGBUS too: both found by an outside hunt, every run, under
// Periodic and Never. Network and FUSE file systems may fail a writeback
// the same way. On those (and any file system not named here) the log is
// written with plain writes, whose failure is an error.
bool overwrites_in_place(int fd) noexcept {
  struct statfs s {};
  if (::fstatfs(fd, &s) != 0) return false;
  switch (static_cast<unsigned long>(s.f_type)) {
    case EXT4_SUPER_MAGIC:  // (also ext2 and ext3's)
    case TMPFS_MAGIC:
      return true;
    default:
      return false;
  }
}

// flock(fd, op) (LOCK_NB), recording fd among the descriptors a child of
// fork() closes at once when it succeeds (LockDescriptors, below), with no
// fork in between; returns flock's result (errno set).
int flock_recorded(int fd, int op);
// Closes fd, which flock_recorded recorded, and forgets it, with no fork in
// between; returns close()'s result (errno set).
int close_recorded(int fd) noexcept;

class PosixWritableFile final : public WritableFile {
 public:
  PosixWritableFile(fs::path p, int fd, std::uint64_t pos, bool mappable = false)
      : path_(std::move(p)), fd_(fd), pos_(pos), mappable_(mappable && overwrites_in_place(fd)) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) (void)(locked_ ? close_recorded(fd_) : ::close(fd_));
  }

  void append(std::span<const std::byte> data) override {
    write_at(pos_, data);
  }

  void write_at(std::uint64_t offset, std::span<const std::byte> data) override {
    const std::byte* p = data.data();
    std::size_t left = data.size();
    std::uint64_t off = offset;
    while (left > 0) {
      // Linux transfers at most 0x7ffff000 bytes per call.
      const std::size_t chunk = left < (std::size_t{1} << 30) ? left : (std::size_t{1} << 30);
      const ssize_t n = retry([&] { return ::pwrite(fd_, p, chunk, static_cast<off_t>(off)); });
      if (n < 0) throw PersistError::io(path_, "write", errno);
      if (n == 0) throw PersistError::io(path_, "write", EIO);
      p += n;
      off += static_cast<std::uint64_t>(n);
      left -= static_cast<std::size_t>(n);
    }
    if (off > pos_) pos_ = off;
  }

  void sync() override {
    if (retry([&] { return ::fsync(fd_); }) != 0) throw PersistError::io(path_, "fsync", errno);
  }
  void datasync() override {
    if (retry([&] { return ::fdatasync(fd_); }) != 0) throw PersistError::io(path_, "fdatasync", errno);
  }
  void truncate(std::uint64_t size) override {
    if (retry([&] { return ::ftruncate(fd_, static_cast<off_t>(size)); }) != 0)
      throw PersistError::io(path_, "ftruncate", errno);
    if (pos_ > size) pos_ = size;
  }
  void start_writeback(std::uint64_t offset, std::uint64_t len) override {
    // Advisory only; errors surface at the fsync that follows.
    (void)::sync_file_range(fd_, static_cast<off_t>(offset), static_cast<off_t>(len), SYNC_FILE_RANGE_WRITE);
  }
  void allocate_zeros(std::uint64_t offset, std::uint64_t len) override {
    if (len == 0) return;
    if (!no_fallocate_) {
      const int r = retry([&] {
        return ::fallocate(fd_, FALLOC_FL_ZERO_RANGE, static_cast<off_t>(offset), static_cast<off_t>(len));
      });
      if (r == 0) {
        if (offset + len > pos_) pos_ = offset + len;
        return;
      }
      if (errno != EOPNOTSUPP && errno != ENOSYS) throw PersistError::io(path_, "fallocate", errno);
      no_fallocate_ = true;  // not on this file system: write the zeros
    }
    WritableFile::allocate_zeros(offset, len);
  }
  void drop_cached(std::uint64_t offset, std::uint64_t len) noexcept override {
    (void)::posix_fadvise(fd_, static_cast<off_t>(offset), static_cast<off_t>(len), POSIX_FADV_DONTNEED);
  }
  // The lock's descriptor is recorded: a child of fork() closes its copy
  // at once, so that one that outlives this file's close() does not keep
  // the lock (a writer's shared lock on its log would otherwise refuse the
  // next writer, Locked, until the child exits).
  bool try_lock(bool exclusive) override {
    if (retry([&] { return flock_recorded(fd_, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB); }) == 0) {
      locked_ = true;
      return true;
    }
    if (errno == EWOULDBLOCK) return false;
    throw PersistError::io(path_, "flock", errno);
  }
  void close() override {
    const int fd = fd_;
    fd_ = -1;
    if (fd < 0) return;
    if ((locked_ ? close_recorded(fd) : ::close(fd)) != 0 && errno != EINTR) {
      throw PersistError::io(path_, "close", errno);
    }
  }
  const fs::path& path() const noexcept override { return path_; }

  std::unique_ptr<WriteMapping> map_for_write(std::uint64_t offset, std::size_t length) override {
    if (!mappable_ || length == 0 || offset % 4096 != 0) return nullptr;
    void* p = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, static_cast<off_t>(offset));
    if (p == MAP_FAILED) return nullptr;
    auto m = std::make_unique<Mapping>(static_cast<std::byte*>(p), length);
    // Fault the pages in now, in one call, and find out about a page that
    // cannot be read back here (an error) rather than at a store (SIGBUS).
    // EINVAL: a kernel before 5.14, which lacks it; the pages then fault in
    // at the first store.
    if (::madvise(p, length, MADV_POPULATE_WRITE) != 0 && errno != EINVAL) return nullptr;
    return m;
  }

 private:
  class Mapping final : public WriteMapping {
   public:
    Mapping(std::byte* p, std::size_t n) noexcept : p_(p), n_(n) {}
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping() override { ::munmap(p_, n_); }
    std::span<std::byte> bytes() noexcept override { return {p_, n_}; }

   private:
    std::byte* p_;
    std::size_t n_;
  };

  fs::path path_;
  int fd_;
  bool locked_ = false;  // fd_ is recorded (flock_recorded)
  std::uint64_t pos_;
  // Opened read-write, which a shared writable mapping needs, on a file
  // system that overwrites in place (overwrites_in_place).
  bool mappable_;
  bool no_fallocate_ = false;  // allocate_zeros found fallocate unsupported here
};

class PosixReadableFile final : public ReadableFile {
 public:
  PosixReadableFile(fs::path p, int fd, std::uint64_t size) : path_(std::move(p)), fd_(fd), size_(size) {}
  ~PosixReadableFile() override { ::close(fd_); }

  std::size_t read_at(std::uint64_t offset, std::span<std::byte> dst) const override {
    std::size_t done = 0;
    while (done < dst.size()) {
      const std::size_t want = std::min<std::size_t>(dst.size() - done, std::size_t{1} << 30);
      const ssize_t n =
          retry([&] { return ::pread(fd_, dst.data() + done, want, static_cast<off_t>(offset + done)); });
      if (n < 0) throw PersistError::io(path_, "read", errno);
      if (n == 0) break;
      done += static_cast<std::size_t>(n);
    }
    return done;
  }
  std::uint64_t size() const noexcept override { return size_; }
  std::uint64_t current_size() const override {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) throw PersistError::io(path_, "fstat", errno);
    return static_cast<std::uint64_t>(st.st_size);
  }
  const fs::path& path() const noexcept override { return path_; }
  MappedBlock map(std::uint64_t offset, std::size_t size, std::size_t reserve) const override {
    return detail::map_file_block(fd_, path_, offset, size, reserve);
  }

 private:
  fs::path path_;
  int fd_;
  std::uint64_t size_;
};

// The descriptors of the locks this process holds. A flock belongs to the
// open file description, which a child of fork() shares: a child that
// outlived its parent's close() would keep the index locked, and no later
// writer could open it until the child exited. So a child closes its copies
// at once, in a pthread_atfork handler (it never holds its parent's lock;
// detail/process_bound.hpp). A fork waits for a lock() in progress (which
// holds the mutex from before it opens the file until the descriptor is
// recorded or closed), so no descriptor slips through unrecorded.
class LockDescriptors {
 public:
  static LockDescriptors& instance() {
    static LockDescriptors* const d = [] {
      auto* r = new LockDescriptors;  // never destroyed: a fork may follow the exit of main()
      (void)::pthread_atfork(&prepare, &parent, &child);
      return r;
    }();
    return *d;
  }
  // Held by lock() around opening and recording (so a lock file on a hung
  // mount holds up fork() meanwhile); room for one more descriptor is made
  // first, so that record() cannot fail.
  std::unique_lock<std::mutex> hold_for_one_more() {
    std::unique_lock g(mu_);
    if (fds_.size() == fds_.capacity()) fds_.reserve(std::max<std::size_t>(8, 2 * fds_.size()));
    return g;
  }
  void record(int fd) noexcept {  // (hold_for_one_more() held)
    if (std::find(fds_.begin(), fds_.end(), fd) == fds_.end()) fds_.push_back(fd);
  }
  // Closes fd, recorded or not, forgetting it; close()'s result.
  int close_and_forget(int fd) noexcept {
    const std::lock_guard g(mu_);
    const auto it = std::find(fds_.begin(), fds_.end(), fd);
    if (it != fds_.end()) fds_.erase(it);
    return ::close(fd);
  }
  // Closes fd, which record() recorded.
  void close(int fd) noexcept {
    const std::lock_guard g(mu_);
    const auto it = std::find(fds_.begin(), fds_.end(), fd);
    if (it != fds_.end()) fds_.erase(it);
    ::close(fd);
  }

 private:
  static void prepare() noexcept { instance().mu_.lock(); }  // no lock() or close() runs across the fork
  static void parent() noexcept { instance().mu_.unlock(); }
  static void child() noexcept {
    LockDescriptors& d = instance();
    for (const int fd : d.fds_) ::close(fd);  // the parent's flock stays: its descriptor still refers to it
    d.fds_.clear();
    d.mu_.unlock();
  }
  std::mutex mu_;
  std::vector<int> fds_;
};
int flock_recorded(int fd, int op) {
  const std::unique_lock g = LockDescriptors::instance().hold_for_one_more();
  const int r = ::flock(fd, op);
  if (r == 0) LockDescriptors::instance().record(fd);
  return r;
}

int close_recorded(int fd) noexcept { return LockDescriptors::instance().close_and_forget(fd); }

// Made (and its handlers installed) when the library is loaded, not at the
// first lock(): a fork while another thread is inside the first use of a
// function-local static would leave the child waiting for ever on the
// static's guard, held by a thread that is not in the child.
[[maybe_unused]] LockDescriptors& g_lock_descriptors_at_load = LockDescriptors::instance();

// Whether the open file `fd` is the file at `p` now (same device and
// inode); false when nothing is there (ENOENT, ENOTDIR). Any other failure
// to look (EACCES: the directory made unreadable; EIO, ENOMEM) says nothing
// about the lock and is thrown as Io (it used to read as "replaced": Fenced).
bool is_file_at(int fd, const fs::path& p) {
  struct stat open_file {};
  struct stat at_path {};
  if (::fstat(fd, &open_file) != 0) throw PersistError::io(p, "fstat lock file", errno);
  if (::stat(p.c_str(), &at_path) != 0) {
    const int e = errno;
    if (e == ENOENT || e == ENOTDIR) return false;
    throw PersistError::io(p, "stat lock file", e);
  }
  return open_file.st_dev == at_path.st_dev && open_file.st_ino == at_path.st_ino;
}

class PosixFileLock final : public FileLock {
 public:
  PosixFileLock(int fd, fs::path path) : fd_(fd), path_(std::move(path)) {}
  ~PosixFileLock() override {
    // In a child of fork(), fd was closed at the fork (and its number may
    // be another file's by now).
    if (!born_.inherited()) LockDescriptors::instance().close(fd_);  // closing releases the flock
  }
  void check() const override {
    if (born_.inherited() || is_file_at(fd_, path_)) return;
    throw PersistError::at(ErrorKind::Fenced, path_,
                           "the lock file at this path is no longer the one this writer locked (removed, replaced, "
                           "or its directory moved): another writer may hold the lock here now; reopen the index");
  }

 private:
  int fd_;
  fs::path path_;
  detail::ProcessBound born_;
};

// The size of the open file fd, which must be a regular file; otherwise the
// error is thrown (a directory: `dir_errno`, anything else: EINVAL).
std::uint64_t regular_file_size(int fd, const fs::path& p, int dir_errno) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw PersistError::io(p, "fstat", errno);
  if (!S_ISREG(st.st_mode)) {
    throw PersistError::io(p, "open (not a regular file)", S_ISDIR(st.st_mode) ? dir_errno : EINVAL);
  }
  return static_cast<std::uint64_t>(st.st_size);
}

class PosixFileSystem final : public FileSystem {
 public:
  std::unique_ptr<WritableFile> create_exclusive(const fs::path& p) override {
    FdGuard fd(retry([&] { return ::open(p.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644); }));
    if (fd.get() < 0) throw PersistError::io(p, "create", errno);
    try {
      auto f = std::make_unique<PosixWritableFile>(p, fd.get(), 0);
      fd.release();
      return f;
    } catch (...) {
      ::unlink(p.c_str());  // created here, and nobody will know to remove it
      throw;
    }
  }

  std::unique_ptr<WritableFile> open_append(const fs::path& p) override {
    // Read-write: map_for_write needs it.
    FdGuard fd(retry([&] { return ::open(p.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC); }));
    if (fd.get() < 0) throw PersistError::io(p, "open", errno);
    const std::uint64_t size = regular_file_size(fd.get(), p, /*dir_errno=*/EINVAL);
    auto f = std::make_unique<PosixWritableFile>(p, fd.get(), size, /*mappable=*/true);
    fd.release();
    return f;
  }

  std::unique_ptr<ReadableFile> open_read(const fs::path& p) override {
    // O_NONBLOCK: opening a FIFO for reading would wait for a writer; it is
    // refused below as any file that is not regular (and the flag, which
    // means nothing to a regular file, is cleared).
    FdGuard fd(retry([&] { return ::open(p.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC); }));
    if (fd.get() < 0) throw PersistError::io(p, "open", errno);
    const std::uint64_t size = regular_file_size(fd.get(), p, /*dir_errno=*/EISDIR);
    const int flags = ::fcntl(fd.get(), F_GETFL);
    if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK) != 0) throw PersistError::io(p, "fcntl", errno);
    (void)::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
    auto f = std::make_unique<PosixReadableFile>(p, fd.get(), size);
    fd.release();
    return f;
  }

  // Every file this library replaces is a regular file (a symbolic link is
  // replaced, not written through): a device, FIFO or socket at `to` is
  // someone else's, and renaming over it would delete it (as root, an
  // index at /dev/null with the WAL replaced the system's /dev/null: an
  // outside hunt). Refused as a save without the WAL refuses to open one.
  void rename(const fs::path& from, const fs::path& to) override {
    struct stat st {};
    if (::lstat(to.c_str(), &st) == 0 && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode) && !S_ISDIR(st.st_mode)) {
      throw PersistError::io(to, "rename from " + from.string() + " (the target is not a regular file)", EINVAL);
    }
    if (::rename(from.c_str(), to.c_str()) != 0) throw PersistError::io(to, "rename from " + from.string(), errno);
  }

  void remove(const fs::path& p) override {
    if (::unlink(p.c_str()) != 0 && errno != ENOENT) throw PersistError::io(p, "unlink", errno);
  }

  void sync_dir(const fs::path& dir) override {
    const fs::path d = dir.empty() ? fs::path(".") : dir;
    const int fd = retry([&] { return ::open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); });
    if (fd < 0) throw PersistError::io(d, "open directory", errno);
    const int r = retry([&] { return ::fsync(fd); });
    const int e = errno;
    ::close(fd);
    if (r != 0) throw PersistError::io(d, "fsync directory", e);
  }

  bool exists(const fs::path& p) override {
    struct stat st {};
    if (::lstat(p.c_str(), &st) == 0) return true;
    if (errno == ENOENT || errno == ENOTDIR) return false;
    throw PersistError::io(p, "stat", errno);
  }

  std::vector<std::string> list_dir(const fs::path& dir) override {
    const fs::path d = dir.empty() ? fs::path(".") : dir;
    // (Closed on every exit: a name that cannot be stored, out of memory, too.)
    const std::unique_ptr<DIR, int (*)(DIR*)> h(::opendir(d.c_str()), &::closedir);
    if (!h) throw PersistError::io(d, "open directory", errno);
    std::vector<std::string> names;
    errno = 0;
    while (const dirent* e = ::readdir(h.get())) {
      const std::string_view n = e->d_name;
      if (n != "." && n != "..") names.emplace_back(n);
    }
    const int err = errno;
    if (err != 0) throw PersistError::io(d, "read directory", err);
    return names;
  }

  std::unique_ptr<FileLock> lock(const fs::path& p) override {
    LockDescriptors& held = LockDescriptors::instance();
    const std::unique_lock hold = held.hold_for_one_more();
    for (int attempt = 1;; ++attempt) {
      FdGuard fd(retry([&] { return ::open(p.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644); }));
      if (fd.get() < 0) throw PersistError::io(p, "open lock file", errno);
      // flock locks belong to the open file description: a second open of the
      // same file in this process conflicts too, as it should.
      if (retry([&] { return ::flock(fd.get(), LOCK_EX | LOCK_NB); }) != 0) {
        const int e = errno;
        if (e == EWOULDBLOCK) throw PersistError::at(ErrorKind::Locked, p, "another writer holds the lock");
        throw PersistError::io(p, "flock", e);
      }
      // The file locked must still be the one at the path: removed or
      // replaced between the open and the flock, the next writer would lock
      // another file at the same path.
      if (!is_file_at(fd.get(), p)) {
        if (attempt < 8) continue;
        throw PersistError::at(ErrorKind::Locked, p, "the lock file keeps being replaced while it is locked");
      }
      // (A failure to allocate the lock object closes fd: the flock goes with it.)
      auto lock = std::make_unique<PosixFileLock>(fd.get(), p);
      held.record(fd.release());
      return lock;
    }
  }

  std::uint64_t random_u64() override {
    std::lock_guard<std::mutex> g(mu_);
    return (static_cast<std::uint64_t>(rd_()) << 32) ^ rd_();
  }

 private:
  std::mutex mu_;
  std::random_device rd_;
};

}  // namespace

void WritableFile::allocate_zeros(std::uint64_t offset, std::uint64_t len) {
  static const std::vector<std::byte> zeros(std::size_t{1} << 20);
  for (std::uint64_t at = offset, end = offset + len; at < end;) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(end - at, zeros.size()));
    write_at(at, {zeros.data(), n});
    at += n;
  }
}

FileSystem& default_file_system() {
  static PosixFileSystem fs;
  return fs;
}

}  // namespace iqdb::persist
