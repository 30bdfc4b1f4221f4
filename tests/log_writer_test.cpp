// The log writer's growth ahead (src/wal/log_preallocator.hpp): the zeros
// ahead of the frames are written and made durable by the writer's own
// thread in the log's pauses, never by the committing thread then; a write
// that does not fit goes past the zeros (large) or makes the step itself
// (small); cut(), close() and destruction stop the thread with nothing
// written after them; a failure of the thread is thrown by the next call.
// Every case checks the file's bytes against the frames it was given.
// LogWriterCache: what datasync() lets the page cache drop.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <fstream>
#include <functional>
#include <iqdb/persist.hpp>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "support/test_util.hpp"
#include "wal/log_writer.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

enum class Kind { Write, DataSync, Sync, Truncate, Close, Drop };

// One call on a file, recorded when it returned (or failed).
struct Rec {
  std::thread::id thread;
  int handle = 0;
  fs::path path;
  Kind kind = Kind::Write;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  bool zeros = false;        // a write of zero bytes only
  bool after_close = false;  // on a handle already closed
  bool failed = false;
};

// Over the real file system: records every call on the files it opens, with
// the calling thread; `fault` may fail a call (returns the errno) and
// `delay` may slow one down, both decided before it is forwarded.
class RecFs final : public FileSystemWrapper {
 public:
  RecFs() : FileSystemWrapper(default_file_system()) {}

  std::function<std::optional<int>(const Rec&)> fault;
  std::function<void(const Rec&)> delay;

  std::unique_ptr<WritableFile> create_exclusive(const fs::path& p) override {
    return std::make_unique<File>(*this, target().create_exclusive(p));
  }
  std::unique_ptr<WritableFile> open_append(const fs::path& p) override {
    return std::make_unique<File>(*this, target().open_append(p));
  }

  std::vector<Rec> log() const {
    const std::lock_guard g(mu_);
    return log_;
  }
  std::size_t count() const {
    const std::lock_guard g(mu_);
    return log_.size();
  }
  int in_flight() const noexcept { return in_flight_.load(); }
  int failures() const noexcept { return failures_.load(); }

 private:
  class File final : public WritableFileWrapper {
   public:
    File(RecFs& fs, std::unique_ptr<WritableFile> f) : WritableFileWrapper(std::move(f)), fs_(fs), id_(++fs.handles_) {}
    void append(std::span<const std::byte> d) override {
      Rec r = make(Kind::Write);
      r.offset = UINT64_MAX;  // the file's position: not tracked
      r.length = d.size();
      r.zeros = std::all_of(d.begin(), d.end(), [](std::byte b) { return b == std::byte{0}; });
      run(r, [&] { target().append(d); });
    }
    void write_at(std::uint64_t o, std::span<const std::byte> d) override {
      Rec r = make(Kind::Write);
      r.offset = o;
      r.length = d.size();
      r.zeros = std::all_of(d.begin(), d.end(), [](std::byte b) { return b == std::byte{0}; });
      run(r, [&] { target().write_at(o, d); });
    }
    void datasync() override {
      run(make(Kind::DataSync), [&] { target().datasync(); });
    }
    void sync() override {
      run(make(Kind::Sync), [&] { target().sync(); });
    }
    void truncate(std::uint64_t s) override {
      Rec r = make(Kind::Truncate);
      r.offset = s;
      run(r, [&] { target().truncate(s); });
    }
    void close() override {
      run(make(Kind::Close), [&] { target().close(); });
      closed_ = true;
    }
    void drop_cached(std::uint64_t o, std::uint64_t l) noexcept override {
      Rec r = make(Kind::Drop);
      r.offset = o;
      r.length = l;
      target().drop_cached(o, l);
      fs_.add(r);
    }

   private:
    Rec make(Kind k) const {
      Rec r;
      r.thread = std::this_thread::get_id();
      r.handle = id_;
      r.path = path();
      r.kind = k;
      r.after_close = closed_;
      return r;
    }
    template <class F>
    void run(Rec r, F&& forward) {
      ++fs_.in_flight_;
      struct Done {
        RecFs& fs;
        ~Done() { --fs.in_flight_; }
      } done{fs_};
      std::optional<int> err;
      if (fs_.fault) err = fs_.fault(r);
      if (fs_.delay) fs_.delay(r);
      if (err) {
        r.failed = true;
        ++fs_.failures_;
        fs_.add(r);
        throw PersistError::io(path(), "injected", *err);
      }
      forward();
      fs_.add(r);
    }

