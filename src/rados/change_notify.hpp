// Internal: read replicas woken by their writer through RADOS watch/notify
// (docs/DISTRIBUTED.md, "How replicas are woken"; the object is in
// docs/FORMAT.md's list). The writer notifies NAME.notify after each group
// commit that RADOS acknowledged and after each publish; a replica's
// background follower watches NAME.notify and catches up when notified. A
// notification carries nothing: the replica reads what RADOS holds, so a
// notification from anyone (a fenced writer, a hostile client) can only make
// it read sooner.
#pragma once

#include <rados/librados.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "iqdb/persist/detail/index_storage.hpp"
#include "iqdb/persist/rados.hpp"

namespace iqdb::persist::rados_detail {

// NAME.notify: an empty object, created by the first writer that notifies.
std::string notify_object(std::string_view name);

// The writer's side, one per store and name. changed() never waits: it
// marks a notification due and wakes the notifier thread, which sends one
// notify at a time (rados_notify2, synchronous in that thread) and coalesces
// every changed() made meanwhile into the next one. A notify waits at most
// `timeout` (whole seconds, librados's granularity) for the watchers' acks:
// a dead watcher holds the next notification back that long, never a
// commit. After a notify that no watcher received, the next one waits
// kQuietPeriod: without replicas, a writer sends about 4 notifies a second,
// not one per commit (a replica that starts watching meanwhile catches up
// when it registers, and may wait that long for its first notification).
// `gap` (RadosOptions::notify_gap) spaces notifies that reached a watcher.
class ChangeNotifier {
 public:
  static constexpr std::chrono::milliseconds kQuietPeriod{250};

  ChangeNotifier(rados_ioctx_t io, std::string oid, std::chrono::seconds timeout, std::chrono::milliseconds gap);
  ~ChangeNotifier();  // shutdown()
  ChangeNotifier(const ChangeNotifier&) = delete;
  ChangeNotifier& operator=(const ChangeNotifier&) = delete;

  // A commit became durable or a snapshot was published. Thread-safe.
  void changed() noexcept;
  // Stops the thread after the notify in flight (at most the time-out plus
  // an operation); changed() does nothing afterwards.
  void shutdown() noexcept;

 private:
  void run();
  // One notify; the number of watchers it reached (acked or timed out),
  // -1 when it failed.
  int notify_once();

  rados_ioctx_t io_;
  std::string oid_;
  std::uint64_t timeout_ms_;
  std::chrono::milliseconds gap_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool pending_ = false;
  bool stopped_ = false;
  // The thread waits for pending_: only then does changed() wake it (a
  // wake-up per commit during the quiet period would cost the writer a
  // futex call and the thread a context switch, for nothing).
  bool idle_ = false;
  std::thread thread_;  // started by the first changed()
};

// The notifier of NAME in `store` (made by the first call; rados_store.cpp).
std::shared_ptr<ChangeNotifier> notifier_of(RadosSnapshotStore& store, const std::string& name);

// The replica's side: a watch on `oid` that calls `wake` on each notify
// (acknowledging it at once) and on each error of the watch.
std::unique_ptr<detail::ChangeWatch> make_change_watch(rados_t cluster, rados_ioctx_t io, std::string oid,
                                                       std::function<void()> wake);

}  // namespace iqdb::persist::rados_detail
