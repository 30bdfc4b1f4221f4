// FaissIndex: the FAISS adapter. Payload layout: docs/ADAPTERS.md, "FAISS payload".
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>
#include <faiss/invlists/DirectMap.h>
#include <faiss/invlists/InvertedLists.h>
#include <omp.h>
#include <pthread.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <new>
#include <sstream>
#include <typeinfo>
#include <unordered_set>

#include "adapters/adapter_support.hpp"
#include "adapters/faiss_stream_guard.hpp"
#include "iqdb/persist/adapters/faiss.hpp"
#include "iqdb/persist/error.hpp"

namespace iqdb::persist {

namespace {

using adapters::detail::FaissStreamGuard;

constexpr std::uint32_t kPayloadVersion = 1;
constexpr std::uint8_t kFlagCosine = 0x01;
constexpr std::uint8_t kKnownFlags = kFlagCosine;
// Random states of the HNSW graphs in the index (one per IndexHNSW).
constexpr std::uint64_t kMaxRandomStates = 4;
constexpr std::uint64_t kMaxRandomStateBytes = 64 * 1024;
constexpr std::uint64_t kMaxId = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());

using adapters::detail::advise_huge_pages;
using adapters::detail::Problems;
using adapters::detail::spread_buckets;
using adapters::detail::translate_exceptions;

// FAISS searches on OpenMP's thread pool, and GNU OpenMP's pool does not
// survive fork(): in the child, the pool of the thread that forked names
// threads that no longer exist, and that thread's next parallel region (the
// first search of an index inherited from a parent that had searched)
// waits for them for ever. The child handler makes that thread's parallel
// regions run on itself alone (threads the child starts later get pools of
// their own, at full width). Registered once, by the first index adopted.
void keep_searches_working_after_fork() {
  static const int registered = pthread_atfork(nullptr, nullptr, [] { omp_set_num_threads(1); });
  (void)registered;
}

// ---------------------------------------------------------------- bounds
//
// What FAISS 1.7.3 does with each parameter decides its range; the bounds
// also cap what one search or insert may allocate (docs/ADAPTERS.md,
// "Parameters checked"). A value outside is refused on load (InvalidPayload)
// and on adopt (InvalidArgument), and searches and inserts check the search
// parameters again (FAISS runs them inside OpenMP regions, where an
// exception or a failed allocation terminates the process).

// efSearch, efConstruction, upper_beam: a search allocates a MinimaxHeap of
// max(efSearch, k) or upper_beam entries (8 bytes each) per thread.
constexpr int kMaxEf = 1 << 20;
// HNSW levels (assign_probas entries), links per level and per vector (the
// neighbor slots every insert appends).
constexpr std::size_t kMaxHnswLevels = 64;
constexpr int kMaxLinksPerLevel = 1 << 14;
constexpr int kMaxLinksPerVector = 1 << 16;
// k of FaissIndex::search after clamping to size(): the result arrays and
// FAISS's heaps hold k entries.
constexpr std::uint64_t kMaxSearchK = std::uint64_t{1} << 20;
// IndexIVF::parallel_mode values FAISS 1.7.3 implements (0..3; the
// PARALLEL_MODE_NO_HEAP_INIT bit leaves the result heaps uninitialized).
constexpr int kMaxParallelMode = 3;

bool is_flat(const faiss::Index* i) {
  const std::type_info& t = typeid(*i);
  return t == typeid(faiss::IndexFlat) || t == typeid(faiss::IndexFlatL2) || t == typeid(faiss::IndexFlatIP);
}
bool is_hnsw_flat(const faiss::Index* i) { return typeid(*i) == typeid(faiss::IndexHNSWFlat); }
bool is_ivf_flat(const faiss::Index* i) { return typeid(*i) == typeid(faiss::IndexIVFFlat); }

// ---------------------------------------------------------------- checks shared by every index

// The fields of faiss::Index itself: dimension, count, trained, metric and
// its argument (unused by L2, inner product and L1: FAISS sets it to 0).
void check_index_fields(const faiss::Index& ix, const char* what, const Problems& p) {
  const std::string w(what);
  if (ix.d < 1) p.invalid(w + " dimension " + std::to_string(ix.d));
  if (ix.ntotal < 0) p.invalid(w + " vector count " + std::to_string(ix.ntotal));
  if (!ix.is_trained) p.invalid(w + " is not trained");
  switch (ix.metric_type) {
    case faiss::METRIC_L2:
    case faiss::METRIC_INNER_PRODUCT:
    case faiss::METRIC_L1: break;
    default: p.unsupported(w + " metric type " + std::to_string(static_cast<int>(ix.metric_type)));
  }
  if (ix.metric_arg != 0.0f) p.invalid(w + " metric_arg must be 0 (its metric has no argument)");
}

void check_flat(const faiss::IndexFlat& f, const Problems& p) {
  check_index_fields(f, "IndexFlat", p);
  const auto d = static_cast<std::uint64_t>(f.d);
  if (f.code_size != d * sizeof(float) || f.codes.size() != static_cast<std::uint64_t>(f.ntotal) * f.code_size) {
    p.invalid("IndexFlat storage of " + std::to_string(f.codes.size()) + " bytes does not hold " +
              std::to_string(f.ntotal) + " vectors of dimension " + std::to_string(f.d));
  }
}

// ---------------------------------------------------------------- HNSW

// The parameters an HNSW search or insert runs with. FAISS 1.7.3 indexes
// slot 0 of a vector of upper_beam entries (upper_beam 0: SIGSEGV; negative:
// std::length_error inside an OpenMP region, which aborts), and allocates
// heaps of efSearch (INT_MAX: 16 GiB per search) or upper_beam entries.
void check_hnsw_search_params(const faiss::HNSW& h, const Problems& p) {
  const auto in_range = [](int v) { return v >= 1 && v <= kMaxEf; };
  if (!in_range(h.efSearch)) p.invalid("HNSW efSearch " + std::to_string(h.efSearch) + " is outside 1..2^20");
  if (!in_range(h.efConstruction))
    p.invalid("HNSW efConstruction " + std::to_string(h.efConstruction) + " is outside 1..2^20");
  if (!in_range(h.upper_beam)) p.invalid("HNSW upper_beam " + std::to_string(h.upper_beam) + " is outside 1..2^20");
}

// The level tables: how many levels a vector may get (assign_probas, from
// which random_level draws) and how many neighbor slots each level holds
// (cum_nneighbor_per_level, cumulative). Every insert appends
// cum[level + 1] slots.
void check_hnsw_level_tables(const faiss::HNSW& h, const Problems& p) {
  const auto& cum = h.cum_nneighbor_per_level;
  const auto& probas = h.assign_probas;
  if (probas.empty() || probas.size() > kMaxHnswLevels || cum.size() != probas.size() + 1 || cum[0] != 0) {
    p.invalid("HNSW level tables are inconsistent (1.." + std::to_string(kMaxHnswLevels) + " levels)");
  }
  for (const double q : probas) {
    if (!(q >= 0.0 && q <= 1.0)) p.invalid("HNSW level probability " + std::to_string(q) + " is outside 0..1");
  }
  for (std::size_t l = 1; l < cum.size(); ++l) {
    const auto links = static_cast<std::int64_t>(cum[l]) - cum[l - 1];
    if (links < 1 || links > kMaxLinksPerLevel) {
      p.invalid("HNSW neighbor count " + std::to_string(links) + " at level " + std::to_string(l - 1) +
                " is outside 1.." + std::to_string(kMaxLinksPerLevel));
    }
  }
  if (cum.back() > kMaxLinksPerVector) {
    p.invalid("HNSW neighbor slots per vector " + std::to_string(cum.back()) + " above " +
              std::to_string(kMaxLinksPerVector));
  }
}

// Levels, offsets and neighbors, so that no search or insert can read
// outside them: every neighbor exists, and exists at the level it is linked
// on (a search at that level reads the neighbor's own list there); every
// list is its neighbors first, then only empty slots (-1): FAISS's add_link
// takes a list whose last slot is not -1 for full and reads the vector of
// every slot, -1 included.
void check_hnsw_graph(const faiss::HNSW& h, std::uint64_t n, const Problems& p) {
  const auto& cum = h.cum_nneighbor_per_level;
  if (h.levels.size() != n || h.offsets.size() != n + 1 || h.offsets[0] != 0) {
    p.invalid("HNSW graph tables do not hold " + std::to_string(n) + " vectors");
  }
  for (std::uint64_t i = 0; i < n; ++i) {
    const int level = h.levels[i];
    if (level < 1 || static_cast<std::size_t>(level) >= cum.size())
      p.invalid("HNSW level of vector " + std::to_string(i));
    const auto per = static_cast<std::uint64_t>(cum[static_cast<std::size_t>(level)]);
    if (h.offsets[i + 1] < h.offsets[i] || h.offsets[i + 1] - h.offsets[i] != per) {
      p.invalid("HNSW neighbor offsets of vector " + std::to_string(i));
    }
  }
  if (h.neighbors.size() != h.offsets[n]) p.invalid("HNSW neighbor table size");
  for (std::uint64_t i = 0; i < n; ++i) {
    for (int l = 0; l < h.levels[i]; ++l) {
      const std::uint64_t b = h.offsets[i] + static_cast<std::uint64_t>(cum[static_cast<std::size_t>(l)]);
      const std::uint64_t e = h.offsets[i] + static_cast<std::uint64_t>(cum[static_cast<std::size_t>(l) + 1]);
      bool ended = false;  // an empty slot came before
      for (std::uint64_t j = b; j < e; ++j) {
        const faiss::HNSW::storage_idx_t v = h.neighbors[j];
        if (v == -1) {
          ended = true;
          continue;
        }
        const auto neighbor = [&] {
          return "HNSW neighbor " + std::to_string(v) + " of vector " + std::to_string(i) + " at level " +
                 std::to_string(l);
        };
        if (v < -1 || static_cast<std::uint64_t>(v) >= n || h.levels[static_cast<std::size_t>(v)] <= l) {
          p.invalid(neighbor());
        }
        if (ended) p.invalid(neighbor() + " follows an empty slot (-1)");
      }
    }
  }
}

// The entry point and max_level: the top level, held by the entry point.
void check_hnsw_entry_point(const faiss::HNSW& h, std::uint64_t n, const Problems& p) {
  if (n == 0) {
    if (h.entry_point != -1 || h.max_level != -1) p.invalid("empty HNSW graph with an entry point");
    return;
  }
  if (h.entry_point < 0 || static_cast<std::uint64_t>(h.entry_point) >= n ||
      h.max_level != h.levels[static_cast<std::size_t>(h.entry_point)] - 1) {
    p.invalid("HNSW entry point");
  }
  for (std::uint64_t i = 0; i < n; ++i) {
    if (h.levels[i] - 1 > h.max_level) p.invalid("HNSW vector above the top level");
  }
}

// An IndexHNSWFlat: its own fields, its storage, its graph, its parameters.
void check_hnsw(const faiss::IndexHNSW& ix, const Problems& p) {
  check_index_fields(ix, "IndexHNSWFlat", p);
  if (ix.storage == nullptr || !is_flat(ix.storage))
    p.unsupported("the storage of an IndexHNSWFlat is not an IndexFlat");
  if (ix.storage->d != ix.d || ix.storage->ntotal != ix.ntotal || ix.storage->metric_type != ix.metric_type) {
    p.invalid("the HNSW storage does not match the graph (dimension, count or metric)");
  }
  // IndexHNSW2Level's neighbor codec: nothing an IndexHNSWFlat has, and a
  // search would dereference it.
  if (ix.reconstruct_from_neighbors != nullptr) p.unsupported("an IndexHNSWFlat with reconstruct_from_neighbors");
  check_flat(*static_cast<const faiss::IndexFlat*>(ix.storage), p);
  check_hnsw_level_tables(ix.hnsw, p);
  check_hnsw_graph(ix.hnsw, static_cast<std::uint64_t>(ix.ntotal), p);
  check_hnsw_entry_point(ix.hnsw, static_cast<std::uint64_t>(ix.ntotal), p);
  check_hnsw_search_params(ix.hnsw, p);
}

// ---------------------------------------------------------------- IVF

// The parameters an IVF search runs with. FAISS 1.7.3 throws for nprobe 0
// (after clamping it to nlist) and for a parallel_mode it does not implement
// (inside an OpenMP region: the process aborts); the NO_HEAP_INIT bit makes
// it return uninitialized results. max_codes (0 = no limit) and
// quantizer_trains_alone (training only) take any value FAISS gives them.
void check_ivf_search_params(const faiss::IndexIVF& ivf, const Problems& p) {
  if (ivf.nlist < 1) p.invalid("IVF nlist 0");
  if (ivf.nprobe < 1 || ivf.nprobe > ivf.nlist) {
    p.invalid("IVF nprobe " + std::to_string(ivf.nprobe) + " is outside 1..nlist (" + std::to_string(ivf.nlist) +
              ")");
  }
  if (ivf.parallel_mode < 0 || ivf.parallel_mode > kMaxParallelMode) {
    p.invalid("IVF parallel_mode " + std::to_string(ivf.parallel_mode) + " is outside 0..3");
  }
}

// The quantizer: a flat or HNSW index of nlist centroids of the IVF's dimension.
void check_ivf_quantizer(const faiss::IndexIVF& ivf, const Problems& p) {
  const faiss::Index* q = ivf.quantizer;
  if (q == nullptr || !(is_flat(q) || is_hnsw_flat(q))) p.unsupported("the IVF quantizer is not a flat or HNSW index");
  if (q->d != ivf.d || static_cast<std::uint64_t>(q->ntotal) != ivf.nlist)
    p.invalid("the IVF quantizer does not hold nlist centroids");
  if (is_flat(q)) {
    check_flat(*static_cast<const faiss::IndexFlat*>(q), p);
  } else {
    check_hnsw(*static_cast<const faiss::IndexHNSW*>(q), p);
  }
}

// The inverted lists: nlist lists of 4d-byte codes, ntotal entries in all.
const faiss::ArrayInvertedLists& check_ivf_lists(const faiss::IndexIVF& ivf, const Problems& p) {
  if (ivf.invlists == nullptr || typeid(*ivf.invlists) != typeid(faiss::ArrayInvertedLists)) {
    p.unsupported("only IVF indexes with ArrayInvertedLists (the default) can be persisted");
  }
  const auto& lists = static_cast<const faiss::ArrayInvertedLists&>(*ivf.invlists);
  const auto d = static_cast<std::uint64_t>(ivf.d);
  if (ivf.code_size != d * sizeof(float) || lists.code_size != ivf.code_size || lists.nlist != ivf.nlist ||
      lists.ids.size() != ivf.nlist || lists.codes.size() != ivf.nlist) {
    p.invalid("IVF inverted lists do not match the index");
  }
  std::uint64_t total = 0;
  for (std::size_t l = 0; l < ivf.nlist; ++l) {
    if (lists.codes[l].size() != lists.ids[l].size() * ivf.code_size) p.invalid("IVF list " + std::to_string(l));
    total += lists.ids[l].size();
  }
  if (total != static_cast<std::uint64_t>(ivf.ntotal)) p.invalid("IVF lists do not hold ntotal vectors");
  return lists;
}

// The direct map (id -> list position): every entry points at its id.
void check_ivf_direct_map(const faiss::IndexIVF& ivf, const faiss::ArrayInvertedLists& lists, const Problems& p) {
  const faiss::DirectMap& dm = ivf.direct_map;
  const auto total = static_cast<std::uint64_t>(ivf.ntotal);
  const auto entry_is = [&](std::uint64_t lo, std::int64_t id) {
    const std::uint64_t list = faiss::lo_listno(lo);
    const std::uint64_t off = faiss::lo_offset(lo);
    return list < ivf.nlist && off < lists.ids[list].size() && lists.ids[list][off] == id;
  };
  switch (dm.type) {
    case faiss::DirectMap::NoMap:
      if (!dm.array.empty() || !dm.hashtable.empty()) p.invalid("IVF direct map");
      break;
    case faiss::DirectMap::Array:
      if (dm.array.size() != total) p.invalid("IVF direct map array");
      for (std::uint64_t i = 0; i < total; ++i) {
        if (!entry_is(static_cast<std::uint64_t>(dm.array[i]), static_cast<std::int64_t>(i)))
          p.invalid("IVF direct map array");
      }
      break;
    case faiss::DirectMap::Hashtable:
      if (dm.hashtable.size() != total) p.invalid("IVF direct map hashtable (duplicate ids?)");
      for (const auto& [id, lo] : dm.hashtable) {
        if (!entry_is(static_cast<std::uint64_t>(lo), id)) p.invalid("IVF direct map hashtable");
      }
      break;
    default: p.invalid("IVF direct map type");
  }
}

// An IndexIVFFlat, everything but its ids: returns its lists.
const faiss::ArrayInvertedLists& check_ivf(const faiss::IndexIVF& ivf, const Problems& p) {
  if (ivf.metric_type == faiss::METRIC_L1) p.unsupported("IndexIVFFlat does not search with the L1 metric");
  if (!ivf.is_trained) p.invalid("the IndexIVFFlat is not trained: train it before persisting it");
  check_index_fields(ivf, "IndexIVFFlat", p);
  check_ivf_search_params(ivf, p);
  check_ivf_quantizer(ivf, p);
  const faiss::ArrayInvertedLists& lists = check_ivf_lists(ivf, p);
  check_ivf_direct_map(ivf, lists, p);
  return lists;
}

// ---------------------------------------------------------------- the tree

void collect_hnsw(faiss::Index* i, std::vector<faiss::IndexHNSW*>& out) {
  if (auto* m = dynamic_cast<faiss::IndexIDMap*>(i)) {
    collect_hnsw(m->index, out);
  } else if (auto* ivf = dynamic_cast<faiss::IndexIVF*>(i)) {
    collect_hnsw(ivf->quantizer, out);
  } else if (auto* h = dynamic_cast<faiss::IndexHNSW*>(i)) {
    out.push_back(h);
  }
}

// The search parameters of every index in the tree (cheap: a few fields per
// index). Searches and inserts run it first: a parameter changed after the
// adapter took the index (through a pointer kept from before) is refused
// with InvalidArgument rather than crashing FAISS.
void check_search_params(const faiss::Index* i, const Problems& p) {
  if (i == nullptr) return;
  if (const auto* m = dynamic_cast<const faiss::IndexIDMap*>(i)) {
    check_search_params(m->index, p);
  } else if (const auto* ivf = dynamic_cast<const faiss::IndexIVF*>(i)) {
    check_ivf_search_params(*ivf, p);
    check_search_params(ivf->quantizer, p);
  } else if (const auto* h = dynamic_cast<const faiss::IndexHNSW*>(i)) {
    check_hnsw_search_params(h->hnsw, p);
  }
}

// faiss::IOWriter over a PayloadWriter, with the guard checking the grammar.
class PayloadIOWriter final : public faiss::IOWriter {
 public:
  explicit PayloadIOWriter(PayloadWriter& w) : w_(w), guard_(false) { name = "iqdb-persist snapshot payload"; }
  std::size_t operator()(const void* ptr, std::size_t size, std::size_t nitems) override {
    if (size != 0 && nitems > std::numeric_limits<std::size_t>::max() / size) {
      throw PersistError(ErrorKind::Unsupported, "FAISS wrote an impossibly large block");
    }
    const std::size_t bytes = size * nitems;
    if (bytes == 0) return nitems;
    guard_.feed(ptr, bytes, FaissStreamGuard::kUnknown);
    w_.write(ptr, bytes);
    return nitems;
  }
  void finish() { guard_.finish(); }

