// FlatIndex: an exact (brute-force) vector index with contiguous storage.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "iqdb/persist/detail/large_allocator.hpp"
#include "iqdb/persist/index.hpp"
#include "iqdb/persist/io.hpp"
#include "iqdb/persist/types.hpp"

namespace iqdb::persist {

namespace detail {

// Contiguous float storage for FlatIndex. Small blocks live on the heap;
// from 256 KiB on, the block is its own anonymous mapping, sized in whole
// 2 MiB units, and it grows with mremap, which moves the page tables instead
// of copying the data: growing never touches the existing memory again.
// (Plain realloc copies blocks up to glibc's dynamic mmap threshold, up to
// 32 MiB.) A block of 4 MiB or more that resize() fills at once (a load, a
// copy) is advised for transparent huge pages, one fault per 2 MiB; a block
// that grows by appends (reserve) is advised against them, so an append's
// first touch costs one 4 KiB page, never a whole 2 MiB one. resize() does
// not zero-fill: the loader overwrites every element.
//
// After a mapped load the block is a MappedBlock (adopt()): the snapshot's
// bytes in place, copy-on-write per page, with address space reserved behind
// them; growth within the reservation stays in place, growth beyond it
// moves the elements into a block of its own (one copy) and drops the file.
//
// The touched reserve (docs/PERFORMANCE.md, "Batch of 1000 under Always"):
// while the block is its own anonymous mapping, append() and reserve() ask a
// process-wide worker thread to fault in the capacity ahead of the end
// (MADV_POPULATE_WRITE; mlock + munlock on kernels before 5.14), up to
// prefault_reserve(size) bytes ahead, so that the first touch of fresh
// memory happens on the other CPU (say while the writer sleeps in
// fdatasync) instead of in the next append. Appends never wait for the
// worker; a reallocation or release waits for the one populate call in
// flight on this block (at most one 2 MiB huge page), so the worker never
// populates memory that is being or has been moved or unmapped. Heap blocks
// and mapped (file-backed) blocks are never populated.
class FloatBuffer {
 public:
  FloatBuffer() noexcept = default;
  FloatBuffer(const FloatBuffer& o);
  FloatBuffer& operator=(const FloatBuffer& o);
  FloatBuffer(FloatBuffer&& o) noexcept;
  FloatBuffer& operator=(FloatBuffer&& o) noexcept;
  ~FloatBuffer();

  float* data() noexcept { return p_; }
  const float* data() const noexcept { return p_; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  // Room for at least n elements; geometric growth. Throws std::bad_alloc.
  void reserve(std::size_t n);
  // New elements are uninitialised.
  void resize(std::size_t n);
  // Precondition: capacity for size() + v.size() (reserve first).
  void append(std::span<const float> v) noexcept;
  // Use a mapped block of n elements in place (replaces the contents).
  void adopt(MappedBlock block, std::size_t n) noexcept;
  // The file the elements are mapped from, or null.
  const detail::MappedOrigin* origin() const noexcept { return origin_.get(); }
  std::size_t capacity() const noexcept { return cap_; }

  // Bytes the worker keeps faulted in ahead of the end of a block of
  // `used_bytes`: max(2 MiB, used_bytes / 8), at most 64 MiB (and never
  // beyond the capacity).
  static std::size_t prefault_reserve(std::size_t used_bytes) noexcept;

  struct PrefaultSlot;  // the worker's view of one block (flat_index.cpp)

 private:
  // How the new capacity will be written: by the caller at once (resize: a
  // load, a copy) or row by row (reserve, append). Decides the page size.
  enum class Fill { AtOnce, ByAppends };
  void reallocate(std::size_t cap, Fill fill);
  void release() noexcept;
  bool own_mapping() const noexcept { return mapped_ != 0 && !origin_; }
  void prefault_ahead() noexcept;
  float* p_ = nullptr;
  std::size_t size_ = 0;
  std::size_t cap_ = 0;
  std::size_t mapped_ = 0;  // bytes of p_'s own mapping; 0: p_ is from malloc
  std::shared_ptr<const MappedOrigin> origin_;  // set: p_ starts with a file's pages
  std::shared_ptr<PrefaultSlot> slot_;  // set once the worker was asked for this block
  std::size_t asked_ = 0;               // bytes from p_ the worker was asked to fault in
};

// The touched-reserve worker, process-wide (for tests and benchmarks).
namespace prefault {
// Off: no new requests (those queued are finished). On by default.
void set_enabled(bool on) noexcept;
bool enabled() noexcept;
// Blocks until the worker has nothing queued and no populate in flight.
void wait_idle();
// Whether the worker thread is alive (it exits after 1 s without work).
bool running();
// Called by the worker (its own thread, no lock held) right before it
// populates [addr, addr + len) of a block; null: none. For tests.
using Observer = void (*)(const void* addr, std::size_t len);
void set_observer(Observer f) noexcept;
// Use the fallback (mlock + munlock) even where MADV_POPULATE_WRITE works.
void force_fallback(bool on) noexcept;
// Bytes the worker populated since the process started.
std::uint64_t populated_bytes() noexcept;
}  // namespace prefault

// The ids of FlatIndex's rows, in row order: 8 bytes a row while every id
// is a u64, a VectorId (40 bytes) a row from the first byte id on. (Every
// process that maps a snapshot holds its ids privately: at 1M rows that is
// 8 MiB instead of 38.)
class RowIds {
 public:
  // The u64 ids: large arrays in 2 MiB pages (LargeAllocator).
  using U64s = std::vector<std::uint64_t, LargeAllocator<std::uint64_t>>;

