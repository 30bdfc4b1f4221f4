// Snapshot files: the non-template layer under PersistedIndex, and what the
// command-line tool's inspect and verify use.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string_view>

#include "iqdb/persist/config.hpp"
#include "iqdb/persist/format.hpp"
#include "iqdb/persist/io.hpp"

namespace iqdb::persist {

class FileSystem;

// What the header of a new snapshot says about the index.
struct SnapshotInfo {
  std::string_view index_type;
  std::uint64_t dim = 0;
  DistanceMetric metric = DistanceMetric::Euclidean;
  std::uint64_t n_vectors = 0;
  std::uint64_t last_lsn = 0;
  // Optional-flag bits the writer sets besides those the payload decides
  // (format::OPTIONAL_FLAG_SAVED_WITHOUT_WAL; the aligned-block bit is the
  // writer's own and is ignored here).
  std::uint32_t optional_flags = 0;
};

// Write a version-3 snapshot to `path`, atomically (see replace_file_atomically).
// `body` writes the index payload; it flows through the compressor and the
// CRC to the file in bounded buffers (never the whole payload in memory).
// `durable` = fsync the file and its directory. Returns the header written.
// `limits`: those the snapshot will be read with. A compressed payload that
// would expand beyond limits.max_expansion_ratio is stored uncompressed; one
// over limits.max_payload_bytes is refused (InvalidArgument, the previous
// file intact): nothing is written that the same limits refuse to load.
FileHeader write_snapshot(FileSystem& fs, const std::filesystem::path& path, const SnapshotInfo& info,
                          Compression compression, bool durable,
                          const std::function<void(PayloadWriter&)>& body, const ReadLimits& limits = {});

// Read the snapshot at `path` (format version 1, 2 or 3).
//
// Checks the header (and, when `expected_type` is not empty, that the file
// holds that index type: InvalidIndexType otherwise), then calls body(reader,
// header) to decode the payload in a single streaming pass. The payload is
// decoded as hostile input; the result counts only once the checksum over the
// whole payload region matches, the decoded length equals the declared one
// and body consumed all of it. When decoding fails and the checksum does not
// match either, the error reported is ChecksumMismatch.
//
// `map`: a mapped load. PayloadReader::map then hands the index blocks of
// an uncompressed payload in place (see MappedBlock), checksummed where
// they lie before this returns; and it fails (InvalidPayload) when the file
// was written to in place while it was read. Other files load as without.
FileHeader read_snapshot(FileSystem& fs, const std::filesystem::path& path, std::string_view expected_type,
                         const ReadLimits& limits,
                         const std::function<void(PayloadReader&, const FileHeader&)>& body, bool map = false);

// The header of a snapshot and the file's size, without reading the payload.
struct SnapshotSummary {
  FileHeader header;
  std::uint64_t file_size = 0;
};
SnapshotSummary inspect_snapshot(FileSystem& fs, const std::filesystem::path& path);

// Check a snapshot end to end without building the index: header, checksum,
// and that the payload decompresses to its declared length. Throws the
// PersistError describing the damage. `progress(done, total)` is called as
// stored bytes are checked (may be empty).
SnapshotSummary verify_snapshot(FileSystem& fs, const std::filesystem::path& path, const ReadLimits& limits,
                                const std::function<void(std::uint64_t, std::uint64_t)>& progress = {});

}  // namespace iqdb::persist