 private:
  PayloadWriter& w_;
  FaissStreamGuard guard_;
};

// faiss::IOReader over a PayloadReader. Every byte goes through the guard
// before FAISS sees it (see faiss_stream_guard.hpp). The FAISS serialization
// is the last part of the payload, so the reader's remaining() bounds it.
class PayloadIOReader final : public faiss::IOReader {
 public:
  explicit PayloadIOReader(PayloadReader& r) : r_(r), guard_(true, true) { name = "iqdb-persist snapshot payload"; }
  std::size_t operator()(void* ptr, std::size_t size, std::size_t nitems) override {
    if (size != 0 && nitems > std::numeric_limits<std::size_t>::max() / size)
      r_.fail("FAISS asked for an impossible read");
    const std::size_t bytes = size * nitems;
    if (bytes == 0) return nitems;
    capture();
    r_.read(ptr, bytes);  // TruncatedPayload past the end
    guard_.feed(ptr, bytes, r_.remaining());
    for (const auto& [at, len] : guard_.hidden()) std::memset(static_cast<char*>(ptr) + at, 0, len);
    return nitems;
  }

  // After faiss::read_index: the last capture (codes that end the stream),
  // the end of the grammar, and the captured codes moved into the IndexFlats
  // FAISS built empty, which come in the same (pre-)order.
  void finish(faiss::Index* root) {
    capture();
    guard_.finish();
    std::vector<faiss::IndexFlat*> flats;
    storage_flats(root, flats);
    if (flats.size() != captured_.size()) r_.fail("FAISS built an unexpected index for its serialization");
    for (std::size_t i = 0; i < flats.size(); ++i) {
      faiss::IndexFlat& f = *flats[i];
      const auto code_size = static_cast<std::uint64_t>(f.d) * sizeof(float);
      if (f.ntotal != 0 || !f.codes.empty() || f.code_size != code_size || captured_[i].size() % code_size != 0) {
        r_.fail("FAISS built an unexpected flat storage for its serialization");
      }
      f.codes = std::move(captured_[i]);
      f.ntotal = static_cast<std::int64_t>(f.codes.size() / code_size);
    }
    // An IndexIDMap2's count was hidden too (so FAISS built no reverse map:
    // Impl::check_id_map does); the guard checked that its id map holds it.
    if (auto* m2 = dynamic_cast<faiss::IndexIDMap2*>(root)) {
      if (m2->ntotal != 0 || !m2->rev_map.empty()) r_.fail("FAISS built an unexpected IndexIDMap2");
      m2->ntotal = static_cast<std::int64_t>(m2->id_map.size());
    }
  }

