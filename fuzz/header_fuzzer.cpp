// Fuzz target "header": format::parse_header (snapshot versions 1, 2, 3) on
// arbitrary bytes.
//
// Input: flags u8, then the first bytes of a file.
//   bit 0     recompute the v3 header CRC first (and the payload CRC of any
//             version), so that mutations reach the fields behind the CRC
//   bits 1-2  the file's size: the bytes given + 0, + 1, + 4096 or + 2^40
//             (parse_header sees a prefix of a larger file)
// Oracles: only PersistError escapes; a header that parses is consistent
// with the file (payload region inside it, v3: exactly to its end, flags,
// tag, metric and scheme in range); a v3 header without extension fields
// re-encodes byte for byte (write_header); read_header on an in-memory file
// of the same bytes agrees with parse_header.
#include "format/header.hpp"
#include "fuzz_support.hpp"

namespace iqdb::persist::fuzz {
namespace header_target {

bool same(const FileHeader& a, const FileHeader& b) {
  return a.format_version == b.format_version && a.index_type == b.index_type && a.dim == b.dim &&
         a.metric == b.metric && a.n_vectors == b.n_vectors && a.payload_crc == b.payload_crc &&
         a.compression == b.compression && a.uncompressed_len == b.uncompressed_len && a.stored_len == b.stored_len &&
         a.required_flags == b.required_flags && a.optional_flags == b.optional_flags && a.last_lsn == b.last_lsn &&
         a.header_crc == b.header_crc && a.crc_offset == b.crc_offset && a.payload_offset == b.payload_offset;
}

void check_consistent(const FileHeader& h, const Bytes& prefix, std::uint64_t file_size) {
  IQDB_FUZZ_CHECK(h.format_version >= 1 && h.format_version <= 3, std::to_string(h.format_version));
  IQDB_FUZZ_CHECK(h.crc_offset <= h.payload_offset && h.payload_offset <= file_size,
                  std::to_string(h.crc_offset) + " " + std::to_string(h.payload_offset));
  IQDB_FUZZ_CHECK(h.index_type.size() <= format::MAX_TAG_LEN, "tag too long");
  IQDB_FUZZ_CHECK(static_cast<std::uint8_t>(h.metric) <= kMaxMetricTag, "metric out of range");
  if (h.format_version != 3) {
    IQDB_FUZZ_CHECK(h.stored_len == file_size - h.payload_offset, "v1/v2 stored_len");
    if (h.format_version == 1) {
      IQDB_FUZZ_CHECK(h.compression == CompressionScheme::None && h.uncompressed_len == h.stored_len, "v1 lengths");
    }
    return;
  }
  IQDB_FUZZ_CHECK(h.payload_offset + h.stored_len == file_size, "v3 payload does not end at the end of the file");
  IQDB_FUZZ_CHECK((h.required_flags & ~format::KNOWN_REQUIRED_FLAGS) == 0, "unknown required flag accepted");
  IQDB_FUZZ_CHECK(!h.index_type.empty(), "empty v3 tag accepted");
  IQDB_FUZZ_CHECK(static_cast<std::uint8_t>(h.compression) <= 3, "v3 scheme out of range");
  if (h.payload_offset == format::v3_header_len(h.index_type.size())) {
    const Bytes again = format::write_header(h);
    IQDB_FUZZ_CHECK(again.size() == h.payload_offset && again.size() <= prefix.size() &&
                        std::memcmp(again.data(), prefix.data(), again.size()) == 0,
                    "write_header(parse_header(x)) != x");
  }
}

void run(std::span<const std::uint8_t> in) {
  if (in.empty()) return;
  const std::uint8_t flags = in[0];
  Bytes file = to_bytes(in.subspan(1));
  if ((flags & 1) != 0) fix_snapshot(file, /*crcs=*/true, /*lengths=*/false);
  static constexpr std::uint64_t kExtra[4] = {0, 1, 4096, std::uint64_t{1} << 40};
  const std::uint64_t file_size = file.size() + kExtra[(flags >> 1) & 3];
  const Bytes prefix(file.begin(), file.begin() + static_cast<std::ptrdiff_t>(
                                                      std::min<std::size_t>(file.size(), format::HEADER_PROBE_LEN)));
  std::optional<FileHeader> parsed;
  try {
    parsed = format::parse_header(prefix, file_size, "/fuzz/header");
  } catch (const PersistError&) {
  }
  if (parsed) check_consistent(*parsed, prefix, file_size);
  if (file_size != file.size()) return;

  // The same bytes as a file: read_header must agree.
  MemFileSystem mfs;
  mfs.put("/fuzz/header", file);
  std::optional<FileHeader> read;
  try {
    read = format::read_header(*mfs.open_read("/fuzz/header"));
  } catch (const PersistError&) {
  }
  IQDB_FUZZ_CHECK(parsed.has_value() == read.has_value(), "read_header and parse_header disagree on acceptance");
  if (parsed) IQDB_FUZZ_CHECK(same(*parsed, *read), "read_header and parse_header disagree on fields");
}

}  // namespace header_target

inline void run_header(std::span<const std::uint8_t> in) { header_target::run(in); }

}  // namespace iqdb::persist::fuzz

IQDB_FUZZ_ENTRY(iqdb::persist::fuzz::run_header)
