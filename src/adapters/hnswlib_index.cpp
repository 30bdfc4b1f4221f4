// HnswlibIndex: the hnswlib adapter. Payload layout: docs/ADAPTERS.md,
// "hnswlib payload".
#include "adapters/hnswlib_include.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "adapters/adapter_support.hpp"
#include "iqdb/persist/adapters/hnswlib.hpp"
#include "iqdb/persist/error.hpp"

namespace iqdb::persist {

namespace {

using Graph = HnswlibIndex::Graph;
using Space = hnswlib::SpaceInterface<float>;
using adapters::detail::Problems;
using adapters::detail::spread_buckets;
using adapters::detail::translate_exceptions;

constexpr std::uint32_t kPayloadVersion = 1;
constexpr std::uint64_t kMaxDim = std::uint64_t{1} << 24;
constexpr std::uint64_t kMaxM = 10000;  // hnswlib's own cap (CVE-2023-37365)
constexpr std::uint64_t kMaxEf = std::uint64_t{1} << 31;
constexpr std::int64_t kMaxLevel = 1 << 16;
constexpr std::uint64_t kMaxElements = std::numeric_limits<hnswlib::tableint>::max() - 1;
constexpr std::uint64_t kNoEntry = ~std::uint64_t{0};
constexpr std::uint64_t kMaxEngineText = 4096;
constexpr unsigned char kDeleteMark = 0x01;
constexpr std::size_t kListSlack = sizeof(hnswlib::tableint);

static_assert(sizeof(hnswlib::labeltype) == 8 && sizeof(hnswlib::tableint) == 4 &&
                  sizeof(hnswlib::linklistsizeint) == 4,
              "the hnswlib payload layout assumes 8-byte labels and 4-byte link fields");

constexpr Problems kFromCaller{"hnswlib", false};
constexpr Problems kFromPayload{"hnswlib", true};

// ---------------------------------------------------------------- checks

std::unique_ptr<Space> make_space(DistanceMetric metric, std::uint64_t dim, const Problems& p) {
  switch (metric) {
    case DistanceMetric::Euclidean: return std::make_unique<hnswlib::L2Space>(static_cast<std::size_t>(dim));
    case DistanceMetric::DotProduct:
    case DistanceMetric::Cosine: return std::make_unique<hnswlib::InnerProductSpace>(static_cast<std::size_t>(dim));
    default: break;
  }
  p.unsupported("metric " + std::string(to_string(metric)) + " (hnswlib has Euclidean, DotProduct and Cosine)");
}

// The metric of a graph built in `space` (adoption).
DistanceMetric adopted_metric(Space& space, bool cosine, const Problems& p) {
  if (dynamic_cast<hnswlib::L2Space*>(&space) != nullptr) {
    if (cosine) p.invalid("cosine needs an inner-product space");
    return DistanceMetric::Euclidean;
  }
  if (dynamic_cast<hnswlib::InnerProductSpace*>(&space) != nullptr) {
    return cosine ? DistanceMetric::Cosine : DistanceMetric::DotProduct;
  }
  p.unsupported("only hnswlib::L2Space and hnswlib::InnerProductSpace are supported");
}

// The graph's memory layout must be the documented payload layout.
void check_layout(const Graph& g, std::uint64_t dim, const Problems& p) {
  const std::size_t M = g.M_;
  if (M < 2 || M > kMaxM || g.maxM_ != M || g.maxM0_ != 2 * M || g.data_size_ != dim * sizeof(float) ||
      g.size_links_level0_ != 4 + 8 * M || g.offsetLevel0_ != 0 || g.offsetData_ != 4 + 8 * M ||
      g.label_offset_ != 4 + 8 * M + 4 * dim || g.size_data_per_element_ != 4 + 8 * M + 4 * dim + 8 ||
      g.size_links_per_element_ != 4 + 4 * M || g.cur_element_count > g.max_elements_) {
    p.invalid("unexpected graph layout");
  }
}

unsigned char list_byte(const hnswlib::linklistsizeint* list, int i) noexcept {
  return reinterpret_cast<const unsigned char*>(list)[i];
}

// One link list of `element` at `level`: a count within max_count, no
// unknown flag bits, every neighbor an element that exists on that level.
void check_list(const Graph& g, const hnswlib::linklistsizeint* list, std::size_t element, int level,
                std::size_t max_count, const Problems& p) {
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
    if (v >= g.cur_element_count || g.element_levels_[v] < level) {
      p.invalid("element " + std::to_string(element) + " links to " + std::to_string(v) + " at level " +
                std::to_string(level));
    }
  }
}

// Every link list of every element (2M on level 0, M above); the entry point
// on the top level. After this, no search or insert can read outside the
// graph (the flaw behind hnswlib#673).
void check_graph(const Graph& g, const Problems& p) {
  const std::size_t n = g.cur_element_count;
  for (std::size_t i = 0; i < n; ++i) {
    const auto t = static_cast<hnswlib::tableint>(i);
    const int levels = g.element_levels_[i];
    if (levels < 0 || levels > g.maxlevel_ || (levels > 0 && g.linkLists_[i] == nullptr)) {
      p.invalid("level of element " + std::to_string(i));
    }
    check_list(g, g.get_linklist0(t), i, 0, g.maxM0_, p);
    for (int l = 1; l <= levels; ++l) check_list(g, g.get_linklist(t, l), i, l, g.maxM_, p);
  }
  if (n == 0 ? g.maxlevel_ != -1
             : (g.enterpoint_node_ >= n || g.element_levels_[g.enterpoint_node_] != g.maxlevel_)) {
    p.invalid("entry point");
  }
}

// An adopted graph's label lookup and deleted count agree with its elements.
void check_labels(const Graph& g, const Problems& p) {
  if (g.label_lookup_.size() != g.cur_element_count) p.invalid("duplicate labels");
  std::size_t deleted = 0;
  for (std::size_t i = 0; i < g.cur_element_count; ++i) {
    const auto it = g.label_lookup_.find(g.getExternalLabel(static_cast<hnswlib::tableint>(i)));
    if (it == g.label_lookup_.end() || it->second != i) p.invalid("the label lookup disagrees with the graph");
    if (g.isMarkedDeleted(static_cast<hnswlib::tableint>(i))) ++deleted;
  }
  if (deleted != g.num_deleted_) p.invalid("the deleted count disagrees with the graph");
}

template <class Engine>
std::string engine_text(const Engine& e) {
  std::ostringstream os;
  os << e;
  return os.str();
}

template <class Engine>
bool parse_engine(const std::string& text, Engine& e) {
  std::istringstream is(text);
  Engine parsed;
  is >> parsed;
  if (is.fail() || !(is >> std::ws).eof()) return false;
  e = parsed;
  return true;
}

}  // namespace

