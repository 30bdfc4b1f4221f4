// Keyed hashing for the id tables a load fills from a file (internal, not
// installed). A table whose hash a file can predict can be flooded: ids
// crafted to share one bucket or probe run make building it quadratic (64k
// ids in a 750 KiB flat snapshot took 40 s to load instead of 15 ms). A key
// drawn at random, once per process and then mixed with a counter for each
// table, makes the slot of an id unpredictable from the file.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <random>
#include <string_view>

namespace iqdb::persist::detail {

// splitmix64's finaliser: a bijection of 64-bit words that spreads every
// input bit over the whole output.
constexpr std::uint64_t mix64(std::uint64_t x) noexcept {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A fresh key, unpredictable from outside the process: a secret drawn from
// std::random_device on first use (the clock if it has no entropy source),
// and a counter, through the finaliser (splitmix64's stream).
inline std::uint64_t random_key() noexcept {
  static const std::uint64_t secret = [] {
    auto s = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    try {
      std::random_device rd;
      s ^= (static_cast<std::uint64_t>(rd()) << 32) | rd();
    } catch (const std::exception&) {
    }
    return s;
  }();
  static std::atomic<std::uint64_t> counter{0};
  return mix64(secret + 0x9e3779b97f4a7c15ULL * (counter.fetch_add(1, std::memory_order_relaxed) + 1));
}

// The keyed hash of a 64-bit id: the key mixed into it before the finaliser.
constexpr std::uint64_t keyed_hash(std::uint64_t id, std::uint64_t key) noexcept { return mix64(id + key); }

// The keyed hash of a byte string: the finaliser over the key, then each
// 8-byte word and the length XORed in (every step a bijection of the state,
// which depends on the key).
inline std::uint64_t keyed_hash(std::string_view bytes, std::uint64_t key) noexcept {
  std::uint64_t h = mix64(key);
  std::size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    std::uint64_t w = 0;
    std::memcpy(&w, bytes.data() + i, 8);
    h = mix64(h ^ w);
  }
  std::uint64_t tail = 0;
  if (i < bytes.size()) std::memcpy(&tail, bytes.data() + i, bytes.size() - i);
  h = mix64(h ^ tail);
  return mix64(h ^ bytes.size());
}

// A hasher for std::unordered_set / map of integer ids, keyed per container.
struct KeyedIdHash {
  std::uint64_t key = random_key();
  std::size_t operator()(std::int64_t id) const noexcept {
    return static_cast<std::size_t>(keyed_hash(static_cast<std::uint64_t>(id), key));
  }
};

}  // namespace iqdb::persist::detail
