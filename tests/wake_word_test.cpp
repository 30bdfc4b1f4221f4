// WakeWord (src/util/wake_word.hpp): the word a waiting commit sleeps on.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "util/wake_word.hpp"

using iqdb::persist::detail::WakeWord;
using namespace std::chrono_literals;

// A value posted before take() is taken at once, and the word is empty again.
TEST(WakeWord, PostedBeforeTakeIsTakenAtOnce) {
  WakeWord w;
  EXPECT_EQ(w.peek(), 0u);
  w.post(7);
  EXPECT_EQ(w.peek(), 7u);
  EXPECT_EQ(w.take(), 7u);
  EXPECT_EQ(w.peek(), 0u);
  w.post(1);
  w.post(2);  // the last value wins
  EXPECT_EQ(w.take(), 2u);
}

// take() sleeps until the post, and what the poster wrote before posting is
// visible after it (the waiter reads it without a lock).
TEST(WakeWord, TakeSleepsUntilThePostAndSeesWhatWasWrittenBefore) {
  WakeWord w;
  std::uint64_t payload = 0;  // written by the poster before post(), read by the waiter after take()
  std::atomic<bool> taken{false};
  std::uint64_t seen = 0;
  std::thread waiter([&] {
    const std::uint32_t v = w.take();
    seen = payload + v;
    taken.store(true);
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(taken.load()) << "take() returned before anything was posted";
  payload = 1000;
  w.post(3);
  waiter.join();
  EXPECT_EQ(seen, 1003u);
}

// The commit pattern: the word lives in the waiter's frame, and the waiter
// returns (its frame reused by the next round) as soon as it sees the post,
// possibly before the poster's FUTEX_WAKE is made. Many rounds, each on a
// fresh heap object freed by the waiter: no round is lost or woken twice
// (run under ThreadSanitizer and AddressSanitizer by scripts/test.sh).
TEST(WakeWord, WaiterMayFreeTheWordOnceItSeesThePost) {
  constexpr int kRounds = 20000;
  std::atomic<WakeWord*> slot{nullptr};
  std::atomic<int> woken{0};
  std::thread waiter([&] {
    for (int i = 0; i < kRounds; ++i) {
      auto w = std::make_unique<WakeWord>();
      slot.store(w.get(), std::memory_order_release);
      EXPECT_EQ(w->take(), static_cast<std::uint32_t>(i % 3 + 1));
      woken.fetch_add(1);
      // w is freed here, perhaps while the poster is still in post().
    }
  });
  for (int i = 0; i < kRounds; ++i) {
    WakeWord* w = nullptr;
    while ((w = slot.exchange(nullptr, std::memory_order_acquire)) == nullptr) std::this_thread::yield();
    w->post(static_cast<std::uint32_t>(i % 3 + 1));
  }
  waiter.join();
  EXPECT_EQ(woken.load(), kRounds);
}
