// The record in NAME.head (internal): encoding, hostile-input decoding, and
// the CRC arithmetic the striped writer needs. No librados here, so it is
// tested without a cluster.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "iqdb/persist/rados.hpp"

namespace iqdb::persist::rados_detail {

inline constexpr std::uint64_t kMinStripe = 4096;
inline constexpr std::uint64_t kMaxStripe = std::uint64_t{128} << 20;  // osd_max_object_size
inline constexpr std::uint64_t kMaxStripes = 65536;
// The first bytes of a snapshot stay in memory until its file is closed
// (stripe_writer.cpp), so that write_snapshot's final header write (at
// offset 0) patches memory; a v3 header is at most 65536 bytes. The stripes
// wholly inside them are created last.
inline constexpr std::size_t kHold = 65536;
inline constexpr std::uint32_t kMinChunk = 4096;
inline constexpr std::uint32_t kMaxChunk = std::uint32_t{64} << 20;  // below osd_max_write_size (90 MB)
inline constexpr std::uint32_t kMaxInFlight = 64;
// Fixed part of the record (before the stripe CRCs) and the whole record's
// largest size.
inline constexpr std::size_t kHeadFixed = 64;
inline constexpr std::size_t kHeadMax = kHeadFixed + 4 * kMaxStripes + 4;
inline constexpr std::uint32_t kHeadVersion = 1;
inline constexpr char kHeadMagic[8] = {'I', 'Q', 'D', 'B', 'H', 'E', 'A', 'D'};
// The head object's attributes: the published generation (0: none yet) and
// the next generation a writer may take, each 16 lower-case hex digits.
inline constexpr const char* kGenAttr = "iqdb.gen";
inline constexpr const char* kNextAttr = "iqdb.next";
// Garbage collection's mark: every generation below it has no objects left
// (it is collected); heads are created with 1 (docs/DISTRIBUTED.md,
// "Writing", step 5).
inline constexpr const char* kCollectedAttr = "iqdb.collected";

// The published head, with the generation it replaced (0: none).
struct HeadRecord {
  RadosHead head;
  std::uint64_t previous_generation = 0;
};

std::vector<std::byte> encode_head(const HeadRecord& record);
// Decodes and checks a head record read from `object` (hostile bytes):
// TruncatedHeader, BadMagic, UnsupportedVersion, ChecksumMismatch (the
// record's CRC), InvalidHeader (lengths, counts, sizes out of range or
// inconsistent), each naming `object`.
HeadRecord decode_head(std::span<const std::byte> bytes, const std::filesystem::path& object);

// The checks decode_head makes on the geometry, for the writer too.
void check_geometry(std::uint64_t total_size, std::uint64_t stripe_size, std::uint64_t stripe_count,
                    const std::filesystem::path& object);

std::string encode_generation(std::uint64_t generation);
// nullopt unless exactly 16 lower-case hex digits.
std::optional<std::uint64_t> decode_generation(std::string_view text);

// `rados://POOL/NAME` checks on NAME: throws InvalidArgument.
void check_name(std::string_view name);

}  // namespace iqdb::persist::rados_detail
