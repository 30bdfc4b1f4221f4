// 2 MiB pages: their size, and anonymous address space at a chosen
// position within 2 MiB (internal).
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>

namespace iqdb::persist::detail {

// The size of a transparent huge page on x86-64 (and of the page-cache
// folios a file may be mapped with).
inline constexpr std::size_t kHugePage = std::size_t{2} << 20;

// `bytes` rounded up to a whole number of 2 MiB pages. The caller keeps
// `bytes` at most SIZE_MAX - kHugePage + 1.
constexpr std::size_t round_up_to_huge(std::size_t bytes) noexcept { return (bytes + kHugePage - 1) & ~(kHugePage - 1); }

// `len` bytes of anonymous, read-write, private address space (extra mmap
// `flags`, such as MAP_NORESERVE) starting at an address equal to `phase`
// modulo 2 MiB, or nullptr. Linux backs memory, and maps a file's 2 MiB
// page-cache folios, with 2 MiB entries only where the address (and the
// file offset) sit on such a boundary: mapped 2 MiB larger, the ends cut
// off. (A large array: phase 0; a file's bytes at offset o: phase o.)
inline void* map_at_huge_phase(std::size_t len, std::uint64_t phase, int flags) noexcept {
  constexpr std::size_t kUnit = kHugePage;
  if (len > SIZE_MAX - kUnit) return nullptr;
  void* const raw = ::mmap(nullptr, len + kUnit, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto r = reinterpret_cast<std::uintptr_t>(raw);
  const std::size_t skip = (static_cast<std::size_t>(phase % kUnit) + kUnit - r % kUnit) % kUnit;
  auto* const base = static_cast<std::byte*>(raw) + skip;
  if (skip > 0) (void)::munmap(raw, skip);
  (void)::munmap(base + len, kUnit - skip);
  return base;
}

}  // namespace iqdb::persist::detail
