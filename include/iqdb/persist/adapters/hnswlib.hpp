// HnswlibIndex: an hnswlib HNSW graph that iqdb-persist can persist (target
// iqdb::persist_hnswlib, header-only, built when hnswlib is found; see
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
// hnswlib 0.6.x defines a few functions (cpuid, AVXCapable, ...) in
// hnswlib.h without `inline`: like hnswlib.h itself, include this header in
// one translation unit per program.
//
// Thread safety: const members (search, save_to, contains) may run
// concurrently with each other; mutations need exclusive access
// (PersistedIndex provides both).
#pragma once

#include <hnswlib/hnswlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "iqdb/persist/adapters/adapter_support.hpp"
#include "iqdb/persist/adapters/side_table.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/index.hpp"
#include "iqdb/persist/io.hpp"
#include "iqdb/persist/types.hpp"

namespace iqdb::persist {

struct HnswlibParams {
  std::size_t M = 16;                 // links per node per level (level 0: 2M); 2..10000
  std::size_t ef_construction = 200;  // candidate list size while inserting
  std::size_t ef = 10;                // candidate list size while searching (at least k is used)
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
  HnswlibIndex(std::uint64_t dim, DistanceMetric metric, HnswlibParams params = {})
      : HnswlibIndex(dim, metric, params, 16) {}

  // Adopt a graph built with hnswlib directly. `space` is the space it was
  // built with (hnswlib::L2Space -> Euclidean; hnswlib::InnerProductSpace ->
  // DotProduct, or Cosine when `cosine`, for graphs of normalized vectors).
  // The graph is checked as a loaded one is (InvalidArgument if it is not
  // consistent; Unsupported for another space).
  HnswlibIndex(std::unique_ptr<hnswlib::SpaceInterface<float>> space, std::unique_ptr<Graph> graph,
               bool cosine = false) {
    const Problems& p = kFromCaller;
    if (space == nullptr || graph == nullptr) p.invalid("no space or graph given");
    if (dynamic_cast<hnswlib::L2Space*>(space.get()) != nullptr) {
      if (cosine) p.invalid("cosine needs an inner-product space");
      metric_ = DistanceMetric::Euclidean;
    } else if (dynamic_cast<hnswlib::InnerProductSpace*>(space.get()) != nullptr) {
      metric_ = cosine ? DistanceMetric::Cosine : DistanceMetric::DotProduct;
    } else {
      p.unsupported("only hnswlib::L2Space and hnswlib::InnerProductSpace are supported");
    }
    dim_ = *static_cast<const std::size_t*>(space->get_dist_func_param());
    if (dim_ == 0 || dim_ > kMaxDim) p.invalid("dimension " + std::to_string(dim_));
    if (graph->dist_func_param_ != space->get_dist_func_param()) p.invalid("the graph was not built with this space");
    check_layout(*graph, dim_, p);
    check_graph(*graph, p);
    if (graph->label_lookup_.size() != graph->cur_element_count) p.invalid("duplicate labels");
    std::size_t deleted = 0;
    for (std::size_t i = 0; i < graph->cur_element_count; ++i) {
      const auto it = graph->label_lookup_.find(graph->getExternalLabel(static_cast<hnswlib::tableint>(i)));
      if (it == graph->label_lookup_.end() || it->second != i) p.invalid("the label lookup disagrees with the graph");
      if (graph->isMarkedDeleted(static_cast<hnswlib::tableint>(i))) ++deleted;
    }
    if (deleted != graph->num_deleted_) p.invalid("the deleted count disagrees with the graph");
    space_ = std::move(space);
    g_ = std::move(graph);
  }

  HnswlibIndex(HnswlibIndex&&) noexcept = default;
  HnswlibIndex& operator=(HnswlibIndex&&) noexcept = default;
  ~HnswlibIndex() = default;

  // ------------------------------------------------------------ Index

