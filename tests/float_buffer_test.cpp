// FloatBuffer with its touched-reserve worker active (flat_index.hpp,
// docs/PERFORMANCE.md "Batch of 1000 under Always"): contents against a
// std::vector model through appends, growth by mremap, copies, moves and a
// mapped (file-backed) block adopted then mutated; the worker never
// populates a range that is unmapped, moved or file-backed; the reserve is
// faulted in and bounded; the fallback (mlock) works; a forked child writes.
// The observer hook widens the race windows: it sleeps inside the worker's
// populate call, so reallocations and releases meet a call in flight.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "iqdb/persist.hpp"
#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

using detail::FloatBuffer;
namespace pf = detail::prefault;

// What the worker was about to populate, recorded by the observer.
struct Seen {
  std::mutex mu;
  std::vector<std::pair<std::uintptr_t, std::size_t>> ranges;
  std::size_t unmapped = 0;  // ranges not mapped when the call began
  std::atomic<int> sleep_us{0};
  std::atomic<bool> armed{false}, entered{false}, opened{false};  // the gate (one call)
};
Seen g_seen;

void observe(const void* addr, std::size_t len) {
  // msync fails with ENOMEM on a range that is not (wholly) mapped.
  const bool mapped = ::msync(const_cast<void*>(addr), len, MS_ASYNC) == 0;
  {
    const std::lock_guard lk(g_seen.mu);
    g_seen.ranges.emplace_back(reinterpret_cast<std::uintptr_t>(addr), len);
    if (!mapped) ++g_seen.unmapped;
  }
  if (const int us = g_seen.sleep_us.load()) std::this_thread::sleep_for(std::chrono::microseconds(us));
  if (g_seen.armed.exchange(false)) {
    // Held until the test opens the gate, or 300 ms (the owner's release
    // is meant to wait for this call, so it cannot open the gate first).
    g_seen.entered = true;
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
    while (!g_seen.opened && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

class FloatBufferTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pf::set_enabled(true);
    pf::force_fallback(false);
    const std::lock_guard lk(g_seen.mu);
    g_seen.ranges.clear();
    g_seen.unmapped = 0;
    g_seen.sleep_us = 0;
    pf::set_observer(observe);
  }
  void TearDown() override {
    pf::wait_idle();
    pf::set_observer(nullptr);
    pf::force_fallback(false);
  }
};

std::vector<float> values(std::size_t n, std::uint32_t seed) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<float>((seed * 2654435761u + i * 40503u) % 1000003u);
  return v;
}

void expect_equal(const FloatBuffer& b, const std::vector<float>& model, const char* where) {
  ASSERT_EQ(b.size(), model.size()) << where;
  ASSERT_TRUE(model.empty() || std::memcmp(b.data(), model.data(), model.size() * sizeof(float)) == 0) << where;
}

void append(FloatBuffer& b, std::vector<float>& model, std::size_t n, std::uint32_t seed) {
  const std::vector<float> v = values(n, seed);
  b.reserve(b.size() + n);
  b.append(v);
  model.insert(model.end(), v.begin(), v.end());
}

// Pages of [p, p + len) resident (mincore; p page-aligned).
std::size_t resident_pages(const void* p, std::size_t len) {
  const long page = ::sysconf(_SC_PAGESIZE);
  const std::size_t pages = (len + static_cast<std::size_t>(page) - 1) / static_cast<std::size_t>(page);
  std::vector<unsigned char> vec(pages);
  if (::mincore(const_cast<void*>(p), len, vec.data()) != 0) return 0;
  return static_cast<std::size_t>(std::count_if(vec.begin(), vec.end(), [](unsigned char c) { return (c & 1) != 0; }));
}