 private:
  // The IndexFlats whose codes the guard captures, in stream order.
  static void storage_flats(faiss::Index* i, std::vector<faiss::IndexFlat*>& out) {
    if (i == nullptr) return;
    if (auto* m = dynamic_cast<faiss::IndexIDMap*>(i)) {
      storage_flats(m->index, out);
    } else if (auto* h = dynamic_cast<faiss::IndexHNSW*>(i)) {
      storage_flats(h->storage, out);
    } else if (is_flat(i)) {
      out.push_back(static_cast<faiss::IndexFlat*>(i));
    }
  }

  // Codes the guard says start here: read into a vector of our own, advised
  // for huge pages before its first touch (FAISS's READXBVECTOR would
  // zero-fill one with 4 KiB pages and then copy into it).
  void capture() {
    const std::optional<std::uint64_t> bytes = guard_.take_capture();
    if (!bytes) return;
    const auto n = static_cast<std::size_t>(*bytes);  // bounded by remaining() (the guard checked)
    std::vector<std::uint8_t> codes;
    codes.reserve(n);
    advise_huge_pages(codes.data(), n);
    codes.resize(n);
    if (n > 0) {
      r_.read(codes.data(), n);
      guard_.feed(codes.data(), n, r_.remaining());
    }
    captured_.push_back(std::move(codes));
  }

