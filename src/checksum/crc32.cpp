// CRC-32/ISO-HDLC through ISA-L's crc32_gzip_refl, which folds with
// carry-less multiplication (PCLMULQDQ / PMULL, VPCLMULQDQ on AVX-512 CPUs)
// and falls back to a table implementation on CPUs without it (ISA-L
// dispatches at run time).
#include "iqdb/persist/checksum.hpp"

#include <isa-l/crc.h>
#include <zlib.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace iqdb::persist::checksum {
namespace {

#if defined(__x86_64__)
// ISA-L's AVX-512 kernel returns with the upper halves of the vector
// registers still in use (no vzeroupper). Code compiled for SSE that runs
// next on the thread (Debian's FAISS and hnswlib, and most callers) then pays
// a state transition on every SSE instruction: about 3x slower. One
// vzeroupper after every call clears that state; it costs a cycle or so, and
// runs only on CPUs with AVX (where it exists). Registers 16-31 of AVX-512 do
// not matter: SSE code cannot name them, so they cause no transition.
__attribute__((target("avx"))) void clear_upper_halves() noexcept { _mm256_zeroupper(); }

bool cpu_has_avx() noexcept {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx") != 0;
  }();
  return has;
}
#endif

}  // namespace

std::uint32_t extend(std::uint32_t crc, const void* data, std::size_t size) noexcept {
  if (size == 0) return crc;
  const std::uint32_t result = crc32_gzip_refl(crc, static_cast<const unsigned char*>(data), size);
#if defined(__x86_64__)
  if (cpu_has_avx()) clear_upper_halves();
#endif
  return result;
}

std::uint32_t compute(const void* data, std::size_t size) noexcept { return extend(0, data, size); }

std::uint32_t compute(std::span<const std::byte> data) noexcept { return compute(data.data(), data.size()); }

std::uint32_t combine(std::uint32_t crc_a, std::uint32_t crc_b, std::uint64_t size_b) noexcept {
  // zlib's polynomial is ours (CRC-32/ISO-HDLC); crc32_combine64 takes the
  // length as a 64-bit offset.
  return static_cast<std::uint32_t>(crc32_combine64(crc_a, crc_b, static_cast<z_off64_t>(size_b)));
}

bool verify(std::span<const std::byte> data, std::uint32_t expected) noexcept { return compute(data) == expected; }

}  // namespace iqdb::persist::checksum
