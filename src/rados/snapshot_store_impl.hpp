// RadosSnapshotStore's state (rados_store.cpp), shared with the stripe
// writer and reader that a save and a load go through (stripe_writer.cpp,
// stripe_reader.cpp): the cluster handles, the saves in progress, the
// writer fences, the replicas' notifiers and the garbage collector's thread.
// Internal: nothing outside src/rados includes it.
#pragma once

#include <rados/librados.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "iqdb/persist/detail/process_bound.hpp"
#include "iqdb/persist/rados.hpp"
#include "rados/change_notify.hpp"
#include "rados/writer_fence.hpp"

namespace iqdb::persist {

namespace rados_detail {
inline constexpr const char* kScheme = "rados://";
}  // namespace rados_detail

struct RadosSnapshotStore::Impl {
  // The process whose client this is: a child of fork() may not use it.
  detail::ProcessBound born;
  void refuse_if_inherited(std::string_view what) const { born.refuse_if_inherited(object_path(""), what); }
  rados_t cluster = nullptr;
  rados_ioctx_t io = nullptr;
  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    // Their threads use io: stopped first (the collections queued are run,
    // each notifier stops after its notify in flight).
    stop_collector();
    for (auto& [name, n] : notifiers) n->shutdown();
    if (io != nullptr) rados_ioctx_destroy(io);
    if (cluster != nullptr) rados_shutdown(cluster);
  }
  std::string pool;
  RadosOptions options;
  std::mutex mu;
  // Saves in progress or closed but not published, by temporary path.
  struct Pending {
    std::string name;
    std::uint64_t generation = 0;
    std::uint64_t previous = 0;
    std::uint64_t stripes_touched = 0;
    bool closed = false;
    std::uint64_t total = 0;
    std::vector<std::uint32_t> crcs;
  };
  std::map<std::string, Pending> pending;
  std::random_device random;
  // Writer locks held through this store, by name (writer_lock.cpp).
  std::map<std::string, std::shared_ptr<rados_detail::Fence>> fences;
  // The generation each thread's last open_read of each name opened (the
  // log that goes with the snapshot a load read: rados_storage.cpp). Per
  // thread, because loads through one store run at once (copies of one
  // config share it) and a load reads its snapshot on its own thread; the
  // entry is taken by that load's last_read_generation.
  std::map<std::pair<std::thread::id, std::string>, std::uint64_t> last_read;
  // Read replicas' wake-ups, by name (change_notify.hpp).
  std::map<std::string, std::shared_ptr<rados_detail::ChangeNotifier>> notifiers;

  // Garbage collection after publishes, on a thread of the store's own
  // (started by the first publish): rename() returns once the new head is
  // published, the superseded generation is removed behind it.
  // A publish's collection: the generations of `name` below `upto` (the
  // one it published), due once options.reader_grace has passed.
  struct Collection {
    std::string name;
    std::uint64_t upto = 0;
    std::chrono::steady_clock::time_point due;
    std::uint64_t seq = 0;
  };
  std::mutex gc_mu;
  std::condition_variable gc_cv;
  std::deque<Collection> gc_queue;  // in the order queued, which is the order due
  std::uint64_t gc_queued = 0;      // seq of the last one queued
  std::uint64_t gc_done = 0;        // every one up to this seq has run (or was dropped at the stop)
  bool gc_stop = false;
  std::thread gc_thread;

  // Queue the collection of what the publish of `name`'s generation `upto`
  // superseded. Where no thread can be had, collects here (without a grace
  // only: with one, the next publish collects).
  void schedule_collection(const std::string& name, std::uint64_t upto);
  // Blocks until the collections queued or running at the call have run
  // (not "until the queue is empty", which publishes that keep coming
  // would put off).
  void wait_collections() {
    std::unique_lock lock(gc_mu);
    const std::uint64_t need = gc_queued;
    gc_cv.wait(lock, [&] { return gc_done >= need; });
  }
  void stop_collector() noexcept {
    {
      std::lock_guard lock(gc_mu);
      gc_stop = true;
    }
    gc_cv.notify_all();
    if (gc_thread.joinable()) gc_thread.join();
  }
  void run_collector();

  std::shared_ptr<rados_detail::Fence> fence_of(const std::string& name) {
    std::lock_guard lock(mu);
    const auto it = fences.find(name);
    return it == fences.end() ? nullptr : it->second;
  }

  std::filesystem::path object_path(const std::string& object) const {
    return std::filesystem::path(rados_detail::kScheme + pool + "/" + object);
  }

  struct Parsed {
    std::string name;
    bool temp = false;
  };
  Parsed parse(const std::filesystem::path& path) const;

  [[noreturn]] void fail(const std::string& object, std::string_view op, int r) const {
    rados_detail::throw_rados(object_path(object), op, r);
  }

  // One attribute of `object`, nullopt when it (or the object) is absent;
  // longer than kMaxAddress bytes: InvalidHeader.
  std::optional<std::string> read_attr(const std::string& object, const char* attr);

  // The head's attributes: (published generation, next generation), or
  // nullopt when the head object does not exist.
  std::optional<std::pair<std::uint64_t, std::uint64_t>> read_counters(const std::string& name);

  // Take a generation number no other writer has or will get.
  std::pair<std::uint64_t, std::uint64_t> allocate(const std::string& name);

  void remove_object(const std::string& object);

  // Remove `objects`, up to max_in_flight at once (one after the other,
  // 16 stripes took ~80 ms on the test cluster); a missing one is no error.
  // Every removal is tried; the first failure is thrown once none is in
  // flight.
  void remove_objects(const std::vector<std::string>& objects);

  // Every stripe object NAME.snap.<gen>.<k> and every log object
  // NAME.log.<gen>.<k> of NAME: (generation, object name). Lists the pool.
  std::vector<std::pair<std::uint64_t, std::string>> list_stripes(const std::string& name);

  // The stripe and log objects of generation `gen` of NAME that exist,
  // found without listing the pool: each kind probed (aio stats,
  // max_in_flight at once) from index 0 until kProbeWindow indexes in a row
  // are missing. Each kind in descending index order: removed in that
  // order, a collection cut short leaves the lowest indexes and at most
  // kMaxInFlight missing among the highest left, which a later probe finds.
  std::vector<std::string> objects_of_generation(const std::string& name, std::uint64_t gen);
};

namespace rados_detail {

// A save's writer: the bytes of generation `generation` of `name`, striped as
// they come; `temp` is the save's temporary path (a key of store.pending).
std::unique_ptr<WritableFile> open_stripe_writer(RadosSnapshotStore::Impl& store, std::string name,
                                                 std::uint64_t generation, std::filesystem::path temp);

// A load's reader of the snapshot `head` describes, `path` naming it in errors.
std::unique_ptr<ReadableFile> open_stripe_reader(RadosSnapshotStore::Impl& store, std::string name, RadosHead head,
                                                 std::filesystem::path path);

}  // namespace rados_detail
}  // namespace iqdb::persist
