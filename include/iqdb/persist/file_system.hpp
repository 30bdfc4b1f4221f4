// The file-system seam.
//
// Every file-system call iqdb-persist makes goes through a FileSystem. The
// default one is POSIX; tests wrap it (FileSystemWrapper) to inject faults,
// record operations and simulate crashes. All methods report failure by
// throwing PersistError (kind Io, with the path and errno). Anything else
// one throws (another exception, one not derived from std::exception) is a
// failure too: the caller gets it as thrown, and a write or sync of the
// log that fails so poisons the index as a PersistError would
// (docs/RELIABILITY.md, promise 5).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "iqdb/persist/io.hpp"

namespace iqdb::persist {

// A range of a file mapped into memory for writing (see
// WritableFile::map_for_write). Unmapped on destruction.
class WriteMapping {
 public:
  virtual ~WriteMapping() = default;
  // The mapped bytes; stores into them are writes to the file.
  virtual std::span<std::byte> bytes() noexcept = 0;
};

// A file open for writing. Not thread-safe.
class WritableFile {
 public:
  virtual ~WritableFile() = default;  // best effort close; never throws

  // Write all of `data` at the current end (the position starts at 0, or at
  // the file's end for open_append).
  virtual void append(std::span<const std::byte> data) = 0;
  // Write all of `data` at `offset` (pwrite); does not move the append position
  // unless the write extends past it.
  virtual void write_at(std::uint64_t offset, std::span<const std::byte> data) = 0;
  // fsync: data and metadata reach stable storage.
  virtual void sync() = 0;
  // fdatasync: data (and the metadata needed to read it back) reach stable storage.
  virtual void datasync() = 0;
  // Set the file's length; the append position moves to min(position, size).
  virtual void truncate(std::uint64_t size) = 0;
  // Hint that [offset, offset+len) may be written back now (no durability
  // promise; lets the kernel overlap writeback with further writes).
  virtual void start_writeback(std::uint64_t offset, std::uint64_t len) = 0;
  // Make [offset, offset+len) read as zeros, with its blocks allocated (so
  // that stores through map_for_write into it cannot fail for want of
  // space), extending the file when it ends before offset+len; the append
  // position moves as for write_at(). No durability promise. The default
  // writes zeros with write_at() (so every WritableFileWrapper, and the test
  // file systems, see writes); the POSIX file system asks the file system
  // instead (fallocate FALLOC_FL_ZERO_RANGE: no data written, no page-cache
  // pages taken), and writes zeros where that is not supported. The log
  // grows so under the policies whose appends go through a mapping.
  virtual void allocate_zeros(std::uint64_t offset, std::uint64_t len);
  // Hint that the clean cached pages of [offset, offset+len) will not be
  // read soon (posix_fadvise DONTNEED): the page cache may drop them. No
  // effect on the file's contents; errors are ignored. The default does
  // nothing. The log drops what it has synced (LogWriter::datasync).
  virtual void drop_cached(std::uint64_t offset, std::uint64_t len) noexcept {
    (void)offset;
    (void)len;
  }
  // Close and report errors. Further calls are invalid.
  virtual void close() = 0;
  // Optional: map [offset, offset + length) for writing. offset must be a
  // multiple of 4096 and the range must lie within the file's current size,
  // in blocks already written or allocated (allocate_zeros), so that no
  // store can fail for want of space.
  // Stores into the mapping reach the page cache as write_at() would: a
  // process crash keeps them, datasync() makes them durable. Returns
  // nullptr when the file system does not offer it (the default, also for
  // every WritableFileWrapper: test file systems see every write as a
  // write_at()) or the mapping cannot be made; callers then use
  // write_at(). A mapping must not outlive truncate() below its end, or
  // the file.
  virtual std::unique_ptr<WriteMapping> map_for_write(std::uint64_t offset, std::size_t length) {
    (void)offset;
    (void)length;
    return nullptr;
  }

  // An advisory lock on the file itself (its inode: whatever name, hard
  // link or symbolic link it was opened by), held until the file is closed:
  // shared (a log's writer holds one) or exclusive (a repair). False, at
  // once, when another open file holds a conflicting one. The default (file
  // systems without such locks) takes none and returns true; the POSIX file
  // system uses flock(); WritableFileWrapper asks its target.
  virtual bool try_lock(bool exclusive) {
    (void)exclusive;
    return true;
  }

  virtual const std::filesystem::path& path() const noexcept = 0;
};

// A file open for reading. read_at is thread-safe.
class ReadableFile {
 public:
  virtual ~ReadableFile() = default;
  // Read up to dst.size() bytes at `offset`; returns the count (less only at EOF).
  virtual std::size_t read_at(std::uint64_t offset, std::span<std::byte> dst) const = 0;
  // The file's size when it was opened.
  virtual std::uint64_t size() const noexcept = 0;
  // The file's size now: larger than size() when another process appended
  // since it was opened (read replicas follow a log so). The default is
  // size(), for files that do not change.
  virtual std::uint64_t current_size() const { return size(); }
  virtual const std::filesystem::path& path() const noexcept = 0;
  // Optional: [offset, offset + size) mapped in place for a mapped load (see
  // MappedBlock in io.hpp), `reserve` bytes of address space in all. offset
  // must be a multiple of 4096. Returns an empty block when the file system
  // does not offer it (the default: callers then read) or the system
  // refuses the mapping.
  virtual MappedBlock map(std::uint64_t offset, std::size_t size, std::size_t reserve) const {
    (void)offset;
    (void)size;
    (void)reserve;
    return {};
  }
};

// An exclusive advisory lock; released when destroyed.
class FileLock {
 public:
  virtual ~FileLock() = default;
  // Throws PersistError(Fenced) when the lock no longer guards what it was
  // taken for: the POSIX file system's when the file at its path is not the
  // file it locked (removed, replaced, or its directory moved: another
  // writer may lock the path now). A WAL checkpoint checks it before it
  // writes by path. Default: nothing to check.
  virtual void check() const {}
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;