// Many appends of random sizes (up to 600 KB each), growth by mremap
// (the block moves when the address space behind it is taken: a neighbour
// is mapped there on purpose), shrinks, copies, moves, move-assignments and
// swaps, each checked against the model; the worker sleeps inside its
// calls so that reallocations and releases meet them.
TEST_F(FloatBufferTest, EqualsTheModelThroughGrowthCopiesAndMoves) {
  std::mt19937 rng(7);
  for (const int sleep_us : {0, 300}) {
    g_seen.sleep_us = sleep_us;
    FloatBuffer a, b;
    std::vector<float> ma, mb;
    std::vector<void*> neighbours;
    for (int step = 0; step < 250; ++step) {
      const auto seed = static_cast<std::uint32_t>(rng());
      switch (rng() % 10) {
        case 0:
        case 1:
        case 2:
        case 3:
          append(a, ma, rng() % 150000 + 1, seed);
          break;
        case 4:
          append(b, mb, rng() % 100000 + 1, seed);
          break;
        case 5:  // take the address space right behind a's block: its next growth moves it
          if (a.capacity() > 0 && neighbours.size() < 16) {
            void* hint = a.data() + a.capacity();
            void* n = ::mmap(hint, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (n != MAP_FAILED) neighbours.push_back(n);
          }
          append(a, ma, rng() % 50000 + 1, seed);
          break;
        case 6: {  // shrink (an erase)
          const std::size_t n = ma.empty() ? 0 : rng() % (ma.size() / 4 + 1);
          a.resize(ma.size() - n);
          ma.resize(ma.size() - n);
          break;
        }
        case 7: {  // copy, then the copy grows
          FloatBuffer c(a);
          std::vector<float> mc = ma;
          expect_equal(c, mc, "copy");
          append(c, mc, rng() % 200000 + 1, seed);
          expect_equal(c, mc, "copy grown");
          if (rng() % 2 == 0) {
            b = c;
            mb = mc;
          }
          break;
        }
        case 8: {  // move out and back, growing in between
          FloatBuffer m(std::move(a));
          expect_equal(m, ma, "moved");
          append(m, ma, rng() % 100000 + 1, seed);
          a = std::move(m);
          break;
        }
        case 9:  // swap by moves; sometimes drop one
          std::swap(a, b);
          std::swap(ma, mb);
          if (rng() % 4 == 0) {
            b = FloatBuffer();
            mb.clear();
          }
          break;
      }
      expect_equal(a, ma, "a");
      expect_equal(b, mb, "b");
      if (ma.size() > 4'000'000) {  // 16 MB: start over
        a = FloatBuffer();
        ma.clear();
      }
    }
    pf::wait_idle();
    for (void* n : neighbours) ::munmap(n, 4096);
  }
  const std::lock_guard lk(g_seen.mu);
  EXPECT_GT(g_seen.ranges.size(), 10u);  // the worker did run
  EXPECT_EQ(g_seen.unmapped, 0u);
}

// The worker faults the reserve in ahead of the end, and no more than the
// documented bound beyond what was written (plus the huge page it rounds to).
TEST_F(FloatBufferTest, ReserveIsFaultedInAndBounded) {
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  const std::vector<bool> modes{false};  // the sanitizers' mlock does nothing
#else
  const std::vector<bool> modes{false, true};
#endif
  for (const bool fallback : modes) {
    pf::force_fallback(fallback);
    const std::uint64_t before = pf::populated_bytes();
    FloatBuffer b;
    std::vector<float> model;
    append(b, model, 10'000'000, 1);  // 40 MB: its own mapping
    append(b, model, 16, 2);          // the reserve grows the block early
    pf::wait_idle();
    const std::size_t used = b.size() * sizeof(float);
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const auto* end = reinterpret_cast<const char*>(b.data()) + ((used + page - 1) & ~(page - 1));
    const std::size_t cap_bytes = b.capacity() * sizeof(float);
    const std::size_t reserve = FloatBuffer::prefault_reserve(used);
    ASSERT_GE(cap_bytes, used + reserve);
    ASSERT_GT(reserve, std::size_t{2} << 20);
    const std::size_t whole = (reserve / page - 1) * page;  // whole pages of the reserve past the end
    EXPECT_EQ(resident_pages(end, whole) * page, whole) << "fallback " << fallback;
    const char* base = reinterpret_cast<const char*>(b.data());
    const std::size_t all = resident_pages(base, cap_bytes) * page;
    EXPECT_LE(all, used + reserve + (2u << 20)) << "fallback " << fallback;
    EXPECT_GE(pf::populated_bytes() - before, whole);
    expect_equal(b, model, "reserve");
  }
}

// The mapping that holds `p`, as /proc/self/smaps describes it.
struct Vma {
  std::uintptr_t start = 0, end = 0;
  std::string flags;              // VmFlags: "hg" advised for huge pages, "nh" against
  std::size_t anonymous_kb = ~std::size_t{0};  // pages not from a file (copied-on-write included)
  std::size_t anon_huge_kb = ~std::size_t{0};
};
Vma vma_at(const void* p) {
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  Vma v;
  bool in = false;
  while (std::getline(smaps, line)) {
    unsigned long a = 0, b = 0;
    char dash = 0;
    std::istringstream head(line);
    if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) && (head >> std::hex >> a >> dash >> b) && dash == '-') {
      if (in) break;
      in = a <= at && at < b;
      if (in) {
        v.start = a;
        v.end = b;
      }
    } else if (in && line.rfind("Anonymous:", 0) == 0) {
      std::istringstream(line.substr(10)) >> v.anonymous_kb;
    } else if (in && line.rfind("AnonHugePages:", 0) == 0) {
      std::istringstream(line.substr(14)) >> v.anon_huge_kb;
    } else if (in && line.rfind("VmFlags:", 0) == 0) {
      v.flags = line.substr(8) + " ";
    }
  }
  return v;
}
bool has_flag(const Vma& v, const char* f) { return v.flags.find(std::string(" ") + f + " ") != std::string::npos; }
// The whole block lies in the one mapping (which the kernel may have merged
// with a neighbour of the same flags): its advice did not split it.
bool covers(const Vma& v, const FloatBuffer& b) {
  const auto p = reinterpret_cast<std::uintptr_t>(b.data());
  return v.start <= p && p + b.capacity() * sizeof(float) <= v.end;
}

