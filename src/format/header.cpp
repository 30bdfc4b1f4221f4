// Snapshot header encoding and parsing (format versions 1, 2 and 3): the one
// home of these layouts. Offsets in header.hpp; byte tables in
// docs/FORMAT.md, "Snapshot".
#include "format/header.hpp"

#include <algorithm>
#include <cstring>

#include "iqdb/persist/checksum.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/file_system.hpp"
#include "util/coding.hpp"

namespace iqdb::persist {

std::string_view to_string(CompressionScheme s) noexcept {
  switch (s) {
    case CompressionScheme::None: return "none";
    case CompressionScheme::Zstd: return "zstd";
    case CompressionScheme::Lz4Block: return "lz4";
    case CompressionScheme::Lz4Frame: return "lz4-frame";
  }
  return "unknown";
}

namespace format {
namespace {

using coding::ByteCursor;
namespace fs = std::filesystem;

[[noreturn]] void fail(ErrorKind kind, const fs::path& path, std::string detail,
                       std::optional<std::uint64_t> offset = std::nullopt) {
  throw PersistError::at(kind, path, std::move(detail), offset);
}

DistanceMetric parse_metric(std::uint8_t tag, const fs::path& path, std::uint64_t offset) {
  const auto m = metric_from_tag(tag);
  if (!m) fail(ErrorKind::InvalidMetric, path, "unknown metric tag " + std::to_string(tag), offset);
  return *m;
}

CompressionScheme parse_scheme(std::uint8_t tag, std::uint32_t version, const fs::path& path,
                               std::uint64_t offset) {
  const std::uint8_t max = version >= 3 ? 3 : 2;
  if (tag > max) {
    fail(ErrorKind::Compression, path,
         "unknown compression scheme " + std::to_string(tag) + " for format version " + std::to_string(version),
         offset);
  }
  return static_cast<CompressionScheme>(tag);
}

std::string parse_tag(ByteCursor& c, std::uint64_t len, const fs::path& path) {
  const std::uint64_t at = c.position();
  std::span<const std::byte> bytes;
  if (!c.read_bytes(static_cast<std::size_t>(len), bytes))
    fail(ErrorKind::TruncatedHeader, path, "the file ends inside the index-type tag", at);
  std::string tag(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  if (!coding::is_valid_utf8(tag)) fail(ErrorKind::InvalidHeader, path, "index-type tag is not valid UTF-8", at);
  return tag;
}

template <class T>
T need(ByteCursor& c, const fs::path& path, const char* what) {
  T v{};
  if (!c.read(v)) {
    fail(ErrorKind::TruncatedHeader, path, std::string("the file ends inside the header (") + what + ")",
         c.position());
  }
  return v;
}

FileHeader parse_v1_v2(ByteCursor& c, std::uint32_t version, std::uint64_t file_size, const fs::path& path) {
  FileHeader h;
  h.format_version = version;
  const std::uint64_t tag_at = c.position();
  const auto tag_len = need<std::uint64_t>(c, path, "tag length");
  if (tag_len > MAX_TAG_LEN) {
    fail(ErrorKind::InvalidHeader, path,
         "index-type tag length " + std::to_string(tag_len) + " exceeds " + std::to_string(MAX_TAG_LEN), tag_at);
  }
  h.index_type = parse_tag(c, tag_len, path);
  h.dim = need<std::uint64_t>(c, path, "dim");
  const std::uint64_t metric_at = c.position();
  h.metric = parse_metric(need<std::uint8_t>(c, path, "metric"), path, metric_at);
  h.n_vectors = need<std::uint64_t>(c, path, "n_vectors");
  h.payload_crc = need<std::uint32_t>(c, path, "crc32");
  h.crc_offset = c.position();
  if (version == 1) {
    h.payload_offset = h.crc_offset;
    h.compression = CompressionScheme::None;
    h.stored_len = file_size - h.payload_offset;
    h.uncompressed_len = h.stored_len;
    return h;
  }
  // Version 2: the 9-byte compression preamble opens the payload region.
  const std::uint64_t pre_at = c.position();
  std::uint8_t scheme = 0;
  std::uint64_t ulen = 0;
  if (!c.read(scheme) || !c.read(ulen)) {
    fail(ErrorKind::TruncatedPayload, path, "the file ends inside the compression preamble", pre_at);
  }
  // The preamble is covered by the payload CRC, not by a header CRC: an
  // unknown scheme is kept as is and refused by the reader, which checks the
  // CRC first to tell damage from a scheme this build does not know.
  (void)pre_at;
  h.compression = static_cast<CompressionScheme>(scheme);
  h.uncompressed_len = ulen;
  h.payload_offset = h.crc_offset + kV2PreambleLen;
  h.stored_len = file_size - h.payload_offset;
  return h;
}

// Read header_len and check the header's own CRC, before trusting any other
// field; returns header_len.
std::uint32_t check_v3_header(ByteCursor& c, std::span<const std::byte> prefix, std::uint64_t file_size,
                              const fs::path& path, std::uint32_t& stored_hcrc) {
  const auto header_len = need<std::uint32_t>(c, path, "header length");
  if (header_len < kV3Fixed + 1 || header_len > MAX_HEADER_LEN) {
    fail(ErrorKind::InvalidHeader, path, "header length " + std::to_string(header_len) + " is out of range",
         kV3HeaderLenOffset);
  }
  if (header_len > file_size || header_len > prefix.size()) {
    fail(ErrorKind::TruncatedHeader, path,
         "the header is " + std::to_string(header_len) + " bytes, the file only " + std::to_string(file_size));
  }
  // Check the header's own CRC before trusting any other field.
  const std::uint64_t hcrc_at = header_len - kV3HeaderCrcLen;
  stored_hcrc = coding::get<std::uint32_t>(prefix.data() + hcrc_at);
  const std::uint32_t hcrc = checksum::compute(prefix.data(), hcrc_at);
  if (stored_hcrc != hcrc) throw PersistError::checksum(path, stored_hcrc, hcrc, hcrc_at, "header");
  return header_len;
}

// The file must be exactly header_len + stored_len long.
void check_v3_payload_extent(const FileHeader& h, std::uint64_t header_len, std::uint64_t file_size,
                             const fs::path& path) {
  const std::uint64_t avail = file_size - header_len;
  if (h.stored_len > avail) {
    fail(ErrorKind::TruncatedPayload, path,
         "the header declares " + std::to_string(h.stored_len) + " payload bytes, the file holds " +
             std::to_string(avail),
         file_size);
  }
  if (h.stored_len < avail) {
    fail(ErrorKind::InvalidPayload, path,
         std::to_string(avail - h.stored_len) + " unexpected bytes after the payload",
         header_len + h.stored_len);
  }
}

FileHeader parse_v3(ByteCursor& c, std::span<const std::byte> prefix, std::uint64_t file_size,
                    const fs::path& path) {
  std::uint32_t stored_hcrc = 0;
  const std::uint32_t header_len = check_v3_header(c, prefix, file_size, path, stored_hcrc);
  FileHeader h;
  h.format_version = 3;
  h.header_crc = stored_hcrc;
  h.required_flags = need<std::uint32_t>(c, path, "required flags");
  h.optional_flags = need<std::uint32_t>(c, path, "optional flags");
  if ((h.required_flags & ~KNOWN_REQUIRED_FLAGS) != 0) {
    fail(ErrorKind::Unsupported, path,
         "the file needs features this build does not have (required flags 0x" +
             [](std::uint32_t v) {
               char b[16];
               std::snprintf(b, sizeof b, "%08x", v);
               return std::string(b);
             }(h.required_flags & ~KNOWN_REQUIRED_FLAGS) +
             ")",
         kV3RequiredFlagsOffset);
  }
  const auto tag_len = need<std::uint32_t>(c, path, "tag length");
  if (tag_len == 0 || tag_len > MAX_TAG_LEN || kV3Fixed + tag_len > header_len) {
    fail(ErrorKind::InvalidHeader, path, "index-type tag length " + std::to_string(tag_len) + " is out of range",
         kV3TagLenOffset);
  }
  h.index_type = parse_tag(c, tag_len, path);
  h.dim = need<std::uint64_t>(c, path, "dim");
  const std::uint64_t metric_at = c.position();
  h.metric = parse_metric(need<std::uint8_t>(c, path, "metric"), path, metric_at);
  const std::uint64_t scheme_at = c.position();
  h.compression = parse_scheme(need<std::uint8_t>(c, path, "compression"), 3, path, scheme_at);
  h.n_vectors = need<std::uint64_t>(c, path, "n_vectors");
  const std::uint64_t lsn_at = c.position();
  h.last_lsn = need<std::uint64_t>(c, path, "last_lsn");
  if (h.last_lsn > MAX_LSN) {
    fail(ErrorKind::InvalidHeader, path, "last_lsn " + std::to_string(h.last_lsn) + " is above the highest LSN, 2^63 - 1",
         lsn_at);
  }
  h.uncompressed_len = need<std::uint64_t>(c, path, "uncompressed_len");
  h.stored_len = need<std::uint64_t>(c, path, "stored_len");
  h.payload_crc = need<std::uint32_t>(c, path, "payload crc");
  // Bytes between here and the header CRC are extension fields of later
  // minor revisions: covered by the header CRC, ignored by this reader.
  h.crc_offset = header_len;
  h.payload_offset = header_len;
  check_v3_payload_extent(h, header_len, file_size, path);
  return h;
}

}  // namespace

std::uint64_t v3_header_len(std::uint64_t tag_len) noexcept { return kV3Fixed + tag_len; }
}  // namespace format

bool is_mappable(const FileHeader& h) noexcept {
  return h.format_version >= 3 && h.compression == CompressionScheme::None &&
         (h.optional_flags & format::OPTIONAL_FLAG_ALIGNED_BLOCK) != 0;
}

namespace format {

void check_scheme(const FileHeader& h, const fs::path& path) {
  // v2: the preamble's first byte; v3: the header field.
  const std::uint64_t at = h.format_version == 2 ? h.crc_offset
                                                 : kV3TagOffset + h.index_type.size() + kV3CompressionAfterTag;
  parse_scheme(static_cast<std::uint8_t>(h.compression), h.format_version, path, at);
}

std::vector<std::byte> write_header(const FileHeader& h) {
  if (h.format_version != 3) throw PersistError::argument("write_header writes format version 3 only");
  if (h.index_type.empty() || h.index_type.size() > MAX_TAG_LEN || !coding::is_valid_utf8(h.index_type)) {
    throw PersistError::argument("index type tag must be 1.." + std::to_string(MAX_TAG_LEN) +
                                 " bytes of valid UTF-8");
  }
  if (h.last_lsn > MAX_LSN) throw PersistError::argument("last_lsn is above the highest LSN, 2^63 - 1");
  // A tag no reader knows (an index type's metric() out of range) would be
  // written, and every load of the file refused (InvalidMetric).
  if (static_cast<std::uint8_t>(h.metric) > kMaxMetricTag) {
    throw PersistError::argument("the index's metric tag " + std::to_string(static_cast<unsigned>(h.metric)) +
                                 " is not a DistanceMetric (0.." + std::to_string(kMaxMetricTag) +
                                 "): the snapshot would not load");
  }
  const std::uint64_t len = v3_header_len(h.index_type.size());
  // Filled in place (vector::insert here trips a GCC 12 -O3 false positive).
  std::vector<std::byte> out(static_cast<std::size_t>(len));
  std::byte* p = out.data();
  std::memcpy(p, MAGIC.data(), MAGIC.size());
  coding::store<std::uint32_t>(p + kVersionOffset, 3);
  coding::store<std::uint32_t>(p + kV3HeaderLenOffset, static_cast<std::uint32_t>(len));
  coding::store<std::uint32_t>(p + kV3RequiredFlagsOffset, h.required_flags);
  coding::store<std::uint32_t>(p + kV3OptionalFlagsOffset, h.optional_flags);
  coding::store<std::uint32_t>(p + kV3TagLenOffset, static_cast<std::uint32_t>(h.index_type.size()));
  std::memcpy(p + kV3TagOffset, h.index_type.data(), h.index_type.size());
  std::byte* f = p + kV3TagOffset + h.index_type.size();
  coding::store<std::uint64_t>(f + kV3DimAfterTag, h.dim);
  coding::store<std::uint8_t>(f + kV3MetricAfterTag, static_cast<std::uint8_t>(h.metric));
  coding::store<std::uint8_t>(f + kV3CompressionAfterTag, static_cast<std::uint8_t>(h.compression));
  coding::store<std::uint64_t>(f + kV3NVectorsAfterTag, h.n_vectors);
  coding::store<std::uint64_t>(f + kV3LastLsnAfterTag, h.last_lsn);
  coding::store<std::uint64_t>(f + kV3UncompressedLenAfterTag, h.uncompressed_len);
  coding::store<std::uint64_t>(f + kV3StoredLenAfterTag, h.stored_len);
  coding::store<std::uint32_t>(f + kV3PayloadCrcAfterTag, h.payload_crc);
  const std::size_t hcrc_at = static_cast<std::size_t>(len) - kV3HeaderCrcLen;
  coding::store<std::uint32_t>(p + hcrc_at, checksum::compute(p, hcrc_at));
  return out;
}

FileHeader parse_header(std::span<const std::byte> prefix, std::uint64_t file_size, const fs::path& path) {
  if (prefix.size() > file_size) prefix = prefix.first(static_cast<std::size_t>(file_size));
  const std::size_t magic_have = std::min<std::size_t>(prefix.size(), MAGIC.size());
  if (magic_have > 0 && std::memcmp(prefix.data(), MAGIC.data(), magic_have) != 0) {
    fail(ErrorKind::BadMagic, path, "not an iQDB snapshot (bad magic)", 0);
  }
  if (prefix.size() < MAGIC.size()) fail(ErrorKind::TruncatedHeader, path, "the file ends inside the magic");
  ByteCursor c(prefix);
  c.skip(MAGIC.size());
  const auto version = need<std::uint32_t>(c, path, "version");
  if (version < MIN_READ_VERSION || version > CURRENT_VERSION) {
    fail(ErrorKind::UnsupportedVersion, path,
         "format version " + std::to_string(version) + " (this build reads 1.." + std::to_string(CURRENT_VERSION) + ")",
         kVersionOffset);
  }
  return version == 3 ? parse_v3(c, prefix, file_size, path) : parse_v1_v2(c, version, file_size, path);
}

FileHeader read_header(const ReadableFile& file) {
  const std::uint64_t size = file.size();
  std::vector<std::byte> prefix(static_cast<std::size_t>(std::min<std::uint64_t>(size, HEADER_PROBE_LEN)));
  const std::size_t got = file.read_at(0, prefix);
  prefix.resize(got);
  // A file that shrank since it was opened shows up as a short prefix: truncated.
  return parse_header(prefix, size, file.path());
}

}  // namespace format
}  // namespace iqdb::persist
