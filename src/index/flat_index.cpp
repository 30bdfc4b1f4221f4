// FlatIndex: exact search over contiguous storage, and its payload codec.
// Payload layout: docs/FORMAT.md, "flat payload".
#include "iqdb/persist/flat_index.hpp"

#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <new>
#include <thread>

#include "iqdb/persist/error.hpp"

namespace iqdb::persist {

namespace {
// Reserve room for `n` more elements, growing geometrically (an exact
// reserve per insert would copy the whole array every time).
template <class V>
void grow_for(V& v, std::size_t n) {
  if (v.capacity() - v.size() < n) v.reserve(std::max(v.size() + n, v.capacity() * 2));
}
}  // namespace

namespace detail {

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

namespace {
constexpr std::size_t kHugePage = std::size_t{2} << 20;
constexpr std::size_t kPage = 4096;
// Blocks from this size on are their own mapping (the worker's reach);
// smaller ones stay on the heap.
constexpr std::size_t kMapFrom = std::size_t{256} << 10;
// Mappings from this size on are advised for huge pages; smaller ones are
// not (their first touch, on the owner's thread, then costs what it writes,
// not a whole 2 MiB page).
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

void FloatBuffer::reallocate(std::size_t cap) {
  if (cap > (SIZE_MAX - kHugePage) / sizeof(float)) throw std::bad_alloc();
  const std::size_t bytes = cap * sizeof(float);
  if (bytes < kMapFrom && mapped_ == 0) {
    void* q = std::realloc(p_, bytes);
    if (q == nullptr) throw std::bad_alloc();
    p_ = static_cast<float*>(q);
    cap_ = cap;
    return;
  }
  const std::size_t map = (bytes + kHugePage - 1) & ~(kHugePage - 1);
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
    if (size_ > 0) std::memcpy(q, p_, size_ * sizeof(float));
    // A mapped block spans two mappings (the file's, the reservation),
    // which mremap cannot move as one: its elements are copied out.
    release();
  }
  // Advisory; on kernels without transparent huge pages it fails harmlessly.
  (void)::madvise(q, map, map >= kHugeFrom ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  p_ = static_cast<float*>(q);
  mapped_ = map;
  cap_ = map / sizeof(float);
}

void FloatBuffer::reserve(std::size_t n) {
  if (n > cap_) {
    reallocate(std::max<std::size_t>({n, cap_ * 2, 64}));
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
    reallocate(std::max((bytes + 2 * r) / sizeof(float), cap_ * 2));
  } catch (const std::bad_alloc&) {
    // Early growth is a hint; the block is as it was.
  }
}

void FloatBuffer::resize(std::size_t n) {
  // An exact fit when growing from empty (the loader knows the size).
  if (n > cap_) reallocate(cap_ == 0 ? n : std::max(n, cap_ * 2));
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

// ---------------------------------------------------------------- row ids

void RowIds::reserve_more(std::size_t n, const VectorId& like) {
  if (!wide_ && !like.is_u64()) widen();
  if (wide_) {
    grow_for(any_, n);
  } else {
    grow_for(u64_, n);
  }
}

// Every id into VectorIds; allocates first, so a failure changes nothing.
void RowIds::widen() {
  std::vector<VectorId> all;
  all.reserve(std::max<std::size_t>(u64_.size() + 1, u64_.capacity()));
  for (const std::uint64_t v : u64_) all.emplace_back(v);
  any_.swap(all);
  std::vector<std::uint64_t>().swap(u64_);
  wide_ = true;
}

void RowIds::push_back(const VectorId& id) {
  if (wide_) {
    any_.push_back(id);
  } else {
    u64_.push_back(id.as_u64());
  }
}

void RowIds::pop_back() noexcept {
  if (wide_) {
    any_.pop_back();
  } else {
    u64_.pop_back();
  }
}

void RowIds::move_last_to(std::size_t row) noexcept {
  if (wide_) {
    any_[row] = std::move(any_.back());
  } else {
    u64_[row] = u64_.back();
  }
}

void RowIds::assign(std::vector<std::uint64_t> ids) noexcept {
  u64_ = std::move(ids);
  any_.clear();
  wide_ = false;
}

bool operator==(const RowIds& a, const RowIds& b) {
  if (!a.wide_ && !b.wide_) return a.u64_ == b.u64_;
  if (a.size() != b.size()) return false;
  for (std::size_t r = 0; r < a.size(); ++r) {
    if (!(a.at(r) == b.at(r))) return false;
  }
  return true;
}

}  // namespace detail

// ---------------------------------------------------------------- distances

float distance(DistanceMetric metric, std::span<const float> a, std::span<const float> b) noexcept {
  const std::size_t n = std::min(a.size(), b.size());
  switch (metric) {
    case DistanceMetric::Cosine: {
      float dot = 0, na = 0, nb = 0;
      for (std::size_t i = 0; i < n; ++i) {
        dot += a[i] * b[i];
        na += a[i] * a[i];
        nb += b[i] * b[i];
      }
      if (na == 0 || nb == 0) return 1.0f;
      return 1.0f - dot / (std::sqrt(na) * std::sqrt(nb));
    }
    case DistanceMetric::DotProduct: {
      float dot = 0;
      for (std::size_t i = 0; i < n; ++i) dot += a[i] * b[i];
      return -dot;
    }
    case DistanceMetric::Euclidean: {
      float s = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const float d = a[i] - b[i];
        s += d * d;
      }
      return std::sqrt(s);
    }
    case DistanceMetric::Manhattan: {
      float s = 0;
      for (std::size_t i = 0; i < n; ++i) s += std::fabs(a[i] - b[i]);
      return s;
    }
    case DistanceMetric::Hamming: {
      std::uint32_t c = 0;
      for (std::size_t i = 0; i < n; ++i) c += a[i] != b[i] ? 1u : 0u;
      return static_cast<float>(c);
    }
  }
  return 0;
}

// ---------------------------------------------------------------- id table

// Open addressing with linear probing. A slot holds row + 1 in its low 40
// bits (0 = empty) and the top 24 bits of the id's hash above them, so a probe
// that meets another id is rejected without touching the id array (one cache
// miss per lookup instead of two). Ids are compared through the index's id
// array. Deletion shifts the following cluster back (no tombstones).
class FlatIndex::IdTable {
 public:
  static constexpr std::size_t npos = ~std::size_t{0};
  static constexpr std::uint64_t kRowMask = (std::uint64_t{1} << 40) - 1;