  PayloadReader& r_;
  FaissStreamGuard guard_;
  std::vector<std::vector<std::uint8_t>> captured_;
};

// FAISS's serialization of an index, read from `r` through the guard (the
// snapshot's payload, or bytes a caller handed over).
std::unique_ptr<faiss::Index> read_guarded(PayloadReader& r) {
  PayloadIOReader io(r);
  std::unique_ptr<faiss::Index> index;
  try {
    index.reset(faiss::read_index(&io));
  } catch (const PersistError&) {
    throw;
  } catch (const std::exception& e) {
    r.fail(std::string("FAISS could not read its index: ") + e.what());
  }
  io.finish(index.get());
  return index;
}

}  // namespace

// ---------------------------------------------------------------- Impl

struct FaissIndex::Impl {
  std::unique_ptr<faiss::Index> index;
  bool cosine = false;
  DistanceMetric metric = DistanceMetric::Euclidean;
  FaissIdScheme scheme = FaissIdScheme::Positional;
  faiss::IndexIDMap* idmap = nullptr;    // IdMap, IdMap2
  faiss::IndexIDMap2* idmap2 = nullptr;  // IdMap2
  faiss::Index* inner = nullptr;         // the index holding the vectors
  faiss::IndexFlat* flat = nullptr;      // inner, or the storage of an HNSW inner
  faiss::IndexIVF* ivf = nullptr;        // inner when IVF
  bool own_ids = false;                  // `ids` is the id set (IndexIDMap, IVF without a hashtable)
  std::unordered_set<std::int64_t, persist::detail::KeyedIdHash> ids;  // keyed: see check_id_map
  std::optional<std::string> erase_refusal;
  adapters::MetadataTable meta;

