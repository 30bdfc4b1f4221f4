// iqdb-persist copy SRC DST: copy an index between a local file and a RADOS
// location (rados://POOL/NAME), either way, or file to file and pool to
// pool: backup and restore, verified on arrival. docs/API.md ("The
// command-line tool") and docs/DISTRIBUTED.md ("Backup and restore: copy").
//
// 1. SRC is opened once; its header and the log that goes with it (a file's
//    SRC.wal; in RADOS the log of the generation opened) are looked at.
// 2. DST's writer lock is taken (Locked while a live writer holds it). An
//    index at DST is refused unless --force. DST's log must hold nothing
//    past DST's snapshot (else WouldLoseWrites); a local one is removed just
//    before the publish, so that it can never be replayed onto the new
//    snapshot (in RADOS the new generation has none). DST is read once
//    (OldIndex): the LSN it accounts for, which the copy must exceed
//    (step 3b), and whether its snapshot can be read at all (one that
//    cannot is replaced).
// 3a. No log records after SRC's snapshot (or --snapshot-only): the bytes.
//    verify_snapshot reads SRC through that one handle and every byte it
//    reads goes to DST's temporary (replace_file_atomically: a local
//    temporary file renamed over DST, or a RADOS generation published by one
//    atomic head update). Only a fully verified source is published; a crash
//    before the publish leaves DST's previous index as it was. DST is read
//    back and verified (header, CRC; each stripe's CRC in RADOS) and must
//    hold the source's CRC and size.
// 3b. Records after it: the index as it is now (fold_copy.hpp): SRC loaded
//    read-only with its log, written as one snapshot whose last LSN is the
//    source's, verified on arrival and loaded again to equal what was loaded.
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

#include "iqdb-persist/command.hpp"
#include "iqdb-persist/fold_copy.hpp"
#include "iqdb-persist/location.hpp"
#include "iqdb-persist/report.hpp"
#include "iqdb-persist/snapshot_tee.hpp"
#include "iqdb/persist/detail/index_storage.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/snapshot.hpp"
#include "iqdb/persist/wal.hpp"

