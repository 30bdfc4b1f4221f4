// detail::allocate_array / free_array (large_allocator.hpp): large arrays
// of FlatIndex (ids, id table) in memory of their own, in 2 MiB pages where
// the kernel gives them.
#include "iqdb/persist/detail/large_allocator.hpp"

#include "util/huge_phase.hpp"

#include <sys/mman.h>

#include <cstdint>
#include <new>

namespace iqdb::persist::detail {
namespace {

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

std::size_t mapped_length(std::size_t bytes) noexcept { return round_up_to_huge(bytes); }

void* map_aligned(std::size_t bytes) {
  if (bytes > SIZE_MAX - 2 * kHugePage) throw std::bad_alloc();
  const std::size_t len = mapped_length(bytes);
  void* const p = map_at_huge_phase(len, 0, 0);
  if (p == nullptr) throw std::bad_alloc();
  // Advisory: without transparent huge pages the memory works in 4 KiB pages.
  (void)::madvise(p, len, MADV_HUGEPAGE);
  return p;
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
