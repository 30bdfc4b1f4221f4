// An index's snapshot and write-ahead log in a RADOS pool: the IndexStorage
// behind rados_persist_config (docs/DISTRIBUTED.md, "PersistedIndex on
// RADOS"). Snapshots go through RadosSnapshotStore (the FileSystem seam);
// the log that follows snapshot generation G is NAME.log.<G>.<k>
// (rados_log.cpp), so publishing a snapshot names its log in the same
// atomic operation, and a checkpoint (new snapshot, new log) is atomic.
#include <mutex>

#include "iqdb/persist/detail/index_storage.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/rados.hpp"
#include "rados/change_notify.hpp"
#include "rados/rados_log.hpp"
#include "rados/writer_fence.hpp"
#include "wal/log_format.hpp"

namespace iqdb::persist {

namespace fs = std::filesystem;
using namespace rados_detail;

namespace {

// The writer lock as the engine holds it: released when destroyed.
class HeldLock final : public FileLock {
 public:
  explicit HeldLock(std::unique_ptr<RadosWriterLock> lock) : lock_(std::move(lock)) {}

 private:
  std::unique_ptr<RadosWriterLock> lock_;
};

// The log of one generation, as a replica follows it: its layout read anew
// from the last object it knew at each refresh.
class RadosFollowedLog final : public detail::FollowedLog {
 public:
  RadosFollowedLog(RadosSnapshotStore& store, LogLayout layout) : store_(store), layout_(std::move(layout)) {}

  const ReadableFile& refresh() override {
    refresh_log_layout(store_, layout_);
    file_ = open_log_file(store_, layout_);
    return *file_;
  }
  std::uint64_t generation() const noexcept { return layout_.generation; }

 private:
  RadosSnapshotStore& store_;
  LogLayout layout_;
  std::unique_ptr<ReadableFile> file_;
};

class RadosIndexStorage final : public IndexStorage {
 public:
  RadosIndexStorage(std::shared_ptr<RadosSnapshotStore> store, std::string name, const RadosLockOptions& lock)
      : store_(std::move(store)), name_(std::move(name)), lock_options_(lock) {}

  FileSystem& snapshot_fs() override { return *store_; }

  // The fenced writer lock; then the log of the published generation is
  // sealed, so that nothing the previous writer still sends lands in it.
  std::unique_ptr<FileLock> lock_writer() override {
    auto lock = RadosWriterLock::acquire(*store_, name_, lock_options_);
    std::shared_ptr<Fence> fence = fence_of(*lock);
    if (const std::uint64_t g = generation(); g != 0) {
      // Before the seal, which would make a removed log an empty one.
      check_log_not_removed(*store_, name_, g);
      seal_log(*store_, name_, g, fence->epoch);
    }
    {
      std::lock_guard lk(mu_);
      fence_ = std::move(fence);
    }
    return std::make_unique<HeldLock>(std::move(lock));
  }

  bool log_exists() override {
    const std::uint64_t g = generation();
    return g != 0 && read_log_layout_checked(*store_, name_, g).has_bytes();
  }

  std::unique_ptr<ReadableFile> open_log() override {
    return open_layout(read_log_layout_checked(*store_, name_, generation()));
  }

  // The snapshot first, then the log of the generation it was: a checkpoint
  // meanwhile names another log, and this pair stays consistent (the
  // previous generation's log is kept until the next publish but one).
  std::unique_ptr<ReadableFile> open_log_with_snapshot(const std::function<FileHeader()>& load_snapshot,
                                                       FileHeader& loaded) override {
    loaded = load_snapshot();
    const std::uint64_t g = last_read_generation(*store_, name_);
    LogLayout layout = read_log_layout_checked(*store_, name_, g);
    if (!layout.has_bytes()) {
      no_log_unless_removed(g);
      return nullptr;
    }
    return open_layout(std::move(layout));
  }

  std::unique_ptr<detail::FollowedLog> follow_log_with_snapshot(const std::function<FileHeader()>& load_snapshot,
                                                                FileHeader& loaded) override {
    loaded = load_snapshot();
    const std::uint64_t g = last_read_generation(*store_, name_);
    auto log = follow(g);
    if (!log) no_log_unless_removed(g);
    return log;
  }

  // Between a checkpoint's publish and the creation of its log, the current
  // generation has no log yet: nullptr.
  std::unique_ptr<detail::FollowedLog> follow_current_log() override { return follow(generation()); }

  bool replaced(const detail::FollowedLog& log, std::uint64_t) override {
    return dynamic_cast<const RadosFollowedLog&>(log).generation() != generation();
  }
  bool log_outlives_snapshots() const noexcept override { return false; }
  std::uint64_t published_version() override { return generation(); }

  // A watch on NAME.notify (change_notify.hpp), through this store's client.
  std::unique_ptr<detail::ChangeWatch> watch_changes(std::function<void()> wake) override {
    const StoreHandles h = handles_of(*store_);
    return make_change_watch(h.cluster, h.io, notify_object(name_), std::move(wake));
  }