  // Create a new file; fails if `path` exists (O_EXCL) and never follows a
  // symbolic link. Permissions 0644 (less the umask).
  virtual std::unique_ptr<WritableFile> create_exclusive(const std::filesystem::path& path) = 0;
  // Open an existing regular file for writing, positioned at its end.
  virtual std::unique_ptr<WritableFile> open_append(const std::filesystem::path& path) = 0;
  virtual std::unique_ptr<ReadableFile> open_read(const std::filesystem::path& path) = 0;
  // Atomically replace `to` with `from` (rename(2)).
  virtual void rename(const std::filesystem::path& from, const std::filesystem::path& to) = 0;
  // Remove a file; a missing file is not an error.
  virtual void remove(const std::filesystem::path& path) = 0;
  // fsync a directory, making renames, creates and removes in it durable.
  virtual void sync_dir(const std::filesystem::path& dir) = 0;
  virtual bool exists(const std::filesystem::path& path) = 0;
  // Names of the entries of a directory (not "." or "..").
  virtual std::vector<std::string> list_dir(const std::filesystem::path& dir) = 0;
  // Take an exclusive lock on `path` (created if missing) without waiting;
  // throws PersistError(Locked) when another holder has it, in this process or another.
  virtual std::unique_ptr<FileLock> lock(const std::filesystem::path& path) = 0;
  // Bytes of randomness for unpredictable temporary names.
  virtual std::uint64_t random_u64() = 0;
};

// The process-wide POSIX file system.
FileSystem& default_file_system();

// Forwards every call to a target; override what a test needs.
class FileSystemWrapper : public FileSystem {
 public:
  explicit FileSystemWrapper(FileSystem& target) : target_(target) {}
  FileSystem& target() noexcept { return target_; }

  std::unique_ptr<WritableFile> create_exclusive(const std::filesystem::path& p) override {
    return target_.create_exclusive(p);
  }
  std::unique_ptr<WritableFile> open_append(const std::filesystem::path& p) override {
    return target_.open_append(p);
  }
  std::unique_ptr<ReadableFile> open_read(const std::filesystem::path& p) override {
    return target_.open_read(p);
  }
  void rename(const std::filesystem::path& f, const std::filesystem::path& t) override {
    target_.rename(f, t);
  }
  void remove(const std::filesystem::path& p) override { target_.remove(p); }
  void sync_dir(const std::filesystem::path& d) override { target_.sync_dir(d); }
  bool exists(const std::filesystem::path& p) override { return target_.exists(p); }
  std::vector<std::string> list_dir(const std::filesystem::path& d) override { return target_.list_dir(d); }
  std::unique_ptr<FileLock> lock(const std::filesystem::path& p) override { return target_.lock(p); }
  std::uint64_t random_u64() override { return target_.random_u64(); }

 private:
  FileSystem& target_;
};

// Forwards every call to a target file; override what a test needs.
class WritableFileWrapper : public WritableFile {
 public:
  explicit WritableFileWrapper(std::unique_ptr<WritableFile> target) : target_(std::move(target)) {}
  void append(std::span<const std::byte> d) override { target_->append(d); }
  void write_at(std::uint64_t o, std::span<const std::byte> d) override { target_->write_at(o, d); }
  void sync() override { target_->sync(); }
  void datasync() override { target_->datasync(); }
  void truncate(std::uint64_t s) override { target_->truncate(s); }
  void start_writeback(std::uint64_t o, std::uint64_t l) override { target_->start_writeback(o, l); }
  void drop_cached(std::uint64_t o, std::uint64_t l) noexcept override { target_->drop_cached(o, l); }
  void close() override { target_->close(); }
  bool try_lock(bool exclusive) override { return target_->try_lock(exclusive); }
  const std::filesystem::path& path() const noexcept override { return target_->path(); }

 protected:
  WritableFile& target() noexcept { return *target_; }

 private:
  std::unique_ptr<WritableFile> target_;
};

// Replace `target` atomically with a file written by `fill`.
//
// Creates a temporary file with an unpredictable name in the target's
// directory (exclusively, never following a link), calls fill(file), then
// (when `durable`) fsyncs it, closes it, renames it over `target` and (when
// `durable`) fsyncs the directory. On any failure before the rename the
// temporary file is removed and `target` is untouched; the error propagates.
// A failure of the final directory fsync propagates too: the new file is in
// place but its rename may not survive a power loss.
void replace_file_atomically(FileSystem& fs, const std::filesystem::path& target, bool durable,
                             const std::function<void(WritableFile&)>& fill);

}  // namespace iqdb::persist
