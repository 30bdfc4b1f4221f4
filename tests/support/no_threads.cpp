// The pthread_create of support/no_threads.hpp. Not in the support library:
// linked only into the programs that list it, whose every thread it starts.
#include "support/no_threads.hpp"

#include <dlfcn.h>
#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace {
std::atomic<bool> g_no_threads{false};
std::atomic<long> g_refused{0};
}  // namespace

extern "C" int pthread_create(pthread_t* thread, const pthread_attr_t* attr, void* (*start)(void*),
                              void* arg) noexcept {
  using Create = int (*)(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);
  if (g_no_threads.load()) {
    g_refused.fetch_add(1);
    return EAGAIN;
  }
  static const Create real = [] {
    void* sym = ::dlsym(RTLD_NEXT, "pthread_create");
    Create f = nullptr;
    std::memcpy(&f, &sym, sizeof f);
    return f;
  }();
  return real(thread, attr, start, arg);
}

namespace iqdb::persist::test {

NoThreads::NoThreads() {
  g_refused.store(0);
  g_no_threads.store(true);
}
NoThreads::~NoThreads() { g_no_threads.store(false); }
long NoThreads::refused() const { return g_refused.load(); }

}  // namespace iqdb::persist::test
