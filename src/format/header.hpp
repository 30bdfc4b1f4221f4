// Snapshot header layouts (internal): named offsets and sizes, and the one
// encoder (write_header, v3) and decoder (parse_header, v1-v3), in
// header.cpp. The byte tables and the reasons for each field are in
// docs/FORMAT.md, "Snapshot": "Versions 1 and 2" and "Version 3". What users
// see of a header (FileHeader, the version numbers) is in
// include/iqdb/persist/format.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

#include "iqdb/persist/format.hpp"

namespace iqdb::persist {
class ReadableFile;
}

namespace iqdb::persist::format {

// ---- Every version: magic, then the format version.
inline constexpr std::size_t kVersionOffset = 8;  // u32

// ---- Versions 1 and 2 (docs/FORMAT.md, "Versions 1 and 2"): read in field
// order by parse_header; the v2 payload region opens with a preamble.
inline constexpr std::uint64_t kV2PreambleLen = 9;  // scheme u8, uncompressed_len u64

// ---- Version 3 (docs/FORMAT.md, "Version 3").
inline constexpr std::size_t kV3HeaderLenOffset = 12;      // u32
inline constexpr std::size_t kV3RequiredFlagsOffset = 16;  // u32
inline constexpr std::size_t kV3OptionalFlagsOffset = 20;  // u32
inline constexpr std::size_t kV3TagLenOffset = 24;         // u32 N
inline constexpr std::size_t kV3TagOffset = 28;            // N bytes
// After the tag, offsets from its end:
inline constexpr std::size_t kV3DimAfterTag = 0;               // u64
inline constexpr std::size_t kV3MetricAfterTag = 8;            // u8
inline constexpr std::size_t kV3CompressionAfterTag = 9;       // u8
inline constexpr std::size_t kV3NVectorsAfterTag = 10;         // u64
inline constexpr std::size_t kV3LastLsnAfterTag = 18;          // u64
inline constexpr std::size_t kV3UncompressedLenAfterTag = 26;  // u64
inline constexpr std::size_t kV3StoredLenAfterTag = 34;        // u64
inline constexpr std::size_t kV3PayloadCrcAfterTag = 42;       // u32
inline constexpr std::size_t kV3HeaderCrcLen = 4;              // u32, the header's last 4 bytes
// The header without its tag (header_len >= kV3Fixed + N; the bytes between
// payload_crc and header_crc are extension fields of later minor revisions).
inline constexpr std::uint64_t kV3Fixed = kV3TagOffset + kV3PayloadCrcAfterTag + 4 + kV3HeaderCrcLen;
static_assert(kV3Fixed == 78, "docs/FORMAT.md: header_len = 78 + N");

// Size in bytes of the v3 header for an index-type tag of `tag_len` bytes.
std::uint64_t v3_header_len(std::uint64_t tag_len) noexcept;

// Encode a version-3 header (payload_crc, uncompressed_len, stored_len and
// last_lsn as given; header_crc computed). format_version must be 3.
std::vector<std::byte> write_header(const FileHeader& h);

// Parse a header of version 1, 2 or 3 from the first bytes of a file.
// `prefix` holds the first min(file_size, HEADER_PROBE_LEN) bytes. Checks the
// magic, version, tag length and UTF-8, metric tag, v3 header CRC, flags, and
// that the payload region fits the file. Throws PersistError naming `path`.
FileHeader parse_header(std::span<const std::byte> prefix, std::uint64_t file_size,
                        const std::filesystem::path& path);

// Throw PersistError(Compression) when the header's compression scheme is
// not one its format version defines. parse_header leaves this check to the
// reader for version 2, whose scheme byte is covered by the payload CRC (so
// that damage is reported as ChecksumMismatch).
void check_scheme(const FileHeader& h, const std::filesystem::path& path);

// Read and parse the header of an open file.
FileHeader read_header(const ReadableFile& file);

}  // namespace iqdb::persist::format