  // addPoint (growing the graph first when it is full). Throws
  // InvalidArgument (wrong dimension, byte id), DuplicateId; hnswlib's own
  // exceptions (std::runtime_error, std::bad_alloc) become PersistError:
  // Unsupported when the graph is unchanged (growing it failed), Poisoned
  // when addPoint failed part-way (every later call then throws Poisoned).
  void insert(const VectorId& id, std::span<const float> vec, std::optional<Metadata> meta = {}) {
    check_insert(id, vec);
    const std::vector<float> v = prepared(vec);
    const std::uint64_t label = id.as_u64();
    const auto it = g_->label_lookup_.find(label);
    // A new element needs a free slot; an erased id is re-inserted in place.
    if (it == g_->label_lookup_.end() && g_->cur_element_count == g_->max_elements_) {
      adapters::detail::translate_exceptions(ErrorKind::Unsupported, "hnswlib could not grow the graph", [&] {
        g_->resizeIndex(std::max<std::size_t>(16, g_->max_elements_ * 2));
      });
    }
    if (meta) meta_.put(label, std::move(*meta));
    try {
      g_->addPoint(v.data(), static_cast<hnswlib::labeltype>(label));
    } catch (...) {
      meta_.erase(label);
      broken_ = true;
      adapters::detail::translate_exceptions(
          ErrorKind::Poisoned, "hnswlib addPoint of id " + id.to_string() + " failed (the graph is unusable)",
          [] { throw; });
    }
  }

  // markDelete. Throws IdNotFound.
  void erase(const VectorId& id) {
    check_usable();
    if (!contains(id)) throw PersistError(ErrorKind::IdNotFound, "id " + id.to_string() + " is not present");
    adapters::detail::translate_exceptions(ErrorKind::Unsupported, "hnswlib markDelete of id " + id.to_string(),
                                           [&] { g_->markDelete(static_cast<hnswlib::labeltype>(id.as_u64())); });
    meta_.erase(id.as_u64());
  }

  bool contains(const VectorId& id) const noexcept {
    if (!id.is_u64()) return false;
    const auto it = g_->label_lookup_.find(static_cast<hnswlib::labeltype>(id.as_u64()));
    return it != g_->label_lookup_.end() && !g_->isMarkedDeleted(it->second);
  }
  std::uint64_t size() const noexcept { return g_->cur_element_count - g_->num_deleted_; }
  std::uint64_t dim() const noexcept { return dim_; }
  DistanceMetric metric() const noexcept { return metric_; }

  // Persistable hook: byte ids are refused before anything is logged.
  void validate_insert(const VectorId& id, std::span<const float> vec, const std::optional<Metadata>&) const {
    check_insert(id, vec);
  }
  // Room for n more vectors (replay calls it with an estimate).
  // A hint: hnswlib failing to allocate (it throws std::runtime_error) is
  // not an error.
  void reserve(std::uint64_t n) noexcept {
    const std::uint64_t want = g_->cur_element_count + std::min<std::uint64_t>(n, kMaxElements);
    if (want <= g_->max_elements_ || want > kMaxElements) return;
    try {
      g_->resizeIndex(static_cast<std::size_t>(want));
    } catch (...) {
    }
  }

  // ------------------------------------------------------------ search

  // The k nearest live vectors, closest first. InvalidArgument when
  // query.size() != dim(); hnswlib's exceptions become PersistError
  // (Unsupported).
  std::vector<Hit> search(std::span<const float> query, std::size_t k) const {
    if (query.size() != dim_) {
      throw PersistError::argument("query has dimension " + std::to_string(query.size()) + ", the index has " +
                                   std::to_string(dim_));
    }
    k = static_cast<std::size_t>(std::min<std::uint64_t>(k, size()));
    if (k == 0) return {};
    check_usable();
    return adapters::detail::translate_exceptions(ErrorKind::Unsupported, "hnswlib search", [&] {
      const std::vector<float> q = prepared(query);
      auto pq = g_->searchKnn(q.data(), k);
      std::vector<Hit> hits(pq.size());
      for (std::size_t i = hits.size(); i-- > 0; pq.pop()) {
        hits[i] = Hit{static_cast<std::uint64_t>(pq.top().second), pq.top().first};
      }
      return hits;
    });
  }