// ---------------------------------------------------------------- Impl

struct HnswlibIndex::Impl {
  std::uint64_t dim = 0;
  DistanceMetric metric = DistanceMetric::Euclidean;
  std::unique_ptr<Space> space;
  std::unique_ptr<Graph> g;
  adapters::MetadataTable meta;
  bool broken = false;  // addPoint failed part-way

  // An empty graph with room for max(initial_capacity, min_capacity)
  // elements. load_from passes 0: a loaded graph holds exactly its elements
  // (an empty one of a large dimension allocates no element), and grows on
  // the next insert.
  Impl(std::uint64_t dim_, DistanceMetric metric_, const HnswlibParams& params, std::size_t min_capacity)
      : dim(dim_), metric(metric_) {
    if (dim == 0 || dim > kMaxDim) throw PersistError::argument("hnswlib dimension must be 1.." + std::to_string(kMaxDim));
    if (params.M < 2 || params.M > kMaxM) throw PersistError::argument("hnswlib M must be 2..10000");
    // What a load accepts (read_graph_header): a graph that could be saved
    // but never loaded again would lose every write made to it.
    if (params.ef_construction > kMaxEf) {
      throw PersistError::argument("hnswlib ef_construction must be at most " + std::to_string(kMaxEf));
    }
    if (params.ef > kMaxEf) throw PersistError::argument("hnswlib ef must be at most " + std::to_string(kMaxEf));
    space = make_space(metric, dim, kFromCaller);
    // hnswlib throws std::runtime_error when its allocations fail.
    g = translate_exceptions(ErrorKind::InvalidArgument, "hnswlib could not build the graph", [&] {
      return std::make_unique<Graph>(space.get(), std::max<std::size_t>(params.initial_capacity, min_capacity),
                                     params.M, params.ef_construction, params.random_seed);
    });
    g->ef_ = std::max<std::size_t>(params.ef, 1);
  }

