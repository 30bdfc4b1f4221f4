// The local files as an IndexStorage: the snapshot PATH and its log
// PATH.wal through a FileSystem, the writer lock PATH.lock (docs/FORMAT.md,
// "Write-ahead log"). What the WAL engine did with the FileSystem itself
// before the seam moved up a level, unchanged: every test that wraps the
// FileSystem sees the same calls.
#include <algorithm>
#include <array>
#include <cerrno>
#include <optional>
#include <string>

#include "fs/temp_name.hpp"
#include "iqdb/persist/detail/index_storage.hpp"
#include "iqdb/persist/error.hpp"
#include "wal/log_format.hpp"
#include "wal/log_writer.hpp"

namespace iqdb::persist::detail {

namespace fs = std::filesystem;

namespace {

// The log file a replica follows: the descriptor it opened (a checkpoint
// renames another file over the path; this one keeps its bytes), read up to
// its size at each refresh.
class LocalFollowedLog final : public FollowedLog {
 public:
  explicit LocalFollowedLog(std::unique_ptr<ReadableFile> f) : f_(std::move(f)) {}

  const ReadableFile& refresh() override {
    view_.emplace(*f_, f_->current_size());
    return *view_;
  }

 private:
  // The file with the size it had at the refresh.
  class Sized final : public ReadableFile {
   public:
    Sized(const ReadableFile& f, std::uint64_t size) : f_(f), size_(size) {}
    std::size_t read_at(std::uint64_t offset, std::span<std::byte> dst) const override {
      if (offset >= size_) return 0;
      return f_.read_at(offset, dst.first(static_cast<std::size_t>(std::min<std::uint64_t>(dst.size(), size_ - offset))));
    }
    std::uint64_t size() const noexcept override { return size_; }
    const fs::path& path() const noexcept override { return f_.path(); }

   private:
    const ReadableFile& f_;
    std::uint64_t size_;
  };

  std::unique_ptr<ReadableFile> f_;
  std::optional<Sized> view_;
};

class LocalIndexStorage final : public IndexStorage {
 public:
  LocalIndexStorage(FileSystem& fs, fs::path snapshot)
      : fs_(fs), snapshot_(std::move(snapshot)), log_(wal::log_path_for(snapshot_)) {}

  FileSystem& snapshot_fs() override { return fs_; }

  // PATH.lock; then the temporary files of saves or checkpoints a crash
  // interrupted: we hold the writer lock, so none of them is in use.
  std::unique_ptr<FileLock> lock_writer() override {
    fs::path lock_path = snapshot_;
    lock_path += ".lock";
    std::unique_ptr<FileLock> lock = fs_.lock(lock_path);
    refuse_if_log_held(lock_path);  // (before the clean-up below: a live writer's temporary files are its own)
    const std::string name = snapshot_.filename().string();
    const std::string log_name = log_.filename().string();
    for (const std::string& entry : fs_.list_dir(dir())) {
      if (detail::is_temp_name(entry, name) || detail::is_temp_name(entry, log_name)) fs_.remove(dir() / entry);
    }
    return lock;
  }

  // A writer holds its log file with a shared lock on the file for as long
  // as it writes (log_writer.cpp). One that still does now that this
  // process has the lock file lost that file (removed or replaced under
  // it, by a clean-up of temporary files, say): a second writer would then
  // append to the same log, their frames overwriting each other's, or
  // replace it while the first goes on writing into the unlinked one. The
  // first is fenced only at its next checkpoint, so its writes in between
  // would be lost: refused (Locked) instead, while it has the log open.
  void refuse_if_log_held(const fs::path& lock_path) {
    std::unique_ptr<WritableFile> f;
    try {
      f = fs_.open_append(log_);
    } catch (const PersistError& e) {
      // No log; or one this process cannot open for writing, which no
      // writer of this process could append to either (the open that needs
      // it reports the error).
      const int err = e.sys_errno();
      if (e.kind() == ErrorKind::Io && (err == ENOENT || err == EACCES || err == EPERM || err == EROFS)) return;
      throw;
    }
    if (!f->try_lock(/*exclusive=*/true)) {
      throw PersistError::at(ErrorKind::Locked, log_,
                             "another writer has this log open, though its lock file " + lock_path.string() +
                                 " is this one's now (the file was removed or replaced while that writer ran): "
                                 "stop it first");
    }
    f->close();
  }

  bool log_exists() override { return fs_.exists(log_); }
  std::unique_ptr<ReadableFile> open_log() override { return fs_.open_read(log_); }

  // The log first, then the snapshot: a checkpoint, or a save that removes
  // the log, running meanwhile in another process leaves a consistent pair
  // (a snapshot written after the log was opened covers every record the
  // log holds).
  std::unique_ptr<ReadableFile> open_log_with_snapshot(const std::function<FileHeader()>& load_snapshot,
                                                       FileHeader& loaded) override {
    // Absent, or removed meanwhile (by a save with discard_log): the
    // snapshot that replaced it, loaded below, covers every record it held.
    std::unique_ptr<ReadableFile> log = open_if_exists();
    loaded = load_snapshot();
    return log;
  }

  std::unique_ptr<FollowedLog> follow_log_with_snapshot(const std::function<FileHeader()>& load_snapshot,
                                                        FileHeader& loaded) override {
    std::unique_ptr<ReadableFile> log = open_log_with_snapshot(load_snapshot, loaded);
    return log ? std::make_unique<LocalFollowedLog>(std::move(log)) : nullptr;
  }

  std::unique_ptr<FollowedLog> follow_current_log() override {
    std::unique_ptr<ReadableFile> log = open_if_exists();
    return log ? std::make_unique<LocalFollowedLog>(std::move(log)) : nullptr;
  }

  // The file at the path now is another log (another salt), or none.
  bool replaced(const FollowedLog&, std::uint64_t salt) override {
    const std::unique_ptr<ReadableFile> now = open_if_exists();
    if (!now) return true;
    std::array<std::byte, wal::format::kV2HeaderLen> b{};
    const std::size_t got = now->read_at(0, b);
    return wal::format::decode_header({b.data(), got}, now->size(), log_).salt != salt;
  }

  std::unique_ptr<LogSink> create_log(std::uint64_t base_lsn) override {
    return wal::LogWriter::create(fs_, log_, fs_.random_u64(), base_lsn);
  }
  std::unique_ptr<LogSink> continue_log(std::uint64_t salt, std::uint64_t end, std::uint64_t file_size) override {
    return wal::LogWriter::open(fs_, log_, salt, end, file_size);
  }

  void remove_log() override {
    fs_.remove(log_);
    fs_.sync_dir(dir());
  }

  fs::path log_path() const override { return log_; }

 private:
  // The directory holding the snapshot and its log ("." for a bare name).
  fs::path dir() const {
    const fs::path d = snapshot_.parent_path();
    return d.empty() ? fs::path(".") : d;
  }

  std::unique_ptr<ReadableFile> open_if_exists() {
    try {
      return fs_.open_read(log_);
    } catch (const PersistError& e) {
      if (e.kind() != ErrorKind::Io || e.sys_errno() != ENOENT) throw;
      return nullptr;
    }
  }

  FileSystem& fs_;
  fs::path snapshot_;
  fs::path log_;
};

}  // namespace

std::shared_ptr<IndexStorage> make_local_storage(FileSystem& fs, const fs::path& snapshot) {
  return std::make_shared<LocalIndexStorage>(fs, snapshot);
}

}  // namespace iqdb::persist::detail