  // The search-time candidate list size (hnswlib's ef). Not logged: it is
  // persisted with the next snapshot.
  void set_ef(std::size_t ef) noexcept { g_->ef_ = std::max<std::size_t>(ef, 1); }

  const Metadata* metadata(const VectorId& id) const noexcept {
    return id.is_u64() ? meta_.find(id.as_u64()) : nullptr;
  }
  const adapters::MetadataTable& metadata_table() const noexcept { return meta_; }
  // The graph, for anything else hnswlib offers. Mutate it only through this
  // class.
  const Graph& graph() const noexcept { return *g_; }

  // ------------------------------------------------------------ payload

  // Layout: docs/ADAPTERS.md, "hnswlib payload".
  void save_to(PayloadWriter& w) const {
    check_usable();
    const Graph& g = *g_;
    const std::size_t n = g.cur_element_count;
    w.write_u32(kPayloadVersion);
    w.write_u8(static_cast<std::uint8_t>(metric_));
    w.write_u64(dim_);
    w.write_u64(g.M_);
    w.write_u64(g.ef_construction_);
    w.write_u64(g.ef_);
    w.write_u64(n);
    w.write_i64(n == 0 ? -1 : g.maxlevel_);
    w.write_u64(n == 0 ? kNoEntry : g.enterpoint_node_);
    w.write_string(engine_text(g.level_generator_));
    w.write_string(engine_text(g.update_probability_generator_));
    meta_.save_to(w);
    // Level 0: the records in hnswlib's own layout, which is the documented
    // one (fixed-width little-endian fields, checked by check_layout).
    w.write(g.data_level0_memory_, n * g.size_data_per_element_);
    std::vector<std::uint32_t> levels;
    constexpr std::size_t kBatch = 64 * 1024;
    for (std::size_t i = 0; i < n; i += kBatch) {
      levels.clear();
      for (std::size_t j = i; j < std::min(n, i + kBatch); ++j)
        levels.push_back(static_cast<std::uint32_t>(g.element_levels_[j]));
      w.write(levels.data(), levels.size() * sizeof(std::uint32_t));
    }
    for (std::size_t i = 0; i < n; ++i) {
      if (g.element_levels_[i] > 0) {
        w.write(g.linkLists_[i], static_cast<std::size_t>(g.element_levels_[i]) * g.size_links_per_element_);
      }
    }
  }

