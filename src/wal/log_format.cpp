// The write-ahead log header's encoder and decoders; layout and offsets in
// log_format.hpp, specification in docs/FORMAT.md ("Write-ahead log").
#include "wal/log_format.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "iqdb/persist/checksum.hpp"
#include "iqdb/persist/error.hpp"

namespace iqdb::persist::wal::format {

std::array<std::byte, kV2HeaderLen> encode_v2_header(std::uint64_t salt, std::uint64_t base_lsn) {
  std::array<std::byte, kV2HeaderLen> h{};
  std::byte* p = h.data();
  std::memcpy(p, MAGIC.data(), MAGIC.size());
  coding::store<std::uint32_t>(p + kVersionOffset, 2);
  coding::store<std::uint32_t>(p + kHeaderLenOffset, kV2HeaderLen);
  coding::store<std::uint64_t>(p + kSaltOffset, salt);
  coding::store<std::uint64_t>(p + kBaseLsnOffset, base_lsn);
  coding::store<std::uint32_t>(p + kRequiredFlagsOffset, 0);
  coding::store<std::uint32_t>(p + kHeaderCrcOffset, checksum::compute(p, kHeaderCrcOffset));
  return h;
}

namespace {

LogHeader decode_v2_header(std::span<const std::byte> first, std::uint64_t file_size,
                           const std::filesystem::path& path) {
  if (file_size < kV2HeaderLen) {
    throw PersistError::at(ErrorKind::TruncatedHeader, path, "the log ends inside its header");
  }
  const std::byte* p = first.data();
  const std::uint32_t stored = coding::get<std::uint32_t>(p + kHeaderCrcOffset);
  const std::uint32_t computed = checksum::compute(p, kHeaderCrcOffset);
  if (stored != computed) throw PersistError::checksum(path, stored, computed, kHeaderCrcOffset, "log header");
  if (coding::get<std::uint32_t>(p + kHeaderLenOffset) != kV2HeaderLen) {
    throw PersistError::at(ErrorKind::InvalidHeader, path, "unexpected log header length", kHeaderLenOffset);
  }
  const std::uint32_t required = coding::get<std::uint32_t>(p + kRequiredFlagsOffset);
  if ((required & ~kV2KnownRequiredFlags) != 0) {
    throw PersistError::at(ErrorKind::Unsupported, path, "the log needs features this build does not have",
                           kRequiredFlagsOffset);
  }
  LogHeader h;
  h.version = 2;
  h.salt = coding::get<std::uint64_t>(p + kSaltOffset);
  h.base_lsn = coding::get<std::uint64_t>(p + kBaseLsnOffset);
  h.len = kV2HeaderLen;
  return h;
}

}  // namespace

LogHeader decode_header(std::span<const std::byte> first, std::uint64_t file_size, const std::filesystem::path& path) {
  LogHeader h;
  const std::size_t have = std::min(first.size(), MAGIC.size());
  if (have > 0 && std::memcmp(first.data(), MAGIC.data(), have) != 0) {
    throw PersistError::at(ErrorKind::BadMagic, path, "not an iQDB write-ahead log (bad magic)", 0);
  }
  if (file_size < kV1HeaderLen) {
    // The reference: a log shorter than its header holds nothing committed.
    h.version = 1;
    h.len = file_size;
    return h;
  }
  h.version = coding::get<std::uint32_t>(first.data() + kVersionOffset);
  if (h.version == 1) {
    h.len = kV1HeaderLen;
    return h;
  }
  if (h.version != 2) {
    throw PersistError::at(ErrorKind::UnsupportedVersion, path,
                           "log format version " + std::to_string(h.version) + " (this build reads 1..2)",
                           kVersionOffset);
  }
  return decode_v2_header(first, file_size, path);
}

LogPeek peek(std::span<const std::byte> first) noexcept {
  const std::byte* b = first.data();
  const std::size_t got = first.size();
  LogPeek p;
  if (got < kV1HeaderLen) return p;
  const bool v2 = coding::get<std::uint32_t>(b + kVersionOffset) == 2;
  p.header_len = v2 ? kV2HeaderLen : kV1HeaderLen;
  if (v2 && got >= kV2HeaderLen) p.base_lsn = coding::get<std::uint64_t>(b + kBaseLsnOffset);
  const std::byte* frame = b + p.header_len;
  if (got >= p.header_len + kFrameHeaderLen) p.first_frame = kFrameHeaderLen + decode_frame_header(frame).len;
  if (v2 && got >= p.header_len + kFrameHeaderLen + kSyncedLsnOffset) {
    p.first_count = std::max<std::uint32_t>(1, coding::get<std::uint32_t>(frame + kFrameHeaderLen + kCountOffset));
  }
  return p;
}

std::uint32_t frame_crc_v2(std::uint64_t salt, std::uint32_t length, const std::byte* body) noexcept {
  checksum::Crc32 crc;
  crc.update(&salt, sizeof salt);
  crc.update(&length, sizeof length);
  crc.update(body, length);
  return crc.value();
}

}  // namespace iqdb::persist::wal::format
