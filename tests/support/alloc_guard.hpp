// Allocation accounting and address-space-capped children, for the tests that
// feed hostile bytes to the loaders (tests/corruption_*_test.cpp,
// tests/garbage_test.cpp; docs/reliability/corruption.md).
//
// Counting. A test executable that wants it expands
//
//   IQDB_TEST_COUNT_OPERATOR_NEW();
//
// once, at global namespace scope, in one of its source files. That replaces
// every form of the global operator new / delete of that executable (plain,
// array, nothrow, aligned, sized) with versions that forward to malloc /
// posix_memalign / free and keep count. An AllocGuard then measures what was
// allocated while it lived, by any thread:
//
//   test::AllocGuard g;
//   load(...);
//   EXPECT_LE(g.stats().peak_bytes, test::alloc_bound(file_size));
//
// What the counter does NOT see: memory taken with malloc / realloc directly
// (FlatIndex's float storage grows with realloc; the zstd and lz4 libraries
// allocate their contexts and windows with malloc), thread stacks and glibc's
// per-thread arenas (mmap). For those, run the case in a child whose address
// space is capped (run_capped): an allocation beyond the cap fails there
// instead of succeeding quietly.
//
// The replacement lives only in the executables that expand the macro; the
// rest of this file is linked into them alone (nothing else references it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <new>
#include <string>

namespace iqdb::persist::test {

// What an AllocGuard saw. Bytes are malloc_usable_size of each block (what
// the allocator really handed out).
struct AllocStats {
  std::size_t peak_bytes = 0;   // highest level of bytes outstanding, above the level at the guard's start
  std::size_t largest = 0;      // largest single request (including requests that failed)
  std::size_t allocations = 0;  // number of requests
};

// Measures operator-new allocations while alive. One at a time (not nested).
class AllocGuard {
 public:
  AllocGuard() noexcept;
  ~AllocGuard();
  AllocGuard(const AllocGuard&) = delete;
  AllocGuard& operator=(const AllocGuard&) = delete;

  AllocStats stats() const noexcept;

 private:
  std::size_t baseline_;
};

// True when this executable expanded IQDB_TEST_COUNT_OPERATOR_NEW() (checked
// by the tests so that a missing expansion cannot pass as "nothing allocated").
bool operator_new_is_counted() noexcept;

// The bound the corruption tests assert for one load (documented in
// docs/reliability/corruption.md): peak bytes outstanding and the largest
// single allocation are at most kAllocFactor times the bytes of input plus a
// fixed slack. The factor covers the in-memory size of legitimately decoded
// data, measured by the Dense* tests: a std::map node of ~104 bytes per
// metadata entry that takes 7 bytes on disk (~15x for a snapshot; ~32x while
// a log record is replayed, when the decoded record and the index's copy of
// it are alive at once), and the largest vector count the bounds checks
// accept (a 40-byte VectorId reserved per 5 bytes: 8x). The slack covers
// fixed buffers (the 64 KiB header probe, read windows, the decoders'
// buffers, the snapshot writer's 4 MiB buffer when a v1 log is folded) and,
// for compressed snapshots, the decoded length the expansion guard accepts
// (up to ReadLimits::max_expansion_ratio = 4096 times the stored bytes; the
// fixtures here are a few hundred bytes).
inline constexpr std::size_t kAllocFactor = 64;
inline constexpr std::size_t kAllocSlack = std::size_t{16} << 20;
inline constexpr std::size_t alloc_bound(std::size_t input_bytes) noexcept {
  return kAllocFactor * input_bytes + kAllocSlack;
}

// True when built with AddressSanitizer (which reserves terabytes of address
// space up front, so run_capped cannot cap it; alloc_guard.cpp then makes any
// single allocation above 1 GiB fail instead, through __asan_default_options).
bool address_sanitizer_active() noexcept;

// How a child process ended.
struct ChildOutcome {
  bool exited = false;  // normal exit (then `code`), else killed by `signal`
  int code = -1;
  int signal = 0;
  std::string describe() const;
};

// Run fn in a forked child with its address space capped at what the process
// maps now plus `extra_bytes` (RLIMIT_AS; not applied under AddressSanitizer,
// where single allocations above 1 GiB fail instead), and return how the
// child ended: exit code fn's return value, 97 if fn threw
// std::bad_alloc, 98 for any other exception. fn must report through its
// return value (and stderr), not through gtest assertions, which would be
// lost with the child.
ChildOutcome run_capped(std::size_t extra_bytes, const std::function<int()>& fn);

namespace alloc_detail {
// The replacement operator new / delete forward here.
void* allocate(std::size_t size, std::size_t align);                    // throws std::bad_alloc
void* allocate_nothrow(std::size_t size, std::size_t align) noexcept;  // nullptr on failure
void deallocate(void* p) noexcept;
}  // namespace alloc_detail

}  // namespace iqdb::persist::test