  // Adoption: the graph is checked as a loaded one is.
  Impl(std::unique_ptr<Space> space_, std::unique_ptr<Graph> graph, bool cosine) {
    const Problems& p = kFromCaller;
    if (space_ == nullptr || graph == nullptr) p.invalid("no space or graph given");
    metric = adopted_metric(*space_, cosine, p);
    dim = *static_cast<const std::size_t*>(space_->get_dist_func_param());
    if (dim == 0 || dim > kMaxDim) p.invalid("dimension " + std::to_string(dim));
    if (graph->dist_func_param_ != space_->get_dist_func_param()) p.invalid("the graph was not built with this space");
    check_layout(*graph, dim, p);
    check_graph(*graph, p);
    check_labels(*graph, p);
    space = std::move(space_);
    g = std::move(graph);
  }

  bool contains(std::uint64_t label) const noexcept {
    const auto it = g->label_lookup_.find(static_cast<hnswlib::labeltype>(label));
    return it != g->label_lookup_.end() && !g->isMarkedDeleted(it->second);
  }

  void check_usable() const {
    if (broken) throw PersistError(ErrorKind::Poisoned, "hnswlib graph unusable: an insert failed part-way");
  }

  // What this index cannot take whatever it holds (validate_insert: the
  // library has checked the id's presence as the insert will find it, after
  // the mutations before it in its batch and those logged but not applied).
  void check_storable(const VectorId& id, std::span<const float> vec) const {
    check_usable();
    if (vec.size() != dim) {
      throw PersistError::argument("vector has dimension " + std::to_string(vec.size()) + ", the index has " +
                                   std::to_string(dim));
    }
    if (id.is_bytes()) {
      throw PersistError::argument("hnswlib labels are integers: byte-string id " + id.to_string() +
                                   " cannot be stored");
    }
  }
  void check_insert(const VectorId& id, std::span<const float> vec) const {
    check_storable(id, vec);
    if (contains(id.as_u64())) throw PersistError(ErrorKind::DuplicateId, "id " + id.to_string() + " is already present");
  }

  // The vector as hnswlib gets it: normalized for Cosine.
  std::vector<float> prepared(std::span<const float> vec) const {
    std::vector<float> v(vec.begin(), vec.end());
    if (metric == DistanceMetric::Cosine) adapters::detail::normalize_for_cosine(v);
    return v;
  }
};

// ---------------------------------------------------------------- Index

HnswlibIndex::HnswlibIndex(std::uint64_t dim, DistanceMetric metric, const HnswlibParams& params)
    : impl_(std::make_unique<Impl>(dim, metric, params, 16)) {}

HnswlibIndex::HnswlibIndex(std::unique_ptr<Space> space, std::unique_ptr<Graph> graph, bool cosine)
    : impl_(std::make_unique<Impl>(std::move(space), std::move(graph), cosine)) {}