  explicit IdTable(std::size_t expected = 0)
      : slots_(capacity_for(expected), 0), mask_(capacity_for(expected) - 1) {}

  std::size_t find(const VectorId& id, const detail::RowIds& ids) const noexcept {
    const std::size_t i = probe(id.hash(), [&](std::size_t r) { return ids.equals(r, id); });
    return slots_[i] == 0 ? npos : i;
  }
  // The slot of the id of `row` (present).
  std::size_t find_row(std::size_t row, const detail::RowIds& ids) const noexcept {
    return probe(ids.hash(row), [&](std::size_t r) { return ids.same(r, row); });
  }
  std::uint64_t row(std::size_t slot) const noexcept { return (slots_[slot] & kRowMask) - 1; }
  void set_row(std::size_t slot, std::uint64_t row) noexcept { slots_[slot] = (slots_[slot] & ~kRowMask) | (row + 1); }

  // Room for n ids without growing (one rehash at most).
  void reserve(std::size_t n, const detail::RowIds& ids) {
    const std::size_t cap = capacity_for(n);
    if (cap > slots_.size()) rebuild(cap, ids);
  }

  // Insert `row` (whose id is ids[row]); returns false if the id is present.
  bool insert(std::uint64_t row, const detail::RowIds& ids) { return insert_hashed(row, ids.hash(row), ids); }

  // Insert rows [0, n) (a load); returns false at the first id present
  // twice. A table of a million ids is larger than the caches, so every
  // insert's first probe misses: the slots of the next kAhead rows are
  // prefetched while this one is placed, which takes a load's table from
  // about 55 to under 20 ns a row on the 2-core VM (docs/PERFORMANCE.md).
  bool insert_all(std::uint64_t n, const detail::RowIds& ids) {
    constexpr std::uint64_t kAhead = 16;
    std::array<std::size_t, kAhead> hashes{};
    const auto ahead = [&](std::uint64_t row) {
      const std::size_t h = ids.hash(row);
      hashes[row % kAhead] = h;
      __builtin_prefetch(&slots_[h & mask_], 1);
    };
    for (std::uint64_t row = 0; row < std::min(n, kAhead); ++row) ahead(row);
    for (std::uint64_t row = 0; row < n; ++row) {
      const std::size_t h = hashes[row % kAhead];
      if (row + kAhead < n) ahead(row + kAhead);
      if (!insert_hashed(row, h, ids)) return false;
    }
    return true;
  }

