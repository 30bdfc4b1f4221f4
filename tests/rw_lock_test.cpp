// detail::RwLock prefers writers: once a writer waits, new readers wait
// behind it, so that a stream of readers cannot hold a writer off for ever
// (the Python module's replicas take it around every call: close() and
// promote() waited for seconds behind searches under std::shared_mutex,
// which lets new readers overtake a waiting writer).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <shared_mutex>
#include <thread>

#include "iqdb/persist/detail/rw_lock.hpp"

namespace iqdb::persist::detail {
namespace {

TEST(RwLock, AWaitingWriterKeepsNewReadersOut) {
  RwLock l;
  l.lock_shared();  // a reader in
  std::atomic<bool> wrote{false};
  std::thread writer([&] {
    std::unique_lock lk(l);  // waits for the reader
    wrote = true;
  });
  // Once the writer waits, a new reader is refused. Polled: when the writer
  // starts waiting is up to the scheduler (a lock that lets readers overtake
  // it never refuses one, and the loop ends after 30 s).
  bool refused = false;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!refused && std::chrono::steady_clock::now() < until) {
    if (l.try_lock_shared()) {
      l.unlock_shared();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    } else {
      refused = true;
    }
  }
  EXPECT_TRUE(refused) << "a new reader was let in while a writer waited";
  EXPECT_FALSE(wrote.load());
  l.unlock_shared();
  writer.join();
  EXPECT_TRUE(wrote.load());
  // Free again: readers share it.
  std::shared_lock a(l);
  EXPECT_TRUE(l.try_lock_shared());
  l.unlock_shared();
}

}  // namespace
}  // namespace iqdb::persist::detail