// A block released or moved while the worker sleeps in a call on it: the
// release waits for the call, so a private file mapping placed where the
// block was right after gets no copied-on-write (anonymous) page.
TEST_F(FloatBufferTest, ReleasedBlockIsNeverPopulatedAfterwards) {
  test::TempDir dir;
  const auto path = dir / "file";
  constexpr std::size_t kFile = std::size_t{64} << 20;
  {
    std::ofstream f(path, std::ios::binary);
    f.seekp(static_cast<std::streamoff>(kFile - 1));
    f.put('x');
  }
  const int fd = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  int landed = 0;
  for (int round = 0; round < 6; ++round) {
    void* was = nullptr;
    std::size_t len = 0;
    {
      FloatBuffer b;
      std::vector<float> model;
      append(b, model, 1'000'000, 3);  // a 4 MiB mapping
      pf::wait_idle();
      g_seen.entered = false;
      g_seen.opened = false;
      g_seen.armed = true;             // the worker's next call waits at the gate
      append(b, model, 1'000'000, 4);  // grown (mremap), then the worker asked for more
      was = b.data();
      len = b.capacity() * sizeof(float);
      for (int ms = 0; !g_seen.entered && ms < 5000; ++ms) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      ASSERT_TRUE(g_seen.entered);
    }  // released here, while the worker is in its call on the block
    ASSERT_LE(len, kFile);
    void* m = ::mmap(was, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED_NOREPLACE, fd, 0);
    g_seen.opened = true;
    if (m == MAP_FAILED) continue;  // something else took the place meanwhile
    ++landed;
    pf::wait_idle();
    // Any page of the file mapping written (or populated for writing) would be anonymous now.
    const Vma v = vma_at(m);
    EXPECT_EQ(v.start, reinterpret_cast<std::uintptr_t>(m));
    EXPECT_EQ(v.anonymous_kb, 0u) << "round " << round;
    ::munmap(m, len);
  }
  ::close(fd);
  EXPECT_GT(landed, 3);  // the file did land where a block was (else the test proves nothing)
  const std::lock_guard lk(g_seen.mu);
  EXPECT_EQ(g_seen.unmapped, 0u);
}