    RecFs& fs_;
    int id_;
    std::atomic<bool> closed_{false};
  };

  void add(const Rec& r) {
    const std::lock_guard g(mu_);
    log_.push_back(r);
  }

  mutable std::mutex mu_;
  std::vector<Rec> log_;
  std::atomic<int> handles_{0};
  std::atomic<int> in_flight_{0};
  std::atomic<int> failures_{0};
};

constexpr std::uint64_t kHeader = 40;  // a version-2 log header
constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;

// Frame bytes that are never zero, different for each i.
std::vector<std::byte> frame_of(std::size_t i, std::size_t n) {
  std::vector<std::byte> f(n);
  for (std::size_t k = 0; k < n; ++k) f[k] = static_cast<std::byte>((i * 131 + k) % 251 + 1);
  return f;
}

// Waits (up to 30 s) until `done` holds.
bool eventually(const std::function<bool()>& done) {
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// The file holds the header, then exactly `frames`, then zeros only.
::testing::AssertionResult holds(const fs::path& path, const std::vector<std::byte>& frames) {
  const std::vector<std::byte> b = test::read_file(path);
  if (b.size() < kHeader + frames.size()) {
    return ::testing::AssertionFailure() << "file of " << b.size() << " bytes, frames end at " << kHeader + frames.size();
  }
  const auto mis = std::mismatch(frames.begin(), frames.end(), b.begin() + kHeader);
  if (mis.first != frames.end()) {
    return ::testing::AssertionFailure() << "frame byte at offset " << kHeader + (mis.first - frames.begin())
                                         << " differs";
  }
  const auto nz = std::find_if(b.begin() + static_cast<std::ptrdiff_t>(kHeader + frames.size()), b.end(),
                               [](std::byte x) { return x != std::byte{0}; });
  if (nz != b.end()) return ::testing::AssertionFailure() << "non-zero byte after the frames at " << nz - b.begin();
  return ::testing::AssertionSuccess();
}

struct Writer {
  test::TempDir dir;
  RecFs rfs;
  fs::path path = dir / "t.wal";
  std::unique_ptr<wal::LogWriter> w;
  std::vector<std::byte> model;  // the frames, in order
  std::thread::id me = std::this_thread::get_id();

  void create() { w = wal::LogWriter::create(rfs, path, 0x5a17, 1); }
  void append(std::size_t i, std::size_t n) {
    const auto f = frame_of(i, n);
    w->append(f);
    model.insert(model.end(), f.begin(), f.end());
  }
  bool pause() {
    return eventually([&] { return !w->growth().busy(); });
  }
  // The thread's zero writes each take `d` from now on (before they reach
  // the file); slow_writes counts them.
  std::atomic<int> slow_writes{0};
  void slow_thread(std::chrono::milliseconds d) {
    rfs.delay = [this, d](const Rec& r) {
      if (r.thread != me && r.kind == Kind::Write) {
        ++slow_writes;
        std::this_thread::sleep_for(d);
      }
    };
  }
};

// Frames of 64 KiB, each synced, with a pause after each: the thread grows
// the log ahead (zeros written and made durable on its handle before a frame
// reaches them), the committing thread writes frames only, and nothing is
// written past its close.
TEST(LogWriterGrowth, ZerosAreWrittenAndSyncedAheadInPauses) {
  Writer t;
  t.create();
  const std::size_t mark = t.rfs.count();
  for (std::size_t i = 0; i < 48; ++i) {  // 3 MiB of frames
    t.append(i, 64 << 10);
    t.w->datasync();
    ASSERT_TRUE(t.pause()) << "the thread never caught up";
  }
  const auto st = t.w->growth().stats();
  EXPECT_EQ(st.inline_steps, 0u);
  EXPECT_EQ(st.past_zeros, 0u);
  EXPECT_GE(st.thread_bytes, 3 * kMiB - kMiB);
  EXPECT_GE(st.thread_syncs, st.thread_bytes / (256 << 10));
  t.w->close();

  const std::vector<Rec> log = t.rfs.log();
  std::uint64_t written = kMiB, durable = kMiB;  // what create() made
  std::size_t frames = 0, thread_writes = 0;
  for (std::size_t k = mark; k < log.size(); ++k) {
    const Rec& r = log[k];
    ASSERT_EQ(r.path, t.path);
    ASSERT_FALSE(r.after_close) << "call " << k << " after close";
    if (r.thread != t.me) {
      if (r.kind == Kind::Write) {
        ASSERT_TRUE(r.zeros);
        ASSERT_EQ(r.offset, written) << "the thread's zeros go on where the space ends";
        written = r.offset + r.length;
        ++thread_writes;
      }
      if (r.kind == Kind::DataSync) durable = written;
      continue;
    }
    if (r.kind == Kind::Write) {
      ASSERT_FALSE(r.zeros) << "the committing thread wrote zeros at " << r.offset;
      ASSERT_LE(r.offset + r.length, durable) << "frame " << frames << " reached space not yet grown and synced";
      ++frames;
    }
  }
  EXPECT_EQ(frames, 48u);
  EXPECT_GT(thread_writes, 0u);
  EXPECT_TRUE(holds(t.path, t.model));
}

// Under Periodic and Never (use_mapping()) the thread writes its zeros
// without a datasync, which would flush the writer's mapped frames too.
TEST(LogWriterGrowth, UnderTheMappingPoliciesTheThreadNeverSyncs) {
  Writer t;
  t.create();
  t.w->use_mapping();
  for (std::size_t i = 0; i < 32; ++i) {  // 2 MiB of frames
    t.append(i, 64 << 10);
    ASSERT_TRUE(t.pause()) << "the thread never caught up";
  }
  const auto st = t.w->growth().stats();
  EXPECT_GE(st.thread_bytes, kMiB);
  EXPECT_EQ(st.thread_syncs, 0u);
  t.w->close();
  for (const Rec& r : t.rfs.log()) {
    ASSERT_FALSE(r.thread != t.me && r.kind == Kind::DataSync) << "a datasync by the thread";
  }
  EXPECT_TRUE(holds(t.path, t.model));
}

// Writes of every size, with and without pauses, syncs and cuts back, in a
// random order: whatever the thread and the writer did, the file holds the
// frames appended (less the cut ones) and zeros after them. Back-to-back
// large writes go past the zeros, small ones grow the log inline.
TEST(LogWriterGrowth, AnyMixOfWritesPausesAndCutsKeepsTheFrames) {
  Writer t;
  t.create();
  std::mt19937 rng(1234);
  std::vector<std::uint64_t> ends;  // where each frame ends (model sizes)
  for (std::size_t i = 0; i < 400; ++i) {
    const auto kind = rng() % 20;
    const std::size_t n = kind < 14   ? 100 + rng() % 2000
                          : kind < 18 ? (16 << 10) + rng() % (48 << 10)
                                      : (256 << 10) + rng() % (160 << 10);
    t.append(i, n);
    ends.push_back(t.model.size());
    if (rng() % 4 == 0) t.w->datasync();
    const auto p = rng() % 10;
    if (p == 0) std::this_thread::sleep_for(2ms);
    if (p == 1) std::this_thread::sleep_for(500us);
    if (rng() % 60 == 0 && ends.size() > 3) {
      const std::size_t keep = ends.size() - 1 - rng() % 3;
      t.w->cut(kHeader + ends[keep - 1]);
      t.model.resize(ends[keep - 1]);
      ends.resize(keep);
      ASSERT_EQ(t.w->end(), kHeader + t.model.size());
    }
  }
  ASSERT_TRUE(t.pause());
  const auto st = t.w->growth().stats();
  std::printf("past zeros %llu, inline steps %llu (%llu bytes), thread %llu bytes / %llu syncs\n",
              static_cast<unsigned long long>(st.past_zeros), static_cast<unsigned long long>(st.inline_steps),
              static_cast<unsigned long long>(st.inline_bytes), static_cast<unsigned long long>(st.thread_bytes),
              static_cast<unsigned long long>(st.thread_syncs));
  t.w->close();
  for (const Rec& r : t.rfs.log()) ASSERT_FALSE(r.after_close);
  EXPECT_TRUE(holds(t.path, t.model));
}

// Large frames back to back go past the zeros: the thread, whose writes
// take 20 ms here (so that it cannot keep up even where a slow machine
// leaves it a pause), grows a chunk at most now and then; the file holds
// every frame.
TEST(LogWriterGrowth, LargeWritesInABurstGoPastTheZeros) {
  Writer t;
  t.slow_thread(20ms);
  t.create();
  std::vector<std::vector<std::byte>> frames;
  for (std::size_t i = 0; i < 12; ++i) frames.push_back(frame_of(i, 527 << 10));
  for (const auto& f : frames) {
    t.w->append(f);
    t.w->datasync();
  }
  for (const auto& f : frames) t.model.insert(t.model.end(), f.begin(), f.end());
  const auto st = t.w->growth().stats();
  EXPECT_GE(st.past_zeros, 6u);  // of 11 that did not fit the first MiB
  EXPECT_EQ(st.inline_steps, 0u);
  t.w->close();
  EXPECT_TRUE(holds(t.path, t.model));
}

// Each datasync() lets the page cache drop the whole pages it made durable:
// checked against a model of the frames' end, through frames of every size,
// syncs and a cut. A drop never reaches the page the frames end in (the next
// frame writes into it), never covers a byte not yet written, comes only
// right after a datasync, and the drops tile [0, x) in order; after each
// sync, at most 64 KiB of whole synced pages are left undropped.
TEST(LogWriterCache, DatasyncDropsTheWholePagesItMadeDurable) {
  Writer t;
  t.create();
  constexpr std::uint64_t kPage = 4096, kStep = 64 << 10;
  std::uint64_t dropped = 0;  // the model: [0, dropped) was dropped
  std::size_t seen = t.rfs.count();
  Kind last = Kind::Close;
  // The drop calls since the last check; each one checked against the
  // frames' end `end` (all written before the sync).
  const auto check = [&](std::uint64_t end, bool synced) {
    const std::vector<Rec> log = t.rfs.log();
    for (; seen < log.size(); ++seen) {
      const Rec& r = log[seen];
      if (r.thread != t.me) continue;  // the growing thread never drops
      if (r.kind == Kind::Drop) {
        EXPECT_EQ(last, Kind::DataSync) << "a drop not right after a datasync";
        EXPECT_EQ(r.offset, dropped) << "drops do not tile the log in order";
        EXPECT_EQ((r.offset + r.length) % kPage, 0u);
        EXPECT_LE(r.offset + r.length, end / kPage * kPage) << "a drop reached the last page or unwritten bytes";
        EXPECT_GE(r.length, kStep);
        dropped = r.offset + r.length;
      }
      last = r.kind;
    }
    if (synced) {
      EXPECT_LT(end / kPage * kPage, dropped + kStep) << "synced pages left cached at " << end;
    }
  };
  std::mt19937 rng(7);
  std::uint64_t end = kHeader;
  for (std::size_t i = 0; i < 200; ++i) {
    const std::size_t n = std::uniform_int_distribution<std::size_t>(1, 4)(rng) == 1
                              ? std::uniform_int_distribution<std::size_t>(100 << 10, 600 << 10)(rng)
                              : std::uniform_int_distribution<std::size_t>(1, 9000)(rng);
    t.append(i, n);
    end += n;
    check(end, false);
    if (i % 3 == 2) {
      t.w->datasync();
      check(end, true);
    }
  }
  EXPECT_GT(dropped, 4 * kMiB);
  // A cut below what was dropped: drops start again at or before the cut
  // (pages written anew may be cached), and the frames read back whole.
  const std::uint64_t cut = dropped / 2 + 123;
  t.w->cut(cut);
  t.model.resize(cut - kHeader);
  end = cut;
  dropped = std::min(dropped, cut / kPage * kPage);
  seen = t.rfs.count();
  for (std::size_t i = 0; i < 8; ++i) {
    t.append(1000 + i, 200 << 10);
    end += 200 << 10;
    t.w->datasync();
    check(end, true);
  }
  t.w->close();
  EXPECT_TRUE(holds(t.path, t.model));
}

// On a real file system the synced pages leave the page cache: after a burst
// of synced 527 KB frames (batches of 1000 dim-128 inserts) at most the
// last 64 KiB below the frames' end, and the folio around that point (a
// large folio goes whole or not at all: 2 MiB at most), stay resident of
// the 6.3 MB. Skipped where the file system keeps them regardless (tmpfs).
TEST(LogWriterCache, SyncedFramesLeaveThePageCache) {
  Writer t;
  // Built first, so that the burst leaves the growing thread no pause (its
  // own datasync would hold pages under writeback, which are not dropped).
  std::vector<std::vector<std::byte>> frames;
  for (std::size_t i = 0; i < 12; ++i) frames.push_back(frame_of(i, 527 << 10));
  t.create();
  for (const auto& f : frames) {
    t.w->append(f);
    t.w->datasync();
  }
  for (const auto& f : frames) t.model.insert(t.model.end(), f.begin(), f.end());
  const std::uint64_t end = kHeader + t.model.size();
  if (test::on_tmpfs(t.path)) GTEST_SKIP() << "tmpfs keeps every page";
  EXPECT_LE(test::resident_pages(t.path, 0, end), ((64 << 10) + (2 << 20)) / 4096 + 1)
      << "of " << (end + 4095) / 4096 << " pages below the frames' end";
  t.w->close();
  EXPECT_TRUE(holds(t.path, t.model));
}

// The thread's zero writes take 50 ms each here: cut() waits for the one in
// flight, truncates, and the thread does not come back until asked; close()
// and the destructor wait for it too, and nothing is written after them.
TEST(LogWriterGrowth, CutCloseAndDestructionWaitForTheChunkInFlight) {
  Writer t;
  t.slow_thread(50ms);
  t.create();
  const auto start_growing = [&](Writer& x, std::size_t first) {
    const int before = x.slow_writes.load();
    for (std::size_t i = first; i < first + 12; ++i) x.append(i, 64 << 10);  // past the 512 KiB lead
    ASSERT_TRUE(eventually([&] { return x.slow_writes.load() > before; })) << "the thread did not start";
  };
  start_growing(t, 0);
  const std::uint64_t cut_at = kHeader + 5 * (64 << 10);
  t.w->cut(cut_at);
  t.model.resize(5 * (64 << 10));
  EXPECT_EQ(t.rfs.in_flight(), 0) << "a write still in flight after cut()";
  EXPECT_EQ(fs::file_size(t.path), cut_at);
  std::this_thread::sleep_for(150ms);
  EXPECT_EQ(fs::file_size(t.path), cut_at) << "the thread wrote after the cut without being asked";

  start_growing(t, 100);
  t.w->close();
  EXPECT_EQ(t.rfs.in_flight(), 0) << "a write still in flight after close()";
  const std::size_t n = t.rfs.count();
  std::this_thread::sleep_for(150ms);
  EXPECT_EQ(t.rfs.count(), n) << "calls after close()";
  for (const Rec& r : t.rfs.log()) ASSERT_FALSE(r.after_close);
  EXPECT_TRUE(holds(t.path, t.model));

  // Destroyed without close().
  Writer u;
  u.slow_thread(50ms);
  u.create();
  start_growing(u, 0);
  u.w.reset();
  EXPECT_EQ(u.rfs.in_flight(), 0) << "a write still in flight after the destructor";
  const std::size_t m = u.rfs.count();
  std::this_thread::sleep_for(150ms);
  EXPECT_EQ(u.rfs.count(), m) << "calls after the destructor";
  EXPECT_TRUE(holds(u.path, u.model));
}

// A write that reaches the chunk the thread is writing waits for that write
// (here 50 ms, before it reaches the file): else the thread's zeros would
// land on the frame. Large (past the zeros) and small (grown inline) alike.
TEST(LogWriterGrowth, AWriteIntoTheChunkInFlightWaitsForIt) {
  for (const std::size_t n : {std::size_t{300} << 10, std::size_t{9000}}) {
    Writer t;
    t.slow_thread(50ms);
    t.create();
    std::size_t i = 0;
    while (t.model.size() < 1000000 - 2 * 9000) t.append(i++, 9000);  // the space's last bytes
    ASSERT_TRUE(eventually([&] { return t.slow_writes.load() > 0; })) << "the thread did not start";
    while (t.model.size() + kHeader + n <= t.w->growth().ready()) t.append(i++, n);
    t.append(i++, n);  // into the chunk being written
    EXPECT_GE(t.w->end(), kMiB);
    t.w->close();
    EXPECT_TRUE(holds(t.path, t.model)) << "frames of " << n;
  }
}

// A failed write or datasync of the thread is thrown by the next append /
// datasync (kind Io, its errno, the log's path), and by every one after it;
// close() does not throw it again. Nothing appended before is lost.
class GrowthFailure : public ::testing::TestWithParam<Kind> {};

TEST_P(GrowthFailure, IsThrownByTheNextCallAndStays) {
  Writer t;
  t.rfs.fault = [&](const Rec& r) -> std::optional<int> {
    if (r.thread != t.me && r.kind == GetParam() && t.rfs.failures() == 0) return EIO;
    return std::nullopt;
  };
  t.create();
  std::optional<PersistError> got;
  for (std::size_t i = 0; i < 200 && !got; ++i) {
    try {
      t.append(i, 64 << 10);
      t.w->datasync();
      std::this_thread::sleep_for(3ms);  // a pause: the thread grows
    } catch (const PersistError& e) {
      got = e;
    }
  }
  ASSERT_TRUE(got.has_value()) << "the failure was never reported";
  EXPECT_EQ(t.rfs.failures(), 1);
  EXPECT_EQ(got->kind(), ErrorKind::Io);
  EXPECT_EQ(got->sys_errno(), EIO);
  EXPECT_EQ(got->path(), t.path);
  EXPECT_NE(std::string(got->what()).find("growing the log ahead"), std::string::npos) << got->what();
  // Sticky: the next calls throw it too, before writing anything.
  const std::size_t n = t.rfs.count();
  EXPECT_EQ(test::error_of([&] { t.w->append(frame_of(999, 100)); }), ErrorKind::Io);
  EXPECT_EQ(test::error_of([&] { t.w->datasync(); }), ErrorKind::Io);
  EXPECT_EQ(t.rfs.count(), n);
  EXPECT_NO_THROW(t.w->close());  // reported already
  // Every frame appended (those synced among them) is there.
  EXPECT_TRUE(holds(t.path, t.model));
}

INSTANTIATE_TEST_SUITE_P(WriteOrSync, GrowthFailure, ::testing::Values(Kind::Write, Kind::DataSync),
                         [](const auto& i) { return i.param == Kind::Write ? "Write" : "DataSync"; });

// A failure no call reported yet is thrown by close().
TEST(LogWriterGrowth, AFailureNotYetReportedIsThrownByClose) {
  Writer t;
  std::atomic<bool> armed{false};
  t.rfs.fault = [&](const Rec& r) -> std::optional<int> {
    if (r.thread == t.me || r.kind != Kind::Write) return std::nullopt;
    while (!armed) std::this_thread::sleep_for(1ms);  // (the appends stay in the first MiB)
    return EIO;  // (no room, ENOSPC, would not be a failure: NoRoom below)
  };
  t.create();
  for (std::size_t i = 0; i < 12; ++i) t.append(i, 64 << 10);
  armed = true;  // after the last append: none of them can have seen it
  ASSERT_TRUE(eventually([&] { return t.rfs.failures() > 0; }));
  try {
    t.w->close();
    FAIL() << "close() did not report the failure";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Io);
    EXPECT_EQ(e.sys_errno(), EIO);
  }
  EXPECT_TRUE(holds(t.path, t.model));
}

