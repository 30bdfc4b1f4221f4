#include "iqdb-persist/rados_repair.hpp"

#include <memory>
#include <string>

#include "iqdb-persist/report.hpp"
#include "iqdb-persist/snapshot_tee.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/wal.hpp"
#ifdef IQDB_PERSIST_CLI_HAVE_RADOS
#include "iqdb/persist/rados.hpp"
#include "rados/rados_log.hpp"
#endif

namespace iqdb::persist::cli {

#ifdef IQDB_PERSIST_CLI_HAVE_RADOS
namespace {

using rados_detail::LogPrefix;

// The log of the published generation as it is: its consistent objects and
// a scan of their frames.
struct Look {
  LogPrefix prefix;
  wal::ScanResult scan;
  bool damaged() const {
    // (Zeros after the last frame are damage too: nothing pads a RADOS log.)
    return scan.torn_tail_bytes > 0 || scan.file_size > scan.valid_bytes || scan.corrupt_offset ||
           !prefix.stopped.empty() || !prefix.beyond.empty();
  }
};

// A log whose first object is damaged (its attributes) has no consistent
// bytes, but is no less a damaged log (the repair removes its objects); one
// with no bytes and nothing damaged is no log.
Look look_at(const Location& where) {
  RadosSnapshotStore& store = where.rados_store();
  const auto head = store.head(where.rados_name());
  if (!head) throw PersistError::at(ErrorKind::Io, where.path(), "no snapshot is published: there is no log");
  Look look;
  look.prefix = rados_detail::read_log_prefix(store, where.rados_name(), head->generation);
  if (!look.prefix.layout.has_bytes()) return look;
  const std::unique_ptr<ReadableFile> log = rados_detail::open_log_file(store, look.prefix.layout);
  TeeState unused;
  OpenFileSystem view(where.fs(), *log, nullptr, unused);
  try {
    look.scan = wal::scan_log(view, log->path(), {}, wal::ScanMode::Report);
  } catch (const PersistError& e) {
    // The consistent bytes end inside the log's header (an object's size
    // attribute cut them short): nothing of the log is usable, and the
    // repair removes it all.
    if (e.kind() != ErrorKind::TruncatedHeader || look.prefix.stopped.empty()) throw;
    look.scan = {};
  }
  return look;
}

void describe_objects(std::ostream& out, const Look& look) {
  const LogPrefix& p = look.prefix;
  if (p.layout.objects.empty()) {
    out << "log objects: none of " << p.layout.name << ".log." << p.layout.generation << ".* is consistent\n";
  } else {
    out << "log objects: " << p.layout.name << ".log." << p.layout.generation << ".0 to ."
        << p.layout.objects.size() - 1 << " hold " << p.layout.size() << " consistent bytes\n";
  }
  if (!p.stopped.empty()) out << "damaged objects: " << p.stopped << '\n';
  if (!p.beyond.empty()) {
    out << "to remove: " << p.beyond.size() << " log objects after them (from ." << p.beyond.front() << ")\n";
  }
}

}  // namespace

int repair_rados_log(const Location& where, bool yes, const Console& console) {
  std::unique_ptr<RadosWriterLock> lock;
  if (yes) lock = RadosWriterLock::acquire(where.rados_store(), where.rados_name());
  const Look look = look_at(where);
  if (!look.prefix.layout.has_bytes() && !look.damaged()) {
    throw PersistError::at(ErrorKind::Io, wal::log_path_for(where.path()), "the published snapshot has no log");
  }
  if (!look.damaged()) {
    console.out << "nothing to repair: " << look.scan.records << " records, " << look.scan.valid_bytes
                << " valid bytes, no damaged bytes or objects\n";
    return kExitOk;
  }
  describe_objects(console.out, look);
  describe_log_drop(console.out, look.scan);
  if (!yes) {
    console.out << "dry run: nothing changed. Re-run with --yes to cut the log at offset " << look.scan.valid_bytes
                << " (under the writer lock).\n";
    return kExitFailed;
  }
  rados_detail::cut_log(where.rados_store(), *lock, look.prefix, look.scan.valid_bytes);
  const Look after = look_at(where);
  if (after.damaged() || after.scan.valid_bytes != look.scan.valid_bytes) {
    throw PersistError::at(ErrorKind::CorruptLog, wal::log_path_for(where.path()),
                           "the log is still damaged after the repair", after.scan.valid_bytes);
  }
  console.out << "repaired: the log now ends at offset " << after.scan.valid_bytes << " after " << after.scan.records
              << " records\n";
  return kExitOk;
}

#else

int repair_rados_log(const Location& where, bool, const Console&) {
  throw PersistError::at(ErrorKind::Unsupported, where.path(), "this iqdb-persist was built without RADOS support");
}

#endif

}  // namespace iqdb::persist::cli
