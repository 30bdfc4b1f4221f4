// FaissIndex: a FAISS index that iqdb-persist can persist (target
// iqdb::persist_faiss, built when FAISS is found; see docs/ADAPTERS.md).
//
//   #include <faiss/IndexFlat.h>
//   #include <faiss/IndexIDMap.h>
//   #include <iqdb/persist/adapters/faiss.hpp>
//
//   auto flat = std::make_unique<faiss::IndexFlatL2>(128);
//   auto idmap = std::make_unique<faiss::IndexIDMap2>(flat.get());
//   idmap->own_fields = true;
//   flat.release();
//   iqdb::persist::PersistConfig cfg("vectors.iqdb");
//   cfg.wal_enabled = true;
//   auto db = iqdb::persist::PersistedIndex<iqdb::persist::FaissIndex>::open_with(
//       iqdb::persist::FaissIndex(std::move(idmap)), cfg);
//   db.insert(42, vec);                                   // logged, then add_with_ids
//   auto hits = db.read([&](const auto& ix) { return ix.search(query, 10); });
//
// Supported: IndexFlat (L2, inner product, L1), IndexHNSWFlat, IndexIVFFlat
// (with ArrayInvertedLists), each bare or inside an IndexIDMap / IndexIDMap2.
// The payload is FAISS's own serialization (faiss::write_index through a
// faiss::IOWriter on the snapshot stream; read back with faiss::read_index
// through a faiss::IOReader), after a small header and the metadata side
// table. Layout: docs/ADAPTERS.md.
//
// Ids. Vector ids are u64 values up to INT64_MAX (FAISS labels are int64 and
// -1 means "no result"); byte-string ids are refused (InvalidArgument).
//   - IndexIDMap / IndexIDMap2 and IndexIVFFlat (without an array direct map)
//     take any such id: insert is add_with_ids.
//   - IndexFlat and IndexHNSWFlat without an IndexIDMap (and IndexIVFFlat with
//     an array direct map) number their vectors 0, 1, 2, ...: the id of an
//     insert must be the size the index will have when it applies
//     (validate_insert's size_before: inserts logged but not yet applied and
//     the earlier ones of the same batch count), InvalidArgument otherwise;
//     so a WriteBatch of consecutive ids works.
// Erase is remove_ids where FAISS can do it and keep every other id intact:
// IndexIDMap / IndexIDMap2 over IndexFlat, and IndexIVFFlat without an array
// direct map. Everywhere else (HNSW, positional ids, IndexIDMap over an IVF)
// erase throws Unsupported, decided before anything is logged.
//
// Metrics: METRIC_L2 -> Euclidean, METRIC_INNER_PRODUCT -> DotProduct,
// METRIC_L1 -> Manhattan (IndexFlat and IndexHNSWFlat only). Cosine: an
// inner-product index over normalized vectors (FaissOptions::cosine): the
// adapter normalizes every inserted vector and every query.
//
// Thread safety: as FAISS. Const members (search, save_to, contains) may run
// concurrently with each other; mutations need exclusive access
// (PersistedIndex provides both).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "iqdb/persist/adapters/side_table.hpp"
#include "iqdb/persist/index.hpp"
#include "iqdb/persist/io.hpp"
#include "iqdb/persist/types.hpp"

namespace faiss {
struct Index;
}

namespace iqdb::persist {

struct FaissOptions {
  // The index holds normalized vectors and inner product stands for cosine
  // similarity: metric() is Cosine, inserts and queries are normalized.
  // Requires METRIC_INNER_PRODUCT.
  bool cosine = false;
};

// How the vectors of a FAISS index get their ids.
enum class FaissIdScheme : std::uint8_t {
  Positional,  // 0, 1, 2, ... in insertion order (bare IndexFlat / IndexHNSWFlat)
  IdMap,       // IndexIDMap
  IdMap2,      // IndexIDMap2
  Native,      // IndexIVFFlat's own ids
};

class FaissIndex {
 public:
  static constexpr std::string_view index_type = "faiss";

