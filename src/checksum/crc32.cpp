// CRC-32/ISO-HDLC through ISA-L's crc32_gzip_refl, which folds with
// carry-less multiplication (PCLMULQDQ / PMULL) and falls back to a table
// implementation on CPUs without it (ISA-L dispatches at run time).
#include "iqdb/persist/checksum.hpp"

#include <isa-l/crc.h>

namespace iqdb::persist::checksum {

std::uint32_t extend(std::uint32_t crc, const void* data, std::size_t size) noexcept {
  if (size == 0) return crc;
  return crc32_gzip_refl(crc, static_cast<const unsigned char*>(data), size);
}

std::uint32_t compute(const void* data, std::size_t size) noexcept { return extend(0, data, size); }

std::uint32_t compute(std::span<const std::byte> data) noexcept { return compute(data.data(), data.size()); }

bool verify(std::span<const std::byte> data, std::uint32_t expected) noexcept { return compute(data) == expected; }

}  // namespace iqdb::persist::checksum