namespace iqdb::persist::cli {
namespace {

namespace fs = std::filesystem;

struct CopyOptions {
  std::string src;
  std::string dst;
  bool snapshot_only = false;
  bool force = false;
  RadosArgs rados;
};

// The log that goes with the snapshot opened by `open_snapshot` (which
// returns its header): how many of its records are above the snapshot's
// LSN, and the last LSN it accounts for; zeros without a log. Both are
// opened as a reader opens them (local files: the log first; RADOS: the log
// of the generation read last), so that a checkpoint running meanwhile
// never pairs the old snapshot with the new, empty log.
// The last LSN a version-2 log accounts for: its last record's, else the
// one below its first.
std::uint64_t last_lsn_of(const wal::ScanResult& scan) {
  return scan.last_lsn ? *scan.last_lsn : (scan.base_lsn > 0 ? scan.base_lsn - 1 : 0);
}

struct LogRecords {
  std::uint64_t after = 0;
  std::uint64_t last_lsn = 0;
};
LogRecords records_after(const Location& where, IndexStorage& storage,
                         const std::function<FileHeader()>& open_snapshot) {
  FileHeader h;
  const std::unique_ptr<ReadableFile> log = storage.open_log_with_snapshot(open_snapshot, h);
  if (!log) return {};
  std::uint64_t implicit_lsn = 0;  // version-1 logs number their records 1, 2, ...
  LogRecords out;
  TeeState unused;
  OpenFileSystem view(where.fs(), *log, nullptr, unused);
  const wal::ScanResult scan = wal::scan_live_log(view, log->path(), [&](const wal::RecordView& r) {
    const std::uint64_t lsn = r.lsn ? *r.lsn : ++implicit_lsn;
    if (lsn > h.last_lsn) ++out.after;
    out.last_lsn = std::max(out.last_lsn, lsn);
  });
  storage.check_scan(scan);
  out.last_lsn = std::max(out.last_lsn, last_lsn_of(scan));  // (version 1: counted above)
  return out;
}

// Records of SRC's log after the snapshot `open_snapshot` opens (0 with
// --snapshot-only: the snapshot's bytes are copied alone).
std::uint64_t pending_records(const Location& src, const std::function<FileHeader()>& open_snapshot,
                              bool snapshot_only) {
  if (snapshot_only) {
    open_snapshot();
    return 0;
  }
  const std::shared_ptr<IndexStorage> storage = src.storage();
  return records_after(src, *storage, open_snapshot).after;
}

// DST.wal or DST.lock of a local index is never a destination (copy to
// DST): checked before DST's lock is taken, which would make DST.wal.lock.
void refuse_part_of_an_index(const Location& dst) {
  if (dst.rados()) return;
  const std::string name = dst.path().filename().string();
  for (const std::string_view suffix : {std::string_view(".wal"), std::string_view(".lock")}) {
    if (name.size() <= suffix.size() || !name.ends_with(suffix)) continue;
    const fs::path index = dst.path().parent_path() / name.substr(0, name.size() - suffix.size());
    if (!dst.fs().exists(index) && !dst.fs().exists(wal::log_path_for(index))) continue;
    const std::string what = suffix == ".wal" ? "write-ahead log" : "lock file";
    throw PersistError::at(ErrorKind::InvalidArgument, dst.path(),
                           "the destination is the " + what + " of the index at " + index.string() +
                               ", not an index; copy to " + index.string());
  }
}

// An index at DST (its snapshot, or a local log) is replaced only with --force.
// A local DST that is there but is no regular file (a directory, a device,
// a FIFO, a symbolic link: a save replaces a link rather than writing
// through it, and the old index is read without following one) is refused
// before anything is taken or created beside it, --force or not.
void refuse_irregular(const Location& dst) {
  if (dst.rados()) return;
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(dst.path(), ec);
  if (ec || st.type() == fs::file_type::not_found || st.type() == fs::file_type::regular) return;
  const char* what = st.type() == fs::file_type::directory ? "a directory (give the snapshot file's path in it)"
                     : st.type() == fs::file_type::symlink ? "a symbolic link (give the path it points to)"
                                                           : "not a regular file (a device, FIFO or socket)";
  throw PersistError::at(ErrorKind::InvalidArgument, dst.path(), std::string("the destination is ") + what);
}

void refuse_existing(const Location& dst, bool force) {
  if (force) return;
  const bool exists =
      dst.fs().exists(dst.path()) || (!dst.rados() && dst.fs().exists(wal::log_path_for(dst.path())));
  if (!exists) return;
  throw PersistError::at(ErrorKind::InvalidArgument, dst.path(),
                         "an index exists at the destination; pass --force to replace it");
}

// Kinds of error that say a file is damaged (not that it cannot be read).
bool is_damage(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::BadMagic:
    case ErrorKind::UnsupportedVersion:
    case ErrorKind::ChecksumMismatch:
    case ErrorKind::TruncatedHeader:
    case ErrorKind::TruncatedPayload:
    case ErrorKind::InvalidMetric:
    case ErrorKind::InvalidHeader:
    case ErrorKind::InvalidPayload:
    case ErrorKind::Compression:
    case ErrorKind::CorruptLog: return true;
    default: return false;
  }
}

// Errors of a snapshot whose header or payload extent is damaged. Not:
// BadMagic (not a snapshot at all: a destination mistyped), a version or
// compression scheme this build does not know (a newer version's file).
bool damaged_snapshot(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::ChecksumMismatch:
    case ErrorKind::TruncatedHeader:
    case ErrorKind::TruncatedPayload:
    case ErrorKind::InvalidMetric:
    case ErrorKind::InvalidHeader:
    case ErrorKind::InvalidPayload: return true;
    default: return false;
  }
}

