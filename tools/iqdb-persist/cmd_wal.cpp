// iqdb-persist wal dump PATH.wal [--json]: the records of a write-ahead log;
// rados://POOL/NAME: the log of the index's published snapshot.
// iqdb-persist wal repair PATH.wal [--yes]: cut a damaged log after its last
// valid frame; rados://POOL/NAME: the log of the published snapshot, under
// the writer lock (rados_repair.hpp).
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "iqdb-persist/command.hpp"
#include "iqdb-persist/location.hpp"
#include "iqdb-persist/rados_repair.hpp"
#include "iqdb-persist/report.hpp"
#include "iqdb-persist/snapshot_tee.hpp"
#include "iqdb/persist/detail/index_storage.hpp"
#include "iqdb/persist/file_system.hpp"
#include "iqdb/persist/snapshot.hpp"
#include "iqdb/persist/wal.hpp"

namespace iqdb::persist::cli {
namespace {

using nlohmann::json;

std::string hex_of(const std::string& bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  s.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    s += kHex[c >> 4];
    s += kHex[c & 15];
  }
  return s;
}

json id_json(const VectorId& id) {
  if (id.is_u64()) return id.as_u64();
  return json{{"hex", hex_of(id.as_bytes())}};
}

// JSON has no NaN or infinity (nlohmann-json would print null): a
// non-finite float is written as the string "NaN", "Infinity" or "-Infinity".
json float_json(double f) {
  if (std::isnan(f)) return "NaN";
  if (std::isinf(f)) return f > 0 ? "Infinity" : "-Infinity";
  return f;
}

json value_json(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::String: return v.as_string();
    case Value::Kind::Int: return v.as_int();
    case Value::Kind::Float: {
      // A metadata value may be a string too, so a non-finite float is
      // tagged: {"float":"NaN"} is never mistaken for the string "NaN".
      const double f = v.as_float();
      return std::isfinite(f) ? json(f) : json{{"float", float_json(f)}};
    }
    case Value::Kind::Bool: return v.as_bool();
    case Value::Kind::Null: return nullptr;
  }
  return nullptr;
}

json value_json_map(const Metadata& m) {
  json meta = json::object();
  for (const auto& [k, v] : m) meta[k] = value_json(v);
  return meta;
}

json record_json(const wal::RecordView& r) {
  json j;
  j["lsn"] = r.lsn ? json(*r.lsn) : json(nullptr);
  j["op"] = r.op == wal::Op::Insert ? "insert" : "erase";
  j["id"] = id_json(*r.id);
  if (r.op == wal::Op::Insert) {
    json vec = json::array();
    for (const float f : r.vector) vec.push_back(float_json(f));
    j["vector"] = std::move(vec);
    // No metadata (null) and empty metadata ({}) are different records.
    j["metadata"] = r.metadata != nullptr ? value_json_map(*r.metadata) : json(nullptr);
  }
  j["offset"] = r.frame_offset;
  if (r.frame_records > 1) j["batch"] = json{{"index", r.index_in_frame}, {"records", r.frame_records}};
  return j;
}

std::string record_text(const wal::RecordView& r) {
  std::ostringstream o;
  o << "lsn=" << (r.lsn ? std::to_string(*r.lsn) : std::string("-")) << " offset=" << r.frame_offset << ' '
    << (r.op == wal::Op::Insert ? "insert" : "erase ") << " id=" << printable(r.id->to_string());
  if (r.op == wal::Op::Insert) {
    o << " dim=" << r.vector.size() << " [";
    for (std::size_t i = 0; i < r.vector.size() && i < 4; ++i) o << (i ? ", " : "") << r.vector[i];
    if (r.vector.size() > 4) o << ", ...";
    o << ']';
    if (r.metadata != nullptr) o << " metadata=" << value_json_map(*r.metadata).dump();
  }
  if (r.frame_records > 1) o << " (batch " << r.index_in_frame + 1 << '/' << r.frame_records << ')';
  return o.str();
}

struct DumpOptions {
  std::string file;
  bool json = false;
  RadosArgs rados;
};

// Scan the log at `file`: a log file, or the log of the snapshot published
// at rados://POOL/NAME (read as a reader would, without the writer lock).
wal::ScanResult scan_any(const DumpOptions& opts, const std::function<void(const wal::RecordView&)>& on_record) {
  if (!is_rados(opts.file)) return wal::scan_live_log(default_file_system(), opts.file, on_record, wal::ScanMode::Report);
  const Location where = Location::open(opts.file, opts.rados);
  const std::shared_ptr<IndexStorage> storage = where.storage();
  FileHeader loaded;
  const std::unique_ptr<ReadableFile> log = storage->open_log_with_snapshot(
      [&] { return inspect_snapshot(where.fs(), where.path()).header; }, loaded);
  if (!log) throw PersistError::at(ErrorKind::Io, storage->log_path(), "the published snapshot has no log");
  TeeState unused;
  OpenFileSystem view(where.fs(), *log, nullptr, unused);
  const wal::ScanResult scan = wal::scan_live_log(view, log->path(), on_record, wal::ScanMode::Report);
  storage->check_scan(scan);  // RADOS: bytes after the last frame are damage, not a torn tail
  return scan;
}

