// detail::FloatBuffer: a FlatIndex's vectors, one contiguous block (heap,
// own anonymous mapping, or a mapped snapshot's bytes), and its touched
// reserve: a process-wide worker thread that faults the block's next rows in
// ahead of the appends (docs/PERFORMANCE.md, "The touched reserve";
// docs/API.md, FlatIndex memory).
#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <thread>

#include "iqdb/persist/flat_index.hpp"
#include "util/huge_phase.hpp"

namespace iqdb::persist {
namespace detail {

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

namespace {
constexpr std::size_t kPage = 4096;
// Blocks from this size on are their own mapping (the worker's reach);
// smaller ones stay on the heap.
constexpr std::size_t kMapFrom = std::size_t{256} << 10;
// Mappings from this size on that are filled at once (a load, a copy) are
// advised for huge pages; smaller ones, and those grown by appends, are not
// (reallocate()).
constexpr std::size_t kHugeFrom = 2 * kHugePage;
constexpr std::size_t kMaxReserve = std::size_t{64} << 20;
// The fallback's mlock pieces: RLIMIT_MEMLOCK was 64 KiB by default before 5.16.
constexpr std::size_t kLockPiece = std::size_t{64} << 10;
// The worker thread exits after this long without work.
constexpr auto kWorkerIdle = std::chrono::seconds(1);
}  // namespace

// ---------------------------------------------------------------- touched reserve

// One block as the worker sees it. Every field is guarded by Prefaulter::mu.
// Offsets are bytes from base; they stay valid across an mremap (the pages
// move with the mapping).
struct FloatBuffer::PrefaultSlot {
  char* base = nullptr;    // null: detached, the worker drops the slot
  std::size_t limit = 0;   // bytes of the mapping
  std::size_t done = 0;    // [0, done) populated (or written by the owner)
  std::size_t target = 0;  // populate up to here (<= limit)
  bool queued = false;
};

namespace {

using Slot = FloatBuffer::PrefaultSlot;

std::atomic<bool> g_enabled{true};
std::atomic<bool> g_force_fallback{false};
std::atomic<bool> g_no_populate_write{false};  // the kernel said EINVAL once
std::atomic<bool> g_forked{false};             // a child of fork(): no worker here
std::atomic<prefault::Observer> g_observer{nullptr};
std::atomic<std::uint64_t> g_populated{0};

// Fault [addr, addr + len) in for writing without touching it from user
// space (no data race with the owner's appends into the same pages). Errors
// leave the pages to the owner's first touch.
void populate(char* addr, std::size_t len) {
  if (const prefault::Observer f = g_observer.load(std::memory_order_acquire)) f(addr, len);
  if (!g_force_fallback.load(std::memory_order_relaxed) && !g_no_populate_write.load(std::memory_order_relaxed)) {
    if (::madvise(addr, len, MADV_POPULATE_WRITE) == 0) {
      g_populated.fetch_add(len, std::memory_order_relaxed);
      return;
    }
    if (errno != EINVAL) return;
    g_no_populate_write.store(true, std::memory_order_relaxed);
  }
  // Before Linux 5.14: mlock faults a private writable range in for writing
  // (as a write would), munlock lets it go.
  for (std::size_t at = 0; at < len; at += kLockPiece) {
    const std::size_t n = std::min(kLockPiece, len - at);
    if (::mlock(addr + at, n) != 0) return;
    (void)::munlock(addr + at, n);
  }
  g_populated.fetch_add(len, std::memory_order_relaxed);
}

// The process-wide worker: a queue of slots, served round-robin one huge
// page (2 MiB) of populate at a time, the lock released during the call.
struct Prefaulter {
  std::mutex mu;
  std::condition_variable work_cv;  // work queued, or stop
  std::condition_variable idle_cv;  // a populate call returned, or the queue drained
  std::deque<std::shared_ptr<Slot>> queue;
  std::atomic<const Slot*> busy{nullptr};  // the slot of the call in flight (written under mu)
  bool running = false;
  bool stop = false;
  std::thread thread;