// The index at DST, read once under its lock (step 2).
// - Its log is refused if it holds records its snapshot lacks (they would
//   be lost); a local one is removed before the publish (retire()). In
//   RADOS the new generation comes without a log: the old one is no longer
//   the current snapshot's.
// - lsn(): the highest LSN its files account for (its snapshot's; a local
//   log's last record's), if an index is there (and a damaged one: its
//   log's, if it has one).
// - A snapshot there that cannot be read (damaged: its header, or the
//   extent of its payload; damage()) is replaced, which is what restoring
//   a backup over it asks for; nothing loads it or the records of its log,
//   so they are not counted as writes the copy would lose, but the copy
//   still claims an LSN above the log's. The LSN the snapshot had is then
//   unknown and may be above the copy's: read replicas of DST load anew
//   when they find the LSN gone down (docs/DISTRIBUTED.md, "Read
//   replicas"). A file that is not a snapshot (BadMagic), or one a newer
//   version wrote (UnsupportedVersion, Compression), is refused.
class OldIndex {
 public:
  explicit OldIndex(const Location& dst) : dst_(dst) {
    const fs::path log = wal::log_path_for(dst.path());
    const bool snapshot = dst.fs().exists(dst.path());
    present_ = !dst.rados() && dst.fs().exists(log);
    if (!snapshot && !present_) return;
    FileHeader h;
    if (snapshot) {
      try {
        h = inspect_snapshot(dst.fs(), dst.path()).header;
      } catch (const PersistError& e) {
        if (!damaged_snapshot(e.kind())) throw;
        damage_ = describe(e);
      }
    }
    if (damage_) {
      if (present_) lsn_ = readable_log_end(log);
      return;
    }
    const std::shared_ptr<IndexStorage> storage = dst.storage();
    const LogRecords r = records_after(dst, *storage, [&] { return h; });  // (the destination is locked)
    if (r.after > 0) {
      throw PersistError::at(ErrorKind::WouldLoseWrites, storage->log_path(),
                             "the destination's log holds " + std::to_string(r.after) +
                                 " records its snapshot lacks; copying over it would lose them (checkpoint " +
                                 dst.label() + " first, or remove the index)");
    }
    lsn_ = std::max(h.last_lsn, r.last_lsn);
  }

  std::optional<std::uint64_t> lsn() const noexcept { return lsn_; }
  const std::optional<std::string>& damage() const noexcept { return damage_; }

  void retire() const {
    if (!present_) return;
    dst_.fs().remove(wal::log_path_for(dst_.path()));
    const fs::path dir = dst_.path().parent_path();
    dst_.fs().sync_dir(dir.empty() ? fs::path(".") : dir);
  }

 private:
  // The last LSN a local log accounts for, read as far as it is intact.
  std::uint64_t readable_log_end(const fs::path& log) const {
    try {
      const wal::ScanResult scan = wal::scan_log(dst_.fs(), log, {}, wal::ScanMode::Report);
      return last_lsn_of(scan);
    } catch (const PersistError& e) {
      if (!is_damage(e.kind())) throw;
    }
    return 0;
  }

  const Location& dst_;
  bool present_ = false;
  std::optional<std::uint64_t> lsn_;
  std::optional<std::string> damage_;
};

void refuse_same(const Location& src, const Location& dst) {
  bool same = src.rados() == dst.rados() && src.path() == dst.path();
  if (!src.rados() && !dst.rados()) {
    std::error_code ec;
    same = fs::equivalent(src.path(), dst.path(), ec);
  }
  if (same) throw PersistError::argument("copy: the source and the destination are the same (" + src.label() + ")");
}

// The destination read back must be the source's snapshot.
SnapshotSummary check_arrival(const Location& dst, const SnapshotSummary& sent) {
  SnapshotSummary got = verify_snapshot(dst.fs(), dst.path(), ReadLimits{});
  if (got.header.payload_crc != sent.header.payload_crc || got.file_size != sent.file_size) {
    throw PersistError::at(ErrorKind::ChecksumMismatch, dst.path(),
                           "read back after the copy, it holds " + std::to_string(got.file_size) + " bytes with CRC " +
                               hex32(got.header.payload_crc) + ", the source " + std::to_string(sent.file_size) +
                               " bytes with CRC " + hex32(sent.header.payload_crc));
  }
  return got;
}

// Sees whether replace_file_atomically got as far as the publish (rename).
class PublishWatch final : public FileSystemWrapper {
 public:
  using FileSystemWrapper::FileSystemWrapper;
  void rename(const fs::path& from, const fs::path& to) override {
    if (before_publish) before_publish();
    target().rename(from, to);
    published = true;
  }
  bool published = false;
  // Runs just before the publish: after the snapshot was written and synced
  // (so a copy that fails before it, a full disk included, leaves DST as it
  // was, its log too).
  std::function<void()> before_publish;
};