  // A FAISS index taken over (built by the caller, or decoded from a
  // payload): every check above, split by what it looks at.
  static std::unique_ptr<Impl> adopt(std::unique_ptr<faiss::Index> index, bool cosine, const Problems& p);
  void take_id_map(faiss::Index* top, const Problems& p);
  void take_metric(const faiss::Index& top, const Problems& p);
  void take_flat(const Problems& p);
  void take_hnsw(const Problems& p);
  void take_ivf(const Problems& p);
  void check_ivf_labels_are_positions(const faiss::ArrayInvertedLists& lists, const Problems& p);
  void check_id_map(const Problems& p);

  // Set when FAISS failed in the middle of a mutation (the index may be half
  // changed): every later operation throws Poisoned.
  std::optional<std::string> broken;
  void check_usable() const {
    if (broken) throw PersistError(ErrorKind::Poisoned, "FAISS index unusable: " + *broken);
  }
  // The sizes a mutation changes, to tell a refused one from a half-done one.
  std::vector<std::int64_t> shape() const {
    std::vector<std::int64_t> v{index->ntotal, inner->ntotal};
    if (flat != nullptr) v.push_back(flat->ntotal);
    if (idmap != nullptr) v.push_back(static_cast<std::int64_t>(idmap->id_map.size()));
    if (auto* h = dynamic_cast<const faiss::IndexHNSW*>(inner)) v.push_back(static_cast<std::int64_t>(h->hnsw.levels.size()));
    return v;
  }

  std::int64_t ntotal() const noexcept { return index->ntotal; }

  bool has(std::int64_t id) const noexcept {
    switch (scheme) {
      case FaissIdScheme::Positional: return id < ntotal();
      case FaissIdScheme::IdMap2: return idmap2->rev_map.count(id) != 0;
      case FaissIdScheme::IdMap: return ids.count(id) != 0;
      case FaissIdScheme::Native: return own_ids ? ids.count(id) != 0 : ivf->direct_map.hashtable.count(id) != 0;
    }
    return false;
  }

  // The id as FAISS's label, after the checks every mutation shares.
  std::int64_t label_of(const VectorId& id) const {
    if (id.is_bytes()) {
      throw PersistError::argument("FAISS ids are integers: byte-string id " + id.to_string() + " cannot be stored");
    }
    if (id.as_u64() > kMaxId) {
      throw PersistError::argument("FAISS ids are int64: id " + id.to_string() + " is above INT64_MAX");
    }
    return static_cast<std::int64_t>(id.as_u64());
  }

  void check_insert(const VectorId& id, std::span<const float> vec) const {
    check_insert(id, vec, static_cast<std::uint64_t>(ntotal()), /*check_presence=*/true);
  }
  // `next`: the position the vector will get (ntotal() when it applies).
  // `check_presence` false for validate_insert: the library has checked the
  // id's presence as the insert will find it (after the mutations before it
  // in its batch and those logged but not applied), which the index's own
  // state does not show.
  void check_insert(const VectorId& id, std::span<const float> vec, std::uint64_t next, bool check_presence) const {
    if (vec.size() != static_cast<std::size_t>(index->d)) {
      throw PersistError::argument("vector has dimension " + std::to_string(vec.size()) + ", the index has " +
                                   std::to_string(index->d));
    }
    const std::int64_t label = label_of(id);
    if (check_presence && has(label)) {
      throw PersistError(ErrorKind::DuplicateId, "id " + id.to_string() + " is already present");
    }
    // An IVF under inner product assigns a vector with a NaN or an infinite
    // component to no list: FAISS counts it but stores it nowhere, and every
    // later save of the index fails (its lists hold fewer vectors than it
    // counts) and its erase finds nothing (an outside hunt). Under L2 the
    // quantizer still picks a list. (The cosine's normalisation keeps a
    // vector of finite components finite, and one with any other not: the
    // vector as given decides.)
    if (ivf != nullptr && ivf->metric_type == faiss::METRIC_INNER_PRODUCT &&
        !std::all_of(vec.begin(), vec.end(), [](float x) { return std::isfinite(x); })) {
      throw PersistError::argument("an IVF index under inner product" + std::string(cosine ? " (cosine)" : "") +
                                   " cannot place a vector with a NaN or infinite component in a list");
    }
    // An insert searches the graph or the quantizer: refused before logging.
    check_search_params(index.get(), Problems{"FAISS", false});
    if (scheme == FaissIdScheme::Positional && static_cast<std::uint64_t>(label) != next) {
      throw PersistError::argument("this FAISS index numbers its vectors itself (no IndexIDMap): the next id must be " +
                                   std::to_string(next) + ", not " + id.to_string() +
                                   "; wrap it in an IndexIDMap2 to choose ids");
    }
  }

  std::vector<float> prepared(std::span<const float> vec) const {
    std::vector<float> v(vec.begin(), vec.end());
    if (cosine) adapters::detail::normalize_for_cosine(v);
    return v;
  }
};

std::unique_ptr<FaissIndex::Impl> FaissIndex::Impl::adopt(std::unique_ptr<faiss::Index> index, bool cosine,
                                                          const Problems& p) {
  if (index == nullptr) p.invalid("no index given");
  keep_searches_working_after_fork();
  auto s = std::make_unique<Impl>();
  s->cosine = cosine;
  s->take_id_map(index.get(), p);
  s->take_metric(*index, p);
  if (is_flat(s->inner)) {
    s->take_flat(p);
  } else if (is_hnsw_flat(s->inner)) {
    s->take_hnsw(p);
  } else if (is_ivf_flat(s->inner)) {
    s->take_ivf(p);
  } else {
    const faiss::Index& inner = *s->inner;
    p.unsupported(std::string("index type ") + typeid(inner).name() +
                  " is not supported (IndexFlat, IndexHNSWFlat, IndexIVFFlat, optionally in an IndexIDMap / "
                  "IndexIDMap2)");
  }
  if (s->idmap != nullptr) s->check_id_map(p);
  s->index = std::move(index);
  return s;
}

