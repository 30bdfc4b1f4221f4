// detail::allocate_array / free_array (large_allocator.hpp): large arrays
// of FlatIndex (ids, id table) in memory of their own, in 2 MiB pages where
// the kernel gives them.
#include "iqdb/persist/detail/large_allocator.hpp"

#include <sys/mman.h>

#include <cstdint>
#include <new>

namespace iqdb::persist::detail {
namespace {

constexpr std::size_t kHugePage = std::size_t{2} << 20;

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kMapLarge = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kMapLarge = false;
#else
constexpr bool kMapLarge = true;
#endif
#else
constexpr bool kMapLarge = true;
#endif

std::size_t mapped_length(std::size_t bytes) noexcept { return (bytes + kHugePage - 1) & ~(kHugePage - 1); }

void* map_aligned(std::size_t bytes) {
  if (bytes > SIZE_MAX - 2 * kHugePage) throw std::bad_alloc();
  const std::size_t len = mapped_length(bytes);
  // 2 MiB more than needed, then the ends cut off: the kernel backs only
  // 2 MiB-aligned ranges with huge pages.
  void* const raw = ::mmap(nullptr, len + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const auto r = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t a = (r + kHugePage - 1) & ~std::uintptr_t{kHugePage - 1};
  if (a > r) (void)::munmap(raw, a - r);
  const std::size_t tail = (r + len + kHugePage) - (a + len);
  if (tail > 0) (void)::munmap(reinterpret_cast<void*>(a + len), tail);
  // Advisory: without transparent huge pages the memory works in 4 KiB pages.
  (void)::madvise(reinterpret_cast<void*>(a), len, MADV_HUGEPAGE);
  return reinterpret_cast<void*>(a);
}

}  // namespace

bool array_is_mapped(std::size_t bytes) noexcept { return kMapLarge && bytes >= kLargeFrom; }

void* allocate_array(std::size_t bytes) {
  if (array_is_mapped(bytes)) return map_aligned(bytes);
  return ::operator new(bytes);
}

void free_array(void* p, std::size_t bytes) noexcept {
  if (p == nullptr) return;
  if (array_is_mapped(bytes)) {
    (void)::munmap(p, mapped_length(bytes));
  } else {
    ::operator delete(p);
  }
}

}  // namespace iqdb::persist::detail