// What was sent, and how to check it once published.
struct Sent {
  std::uint64_t records_folded = 0;  // 0: the snapshot's bytes were copied (or the snapshot alone, folded)
  std::function<SnapshotSummary()> check_arrival;
};

// Step 3a. `reading_source` is true while a failure can only be the source's.
Sent publish_verified(const Location& src, const ReadableFile& file, const Location& dst, PublishWatch& publisher,
                      TeeState& tee, bool& reading_source) {
  SnapshotSummary sent;
  replace_file_atomically(publisher, dst.path(), true, [&](WritableFile& out) {
    OpenFileSystem reader(src.fs(), file, &out, tee);
    reading_source = true;
    sent = verify_snapshot(reader, src.path(), ReadLimits{});
    reader.check_complete();
    reading_source = false;
  });
  return {0, [&dst, sent] { return check_arrival(dst, sent); }};
}

// Step 3b: the source loaded with its log, written as one snapshot, whose
// last LSN is at least `min_lsn`.
Sent publish_folded(const Location& src, const SnapshotSummary& head, const Location& dst, PublishWatch& publisher,
                    bool& reading_source, std::uint64_t min_lsn, bool snapshot_only) {
  const FoldedCopy folded = fold_into(src, head.header.index_type, dst, publisher, compression_of(head.header),
                                      reading_source, min_lsn, snapshot_only);
  return {folded.records_folded, [&dst, check = folded.check_arrival] {
            check();
            return verify_snapshot(dst.fs(), dst.path(), ReadLimits{});
          }};
}

int report_failure(const Console& console, const CopyOptions& opts, bool published, bool source_damaged,
                   const PersistError& e) {
  if (source_damaged) {
    console.err << "DAMAGED: " << opts.src << "\n  " << describe(e) << '\n';
  } else {
    console.err << "error: " << describe(e) << '\n';
  }
  if (published) {
    console.err << "the copy was published at " << opts.dst << " but its directory could not be synced\n";
  } else {
    console.err << "nothing was copied: " << opts.dst << " is as it was\n";
  }
  return exit_code_for(e);
}

int report_arrival(const Console& console, const CopyOptions& opts, const PersistError& e) {
  console.err << "DAMAGED: " << opts.dst << " (read back after the copy was published)\n  " << describe(e)
              << '\n';
  return exit_code_for(e);
}

void print_copied(const Console& console, const CopyOptions& opts, const SnapshotSummary& got,
                  std::uint64_t source_lsn, std::uint64_t records_folded, std::uint64_t min_lsn) {
  const FileHeader& h = got.header;
  console.out << "copied " << opts.src << " -> " << opts.dst << " (format " << h.format_version << ", "
              << printable(h.index_type) << ", " << h.n_vectors << " vectors x " << h.dim << " dims, "
              << compression_name(h.compression) << ", " << human_bytes(got.file_size) << ", crc32 "
              << hex32(h.payload_crc) << ", last LSN " << h.last_lsn << "), verified at the destination\n";
  if (records_folded > 0) {
    console.out << "the source's log held " << records_folded << " records after its snapshot (LSN " << source_lsn
                << "): folded into the copy\n";
  }
  if (min_lsn > 0) {
    console.out << "the destination held an index up to LSN " << min_lsn - 1 << ": the copy claims LSN "
                << h.last_lsn << " (LSNs at a path only go up; its replicas load the copy anew)\n";
  }
}