// The top of the tree: an IndexIDMap / IndexIDMap2 (exactly those types) and
// its sub-index, or the index itself.
void FaissIndex::Impl::take_id_map(faiss::Index* top, const Problems& p) {
  inner = top;
  if (auto* m2 = dynamic_cast<faiss::IndexIDMap2*>(top); m2 != nullptr && typeid(*top) == typeid(faiss::IndexIDMap2)) {
    scheme = FaissIdScheme::IdMap2;
    idmap = m2;
    idmap2 = m2;
    inner = m2->index;
  } else if (auto* m = dynamic_cast<faiss::IndexIDMap*>(top);
             m != nullptr && typeid(*top) == typeid(faiss::IndexIDMap)) {
    scheme = FaissIdScheme::IdMap;
    idmap = m;
    inner = m->index;
  }
  if (inner == nullptr) p.invalid("the IndexIDMap has no sub-index");
  if (inner->d < 1) p.invalid("dimension " + std::to_string(inner->d));
  if (top->d != inner->d || top->ntotal != inner->ntotal || top->metric_type != inner->metric_type) {
    p.invalid("the IndexIDMap and its sub-index disagree on dimension, count or metric");
  }
  if (idmap != nullptr) check_index_fields(*top, "IndexIDMap", p);
}

// The iQDB metric of the index (cosine: inner product over normalized vectors).
void FaissIndex::Impl::take_metric(const faiss::Index& top, const Problems& p) {
  switch (top.metric_type) {
    case faiss::METRIC_L2: metric = DistanceMetric::Euclidean; break;
    case faiss::METRIC_INNER_PRODUCT: metric = cosine ? DistanceMetric::Cosine : DistanceMetric::DotProduct; break;
    case faiss::METRIC_L1: metric = DistanceMetric::Manhattan; break;
    default: p.unsupported("metric type " + std::to_string(static_cast<int>(top.metric_type)) + " has no iQDB metric");
  }
  if (cosine && top.metric_type != faiss::METRIC_INNER_PRODUCT) {
    p.invalid("cosine needs an inner-product index (normalized vectors)");
  }
}

void FaissIndex::Impl::take_flat(const Problems& p) {
  flat = static_cast<faiss::IndexFlat*>(inner);
  check_flat(*flat, p);
  if (idmap == nullptr)
    erase_refusal =
        "this IndexFlat numbers its vectors 0, 1, 2, ...: removing one would renumber "
        "every later vector; wrap it in an IndexIDMap2 to erase";
}

void FaissIndex::Impl::take_hnsw(const Problems& p) {
  auto* h = static_cast<faiss::IndexHNSW*>(inner);
  check_hnsw(*h, p);
  flat = static_cast<faiss::IndexFlat*>(h->storage);
  erase_refusal = "FAISS cannot remove vectors from an IndexHNSW (remove_ids is not implemented for it)";
}

// An IndexIVFFlat: checked (check_ivf), then its ids decide the scheme.
void FaissIndex::Impl::take_ivf(const Problems& p) {
  ivf = static_cast<faiss::IndexIVF*>(inner);
  const faiss::ArrayInvertedLists& lists = check_ivf(*ivf, p);
  const faiss::DirectMap& dm = ivf->direct_map;
  if (idmap != nullptr) {
    check_ivf_labels_are_positions(lists, p);
    erase_refusal =
        "FAISS's IndexIDMap::remove_ids renumbers its sub-index like an IndexFlat, which an "
        "IndexIVF does not (the ids would stop matching); use the IndexIVFFlat's own ids instead";
  } else if (dm.type == faiss::DirectMap::Array) {
    // Numbers its vectors itself (positional).
    erase_refusal = "FAISS cannot remove vectors from an IVF index with an array direct map";
  } else {
    scheme = FaissIdScheme::Native;
    if (dm.type == faiss::DirectMap::NoMap) {
      own_ids = true;
      ids.reserve(static_cast<std::size_t>(ivf->ntotal));
      for (const auto& l : lists.ids) {
        for (const std::int64_t id : l) {
          if (id < 0) p.invalid("negative id " + std::to_string(id));
          if (!ids.insert(id).second) p.invalid("duplicate id " + std::to_string(id));
        }
      }
    } else {
      for (const auto& entry : dm.hashtable) {
        if (entry.first < 0) p.invalid("negative id " + std::to_string(entry.first));
      }
    }
  }
}

// An IndexIDMap translates its IVF's labels, which must be the positions it
// gave them.
void FaissIndex::Impl::check_ivf_labels_are_positions(const faiss::ArrayInvertedLists& lists, const Problems& p) {
  const auto total = static_cast<std::uint64_t>(ivf->ntotal);
  std::vector<bool> seen(total, false);
  for (const auto& l : lists.ids) {
    for (const std::int64_t id : l) {
      if (id < 0 || static_cast<std::uint64_t>(id) >= total || seen[static_cast<std::size_t>(id)]) {
        p.invalid("an IVF inside an IndexIDMap holds a label that is not a position");
      }
      seen[static_cast<std::size_t>(id)] = true;
    }
  }
}

