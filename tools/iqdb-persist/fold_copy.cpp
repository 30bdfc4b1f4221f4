#include "iqdb-persist/fold_copy.hpp"

#include <algorithm>
#include <memory>
#include <optional>
#include <string>

#include "iqdb-persist/report.hpp"
#include "iqdb/persist/checksum.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/flat_index.hpp"
#include "iqdb/persist/io.hpp"
#include "iqdb/persist/persisted_index.hpp"
#include "iqdb/persist/wal.hpp"
#include "iqdb-persist/index_types.hpp"

namespace iqdb::persist::cli {
namespace {

// FNV-1a, 64 bits: a second, independent digest beside the CRC.
constexpr std::uint64_t kFnvOffset = 0xcbf29ce484222325ULL;
constexpr std::uint64_t kFnvPrime = 0x100000001b3ULL;

// An index's payload as save_to writes it, reduced to its length, CRC-32 and
// FNV-1a (nothing kept in memory).
class DigestWriter final : public PayloadWriter {
 public:
  void write(const void* data, std::size_t size) override {
    crc_.update(data, size);
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < size; ++i) fnv_ = (fnv_ ^ p[i]) * kFnvPrime;
    bytes_ += size;
  }
  std::uint64_t bytes_written() const noexcept override { return bytes_; }
  bool operator==(const DigestWriter& o) const noexcept {
    return bytes_ == o.bytes_ && crc_.value() == o.crc_.value() && fnv_ == o.fnv_;
  }

 private:
  checksum::Crc32 crc_;
  std::uint64_t fnv_ = kFnvOffset;
  std::uint64_t bytes_ = 0;
};

// Whether two indexes hold the same state: FlatIndex compares itself (ids,
// vectors, metadata, order); the adapters by their payloads' digests.
template <class I>
bool same_index(const I& a, const I& b) {
  if constexpr (requires { a == b; }) {
    return a == b;
  } else {
    DigestWriter da;
    DigestWriter db;
    a.save_to(da);
    b.save_to(db);
    return da == db;
  }
}

PersistConfig read_only(const Location& where) {
  PersistConfig cfg = where.config();
  cfg.wal_enabled = false;
  return cfg;
}

[[noreturn]] void arrival_mismatch(const Location& dst, const std::string& what) {
  throw PersistError::at(ErrorKind::InvalidPayload, dst.path(), "read back after the copy, " + what);
}

// The destination, verified, loaded again and compared with `source`.
template <class I>
void check_folded(const Location& dst, const FileHeader& written, const I& source) {
  const SnapshotSummary got = verify_snapshot(dst.fs(), dst.path(), ReadLimits{});
  const FileHeader& h = got.header;
  if (h.payload_crc != written.payload_crc || h.uncompressed_len != written.uncompressed_len) {
    arrival_mismatch(dst, "its payload has CRC " + hex32(h.payload_crc) + " and " +
                              std::to_string(h.uncompressed_len) + " bytes, the copy wrote " +
                              hex32(written.payload_crc) + " and " + std::to_string(written.uncompressed_len));
  }
  if (h.last_lsn != written.last_lsn || h.n_vectors != source.size() || h.index_type != I::index_type) {
    arrival_mismatch(dst, "its header says " + std::to_string(h.n_vectors) + " vectors up to LSN " +
                              std::to_string(h.last_lsn) + ", the source held " + std::to_string(source.size()) +
                              " up to LSN " + std::to_string(written.last_lsn));
  }
  const auto again = PersistedIndex<I>::load(read_only(dst));
  if (again.last_lsn() != written.last_lsn) {
    arrival_mismatch(dst, "it loads up to LSN " + std::to_string(again.last_lsn()) + ", not " +
                              std::to_string(written.last_lsn));
  }
  if (!same_index(again.index(), source)) arrival_mismatch(dst, "it loads as another index than the source's");
}

template <class I>
FoldedCopy fold_as(const Location& src, const Location& dst, FileSystem& publisher, const Compression& compression,
                   bool& reading_source, std::uint64_t min_lsn, bool snapshot_only) {
  // What was loaded, kept alive for the check on arrival.
  std::shared_ptr<const void> owner;
  const I* index = nullptr;
  std::uint64_t lsn = 0;
  FoldedCopy out;
  reading_source = true;
  if (snapshot_only) {
    auto alone = std::make_shared<std::optional<I>>();
    lsn = detail::Loader<I>{read_only(src), *alone}.load_snapshot()().last_lsn;
    index = &**alone;
    owner = alone;
  } else {
    refuse_dropping_unsynced_frames(src);
    auto loaded = std::make_shared<PersistedIndex<I>>(PersistedIndex<I>::load(read_only(src)));
    index = &loaded->index();
    lsn = loaded->last_lsn();
    out.records_folded = loaded->wal_stats().recovered_records;
    owner = loaded;
  }
  reading_source = false;
  const SnapshotInfo info{I::index_type, static_cast<std::uint64_t>(index->dim()), index->metric(),
                          static_cast<std::uint64_t>(index->size()), std::max(lsn, min_lsn)};
  out.written = write_snapshot(publisher, dst.path(), info, compression, true,
                               [&](PayloadWriter& w) { index->save_to(w); });
  out.check_arrival = [&dst, written = out.written, owner, index] { check_folded(dst, written, *index); };
  return out;
}

}  // namespace

void refuse_dropping_unsynced_frames(const Location& src) {
  if (is_rados(src.path().string())) return;
  const std::filesystem::path log = wal::log_path_for(src.path());
  if (!default_file_system().exists(log)) return;
  const wal::ScanResult scan =
      wal::scan_live_log(default_file_system(), log, [](const wal::RecordView&) {}, wal::ScanMode::Report);
  if (scan.unsynced_frames_dropped == 0) return;
  throw PersistError::at(
      ErrorKind::CorruptLog, log,
      std::to_string(scan.unsynced_frames_dropped) +
          " intact frames follow a damaged frame; no frame after them says they were made durable, but a sync(), "
          "a periodic fsync or a clean close may have (the log does not record those), so they may hold "
          "acknowledged writes: folding the log would drop them for good. See them with `iqdb-persist wal dump`; "
          "`iqdb-persist wal repair --yes` cuts them knowingly, then run this again",
      scan.valid_bytes);
}

Compression compression_of(const FileHeader& h) {
  switch (h.compression) {
    case CompressionScheme::Zstd: return Compression::zstd(3);
    case CompressionScheme::Lz4Block:
    case CompressionScheme::Lz4Frame: return Compression::lz4();
    default: return Compression::none();
  }
}

FoldedCopy fold_into(const Location& src, std::string_view index_type, const Location& dst, FileSystem& publisher,
                     const Compression& compression, bool& reading_source,
                     std::uint64_t min_lsn, bool snapshot_only) {
  std::optional<FoldedCopy> folded = with_index_type(index_type, [&]<class I>() {
    return fold_as<I>(src, dst, publisher, compression, reading_source, min_lsn, snapshot_only);
  });
  if (folded) return std::move(*folded);
  throw PersistError::at(ErrorKind::Unsupported, src.path(),
                         "copying the log needs the index type to apply its records; this build does not know '" +
                             printable(index_type) +
                             "' (checkpoint the source from a program that knows it, PersistedIndex::checkpoint, or "
                             "copy with --snapshot-only)");
}

}  // namespace iqdb::persist::cli
