// wal::repair_log: cut a damaged log back to its valid prefix, knowingly.
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/file_system.hpp"
#include "iqdb/persist/wal.hpp"
#include "wal/log_reader.hpp"

namespace iqdb::persist::wal {

ScanResult repair_log(FileSystem& fs, const std::filesystem::path& path) {
  // The writer's lock lives beside the snapshot: "<snapshot>.lock", and the
  // log is "<snapshot>.wal".
  std::filesystem::path lock_path = path;
  if (lock_path.extension() == ".wal") lock_path.replace_extension();
  lock_path += ".lock";
  const std::unique_ptr<FileLock> lock = fs.lock(lock_path);
  // That lock is found by name; the log may have other names (a hard link,
  // or a log whose own index is another). The log file's own lock, which
  // every writer holds shared while it has the log open, is the file's,
  // whatever its name: taken exclusively before anything is read, and held
  // until the cut is synced.
  const std::unique_ptr<WritableFile> f = fs.open_append(path);
  if (!f->try_lock(/*exclusive=*/true)) {
    throw PersistError::at(ErrorKind::Locked, path,
                           "a writer has this log open (under this name or another: a hard link); close it first");
  }
  ScanResult scan;
  {
    const std::unique_ptr<ReadableFile> file = fs.open_read(path);
    scan = scan_file(*file, {}, ScanMode::Report);
  }
  if (scan.torn_tail_bytes > 0 || scan.corrupt_offset) {
    f->truncate(scan.valid_bytes);
    f->sync();
  }
  f->close();
  return scan;
}

}  // namespace iqdb::persist::wal
