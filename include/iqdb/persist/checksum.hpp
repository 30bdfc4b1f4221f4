// CRC-32/ISO-HDLC (the zlib / gzip CRC): the checksum of iQDB files.
// Hardware accelerated (ISA-L, carry-less multiplication) where available.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace iqdb::persist::checksum {

// CRC-32 of `data` (equal to zlib's crc32(0, data, size)).
std::uint32_t compute(std::span<const std::byte> data) noexcept;
std::uint32_t compute(const void* data, std::size_t size) noexcept;

// Continue a CRC: extend(compute(a), b) == compute(a ++ b).
std::uint32_t extend(std::uint32_t crc, const void* data, std::size_t size) noexcept;

// Join two CRCs without reading the bytes again:
// combine(compute(a), compute(b), b.size()) == compute(a ++ b). For a caller
// that checksums the same bytes for two purposes (a stripe and the
// snapshot it belongs to): one pass, then a join per piece (zlib's
// crc32_combine: a few dozen carry-less steps, not a pass over the bytes).
std::uint32_t combine(std::uint32_t crc_a, std::uint32_t crc_b, std::uint64_t size_b) noexcept;

// True when compute(data) == expected.
bool verify(std::span<const std::byte> data, std::uint32_t expected) noexcept;

// Incremental CRC for streaming: update() any number of times, then value().
class Crc32 {
 public:
  void update(const void* data, std::size_t size) noexcept { crc_ = extend(crc_, data, size); }
  void update(std::span<const std::byte> data) noexcept { update(data.data(), data.size()); }
  // As update() with bytes whose own CRC is `crc` (compute(bytes)).
  void append_crc(std::uint32_t crc, std::uint64_t size) noexcept { crc_ = combine(crc_, crc, size); }
  std::uint32_t value() const noexcept { return crc_; }
  void reset() noexcept { crc_ = 0; }

 private:
  std::uint32_t crc_ = 0;
};

}  // namespace iqdb::persist::checksum