  void erase_slot(std::size_t i, const detail::RowIds& ids) noexcept {
    std::size_t j = i;
    for (;;) {
      j = (j + 1) & mask_;
      if (slots_[j] == 0) break;
      const std::size_t home = ids.hash((slots_[j] & kRowMask) - 1) & mask_;
      // Move slots_[j] into the hole at i unless its home lies cyclically in (i, j].
      const bool home_in_between = i <= j ? (i < home && home <= j) : (i < home || home <= j);
      if (!home_in_between) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i] = 0;
    --n_;
  }

 private:
  bool insert_hashed(std::uint64_t row, std::size_t h, const detail::RowIds& ids) {
    if ((n_ + 1) * 2 > slots_.size()) rebuild(slots_.size() * 2, ids);
    const std::size_t i = probe(h, [&](std::size_t r) { return ids.same(r, row); });
    if (slots_[i] != 0) return false;
    slots_[i] = tag_of(h) | (row + 1);
    ++n_;
    return true;
  }
  static std::uint64_t tag_of(std::size_t h) noexcept { return (static_cast<std::uint64_t>(h) >> 40) << 40; }
  static std::size_t capacity_for(std::size_t n) { return std::bit_ceil(std::max<std::size_t>(16, n * 2)); }
  // The slot of the row whose id same_id(row) accepts (an id whose hash is
  // h), or the empty slot that ends its probe sequence. A slot whose tag
  // differs is passed without touching the ids.
  template <class SameId>
  std::size_t probe(std::size_t h, SameId same_id) const noexcept {
    const std::uint64_t tag = tag_of(h);
    std::size_t i = h & mask_;
    for (; slots_[i] != 0; i = (i + 1) & mask_) {
      if ((slots_[i] & ~kRowMask) == tag && same_id((slots_[i] & kRowMask) - 1)) break;
    }
    return i;
  }
  // Into a table of `cap` slots. Allocates first: if that fails, the table
  // is as it was (FlatIndex::insert relies on it for its strong guarantee).
  void rebuild(std::size_t cap, const detail::RowIds& ids) {
    std::vector<std::uint64_t> fresh(cap, 0);
    const std::size_t mask = cap - 1;
    for (const std::uint64_t s : slots_) {
      if (s == 0) continue;
      std::size_t i = ids.hash((s & kRowMask) - 1) & mask;
      while (fresh[i] != 0) i = (i + 1) & mask;
      fresh[i] = s;
    }
    slots_.swap(fresh);
    mask_ = mask;
  }

