// FlatIndex: an exact (brute-force) vector index with contiguous storage.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "iqdb/persist/index.hpp"
#include "iqdb/persist/io.hpp"
#include "iqdb/persist/types.hpp"

namespace iqdb::persist {

namespace detail {
// Storage for large float arrays: not zero-filled on resize (the loader
// overwrites every element), 2 MiB-aligned and advised for transparent huge
// pages when large (fewer page faults when it is first written).
void* allocate_large(std::size_t bytes);
void deallocate_large(void* p, std::size_t bytes) noexcept;

template <class T>
struct LargeArrayAllocator {
  using value_type = T;
  LargeArrayAllocator() = default;
  template <class U>
  LargeArrayAllocator(const LargeArrayAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(allocate_large(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) noexcept { deallocate_large(p, n * sizeof(T)); }
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;  // default-init: no zero fill
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
  friend bool operator==(const LargeArrayAllocator&, const LargeArrayAllocator&) noexcept { return true; }
};
}  // namespace detail

struct SearchHit {
  VectorId id;
  float distance;
  friend bool operator==(const SearchHit&, const SearchHit&) = default;
};

// Distance between two vectors of equal length under `metric`. Smaller is
// closer for every metric:
//   Cosine      1 - cos(a, b)   (1 when either vector is zero)
//   DotProduct  -(a . b)
//   Euclidean   sqrt(sum (a_i - b_i)^2)
//   Manhattan   sum |a_i - b_i|
//   Hamming     number of positions with a_i != b_i
float distance(DistanceMetric metric, std::span<const float> a, std::span<const float> b) noexcept;

// Exact index. Vectors live in one contiguous row-major float array; ids map
// to rows through an open-addressing hash table. erase() moves the last row
// into the erased one. Not thread-safe: synchronise externally (or use
// PersistedIndex, which does).
class FlatIndex {
 public:
  static constexpr std::string_view index_type = "flat";

  // dim >= 1. Throws PersistError(InvalidArgument) otherwise.
  FlatIndex(std::uint64_t dim, DistanceMetric metric);
  FlatIndex(FlatIndex&&) noexcept;
  FlatIndex& operator=(FlatIndex&&) noexcept;
  FlatIndex(const FlatIndex&);
  FlatIndex& operator=(const FlatIndex&);
  ~FlatIndex();

  // Throws InvalidArgument (vector of the wrong dimension), DuplicateId.
  void insert(const VectorId& id, std::span<const float> vec, std::optional<Metadata> meta = {});
  // Throws IdNotFound.
  void erase(const VectorId& id);
  bool contains(const VectorId& id) const noexcept;

  std::uint64_t size() const noexcept { return ids_.size(); }
  std::uint64_t dim() const noexcept { return dim_; }
  DistanceMetric metric() const noexcept { return metric_; }

  // The stored vector of `id`, or an empty span.
  std::span<const float> get(const VectorId& id) const noexcept;
  // The metadata of `id`, or nullptr.
  const Metadata* metadata(const VectorId& id) const noexcept;

  // The k nearest vectors to `query`, closest first; ties go to the vector
  // stored first. query.size() must equal dim() (InvalidArgument otherwise).
  std::vector<SearchHit> search(std::span<const float> query, std::size_t k) const;

  // Rows in storage order (for iteration and tests).
  const VectorId& id_at(std::size_t row) const { return ids_[row]; }
  std::span<const float> vector_at(std::size_t row) const {
    return {data_.data() + row * dim_, static_cast<std::size_t>(dim_)};
  }
  const Metadata* metadata_at(std::size_t row) const { return meta_[row].get(); }

  // Persistable: payload layout in docs/FORMAT.md ("flat payload").
  void save_to(PayloadWriter& w) const;
  static FlatIndex load_from(PayloadReader& r);

  // Equal ids, vectors (bitwise), metadata and storage order.
  friend bool operator==(const FlatIndex& a, const FlatIndex& b);

 private:
  class IdTable;
  std::uint64_t dim_;
  DistanceMetric metric_;
  std::vector<float, detail::LargeArrayAllocator<float>> data_;
  std::vector<VectorId> ids_;
  std::vector<std::unique_ptr<Metadata>> meta_;
  std::unique_ptr<IdTable> table_;
};

static_assert(Persistable<FlatIndex>);

}  // namespace iqdb::persist