// The id map: ntotal ids, not negative, unique. The id sets are hashed so
// that ids crafted to collide cannot make this quadratic (hash flooding):
// IndexIDMap's `ids` with a keyed hash; IndexIDMap2's reverse map, whose
// hash is FAISS's (the identity), rebuilt here as construct_rev_map does but
// with a bucket count the ids cannot predict (spread_buckets; on load FAISS
// built none: the reader hid the count from it).
void FaissIndex::Impl::check_id_map(const Problems& p) {
  const auto& map = idmap->id_map;
  if (map.size() != static_cast<std::uint64_t>(idmap->ntotal)) p.invalid("the IndexIDMap's id map size");
  if (idmap2 != nullptr) {
    auto& rev = idmap2->rev_map;
    rev.clear();
    spread_buckets(rev, map.size(), [&](std::size_t i) { return map[i]; });
    for (std::size_t i = 0; i < map.size(); ++i) {
      if (map[i] < 0) p.invalid("negative id " + std::to_string(map[i]));
      if (!rev.emplace(map[i], static_cast<std::int64_t>(i)).second)
        p.invalid("duplicate id " + std::to_string(map[i]) + " in the IndexIDMap2");
    }
    return;
  }
  own_ids = true;
  ids.reserve(map.size());
  for (const std::int64_t id : map) {
    if (id < 0) p.invalid("negative id " + std::to_string(id));
    if (!ids.insert(id).second) p.invalid("duplicate id " + std::to_string(id) + " in the IndexIDMap");
  }
}

// ---------------------------------------------------------------- FaissIndex

FaissIndex::FaissIndex(std::unique_ptr<faiss::Index> index, FaissOptions options)
    : impl_(Impl::adopt(std::move(index), options.cosine, Problems{"FAISS", false})) {}
FaissIndex::FaissIndex(FromImpl, std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}

FaissIndex FaissIndex::from_serialized(std::span<const std::byte> bytes, FaissOptions options) {
  class Bytes final : public PayloadReader {
   public:
    explicit Bytes(std::span<const std::byte> b) : b_(b) {}
    void read(void* dst, std::size_t size) override {
      if (size > b_.size() - at_) {
        throw PersistError(ErrorKind::TruncatedPayload, "the serialized FAISS index ends after " +
                                                            std::to_string(b_.size()) + " bytes");
      }
      if (size != 0) std::memcpy(dst, b_.data() + at_, size);
      at_ += size;
    }
    std::uint64_t remaining() const noexcept override { return b_.size() - at_; }

   private:
    std::span<const std::byte> b_;
    std::size_t at_ = 0;
  } r(bytes);
  std::unique_ptr<faiss::Index> index = read_guarded(r);
  if (r.remaining() != 0) r.fail(std::to_string(r.remaining()) + " bytes follow the serialized FAISS index");
  return FaissIndex(std::move(index), options);
}
FaissIndex::FaissIndex(FaissIndex&&) noexcept = default;
FaissIndex& FaissIndex::operator=(FaissIndex&&) noexcept = default;
FaissIndex::~FaissIndex() = default;

std::uint64_t FaissIndex::size() const noexcept { return static_cast<std::uint64_t>(impl_->ntotal()); }
std::uint64_t FaissIndex::dim() const noexcept { return static_cast<std::uint64_t>(impl_->index->d); }
DistanceMetric FaissIndex::metric() const noexcept { return impl_->metric; }
FaissIdScheme FaissIndex::id_scheme() const noexcept { return impl_->scheme; }
const std::optional<std::string>& FaissIndex::erase_refusal() const noexcept { return impl_->erase_refusal; }
const faiss::Index& FaissIndex::faiss_index() const noexcept { return *impl_->index; }
const adapters::MetadataTable& FaissIndex::metadata_table() const noexcept { return impl_->meta; }

bool FaissIndex::contains(const VectorId& id) const noexcept {
  if (id.is_bytes() || id.as_u64() > kMaxId) return false;
  return impl_->has(static_cast<std::int64_t>(id.as_u64()));
}

const Metadata* FaissIndex::metadata(const VectorId& id) const noexcept {
  return id.is_u64() ? impl_->meta.find(id.as_u64()) : nullptr;
}

void FaissIndex::validate_insert(const VectorId& id, std::span<const float> vec, const std::optional<Metadata>&) const {
  impl_->check_insert(id, vec, static_cast<std::uint64_t>(impl_->ntotal()), /*check_presence=*/false);
}

void FaissIndex::validate_insert(const VectorId& id, std::span<const float> vec, const std::optional<Metadata>&,
                                 std::uint64_t size_before) const {
  impl_->check_insert(id, vec, size_before, /*check_presence=*/false);
}

void FaissIndex::validate_erase(const VectorId& id) const {
  impl_->label_of(id);
  if (impl_->erase_refusal)
    throw PersistError(ErrorKind::Unsupported, "cannot erase " + id.to_string() + ": " + *impl_->erase_refusal);
}

void FaissIndex::insert(const VectorId& id, std::span<const float> vec, std::optional<Metadata> meta) {
  Impl& s = *impl_;
  s.check_usable();
  s.check_insert(id, vec);
  if (meta) detail::check_metadata(*meta);  // what a snapshot's reader refuses is never stored
  const std::int64_t label = static_cast<std::int64_t>(id.as_u64());
  const std::vector<float> v = s.prepared(vec);
  // Everything that can fail for want of memory first, FAISS last.
  translate_exceptions(ErrorKind::Unsupported, "FAISS insert of id " + id.to_string(), [&] {
    if (s.idmap != nullptr && s.idmap->id_map.size() == s.idmap->id_map.capacity()) {
      s.idmap->id_map.reserve(std::max<std::size_t>(16, s.idmap->id_map.size() * 2));
    }
  });
  if (meta) s.meta.put(id.as_u64(), std::move(*meta));
  const bool tracked = s.own_ids;
  const std::vector<std::int64_t> before = s.shape();
  try {
    if (tracked) s.ids.insert(label);
    if (s.scheme == FaissIdScheme::Positional) {
      s.index->add(1, v.data());
    } else {
      s.index->add_with_ids(1, v.data(), &label);
    }
  } catch (...) {
    if (tracked) s.ids.erase(label);
    s.meta.erase(id.as_u64());
    const std::string what = "FAISS insert of id " + id.to_string();
    if (s.shape() != before) {
      // FAISS changed part of the index before it failed: no way back.
      s.broken = what + " failed half-way";
      translate_exceptions(ErrorKind::Poisoned, what + " failed half-way (the index is unusable)",
                           [] { throw; });
    }
    translate_exceptions(ErrorKind::Unsupported, what, [] { throw; });
  }
}

