// detail::RwLock over a pthread rwlock that prefers writers (glibc).
#include "iqdb/persist/detail/rw_lock.hpp"

#include <pthread.h>

#include <new>

namespace iqdb::persist::detail {

namespace {
pthread_rwlock_t* native(std::byte* storage) noexcept { return std::launder(reinterpret_cast<pthread_rwlock_t*>(storage)); }
}  // namespace

RwLock::RwLock() noexcept {
  static_assert(sizeof(pthread_rwlock_t) <= kStorage, "RwLock::kStorage is too small for pthread_rwlock_t");
  static_assert(alignof(pthread_rwlock_t) <= alignof(long), "RwLock's storage is under-aligned");
  pthread_rwlockattr_t attr;
  pthread_rwlockattr_init(&attr);
#if defined(__GLIBC__)
  pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
  pthread_rwlock_init(new (storage_) pthread_rwlock_t, &attr);
  pthread_rwlockattr_destroy(&attr);
}
RwLock::~RwLock() { pthread_rwlock_destroy(native(storage_)); }

void RwLock::lock() noexcept { pthread_rwlock_wrlock(native(storage_)); }
bool RwLock::try_lock() noexcept { return pthread_rwlock_trywrlock(native(storage_)) == 0; }
void RwLock::unlock() noexcept { pthread_rwlock_unlock(native(storage_)); }
void RwLock::lock_shared() noexcept { pthread_rwlock_rdlock(native(storage_)); }
bool RwLock::try_lock_shared() noexcept { return pthread_rwlock_tryrdlock(native(storage_)) == 0; }
void RwLock::unlock_shared() noexcept { pthread_rwlock_unlock(native(storage_)); }

}  // namespace iqdb::persist::detail
