#include "support/alloc_guard.hpp"

#include <malloc.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>

namespace iqdb::persist::test {

namespace {

// Constant-initialised: usable by allocations made before main().
constinit std::atomic<std::size_t> g_current{0};
constinit std::atomic<std::size_t> g_peak{0};
constinit std::atomic<std::size_t> g_largest{0};
constinit std::atomic<std::size_t> g_requests{0};
constinit std::atomic<bool> g_counted{false};

void raise_to(std::atomic<std::size_t>& a, std::size_t v) noexcept {
  std::size_t prev = a.load(std::memory_order_relaxed);
  while (v > prev && !a.compare_exchange_weak(prev, v, std::memory_order_relaxed)) {
  }
}

void* raw_allocate(std::size_t size, std::size_t align) noexcept {
  if (size == 0) size = 1;
  if (align <= alignof(std::max_align_t)) return std::malloc(size);
  void* p = nullptr;
  return ::posix_memalign(&p, align, size) == 0 ? p : nullptr;
}

// Address space mapped by this process now (bytes), from /proc/self/statm.
std::size_t mapped_bytes() {
  std::ifstream in("/proc/self/statm");
  std::size_t pages = 0;
  in >> pages;
  return pages * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

}  // namespace

namespace alloc_detail {

void* allocate(std::size_t size, std::size_t align) {
  void* p = allocate_nothrow(size, align);
  while (p == nullptr) {
    const std::new_handler h = std::get_new_handler();
    if (h == nullptr) throw std::bad_alloc();
    h();
    p = allocate_nothrow(size, align);
  }
  return p;
}

void* allocate_nothrow(std::size_t size, std::size_t align) noexcept {
  g_counted.store(true, std::memory_order_relaxed);
  g_requests.fetch_add(1, std::memory_order_relaxed);
  raise_to(g_largest, size);
  void* p = raw_allocate(size, align);
  if (p == nullptr) return nullptr;
  const std::size_t n = ::malloc_usable_size(p);
  raise_to(g_peak, g_current.fetch_add(n, std::memory_order_relaxed) + n);
  return p;
}

void deallocate(void* p) noexcept {
  if (p == nullptr) return;
  g_current.fetch_sub(::malloc_usable_size(p), std::memory_order_relaxed);
  std::free(p);
}

}  // namespace alloc_detail

AllocGuard::AllocGuard() noexcept : baseline_(g_current.load(std::memory_order_relaxed)) {
  g_peak.store(baseline_, std::memory_order_relaxed);
  g_largest.store(0, std::memory_order_relaxed);
  g_requests.store(0, std::memory_order_relaxed);
}

AllocGuard::~AllocGuard() = default;

AllocStats AllocGuard::stats() const noexcept {
  AllocStats s;
  const std::size_t peak = g_peak.load(std::memory_order_relaxed);
  s.peak_bytes = peak > baseline_ ? peak - baseline_ : 0;
  s.largest = g_largest.load(std::memory_order_relaxed);
  s.allocations = g_requests.load(std::memory_order_relaxed);
  return s;
}

bool operator_new_is_counted() noexcept { return g_counted.load(std::memory_order_relaxed); }

bool address_sanitizer_active() noexcept {
#if defined(__SANITIZE_ADDRESS__)
  return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  return true;
#else
  return false;
#endif
#else
  return false;
#endif
}

std::string ChildOutcome::describe() const {
  if (exited) return "exited with code " + std::to_string(code);
  return "killed by signal " + std::to_string(signal);
}

ChildOutcome run_capped(std::size_t extra_bytes, const std::function<int()>& fn) {
  std::fflush(nullptr);
  const std::size_t cap = mapped_bytes() + extra_bytes;
  const pid_t pid = ::fork();
  if (pid < 0) {
    std::perror("fork");
    std::abort();
  }
  if (pid == 0) {
    if (!address_sanitizer_active()) {
      const rlimit rl{cap, cap};
      if (::setrlimit(RLIMIT_AS, &rl) != 0) {
        std::perror("setrlimit");
        ::_exit(96);
      }
    }
    int code = 0;
    try {
      code = fn();
    } catch (const std::bad_alloc&) {
      code = 97;
    } catch (...) {
      code = 98;
    }
    std::fflush(nullptr);
    ::_exit(code);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      std::perror("waitpid");
      std::abort();
    }
  }
  ChildOutcome out;
  if (WIFEXITED(status)) {
    out.exited = true;
    out.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    out.signal = WTERMSIG(status);
  }
  return out;
}

}  // namespace iqdb::persist::test

#if defined(__SANITIZE_ADDRESS__)
// AddressSanitizer cannot run under an address-space cap (run_capped does not
// apply one there). Instead, in the executables that use this file, a single
// allocation above 1 GiB fails (malloc returns null, operator new throws
// std::bad_alloc) as it would under the cap, rather than succeeding or
// aborting the process. ASAN_OPTIONS from the environment still apply on top.
extern "C" __attribute__((visibility("default"), used)) const char* __asan_default_options() {
  return "allocator_may_return_null=1:max_allocation_size_mb=1024";
}
#endif