// One attempt at the copy: its exit status, or nullopt when `again` says
// the source's failure is worth another (what it read was removed under it).
std::optional<int> copy_once(const Location& src, const Location& dst, const CopyOptions& opts,
                             const Console& console, const std::function<bool(const PersistError&)>& again) {
  PublishWatch publisher(dst.fs());
  TeeState tee;
  bool reading_source = true;
  std::unique_ptr<FileLock> lock;  // held until the copy was read back
  Sent sent;
  std::uint64_t head_lsn = 0;  // the source snapshot's
  std::uint64_t min_lsn = 0;   // the copy's lowest last LSN (0: the source's)
  std::optional<OldIndex> old;  // what DST held
  try {
    std::unique_ptr<ReadableFile> file;
    SnapshotSummary head;
    const auto open_snapshot = [&] {
      file = src.fs().open_read(src.path());
      OpenFileSystem header_reader(src.fs(), *file, nullptr, tee);
      head = inspect_snapshot(header_reader, src.path());
      return head.header;
    };
    const std::uint64_t pending = pending_records(src, open_snapshot, opts.snapshot_only);
    reading_source = false;
    refuse_irregular(dst);
    lock = dst.lock_writer();
    refuse_existing(dst, opts.force);
    // LSNs at a path only go up: over an index whose files account for LSN
    // F, a copy that would arrive at F or below claims F + 1 (written as a
    // folded copy), so that the destination's replicas load it anew and a
    // writer there numbers its records above what they hold.
    old.emplace(dst);
    const std::optional<std::uint64_t> there = old->lsn();
    const std::uint64_t arriving = head.header.last_lsn + pending;
    head_lsn = head.header.last_lsn;
    min_lsn = there && arriving <= *there ? *there + 1 : 0;
    publisher.before_publish = [&old] { old->retire(); };
    sent = pending == 0 && min_lsn == 0
               ? publish_verified(src, *file, dst, publisher, tee, reading_source)
               : publish_folded(src, head, dst, publisher, reading_source, min_lsn, opts.snapshot_only);
  } catch (const PersistError& e) {
    if (reading_source && !tee.sink_failed && !publisher.published && again(e)) return std::nullopt;
    const bool source_damaged = reading_source && is_damage(e.kind()) && !tee.sink_failed;
    return report_failure(console, opts, publisher.published, source_damaged, e);
  }
  SnapshotSummary got;
  try {
    got = sent.check_arrival();
  } catch (const PersistError& e) {
    return report_arrival(console, opts, e);
  }
  if (old && old->damage()) {
    console.out << "the index at " << opts.dst << " could not be read (" << *old->damage() << "): replaced\n";
  }
  print_copied(console, opts, got, head_lsn, sent.records_folded, min_lsn);
  return kExitOk;
}

int copy(const CopyOptions& opts, const Console& console) {
  const Location src = Location::open(opts.src, opts.rados);
  const Location dst = Location::open(opts.dst, opts.rados);
  refuse_same(src, dst);
  refuse_part_of_an_index(dst);
  // A live source on RADOS: a writer that publishes twice while the copy
  // reads removes the generation it reads (TruncatedPayload naming a stripe
  // or log object). That is no damage: the copy starts again from the newer
  // generation, as a reader's load does (detail::load_again_if_removed).
  const std::shared_ptr<IndexStorage> source = src.storage();
  for (int attempt = 1;; ++attempt) {
    const std::uint64_t before = source->published_version();
    const auto again = [&](const PersistError& e) { return detail::load_again(*source, before, e, attempt); };
    if (const std::optional<int> status = copy_once(src, dst, opts, console, again)) return *status;
    console.err << "the source published newer generations while it was read: copying again from the newest\n";
  }
}

}  // namespace

void register_copy(CommandSet& commands) {
  static constexpr const char* kAbout =
      "Copy an index (its snapshot, and the records of its log folded in) between a file and rados://POOL/NAME "
      "(either way), verified, atomic at the destination";
  auto opts = std::make_shared<CopyOptions>();
  CLI::App& cmd = commands.add("copy", kAbout, [opts](const Console& console) { return copy(*opts, console); });
  cmd.add_option("SRC", opts->src, "The index: its snapshot file (its log: FILE.wal), or rados://POOL/NAME")
      ->required()
      ->type_name("PATH");
  cmd.add_option("DST", opts->dst, "Where to copy it: a file, or rados://POOL/NAME")->required()->type_name("PATH");
  cmd.add_flag("--snapshot-only", opts->snapshot_only,
               "Copy the snapshot's bytes alone, even when the source's log holds records after it (they are not "
               "copied)");
  cmd.add_flag("--force", opts->force, "Replace an index that exists at DST (its log must hold nothing more)");
  add_rados_options(cmd, opts->rados);
}

}  // namespace iqdb::persist::cli