  // A RADOS write operation is atomic and each holds whole frames, so bytes
  // after the last complete frame are damage, never a torn write; nor does
  // anything pad a log object, so zeros there are damage too (a local log's
  // zeros are its padding).
  void check_scan(const wal::ScanResult& scan) override {
    // Damage with intact frames after it: a scan that reports it (wal dump)
    // says so, as a load does (CorruptLog, "damaged and intact frames
    // follow"), rather than as bytes that do not form a frame.
    if (scan.corrupt_offset) return;
    if (scan.torn_tail_bytes > 0) {
      throw PersistError::at(ErrorKind::CorruptLog, locate(scan.valid_bytes),
                             std::to_string(scan.torn_tail_bytes) +
                                 " bytes after the last valid frame do not form a frame; a RADOS append is atomic, "
                                 "so a log object was changed or cut",
                             scan.valid_bytes);
    }
    if (scan.file_size > scan.valid_bytes) {
      throw PersistError::at(ErrorKind::CorruptLog, locate(scan.valid_bytes),
                             std::to_string(scan.file_size - scan.valid_bytes) +
                                 " zero bytes follow the last valid frame; nothing pads a RADOS log, so a log object "
                                 "was changed",
                             scan.valid_bytes);
    }
  }

  fs::path locate(std::uint64_t offset) const override {
    std::lock_guard lk(mu_);
    return layout_.objects.empty() ? log_path() : log_object_path(*store_, layout_, offset);
  }

  std::unique_ptr<detail::LogSink> create_log(std::uint64_t base_lsn) override {
    const std::uint64_t g = generation();
    if (g == 0) throw PersistError::at(ErrorKind::Io, log_path(), "no snapshot is published: the log needs one", 0);
    return create_log_sink(*store_, name_, g, fence(), store_->random_u64(), base_lsn);
  }

  std::unique_ptr<detail::LogSink> continue_log(std::uint64_t salt, std::uint64_t end, std::uint64_t) override {
    const LogLayout layout = read_log_layout(*store_, name_, generation());
    if (layout.size() != end) {
      throw PersistError::at(ErrorKind::CorruptLog, log_object_path(*store_, layout, end),
                             "the log's valid frames end at " + std::to_string(end) + " of " +
                                 std::to_string(layout.size()) + " bytes",
                             end);
    }
    return continue_log_sink(*store_, layout, fence(), salt);
  }

  // The log belongs to the generation it follows: a newly published
  // snapshot has none, and the old one goes with its generation.
  void remove_log() override {}

  fs::path log_path() const override { return wal::log_path_for(store_->path_of(name_)); }

  // One group is one write operation on one object (osd_max_write_size,
  // 90 MB by default, bounds an operation): a frame fits a log object.
  std::uint64_t max_frame_bytes() const noexcept override { return kMaxLogObject - wal::format::kFrameHeaderLen; }

 private:
  std::uint64_t generation() {
    const auto head = store_->head(name_);
    return head ? head->generation : 0;
  }

  // Generation g's log has no bytes: it has none, or (a newer generation
  // published since its snapshot was read) it may have been removed with its
  // generation, records and all: TruncatedPayload, and the load is done
  // again (load_again_if_removed).
  void no_log_unless_removed(std::uint64_t g) {
    const std::uint64_t now = generation();
    if (now == g) return;
    throw PersistError::at(ErrorKind::TruncatedPayload, log_path(),
                           "the log of generation " + std::to_string(g) + " could not be read: generation " +
                               std::to_string(now) + " was published since its snapshot was read (load again)");
  }

  std::shared_ptr<Fence> fence() {
    std::lock_guard lk(mu_);
    if (!fence_) throw PersistError::at(ErrorKind::Fenced, log_path(), "the log is written only under the writer lock");
    return fence_;
  }

  std::unique_ptr<detail::FollowedLog> follow(std::uint64_t g) {
    if (g == 0) return nullptr;
    LogLayout layout = read_log_layout_checked(*store_, name_, g);
    if (!layout.has_bytes()) return nullptr;
    remember(layout);
    return std::make_unique<RadosFollowedLog>(*store_, std::move(layout));
  }

  std::unique_ptr<ReadableFile> open_layout(LogLayout layout) {
    remember(layout);
    return open_log_file(*store_, std::move(layout));
  }

  // The log opened last, for messages (locate).
  void remember(const LogLayout& layout) {
    std::lock_guard lk(mu_);
    layout_ = layout;
  }

  std::shared_ptr<RadosSnapshotStore> store_;
  std::string name_;
  RadosLockOptions lock_options_;
  mutable std::mutex mu_;
  std::shared_ptr<Fence> fence_;  // of the lock held last
  LogLayout layout_;              // of the log opened last (for messages)
};

}  // namespace

PersistConfig rados_persist_config(std::shared_ptr<RadosSnapshotStore> store, std::string_view name,
                                   const RadosLockOptions& lock) {
  if (!store) throw PersistError::argument("rados_persist_config: no store");
  PersistConfig cfg(store->path_of(name));
  cfg.storage = std::make_shared<RadosIndexStorage>(std::move(store), std::string(name), lock);
  return cfg;
}

PersistConfig rados_persist_config(const RadosLocation& location, const RadosOptions& options,
                                   const RadosLockOptions& lock) {
  return rados_persist_config(std::shared_ptr<RadosSnapshotStore>(RadosSnapshotStore::open(location, options)),
                              location.name, lock);
}

}  // namespace iqdb::persist