// ---------------------------------------------------------------- no room ahead

// A disk with room for the log's first `room` bytes: from now on a write
// (zeros or a frame, by any thread) that would end past it fails with
// `err`, nothing written.
void limit(Writer& t, const std::atomic<std::uint64_t>& room, int err) {
  t.rfs.fault = [&room, err](const Rec& r) -> std::optional<int> {
    if (r.kind == Kind::Write && r.offset + r.length > room.load()) return err;
    return std::nullopt;
  };
}

// The space counted ready is space made (written, or allocated under the
// mapping policies, where the writer maps up to it): never past the file's end.
::testing::AssertionResult ready_is_made(const Writer& t) {
  const std::uint64_t ready = t.w->growth().ready(), size = fs::file_size(t.path);
  if (ready <= size) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "ready() " << ready << " past the file's end " << size;
}

// Synced (Always) or allocated (the mapping policies, use_mapping()).
class NoRoom : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    t.create();
    if (GetParam()) t.w->use_mapping();
  }
  Writer t;
};

// Frames of 64 KiB, synced, with pauses, on a disk with room for 3 MiB of
// the log: the thread's step past the room fails (ENOSPC) and is dropped,
// not kept as a failure: every frame that fits is written (it used to
// throw "growing the log ahead" at the next append, with 1.4 MiB of zeros
// ready). A frame past the room fails, typed. Once the room is larger (the
// writer cut the failed frame, as the engine does), the thread grows the
// log ahead again.
TEST_P(NoRoom, TheThreadStopsGrowingAheadAndEveryFrameThatFitsIsWritten) {
  std::atomic<std::uint64_t> room{3 * kMiB + 12345};
  limit(t, room, ENOSPC);
  std::size_t i = 0;
  while (kHeader + t.model.size() + (64 << 10) <= room) {
    ASSERT_NO_THROW(t.append(i++, 64 << 10)) << "frame " << i << " of those that fit";
    ASSERT_NO_THROW(t.w->datasync());
    ASSERT_TRUE(ready_is_made(t));
    ASSERT_TRUE(t.pause());
  }
  EXPECT_GE(t.w->growth().stats().no_room, 1u);
  EXPECT_GE(t.rfs.failures(), 1) << "the thread never reached the end of the room";
  try {
    t.w->append(frame_of(i, 64 << 10));
    FAIL() << "a frame past the room was written";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Io);
    EXPECT_EQ(e.sys_errno(), ENOSPC);
  }
  t.w->cut(kHeader + t.model.size());
  EXPECT_TRUE(holds(t.path, t.model));

  // Space freed: growth resumes once the frames are 1 MiB past where it
  // stopped.
  const std::uint64_t old_room = room;
  room = UINT64_MAX;
  for (std::size_t k = 0; k < 40; ++k) {  // 2.5 MiB more
    ASSERT_NO_THROW(t.append(1000 + k, 64 << 10));
    ASSERT_NO_THROW(t.w->datasync());
    ASSERT_TRUE(t.pause());
  }
  bool grown = false;
  for (const Rec& r : t.rfs.log()) {
    grown |= r.thread != t.me && r.kind == Kind::Write && !r.failed && r.offset + r.length > old_room + kMiB;
  }
  EXPECT_TRUE(grown) << "the thread never grew the log again";
  EXPECT_NO_THROW(t.w->close());  // no failure kept
  EXPECT_TRUE(holds(t.path, t.model));
}