HnswlibIndex::HnswlibIndex(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
HnswlibIndex::HnswlibIndex(HnswlibIndex&&) noexcept = default;
HnswlibIndex& HnswlibIndex::operator=(HnswlibIndex&&) noexcept = default;
HnswlibIndex::~HnswlibIndex() = default;

void HnswlibIndex::insert(const VectorId& id, std::span<const float> vec, std::optional<Metadata> meta) {
  Impl& ix = *impl_;
  ix.check_insert(id, vec);
  if (meta) detail::check_metadata(*meta);  // what a snapshot's reader refuses is never stored
  const std::vector<float> v = ix.prepared(vec);
  const std::uint64_t label = id.as_u64();
  // A new element needs a free slot; an erased id is re-inserted in place.
  if (ix.g->label_lookup_.find(label) == ix.g->label_lookup_.end() && ix.g->cur_element_count == ix.g->max_elements_) {
    translate_exceptions(ErrorKind::Unsupported, "hnswlib could not grow the graph", [&] {
      ix.g->resizeIndex(std::max<std::size_t>(16, ix.g->max_elements_ * 2));
    });
  }
  if (meta) ix.meta.put(label, std::move(*meta));
  try {
    ix.g->addPoint(v.data(), static_cast<hnswlib::labeltype>(label));
  } catch (...) {
    ix.meta.erase(label);
    ix.broken = true;
    translate_exceptions(ErrorKind::Poisoned,
                         "hnswlib addPoint of id " + id.to_string() + " failed (the graph is unusable)",
                         [] { throw; });
  }
}

void HnswlibIndex::erase(const VectorId& id) {
  impl_->check_usable();
  if (!contains(id)) throw PersistError(ErrorKind::IdNotFound, "id " + id.to_string() + " is not present");
  translate_exceptions(ErrorKind::Unsupported, "hnswlib markDelete of id " + id.to_string(),
                       [&] { impl_->g->markDelete(static_cast<hnswlib::labeltype>(id.as_u64())); });
  impl_->meta.erase(id.as_u64());
}

bool HnswlibIndex::contains(const VectorId& id) const noexcept { return id.is_u64() && impl_->contains(id.as_u64()); }
std::uint64_t HnswlibIndex::size() const noexcept { return impl_->g->cur_element_count - impl_->g->num_deleted_; }
std::uint64_t HnswlibIndex::dim() const noexcept { return impl_->dim; }
DistanceMetric HnswlibIndex::metric() const noexcept { return impl_->metric; }

void HnswlibIndex::validate_insert(const VectorId& id, std::span<const float> vec,
                                   const std::optional<Metadata>&) const {
  impl_->check_storable(id, vec);
}

void HnswlibIndex::reserve(std::uint64_t n) noexcept {
  Graph& g = *impl_->g;
  const std::uint64_t want = g.cur_element_count + std::min<std::uint64_t>(n, kMaxElements);
  if (want <= g.max_elements_ || want > kMaxElements) return;
  try {
    g.resizeIndex(static_cast<std::size_t>(want));
  } catch (...) {
  }
}

// ---------------------------------------------------------------- search

std::vector<HnswlibIndex::Hit> HnswlibIndex::search(std::span<const float> query, std::size_t k) const {
  const Impl& ix = *impl_;
  if (query.size() != ix.dim) {
    throw PersistError::argument("query has dimension " + std::to_string(query.size()) + ", the index has " +
                                 std::to_string(ix.dim));
  }
  k = static_cast<std::size_t>(std::min<std::uint64_t>(k, size()));
  if (k == 0) return {};
  ix.check_usable();
  return translate_exceptions(ErrorKind::Unsupported, "hnswlib search", [&] {
    const std::vector<float> q = ix.prepared(query);
    auto pq = ix.g->searchKnn(q.data(), k);
    std::vector<Hit> hits(pq.size());
    for (std::size_t i = hits.size(); i-- > 0; pq.pop()) {
      hits[i] = Hit{static_cast<std::uint64_t>(pq.top().second), pq.top().first};
    }
    return hits;
  });
}

void HnswlibIndex::set_ef(std::size_t ef) noexcept {
  impl_->g->ef_ = static_cast<std::size_t>(std::clamp<std::uint64_t>(ef, 1, kMaxEf));  // what a load accepts
}

const Metadata* HnswlibIndex::metadata(const VectorId& id) const noexcept {
  return id.is_u64() ? impl_->meta.find(id.as_u64()) : nullptr;
}
const adapters::MetadataTable& HnswlibIndex::metadata_table() const noexcept { return impl_->meta; }
const HnswlibIndex::Graph& HnswlibIndex::graph() const noexcept { return *impl_->g; }

// ---------------------------------------------------------------- save

namespace {

// Every element's level, as u32, in batches of 64 Ki.
void write_levels(PayloadWriter& w, const Graph& g) {
  const std::size_t n = g.cur_element_count;
  std::vector<std::uint32_t> levels;
  constexpr std::size_t kBatch = std::size_t{64} * 1024;
  for (std::size_t i = 0; i < n; i += kBatch) {
    levels.clear();
    for (std::size_t j = i; j < std::min(n, i + kBatch); ++j) {
      levels.push_back(static_cast<std::uint32_t>(g.element_levels_[j]));
    }
    w.write(levels.data(), levels.size() * sizeof(std::uint32_t));
  }
}

// The link lists above level 0 of every element that has any.
void write_upper_links(PayloadWriter& w, const Graph& g) {
  for (std::size_t i = 0; i < g.cur_element_count; ++i) {
    if (g.element_levels_[i] > 0) {
      w.write(g.linkLists_[i], static_cast<std::size_t>(g.element_levels_[i]) * g.size_links_per_element_);
    }
  }
}

}  // namespace

void HnswlibIndex::save_to(PayloadWriter& w) const {
  impl_->check_usable();
  const Graph& g = *impl_->g;
  const std::size_t n = g.cur_element_count;
  w.write_u32(kPayloadVersion);
  w.write_u8(static_cast<std::uint8_t>(impl_->metric));
  w.write_u64(impl_->dim);
  w.write_u64(g.M_);
  w.write_u64(g.ef_construction_);
  w.write_u64(g.ef_);
  w.write_u64(n);
  w.write_i64(n == 0 ? -1 : g.maxlevel_);
  w.write_u64(n == 0 ? kNoEntry : g.enterpoint_node_);
  w.write_string(engine_text(g.level_generator_));
  w.write_string(engine_text(g.update_probability_generator_));
  impl_->meta.save_to(w);
  // Level 0: the records in hnswlib's own layout, which is the documented
  // one (fixed-width little-endian fields, checked by check_layout).
  w.write(g.data_level0_memory_, n * g.size_data_per_element_);
  write_levels(w, g);
  write_upper_links(w, g);
}

// ---------------------------------------------------------------- load
//
// Each step reads one part of the payload, in payload order, and checks it
// before anything is allocated or linked from it.

namespace {

// The payload's fields before the metadata side table.
struct PayloadHead {
  DistanceMetric metric = DistanceMetric::Euclidean;
  std::uint64_t dim = 0;
  std::uint64_t M = 0;
  std::uint64_t ef_construction = 0;
  std::uint64_t ef = 0;
  std::uint64_t n = 0;
  std::int64_t max_level = 0;
  std::uint64_t entry = 0;
  std::string level_gen;
  std::string update_gen;

  // The size of one level-0 record (links, vector, label).
  std::uint64_t record() const noexcept { return 4 + 8 * M + 4 * dim + 8; }
};

DistanceMetric read_metric(PayloadReader& r) {
  const std::uint8_t tag = r.read_u8();
  const auto metric = metric_from_tag(tag);
  if (!metric || !(*metric == DistanceMetric::Euclidean || *metric == DistanceMetric::DotProduct ||
                   *metric == DistanceMetric::Cosine)) {
    r.fail("metric tag " + std::to_string(tag) + " is not an hnswlib metric");
  }
  return *metric;
}

// Version, metric and the graph's parameters, each checked as it is read.
PayloadHead read_head(PayloadReader& r) {
  const std::uint32_t version = r.read_u32();
  if (version != kPayloadVersion) r.fail("unknown hnswlib payload version " + std::to_string(version));
  PayloadHead h;
  h.metric = read_metric(r);
  h.dim = r.read_u64();
  if (h.dim == 0 || h.dim > kMaxDim) r.fail("dimension " + std::to_string(h.dim) + " is out of range");
  h.M = r.read_u64();
  if (h.M < 2 || h.M > kMaxM) r.fail("M " + std::to_string(h.M) + " is out of range");
  h.ef_construction = r.read_u64();
  if (h.ef_construction < h.M || h.ef_construction > kMaxEf) {
    r.fail("ef_construction " + std::to_string(h.ef_construction) + " is out of range");
  }
  h.ef = r.read_u64();
  if (h.ef < 1 || h.ef > kMaxEf) r.fail("ef " + std::to_string(h.ef) + " is out of range");
  h.n = r.read_u64();
  h.max_level = r.read_i64();
  h.entry = r.read_u64();
  h.level_gen = r.read_string(kMaxEngineText, "level generator state");
  h.update_gen = r.read_string(kMaxEngineText, "update generator state");
  return h;
}

// Each element: a level-0 record and its level; both checked against the
// payload before allocating. The entry point and top level fit the count.
void check_element_count(PayloadReader& r, const PayloadHead& h) {
  if (h.n > kMaxElements) r.fail("element count " + std::to_string(h.n) + " is out of range");
  r.check_count(h.n, h.record() + 4, "hnswlib element");
  const bool fits = h.n == 0 ? (h.max_level == -1 && h.entry == kNoEntry)
                             : (h.max_level >= 0 && h.max_level <= kMaxLevel && h.entry < h.n);
  if (!fits) {
    r.fail("entry point " + std::to_string(h.entry) + " / top level " + std::to_string(h.max_level) +
           " do not fit " + std::to_string(h.n) + " elements");
  }
}

void read_level0(PayloadReader& r, Graph& g, const PayloadHead& h) {
  const auto bytes = static_cast<std::size_t>(h.n * h.record());
  // hnswlib's constructor left the level-0 block untouched: huge pages make
  // its first touch (by the read below) several times cheaper.
  adapters::detail::advise_huge_pages(g.data_level0_memory_, bytes);
  r.read(g.data_level0_memory_, bytes);
}

// Every element's level: none above the top, the entry point on it; the
// upper-level link lists they add up to fit in the payload.
std::vector<std::uint32_t> read_levels(PayloadReader& r, const Graph& g, const PayloadHead& h) {
  std::vector<std::uint32_t> levels(static_cast<std::size_t>(h.n));
  r.read(levels.data(), levels.size() * sizeof(std::uint32_t));
  std::uint64_t upper = 0;
  for (const std::uint32_t l : levels) {
    if (l > static_cast<std::uint64_t>(h.max_level)) r.fail("element level " + std::to_string(l) + " above the top level");
    upper += l;  // at most n * kMaxLevel: no overflow
  }
  if (h.n > 0 && levels[static_cast<std::size_t>(h.entry)] != static_cast<std::uint64_t>(h.max_level)) {
    r.fail("the entry point is not on the top level");
  }
  r.check_count(upper, g.size_links_per_element_, "upper-level link list");
  return levels;
}

// Link lists, allocated one element at a time; cur_element_count counts the
// elements whose list is in place, so the graph's destructor frees exactly
// those if reading fails.
void read_upper_links(PayloadReader& r, Graph& g, const std::vector<std::uint32_t>& levels) {
  for (std::size_t i = 0; i < levels.size(); ++i) {
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
}

// The entry point, the top level and the random generators.
void restore_state(PayloadReader& r, Graph& g, const PayloadHead& h) {
  g.enterpoint_node_ = h.n == 0 ? static_cast<hnswlib::tableint>(-1) : static_cast<hnswlib::tableint>(h.entry);
  g.maxlevel_ = static_cast<int>(h.max_level);
  if (!parse_engine(h.level_gen, g.level_generator_) ||
      !parse_engine(h.update_gen, g.update_probability_generator_)) {
    r.fail("damaged random generator state");
  }
}

// Labels: unique; deleted elements keep theirs (hnswlib semantics). The
// lookup hashes with std::hash (the identity): labels that are multiples of
// its bucket count would share one bucket and make this quadratic (32k
// crafted labels: 31 s), so its bucket count is drawn at random first.
void index_labels(PayloadReader& r, Graph& g) {
  spread_buckets(g.label_lookup_, g.cur_element_count, [&](std::size_t i) {
    return g.getExternalLabel(static_cast<hnswlib::tableint>(i));
  });
  for (std::size_t i = 0; i < g.cur_element_count; ++i) {
    const auto t = static_cast<hnswlib::tableint>(i);
    if (!g.label_lookup_.emplace(g.getExternalLabel(t), t).second) {
      r.fail("duplicate label " + std::to_string(g.getExternalLabel(t)));
    }
    if (g.isMarkedDeleted(t)) ++g.num_deleted_;
  }
}

}  // namespace

HnswlibIndex HnswlibIndex::load_from(PayloadReader& r) {
  const PayloadHead h = read_head(r);
  adapters::MetadataTable meta = adapters::MetadataTable::load_from(r);
  check_element_count(r, h);

  auto ix = std::make_unique<Impl>(h.dim, h.metric,
                                   HnswlibParams{static_cast<std::size_t>(h.M),
                                                 static_cast<std::size_t>(h.ef_construction),
                                                 static_cast<std::size_t>(h.ef), 100, static_cast<std::size_t>(h.n)},
                                   0);
  Graph& g = *ix->g;
  check_layout(g, h.dim, kFromPayload);
  read_level0(r, g, h);
  read_upper_links(r, g, read_levels(r, g, h));
  restore_state(r, g, h);
  check_graph(g, kFromPayload);
  index_labels(r, g);
  for (const auto& [id, m] : meta.entries()) {
    if (!ix->contains(id)) r.fail("metadata for id " + std::to_string(id) + ", which the index does not hold");
  }
  ix->meta = std::move(meta);
  return HnswlibIndex(std::move(ix));
}

}  // namespace iqdb::persist
