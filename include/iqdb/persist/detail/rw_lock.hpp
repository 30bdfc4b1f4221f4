// A reader-writer lock that lets a waiting writer in ahead of new readers.
// (std::shared_mutex on glibc prefers readers: a steady stream of searches
// would starve every mutation and checkpoint.) Meets the SharedMutex
// requirements, so std::unique_lock and std::shared_lock work with it.
//
// The platform lock (a pthread rwlock) lives in opaque storage, defined in
// src/util/rw_lock.cpp, so that this header pulls in no system header.
#pragma once

#include <cstddef>

namespace iqdb::persist::detail {

class RwLock {
 public:
  RwLock() noexcept;
  ~RwLock();
  RwLock(const RwLock&) = delete;
  RwLock& operator=(const RwLock&) = delete;

  void lock() noexcept;
  bool try_lock() noexcept;
  void unlock() noexcept;
  void lock_shared() noexcept;
  bool try_lock_shared() noexcept;
  void unlock_shared() noexcept;

 private:
  // Room for a pthread_rwlock_t (56 bytes on 64-bit glibc and musl, 32 on
  // 32-bit); rw_lock.cpp checks that it fits.
  static constexpr std::size_t kStorage = 64;
  alignas(alignof(long)) std::byte storage_[kStorage];
};

}  // namespace iqdb::persist::detail