int dump(const DumpOptions& opts, const Console& console) {
  const wal::ScanResult scan = scan_any(
      opts,
      [&](const wal::RecordView& r) {
        if (opts.json) {
          console.out << record_json(r).dump() << '\n';
        } else {
          console.out << record_text(r) << '\n';
        }
      });
  if (opts.json) {
    json summary{{"version", scan.version},
                 {"base_lsn", scan.version >= 2 ? json(scan.base_lsn) : json(nullptr)},
                 {"records", scan.records},
                 {"frames", scan.frames},
                 {"valid_bytes", scan.valid_bytes},
                 {"torn_tail_bytes", scan.torn_tail_bytes},
                 {"unsynced_frames_dropped", scan.unsynced_frames_dropped},
                 {"corrupt_offset", scan.corrupt_offset ? json(*scan.corrupt_offset) : json(nullptr)}};
    if (scan.corrupt_offset) {
      summary["frames_after_corruption"] = scan.frames_after_corruption;
      summary["records_after_corruption"] = scan.records_after_corruption;
    }
    console.out << summary.dump() << '\n';
  } else {
    console.out << "log version " << scan.version;
    if (scan.version == 2) console.out << ", base LSN " << scan.base_lsn;
    console.out << ": " << scan.records << " records in " << scan.frames << " frames, " << scan.valid_bytes
                << " valid bytes, " << scan.torn_tail_bytes << " torn-tail bytes";
    if (scan.unsynced_frames_dropped > 0) {
      console.out << " (holding " << scan.unsynced_frames_dropped
                  << " intact frames written after one no fsync made durable: a load drops them)";
    }
    console.out << "\n";
  }
  if (scan.corrupt_offset) {
    console.err << "error: the frame at offset " << *scan.corrupt_offset << " is damaged and "
                << scan.frames_after_corruption << " intact frames (" << scan.records_after_corruption
                << " records) follow it; loading this log fails. `iqdb-persist wal repair` drops them.\n";
    return kExitFailed;
  }
  return kExitOk;
}

struct RepairOptions {
  std::string file;
  bool yes = false;
  RadosArgs rados;
};

int repair(const RepairOptions& opts, const Console& console) {
  if (is_rados(opts.file)) return repair_rados_log(Location::open(opts.file, opts.rados), opts.yes, console);
  // Look first (read only), then cut only with --yes.
  const wal::ScanResult look = wal::scan_log(default_file_system(), opts.file, {}, wal::ScanMode::Report);
  if (look.torn_tail_bytes == 0 && !look.corrupt_offset) {
    console.out << "nothing to repair: " << look.records << " records, " << look.valid_bytes
                << " valid bytes, no damaged bytes\n";
    return kExitOk;
  }
  describe_log_drop(console.out, look);
  if (!opts.yes) {
    console.out << "dry run: nothing changed. Re-run with --yes to cut the log at offset " << look.valid_bytes
                << ".\n";
    return kExitFailed;
  }
  const wal::ScanResult done = wal::repair_log(default_file_system(), opts.file);
  console.out << "repaired: the log now ends at offset " << done.valid_bytes << " after " << done.records
              << " records\n";
  return kExitOk;
}

}  // namespace

void register_wal_dump(CommandSet& commands) {
  commands.group("wal", "Inspect and repair write-ahead logs");
  auto opts = std::make_shared<DumpOptions>();
  CLI::App& cmd = commands.add("wal dump", "Print the records of a write-ahead log (version 1 or 2)",
                               [opts](const Console& console) { return dump(*opts, console); });
  cmd.add_option("FILE", opts->file, "The log file (<snapshot>.wal), or rados://POOL/NAME (its snapshot's log)")
      ->required()
      ->type_name("PATH");
  add_rados_options(cmd, opts->rados);
  cmd.add_flag("--json", opts->json,
               "JSON Lines: one object per record (\"metadata\": null when the insert has none), then a "
               "summary object (docs/API.md, \"The command-line tool\")");
}

void register_wal_repair(CommandSet& commands) {
  auto opts = std::make_shared<RepairOptions>();
  CLI::App& cmd = commands.add("wal repair",
                               "Cut a damaged log after its last valid frame, saying what is dropped "
                               "(a dry run without --yes)",
                               [opts](const Console& console) { return repair(*opts, console); });
  cmd.add_option("FILE", opts->file, "The log file (<snapshot>.wal), or rados://POOL/NAME (its snapshot's log)")
      ->required()
      ->type_name("PATH");
  cmd.add_flag("--yes", opts->yes, "Really truncate the log (rados://: under the writer lock)");
  add_rados_options(cmd, opts->rados);
}

}  // namespace iqdb::persist::cli