  std::size_t size() const noexcept { return wide_ ? any_.size() : u64_.size(); }
  VectorId at(std::size_t row) const { return wide_ ? any_[row] : VectorId(u64_[row]); }
  bool equals(std::size_t row, const VectorId& id) const noexcept {
    return wide_ ? any_[row] == id : id.is_u64() && id.as_u64() == u64_[row];
  }
  bool same(std::size_t a, std::size_t b) const noexcept { return wide_ ? any_[a] == any_[b] : u64_[a] == u64_[b]; }
  // Every id a u64: then u64s() holds them all.
  bool compact() const noexcept { return !wide_; }
  const U64s& u64s() const noexcept { return u64_; }
  // Otherwise: every id, in row order.
  const std::vector<VectorId>& wide() const noexcept { return any_; }
  // Room for `n` more ids like `like` (geometric); widens first for a byte id.
  void reserve_more(std::size_t n, const VectorId& like);
  void push_back(const VectorId& id);  // after reserve_more(1, id)
  void pop_back() noexcept;
  void move_last_to(std::size_t row) noexcept;
  // Replace the contents by these u64 ids (a load).
  void assign(U64s ids) noexcept;
  friend bool operator==(const RowIds& a, const RowIds& b);

 private:
  void widen();
  bool wide_ = false;
  U64s u64_;                   // while !wide_
  std::vector<VectorId> any_;  // once wide_
};

// What tests look at inside a FlatIndex (src/index/flat_index_internals.hpp).
struct FlatIndexInternals;

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
  // The largest dimension (what a snapshot's reader accepts: twice a
  // vector's bytes fit a u64).
  static constexpr std::uint64_t kMaxDim = (UINT64_MAX - 1) / sizeof(float) / 2;

  // 1 <= dim <= kMaxDim. Throws PersistError(InvalidArgument) otherwise.
  FlatIndex(std::uint64_t dim, DistanceMetric metric);
  // A moved-from index is empty, with the same dim and metric, and usable.
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
  // Make room for `n` more vectors (replay calls this with an estimate).
  void reserve(std::uint64_t n);

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
  VectorId id_at(std::size_t row) const { return ids_.at(row); }
  std::span<const float> vector_at(std::size_t row) const {
    return {data_.data() + row * dim_, static_cast<std::size_t>(dim_)};
  }
  const Metadata* metadata_at(std::size_t row) const { return meta_.empty() ? nullptr : meta_[row].get(); }

  // Persistable: payload layout in docs/FORMAT.md ("flat payload").
  void save_to(PayloadWriter& w) const;
  static FlatIndex load_from(PayloadReader& r);

  // After a mapped load (PersistConfig::map_snapshot, docs/API.md "Mapped
  // load"): whether the vectors are used in place from the snapshot file,
  // and a check that the file was not written to or truncated in place
  // since (PersistError(InvalidPayload) naming it; nothing to check when not
  // mapped). Writes to the index never reach the file.
  bool mapped() const noexcept { return data_.origin() != nullptr; }
  void check_mapping() const;

  // Equal ids, vectors (bitwise), metadata and storage order.
  friend bool operator==(const FlatIndex& a, const FlatIndex& b);

 private:
  friend struct detail::FlatIndexInternals;
  class IdTable;
  // The row-table slot of `id`, or IdTable::npos (also when moved from).
  std::size_t find(const VectorId& id) const noexcept;
  void save_ids(PayloadWriter& w) const;
  static void write_vector_padding(PayloadWriter& w);
  static void read_vector_padding(PayloadReader& r);
  void load_vectors(PayloadReader& r, std::uint64_t floats);
  std::uint64_t dim_;
  DistanceMetric metric_;
  detail::FloatBuffer data_;
  detail::RowIds ids_;
  // Per row, or empty while no row has had metadata (then no 8 bytes a row
  // are spent on null pointers): empty() or size() == ids_.size().
  std::vector<std::unique_ptr<Metadata>> meta_;
  std::unique_ptr<IdTable> table_;
};

static_assert(Persistable<FlatIndex>);

}  // namespace iqdb::persist