// A log whose frames end 5000 bytes short of its first MiB, reopened on a
// disk with room for 100 KiB more (EDQUOT: a quota), then frames of 9000
// bytes: the first that does not fit finds no room for its 1 MiB step
// past itself and makes its own space only (it used to fail); the next
// ones make theirs, exactly; the first past the room fails, typed. ready()
// never counts space not made.
TEST_P(NoRoom, AWriteWithNoRoomForItsStepMakesItsOwnSpace) {
  t.w->close();
  t.model = frame_of(7, kMiB - kHeader - 5000);
  {
    std::fstream f(t.path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(kHeader));
    f.write(reinterpret_cast<const char*>(t.model.data()), static_cast<std::streamsize>(t.model.size()));
    ASSERT_TRUE(f.good());
  }
  t.w = wal::LogWriter::open(t.rfs, t.path, 0x5a17, kHeader + t.model.size(), kMiB);
  if (GetParam()) t.w->use_mapping();
  const std::atomic<std::uint64_t> room{kMiB + (100 << 10)};
  limit(t, room, EDQUOT);
  std::size_t i = 0;
  while (kHeader + t.model.size() + 9000 <= room) {
    ASSERT_NO_THROW(t.append(i++, 9000)) << "frame " << i << " of those that fit";
    ASSERT_TRUE(ready_is_made(t));
  }
  const auto st = t.w->growth().stats();
  EXPECT_GE(st.no_room, 1u);
  EXPECT_GE(st.inline_steps, 1u);
  EXPECT_EQ(t.w->growth().ready(), kHeader + t.model.size()) << "each write made its own space, no more";
  try {
    t.w->append(frame_of(i, 9000));
    FAIL() << "a frame past the room was written";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Io);
    EXPECT_EQ(e.sys_errno(), EDQUOT);
  }
  t.w->cut(kHeader + t.model.size());
  EXPECT_NO_THROW(t.w->close());
  EXPECT_TRUE(holds(t.path, t.model));
}

