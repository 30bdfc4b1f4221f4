// Appending to a write-ahead log file (internal).
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <vector>

#include "iqdb/persist/detail/index_storage.hpp"
#include "iqdb/persist/file_system.hpp"
#include "wal/log_preallocator.hpp"

namespace iqdb::persist::wal {

// Appends frames to a version-2 log. The file is grown ahead of the writes
// in zero-filled steps that are written for real (not fallocated): a later
// fdatasync then carries data only, no file-size or extent metadata, which
// makes it markedly cheaper. Under the mapping policies (use_mapping) the
// steps are allocated instead (WritableFile::allocate_zeros): no fdatasync
// waits on each frame there, and the space can be mapped for writing
// either way. Zero padding reads as the end of the log. The steps are written and made
// durable ahead of the frames by a thread of the writer's own
// (LogPreallocator, log_preallocator.hpp); a failure of that thread is
// thrown by the next append(), write_staged(), datasync() or close() (a
// full disk is none: the growth ahead stops, and a write fails only when
// its own space cannot be made). Not
// thread-safe (the engine serialises; datasync() may run beside one
// append()). The local files' LogSink (local_storage.cpp).
//
// Each datasync() then drops the whole pages it made durable from the page
// cache (WritableFile::drop_cached; posix_fadvise DONTNEED), in steps of at
// least 64 KiB: a log is read back only by recovery and by followers, and
// keeping it cached would fill the page cache with it. It also keeps a
// burst of large batches off fresh memory: when the frames outrun the
// zero-filled space, each write extends the file and takes new page-cache
// pages, and the pages the previous sync let go are the ones it gets back
// (docs/PERFORMANCE.md, "The log's synced pages dropped"). The page the frames
// end in is kept (the next frame writes into it).
class LogWriter final : public detail::LogSink {
 public:
  // Create a new, empty log at `path` atomically and durably.
  static std::unique_ptr<LogWriter> create(FileSystem& fs, const std::filesystem::path& path, std::uint64_t salt,
                                           std::uint64_t base_lsn);
  // Continue the log at `path` whose valid prefix ends at `end`; every byte
  // after `end` must be zero (callers truncate torn tails first).
  static std::unique_ptr<LogWriter> open(FileSystem& fs, const std::filesystem::path& path, std::uint64_t salt,
                                         std::uint64_t end, std::uint64_t file_size);

  // Write a frame at the end. Throws PersistError(Io) on failure, with the
  // end unchanged (bytes may have reached the file: callers poison or cut).
  void append(std::span<const std::byte> frame) override;
  void datasync() override;

  // Group commit: frames can instead be staged in memory (end() counts
  // them) and written together by one thread. take_staged() (under the
  // caller's lock) hands over the staged bytes and where they go;
  // write_staged() writes them, outside that lock, while further frames are
  // staged. One write_staged() at a time; append() only while nothing is
  // staged.
  using Staged = detail::LogSink::Staged;
  void stage(std::span<const std::byte> frame) override;
  // Moves the staged bytes before `upto` into `out` (whose old contents are
  // dropped; its capacity is kept for the next round).
  void take_staged(Staged& out, std::uint64_t upto) override;
  void write_staged(const Staged& s) override;
  // Cut the log back to `end` (dropping frames after it) and sync that.
  void cut(std::uint64_t end) override;
  // Stops the growing thread, then closes the file.
  void close() override;
  // Write frames through a memory mapping of the preallocated space, where
  // the file system offers one (FileSystem::map_for_write): an append is then
  // a copy, not a system call. Same guarantees as write_at() (a process
  // crash keeps the frame; datasync() makes it durable). For the policies
  // whose appends do not each wait for an fsync (Periodic, Never). Frames
  // over 16 KiB (large batches) are written with write_at() all the same.
  void use_mapping() noexcept override {
    use_map_ = true;
    grower_.unsynced();
  }

  std::uint64_t end() const noexcept override { return end_; }
  std::uint64_t salt() const noexcept override { return salt_; }
  const std::filesystem::path& path() const noexcept { return file_->path(); }
  // The growth ahead, for tests.
  const LogPreallocator& growth() const noexcept { return grower_; }

 private:
  LogWriter(FileSystem& fs, std::unique_ptr<WritableFile> f, std::uint64_t salt, std::uint64_t end,
            std::uint64_t allocated)
      : file_(std::move(f)), salt_(salt), end_(end), written_(end), grower_(fs, file_->path(), allocated) {}
  // Before a write of `bytes` that ends at `need`: make the space hold it
  // (LogPreallocator::reserve) and ask for more ahead; throws the growing
  // thread's failure (not a full disk: that only stops the growth ahead),
  // or the failure to make the write's own space.
  void extend(std::uint64_t need, std::uint64_t bytes);
  // Copies the frame into the mapped window, moving the window first when
  // the frame is not inside it; false when it cannot be mapped.
  bool copy_to_map(std::span<const std::byte> frame);
  // After a datasync that began with frames written up to `written`.
  void drop_synced(std::uint64_t written) noexcept;

  std::unique_ptr<WritableFile> file_;
  std::uint64_t salt_;
  std::uint64_t end_;
  std::vector<std::byte> staged_;  // frames at end_ - staged_.size() .. end_
  bool use_map_ = false;
  std::unique_ptr<WriteMapping> map_;  // a window of the preallocated space
  std::uint64_t map_at_ = 0;           // its file offset
  std::atomic<std::uint64_t> written_;  // frames are written to the file up to here
  // The page cache was told to drop [0, dropped_) (datasync; cut() may run
  // beside it after a failed append: a stale value only skips a hint).
  std::atomic<std::uint64_t> dropped_{0};
  LogPreallocator grower_;             // last: its thread stops first
};

}  // namespace iqdb::persist::wal
