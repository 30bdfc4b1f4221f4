// Snapshot file headers: versions 1 and 2 (read) and 3 (read and write).
// docs/FORMAT.md documents every byte and the reasons for each field.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "iqdb/persist/types.hpp"

namespace iqdb::persist {

// Compression schemes of the payload region. On-disk tags: never renumber.
enum class CompressionScheme : std::uint8_t {
  None = 0,
  Zstd = 1,      // one standard zstd frame (content size optional)
  Lz4Block = 2,  // one LZ4 block, no frame (written by the reference 1.0; read only)
  Lz4Frame = 3,  // one standard LZ4 frame (v3 only; what this library writes for Lz4)
};

std::string_view to_string(CompressionScheme s) noexcept;  // "none", "zstd", "lz4", "lz4-frame"

namespace format {

inline constexpr std::array<char, 8> MAGIC = {'I', 'Q', 'D', 'B', 'P', 'R', 'S', 'T'};
// The version this library writes.
inline constexpr std::uint32_t CURRENT_VERSION = 3;
inline constexpr std::uint32_t MIN_READ_VERSION = 1;
// Longest index-type tag accepted (bytes).
inline constexpr std::uint64_t MAX_TAG_LEN = 4096;
// The highest LSN: a snapshot header claiming more is refused, and a write
// that would log past it is refused before anything is logged (LSNs never
// wrap; at a billion writes a second this is 292 years).
inline constexpr std::uint64_t MAX_LSN = (std::uint64_t{1} << 63) - 1;
// Largest v3 header accepted (bytes). Bounds what is read before the header CRC is checked.
inline constexpr std::uint32_t MAX_HEADER_LEN = 64 * 1024;
// Bytes read from the start of a file to parse any header.
inline constexpr std::size_t HEADER_PROBE_LEN = MAX_HEADER_LEN;
// v3 required-flag bits this build understands (none yet). A file with any
// other required bit set is refused with ErrorKind::Unsupported.
inline constexpr std::uint32_t KNOWN_REQUIRED_FLAGS = 0;
// v3 optional-flag bits (hints a reader may ignore; docs/FORMAT.md, "Version 3").
// Bit 0: the payload's large block (FlatIndex: the vectors) starts at a file
// offset that is a multiple of 4096, and the payload is stored uncompressed,
// so a mapped load can use it in place.
inline constexpr std::uint32_t OPTIONAL_FLAG_ALIGNED_BLOCK = 1u << 0;
// Bit 1: written by a save without the WAL, which keeps the LSN its files
// had (PersistedIndex::save). The contents may differ from the state a
// writer with the WAL or a read replica knew by this last_lsn, so a writer
// with the WAL that loads such a snapshot writes it again one LSN higher
// before it logs (docs/FORMAT.md, "Saves without the WAL").
inline constexpr std::uint32_t OPTIONAL_FLAG_SAVED_WITHOUT_WAL = 1u << 1;

}  // namespace format

// A parsed snapshot header, whatever its version.
struct FileHeader {
  std::uint32_t format_version = format::CURRENT_VERSION;
  std::string index_type;
  std::uint64_t dim = 0;
  DistanceMetric metric = DistanceMetric::Euclidean;
  std::uint64_t n_vectors = 0;
  // Checksum of the payload region (v1: payload; v2: preamble + payload; v3: stored payload).
  std::uint32_t payload_crc = 0;
  CompressionScheme compression = CompressionScheme::None;
  // Decoded payload length (v1: the payload region's length).
  std::uint64_t uncompressed_len = 0;
  // Stored (possibly compressed) payload bytes.
  std::uint64_t stored_len = 0;
  // v3 only (0 for v1/v2).
  std::uint32_t required_flags = 0;
  std::uint32_t optional_flags = 0;
  std::uint64_t last_lsn = 0;  // last log sequence number folded into this snapshot
  std::uint32_t header_crc = 0;
  // Layout, derived when parsing / encoding:
  std::uint64_t crc_offset = 0;      // first byte covered by payload_crc
  std::uint64_t payload_offset = 0;  // first stored payload byte
};

// Whether a mapped load (PersistConfig::map_snapshot) can use this file's
// vector block in place: version 3, uncompressed, aligned-block flag set.
// Other files load by copying, with or without the option.
bool is_mappable(const FileHeader& h) noexcept;

}  // namespace iqdb::persist
