// WakeWord: one thread sleeps until another posts a value to it (internal).
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>

namespace iqdb::persist::detail {

// A 32-bit word a waiter sleeps on (a Linux futex) until a poster stores a
// value other than 0 in it. Unlike a mutex with a condition variable:
//  - post() is one atomic exchange, plus one FUTEX_WAKE only when the
//    waiter is asleep (it marks the word so before it sleeps), and takes no
//    lock: the woken thread does not wake only to block on the poster's
//    mutex and then wake it again when it lets go (glibc's condition
//    variables re-take the mutex as contended, so every such wake-up cost
//    two futex calls more);
//  - the poster may post to a word that lives in the waiter's stack frame:
//    once the exchange is visible the waiter may return and the frame be
//    reused, and the FUTEX_WAKE that may follow only names the address (the
//    kernel hashes it and reads nothing there; at worst another waiter that
//    sleeps on a futex at the same address wakes, and futex waiters
//    re-check their word in a loop, as take() does).
// One waiter at a time; any number of posters (the last value wins).
// Values are 1 .. kMaxValue.
class WakeWord {
 public:
  static constexpr std::uint32_t kMaxValue = 0x7fffffff;

  // Store v and wake the waiter if it sleeps.
  void post(std::uint32_t v) noexcept {
    std::atomic<std::uint32_t>* const w = &word_;
    if (w->exchange(v, std::memory_order_acq_rel) == kAsleep) futex(w, FUTEX_WAKE_PRIVATE, 1);
  }
  // The value posted, 0 if none (acquire: what the poster wrote before
  // posting is visible once this is not 0). For the waiter, outside take().
  std::uint32_t peek() const noexcept { return word_.load(std::memory_order_acquire); }
  // Sleep until a value is posted, then take it (the word is 0 again).
  std::uint32_t take() noexcept {
    for (;;) {
      std::uint32_t v = word_.load(std::memory_order_acquire);
      if (v != 0 && v != kAsleep) {
        if (word_.compare_exchange_strong(v, 0, std::memory_order_acquire)) return v;
        continue;  // a newer post
      }
      // Mark the word before sleeping, so that a post knows to wake; a post
      // in between makes the exchange fail, and the loop takes it.
      if (v == 0 && !word_.compare_exchange_strong(v, kAsleep, std::memory_order_acquire)) continue;
      // Sleeps only while the word is still marked: a post before this
      // call makes it return at once (EAGAIN). EINTR and spurious wake-ups
      // loop.
      futex(&word_, FUTEX_WAIT_PRIVATE, kAsleep);
    }
  }

 private:
  static constexpr std::uint32_t kAsleep = 0x80000000;  // the waiter sleeps (or is about to)

  static void futex(std::atomic<std::uint32_t>* w, int op, std::uint32_t val) noexcept {
    static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t) &&
                      std::atomic<std::uint32_t>::is_always_lock_free,
                  "a futex is a plain 32-bit word");
    const int saved = errno;  // callers do not expect errno to move
    (void)::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(w), op, val, nullptr, nullptr, 0);  // NOLINT
    errno = saved;
  }

  std::atomic<std::uint32_t> word_{0};
};

}  // namespace iqdb::persist::detail
