// LargeAllocator (not a public API: the allocator of FlatIndex's id arrays
// and id table).
#pragma once

#include <cstddef>
#include <limits>
#include <new>

namespace iqdb::persist::detail {

// Arrays from this size on get memory of their own (below, the heap's).
inline constexpr std::size_t kLargeFrom = std::size_t{4} << 20;

// `bytes` of memory for an array. From kLargeFrom bytes on: an anonymous
// mapping of its own (zero-filled), 2 MiB-aligned and advised for
// transparent huge pages, so that the first touch of a large array costs
// one fault per 2 MiB instead of one per 4 KiB page (a 16 MiB id table: 8
// faults, not 4096; on a VM each 4 KiB fault costs microseconds:
// docs/PERFORMANCE.md, "Mapped load"). Below, and in a library built with
// AddressSanitizer (which checks heap memory only), the heap's. Throws
// std::bad_alloc. Decided inside the library, so that code built with other
// flags frees what it allocated the same way.
void* allocate_array(std::size_t bytes);
// Returns what allocate_array(bytes) gave.
void free_array(void* p, std::size_t bytes) noexcept;
// Whether allocate_array(bytes) maps (for tests).
bool array_is_mapped(std::size_t bytes) noexcept;

// A std::allocator over allocate_array.
template <class T>
class LargeAllocator {
 public:
  using value_type = T;
  static_assert(alignof(T) <= alignof(std::max_align_t), "the heap's alignment suffices");

  LargeAllocator() noexcept = default;
  template <class U>
  LargeAllocator(const LargeAllocator<U>&) noexcept {}  // NOLINT(google-explicit-constructor): allocator rebinding

  T* allocate(std::size_t n) {
    if (n > std::numeric_limits<std::size_t>::max() / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(allocate_array(n * sizeof(T)));
  }
  void deallocate(T* p, std::size_t n) noexcept { free_array(p, n * sizeof(T)); }
  template <class U>
  friend bool operator==(const LargeAllocator&, const LargeAllocator<U>&) noexcept {
    return true;
  }
};

}  // namespace iqdb::persist::detail