INSTANTIATE_TEST_SUITE_P(Policies, NoRoom, ::testing::Values(false, true),
                         [](const auto& i) { return i.param ? "Mapped" : "Synced"; });

// ---------------------------------------------------------------- through the engine

using Model = std::map<std::uint64_t, std::vector<float>>;
constexpr std::size_t kDim = 64;

std::vector<float> vec_of(std::uint64_t id) {
  std::vector<float> v(kDim);
  for (std::size_t d = 0; d < kDim; ++d) v[d] = static_cast<float>(id) + static_cast<float>(d) / 64.0f;
  return v;
}

WriteBatch batch_of(std::uint64_t first, std::size_t n) {
  WriteBatch b;
  for (std::uint64_t id = first; id < first + n; ++id) b.insert(id, vec_of(id));
  return b;
}

::testing::AssertionResult equals(const FlatIndex& index, const Model& m) {
  if (index.size() != m.size()) return ::testing::AssertionFailure() << "size " << index.size() << ", model " << m.size();
  for (const auto& [id, v] : m) {
    const auto got = index.get(VectorId(id));
    if (!std::equal(got.begin(), got.end(), v.begin(), v.end())) return ::testing::AssertionFailure() << "id " << id;
  }
  return ::testing::AssertionSuccess();
}