// Replaces the global operator new / delete of the executable (see the top of
// this file). Expand once, at global namespace scope, followed by ';'.
#define IQDB_TEST_COUNT_OPERATOR_NEW()                                                                     \
  namespace iqdb_alloc_guard_detail {                                                                     \
  namespace ad = ::iqdb::persist::test::alloc_detail;                                                     \
  }                                                                                                       \
  void* operator new(std::size_t n) { return iqdb_alloc_guard_detail::ad::allocate(n, 0); }               \
  void* operator new[](std::size_t n) { return iqdb_alloc_guard_detail::ad::allocate(n, 0); }             \
  void* operator new(std::size_t n, const std::nothrow_t&) noexcept {                                     \
    return iqdb_alloc_guard_detail::ad::allocate_nothrow(n, 0);                                           \
  }                                                                                                       \
  void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {                                   \
    return iqdb_alloc_guard_detail::ad::allocate_nothrow(n, 0);                                           \
  }                                                                                                       \
  void* operator new(std::size_t n, std::align_val_t a) {                                                 \
    return iqdb_alloc_guard_detail::ad::allocate(n, static_cast<std::size_t>(a));                         \
  }                                                                                                       \
  void* operator new[](std::size_t n, std::align_val_t a) {                                               \
    return iqdb_alloc_guard_detail::ad::allocate(n, static_cast<std::size_t>(a));                         \
  }                                                                                                       \
  void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {                 \
    return iqdb_alloc_guard_detail::ad::allocate_nothrow(n, static_cast<std::size_t>(a));                 \
  }                                                                                                       \
  void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {               \
    return iqdb_alloc_guard_detail::ad::allocate_nothrow(n, static_cast<std::size_t>(a));                 \
  }                                                                                                       \
  void operator delete(void* p) noexcept { iqdb_alloc_guard_detail::ad::deallocate(p); }                  \
  void operator delete[](void* p) noexcept { iqdb_alloc_guard_detail::ad::deallocate(p); }                \
  void operator delete(void* p, std::size_t) noexcept { iqdb_alloc_guard_detail::ad::deallocate(p); }     \
  void operator delete[](void* p, std::size_t) noexcept { iqdb_alloc_guard_detail::ad::deallocate(p); }   \
  void operator delete(void* p, const std::nothrow_t&) noexcept { iqdb_alloc_guard_detail::ad::deallocate(p); } \
  void operator delete[](void* p, const std::nothrow_t&) noexcept {                                       \
    iqdb_alloc_guard_detail::ad::deallocate(p);                                                           \
  }                                                                                                       \
  void operator delete(void* p, std::align_val_t) noexcept { iqdb_alloc_guard_detail::ad::deallocate(p); } \
  void operator delete[](void* p, std::align_val_t) noexcept { iqdb_alloc_guard_detail::ad::deallocate(p); } \
  void operator delete(void* p, std::size_t, std::align_val_t) noexcept {                                 \
    iqdb_alloc_guard_detail::ad::deallocate(p);                                                           \
  }                                                                                                       \
  void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {                               \
    iqdb_alloc_guard_detail::ad::deallocate(p);                                                           \
  }                                                                                                       \
  void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {                       \
    iqdb_alloc_guard_detail::ad::deallocate(p);                                                           \
  }                                                                                                       \
  void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {                     \
    iqdb_alloc_guard_detail::ad::deallocate(p);                                                           \
  }                                                                                                       \
  static_assert(true, "")