  // Under mu.
  void request(const std::shared_ptr<Slot>& s) {
    if (!s->queued) {
      s->queued = true;
      queue.push_back(s);
    }
    if (!running && !stop) {
      if (thread.joinable()) thread.join();  // exited when idle (it no longer needs mu)
      try {
        thread = std::thread([this] { run(); });
        running = true;
      } catch (...) {
        drop_all();
      }
    }
    work_cv.notify_one();
  }

  // Under mu: until the worker's call on `s` (if any) has returned.
  void wait_not_busy(std::unique_lock<std::mutex>& lk, const Slot* s) {
    idle_cv.wait(lk, [&] { return busy.load(std::memory_order_relaxed) != s; });
  }

  void drop_all() {
    for (const auto& s : queue) s->queued = false;
    queue.clear();
    idle_cv.notify_all();
  }

  void run() {
    std::unique_lock lk(mu);
    while (!stop) {
      if (queue.empty()) {
        idle_cv.notify_all();
        if (!work_cv.wait_for(lk, kWorkerIdle, [&] { return stop || !queue.empty(); })) break;
        continue;
      }
      const std::shared_ptr<Slot> s = queue.front();
      queue.pop_front();
      if (s->base == nullptr || s->done >= s->target) {
        s->queued = false;
        continue;
      }
      // The rest of the huge page that holds `done`, in whole pages.
      const std::size_t from = s->done & ~(kPage - 1);
      const std::size_t to = std::min(s->target, (s->done / kHugePage + 1) * kHugePage);
      const std::size_t end = std::min(s->limit, (to + kPage - 1) & ~(kPage - 1));
      char* const addr = s->base + from;
      busy.store(s.get(), std::memory_order_relaxed);
      lk.unlock();
      populate(addr, end - from);
      lk.lock();
      busy.store(nullptr, std::memory_order_relaxed);
      s->done = std::max(s->done, to);
      idle_cv.notify_all();
      if (s->base != nullptr && s->done < s->target) {
        queue.push_back(s);  // round-robin between blocks
      } else {
        s->queued = false;
      }
    }
    running = false;
    if (stop) drop_all();
    idle_cv.notify_all();
  }
};

Prefaulter* g_prefaulter = nullptr;

// fork(): the fork waits for the call in flight (if any) and holds the lock
// across; the child gets fresh state (the old one, whose lock the forking
// thread holds, is left behind) and never starts a worker: a child of a
// threaded process may not be able to start threads (ThreadSanitizer
// refuses; POSIX allows only async-signal-safe calls), and the crash tests'
// children write. Its appends touch their pages themselves.
void fork_prepare() {
  std::unique_lock lk(g_prefaulter->mu);
  g_prefaulter->idle_cv.wait(lk, [] { return g_prefaulter->busy.load(std::memory_order_relaxed) == nullptr; });
  lk.release();
}
void fork_parent() { g_prefaulter->mu.unlock(); }
void fork_child() {
  for (const auto& s : g_prefaulter->queue) s->queued = false;
  g_prefaulter = new Prefaulter;  // NOLINT: the old one stays (its thread does not exist here)
  g_prefaulter->stop = true;
  g_forked.store(true, std::memory_order_relaxed);
}

// At exit: the thread is stopped and joined (blocks still released later
// find no thread).
struct Reaper {
  Reaper() = default;
  Reaper(const Reaper&) = delete;
  Reaper& operator=(const Reaper&) = delete;
  ~Reaper() {
    Prefaulter& p = *g_prefaulter;
    std::unique_lock lk(p.mu);
    p.stop = true;
    p.work_cv.notify_all();
    std::thread t = std::move(p.thread);
    lk.unlock();
    if (t.joinable()) t.join();
  }
};

Prefaulter& prefaulter() {
  static Prefaulter* const created = [] {
    g_prefaulter = new Prefaulter;
    (void)::pthread_atfork(fork_prepare, fork_parent, fork_child);
    return g_prefaulter;
  }();
  (void)created;
  static Reaper reaper;
  return *g_prefaulter;
}

}  // namespace

namespace prefault {
void set_enabled(bool on) noexcept { g_enabled.store(on, std::memory_order_relaxed); }
bool enabled() noexcept { return g_enabled.load(std::memory_order_relaxed); }
void wait_idle() {
  Prefaulter& p = prefaulter();
  std::unique_lock lk(p.mu);
  p.idle_cv.wait(lk, [&] { return (p.queue.empty() || !p.running) && p.busy.load(std::memory_order_relaxed) == nullptr; });
}
bool running() {
  Prefaulter& p = prefaulter();
  const std::lock_guard lk(p.mu);
  return p.running;
}
void set_observer(Observer f) noexcept { g_observer.store(f, std::memory_order_release); }
void force_fallback(bool on) noexcept { g_force_fallback.store(on, std::memory_order_relaxed); }
std::uint64_t populated_bytes() noexcept { return g_populated.load(std::memory_order_relaxed); }
}  // namespace prefault

std::size_t FloatBuffer::prefault_reserve(std::size_t used_bytes) noexcept {
  return std::clamp(used_bytes / 8, kHugePage, kMaxReserve);
}

// Ask the worker for the reserve ahead of the end when less than half of it
// is asked for (so the lock is taken about once per reserve / 2 of appends).
void FloatBuffer::prefault_ahead() noexcept {
  if (!own_mapping() || !g_enabled.load(std::memory_order_relaxed) || g_forked.load(std::memory_order_relaxed)) return;
  const std::size_t used = size_ * sizeof(float);
  const std::size_t r = prefault_reserve(used);
  if (asked_ >= std::min(mapped_, used + r / 2)) return;
  const std::size_t want = std::min(mapped_, used + r);
  try {
    if (!slot_) slot_ = std::make_shared<PrefaultSlot>();
    Prefaulter& p = prefaulter();
    const std::lock_guard lk(p.mu);
    slot_->base = reinterpret_cast<char*>(p_);
    slot_->limit = mapped_;
    slot_->done = std::max(slot_->done, used);  // the owner wrote below
    slot_->target = want;
    p.request(slot_);
    asked_ = want;
  } catch (...) {
    // No worker: the appends touch the pages themselves, as without one.
  }
}

FloatBuffer::FloatBuffer(const FloatBuffer& o) {
  resize(o.size_);
  if (size_ > 0) std::memcpy(p_, o.p_, size_ * sizeof(float));
}

FloatBuffer& FloatBuffer::operator=(const FloatBuffer& o) {
  if (this != &o) {
    FloatBuffer copy(o);
    *this = std::move(copy);
  }
  return *this;
}

FloatBuffer::FloatBuffer(FloatBuffer&& o) noexcept
    : p_(std::exchange(o.p_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      cap_(std::exchange(o.cap_, 0)),
      mapped_(std::exchange(o.mapped_, 0)),
      origin_(std::move(o.origin_)),
      slot_(std::move(o.slot_)),
      asked_(std::exchange(o.asked_, 0)) {}

FloatBuffer& FloatBuffer::operator=(FloatBuffer&& o) noexcept {
  if (this != &o) {
    release();
    p_ = std::exchange(o.p_, nullptr);
    size_ = std::exchange(o.size_, 0);
    cap_ = std::exchange(o.cap_, 0);
    mapped_ = std::exchange(o.mapped_, 0);
    origin_ = std::move(o.origin_);
    slot_ = std::move(o.slot_);
    asked_ = std::exchange(o.asked_, 0);
  }
  return *this;
}

FloatBuffer::~FloatBuffer() { release(); }

void FloatBuffer::release() noexcept {
  if (slot_) {
    // The worker's call on this block returns before the block goes.
    Prefaulter& p = *g_prefaulter;
    std::unique_lock lk(p.mu);
    p.wait_not_busy(lk, slot_.get());
    slot_->base = nullptr;
    lk.unlock();
    slot_.reset();
  }
  asked_ = 0;
  if (mapped_ != 0) {
    ::munmap(p_, mapped_);
  } else {
    std::free(p_);
  }
  p_ = nullptr;
  mapped_ = 0;
  origin_.reset();
}

void FloatBuffer::reallocate(std::size_t cap, Fill fill) {
  if (cap > (SIZE_MAX - kHugePage) / sizeof(float)) throw std::bad_alloc();
  const std::size_t bytes = cap * sizeof(float);
  if (bytes < kMapFrom && mapped_ == 0) {
    void* q = std::realloc(p_, bytes);
    if (q == nullptr) throw std::bad_alloc();
    p_ = static_cast<float*>(q);
    cap_ = cap;
    return;
  }
  const std::size_t map = round_up_to_huge(bytes);
  void* q = MAP_FAILED;
  if (own_mapping()) {
    // One mapping, grown in place or moved: its pages are not copied. The
    // worker is not populating it meanwhile (it holds no call in flight on
    // it and cannot start one without the lock held here).
    std::unique_lock<std::mutex> lk;
    if (slot_) {
      lk = std::unique_lock(g_prefaulter->mu);
      g_prefaulter->wait_not_busy(lk, slot_.get());
    }
    q = ::mremap(p_, mapped_, map, MREMAP_MAYMOVE);
    if (q == MAP_FAILED) throw std::bad_alloc();
    if (slot_) {
      slot_->base = static_cast<char*>(q);
      slot_->limit = map;
    }
  } else {
    q = ::mmap(nullptr, map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (q == MAP_FAILED) throw std::bad_alloc();
  }
  // One advice for the whole mapping (a mapping split by two advices could
  // no longer grow by mremap). Filled at once (a load, a copy): huge pages,
  // one fault per 2 MiB. Grown by appends: base pages, so that an append's
  // first touch costs one 4 KiB page and never a whole 2 MiB one, which
  // where the host has taken the memory back stalls for milliseconds
  // (docs/PERFORMANCE.md, "Single inserts under Never, unwarmed"); pages
  // already huge stay so. Advisory; without transparent huge pages it fails
  // harmlessly.
  (void)::madvise(q, map, fill == Fill::AtOnce && map >= kHugeFrom ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  if (!own_mapping()) {
    // A heap block, or a mapped block, which spans two mappings (the
    // file's, the reservation) that mremap cannot move as one: the
    // elements are copied out.
    if (size_ > 0) std::memcpy(q, p_, size_ * sizeof(float));
    release();
  }
  p_ = static_cast<float*>(q);
  mapped_ = map;
  cap_ = map / sizeof(float);
}

void FloatBuffer::reserve(std::size_t n) {
  if (n > cap_) {
    reallocate(std::max<std::size_t>({n, cap_ * 2, 64}), Fill::ByAppends);
    return;
  }
  // Grow an own mapping early (address space only) when the reserve ahead
  // no longer fits, so the worker can fault the next rows in before they
  // are needed; not while it is populating this block (no wait).
  if (!own_mapping() || !g_enabled.load(std::memory_order_relaxed)) return;
  const std::size_t bytes = n * sizeof(float);
  const std::size_t r = prefault_reserve(bytes);
  if (bytes + r <= mapped_) return;
  if (slot_ && g_prefaulter->busy.load(std::memory_order_relaxed) == slot_.get()) return;
  try {
    reallocate(std::max((bytes + 2 * r) / sizeof(float), cap_ * 2), Fill::ByAppends);
  } catch (const std::bad_alloc&) {
    // Early growth is a hint; the block is as it was.
  }
}

void FloatBuffer::resize(std::size_t n) {
  // An exact fit when growing from empty (the loader knows the size).
  if (n > cap_) reallocate(cap_ == 0 ? n : std::max(n, cap_ * 2), Fill::AtOnce);
  size_ = n;
}

void FloatBuffer::append(std::span<const float> v) noexcept {
  if (!v.empty()) std::memcpy(p_ + size_, v.data(), v.size_bytes());
  size_ += v.size();
  prefault_ahead();
}

void FloatBuffer::adopt(MappedBlock block, std::size_t n) noexcept {
  release();
  mapped_ = block.reserved();
  cap_ = mapped_ / sizeof(float);
  size_ = n;
  origin_ = block.origin();
  p_ = reinterpret_cast<float*>(block.release());
}

}  // namespace detail

}  // namespace iqdb::persist
