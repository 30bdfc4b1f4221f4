// NAME.head's record: see docs/DISTRIBUTED.md for the layout.
#include "rados/head_record.hpp"

#include <cstring>

#include "iqdb/persist/checksum.hpp"
#include "iqdb/persist/error.hpp"
#include "util/coding.hpp"

namespace iqdb::persist::rados_detail {

std::vector<std::byte> encode_head(const HeadRecord& record) {
  const RadosHead& h = record.head;
  const std::size_t len = kHeadFixed + 4 * h.stripe_crcs.size() + 4;
  std::vector<std::byte> out(len);
  std::byte* p = out.data();
  std::memcpy(p, kHeadMagic, sizeof kHeadMagic);
  coding::store<std::uint32_t>(p + 8, kHeadVersion);
  coding::store<std::uint32_t>(p + 12, static_cast<std::uint32_t>(len));
  coding::store<std::uint32_t>(p + 16, 0);  // required flags
  coding::store<std::uint32_t>(p + 20, 0);  // reserved
  coding::store<std::uint64_t>(p + 24, h.generation);
  coding::store<std::uint64_t>(p + 32, record.previous_generation);
  coding::store<std::uint64_t>(p + 40, h.total_size);
  coding::store<std::uint64_t>(p + 48, h.stripe_size);
  coding::store<std::uint64_t>(p + 56, h.stripe_count);
  for (std::size_t i = 0; i < h.stripe_crcs.size(); ++i) coding::store<std::uint32_t>(p + kHeadFixed + 4 * i, h.stripe_crcs[i]);
  coding::store<std::uint32_t>(p + len - 4, checksum::compute(p, len - 4));
  return out;
}

void check_geometry(std::uint64_t total_size, std::uint64_t stripe_size, std::uint64_t stripe_count,
                    const std::filesystem::path& object) {
  const auto bad = [&](const std::string& why) { return PersistError::at(ErrorKind::InvalidHeader, object, why); };
  if (stripe_size < kMinStripe || stripe_size > kMaxStripe) {
    throw bad("stripe size " + std::to_string(stripe_size) + " is outside " + std::to_string(kMinStripe) + ".." +
              std::to_string(kMaxStripe));
  }
  if (stripe_count > kMaxStripes) {
    throw bad("stripe count " + std::to_string(stripe_count) + " exceeds " + std::to_string(kMaxStripes));
  }
  if (total_size == 0) throw bad("the snapshot is declared empty");
  // stripe_count <= 2^16 and stripe_size <= 2^27: no overflow.
  if (total_size > stripe_count * stripe_size || total_size <= (stripe_count - 1) * stripe_size) {
    throw bad("total size " + std::to_string(total_size) + " does not fill " + std::to_string(stripe_count) +
              " stripes of " + std::to_string(stripe_size) + " bytes");
  }
}

HeadRecord decode_head(std::span<const std::byte> bytes, const std::filesystem::path& object) {
  if (bytes.size() < kHeadFixed + 4) {
    throw PersistError::at(ErrorKind::TruncatedHeader, object,
                           "head record of " + std::to_string(bytes.size()) + " bytes, at least " +
                               std::to_string(kHeadFixed + 4) + " expected");
  }
  if (std::memcmp(bytes.data(), kHeadMagic, sizeof kHeadMagic) != 0) {
    throw PersistError::at(ErrorKind::BadMagic, object, "not an iqdb-persist head record (magic)", 0);
  }
  coding::ByteCursor in(bytes.subspan(sizeof kHeadMagic));
  std::uint32_t version = 0, record_len = 0, flags = 0, reserved = 0;
  (void)in.read(version);
  (void)in.read(record_len);
  if (version != kHeadVersion) {
    throw PersistError::at(ErrorKind::UnsupportedVersion, object,
                           "head record version " + std::to_string(version) + " (this build reads 1)", 8);
  }
  if (record_len != bytes.size()) {
    throw PersistError::at(ErrorKind::InvalidHeader, object,
                           "head record declares " + std::to_string(record_len) + " bytes, the object holds " +
                               std::to_string(bytes.size()),
                           12);
  }
  const std::uint32_t stored_crc = coding::get<std::uint32_t>(bytes.data() + bytes.size() - 4);
  const std::uint32_t crc = checksum::compute(bytes.first(bytes.size() - 4));
  if (crc != stored_crc) throw PersistError::checksum(object, stored_crc, crc, bytes.size() - 4, "head record");
  (void)in.read(flags);
  (void)in.read(reserved);
  if (flags != 0) {
    throw PersistError::at(ErrorKind::Unsupported, object, "head record has unknown required flags", 16);
  }
  HeadRecord r;
  (void)in.read(r.head.generation);
  (void)in.read(r.previous_generation);
  (void)in.read(r.head.total_size);
  (void)in.read(r.head.stripe_size);
  (void)in.read(r.head.stripe_count);
  if (r.head.generation == 0 || r.previous_generation >= r.head.generation) {
    throw PersistError::at(ErrorKind::InvalidHeader, object,
                           "generation " + std::to_string(r.head.generation) + " after " +
                               std::to_string(r.previous_generation));
  }
  check_geometry(r.head.total_size, r.head.stripe_size, r.head.stripe_count, object);
  if (bytes.size() != kHeadFixed + 4 * r.head.stripe_count + 4) {
    throw PersistError::at(ErrorKind::InvalidHeader, object,
                           "head record of " + std::to_string(bytes.size()) + " bytes for " +
                               std::to_string(r.head.stripe_count) + " stripes");
  }
  r.head.stripe_crcs.resize(static_cast<std::size_t>(r.head.stripe_count));
  for (std::uint32_t& c : r.head.stripe_crcs) (void)in.read(c);
  return r;
}

std::string encode_generation(std::uint64_t generation) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, generation >>= 4) s[static_cast<std::size_t>(i)] = kHex[generation & 15];
  return s;
}

std::optional<std::uint64_t> decode_generation(std::string_view text) {
  if (text.size() != 16) return std::nullopt;
  std::uint64_t v = 0;
  for (const char c : text) {
    std::uint64_t d = 0;
    if (c >= '0' && c <= '9') {
      d = static_cast<std::uint64_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      d = static_cast<std::uint64_t>(c - 'a') + 10;
    } else {
      return std::nullopt;
    }
    v = v << 4 | d;
  }
  return v;
}

void check_name(std::string_view name) {
  const auto bad = [&](const std::string& why) {
    return PersistError::argument("RADOS snapshot name '" + std::string(name) + "': " + why);
  };
  if (name.empty()) throw bad("empty");
  if (name.size() > 200) throw bad("longer than 200 bytes");
  if (name.front() == '.') throw bad("starts with '.' (reserved for saves in progress)");
  for (const char c : name) {
    if (c == '/') throw bad("contains '/'");
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) throw bad("contains a control character");
  }
}

}  // namespace iqdb::persist::rados_detail