  std::vector<std::uint64_t> slots_;
  std::size_t mask_ = 0;
  std::size_t n_ = 0;
};

// ---------------------------------------------------------------- FlatIndex

FlatIndex::FlatIndex(std::uint64_t dim, DistanceMetric metric)
    : dim_(dim), metric_(metric), table_(std::make_unique<IdTable>()) {
  if (dim == 0) throw PersistError::argument("FlatIndex dimension must be at least 1");
  if (static_cast<std::uint8_t>(metric) > kMaxMetricTag) throw PersistError::argument("unknown distance metric");
}

FlatIndex::FlatIndex(FlatIndex&&) noexcept = default;
FlatIndex& FlatIndex::operator=(FlatIndex&&) noexcept = default;
FlatIndex::~FlatIndex() = default;

FlatIndex::FlatIndex(const FlatIndex& o)
    : dim_(o.dim_), metric_(o.metric_), data_(o.data_), ids_(o.ids_), table_(std::make_unique<IdTable>(*o.table_)) {
  meta_.reserve(o.meta_.size());
  for (const auto& m : o.meta_) meta_.push_back(m ? std::make_unique<Metadata>(*m) : nullptr);
}

FlatIndex& FlatIndex::operator=(const FlatIndex& o) {
  if (this != &o) *this = FlatIndex(o);
  return *this;
}

void FlatIndex::insert(const VectorId& id, std::span<const float> vec, std::optional<Metadata> meta) {
  if (vec.size() != dim_) {
    throw PersistError::argument("vector has dimension " + std::to_string(vec.size()) + ", the index has " +
                                 std::to_string(dim_));
  }
  // Strong guarantee: reserve everything first, then commit with steps that
  // cannot fail (the table insert may grow, so it goes before the rest).
  data_.reserve(data_.size() + dim_);  // geometric
  ids_.reserve_more(1, id);
  // The per-row metadata array exists from the first row with metadata on.
  const bool with_meta = meta.has_value() || !meta_.empty();
  if (with_meta) grow_for(meta_, ids_.size() + 1 - meta_.size());
  auto m = meta ? std::make_unique<Metadata>(std::move(*meta)) : nullptr;
  ids_.push_back(id);
  bool inserted = false;
  try {
    inserted = table_->insert(ids_.size() - 1, ids_);
  } catch (...) {
    ids_.pop_back();
    throw;
  }
  if (!inserted) {
    ids_.pop_back();
    throw PersistError(ErrorKind::DuplicateId, "id " + id.to_string() + " is already present");
  }
  data_.append(vec);
  if (with_meta) {
    meta_.resize(ids_.size() - 1);  // within the capacity reserved: no throw
    meta_.push_back(std::move(m));
  }
}

void FlatIndex::erase(const VectorId& id) {
  const std::size_t slot = table_->find(id, ids_);
  if (slot == IdTable::npos) throw PersistError(ErrorKind::IdNotFound, "id " + id.to_string() + " is not present");
  const std::size_t row = table_->row(slot);
  const std::size_t last = ids_.size() - 1;
  table_->erase_slot(slot, ids_);
  if (row != last) {
    const std::size_t moved_slot = table_->find_row(last, ids_);
    table_->set_row(moved_slot, row);
    std::memcpy(data_.data() + row * dim_, data_.data() + last * dim_, dim_ * sizeof(float));
    ids_.move_last_to(row);
    if (!meta_.empty()) meta_[row] = std::move(meta_[last]);
  }
  ids_.pop_back();
  if (!meta_.empty()) meta_.pop_back();
  data_.resize(last * dim_);
}

// Geometric, like insert's own growth: a reserve before every batch does
// not reallocate for every batch.
void FlatIndex::reserve(std::uint64_t n) {
  if (n > SIZE_MAX / dim_ / sizeof(float)) throw std::bad_alloc();
  const auto more = static_cast<std::size_t>(n);
  data_.reserve(data_.size() + more * dim_);
  ids_.reserve_more(more, VectorId(0));
  if (!meta_.empty()) grow_for(meta_, more);
  table_->reserve(ids_.size() + more, ids_);
}

bool FlatIndex::contains(const VectorId& id) const noexcept { return table_->find(id, ids_) != IdTable::npos; }

std::span<const float> FlatIndex::get(const VectorId& id) const noexcept {
  const std::size_t slot = table_->find(id, ids_);
  if (slot == IdTable::npos) return {};
  return vector_at(table_->row(slot));
}

const Metadata* FlatIndex::metadata(const VectorId& id) const noexcept {
  const std::size_t slot = table_->find(id, ids_);
  if (slot == IdTable::npos) return nullptr;
  return metadata_at(table_->row(slot));
}

std::vector<SearchHit> FlatIndex::search(std::span<const float> query, std::size_t k) const {
  if (query.size() != dim_) {
    throw PersistError::argument("query has dimension " + std::to_string(query.size()) + ", the index has " +
                                 std::to_string(dim_));
  }
  const std::size_t n = ids_.size();
  k = std::min(k, n);
  if (k == 0) return {};
  struct Cand {
    float d;
    std::size_t row;
  };
  // Total order: NaN distances last, then by distance, then by row.
  const auto less = [](const Cand& a, const Cand& b) {
    const bool an = std::isnan(a.d), bn = std::isnan(b.d);
    if (an != bn) return bn;
    if (!an && a.d != b.d) return a.d < b.d;
    return a.row < b.row;
  };
  std::vector<Cand> cands(n);
  for (std::size_t r = 0; r < n; ++r) cands[r] = Cand{distance(metric_, query, vector_at(r)), r};
  std::partial_sort(cands.begin(), cands.begin() + static_cast<std::ptrdiff_t>(k), cands.end(), less);
  std::vector<SearchHit> hits;
  hits.reserve(k);
  for (std::size_t i = 0; i < k; ++i) hits.push_back(SearchHit{ids_.at(cands[i].row), cands[i].d});
  return hits;
}

bool operator==(const FlatIndex& a, const FlatIndex& b) {
  if (a.dim_ != b.dim_ || a.metric_ != b.metric_ || !(a.ids_ == b.ids_)) return false;
  if (a.data_.size() != b.data_.size() ||
      (!a.data_.empty() && std::memcmp(a.data_.data(), b.data_.data(), a.data_.size() * sizeof(float)) != 0)) {
    return false;
  }
  for (std::size_t r = 0; r < a.ids_.size(); ++r) {
    const Metadata* x = a.metadata_at(r);
    const Metadata* y = b.metadata_at(r);
    if ((x == nullptr) != (y == nullptr)) return false;
    if (x != nullptr && *x != *y) return false;
  }
  return true;
}

// ---------------------------------------------------------------- payload

namespace {

// Version 2 aligns the vectors in the file (docs/FORMAT.md, "The flat
// payload"); version 1 (no padding field) is still read.
constexpr std::uint32_t kPayloadVersion = 2;
constexpr std::uint32_t kPayloadVersionUnaligned = 1;
// The vectors start at a multiple of this in the file (uncompressed).
constexpr std::uint64_t kVectorAlignment = 4096;
constexpr std::uint8_t kIdsAllU64 = 0;
constexpr std::uint8_t kIdsTagged = 1;
constexpr std::uint8_t kIdKindU64 = 0;
constexpr std::uint8_t kIdKindBytes = 1;
// Longest byte id accepted on load.
constexpr std::uint64_t kMaxIdBytes = std::uint64_t{1} << 20;

}  // namespace

// The ids: all u64 in one block when they are, else tagged one by one.
void FlatIndex::save_ids(PayloadWriter& w) const {
  const std::size_t n = ids_.size();
  const bool all_u64 = ids_.compact() || std::all_of(ids_.wide().begin(), ids_.wide().end(),
                                                     [](const VectorId& id) { return id.is_u64(); });
  w.write_u8(all_u64 ? kIdsAllU64 : kIdsTagged);
  if (ids_.compact()) {
    w.write(ids_.u64s().data(), n * sizeof(std::uint64_t));
  } else if (all_u64) {
    std::vector<std::uint64_t> buf;
    constexpr std::size_t kBatch = std::size_t{64} * 1024;
    buf.reserve(std::min<std::size_t>(n, kBatch));
    for (std::size_t i = 0; i < n; i += kBatch) {
      buf.clear();
      for (std::size_t j = i; j < std::min<std::size_t>(n, i + kBatch); ++j) buf.push_back(ids_.wide()[j].as_u64());
      w.write(buf.data(), buf.size() * sizeof(std::uint64_t));
    }
  } else {
    for (const VectorId& id : ids_.wide()) {
      if (id.is_u64()) {
        w.write_u8(kIdKindU64);
        w.write_u64(id.as_u64());
      } else {
        w.write_u8(kIdKindBytes);
        w.write_string(id.as_bytes());
      }
    }
  }
}

void FlatIndex::save_to(PayloadWriter& w) const {
  const std::uint64_t n = ids_.size();
  w.write_u32(kPayloadVersion);
  w.write_u64(dim_);
  w.write_u8(static_cast<std::uint8_t>(metric_));
  w.write_u64(n);
  save_ids(w);
  const std::uint64_t with_meta = static_cast<std::uint64_t>(
      std::count_if(meta_.begin(), meta_.end(), [](const auto& m) { return m != nullptr; }));
  w.write_u64(with_meta);
  for (std::uint64_t row = 0; row < n; ++row) {
    const Metadata* m = metadata_at(row);
    if (m == nullptr) continue;
    w.write_u64(row);
    write_metadata(w, *m);
  }
  write_vector_padding(w);
  w.write(data_.data(), data_.size() * sizeof(float));
}

// pad_len u32, then pad_len zero bytes: the vectors that follow start at a
// file offset that is a multiple of kVectorAlignment.
void FlatIndex::write_vector_padding(PayloadWriter& w) {
  const std::uint64_t at = w.file_offset() + w.bytes_written() + sizeof(std::uint32_t);
  const auto pad = static_cast<std::uint32_t>((kVectorAlignment - at % kVectorAlignment) % kVectorAlignment);
  w.write_u32(pad);
  static constexpr std::array<std::byte, kVectorAlignment> kZeros{};
  w.write(kZeros.data(), pad);
  w.mark_aligned_block();
}

// The padding of version 2: at most kVectorAlignment - 1 bytes, all zero.
void FlatIndex::read_vector_padding(PayloadReader& r) {
  const std::uint32_t pad = r.read_u32();
  if (pad >= kVectorAlignment) r.fail("vector padding of " + std::to_string(pad) + " bytes");
  std::array<std::byte, kVectorAlignment> bytes{};
  r.read(bytes.data(), pad);
  if (std::any_of(bytes.begin(), bytes.begin() + pad, [](std::byte b) { return b != std::byte{0}; })) {
    r.fail("vector padding holds non-zero bytes");
  }
}

// The vectors: in place when the reader maps them (a mapped load), else
// read into the index's own memory.
void FlatIndex::load_vectors(PayloadReader& r, std::uint64_t floats) {
  if (floats > r.remaining() / sizeof(float)) r.fail("the vectors do not fit the payload");
  const auto n = static_cast<std::size_t>(floats);
  // Room to grow in place: as much again (address space only).
  if (MappedBlock block = r.map(n * sizeof(float), 2 * n * sizeof(float))) {
    data_.adopt(std::move(block), n);
    return;
  }
  data_.resize(n);
  r.read(data_.data(), n * sizeof(float));
}

void FlatIndex::check_mapping() const {
  if (const detail::MappedOrigin* origin = data_.origin()) detail::check_mapped_origin(*origin);
}

FlatIndex FlatIndex::load_from(PayloadReader& r) {
  const std::uint32_t version = r.read_u32();
  if (version != kPayloadVersion && version != kPayloadVersionUnaligned) {
    r.fail("unknown flat payload version " + std::to_string(version));
  }
  const std::uint64_t dim = r.read_u64();
  // Only overflow is guarded here: the vector count below is bounded by the
  // bytes that remain (an empty index of any dimension is legitimate).
  if (dim == 0 || dim > (UINT64_MAX - 1) / sizeof(float) / 2) r.fail("dimension " + std::to_string(dim) + " is out of range");
  const std::uint8_t metric_tag = r.read_u8();
  const auto metric = metric_from_tag(metric_tag);
  if (!metric) r.fail("unknown metric tag " + std::to_string(metric_tag));
  FlatIndex index(dim, *metric);

  // Every vector needs dim * 4 bytes and at least one id byte: bound the
  // count before allocating for it.
  const std::uint64_t n = r.read_count(dim * sizeof(float) + 1, "vector");
  const std::uint8_t id_encoding = r.read_u8();
  if (id_encoding == kIdsAllU64) {
    r.check_count(n, sizeof(std::uint64_t) + dim * sizeof(float), "vector");
    std::vector<std::uint64_t> ids(static_cast<std::size_t>(n));
    r.read(ids.data(), ids.size() * sizeof(std::uint64_t));
    index.ids_.assign(std::move(ids));
  } else if (id_encoding == kIdsTagged) {
    index.ids_.reserve_more(static_cast<std::size_t>(n), VectorId(0));
    for (std::uint64_t i = 0; i < n; ++i) {
      const std::uint8_t kind = r.read_u8();
      if (kind == kIdKindU64) {
        index.ids_.push_back(VectorId(r.read_u64()));
      } else if (kind == kIdKindBytes) {
        std::string b = r.read_string(kMaxIdBytes, "byte id");
        if (b.empty()) r.fail("empty byte id");
        const VectorId id = VectorId::bytes(std::move(b));
        index.ids_.reserve_more(1, id);
        index.ids_.push_back(id);
      } else {
        r.fail("unknown id kind " + std::to_string(kind));
      }
    }
  } else {
    r.fail("unknown id encoding " + std::to_string(id_encoding));
  }

  // Build the id table on the other core while the vectors stream in.
  auto table_job = std::async(std::launch::async, [&index, n] {
    auto table = std::make_unique<IdTable>(static_cast<std::size_t>(n));
    if (!table->insert_all(n, index.ids_)) return std::unique_ptr<IdTable>();
    return table;
  });
  try {
    // Each metadata record is at least 12 bytes (row u64 + entry count u32).
    const std::uint64_t with_meta = r.read_count(12, "metadata record");
    if (with_meta > n) r.fail("more metadata records than vectors");
    // The per-row array only when some row has metadata (see meta_).
    if (with_meta > 0) index.meta_.resize(static_cast<std::size_t>(n));
    std::uint64_t prev_row = 0;
    for (std::uint64_t i = 0; i < with_meta; ++i) {
      const std::uint64_t row = r.read_u64();
      if (row >= n || (i > 0 && row <= prev_row)) r.fail("metadata row " + std::to_string(row) + " is out of order");
      prev_row = row;
      index.meta_[row] = std::make_unique<Metadata>(read_metadata(r));
    }
    if (version == kPayloadVersion) read_vector_padding(r);
    index.load_vectors(r, n * dim);
  } catch (...) {
    table_job.wait();
    throw;
  }
  index.table_ = table_job.get();
  if (!index.table_) r.fail("duplicate vector id");
  return index;
}

}  // namespace iqdb::persist