// After a mapped load the vectors are the file's pages (copy-on-write):
// the worker is never asked for them, through inserts within the
// reservation; once growth moves the rows into memory of their own, it is.
TEST_F(FloatBufferTest, MappedBlockIsNeverPopulated) {
  test::TempDir dir;
  const auto path = dir / "m.iqdb";
  constexpr std::uint64_t kDim = 64;
  constexpr std::uint64_t kRows = 20000;  // 5 MB of vectors
  PersistConfig cfg(path);
  cfg.fsync_policy = FsyncPolicy::never();
  std::vector<std::vector<float>> model;
  {
    FlatIndex index(kDim, DistanceMetric::Euclidean);
    for (std::uint64_t i = 0; i < kRows; ++i) {
      model.push_back(values(kDim, static_cast<std::uint32_t>(i)));
      index.insert(i, model.back());
    }
    PersistedIndex<FlatIndex>::open_with(std::move(index), cfg).save();
  }
  pf::wait_idle();
  {
    const std::lock_guard lk(g_seen.mu);
    g_seen.ranges.clear();  // the saved index's block may have been where the file is mapped now
  }
  cfg.map_snapshot = true;
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  ASSERT_TRUE(db.index().mapped());
  const auto lo = reinterpret_cast<std::uintptr_t>(db.index().vector_at(0).data());
  const std::uintptr_t hi = lo + 2 * kRows * kDim * sizeof(float);  // the block and its reservation
  for (std::uint64_t i = kRows; i < 2 * kRows - 10; ++i) {
    model.push_back(values(kDim, static_cast<std::uint32_t>(i)));
    db.insert(i, model.back());
  }
  ASSERT_TRUE(db.index().mapped());
  pf::wait_idle();
  {
    const std::lock_guard lk(g_seen.mu);
    for (const auto& [a, n] : g_seen.ranges) EXPECT_TRUE(a + n <= lo || a >= hi) << std::hex << a;
  }
  const std::uint64_t before = pf::populated_bytes();
  for (std::uint64_t i = 2 * kRows - 10; i < 3 * kRows; ++i) {
    model.push_back(values(kDim, static_cast<std::uint32_t>(i)));
    db.insert(i, model.back());
  }
  ASSERT_FALSE(db.index().mapped());
  pf::wait_idle();
  EXPECT_GT(pf::populated_bytes(), before);  // its own block now: the worker works for it
  for (std::uint64_t i = 0; i < model.size(); ++i) {
    const auto got = db.index().get(VectorId(i));
    ASSERT_TRUE(std::equal(got.begin(), got.end(), model[i].begin(), model[i].end())) << i;
  }
}

// fork() while the worker is in a call: the child grows a block without a
// worker (none is started in a child of fork()), contents equal the model;
// the parent's worker goes on.
TEST_F(FloatBufferTest, ForkedChildWritesWhileTheParentsWorkerWorks) {
  g_seen.sleep_us = 5000;
  FloatBuffer parent;
  std::vector<float> pm;
  append(parent, pm, 2'000'000, 5);
  for (int i = 0; i < 3; ++i) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      pf::set_observer(nullptr);
      const std::uint64_t before = pf::populated_bytes();
      FloatBuffer b;
      std::vector<float> m;
      for (std::uint32_t k = 0; k < 40; ++k) {
        const std::vector<float> v = values(100000, k);
        b.reserve(b.size() + v.size());
        b.append(v);
        m.insert(m.end(), v.begin(), v.end());
      }
      pf::wait_idle();
      const bool ok = b.size() == m.size() && std::memcmp(b.data(), m.data(), m.size() * sizeof(float)) == 0 &&
                      pf::populated_bytes() == before && !pf::running();
      ::_exit(ok ? 0 : 1);
    }
    append(parent, pm, 500000, 6 + static_cast<std::uint32_t>(i));
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  }
  expect_equal(parent, pm, "parent");
  const std::uint64_t before = pf::populated_bytes();
  append(parent, pm, 3'000'000, 20);
  pf::wait_idle();
  EXPECT_GT(pf::populated_bytes(), before);
}