void FaissIndex::erase(const VectorId& id) {
  Impl& s = *impl_;
  s.check_usable();
  const std::int64_t label = s.label_of(id);
  if (!s.has(label)) throw PersistError(ErrorKind::IdNotFound, "id " + id.to_string() + " is not present");
  validate_erase(id);
  const faiss::IDSelectorArray sel(1, &label);
  const std::vector<std::int64_t> before = s.shape();
  std::size_t removed = 0;
  try {
    removed = s.index->remove_ids(sel);
  } catch (...) {
    const std::string what = "FAISS erase of id " + id.to_string();
    if (s.shape() != before) {
      s.broken = what + " failed half-way";
      translate_exceptions(ErrorKind::Poisoned, what + " failed half-way (the index is unusable)", [] { throw; });
    }
    translate_exceptions(ErrorKind::Unsupported, what, [] { throw; });
  }
  if (removed != 1) {
    s.broken = "FAISS removed " + std::to_string(removed) + " vectors for id " + id.to_string();
    throw PersistError(ErrorKind::Poisoned, *s.broken);
  }
  if (s.own_ids) s.ids.erase(label);
  s.meta.erase(id.as_u64());
}

void FaissIndex::reserve(std::uint64_t n) {
  // A hint: failing to reserve is not an error.
  Impl& s = *impl_;
  try {
    const std::size_t more = static_cast<std::size_t>(std::min<std::uint64_t>(n, std::uint64_t{1} << 32));
    if (s.flat != nullptr && s.ivf == nullptr) s.flat->codes.reserve(s.flat->codes.size() + more * s.flat->code_size);
    if (s.idmap != nullptr) s.idmap->id_map.reserve(s.idmap->id_map.size() + more);
    if (s.idmap2 != nullptr) s.idmap2->rev_map.reserve(s.idmap2->rev_map.size() + more);
    if (s.own_ids) s.ids.reserve(s.ids.size() + more);
  } catch (const std::bad_alloc&) {
  } catch (const std::length_error&) {
  }
}

std::vector<FaissIndex::Hit> FaissIndex::search(std::span<const float> query, std::size_t k) const {
  const Impl& s = *impl_;
  s.check_usable();
  if (query.size() != static_cast<std::size_t>(s.index->d)) {
    throw PersistError::argument("query has dimension " + std::to_string(query.size()) + ", the index has " +
                                 std::to_string(s.index->d));
  }
  k = static_cast<std::size_t>(std::min<std::uint64_t>(k, static_cast<std::uint64_t>(s.ntotal())));
  if (k == 0) return {};
  if (k > kMaxSearchK) {
    throw PersistError::argument("k " + std::to_string(k) + " is above " + std::to_string(kMaxSearchK) +
                                 " (the most one FAISS search returns here)");
  }
  check_search_params(s.index.get(), Problems{"FAISS", false});
  return translate_exceptions(ErrorKind::Unsupported, "FAISS search", [&] {
    const std::vector<float> q = s.prepared(query);
    std::vector<float> distances(k);
    std::vector<std::int64_t> labels(k);
    s.index->search(1, q.data(), static_cast<std::int64_t>(k), distances.data(), labels.data());
    std::vector<Hit> hits;
    hits.reserve(k);
    for (std::size_t i = 0; i < k; ++i) {
      if (labels[i] >= 0) hits.push_back(Hit{static_cast<std::uint64_t>(labels[i]), distances[i]});
    }
    return hits;
  });
}

// ---------------------------------------------------------------- payload

void FaissIndex::save_to(PayloadWriter& w) const {
  const Impl& s = *impl_;
  s.check_usable();
  w.write_u32(kPayloadVersion);
  w.write_u8(s.cosine ? kFlagCosine : 0);
  s.meta.save_to(w);
  // FAISS does not serialize the random generator an HNSW graph draws levels
  // from; without it, vectors inserted after a load would get other levels
  // than in the index that was saved.
  std::vector<faiss::IndexHNSW*> graphs;
  collect_hnsw(s.index.get(), graphs);
  w.write_u64(graphs.size());
  for (const faiss::IndexHNSW* g : graphs) {
    std::ostringstream os;
    os << g->hnsw.rng.mt;
    w.write_string(os.str());
  }
  PayloadIOWriter io(w);
  try {
    faiss::write_index(s.index.get(), &io);
  } catch (const faiss::FaissException& e) {
    throw PersistError(ErrorKind::Unsupported, std::string("FAISS could not serialize the index: ") + e.what());
  }
  io.finish();
}

FaissIndex FaissIndex::load_from(PayloadReader& r) {
  const std::uint32_t version = r.read_u32();
  if (version != kPayloadVersion) r.fail("unknown FAISS payload version " + std::to_string(version));
  const std::uint8_t flags = r.read_u8();
  if ((flags & ~kKnownFlags) != 0) r.fail("unknown FAISS payload flags " + std::to_string(flags));
  adapters::MetadataTable meta = adapters::MetadataTable::load_from(r);
  const std::uint64_t n_states = r.read_count(8, "HNSW random state");
  if (n_states > kMaxRandomStates) r.fail(std::to_string(n_states) + " HNSW random states");
  std::vector<std::string> states;
  for (std::uint64_t i = 0; i < n_states; ++i)
    states.push_back(r.read_string(kMaxRandomStateBytes, "HNSW random state"));

  std::unique_ptr<faiss::Index> index = read_guarded(r);

  auto s = Impl::adopt(std::move(index), (flags & kFlagCosine) != 0, Problems{"FAISS", true});
  std::vector<faiss::IndexHNSW*> graphs;
  collect_hnsw(s->index.get(), graphs);
  if (graphs.size() != states.size())
    r.fail("the payload holds " + std::to_string(states.size()) + " HNSW random states for " +
           std::to_string(graphs.size()) + " graphs");
  for (std::size_t i = 0; i < graphs.size(); ++i) {
    std::istringstream is(states[i]);
    is >> graphs[i]->hnsw.rng.mt;
    if (is.fail() || !(is >> std::ws).eof()) r.fail("damaged HNSW random state");
  }
  for (const auto& [id, m] : meta.entries()) {
    if (id > kMaxId || !s->has(static_cast<std::int64_t>(id)))
      r.fail("metadata for id " + std::to_string(id) + ", which the index does not hold");
  }
  s->meta = std::move(meta);
  return FaissIndex(FromImpl{}, std::move(s));
}

}  // namespace iqdb::persist