  struct Hit {
    std::uint64_t id;
    // FAISS's own distance: squared L2 for Euclidean, the inner product for
    // DotProduct (larger is closer), cosine similarity for Cosine, L1 for
    // Manhattan.
    float distance;
    friend bool operator==(const Hit&, const Hit&) = default;
  };

  // Takes ownership of `index` (with its own_fields as set). Throws
  // PersistError: Unsupported for a type, metric or inverted-list kind the
  // adapter cannot persist; InvalidArgument for an untrained IVF index,
  // duplicate or negative ids, cosine without inner product, or a parameter
  // outside the range FAISS handles (HNSW efSearch / efConstruction /
  // upper_beam outside 1..2^20, IVF nprobe outside 1..nlist, ...: the list is
  // in docs/ADAPTERS.md, "Parameters checked").
  explicit FaissIndex(std::unique_ptr<faiss::Index> index, FaissOptions options = {});
  // An index from the bytes of faiss::write_index (faiss.serialize_index),
  // read as a snapshot's are: hostile, checked against the grammar before
  // FAISS sees them (faiss::read_index alone trusts every count it reads).
  // Throws InvalidPayload or TruncatedPayload, then as the constructor.
  static FaissIndex from_serialized(std::span<const std::byte> bytes, FaissOptions options = {});
  // A moved-from index holds nothing: destroy it or assign to it only.
  FaissIndex(FaissIndex&&) noexcept;
  FaissIndex& operator=(FaissIndex&&) noexcept;
  ~FaissIndex();

  // Index: insert -> add_with_ids (add for positional ids), erase -> remove_ids.
  // Throw InvalidArgument (wrong dimension, byte id, id > INT64_MAX, positional
  // id != size()), DuplicateId, IdNotFound, Unsupported (erase, see above).
  void insert(const VectorId& id, std::span<const float> vec, std::optional<Metadata> meta = {});
  void erase(const VectorId& id);
  bool contains(const VectorId& id) const noexcept;
  std::uint64_t size() const noexcept;
  std::uint64_t dim() const noexcept;
  DistanceMetric metric() const noexcept;

  // Persistable hooks: the index-specific refusals, decided before logging.
  void validate_insert(const VectorId& id, std::span<const float> vec, const std::optional<Metadata>& meta) const;
  // As above, with the size the index will have when the insert applies
  // (PersistedIndex passes it): a positional index takes exactly that id, so
  // batches and concurrent commits of consecutive ids validate.
  void validate_insert(const VectorId& id, std::span<const float> vec, const std::optional<Metadata>& meta,
                       std::uint64_t size_before) const;
  void validate_erase(const VectorId& id) const;
  void reserve(std::uint64_t n);

  // The k nearest vectors, closest first (FAISS's order and distances).
  // k is clamped to size(). InvalidArgument when query.size() != dim(), when
  // k is still above 2^20, or when a search parameter was changed out of
  // range after adoption; what FAISS throws arrives as PersistError
  // (Unsupported), never as faiss::FaissException or std::bad_alloc.
  std::vector<Hit> search(std::span<const float> query, std::size_t k) const;

  // The metadata of `id`, or nullptr.
  const Metadata* metadata(const VectorId& id) const noexcept;
  const adapters::MetadataTable& metadata_table() const noexcept;

  FaissIdScheme id_scheme() const noexcept;
  // Why erase is refused, or nullopt when it is supported.
  const std::optional<std::string>& erase_refusal() const noexcept;

  // The FAISS index, for searches with parameters and anything else FAISS
  // offers. Mutate it only through this class (ids, metadata and the
  // snapshot follow the adapter's view).
  const faiss::Index& faiss_index() const noexcept;

  // Persistable: payload layout in docs/ADAPTERS.md ("FAISS payload").
  void save_to(PayloadWriter& w) const;
  static FaissIndex load_from(PayloadReader& r);

  struct Impl;

 private:
  struct FromImpl {};
  FaissIndex(FromImpl, std::unique_ptr<Impl> impl) noexcept;
  std::unique_ptr<Impl> impl_;
};

static_assert(Persistable<FaissIndex>);

}  // namespace iqdb::persist
