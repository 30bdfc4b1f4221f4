// Growing a log file ahead of its frames from a background thread (internal).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <memory>
#include <mutex>
#include <thread>

#include "iqdb/persist/error.hpp"
#include "iqdb/persist/file_system.hpp"

namespace iqdb::persist::wal {

// `e` is the file system's "no room": a full disk (ENOSPC) or a used-up
// quota (EDQUOT), never a failure of the log where only room was wanted.
bool out_of_space(const PersistError& e) noexcept;

// The size a new log is made with, zero-filled (LogWriter::create).
inline constexpr std::uint64_t kLogFirstStep = std::uint64_t{1} << 20;
// Write zeros over [from, to) of `f`, for real (WritableFile's default
// allocate_zeros, in chunks of 1 MiB).
void write_zeros(WritableFile& f, std::uint64_t from, std::uint64_t to);

// The zero-filled space ahead of a log's frames (LogWriter).
//
// The file is grown ahead of the frames with zeros written for real, so that
// the frames' fdatasync carries data only (docs/FORMAT.md, "zero padding").
// Those zeros are written and made durable by a thread of their own, through
// a handle of its own on the file, in chunks of 256 KiB, each followed by a
// datasync (under Periodic and Never, unsynced(), the space is allocated
// instead of written, and not synced), and **only while the
// log is quiet** (nothing written or synced
// for 1 ms): on this project's disks a commit whose fdatasync runs while
// another thread grows the same file waits for that growth (the zeros under
// writeback, and the journal commit of the new size), which made every
// commit of a burst of batches 2-3x slower when the growth ran beside it
// (docs/PERFORMANCE.md, "the log's zero-filled growth"). So the growth takes
// the pauses between commits, and a commit that starts during a chunk waits
// for that chunk at most.
//
// How far ahead: as many bytes past the frames' end as the frames hold,
// 512 KiB at least, 32 MiB at most, rounded up to a whole MiB; asked for
// when the frames pass the point where less than that is left (a log of
// under 512 KiB never grows: it fits the 1 MiB a new log is made with). So
// the file holds at most twice its frames plus 1 MiB, or its frames plus
// 33 MiB.
//
// When a write does not fit in the zeroed space (a burst of writes left the
// thread no pause), the writer does not wait for the thread; it waits only
// for the chunk in flight, if any (which may overlap the write), then:
//  - a write of 256 KiB or more (a large batch, or a group of frames) goes
//    past the zeros, extending the file: its fdatasync then also commits the
//    new size, which on these disks costs about what writing as many zeros
//    first costs, and the doubling steps wrote up to twice as many;
//  - a smaller one writes zeros itself (allocates them, unsynced()),
//    through its own handle, up to 1 MiB past its end (before this thread
//    existed, a commit that grew the log wrote a step of the file's size,
//    up to 64 MiB); the commit's fdatasync flushes them.
// The thread then carries on after what the writer claimed.
//
// No room (ENOSPC, EDQUOT) for the space ahead is not a failure: that space
// only makes commits cheaper. A step of the thread's that finds no room is
// dropped (zeros it did write past ready() stay in the file, unclaimed),
// and so is a writer's 1 MiB inline step, whose write then makes only its
// own space; either way no more is asked for until the frames are 1 MiB
// past that point (no_room), when growth is tried again (on a disk that
// stays full, one failed attempt per MiB of frames; once space was freed,
// the lead again). Meanwhile each write that does not fit makes exactly its
// own space. Only a write whose own space has no room fails (reserve()
// throws). ready() never counts space that was not made: the writer maps
// up to it.
//
// Any other failure of the thread (a write, or a datasync whatever its
// errno: what an fdatasync that failed left on disk cannot be vouched for)
// is kept: from then on check(), reserve() and close() throw it
// (PersistError, kind Io with the errno, naming the log and what failed),
// and the thread does nothing more.
//
// The writer's calls (reserve, advance, stop, restart, close) come from one
// thread at a time (LogWriter is serialised by the engine); check(), the
// Activity guard and the accessors may be used from any thread. No thread
// outlives stop(), close() or the destructor, and nothing is written after
// them.
class LogPreallocator {
 public:
  // `path` is the log; `size` its size now (every byte of it written).
  LogPreallocator(FileSystem& fs, std::filesystem::path path, std::uint64_t size) noexcept;
  ~LogPreallocator();
  LogPreallocator(const LogPreallocator&) = delete;
  LogPreallocator& operator=(const LogPreallocator&) = delete;

  // Bytes [0, ready()) are written (frames or zeros), or claimed by a write
  // past the zeros: the writer may write there, the thread never does.
  std::uint64_t ready() const noexcept { return ready_.load(std::memory_order_acquire); }

