// HnswlibIndex: an hnswlib HNSW graph that iqdb-persist can persist (target
// iqdb::persist_hnswlib, a static library built when hnswlib is found; see
// docs/ADAPTERS.md).
//
//   #include <iqdb/persist/adapters/hnswlib.hpp>
//
//   iqdb::persist::PersistConfig cfg("graph.iqdb");
//   cfg.wal_enabled = true;
//   auto db = iqdb::persist::PersistedIndex<iqdb::persist::HnswlibIndex>::open_with(
//       iqdb::persist::HnswlibIndex(128, iqdb::persist::DistanceMetric::Euclidean, {.M = 16}), cfg);
//   db.insert(42, vec);                      // logged, then addPoint
//   db.erase(42);                            // logged, then markDelete
//   auto hits = db.read([&](const auto& ix) { return ix.search(query, 10); });
//
// hnswlib has no stream API and its own files carry no magic, version or
// checksum, and its loader trusts every count (a crafted file overflows the
// heap, hnswlib#673). This adapter writes the graph itself, from
// HierarchicalNSW's public members, in a documented layout of fixed-width
// little-endian fields (docs/ADAPTERS.md, "hnswlib payload"), and its loader
// checks every count, level, offset and neighbor against the payload before
// allocating or linking anything.
//
// Metrics: Euclidean (hnswlib::L2Space; distances are squared L2),
// DotProduct (hnswlib::InnerProductSpace; distance 1 - a.b), Cosine (inner
// product over vectors the adapter normalizes, on insert and on query).
// Ids are u64 labels; byte-string ids are refused (InvalidArgument). Erase is
// markDelete: the vector stays in the graph (as in hnswlib), is skipped by
// searches, and inserting its id again replaces it (addPoint's update path).
// The graph grows by itself (resizeIndex) when full.
//
// This header does not include hnswlib's: include it in any number of
// translation units. hnswlib 0.6.x defines functions and variables without
// `inline` (cpuid, xgetbv, AVXCapable and AVX512Capable in hnswlib.h; the
// *SIMD*Ext function pointers in space_l2.h and space_ip.h), so hnswlib.h
// itself still belongs in one translation unit per program: include
// <hnswlib/hnswlib.h> there to build a graph for the adopting constructor
// or to use graph(). The adapter's library defines those symbols weak, so
// it links with such a translation unit.
//
// Thread safety: const members (search, save_to, contains) may run
// concurrently with each other; mutations need exclusive access
// (PersistedIndex provides both).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "iqdb/persist/adapters/side_table.hpp"
#include "iqdb/persist/index.hpp"
#include "iqdb/persist/io.hpp"
#include "iqdb/persist/types.hpp"

// Declared only: <hnswlib/hnswlib.h> defines them.
namespace hnswlib {
template <typename MTYPE>
class SpaceInterface;
template <typename dist_t>
class HierarchicalNSW;
}  // namespace hnswlib

namespace iqdb::persist {

struct HnswlibParams {
  std::size_t M = 16;                 // links per node per level (level 0: 2M); 2..10000
  std::size_t ef_construction = 200;  // candidate list size while inserting (at most 2^31)
  std::size_t ef = 10;                // candidate list size while searching (at least k is used; at most 2^31)
  std::size_t random_seed = 100;      // seeds the level generator (as hnswlib's constructor)
  std::size_t initial_capacity = 0;   // room before the first growth
};

class HnswlibIndex {
 public:
  static constexpr std::string_view index_type = "hnswlib";
  using Graph = hnswlib::HierarchicalNSW<float>;

  struct Hit {
    std::uint64_t id;
    float distance;  // hnswlib's: squared L2, or 1 - inner product
    friend bool operator==(const Hit&, const Hit&) = default;
  };

  // An empty graph. InvalidArgument for dim 0, a metric other than
  // Euclidean, DotProduct or Cosine, or M outside 2..10000.
  HnswlibIndex(std::uint64_t dim, DistanceMetric metric, const HnswlibParams& params = {});

  // Adopt a graph built with hnswlib directly. `space` is the space it was
  // built with (hnswlib::L2Space -> Euclidean; hnswlib::InnerProductSpace ->
  // DotProduct, or Cosine when `cosine`, for graphs of normalized vectors).
  // The graph is checked as a loaded one is (InvalidArgument if it is not
  // consistent; Unsupported for another space).
  HnswlibIndex(std::unique_ptr<hnswlib::SpaceInterface<float>> space, std::unique_ptr<Graph> graph,
               bool cosine = false);

  // A moved-from index holds nothing: destroy it or assign to it only.
  HnswlibIndex(HnswlibIndex&&) noexcept;
  HnswlibIndex& operator=(HnswlibIndex&&) noexcept;
  ~HnswlibIndex();

  // ------------------------------------------------------------ Index

  // addPoint (growing the graph first when it is full). Throws
  // InvalidArgument (wrong dimension, byte id), DuplicateId; hnswlib's own
  // exceptions (std::runtime_error, std::bad_alloc) become PersistError:
  // Unsupported when the graph is unchanged (growing it failed), Poisoned
  // when addPoint failed part-way (every later call then throws Poisoned).
  void insert(const VectorId& id, std::span<const float> vec, std::optional<Metadata> meta = {});

  // markDelete. Throws IdNotFound.
  void erase(const VectorId& id);

  bool contains(const VectorId& id) const noexcept;
  std::uint64_t size() const noexcept;
  std::uint64_t dim() const noexcept;
  DistanceMetric metric() const noexcept;

  // Persistable hook: byte ids are refused before anything is logged.
  void validate_insert(const VectorId& id, std::span<const float> vec, const std::optional<Metadata>& meta) const;
  // Room for n more vectors (replay calls it with an estimate).
  // A hint: hnswlib failing to allocate (it throws std::runtime_error) is
  // not an error.
  void reserve(std::uint64_t n) noexcept;

  // ------------------------------------------------------------ search

  // The k nearest live vectors, closest first. InvalidArgument when
  // query.size() != dim(); hnswlib's exceptions become PersistError
  // (Unsupported).
  std::vector<Hit> search(std::span<const float> query, std::size_t k) const;

  // The search-time candidate list size (hnswlib's ef), at least 1 and at
  // most 2^31 (what a load accepts: larger values are taken as 2^31). Not
  // logged: it is persisted with the next snapshot.
  void set_ef(std::size_t ef) noexcept;

  const Metadata* metadata(const VectorId& id) const noexcept;
  const adapters::MetadataTable& metadata_table() const noexcept;
  // The graph, for anything else hnswlib offers (include <hnswlib/hnswlib.h>
  // to use it). Mutate it only through this class.
  const Graph& graph() const noexcept;

  // ------------------------------------------------------------ payload

  // Layout: docs/ADAPTERS.md, "hnswlib payload".
  void save_to(PayloadWriter& w) const;
  static HnswlibIndex load_from(PayloadReader& r);

  struct Impl;

 private:
  explicit HnswlibIndex(std::unique_ptr<Impl> impl) noexcept;
  std::unique_ptr<Impl> impl_;
};

static_assert(Persistable<HnswlibIndex>);

}  // namespace iqdb::persist
