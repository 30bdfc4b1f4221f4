// Reference encoders of the on-disk formats, built byte by byte from the
// format documents: docs/FORMAT.md (snapshot versions 1 and
// 2, log version 1) and docs/FORMAT.md (snapshot version 3, log version 2).
//
// An independent model of the formats, for the format, corruption and
// garbage tests: nothing here calls the library's writers, its CRC or its
// codecs. CRCs come from zlib's crc32, compressed payloads from libzstd and
// liblz4 themselves (all linked to iqdb_test_support).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "iqdb/persist/types.hpp"
#include "support/test_util.hpp"

namespace iqdb::persist::test {

// ---------------------------------------------------------------- CRC

// zlib's crc32 (the reference CRC-32).
std::uint32_t zcrc(const std::byte* p, std::size_t n);
std::uint32_t zcrc(const std::vector<std::byte>& b);

// ---------------------------------------------------------------- snapshots, versions 1 and 2

// What the header says about the index (v1/v2 field set).
struct HeaderFields {
  std::string tag = "flat";
  std::uint64_t dim = 4;
  std::uint8_t metric = 2;  // Euclidean
  std::uint64_t n = 0;
};

// magic | version u32 | tag_len u64 | tag | dim u64 | metric u8 | n_vectors u64 | crc u32
std::vector<std::byte> v12_header(std::uint32_t version, const HeaderFields& f, std::uint32_t crc);
// Version 1: the payload verbatim, CRC over it.
std::vector<std::byte> v1_file(const HeaderFields& f, const std::vector<std::byte>& payload);
// Version 2: preamble (scheme u8, uncompressed_len u64) + stored bytes, CRC over both.
std::vector<std::byte> v2_region(std::uint8_t scheme, std::uint64_t ulen, const std::vector<std::byte>& stored);
std::vector<std::byte> v2_file(const HeaderFields& f, std::uint8_t scheme, std::uint64_t ulen,
                               const std::vector<std::byte>& stored);

// ---------------------------------------------------------------- snapshot version 3

// magic | version u32 | header_len u32 | required u32 | optional u32 | tag_len u32 | tag |
// dim u64 | metric u8 | compression u8 | n_vectors u64 | last_lsn u64 |
// uncompressed_len u64 | stored_len u64 | payload_crc u32 | header_crc u32
struct V3Fields {
  HeaderFields f;
  std::uint8_t compression = 0;
  std::uint64_t last_lsn = 0;
  std::uint64_t ulen = 0;
  std::uint64_t stored_len = 0;
  std::uint32_t payload_crc = 0;
  std::uint32_t required = 0;
  std::uint32_t optional = 0;
  // Hostile values; unset: the consistent one (78 + tag length; the tag's
  // length; zlib's CRC of the header bytes before it).
  std::optional<std::uint32_t> header_len;
  std::optional<std::uint32_t> tag_len;
  std::optional<std::uint32_t> header_crc;
};
std::vector<std::byte> v3_header(const V3Fields& v);
// A complete v3 file around `stored` with consistent lengths and payload CRC.
std::vector<std::byte> v3_file(V3Fields v, std::uint64_t ulen, const std::vector<std::byte>& stored);
// Recompute the v3 header CRC after editing header bytes.
void fix_v3_header_crc(std::vector<std::byte>& file);

// ---------------------------------------------------------------- the flat payload

// The flat payload layout (docs/FORMAT.md; FlatIndex::save_to):
// payload_version u32 = 1 | dim u64 | metric u8 | count u64 | id_encoding u8 |
//   encoding 0: count x u64 id;  encoding 1: count x (kind u8: 0 -> u64; 1 -> len u64 + bytes) |
// metadata record count u64 | per record: row u64 (ascending), entries u32,
//   per entry (ascending keys): key_len u32, key, value (tag u8; 0 String: len u32 + bytes;
//   1 Int i64; 2 Float f64; 3 Bool u8; 4 Null) |
// count x dim f32 (row-major).
struct FlatRow {
  VectorId id;
  std::vector<float> vec;
  std::optional<Metadata> meta;
};

// A metadata value: tag u8, then its bytes (as in the flat payload and the log's ops).
void put_value(Bytes& b, const Value& v);
// A tagged id: kind u8 (0: u64; 1: len u64 + bytes), as in the flat payload and the log's ops.
void put_id(Bytes& b, const VectorId& id);
std::vector<std::byte> flat_payload(std::uint64_t dim, std::uint8_t metric, const std::vector<FlatRow>& rows,
                                    bool tagged_ids);

// ---------------------------------------------------------------- compressors (the libraries themselves)

// zstd's streaming encoder (level 3): the frame header has no content size.
// The input is fed in pieces of 10,000 bytes (Pieces), or handed over whole
// with ZSTD_e_end (Whole: zstd then fits the window to it, as the
// reference's writer does for a payload it holds in memory).
enum class ZstdFeed { Pieces, Whole };
std::vector<std::byte> zstd_stream(const std::vector<std::byte>& in, bool with_checksum = false,
                                   ZstdFeed feed = ZstdFeed::Pieces);
// The LZ4 block format (no frame, no size prefix).
std::vector<std::byte> lz4_block(const std::vector<std::byte>& in);

// ---------------------------------------------------------------- write-ahead logs

// Version 1 (the reference's): "IQDBWAL\0", version u32 = 1; frames of
// length u32, CRC-32(body) u32, body.
std::vector<std::byte> v1_log_header();
std::vector<std::byte> v1_frame(const std::vector<std::byte>& body);
// Version 2: 40-byte header with its CRC; frames of length u32,
// CRC-32(salt u64, length u32, body) u32, body.
std::vector<std::byte> v2_log_header(std::uint64_t salt, std::uint64_t base_lsn, std::uint32_t required = 0);
std::vector<std::byte> v2_frame(std::uint64_t salt, const std::vector<std::byte>& body);

}  // namespace iqdb::persist::test