  // Before a write of `bytes` that ends at `need`: make ready() at least
  // `need` (see the class comment). Throws the thread's failure, or `own`'s
  // when the write's own space cannot be made (then ready() may count zeros
  // that were not written: the writer cuts the log, and restart() resets
  // it); no room for the step past it is not a failure.
  void reserve(std::uint64_t need, std::uint64_t bytes, WritableFile& own);
  // The frames will reach `end`: ask the thread for the next step when the
  // space left ahead of them is under the lead (starting the thread, and
  // opening its handle, the first time), unless growth found no room
  // less than 1 MiB of frames ago. Never throws: where no thread can be
  // had, the writer's reserve() calls grow the file, as without a thread.
  void advance(std::uint64_t end) noexcept;
  // Throws the thread's failure, if it failed.
  void check() const;
  // The writer's frames are not each synced (Periodic, Never: LogWriter::
  // use_mapping): the space ahead is made with WritableFile::allocate_zeros
  // (on POSIX files fallocate: blocks allocated, reading as zeros, no data
  // written and no page-cache pages taken; the frames copied into the
  // mapping fault each page in once, instead of a page written with zeros
  // and then faulted again), and the thread syncs nothing. A datasync would
  // flush the frames copied into the writer's mapping as well, and each
  // page of it then faults again when next written (Never ran at half its
  // rate on a loaded machine, where the writer's pauses let the thread in).
  void unsynced() noexcept { sync_.store(false, std::memory_order_relaxed); }

  // Marks a write or sync of the log in progress (the thread waits for a
  // pause of kQuiet after the last one ends).
  class Activity {
   public:
    explicit Activity(LogPreallocator& p) noexcept : p_(p) { p_.active_.fetch_add(1, std::memory_order_relaxed); }
    ~Activity();
    Activity(const Activity&) = delete;
    Activity& operator=(const Activity&) = delete;

   private:
    LogPreallocator& p_;
  };
  static constexpr std::chrono::milliseconds kQuiet{1};

  // Stop the thread and wait for it (the write or datasync in flight ends
  // first). Until restart(), nothing more is written by it.
  void stop() noexcept;
  // After the writer truncated the file to `size` (the thread stopped).
  void restart(std::uint64_t size) noexcept;
  // stop(), then close the handle. Throws a failure of the thread that no
  // call reported yet, else the close's error.
  void close();

  struct Stats {
    std::uint64_t past_zeros = 0;    // writes that went past the zeros
    std::uint64_t inline_steps = 0;  // steps reserve() made through the writer's handle
    std::uint64_t inline_bytes = 0;  // their zeros
    std::uint64_t thread_bytes = 0;  // zeros the thread wrote
    std::uint64_t thread_syncs = 0;  // its datasyncs
    std::uint64_t no_room = 0;       // steps dropped for want of room (ENOSPC, EDQUOT)
  };
  Stats stats() const;
  // True while the thread has zeros to write or to sync.
  bool busy() const;

 private:
  void run();
  // Make [from, to) of `f` zeros: written, or allocated under unsynced().
  void grow(WritableFile& f, std::uint64_t from, std::uint64_t to) const;
  bool has_work() const noexcept;                           // mu_ held
  std::chrono::steady_clock::duration until_quiet() const;  // 0 when the log is quiet
  bool ensure_thread() noexcept;                            // mu_ held
  // Growth found no room at `at`, to which ready() is cut back (mu_ held,
  // no chunk in flight): nothing more is asked for until the frames reach
  // `at` + 1 MiB.
  void no_room(std::uint64_t at) noexcept;
  void fail(const char* op, const std::exception_ptr& cause) noexcept;  // mu_ held
  [[noreturn]] void rethrow_locked() const;                 // mu_ held

  FileSystem& fs_;
  const std::filesystem::path path_;
  std::unique_ptr<WritableFile> file_;  // the thread's handle, opened by the writer's thread

  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // wakes the thread
  std::condition_variable done_cv_;  // wakes a writer waiting in reserve() for the chunk in flight
  std::atomic<std::uint64_t> ready_;
  std::atomic<std::uint64_t> want_;  // the size the thread is to reach (>= ready_)
  std::atomic<std::uint64_t> retry_at_{0};  // no growth ahead until the frames reach this (no_room)
  std::uint64_t synced_;             // no zeros of the thread's left to sync below this
  bool writing_ = false;             // the thread is writing at ready_
  std::atomic<bool> sync_{true};
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;
  mutable bool reported_ = false;
  bool stop_ = false;
  bool no_thread_ = false;  // none could be had: only reserve() grows the file
  Stats stats_;
  std::atomic<int> active_{0};                   // Activity guards alive
  std::atomic<std::int64_t> last_active_ns_{0};  // steady_clock, when the last one ended
  std::thread thread_;
};

}  // namespace iqdb::persist::wal
