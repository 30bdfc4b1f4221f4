// Fuzz target "wal_scan": wal::scan_log (log versions 1 and 2) in both
// ScanModes, and wal::repair_log, on an in-memory file system.
//
// Input: flags u8, then the log file.
//   bit 0  recompute the v2 header CRC and the CRC of every frame (walking
//          the frames by their length fields), so that mutations reach the
//          record decoder
// Oracles: only PersistError escapes; the result is consistent (records
// delivered = records counted, offsets inside the file, v2 LSNs contiguous);
// Strict and Report agree wherever Strict succeeds, and where Strict reports
// mid-log corruption Report flags it too; after repair_log the log scans
// cleanly in Strict mode to the same records, with no tail left.
#include "fuzz_support.hpp"

namespace iqdb::persist::fuzz {
namespace wal_scan_target {

const fs::path kLog = "/db/x.iqdb.wal";

struct Rec {
  std::optional<std::uint64_t> lsn;
  wal::Op op;
  VectorId id;
  std::vector<float> vec;
  std::optional<Metadata> meta;
  std::uint64_t frame_offset;
  bool operator==(const Rec& o) const {
    return lsn == o.lsn && op == o.op && id == o.id && vec.size() == o.vec.size() &&
           (vec.empty() || std::memcmp(vec.data(), o.vec.data(), vec.size() * sizeof(float)) == 0) &&
           meta == o.meta && frame_offset == o.frame_offset;
  }
};

struct Outcome {
  std::optional<wal::ScanResult> result;
  std::optional<ErrorKind> error;
  std::optional<std::uint64_t> error_offset;
  std::vector<Rec> records;
};

Outcome scan(MemFileSystem& mfs, wal::ScanMode mode) {
  Outcome o;
  try {
    o.result = wal::scan_log(
        mfs, kLog,
        [&](const wal::RecordView& r) {
          IQDB_FUZZ_CHECK(r.id != nullptr, "record without id");
          IQDB_FUZZ_CHECK(r.index_in_frame < r.frame_records, "index_in_frame out of range");
          o.records.push_back(Rec{r.lsn, r.op, *r.id, {r.vector.begin(), r.vector.end()},
                                  r.metadata ? std::optional<Metadata>(*r.metadata) : std::nullopt, r.frame_offset});
        },
        mode);
  } catch (const PersistError& e) {
    o.error = e.kind();
    o.error_offset = e.offset();
  }
  return o;
}

bool same(const wal::ScanResult& a, const wal::ScanResult& b) {
  return a.version == b.version && a.salt == b.salt && a.base_lsn == b.base_lsn && a.records == b.records &&
         a.frames == b.frames && a.last_lsn == b.last_lsn && a.valid_bytes == b.valid_bytes &&
         a.torn_tail_bytes == b.torn_tail_bytes && a.unsynced_frames_dropped == b.unsynced_frames_dropped &&
         a.file_size == b.file_size && a.corrupt_offset == b.corrupt_offset &&
         a.frames_after_corruption == b.frames_after_corruption &&
         a.records_after_corruption == b.records_after_corruption;
}

void check_result(const Outcome& o, std::uint64_t file_size) {
  const wal::ScanResult& r = *o.result;
  IQDB_FUZZ_CHECK(r.version == 1 || r.version == 2, std::to_string(r.version));
  IQDB_FUZZ_CHECK(r.file_size == file_size, "file_size");
  IQDB_FUZZ_CHECK(r.records == o.records.size(), "records counted != records delivered");
  IQDB_FUZZ_CHECK(r.frames <= r.records, "more frames than records");
  IQDB_FUZZ_CHECK(r.valid_bytes <= file_size && r.torn_tail_bytes <= file_size - r.valid_bytes,
                  "valid prefix / tail outside the file");
  if (r.corrupt_offset) {
    IQDB_FUZZ_CHECK(*r.corrupt_offset == r.valid_bytes, "corruption not at the end of the valid prefix");
  }
  for (std::size_t i = 0; i < o.records.size(); ++i) {
    IQDB_FUZZ_CHECK(o.records[i].frame_offset < r.valid_bytes, "record beyond the valid prefix");
    if (r.version == 2) {
      IQDB_FUZZ_CHECK(o.records[i].lsn == r.base_lsn + i, "v2 LSNs are not contiguous from base_lsn");
    } else {
      IQDB_FUZZ_CHECK(!o.records[i].lsn, "v1 record with an LSN");
    }
    IQDB_FUZZ_CHECK(o.records[i].op == wal::Op::Insert || o.records[i].vec.empty(), "erase with a vector");
  }
  if (r.version == 2) {
    IQDB_FUZZ_CHECK(r.records == 0 ? !r.last_lsn : r.last_lsn == r.base_lsn + r.records - 1, "last_lsn");
  }
}

void run(std::span<const std::uint8_t> in) {
  if (in.empty()) return;
  Bytes log = to_bytes(in.subspan(1));
  if ((in[0] & 1) != 0) fix_log(log);
  MemFileSystem mfs;
  mfs.put(kLog, log);

  const Outcome strict = scan(mfs, wal::ScanMode::Strict);
  const Outcome report = scan(mfs, wal::ScanMode::Report);
  if (strict.result) check_result(strict, log.size());
  if (report.result) check_result(report, log.size());
  // Damage in the middle: a damaged frame with intact frames after it, or a
  // frame whose checksum holds and whose contents do not decode, which the
  // strict scan refuses at that offset.
  if (report.result && report.result->corrupt_offset && report.result->frames_after_corruption == 0) {
    IQDB_FUZZ_CHECK(strict.error == ErrorKind::CorruptLog && strict.error_offset == report.result->corrupt_offset,
                    "corruption flagged without intact frames after it, where the strict scan does not refuse");
  }
  if (strict.result) {
    IQDB_FUZZ_CHECK(report.result && same(*strict.result, *report.result) && strict.records == report.records,
                    "Report mode differs from a successful Strict scan");
    IQDB_FUZZ_CHECK(!strict.result->corrupt_offset, "Strict scan returned with corruption flagged");
  } else if (*strict.error == ErrorKind::CorruptLog) {
    IQDB_FUZZ_CHECK(report.error == ErrorKind::CorruptLog || (report.result && report.result->corrupt_offset),
                    "Strict found mid-log corruption that Report does not flag");
  } else {
    IQDB_FUZZ_CHECK(report.error == strict.error, "Strict and Report fail differently");
  }
  if (!report.result) return;

  // Repair, then the log must be clean: same records, nothing after them.
  const wal::ScanResult repaired = wal::repair_log(mfs, kLog);
  IQDB_FUZZ_CHECK(same(repaired, *report.result), "repair_log scanned differently from Report mode");
  const Outcome after = scan(mfs, wal::ScanMode::Strict);
  IQDB_FUZZ_CHECK(after.result.has_value(), "a repaired log does not scan");
  check_result(after, mfs.get(kLog).size());
  IQDB_FUZZ_CHECK(after.records == report.records, "repair changed the valid records");
  IQDB_FUZZ_CHECK(after.result->torn_tail_bytes == 0 && !after.result->corrupt_offset, "repair left damage behind");
  const bool cut = report.result->torn_tail_bytes > 0 || report.result->corrupt_offset.has_value();
  IQDB_FUZZ_CHECK(!cut || mfs.get(kLog).size() == report.result->valid_bytes, "repair did not cut at the valid prefix");
}

}  // namespace wal_scan_target

inline void run_wal_scan(std::span<const std::uint8_t> in) { wal_scan_target::run(in); }

}  // namespace iqdb::persist::fuzz

IQDB_FUZZ_ENTRY(iqdb::persist::fuzz::run_wal_scan)