  static HnswlibIndex load_from(PayloadReader& r) {
    const Problems& p = kFromPayload;
    const std::uint32_t version = r.read_u32();
    if (version != kPayloadVersion) r.fail("unknown hnswlib payload version " + std::to_string(version));
    const std::uint8_t metric_tag = r.read_u8();
    const auto metric = metric_from_tag(metric_tag);
    if (!metric || !(*metric == DistanceMetric::Euclidean || *metric == DistanceMetric::DotProduct ||
                     *metric == DistanceMetric::Cosine)) {
      r.fail("metric tag " + std::to_string(metric_tag) + " is not an hnswlib metric");
    }
    const std::uint64_t dim = r.read_u64();
    if (dim == 0 || dim > kMaxDim) r.fail("dimension " + std::to_string(dim) + " is out of range");
    const std::uint64_t M = r.read_u64();
    if (M < 2 || M > kMaxM) r.fail("M " + std::to_string(M) + " is out of range");
    const std::uint64_t ef_construction = r.read_u64();
    if (ef_construction < M || ef_construction > kMaxEf)
      r.fail("ef_construction " + std::to_string(ef_construction) + " is out of range");
    const std::uint64_t ef = r.read_u64();
    if (ef < 1 || ef > kMaxEf) r.fail("ef " + std::to_string(ef) + " is out of range");
    const std::uint64_t n = r.read_u64();
    const std::int64_t max_level = r.read_i64();
    const std::uint64_t entry = r.read_u64();
    const std::string level_gen = r.read_string(kMaxEngineText, "level generator state");
    const std::string update_gen = r.read_string(kMaxEngineText, "update generator state");
    adapters::MetadataTable meta = adapters::MetadataTable::load_from(r);

    // Each element: a level-0 record and its level; both before allocating.
    const std::uint64_t record = 4 + 8 * M + 4 * dim + 8;
    if (n > kMaxElements) r.fail("element count " + std::to_string(n) + " is out of range");
    r.check_count(n, record + 4, "hnswlib element");
    if (n == 0 ? (max_level != -1 || entry != kNoEntry) : (max_level < 0 || max_level > kMaxLevel || entry >= n)) {
      r.fail("entry point " + std::to_string(entry) + " / top level " + std::to_string(max_level) + " do not fit " +
             std::to_string(n) + " elements");
    }

    HnswlibIndex ix(dim, *metric,
                    HnswlibParams{static_cast<std::size_t>(M), static_cast<std::size_t>(ef_construction),
                                  static_cast<std::size_t>(ef), 100, static_cast<std::size_t>(n)},
                    0);
    Graph& g = *ix.g_;
    check_layout(g, dim, p);
    // hnswlib's constructor left the level-0 block untouched: huge pages make
    // its first touch (by the read below) several times cheaper.
    adapters::detail::advise_huge_pages(g.data_level0_memory_, static_cast<std::size_t>(n * record));
    r.read(g.data_level0_memory_, static_cast<std::size_t>(n * record));
    std::vector<std::uint32_t> levels(static_cast<std::size_t>(n));
    r.read(levels.data(), levels.size() * sizeof(std::uint32_t));
    std::uint64_t upper = 0;
    for (const std::uint32_t l : levels) {
      if (l > static_cast<std::uint64_t>(max_level))
        r.fail("element level " + std::to_string(l) + " above the top level");
      upper += l;  // at most n * kMaxLevel: no overflow
    }
    if (n > 0 && levels[static_cast<std::size_t>(entry)] != static_cast<std::uint64_t>(max_level)) {
      r.fail("the entry point is not on the top level");
    }
    r.check_count(upper, g.size_links_per_element_, "upper-level link list");
    // Link lists, allocated one element at a time; cur_element_count counts
    // the elements whose list is in place, so the graph's destructor frees
    // exactly those if reading fails.
    for (std::size_t i = 0; i < n; ++i) {
      g.linkLists_[i] = nullptr;
      g.element_levels_[i] = 0;
      if (levels[i] > 0) {
        // hnswlib's SSE search code reads (to prefetch) the slot after the
        // last one of a list; it allocates 1 spare byte, this 4 zeroed ones,
        // so that the read stays inside the block.
        const std::size_t bytes = levels[i] * g.size_links_per_element_;
        char* list = static_cast<char*>(std::malloc(bytes + kListSlack));
        if (list == nullptr) throw std::bad_alloc();
        std::memset(list + bytes, 0, kListSlack);
        g.linkLists_[i] = list;
        g.element_levels_[i] = static_cast<int>(levels[i]);
        g.cur_element_count = i + 1;
        r.read(list, bytes);
      }
      g.cur_element_count = i + 1;
    }
    g.enterpoint_node_ = n == 0 ? static_cast<hnswlib::tableint>(-1) : static_cast<hnswlib::tableint>(entry);
    g.maxlevel_ = static_cast<int>(max_level);
    if (!parse_engine(level_gen, g.level_generator_) || !parse_engine(update_gen, g.update_probability_generator_)) {
      r.fail("damaged random generator state");
    }
    check_graph(g, p);
    // Labels: unique; deleted elements keep theirs (hnswlib semantics).
    g.label_lookup_.reserve(static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < n; ++i) {
      const auto t = static_cast<hnswlib::tableint>(i);
      if (!g.label_lookup_.emplace(g.getExternalLabel(t), t).second) {
        r.fail("duplicate label " + std::to_string(g.getExternalLabel(t)));
      }
      if (g.isMarkedDeleted(t)) ++g.num_deleted_;
    }
    for (const auto& [id, m] : meta.entries()) {
      if (!ix.contains(id)) r.fail("metadata for id " + std::to_string(id) + ", which the index does not hold");
    }
    ix.meta_ = std::move(meta);
    return ix;
  }

