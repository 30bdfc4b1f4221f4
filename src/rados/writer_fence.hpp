// Internal: what RadosWriterLock (writer_lock.cpp), RadosSnapshotStore
// (rados_store.cpp) and the log (rados_log.cpp) share: the store's librados
// handles, and the fence a held writer lock attaches to the store for one
// name, which every publish and every log append of that name checks
// (docs/DISTRIBUTED.md, "One writer, fenced").
#pragma once

#include <rados/librados.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "iqdb/persist/rados.hpp"

namespace iqdb::persist::rados_detail {

// Attributes of NAME.head: the fencing epoch (decimal, like iqdb.gen) of the
// writer that holds (or last held) the lock, and that writer's client
// address while it holds it (removed when it releases cleanly).
inline constexpr const char* kEpochAttr = "iqdb.epoch";
inline constexpr const char* kWriterAttr = "iqdb.writer";
// The cls_lock lock's name on NAME.head.
inline constexpr const char* kLockName = "iqdb.writer";
// Longest client address accepted from RADOS (an entity_addr_t as text).
inline constexpr std::size_t kMaxAddress = 256;

struct Fence {
  using Clock = std::chrono::steady_clock;
  std::uint64_t epoch = 0;
  bool refuse_locally = true;
  // Until when the lease is surely live on the OSD: the time the last
  // successful (re)lock was sent, plus the lease.
  std::atomic<Clock::rep> valid_until{0};
  std::atomic<bool> lost{false};
  mutable std::mutex mu;
  std::string reason;  // why it was lost (guarded by mu)

  // (Never throws: it runs on the renewer's thread. Out of memory leaves
  // the reason empty.)
  void mark_lost(std::string_view why) noexcept {
    std::lock_guard lock(mu);
    if (lost.exchange(true)) return;
    try {
      reason = why;
    } catch (...) {
    }
  }
  // Throws PersistError(Fenced) naming `where` when this writer may no
  // longer write (refuse_locally: lost, or its lease ran out unrenewed).
  void check(const std::filesystem::path& where);
  // The same check, whatever refuse_locally says.
  void enforce(const std::filesystem::path& where);
};

struct StoreHandles {
  rados_t cluster = nullptr;
  rados_ioctx_t io = nullptr;
};
StoreHandles handles_of(RadosSnapshotStore& store);
// One fence per name and store; attach replaces, detach removes `fence` if it
// is the one attached.
void attach_fence(RadosSnapshotStore& store, const std::string& name, std::shared_ptr<Fence> fence);
void detach_fence(RadosSnapshotStore& store, const std::string& name, const Fence* fence);
// The fence of a held lock (shared with the log it writes).
std::shared_ptr<Fence> fence_of(const RadosWriterLock& lock);
// The generation of NAME this thread's last open_read through the store
// opened (0: none); taken: a second call gives 0.
std::uint64_t last_read_generation(RadosSnapshotStore& store, const std::string& name);
// `rados://POOL/OBJECT`, for messages.
std::filesystem::path object_path(const RadosSnapshotStore& store, const std::string& object);
// A failed RADOS call `op` on `where` (r < 0): Fenced for a blocklisted
// client (ESHUTDOWN), else Io with the errno.
[[noreturn]] void throw_rados(const std::filesystem::path& where, std::string_view op, int r);

}  // namespace iqdb::persist::rados_detail