PersistConfig config(const fs::path& dir, FsyncPolicy policy, FileSystem* fs) {
  PersistConfig cfg(dir / "db.iqdb");
  cfg.wal_enabled = true;
  cfg.fsync_policy = policy;
  cfg.file_system = fs;
  return cfg;
}

// Batches of ~54 KB frames with pauses, a checkpoint (a new log) in the
// middle: the thread grows both logs, nothing is written on a closed
// handle, and recovery gives every acknowledged batch.
class EngineGrowth : public ::testing::TestWithParam<int> {};

TEST_P(EngineGrowth, PausedBatchesThroughACheckpointRecover) {
  const FsyncPolicy policy = GetParam() == 0 ? FsyncPolicy::always() : FsyncPolicy::never();
  test::TempDir dir;
  RecFs rec;
  const std::thread::id me = std::this_thread::get_id();
  Model m;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), config(dir.path(), policy, &rec));
    for (std::uint64_t b = 0; b < 60; ++b) {
      db.write(batch_of(b * 200, 200));
      for (std::uint64_t id = b * 200; id < b * 200 + 200; ++id) m[id] = vec_of(id);
      if (b == 30) db.checkpoint();
      std::this_thread::sleep_for(3ms);
    }
    db.close();
  }
  std::size_t thread_zero_writes = 0;
  for (const Rec& r : rec.log()) {
    ASSERT_FALSE(r.after_close) << r.path;
    if (r.thread != me && r.kind == Kind::Write && r.zeros) ++thread_zero_writes;
  }
  EXPECT_GT(thread_zero_writes, 0u);
  const auto db = PersistedIndex<FlatIndex>::load(config(dir.path(), policy, nullptr));
  EXPECT_TRUE(equals(db.index(), m));
}