 private:
  static constexpr std::uint32_t kPayloadVersion = 1;
  static constexpr std::uint64_t kMaxDim = std::uint64_t{1} << 24;
  static constexpr std::uint64_t kMaxM = 10000;  // hnswlib's own cap (CVE-2023-37365)
  static constexpr std::uint64_t kMaxEf = std::uint64_t{1} << 31;
  static constexpr std::int64_t kMaxLevel = 1 << 16;
  static constexpr std::uint64_t kMaxElements = std::numeric_limits<hnswlib::tableint>::max() - 1;
  static constexpr std::uint64_t kNoEntry = ~std::uint64_t{0};
  static constexpr std::uint64_t kMaxEngineText = 4096;
  static constexpr unsigned char kDeleteMark = 0x01;
  static constexpr std::size_t kListSlack = sizeof(hnswlib::tableint);

  static_assert(sizeof(hnswlib::labeltype) == 8 && sizeof(hnswlib::tableint) == 4 &&
                    sizeof(hnswlib::linklistsizeint) == 4,
                "the hnswlib payload layout assumes 8-byte labels and 4-byte link fields");

  // An empty graph with room for max(initial_capacity, min_capacity)
  // elements. load_from passes 0: a loaded graph holds exactly its elements
  // (an empty one of a large dimension allocates no element), and grows on
  // the next insert.
  HnswlibIndex(std::uint64_t dim, DistanceMetric metric, HnswlibParams params, std::size_t min_capacity)
      : dim_(dim), metric_(metric) {
    if (dim == 0 || dim > kMaxDim)
      throw PersistError::argument("hnswlib dimension must be 1.." + std::to_string(kMaxDim));
    if (params.M < 2 || params.M > kMaxM) throw PersistError::argument("hnswlib M must be 2..10000");
    space_ = make_space(metric, dim, kFromCaller);
    // hnswlib throws std::runtime_error when its allocations fail.
    g_ = adapters::detail::translate_exceptions(ErrorKind::InvalidArgument, "hnswlib could not build the graph", [&] {
      return std::make_unique<Graph>(space_.get(), std::max<std::size_t>(params.initial_capacity, min_capacity),
                                     params.M, params.ef_construction, params.random_seed);
    });
    g_->ef_ = std::max<std::size_t>(params.ef, 1);
  }

  using Problems = adapters::detail::Problems;
  static constexpr Problems kFromCaller{"hnswlib", false};
  static constexpr Problems kFromPayload{"hnswlib", true};

  static std::unique_ptr<hnswlib::SpaceInterface<float>> make_space(DistanceMetric metric, std::uint64_t dim,
                                                                    const Problems& p) {
    switch (metric) {
      case DistanceMetric::Euclidean: return std::make_unique<hnswlib::L2Space>(static_cast<std::size_t>(dim));
      case DistanceMetric::DotProduct:
      case DistanceMetric::Cosine: return std::make_unique<hnswlib::InnerProductSpace>(static_cast<std::size_t>(dim));
      default: break;
    }
    p.unsupported("metric " + std::string(to_string(metric)) + " (hnswlib has Euclidean, DotProduct and Cosine)");
  }

  // The graph's memory layout must be the documented payload layout.
  static void check_layout(const Graph& g, std::uint64_t dim, const Problems& p) {
    const std::size_t M = g.M_;
    if (M < 2 || M > kMaxM || g.maxM_ != M || g.maxM0_ != 2 * M || g.data_size_ != dim * sizeof(float) ||
        g.size_links_level0_ != 4 + 8 * M || g.offsetLevel0_ != 0 || g.offsetData_ != 4 + 8 * M ||
        g.label_offset_ != 4 + 8 * M + 4 * dim || g.size_data_per_element_ != 4 + 8 * M + 4 * dim + 8 ||
        g.size_links_per_element_ != 4 + 4 * M || g.cur_element_count > g.max_elements_) {
      p.invalid("unexpected graph layout");
    }
  }

  static unsigned char list_byte(const hnswlib::linklistsizeint* list, int i) noexcept {
    return reinterpret_cast<const unsigned char*>(list)[i];
  }