// Without work the worker thread exits (no thread left behind), and the
// next request starts it again.
TEST_F(FloatBufferTest, WorkerExitsWhenIdleAndRestarts) {
  FloatBuffer b;
  std::vector<float> m;
  append(b, m, 1'000'000, 9);
  pf::wait_idle();
  // It exits 1 s after its queue drained; give it up to 10 s on a loaded machine.
  for (int ms = 0; pf::running() && ms < 10000; ms += 10) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_FALSE(pf::running());
  const std::uint64_t before = pf::populated_bytes();
  append(b, m, 3'000'000, 10);
  EXPECT_TRUE(pf::running());
  pf::wait_idle();
  EXPECT_GT(pf::populated_bytes(), before);
  expect_equal(b, m, "restart");
}

// A block grown by appends is advised against huge pages (an append's first
// touch is one 4 KiB page, never a 2 MiB one); a block filled at once (a
// load, a copy) for them; growth by appends after a load switches the
// whole mapping, which stays one mapping (mremap could not grow two).
TEST_F(FloatBufferTest, AppendsGrowInBasePagesWholeFillsInHugePages) {
  if (::access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) != 0) GTEST_SKIP() << "no transparent huge pages";
  FloatBuffer appended;
  std::vector<float> model;
  for (std::uint32_t i = 0; i < 40; ++i) append(appended, model, 100'000, 20 + i);  // 16 MB, by appends
  pf::wait_idle();
  const Vma a = vma_at(appended.data());
  EXPECT_TRUE(covers(a, appended));
  EXPECT_TRUE(has_flag(a, "nh")) << a.flags;
  EXPECT_FALSE(has_flag(a, "hg")) << a.flags;
  EXPECT_EQ(a.anon_huge_kb, 0u);  // every page of it (and of a merged neighbour), the worker's included, is a base page
  expect_equal(appended, model, "appended");

  const FloatBuffer copy(appended);  // filled at once
  const Vma c = vma_at(copy.data());
  EXPECT_TRUE(has_flag(c, "hg")) << c.flags;
  EXPECT_FALSE(has_flag(c, "nh")) << c.flags;
  expect_equal(copy, model, "copy");

  FloatBuffer loaded;
  std::vector<float> lmodel = values(2'000'000, 7);  // 8 MB, as a load fills it
  loaded.resize(lmodel.size());
  std::memcpy(loaded.data(), lmodel.data(), lmodel.size() * sizeof(float));
  const Vma l = vma_at(loaded.data());
  EXPECT_TRUE(has_flag(l, "hg")) << l.flags;
  EXPECT_TRUE(covers(l, loaded));
  append(loaded, lmodel, 3'000'000, 8);  // beyond the capacity: grown by appends
  const Vma g = vma_at(loaded.data());
  EXPECT_TRUE(covers(g, loaded));  // still one mapping
  EXPECT_TRUE(has_flag(g, "nh")) << g.flags;
  EXPECT_FALSE(has_flag(g, "hg")) << g.flags;
  append(loaded, lmodel, 6'000'000, 9);  // and it grows again
  expect_equal(loaded, lmodel, "loaded, then appended");
}

// Switched off: no request, no thread work.
TEST_F(FloatBufferTest, DisabledMeansNoPopulate) {
  pf::wait_idle();
  pf::set_enabled(false);
  const std::uint64_t before = pf::populated_bytes();
  FloatBuffer b;
  std::vector<float> m;
  append(b, m, 3'000'000, 11);
  pf::wait_idle();
  EXPECT_EQ(pf::populated_bytes(), before);
  pf::set_enabled(true);
  expect_equal(b, m, "disabled");
}

}  // namespace
}  // namespace iqdb::persist