INSTANTIATE_TEST_SUITE_P(Policies, EngineGrowth, ::testing::Values(0, 1),
                         [](const auto& i) { return i.param == 0 ? "Always" : "Never"; });

// Under Always, the thread's first datasync fails: a later commit fails with
// Io, the index refuses writes from then on, and recovery gives exactly the
// batches acknowledged before.
TEST(EngineGrowth, AFailedGrowthPoisonsAndLosesNothingAcknowledged) {
  test::TempDir dir;
  RecFs rec;
  const std::thread::id me = std::this_thread::get_id();
  rec.fault = [&](const Rec& r) -> std::optional<int> {
    if (r.thread != me && r.kind == Kind::DataSync && rec.failures() == 0) return EIO;
    return std::nullopt;
  };
  Model m;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean),
                                                   config(dir.path(), FsyncPolicy::always(), &rec));
    std::optional<ErrorKind> failed;
    for (std::uint64_t b = 0; b < 300 && !failed; ++b) {
      failed = test::error_of([&] { db.write(batch_of(b * 200, 200)); });
      if (!failed) {
        for (std::uint64_t id = b * 200; id < b * 200 + 200; ++id) m[id] = vec_of(id);
      }
      std::this_thread::sleep_for(3ms);
    }
    ASSERT_EQ(failed, ErrorKind::Io) << "no commit saw the failed growth";
    EXPECT_TRUE(db.failure().has_value());
    EXPECT_EQ(test::error_of([&] { db.insert(999999, vec_of(999999)); }), ErrorKind::Poisoned);
    EXPECT_TRUE(equals(db.index(), m));
    try {
      db.close();
    } catch (const PersistError&) {
    }
  }
  const auto db = PersistedIndex<FlatIndex>::load(config(dir.path(), FsyncPolicy::always(), nullptr));
  EXPECT_TRUE(equals(db.index(), m));
}

}  // namespace
}  // namespace iqdb::persist