  // Every link list of every element: counts within M (2M on level 0), no
  // unknown flag bits, every neighbor an element that exists on that level;
  // the entry point on the top level. After this, no search or insert can
  // read outside the graph (the flaw behind hnswlib#673).
  static void check_graph(const Graph& g, const Problems& p) {
    const std::size_t n = g.cur_element_count;
    const auto check_list = [&](const hnswlib::linklistsizeint* list, std::size_t element, int level,
                                std::size_t max_count) {
      const std::size_t count = g.getListCount(const_cast<hnswlib::linklistsizeint*>(list));
      const unsigned char flags = list_byte(list, 2);
      const unsigned char allowed = level == 0 ? kDeleteMark : 0;
      if (count > max_count || (flags & ~allowed) != 0 || list_byte(list, 3) != 0) {
        p.invalid("link list of element " + std::to_string(element) + " at level " + std::to_string(level));
      }
      const auto* ids = reinterpret_cast<const hnswlib::tableint*>(list + 1);
      for (std::size_t j = 0; j < count; ++j) {
        hnswlib::tableint v;
        std::memcpy(&v, ids + j, sizeof v);
        if (v >= n || g.element_levels_[v] < level) {
          p.invalid("element " + std::to_string(element) + " links to " + std::to_string(v) + " at level " +
                    std::to_string(level));
        }
      }
    };
    for (std::size_t i = 0; i < n; ++i) {
      const auto t = static_cast<hnswlib::tableint>(i);
      const int levels = g.element_levels_[i];
      if (levels < 0 || levels > g.maxlevel_ || (levels > 0 && g.linkLists_[i] == nullptr)) {
        p.invalid("level of element " + std::to_string(i));
      }
      check_list(g.get_linklist0(t), i, 0, g.maxM0_);
      for (int l = 1; l <= levels; ++l) check_list(g.get_linklist(t, l), i, l, g.maxM_);
    }
    if (n == 0 ? g.maxlevel_ != -1
               : (g.enterpoint_node_ >= n || g.element_levels_[g.enterpoint_node_] != g.maxlevel_)) {
      p.invalid("entry point");
    }
  }

  template <class Engine>
  static std::string engine_text(const Engine& e) {
    std::ostringstream os;
    os << e;
    return os.str();
  }
  template <class Engine>
  static bool parse_engine(const std::string& text, Engine& e) {
    std::istringstream is(text);
    Engine parsed;
    is >> parsed;
    if (is.fail() || !(is >> std::ws).eof()) return false;
    e = parsed;
    return true;
  }

  void check_usable() const {
    if (broken_) throw PersistError(ErrorKind::Poisoned, "hnswlib graph unusable: an insert failed part-way");
  }

  void check_insert(const VectorId& id, std::span<const float> vec) const {
    check_usable();  // also refused before logging (validate_insert)
    if (vec.size() != dim_) {
      throw PersistError::argument("vector has dimension " + std::to_string(vec.size()) + ", the index has " +
                                   std::to_string(dim_));
    }
    if (id.is_bytes()) {
      throw PersistError::argument("hnswlib labels are integers: byte-string id " + id.to_string() +
                                   " cannot be stored");
    }
    if (contains(id)) throw PersistError(ErrorKind::DuplicateId, "id " + id.to_string() + " is already present");
  }

  std::vector<float> prepared(std::span<const float> vec) const {
    std::vector<float> v(vec.begin(), vec.end());
    if (metric_ == DistanceMetric::Cosine) {
      double norm = 0;
      for (const float x : v) norm += static_cast<double>(x) * static_cast<double>(x);
      if (norm > 0) {
        const auto inv = static_cast<float>(1.0 / std::sqrt(norm));
        for (float& x : v) x *= inv;
      }
    }
    return v;
  }

  std::uint64_t dim_ = 0;
  DistanceMetric metric_ = DistanceMetric::Euclidean;
  std::unique_ptr<hnswlib::SpaceInterface<float>> space_;
  std::unique_ptr<Graph> g_;
  adapters::MetadataTable meta_;
  bool broken_ = false;  // addPoint failed part-way
};

static_assert(Persistable<HnswlibIndex>);

}  // namespace iqdb::persist
