// Internal pieces shared by the FAISS and hnswlib adapters (not an API, not
// installed): both adapters are compiled libraries (cmake/adapters.cmake).
#pragma once

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <new>
#include <span>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "iqdb/persist/error.hpp"
#include "util/huge_phase.hpp"
#include "util/keyed_hash.hpp"

namespace iqdb::persist::adapters::detail {

// Which error a problem with an index is: a payload that decodes to it is
// damaged or crafted (InvalidPayload); an index handed to an adapter's
// constructor is unsupported (Unsupported) or invalid (InvalidArgument).
// `library` names the library in the message ("FAISS", "hnswlib").
struct Problems {
  const char* library;
  bool from_payload;
  [[noreturn]] void unsupported(const std::string& what) const {
    throw PersistError(from_payload ? ErrorKind::InvalidPayload : ErrorKind::Unsupported,
                       std::string(library) + " index: " + what);
  }
  [[noreturn]] void invalid(const std::string& what) const {
    throw PersistError(from_payload ? ErrorKind::InvalidPayload : ErrorKind::InvalidArgument,
                       std::string(library) + " index: " + what);
  }
};

// Advise the 2 MiB-aligned part of [p, p + n) for transparent huge pages
// (advisory; errors ignored).
inline void advise_huge_pages([[maybe_unused]] void* p, [[maybe_unused]] std::size_t n) noexcept {
#if defined(__linux__)
  using persist::detail::kHugePage;
  using persist::detail::round_up_to_huge;
  if (n < 2 * kHugePage) return;
  const std::uintptr_t begin = round_up_to_huge(reinterpret_cast<std::uintptr_t>(p));
  const std::uintptr_t end = (reinterpret_cast<std::uintptr_t>(p) + n) & ~std::uintptr_t{kHugePage - 1};
  if (end > begin) (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// Hash flooding: the libraries' own id maps (FAISS's IndexIDMap2::rev_map,
// hnswlib's label_lookup_) are std::unordered_maps hashed with std::hash of
// an integer, the identity, so ids that are multiples of the bucket count
// all share a bucket and filling the map is quadratic. Their hasher cannot
// be keyed; their bucket count can. Gives the empty `map` a bucket count
// drawn at random above n (libstdc++ rounds it up to one of about ten primes
// per doubling), under which the n keys key_at(i) spread (no bucket above
// kMaxBucket, counted before anything is inserted); a file can make ids
// collide under a few of those primes (their product must fit 63 bits), not
// all, so another draw is made while one is crowded. No rehash follows
// while n keys are inserted.
template <class Map, class KeyAt>
void spread_buckets(Map& map, std::size_t n, KeyAt key_at) {
  constexpr std::uint32_t kMaxBucket = 32;
  constexpr int kDraws = 8;
  std::mt19937_64 rng(persist::detail::random_key());
  std::vector<std::uint32_t> counts;
  for (int draw = 0; draw < kDraws; ++draw) {
    map.rehash(n + static_cast<std::size_t>(rng() % (n + 1)));
    counts.assign(map.bucket_count(), 0);
    bool spread = true;
    for (std::size_t i = 0; i < n && spread; ++i) spread = ++counts[map.bucket(key_at(i))] <= kMaxBucket;
    if (spread) return;
  }
}

// Runs f, a call into the adapted library, and turns any exception it throws
// that is not a PersistError into one: `kind` with "<what>: <message>". The
// libraries throw their own types (faiss::FaissException, std::runtime_error
// from hnswlib) and std::bad_alloc / std::length_error for memory; none of
// them reaches the caller of an adapter.
template <class F>
decltype(auto) translate_exceptions(ErrorKind kind, const std::string& what, F&& f) {
  try {
    return f();
  } catch (const PersistError&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw PersistError(kind, what + ": out of memory");
  } catch (const std::exception& e) {
    throw PersistError(kind, what + ": " + e.what());
  } catch (...) {
    throw PersistError(kind, what + ": unknown exception");
  }
}

// Scales `v` to unit length, for Cosine: the squared length and each
// quotient in double, so that a vector whose squared length overflows or
// underflows a float (components beyond about 1e19, or below about 1e-19,
// denormals included) is normalised as any other. (Done in float, as
// faiss::fvec_renorm_L2 does, 1e20 became the zero vector and 1e-30 stayed
// unnormalised; hnswlib's adapter took 1e-40 to infinity: an outside hunt.)
// A zero vector, or one with a NaN or an infinite component, is left as
// given.
inline void normalize_for_cosine(std::span<float> v) noexcept {
  double sum = 0;
  for (const float x : v) sum += static_cast<double>(x) * static_cast<double>(x);
  if (!(sum > 0) || !std::isfinite(sum)) return;
  const double norm = std::sqrt(sum);
  for (float& x : v) x = static_cast<float>(static_cast<double>(x) / norm);
}

}  // namespace iqdb::persist::adapters::detail
