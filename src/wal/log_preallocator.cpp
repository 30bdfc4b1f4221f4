#include "wal/log_preallocator.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <string>

#include "iqdb/persist/error.hpp"
#include "util/first_error.hpp"

namespace iqdb::persist::wal {

namespace {
constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;
constexpr std::uint64_t kMinLead = std::uint64_t{512} << 10;
constexpr std::uint64_t kMaxLead = std::uint64_t{32} << 20;
// The thread's unit of work: a write of this many zeros, then a datasync.
constexpr std::uint64_t kChunk = std::uint64_t{256} << 10;
// A smaller write that does not fit writes this many zeros past its end
// itself (the thread makes the larger steps, in the pauses).
constexpr std::uint64_t kInlineStep = std::uint64_t{1} << 20;
// Writes at least this large go past the zeros when they do not fit.
constexpr std::uint64_t kPastZeros = std::uint64_t{256} << 10;
// Once growth found no room (no_room), it is tried again when the frames
// are this far past where it failed: on a disk that stays full, one failed
// attempt per MiB of frames.
constexpr std::uint64_t kRetryAfter = std::uint64_t{1} << 20;

std::int64_t now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The space kept ahead of frames that end at `end`.
std::uint64_t lead(std::uint64_t end) noexcept { return std::clamp<std::uint64_t>(end, kMinLead, kMaxLead); }
// `n` rounded up to a whole MiB.
std::uint64_t whole_mib(std::uint64_t n) noexcept { return (n + kMiB - 1) / kMiB * kMiB; }

// The same, for what a growth step threw.
bool threw_out_of_space(const std::exception_ptr& e) noexcept {
  try {
    std::rethrow_exception(e);
  } catch (const PersistError& p) {
    return out_of_space(p);
  } catch (...) {
    return false;
  }
}
}  // namespace

bool out_of_space(const PersistError& e) noexcept {
  return e.kind() == ErrorKind::Io && (e.sys_errno() == ENOSPC || e.sys_errno() == EDQUOT);
}

void write_zeros(WritableFile& f, std::uint64_t from, std::uint64_t to) {
  // The seam's own default: zeros written through write_at(), whatever `f`'s
  // allocate_zeros() does instead.
  f.WritableFile::allocate_zeros(from, to - from);
}

void LogPreallocator::grow(WritableFile& f, std::uint64_t from, std::uint64_t to) const {
  if (sync_.load(std::memory_order_relaxed)) {
    write_zeros(f, from, to);
  } else {
    f.allocate_zeros(from, to - from);  // for the mapping: no page-cache pages taken
  }
}

LogPreallocator::LogPreallocator(FileSystem& fs, std::filesystem::path path, std::uint64_t size) noexcept
    : fs_(fs), path_(std::move(path)), ready_(size), want_(size), synced_(size) {}

LogPreallocator::~LogPreallocator() { stop(); }

bool LogPreallocator::has_work() const noexcept {
  if (failed_.load(std::memory_order_relaxed)) return false;
  const std::uint64_t ready = ready_.load(std::memory_order_relaxed);
  return ready < want_.load(std::memory_order_relaxed) || synced_ < ready;
}

LogPreallocator::Activity::~Activity() {
  p_.last_active_ns_.store(now_ns(), std::memory_order_relaxed);
  p_.active_.fetch_sub(1, std::memory_order_release);
}

std::chrono::steady_clock::duration LogPreallocator::until_quiet() const {
  if (active_.load(std::memory_order_acquire) > 0) return kQuiet;
  const std::chrono::nanoseconds since(now_ns() - last_active_ns_.load(std::memory_order_relaxed));
  return since >= kQuiet ? std::chrono::steady_clock::duration::zero() : kQuiet - since;
}

void LogPreallocator::run() {
  std::unique_lock lk(mu_);
  for (;;) {
    work_cv_.wait(lk, [this] { return stop_ || has_work(); });
    if (stop_) return;
    // Only in a pause of the log.
    const auto wait = until_quiet();
    if (wait.count() > 0) {
      work_cv_.wait_for(lk, wait);
      continue;
    }
    const std::uint64_t at = ready_.load(std::memory_order_relaxed);
    const std::uint64_t want = want_.load(std::memory_order_relaxed);
    if (at < want) {
      const std::uint64_t to = std::min<std::uint64_t>(want, at + kChunk);
      writing_ = true;
      lk.unlock();
      try {
        grow(*file_, at, to);
      } catch (...) {
        lk.lock();
        writing_ = false;
        if (threw_out_of_space(std::current_exception())) {
          // Space ahead is a speed-up, not a need: no room for it fails
          // nothing (zeros this write did put past `at` stay, unclaimed).
          no_room(at);
          done_cv_.notify_all();
          continue;
        }
        fail("write", std::current_exception());
        return;
      }
      lk.lock();
      writing_ = false;
      ready_.store(to, std::memory_order_release);  // (the writer waited for this write: still `at`)
      stats_.thread_bytes += to - at;
      done_cv_.notify_all();
    }
    if (!sync_.load(std::memory_order_relaxed)) {
      synced_ = ready_.load(std::memory_order_relaxed);
      continue;
    }
    const std::uint64_t upto = ready_.load(std::memory_order_relaxed);
    lk.unlock();
    try {
      file_->datasync();
    } catch (...) {
      lk.lock();
      fail("fdatasync", std::current_exception());
      return;
    }
    lk.lock();
    synced_ = std::max(synced_, upto);
    ++stats_.thread_syncs;
  }
}

void LogPreallocator::no_room(std::uint64_t at) noexcept {
  ready_.store(at, std::memory_order_release);
  want_.store(at, std::memory_order_release);
  synced_ = std::min(synced_, at);
  retry_at_.store(at + kRetryAfter, std::memory_order_release);
  ++stats_.no_room;
}

void LogPreallocator::fail(const char* op, const std::exception_ptr& cause) noexcept {
  try {
    const std::string what = std::string("growing the log ahead (") + op + ")";
    try {
      std::rethrow_exception(cause);
    } catch (const PersistError& e) {
      if (e.kind() == ErrorKind::Io && e.sys_errno() != 0) {
        error_ = std::make_exception_ptr(PersistError::io(path_, what, e.sys_errno()));
      } else {
        error_ = std::current_exception();
      }
    } catch (...) {
      error_ = std::make_exception_ptr(PersistError::at(ErrorKind::Io, path_, what + " failed"));
    }
  } catch (...) {  // out of memory making the error: keep what was thrown
    error_ = cause;
  }
  failed_.store(true, std::memory_order_release);
  done_cv_.notify_all();
}

void LogPreallocator::rethrow_locked() const {
  reported_ = true;
  std::rethrow_exception(error_);
}

bool LogPreallocator::ensure_thread() noexcept {
  if (thread_.joinable()) return true;
  if (no_thread_ || stop_) return false;
  try {
    // Opened here, in the writer's thread, while `path_` is surely this log
    // (a new log may replace it at that path only after this writer's last
    // append).
    if (!file_) file_ = fs_.open_append(path_);
    thread_ = std::thread([this] { run(); });
    return true;
  } catch (...) {
    no_thread_ = true;  // reserve() grows the file itself, as without a thread
    return false;
  }
}

void LogPreallocator::advance(std::uint64_t end) noexcept {
  const std::uint64_t goal = end + lead(end);
  if (goal <= want_.load(std::memory_order_acquire) || end < retry_at_.load(std::memory_order_acquire)) return;
  const std::lock_guard lk(mu_);
  if (failed_.load(std::memory_order_relaxed) || end < retry_at_.load(std::memory_order_relaxed) || !ensure_thread()) {
    return;
  }
  want_.store(whole_mib(goal), std::memory_order_release);
  work_cv_.notify_one();
}

void LogPreallocator::reserve(std::uint64_t need, std::uint64_t bytes, WritableFile& own) {
  if (need <= ready()) return;
  std::unique_lock lk(mu_);
  if (failed_.load(std::memory_order_relaxed)) rethrow_locked();
  // The chunk in flight (which may overlap this write) ends first; the
  // thread then goes on after what this write claims.
  done_cv_.wait(lk, [this] { return !writing_; });
  if (failed_.load(std::memory_order_relaxed)) rethrow_locked();
  const std::uint64_t from = ready_.load(std::memory_order_relaxed);
  if (need <= from) return;
  const bool past = bytes >= kPastZeros;
  // Until growth is tried again after it found no room: the write's own
  // space only.
  const bool step = !past && need >= retry_at_.load(std::memory_order_relaxed);
  const std::uint64_t to = step ? need + kInlineStep : need;
  ready_.store(to, std::memory_order_release);
  want_.store(std::max(want_.load(std::memory_order_relaxed), to), std::memory_order_release);
  synced_ = std::max(synced_, to);  // the writer's own fdatasync covers it
  if (past) {
    ++stats_.past_zeros;  // the caller's write extends the file
    return;
  }
  ++stats_.inline_steps;
  stats_.inline_bytes += to - from;
  lk.unlock();
  try {
    grow(own, from, to);  // on failure the writer cuts the log: restart() resets
  } catch (...) {
    // No room for the step past the write: its own space will do. (Only
    // when even that has no room, or on any other failure, does the write
    // fail.)
    if (to == need || !threw_out_of_space(std::current_exception())) throw;
    grow(own, from, need);
    lk.lock();
    done_cv_.wait(lk, [this] { return !writing_; });
    no_room(need);  // never more than what was made: a mapping may reach up to ready()
  }
}

void LogPreallocator::check() const {
  if (!failed_.load(std::memory_order_acquire)) return;
  const std::lock_guard lk(mu_);
  rethrow_locked();
}

void LogPreallocator::stop() noexcept {
  {
    const std::lock_guard lk(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  done_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void LogPreallocator::restart(std::uint64_t size) noexcept {
  const std::lock_guard lk(mu_);
  stop_ = false;
  ready_.store(size, std::memory_order_release);
  want_.store(size, std::memory_order_release);
  synced_ = size;
}

void LogPreallocator::close() {
  stop();
  detail::FirstError first;
  {
    const std::lock_guard lk(mu_);
    if (failed_.load(std::memory_order_relaxed) && !reported_) {
      reported_ = true;
      first.keep(error_);
    }
  }
  if (file_) first.run([&] { file_->close(); });
  first.rethrow();
}

LogPreallocator::Stats LogPreallocator::stats() const {
  const std::lock_guard lk(mu_);
  return stats_;
}

bool LogPreallocator::busy() const {
  const std::lock_guard lk(mu_);
  return has_work();
}

}  // namespace iqdb::persist::wal
