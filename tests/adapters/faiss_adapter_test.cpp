// The FAISS adapter: every supported index type (IndexFlat L2 / IP / L1,
// IndexHNSWFlat, IndexIVFFlat with and without a hashtable direct map, each
// bare or in an IndexIDMap / IndexIDMap2, and cosine over inner product)
// saved and loaded through PersistedIndex, compared with the index that was
// never saved (same ids, same distances, same FAISS serialization); exact
// indexes also against a brute-force model; WAL recovery from a crash image
// against the index that never crashed; the refusals decided before logging;
// and damaged or crafted payloads, which must fail before FAISS allocates
// from a count the payload cannot hold.
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexPQ.h>
#include <faiss/clone_index.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>
#include <gtest/gtest.h>
#include <omp.h>
#include <rapidcheck/gtest.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <functional>
#include <iqdb/persist.hpp>
#include <iqdb/persist/adapters/faiss.hpp>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "adapters/adapter_test_util.hpp"
// The faiss_crc fuzz target (its entry point is not defined here).
#include "../../fuzz/faiss_crc_fuzzer.cpp"
#include "adapters/faiss_stream_guard.hpp"
#include "support/sync_gate.hpp"
#include "support/test_util.hpp"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;
using test::BufferReader;
using test::BufferWriter;
using test::config_for;
using test::crash_image;
using test::error_of;
using test::gaussian;
using test::get_u64;
using test::row;
using test::TempDir;

// FAISS 1.7.3's reader leaks the objects it had built when a read fails
// midway ("TODO: in this file, the read functions that encounter errors may
// leak memory", faiss/impl/index_read.cpp); the tests that feed it damaged
// payloads would otherwise fail under LeakSanitizer for FAISS's leak.
struct FaissLeaksOnError {
#if defined(__SANITIZE_ADDRESS__)
  FaissLeaksOnError() { __lsan_disable(); }
  ~FaissLeaksOnError() { __lsan_enable(); }
#else
  FaissLeaksOnError() {}
  ~FaissLeaksOnError() {}
#endif
  FaissLeaksOnError(const FaissLeaksOnError&) = delete;
  FaissLeaksOnError& operator=(const FaissLeaksOnError&) = delete;
};

constexpr int kDim = 8;
constexpr std::int64_t kMaxId = std::numeric_limits<std::int64_t>::max();

// ---------------------------------------------------------------- index cases

struct Case {
  std::string name;
  faiss::MetricType metric;
  bool cosine = false;
  FaissIdScheme scheme;
  bool erasable;
  bool exact;  // searches equal brute force
  std::function<std::unique_ptr<faiss::Index>(int d)> make;
};

std::unique_ptr<faiss::Index> flat(int d, faiss::MetricType m) {
  if (m == faiss::METRIC_L2) return std::make_unique<faiss::IndexFlatL2>(d);
  if (m == faiss::METRIC_INNER_PRODUCT) return std::make_unique<faiss::IndexFlatIP>(d);
  return std::make_unique<faiss::IndexFlat>(d, m);
}

std::unique_ptr<faiss::Index> hnsw(int d, faiss::MetricType m) {
  auto h = std::make_unique<faiss::IndexHNSWFlat>(d, 8, m);
  h->hnsw.efSearch = 48;
  return h;
}

// A trained, empty IndexIVFFlat (trained once per metric, then cloned).
std::unique_ptr<faiss::Index> ivf(int d, faiss::MetricType m, bool hashtable) {
  constexpr std::size_t kLists = 4;
  static std::map<std::pair<int, int>, std::unique_ptr<faiss::Index>> trained;
  auto& proto = trained[{d, static_cast<int>(m)}];
  if (proto == nullptr) {
    auto q = flat(d, m);
    auto index = std::make_unique<faiss::IndexIVFFlat>(q.release(), d, kLists, m);
    index->own_fields = true;
    const std::vector<float> train = gaussian(200, d, 99);
    index->train(200, train.data());
    index->nprobe = kLists;  // every list: exact
    proto = std::move(index);
  }
  std::unique_ptr<faiss::Index> index(faiss::clone_index(proto.get()));
  if (hashtable) dynamic_cast<faiss::IndexIVF&>(*index).set_direct_map_type(faiss::DirectMap::Hashtable);
  return index;
}

template <class Map>
std::unique_ptr<faiss::Index> wrap(std::unique_ptr<faiss::Index> inner) {
  auto m = std::make_unique<Map>(inner.get());
  m->own_fields = true;
  inner.release();
  return m;
}

const std::vector<Case>& cases() {
  using S = FaissIdScheme;
  static const std::vector<Case> all = {
      {"FlatL2", faiss::METRIC_L2, false, S::Positional, false, true, [](int d) { return flat(d, faiss::METRIC_L2); }},
      {"FlatIP", faiss::METRIC_INNER_PRODUCT, false, S::Positional, false, true,
       [](int d) { return flat(d, faiss::METRIC_INNER_PRODUCT); }},
      {"FlatL1", faiss::METRIC_L1, false, S::Positional, false, true, [](int d) { return flat(d, faiss::METRIC_L1); }},
      {"HNSWFlatL2", faiss::METRIC_L2, false, S::Positional, false, false,
       [](int d) { return hnsw(d, faiss::METRIC_L2); }},
      {"HNSWFlatIPCosine", faiss::METRIC_INNER_PRODUCT, true, S::Positional, false, false,
       [](int d) { return hnsw(d, faiss::METRIC_INNER_PRODUCT); }},
      {"IVFFlatL2", faiss::METRIC_L2, false, S::Native, true, true,
       [](int d) { return ivf(d, faiss::METRIC_L2, false); }},
      {"IVFFlatIPHashtable", faiss::METRIC_INNER_PRODUCT, false, S::Native, true, true,
       [](int d) { return ivf(d, faiss::METRIC_INNER_PRODUCT, true); }},
      {"IDMapFlatL2", faiss::METRIC_L2, false, S::IdMap, true, true,
       [](int d) { return wrap<faiss::IndexIDMap>(flat(d, faiss::METRIC_L2)); }},
      {"IDMap2FlatIPCosine", faiss::METRIC_INNER_PRODUCT, true, S::IdMap2, true, true,
       [](int d) { return wrap<faiss::IndexIDMap2>(flat(d, faiss::METRIC_INNER_PRODUCT)); }},
      {"IDMap2FlatL1", faiss::METRIC_L1, false, S::IdMap2, true, true,
       [](int d) { return wrap<faiss::IndexIDMap2>(flat(d, faiss::METRIC_L1)); }},
      {"IDMapHNSWFlatIP", faiss::METRIC_INNER_PRODUCT, false, S::IdMap, false, false,
       [](int d) { return wrap<faiss::IndexIDMap>(hnsw(d, faiss::METRIC_INNER_PRODUCT)); }},
      {"IDMap2HNSWFlatL2", faiss::METRIC_L2, false, S::IdMap2, false, false,
       [](int d) { return wrap<faiss::IndexIDMap2>(hnsw(d, faiss::METRIC_L2)); }},
      {"IDMapIVFFlatL2", faiss::METRIC_L2, false, S::IdMap, false, true,
       [](int d) { return wrap<faiss::IndexIDMap>(ivf(d, faiss::METRIC_L2, false)); }},
      {"IDMap2IVFFlatIP", faiss::METRIC_INNER_PRODUCT, false, S::IdMap2, false, true,
       [](int d) { return wrap<faiss::IndexIDMap2>(ivf(d, faiss::METRIC_INNER_PRODUCT, false)); }},
  };
  return all;
}

DistanceMetric expected_metric(const Case& c) {
  switch (c.metric) {
    case faiss::METRIC_L2: return DistanceMetric::Euclidean;
    case faiss::METRIC_L1: return DistanceMetric::Manhattan;
    default: return c.cosine ? DistanceMetric::Cosine : DistanceMetric::DotProduct;
  }
}

// ---------------------------------------------------------------- model

struct Entry {
  std::vector<float> vec;
  std::optional<Metadata> meta;
};
using Model = std::map<std::uint64_t, Entry>;

struct Built {
  FaissIndex index;
  Model model;
};

// Ids the scheme accepts: positions, or distinct random ids up to INT64_MAX.
class IdSource {
 public:
  IdSource(const Case& c, std::uint32_t seed) : positional_(c.scheme == FaissIdScheme::Positional), rng_(seed) {}
  std::uint64_t next(const Model& model) {
    if (positional_) return next_++;
    std::uniform_int_distribution<std::uint64_t> any(0, static_cast<std::uint64_t>(kMaxId));
    for (;;) {
      const std::uint64_t id = next_ % 3 == 0 ? any(rng_) : any(rng_) % 100000;
      ++next_;
      if (model.count(id) == 0) return id;
    }
  }

 private:
  bool positional_;
  std::mt19937_64 rng_;
  std::uint64_t next_ = 0;
};

std::optional<Metadata> meta_for(std::uint64_t i) {
  if (i % 5 != 0) return std::nullopt;
  return Metadata{{"i", Value(static_cast<std::int64_t>(i))}, {"tag", Value("v" + std::to_string(i))}};
}

// `n` vectors inserted through the adapter (and into the model).
Built build(const Case& c, std::size_t n, std::uint32_t seed, IdSource& ids, bool with_meta = true) {
  Built b{FaissIndex(c.make(kDim), FaissOptions{c.cosine}), {}};
  const std::vector<float> x = gaussian(n, kDim, seed);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t id = ids.next(b.model);
    const std::vector<float> v = row(x, i, kDim);
    const std::optional<Metadata> meta = with_meta ? meta_for(i) : std::nullopt;
    b.index.insert(id, v, meta);
    b.model[id] = Entry{v, meta};
  }
  return b;
}

// FAISS's own serialization of the index (an independent reading of its
// state). An IVF's hashtable direct map is serialized in the unordered_map's
// iteration order, which depends on its history: it is compared as a sorted
// list, and the rest of the index through a copy without it.
std::vector<std::uint8_t> faiss_bytes(const FaissIndex& ix) {
  faiss::VectorIOWriter w;
  const auto* ivf = dynamic_cast<const faiss::IndexIVF*>(&ix.faiss_index());
  if (ivf != nullptr && ivf->direct_map.type == faiss::DirectMap::Hashtable) {
    std::unique_ptr<faiss::Index> copy(faiss::clone_index(ivf));
    dynamic_cast<faiss::IndexIVF&>(*copy).set_direct_map_type(faiss::DirectMap::NoMap);
    faiss::write_index(copy.get(), &w);
    std::map<std::int64_t, std::int64_t> sorted(ivf->direct_map.hashtable.begin(), ivf->direct_map.hashtable.end());
    for (const auto& [id, lo] : sorted) {
      const auto* p = reinterpret_cast<const std::uint8_t*>(&id);
      w.data.insert(w.data.end(), p, p + 8);
      p = reinterpret_cast<const std::uint8_t*>(&lo);
      w.data.insert(w.data.end(), p, p + 8);
    }
    return w.data;
  }
  faiss::write_index(&ix.faiss_index(), &w);
  return w.data;
}

std::vector<std::vector<float>> queries(std::size_t n, std::uint32_t seed) {
  const std::vector<float> x = gaussian(n, kDim, seed);
  std::vector<std::vector<float>> q;
  for (std::size_t i = 0; i < n; ++i) q.push_back(row(x, i, kDim));
  return q;
}

// Brute force over the model: FAISS's distance for each metric.
std::vector<std::pair<float, std::uint64_t>> brute_force(const Case& c, const Model& model, const std::vector<float>& q,
                                                         std::size_t k) {
  const auto unit = [](std::vector<double> v) {
    double n = 0;
    for (double x : v) n += x * x;
    n = std::sqrt(n);
    if (n > 0) {
      for (double& x : v) x /= n;
    }
    return v;
  };
  std::vector<double> qq(q.begin(), q.end());
  if (c.cosine) qq = unit(qq);
  std::vector<std::pair<float, std::uint64_t>> all;
  for (const auto& [id, e] : model) {
    std::vector<double> v(e.vec.begin(), e.vec.end());
    if (c.cosine) v = unit(v);
    double d = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
      switch (c.metric) {
        case faiss::METRIC_L2: d += (qq[i] - v[i]) * (qq[i] - v[i]); break;
        case faiss::METRIC_L1: d += std::fabs(qq[i] - v[i]); break;
        default: d += qq[i] * v[i]; break;
      }
    }
    all.emplace_back(static_cast<float>(d), id);
  }
  const bool larger_is_closer = c.metric == faiss::METRIC_INNER_PRODUCT;
  std::sort(all.begin(), all.end(),
            [&](const auto& a, const auto& b) { return larger_is_closer ? a.first > b.first : a.first < b.first; });
  all.resize(std::min(k, all.size()));
  return all;
}

// The hits agree with brute force up to float rounding (a hit's own distance
// in the model must match the rank's distance, which tolerates ties).
void expect_matches_model(const Case& c, const FaissIndex& ix, const Model& model) {
  for (const auto& q : queries(10, 7)) {
    const auto want = brute_force(c, model, q, 10);
    const auto got = ix.search(q, 10);
    ASSERT_EQ(got.size(), want.size());
    std::map<std::uint64_t, float> model_distance;
    for (const auto& [d, id] : brute_force(c, model, q, model.size())) model_distance[id] = d;
    for (std::size_t i = 0; i < got.size(); ++i) {
      const float tol = 1e-4f * std::max(1.0f, std::fabs(want[i].first));
      EXPECT_NEAR(got[i].distance, want[i].first, tol) << "rank " << i;
      ASSERT_TRUE(model_distance.count(got[i].id)) << "hit " << got[i].id << " is not in the model";
      EXPECT_NEAR(model_distance[got[i].id], want[i].first, tol) << "rank " << i << " id " << got[i].id;
    }
  }
}

void expect_same_searches(const FaissIndex& a, const FaissIndex& b) {
  for (const auto& q : queries(12, 11)) EXPECT_EQ(a.search(q, 10), b.search(q, 10));
}

void expect_same_index(const FaissIndex& loaded, const FaissIndex& original) {
  EXPECT_EQ(loaded.size(), original.size());
  EXPECT_EQ(loaded.dim(), original.dim());
  EXPECT_EQ(loaded.metric(), original.metric());
  EXPECT_EQ(loaded.id_scheme(), original.id_scheme());
  EXPECT_EQ(faiss_bytes(loaded), faiss_bytes(original));
  EXPECT_EQ(loaded.metadata_table(), original.metadata_table());
  expect_same_searches(loaded, original);
}

// ---------------------------------------------------------------- round trip

TEST(FaissAdapter, EveryTypeLoadsAsSavedAndSearchesIdentically) {
  const Compression compressions[] = {Compression::none(), Compression::zstd(3), Compression::lz4()};
  std::size_t k = 0;
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    TempDir dir;
    IdSource ids(c, 1);
    Built b = build(c, 200, 5, ids);
    EXPECT_EQ(b.index.id_scheme(), c.scheme);
    PersistConfig cfg = config_for(dir / "f.iqdb", false);
    cfg.compression = compressions[k++ % 3];
    auto db = PersistedIndex<FaissIndex>::open_with(std::move(b.index), cfg);
    db.save();

    const SnapshotSummary s = inspect_snapshot(default_file_system(), cfg.path);
    EXPECT_EQ(s.header.index_type, "faiss");
    EXPECT_EQ(s.header.dim, static_cast<std::uint64_t>(kDim));
    EXPECT_EQ(s.header.metric, expected_metric(c));
    EXPECT_EQ(s.header.n_vectors, 200u);

    auto loaded = PersistedIndex<FaissIndex>::load(cfg);
    expect_same_index(loaded.index(), db.index());
    for (const auto& [id, e] : b.model) {
      ASSERT_TRUE(loaded.index().contains(id)) << id;
      const Metadata* m = loaded.index().metadata(id);
      EXPECT_EQ(m != nullptr, e.meta.has_value()) << id;
      if (m != nullptr && e.meta) {
        EXPECT_EQ(*m, *e.meta);
      }
    }
    if (c.exact) expect_matches_model(c, loaded.index(), b.model);
  }
}

// Cosine normalises in double (an outside hunt): with faiss::fvec_renorm_L2
// (float) a vector of components 1e20 became the zero vector (similarity 0)
// and one of 1e-30 stayed unnormalised (similarity ~1e-30). Model: every
// vector along (1,1,1), whatever its finite length, has cosine similarity 1
// with the query (1,1,1) and comes before (1,0,0) and (0,1,0); queries of
// any length likewise.
TEST(FaissAdapter, CosineNormalisesVectorsOfAnyFiniteLength) {
  FaissIndex ix(wrap<faiss::IndexIDMap2>(flat(3, faiss::METRIC_INNER_PRODUCT)), FaissOptions{true});
  test::check_cosine_over_any_length(ix, 1.0f, 1.0f / std::sqrt(3.0f));
}

TEST(FaissAdapter, EmptyIndexesRoundTrip) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    TempDir dir;
    const PersistConfig cfg = config_for(dir / "e.iqdb", false);
    auto db = PersistedIndex<FaissIndex>::open_with(FaissIndex(c.make(kDim), FaissOptions{c.cosine}), cfg);
    db.save();
    auto loaded = PersistedIndex<FaissIndex>::load(cfg);
    EXPECT_EQ(loaded.index().size(), 0u);
    EXPECT_EQ(faiss_bytes(loaded.index()), faiss_bytes(db.index()));
    EXPECT_TRUE(loaded.index().search(std::vector<float>(kDim, 1.0f), 5).empty());
  }
}

// FAISS searches on GNU OpenMP's thread pool, which does not survive
// fork(): a child's first search of an index its parent had searched
// waited for the parent's pool threads for ever (a hang every time, on
// every index type, before the adapter's fork handler). Each type, built
// and searched in the parent with a pool of two threads, then searched in
// a forked child: the same hits, no hang (SIGALRM after 20 s).
TEST(FaissAdapter, AForkedChildSearchesAnIndexItsParentSearched) {
  const int threads = omp_get_max_threads();
  omp_set_num_threads(2);  // a pool of more than one thread, however many CPUs
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    IdSource ids(c, 4);
    Built b = build(c, 300, 6, ids);
    const std::vector<float> q = row(gaussian(1, kDim, 9), 0, kDim);
    const auto before = b.index.search(q, 5);
    ASSERT_EQ(before.size(), 5u);
    const int code = test::in_child([&] {
      ::alarm(20);
      return b.index.search(q, 5) == before ? 0 : 1;
    });
    EXPECT_EQ(code, 0) << "1: other hits; " << 128 + SIGALRM << ": the child hung";
  }
  omp_set_num_threads(threads);
}

// ---------------------------------------------------------------- mutations vs the model

TEST(FaissAdapter, InsertsAndErasesMatchTheModelAfterReload) {
  for (const Case& c : cases()) {
    if (!c.exact || !c.erasable) continue;
    SCOPED_TRACE(c.name);
    TempDir dir;
    IdSource ids(c, 2);
    Built b = build(c, 200, 6, ids);
    const PersistConfig cfg = config_for(dir / "m.iqdb", true);
    auto db = PersistedIndex<FaissIndex>::open_with(std::move(b.index), cfg);
    std::mt19937 rng(3);
    const std::vector<float> x = gaussian(100, kDim, 8);
    for (std::size_t i = 0; i < 100; ++i) {
      if (rng() % 3 == 0 && !b.model.empty()) {
        auto it = b.model.begin();
        std::advance(it, static_cast<std::ptrdiff_t>(rng() % b.model.size()));
        db.erase(it->first);
        b.model.erase(it);
      } else {
        const std::uint64_t id = ids.next(b.model);
        const std::vector<float> v = row(x, i, kDim);
        db.insert(id, v, meta_for(i + 1000));
        b.model[id] = Entry{v, meta_for(i + 1000)};
      }
    }
    expect_matches_model(c, db.index(), b.model);
    db.close();
    auto loaded = PersistedIndex<FaissIndex>::load(cfg);
    EXPECT_EQ(loaded.index().size(), b.model.size());
    expect_matches_model(c, loaded.index(), b.model);
    for (const auto& [id, e] : b.model) {
      const Metadata* m = loaded.index().metadata(id);
      ASSERT_EQ(m != nullptr, e.meta.has_value()) << id;
      if (m != nullptr) {
        EXPECT_EQ(*m, *e.meta);
      }
    }
  }
}

// A batch that erases an id and inserts it again (another vector), and one
// that inserts a new id and erases it, validate as their mutations apply,
// in order (docs/API.md, write(): "each mutation sees the earlier ones"):
// the adapter's own hook refused the first with DuplicateId, looking at the
// index instead of the batch (an outside hunt). Every type that erases and
// takes ids of the caller's; the model holds after a reload too.
TEST(FaissAdapter, ABatchSeesItsOwnEarlierMutations) {
  for (const Case& c : cases()) {
    if (!c.erasable || c.scheme == FaissIdScheme::Positional) continue;
    SCOPED_TRACE(c.name);
    TempDir dir;
    IdSource ids(c, 5);
    Built b = build(c, 60, 11, ids);
    const PersistConfig cfg = config_for(dir / "b.iqdb", true);
    auto db = PersistedIndex<FaissIndex>::open_with(std::move(b.index), cfg);
    const std::uint64_t again = b.model.begin()->first;
    const std::vector<float> v = row(gaussian(1, kDim, 12), 0, kDim);
    const Metadata meta{{"again", Value(true)}};
    db.write(WriteBatch().erase(again).insert(again, v, meta));
    b.model[again] = Entry{v, meta};
    const std::uint64_t fresh = ids.next(b.model);
    db.write(WriteBatch().insert(fresh, v).erase(fresh));
    expect_matches_model(c, db.index(), b.model);
    EXPECT_FALSE(db.index().contains(fresh));
    ASSERT_NE(db.index().metadata(again), nullptr);
    EXPECT_EQ(*db.index().metadata(again), meta);
    db.close();
    const auto loaded = PersistedIndex<FaissIndex>::load(cfg);
    expect_matches_model(c, loaded.index(), b.model);
    EXPECT_FALSE(loaded.index().contains(fresh));
  }
}

// A vector with a NaN or an infinite component, inserted into each type:
// either refused before logging (InvalidArgument, nothing logged), or
// taken, and then the index still checkpoints and loads with it. An IVF
// under inner product had taken it into no list: acknowledged, and every
// later save failed ("the inverted lists hold 1 vectors, the index 2"), its
// erase poisoned the writer (an outside hunt). Those are refused now.
TEST(FaissAdapter, AVectorWithoutAFiniteValueNeverMakesTheIndexUnsaveable) {
  const float inf = std::numeric_limits<float>::infinity();
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const bool ivf_ip = c.metric == faiss::METRIC_INNER_PRODUCT && c.name.find("IVF") != std::string::npos;
    for (const float bad : {std::numeric_limits<float>::quiet_NaN(), inf, -inf}) {
      SCOPED_TRACE(bad);
      TempDir dir;
      IdSource ids(c, 6);
      Built b = build(c, 40, 13, ids);
      const PersistConfig cfg = config_for(dir / "n.iqdb", true);
      auto db = PersistedIndex<FaissIndex>::open_with(std::move(b.index), cfg);
      std::vector<float> v(kDim, 0.25f);
      v[1] = bad;
      const std::uint64_t id = ids.next(b.model);
      const std::uint64_t lsn = db.last_lsn();
      const auto e = error_of([&] { db.insert(id, v); });
      if (e) {
        EXPECT_EQ(*e, ErrorKind::InvalidArgument);
        EXPECT_EQ(db.last_lsn(), lsn);
        EXPECT_FALSE(db.index().contains(id));
      } else {
        EXPECT_FALSE(ivf_ip) << "taken by an IVF under inner product";
        ASSERT_NO_THROW(db.checkpoint());
        db.close();
        EXPECT_TRUE(PersistedIndex<FaissIndex>::load(cfg).index().contains(id));
        continue;
      }
      EXPECT_TRUE(ivf_ip) << "refused by a type that can hold it";
    }
  }
}

// ---------------------------------------------------------------- WAL recovery

// Base snapshot, logged inserts (and erases where FAISS can), a checkpoint,
// more logged mutations, then a crash image: the recovered index equals the
// index that never crashed, down to FAISS's serialization (for HNSW that
// needs the graph's random generator, which the payload carries).
TEST(FaissAdapter, WalRecoveryEqualsTheIndexThatNeverCrashed) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    TempDir dir;
    IdSource ids(c, 4);
    Built b = build(c, 150, 9, ids);
    const PersistConfig cfg = config_for(dir / "w.iqdb", true);
    auto db = PersistedIndex<FaissIndex>::open_with(std::move(b.index), cfg);
    const std::vector<float> x = gaussian(120, kDim, 10);
    const auto vec = [&](std::size_t i) { return row(x, i, kDim); };
    for (std::size_t i = 0; i < 60; ++i) {
      const std::uint64_t id = ids.next(b.model);
      db.insert(id, vec(i), meta_for(i));
      b.model[id] = Entry{vec(i), meta_for(i)};
    }
    if (c.erasable) {
      const auto it = b.model.begin();
      db.erase(it->first);
      b.model.erase(it);
    }
    db.checkpoint();
    for (std::size_t i = 60; i < 120; ++i) {
      const std::uint64_t id = ids.next(b.model);
      db.insert(id, vec(i), meta_for(i));
      b.model[id] = Entry{vec(i), meta_for(i)};
    }
    if (c.erasable) {
      const auto it = std::next(b.model.begin(), 3);
      db.erase(it->first);
    }
    const std::uint64_t acknowledged = db.last_lsn();
    const fs::path image = crash_image(cfg, dir / "crash");

    auto recovered = PersistedIndex<FaissIndex>::load(config_for(image, true));
    EXPECT_EQ(recovered.last_lsn(), acknowledged);
    expect_same_index(recovered.index(), db.index());
    // The recovered index keeps working like the original.
    const std::uint64_t id = ids.next(b.model);
    recovered.insert(id, vec(0));
    db.insert(id, vec(0));
    EXPECT_EQ(faiss_bytes(recovered.index()), faiss_bytes(db.index()));
  }
}

// ---------------------------------------------------------------- refusals

TEST(FaissAdapter, EraseIsRefusedBeforeLoggingWhereFaissCannotErase) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    TempDir dir;
    IdSource ids(c, 5);
    Built b = build(c, 50, 12, ids);
    const std::uint64_t victim = std::next(b.model.begin(), 7)->first;
    const PersistConfig cfg = config_for(dir / "r.iqdb", true);
    auto db = PersistedIndex<FaissIndex>::open_with(std::move(b.index), cfg);
    const std::uint64_t lsn = db.last_lsn();
    const auto before = faiss_bytes(db.index());
    if (c.erasable) {
      EXPECT_FALSE(db.index().erase_refusal().has_value());
      db.erase(victim);
      EXPECT_FALSE(db.index().contains(victim));
      EXPECT_EQ(db.index().size(), 49u);
      EXPECT_EQ(db.last_lsn(), lsn + 1);
      EXPECT_EQ(error_of([&] { db.erase(victim); }), ErrorKind::IdNotFound);
      // Every other id still finds its own vector.
      for (const auto& [id, e] : b.model) {
        if (id == victim) continue;
        const auto hits = db.index().search(e.vec, 1);
        ASSERT_EQ(hits.size(), 1u);
        if (c.exact && c.metric != faiss::METRIC_INNER_PRODUCT) {
          EXPECT_EQ(hits[0].id, id);
        }
      }
    } else {
      EXPECT_TRUE(db.index().erase_refusal().has_value());
      EXPECT_EQ(error_of([&] { db.erase(victim); }), ErrorKind::Unsupported);
      WriteBatch batch;
      batch.insert(ids.next(b.model), b.model.begin()->second.vec).erase(victim);
      EXPECT_EQ(error_of([&] { db.write(batch); }), ErrorKind::Unsupported);
      EXPECT_EQ(db.last_lsn(), lsn);
      EXPECT_TRUE(db.index().contains(victim));
      EXPECT_EQ(faiss_bytes(db.index()), before);
    }
  }
}

TEST(FaissAdapter, IdsFaissCannotHoldAreRefusedBeforeLogging) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    TempDir dir;
    IdSource ids(c, 6);
    Built b = build(c, 20, 13, ids);
    const PersistConfig cfg = config_for(dir / "i.iqdb", true);
    auto db = PersistedIndex<FaissIndex>::open_with(std::move(b.index), cfg);
    const std::uint64_t lsn = db.last_lsn();
    const std::vector<float> v(kDim, 0.5f);
    const std::uint64_t next = c.scheme == FaissIdScheme::Positional ? 20 : 777777;
    EXPECT_EQ(error_of([&] { db.insert(VectorId::bytes("doc-1"), v); }), ErrorKind::InvalidArgument);
    EXPECT_EQ(error_of([&] { db.insert(std::uint64_t{1} << 63, v); }), ErrorKind::InvalidArgument);
    EXPECT_EQ(error_of([&] { db.insert(next, std::vector<float>(kDim + 1, 0.5f)); }), ErrorKind::InvalidArgument);
    EXPECT_EQ(error_of([&] { db.insert(b.model.begin()->first, v); }), ErrorKind::DuplicateId);
    EXPECT_EQ(error_of([&] { db.erase(VectorId::bytes("doc-1")); }), ErrorKind::IdNotFound);
    if (c.scheme == FaissIdScheme::Positional) {
      EXPECT_EQ(error_of([&] { db.insert(21, v); }), ErrorKind::InvalidArgument);
    }
    EXPECT_EQ(db.last_lsn(), lsn);
    EXPECT_EQ(db.index().size(), 20u);
    db.insert(next, v);
    EXPECT_TRUE(db.index().contains(next));
    EXPECT_EQ(db.last_lsn(), lsn + 1);
  }
}

// A positional index (no IndexIDMap) takes exactly the id size() will have
// when the insert applies: in a batch, each insert counts the ones before it;
// across commits, the ones logged but not yet applied (a group commit in
// flight) count too.
TEST(FaissAdapter, PositionalIdsCountInsertsNotYetApplied) {
  TempDir dir;
  {
    auto db = PersistedIndex<FaissIndex>::open_with(FaissIndex(std::make_unique<faiss::IndexFlatL2>(kDim)),
                                                    config_for(dir / "b.iqdb", true));
    const std::vector<float> v(kDim, 0.25f);
    WriteBatch b;
    b.insert(0, v).insert(1, v).insert(2, v);
    db.write(b);
    EXPECT_EQ(db.index().size(), 3u);
    WriteBatch gap;
    gap.insert(3, v).insert(5, v);  // 5 is not the next position (4)
    EXPECT_EQ(error_of([&] { db.write(gap); }), ErrorKind::InvalidArgument);
    EXPECT_EQ(db.index().size(), 3u);
    WriteBatch stale;
    stale.insert(3, v).insert(3, v);
    EXPECT_EQ(error_of([&] { db.write(stale); }), ErrorKind::DuplicateId);
    db.insert(3, v);
    EXPECT_EQ(db.index().size(), 4u);
  }
  {
    // Hold the first insert's fdatasync until the second is validated.
    test::SyncGateFs held(default_file_system());
    PersistConfig cfg = config_for(dir / "c.iqdb", true);
    cfg.fsync_policy = FsyncPolicy::always();  // group commit: the second insert waits behind the first's sync
    cfg.file_system = &held;
    auto db = PersistedIndex<FaissIndex>::open_with(FaissIndex(std::make_unique<faiss::IndexFlatL2>(kDim)), cfg);
    const std::vector<float> v(kDim, 0.5f);
    held.close();
    std::thread first([&] { db.insert(0, v); });
    if (!held.wait_for_a_waiter()) {
      held.open();
      first.join();
      FAIL() << "the first insert's sync never came";
    }
    // Insert 0 is logged, not applied (its sync is held): the index holds
    // nothing, yet 1 is the next position.
    EXPECT_EQ(db.index().size(), 0u);
    std::atomic<bool> second_done{false};
    std::thread second([&] {
      EXPECT_NO_THROW(db.insert(1, v));
      second_done = true;
    });
    // Until the second insert is logged too (or has failed).
    for (int i = 0; i < 60000 && db.wal_stats().commits < 2 && !second_done; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT_EQ(db.wal_stats().commits, 2u);
    held.open();
    first.join();
    second.join();
    EXPECT_EQ(db.index().size(), 2u);
    db.close();
    const auto again = PersistedIndex<FaissIndex>::load(config_for(dir / "c.iqdb", true));
    EXPECT_EQ(again.index().size(), 2u);
  }
}

TEST(FaissAdapter, TheConstructorRefusesWhatItCannotPersist) {
  struct Bad {
    std::string name;
    std::function<std::unique_ptr<faiss::Index>()> make;
    bool cosine;
    ErrorKind kind;
  };
  const std::vector<Bad> bad = {
      {"IndexPQ", [] { return std::make_unique<faiss::IndexPQ>(kDim, 2, 4); }, false, ErrorKind::Unsupported},
      {"Linf metric", [] { return std::make_unique<faiss::IndexFlat>(kDim, faiss::METRIC_Linf); }, false,
       ErrorKind::Unsupported},
      {"IVF with L1",
       [] {
         auto q = std::make_unique<faiss::IndexFlat>(kDim, faiss::METRIC_L1);
         auto ix = std::make_unique<faiss::IndexIVFFlat>(q.release(), kDim, 2, faiss::METRIC_L1);
         ix->own_fields = true;
         return ix;
       },
       false, ErrorKind::Unsupported},
      {"untrained IVF",
       [] {
         auto q = std::make_unique<faiss::IndexFlatL2>(kDim);
         auto ix = std::make_unique<faiss::IndexIVFFlat>(q.release(), kDim, 2);
         ix->own_fields = true;
         return ix;
       },
       false, ErrorKind::InvalidArgument},
      {"cosine over L2", [] { return flat(kDim, faiss::METRIC_L2); }, true, ErrorKind::InvalidArgument},
      {"IDMap in IDMap", [] { return wrap<faiss::IndexIDMap>(wrap<faiss::IndexIDMap>(flat(kDim, faiss::METRIC_L2))); },
       false, ErrorKind::Unsupported},
      {"duplicate ids in an IndexIDMap",
       [] {
         auto m = wrap<faiss::IndexIDMap>(flat(kDim, faiss::METRIC_L2));
         const std::vector<float> x = gaussian(2, kDim, 1);
         const std::int64_t same[2] = {5, 5};
         m->add_with_ids(2, x.data(), same);
         return m;
       },
       false, ErrorKind::InvalidArgument},
      {"negative id",
       [] {
         auto m = wrap<faiss::IndexIDMap2>(flat(kDim, faiss::METRIC_L2));
         const std::vector<float> x = gaussian(1, kDim, 1);
         const std::int64_t id = -7;
         m->add_with_ids(1, x.data(), &id);
         return m;
       },
       false, ErrorKind::InvalidArgument},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.name);
    EXPECT_EQ(error_of([&] { FaissIndex ix(b.make(), FaissOptions{b.cosine}); }), b.kind);
  }
  EXPECT_EQ(error_of([] { FaissIndex ix(nullptr); }), ErrorKind::InvalidArgument);
}

// An existing FAISS index (vectors added with FAISS's own API) is adopted
// with its ids, and persisted.
// Hash flooding. The id sets a load builds were hashed with std::hash, the
// identity: ids that are multiples of a set's bucket count all shared one
// bucket and made the load quadratic (32k crafted ids: 26 s under ASan).
// For IndexIDMap2 the set is FAISS's rev_map (construct_rev_map, filled one
// id at a time from empty); for IndexIDMap the adapter's own (reserved for
// n ids). 64k ids crafted for each load as the model says, and the
// IndexIDMap2's reverse map (public) has no crowded bucket.
std::size_t crafted_stride(bool rev_map, std::size_t n) {
  if (rev_map) {
    std::unordered_map<std::int64_t, std::int64_t> m;
    for (std::size_t i = 0; i < n; ++i) m[static_cast<std::int64_t>(i)] = 0;
    return m.bucket_count();
  }
  std::unordered_set<std::int64_t> s;
  s.reserve(n);
  return s.bucket_count();
}

TEST(FaissAdapter, IdsCraftedToCollideUnderStdHashLoadAsSaved) {
  constexpr std::size_t kIds = 1 << 16;
  for (const bool map2 : {false, true}) {
    SCOPED_TRACE(map2 ? "IndexIDMap2" : "IndexIDMap");
    const auto stride = static_cast<std::int64_t>(crafted_stride(map2, kIds));
    std::vector<std::int64_t> ids(kIds);
    for (std::size_t k = 0; k < kIds; ++k) ids[k] = static_cast<std::int64_t>(k + 1) * stride;
    const std::vector<float> x = gaussian(kIds, 2, 44);
    std::unique_ptr<faiss::IndexIDMap> m;
    if (map2) {
      m = std::make_unique<faiss::IndexIDMap2>(new faiss::IndexFlatL2(2));
      static_cast<faiss::IndexIDMap2&>(*m).rev_map.reserve(3 * kIds);  // not the stride's multiple: no collision
    } else {
      m = std::make_unique<faiss::IndexIDMap>(new faiss::IndexFlatL2(2));
    }
    m->own_fields = true;
    m->add_with_ids(static_cast<faiss::Index::idx_t>(kIds), x.data(), ids.data());
    TempDir dir;
    const PersistConfig cfg = config_for(dir / "flood.iqdb", false);
    PersistedIndex<FaissIndex>::open_with(FaissIndex(std::move(m)), cfg).save();
    const auto db = PersistedIndex<FaissIndex>::load(cfg);
    const FaissIndex& ix = db.index();
    ASSERT_EQ(ix.size(), kIds);
    const auto& loaded = dynamic_cast<const faiss::IndexIDMap&>(ix.faiss_index());
    EXPECT_EQ(loaded.id_map, ids);
    for (std::size_t k = 0; k < kIds; k += 97) {
      ASSERT_TRUE(ix.contains(static_cast<std::uint64_t>(ids[k])));
      ASSERT_FALSE(ix.contains(static_cast<std::uint64_t>(ids[k] + 1)));
    }
    std::vector<float> back(2);
    loaded.index->reconstruct(kIds - 1, back.data());
    EXPECT_EQ(back, row(x, kIds - 1, 2));
    if (map2) {
      const auto& rev = dynamic_cast<const faiss::IndexIDMap2&>(loaded).rev_map;
      ASSERT_EQ(rev.size(), kIds);
      std::size_t crowded = 0;
      for (std::size_t b = 0; b < rev.bucket_count(); ++b) crowded = std::max(crowded, rev.bucket_size(b));
      EXPECT_LT(crowded, 64u);
      for (std::size_t k = 0; k < kIds; k += 97) EXPECT_EQ(rev.at(ids[k]), static_cast<std::int64_t>(k));
    }
  }
}

TEST(FaissAdapter, AdoptsAnIndexBuiltWithFaiss) {
  auto m = wrap<faiss::IndexIDMap2>(flat(kDim, faiss::METRIC_L2));
  const std::vector<float> x = gaussian(50, kDim, 21);
  std::vector<std::int64_t> ids(50);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>(1000 + 3 * i);
  m->add_with_ids(50, x.data(), ids.data());
  FaissIndex ix(std::move(m));
  EXPECT_EQ(ix.size(), 50u);
  EXPECT_TRUE(ix.contains(1003));
  EXPECT_FALSE(ix.contains(1001));
  TempDir dir;
  const PersistConfig cfg = config_for(dir / "a.iqdb", false);
  auto db = PersistedIndex<FaissIndex>::open_with(std::move(ix), cfg);
  db.save();
  auto loaded = PersistedIndex<FaissIndex>::load(cfg);
  expect_same_index(loaded.index(), db.index());
  const auto hit = loaded.index().search(std::vector<float>(x.begin() + 5 * kDim, x.begin() + 6 * kDim), 1);
  ASSERT_EQ(hit.size(), 1u);
  EXPECT_EQ(hit[0].id, 1015u);
  EXPECT_EQ(hit[0].distance, 0.0f);
}

// ---------------------------------------------------------------- damaged and crafted payloads

std::vector<std::byte> payload_of(const FaissIndex& ix) {
  BufferWriter w;
  ix.save_to(w);
  return w.bytes;
}

// Offset of the FAISS serialization in a payload without metadata
// (docs/ADAPTERS.md: version u32, flags u8, metadata count u64 = 0, random
// state count u64, each state a u64 length and its text).
std::size_t faiss_start(const std::vector<std::byte>& p) {
  std::size_t pos = 4 + 1;
  EXPECT_EQ(get_u64(p, pos), 0u) << "metadata in a payload meant to have none";
  pos += 8;
  const std::uint64_t states = get_u64(p, pos);
  pos += 8;
  for (std::uint64_t i = 0; i < states; ++i) pos += 8 + static_cast<std::size_t>(get_u64(p, pos));
  return pos;
}

void put_u64(std::vector<std::byte>& b, std::size_t at, std::uint64_t v) { std::memcpy(b.data() + at, &v, 8); }
void put_u32(std::vector<std::byte>& b, std::size_t at, std::uint32_t v) { std::memcpy(b.data() + at, &v, 4); }

long max_rss_kib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

// Each damage sets a count or a type FAISS's reader would trust (allocating,
// zero-filling, or opening a file named in the stream) to one the payload
// cannot hold. The guard refuses it at that byte: the error names the byte,
// and the process never grows by the gigabyte the count asks for.
TEST(FaissAdapterPayload, CraftedCountsAndTypesAreRefusedBeforeFaissAllocates) {
  const std::uint64_t kGiantFloats = std::uint64_t{1} << 28;  // 1 GiB of floats
  struct Damage {
    std::string name;
    const char* index_case;
    // FAISS offset (from the FAISS start) and value, computed from FAISS's format.
    std::size_t at;
    int width;
    std::uint64_t value;
    std::string message;
  };
  // Offsets in FAISS's serialization (faiss_stream_guard.hpp grammar):
  // fourcc 0, d 4, ntotal 8, dummies 16 and 24, is_trained 32, metric 33;
  // IndexFlatL2: xb count at 37. IndexIDMap2(IndexFlat IP): sub-index at 37,
  // its xb count at 74, id map count at 82 + 4 * ntotal * d.
  const std::size_t n = 20;
  const std::size_t idmap_count_at = 82 + 4 * n * kDim;
  const std::vector<Damage> damages = {
      {"flat storage count", "FlatL2", 37, 8, kGiantFloats, "does not hold"},
      {"flat storage count that disagrees with ntotal", "FlatL2", 37, 8, n * kDim - 1, "does not hold"},
      {"vector count", "FlatL2", 8, 8, std::uint64_t{1} << 40, "impossible"},
      {"unknown index type (IndexPQ's fourcc)", "FlatL2", 0, 4, 0x51507849, "not supported"},
      {"unknown metric", "FlatL2", 33, 4, 23, "metric type"},
      {"metric that contradicts IndexFlatL2", "FlatL2", 33, 4, 0, "contradicts"},
      {"id map count", "IDMap2FlatIPCosine", idmap_count_at, 8, kGiantFloats, "exceeds"},
      {"id map count that disagrees with ntotal", "IDMap2FlatIPCosine", idmap_count_at, 8, n - 1, "id map"},
      {"count that disagrees with the sub-index's", "IDMap2FlatIPCosine", 8, 8, n - 1, "its parent"},
      {"HNSW probability table count", "HNSWFlatL2", 37, 8, kGiantFloats, "exceeds"},
  };
  FaissLeaksOnError leaks_expected;
  for (const Damage& d : damages) {
    SCOPED_TRACE(d.name);
    const Case& c =
        *std::find_if(cases().begin(), cases().end(), [&](const Case& x) { return x.name == d.index_case; });
    IdSource ids(c, 7);
    const Built b = build(c, n, 14, ids, false);
    std::vector<std::byte> p = payload_of(b.index);
    const std::size_t at = faiss_start(p) + d.at;
    ASSERT_LE(at + static_cast<std::size_t>(d.width), p.size());
    if (d.width == 8) {
      put_u64(p, at, d.value);
    } else {
      put_u32(p, at, static_cast<std::uint32_t>(d.value));
    }
    const long rss_before = max_rss_kib();
    BufferReader r(p);
    try {
      (void)FaissIndex::load_from(r);
      ADD_FAILURE() << "accepted";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidPayload) << e.what();
      EXPECT_NE(std::string(e.what()).find(d.message), std::string::npos) << e.what();
    }
    EXPECT_LT(max_rss_kib() - rss_before, 256 * 1024) << "the process grew by the count it was given";
  }
}

// The IVF's inverted lists: FAISS resizes every list to the sizes it read
// before reading any code, and would open the file an "ilod" record names.
TEST(FaissAdapterPayload, CraftedInvertedListsAreRefused) {
  const Case& c = *std::find_if(cases().begin(), cases().end(), [](const Case& x) { return x.name == "IVFFlatL2"; });
  IdSource ids(c, 8);
  const Built b = build(c, 40, 15, ids, false);
  const std::vector<std::byte> good = payload_of(b.index);
  const std::size_t start = faiss_start(good);
  // Find "ilar" in the serialization (the quantizer holds only floats that
  // cannot spell it by chance here; the search is checked to find one).
  const std::byte ilar[4] = {std::byte{'i'}, std::byte{'l'}, std::byte{'a'}, std::byte{'r'}};
  const auto it =
      std::search(good.begin() + static_cast<std::ptrdiff_t>(start), good.end(), std::begin(ilar), std::end(ilar));
  ASSERT_NE(it, good.end());
  const auto at = static_cast<std::size_t>(it - good.begin());
  // "ilar", nlist u64, code_size u64, "full", count u64, sizes u64...
  struct Damage {
    std::string name;
    std::size_t offset;
    int width;
    std::uint64_t value;
    std::string message;
  };
  const std::vector<Damage> damages = {
      {"on-disk inverted lists", 0, 4, 0x646f6c69 /* "ilod" */, "not supported"},
      {"list count", 4, 8, 5, "lists"},
      {"code size", 12, 8, 4, "code size"},
      {"size encoding", 20, 4, 0x78787878, "encoding"},
      {"first list size", 32, 8, std::uint64_t{1} << 28, "impossible"},
      {"list sizes that disagree with ntotal", 32, 8, 0, "hold"},
  };
  FaissLeaksOnError leaks_expected;
  for (const Damage& d : damages) {
    SCOPED_TRACE(d.name);
    std::vector<std::byte> p = good;
    if (d.width == 8) {
      put_u64(p, at + d.offset, d.value);
    } else {
      put_u32(p, at + d.offset, static_cast<std::uint32_t>(d.value));
    }
    BufferReader r(p);
    try {
      (void)FaissIndex::load_from(r);
      ADD_FAILURE() << "accepted";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidPayload) << e.what();
      EXPECT_NE(std::string(e.what()).find(d.message), std::string::npos) << e.what();
    }
  }
}

// Damage that FAISS's grammar allows but that would make a search or an
// insert read outside the index: caught by the structural check after the
// load. (A crafted file passes the CRC; these are the cases it could hide.)
TEST(FaissAdapterPayload, InconsistentStructuresAreRefusedAfterReading) {
  FaissLeaksOnError leaks_expected;
  {
    SCOPED_TRACE("HNSW neighbor outside the graph");
    const Case& c = *std::find_if(cases().begin(), cases().end(), [](const Case& x) { return x.name == "HNSWFlatL2"; });
    IdSource ids(c, 9);
    Built b = build(c, 30, 16, ids, false);
    const auto& h = dynamic_cast<const faiss::IndexHNSWFlat&>(b.index.faiss_index()).hnsw;
    std::vector<std::byte> p = payload_of(b.index);
    // The neighbors vector: after the header, assign_probas, cum, levels and offsets.
    const std::size_t neighbors_at = faiss_start(p) + 37 + 8 + 8 * h.assign_probas.size() + 8 +
                                     4 * h.cum_nneighbor_per_level.size() + 8 + 4 * h.levels.size() + 8 +
                                     8 * h.offsets.size() + 8;
    put_u32(p, neighbors_at, 30);  // vector 0's first neighbor: one past the last vector
    BufferReader r(p);
    EXPECT_EQ(error_of([&] { (void)FaissIndex::load_from(r); }), ErrorKind::InvalidPayload);
  }
  {
    SCOPED_TRACE("duplicate ids in an IndexIDMap");
    const Case& c =
        *std::find_if(cases().begin(), cases().end(), [](const Case& x) { return x.name == "IDMapFlatL2"; });
    IdSource ids(c, 10);
    const Built b = build(c, 20, 17, ids, false);
    std::vector<std::byte> p = payload_of(b.index);
    const std::size_t id_map_at = faiss_start(p) + 82 + 4 * 20 * kDim + 8;
    std::memcpy(p.data() + id_map_at + 8, p.data() + id_map_at, 8);  // id 1 := id 0
    BufferReader r(p);
    EXPECT_EQ(error_of([&] { (void)FaissIndex::load_from(r); }), ErrorKind::InvalidPayload);
  }
}

// Truncated anywhere, the payload fails cleanly (no crash, an error of the
// payload's kind), and bytes after the index are refused too.
TEST(FaissAdapterPayload, TruncatedAndTrailingBytesFail) {
  FaissLeaksOnError leaks_expected;
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    IdSource ids(c, 11);
    const Built b = build(c, 12, 18, ids);
    const std::vector<std::byte> good = payload_of(b.index);
    for (std::size_t cut = 0; cut < good.size(); cut += 1 + good.size() / 97) {
      std::vector<std::byte> p(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(cut));
      BufferReader r(p);
      const auto kind = error_of([&] { (void)FaissIndex::load_from(r); });
      ASSERT_TRUE(kind == ErrorKind::TruncatedPayload || kind == ErrorKind::InvalidPayload) << "cut at " << cut;
    }
  }
}

// FaissIndex::from_serialized (Python's FaissIndex.from_serialized) reads
// FAISS's own bytes through the same guard: every type round-trips, and
// crafted bytes fail cleanly. (faiss::read_index alone, given an IDMap2
// whose header claims 2^44 vectors, looped over them building its reverse
// map, reading past its id map, for minutes.)
TEST(FaissAdapterPayload, FromSerializedReadsFaissBytesAsHostile) {
  FaissLeaksOnError leaks_expected;
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    IdSource ids(c, 19);
    const Built b = build(c, 12, 20, ids, false);
    faiss::VectorIOWriter w;  // what faiss.serialize_index gives
    faiss::write_index(&b.index.faiss_index(), &w);
    const std::vector<std::uint8_t> good = w.data;
    const auto as_bytes = [](const std::vector<std::uint8_t>& v) {
      return std::span<const std::byte>(reinterpret_cast<const std::byte*>(v.data()), v.size());
    };
    const FaissIndex again = FaissIndex::from_serialized(as_bytes(good), FaissOptions{c.cosine});
    EXPECT_EQ(faiss_bytes(again), faiss_bytes(b.index));
    EXPECT_EQ(again.size(), b.index.size());
    for (std::size_t cut = 0; cut < good.size(); cut += 1 + good.size() / 41) {
      const std::vector<std::uint8_t> p(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(cut));
      const auto kind = error_of([&] { (void)FaissIndex::from_serialized(as_bytes(p), FaissOptions{c.cosine}); });
      ASSERT_TRUE(kind == ErrorKind::TruncatedPayload || kind == ErrorKind::InvalidPayload) << "cut at " << cut;
    }
    std::vector<std::uint8_t> trailing = good;
    trailing.push_back(0);
    EXPECT_EQ(error_of([&] { (void)FaissIndex::from_serialized(as_bytes(trailing), FaissOptions{c.cosine}); }),
              ErrorKind::InvalidPayload);
    if (c.name.rfind("IDMap2", 0) == 0) {
      std::vector<std::uint8_t> crafted = good;
      crafted[8 + 5] ^= 0x10;  // the header's ntotal (after fourcc and d): + 2^44
      EXPECT_EQ(error_of([&] { (void)FaissIndex::from_serialized(as_bytes(crafted), FaissOptions{c.cosine}); }),
                ErrorKind::InvalidPayload);
    }
  }
}

// Loading `cfg` throws PersistError(InvalidPayload) naming `file` (and
// saying `why`).
void expect_load_refused(const PersistConfig& cfg, const std::string& file, const std::string& why = "") {
  FaissLeaksOnError leaks_expected;
  try {
    (void)PersistedIndex<FaissIndex>::load(cfg);
    ADD_FAILURE() << "accepted";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidPayload) << e.what();
    EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
  }
}

// The same checks, end to end: a crafted snapshot with a valid checksum.
TEST(FaissAdapterPayload, CraftedSnapshotWithAValidChecksumIsRefused) {
  const Case& c = cases().front();  // FlatL2
  IdSource ids(c, 12);
  const Built b = build(c, 20, 19, ids, false);
  std::vector<std::byte> p = payload_of(b.index);
  put_u64(p, faiss_start(p) + 37, std::uint64_t{1} << 28);
  TempDir dir;
  const PersistConfig cfg = config_for(dir / "crafted.iqdb", false);
  write_snapshot(default_file_system(), cfg.path, SnapshotInfo{"faiss", kDim, DistanceMetric::Euclidean, 20, 0},
                 Compression::none(), false, [&](PayloadWriter& w) { w.write(p.data(), p.size()); });
  EXPECT_NO_THROW(verify_snapshot(default_file_system(), cfg.path, ReadLimits{}));  // the checksum is fine
  expect_load_refused(cfg, "crafted.iqdb");
}

// ---------------------------------------------------------------- hostile parameters (issue 13)
//
// Each case is an index FAISS itself serializes (faiss::write_index, not the
// adapter, whose save would refuse it) with one parameter set to a value the
// FAISS 1.7.3 code that uses it cannot handle, wrapped in an adapter payload
// and a snapshot whose header and payload CRCs are right (write_snapshot
// computes them; verify_snapshot confirms). A child process with a capped
// address space loads it, then searches and inserts if the load succeeds:
// the load must throw PersistError(InvalidPayload), never crash, exhaust
// memory, or let a FAISS exception through.

// The child: run by the parent tests below through fork + exec of this
// binary with IQDB_HOSTILE_SNAPSHOT set. Exit codes: 0 refused with
// InvalidPayload; 10 accepted (load, search and insert all succeeded); 11 a
// PersistError of another kind; 12 an exception of another type.
constexpr int kChildAccepted = 10;
constexpr int kChildWrongKind = 11;
constexpr int kChildForeign = 12;
constexpr std::uint64_t kChildAddressSpace = std::uint64_t{3} << 30;

TEST(FaissHostileChild, LoadSearchInsert) {
  const char* path = std::getenv("IQDB_HOSTILE_SNAPSHOT");
  if (path == nullptr) GTEST_SKIP() << "runs in the child process of the FaissAdapterHostile tests";
#if !defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer reserves terabytes of address space: no cap under it.
  const rlimit as{kChildAddressSpace, kChildAddressSpace};
  setrlimit(RLIMIT_AS, &as);
#endif
  const rlimit cpu{60, 60};
  setrlimit(RLIMIT_CPU, &cpu);
  int code = kChildAccepted;
  try {
    PersistConfig cfg(path);
    auto db = PersistedIndex<FaissIndex>::load(cfg);
    const FaissIndex& ix = db.index();
    std::vector<float> q(ix.dim(), 0.5f);
    (void)ix.search(q, 5);
    const std::uint64_t id = ix.id_scheme() == FaissIdScheme::Positional ? ix.size() : (std::uint64_t{1} << 40);
    db.index_mut().insert(id, q);
    (void)ix.search(q, 5);
  } catch (const PersistError& e) {
    std::fprintf(stderr, "child: PersistError %s: %s\n", std::string(to_string(e.kind())).c_str(), e.what());
    code = e.kind() == ErrorKind::InvalidPayload ? 0 : kChildWrongKind;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "child: foreign exception %s: %s\n", typeid(e).name(), e.what());
    code = kChildForeign;
  }
  std::fflush(stderr);
  std::_Exit(code);
}

// Runs the child on `snapshot`; "" when it refused the file with
// InvalidPayload, else what happened (with the child's stderr).
std::string run_child(const fs::path& snapshot, const fs::path& log) {
  const std::string var = "IQDB_HOSTILE_SNAPSHOT=" + snapshot.string();
  std::vector<char*> env;
  for (char** e = environ; *e != nullptr; ++e) env.push_back(*e);
  env.push_back(const_cast<char*>(var.c_str()));
  env.push_back(nullptr);
  std::string filter = "--gtest_filter=FaissHostileChild.LoadSearchInsert";
  char* argv[] = {const_cast<char*>("faiss_adapter_test"), filter.data(), nullptr};
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return "cannot open the child's log";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execve("/proc/self/exe", argv, env.data());
    ::_exit(127);
  }
  ::close(fd);
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) return "fork / waitpid failed";
  std::ifstream in(log);
  const std::string out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return "";
  std::string what;
  if (WIFSIGNALED(status)) {
    what = std::string("killed by signal ") + ::strsignal(WTERMSIG(status));
  } else if (WEXITSTATUS(status) == kChildAccepted) {
    what = "accepted: loaded, searched and inserted";
  } else if (WEXITSTATUS(status) == kChildWrongKind) {
    what = "a PersistError of the wrong kind";
  } else if (WEXITSTATUS(status) == kChildForeign) {
    what = "a foreign exception";
  } else {
    what = "exit status " + std::to_string(WEXITSTATUS(status));
  }
  return what + "\n--- child output (tail) ---\n" + out.substr(out.size() > 1500 ? out.size() - 1500 : 0);
}

// A mutable copy of an index, through FAISS's own serialization.
std::unique_ptr<faiss::Index> faiss_copy(const faiss::Index& ix) {
  faiss::VectorIOWriter w;
  faiss::write_index(&ix, &w);
  faiss::VectorIOReader r;
  r.data = w.data;
  return std::unique_ptr<faiss::Index>(faiss::read_index(&r));
}

// The adapter payload of `original` with its FAISS part replaced by FAISS's
// serialization of `hostile` (the version, flags, metadata and random
// states of the original come first, as the adapter writes them).
std::vector<std::byte> payload_with(const FaissIndex& original, const faiss::Index& hostile) {
  std::vector<std::byte> p = payload_of(original);
  p.resize(faiss_start(p));
  faiss::VectorIOWriter w;
  faiss::write_index(&hostile, &w);
  const auto* b = reinterpret_cast<const std::byte*>(w.data.data());
  p.insert(p.end(), b, b + w.data.size());
  return p;
}

faiss::HNSW& hnsw_of(faiss::Index& ix) {
  faiss::Index* i = &ix;
  if (auto* m = dynamic_cast<faiss::IndexIDMap*>(i)) i = m->index;
  if (auto* ivf = dynamic_cast<faiss::IndexIVF*>(i)) i = ivf->quantizer;
  return dynamic_cast<faiss::IndexHNSW&>(*i).hnsw;
}
faiss::IndexIVF& ivf_of(faiss::Index& ix) {
  faiss::Index* i = &ix;
  if (auto* m = dynamic_cast<faiss::IndexIDMap*>(i)) i = m->index;
  return dynamic_cast<faiss::IndexIVF&>(*i);
}

// An IndexIVFFlat whose quantizer is an IndexHNSWFlat (4 lists, trained).
std::unique_ptr<faiss::Index> ivf_hnsw_quantizer() {
  auto q = std::make_unique<faiss::IndexHNSWFlat>(kDim, 4);
  auto index = std::make_unique<faiss::IndexIVFFlat>(q.release(), kDim, 4, faiss::METRIC_L2);
  index->own_fields = true;
  const std::vector<float> train = gaussian(200, kDim, 98);
  index->train(200, train.data());
  index->nprobe = 2;
  return index;
}

struct HostileParam {
  std::string name;
  std::string index_case;  // a cases() name, or "IVFHNSWQuantizer"
  std::size_t n;           // vectors in the index
  std::function<void(faiss::Index&)> set;
};

const std::vector<HostileParam>& hostile_params() {
  constexpr int kIntMax = std::numeric_limits<int>::max();
  static const std::vector<HostileParam> params = {
      {"HNSW upper_beam 0 (FAISS writes slot 0 of an empty vector: SIGSEGV)", "HNSWFlatL2", 20,
       [](faiss::Index& i) { hnsw_of(i).upper_beam = 0; }},
      {"HNSW upper_beam -1 (std::length_error inside OpenMP: abort)", "IDMap2HNSWFlatL2", 20,
       [](faiss::Index& i) { hnsw_of(i).upper_beam = -1; }},
      {"HNSW upper_beam INT_MAX (16 GiB heap per search)", "HNSWFlatL2", 20,
       [=](faiss::Index& i) { hnsw_of(i).upper_beam = kIntMax; }},
      {"HNSW efSearch INT_MAX (16 GiB heap per search)", "HNSWFlatL2", 20,
       [=](faiss::Index& i) { hnsw_of(i).efSearch = kIntMax; }},
      {"HNSW efSearch -5", "IDMapHNSWFlatIP", 20, [](faiss::Index& i) { hnsw_of(i).efSearch = -5; }},
      {"HNSW efConstruction INT_MAX", "HNSWFlatL2", 20,
       [=](faiss::Index& i) { hnsw_of(i).efConstruction = kIntMax; }},
      {"HNSW efConstruction 0", "HNSWFlatL2", 20, [](faiss::Index& i) { hnsw_of(i).efConstruction = 0; }},
      {"HNSW level probability NaN", "HNSWFlatL2", 20,
       [](faiss::Index& i) { hnsw_of(i).assign_probas[0] = std::numeric_limits<double>::quiet_NaN(); }},
      {"HNSW level probability 7", "HNSWFlatL2", 20, [](faiss::Index& i) { hnsw_of(i).assign_probas[1] = 7.0; }},
      {"HNSW 2^30 neighbor slots at level 0 of an empty graph (4 GiB per insert)", "HNSWFlatL2", 0,
       [](faiss::Index& i) {
         auto& cum = hnsw_of(i).cum_nneighbor_per_level;
         const int extra = (1 << 30) - cum[1];
         for (std::size_t l = 1; l < cum.size(); ++l) cum[l] += extra;
       }},
      {"HNSW 0 neighbors at level 1 of an empty graph", "HNSWFlatL2", 0,
       [](faiss::Index& i) {
         auto& cum = hnsw_of(i).cum_nneighbor_per_level;
         const int level1 = cum[2] - cum[1];
         for (std::size_t l = 2; l < cum.size(); ++l) cum[l] -= level1;
       }},
      {"HNSW 100 levels", "HNSWFlatL2", 0,
       [](faiss::Index& i) {
         auto& h = hnsw_of(i);
         h.assign_probas.assign(100, 0.01);
         h.cum_nneighbor_per_level.resize(101);
         for (int l = 0; l <= 100; ++l) h.cum_nneighbor_per_level[static_cast<std::size_t>(l)] = 2 * l;
       }},
      {"IndexHNSWFlat not trained (FAISS throws on insert)", "HNSWFlatL2", 20,
       [](faiss::Index& i) { i.is_trained = false; }},
      {"IVF nprobe 0 (every search throws a FaissException)", "IVFFlatL2", 40,
       [](faiss::Index& i) { ivf_of(i).nprobe = 0; }},
      {"IVF nprobe above nlist", "IDMap2IVFFlatIP", 40, [](faiss::Index& i) { ivf_of(i).nprobe = 5; }},
      {"IVF nprobe 2^64 - 1", "IVFFlatIPHashtable", 40, [](faiss::Index& i) { ivf_of(i).nprobe = ~std::size_t{0}; }},
      {"IVF quantizer HNSW upper_beam 0 (SIGSEGV in the quantizer's search)", "IVFHNSWQuantizer", 40,
       [](faiss::Index& i) { hnsw_of(i).upper_beam = 0; }},
      {"IVF quantizer HNSW efSearch INT_MAX", "IVFHNSWQuantizer", 40,
       [=](faiss::Index& i) { hnsw_of(i).efSearch = kIntMax; }},
      {"L1 metric_arg NaN", "FlatL1", 20,
       [](faiss::Index& i) { i.metric_arg = std::numeric_limits<float>::quiet_NaN(); }},
      {"IndexIDMap2 over L1: metric_arg 3 on the sub-index", "IDMap2FlatL1", 20,
       [](faiss::Index& i) { dynamic_cast<faiss::IndexIDMap2&>(i).index->metric_arg = 3.0f; }},
  };
  return params;
}

// The FaissIndex a hostile case starts from (n vectors, no metadata).
FaissIndex base_index(const std::string& index_case, std::size_t n) {
  if (index_case == "IVFHNSWQuantizer") {
    FaissIndex ix(ivf_hnsw_quantizer());
    const std::vector<float> x = gaussian(n, kDim, 31);
    for (std::size_t i = 0; i < n; ++i) ix.insert(1000 + i, row(x, i, kDim));
    return ix;
  }
  const Case& c = *std::find_if(cases().begin(), cases().end(), [&](const Case& x) { return x.name == index_case; });
  IdSource ids(c, 21);
  return std::move(build(c, n, 22, ids, false).index);
}

// An HNSW neighbor list with a neighbor after an empty slot ([-1, ..., -1, v]),
// crafted through the library's own writer (valid CRCs): FAISS's add_link
// takes such a list for full and reads the vector of every slot, -1
// included (found: ASan SEGV in fvec_L2sqr <- add_link at the first insert
// after the load, with d = 65536). The load refuses it, naming the file,
// bare or inside an IndexIDMap2.
TEST(FaissAdapterHostile, HnswNeighborAfterAnEmptySlotIsRefused) {
  constexpr int kNodes = 6;
  for (const bool wrapped : {false, true}) {
    SCOPED_TRACE(wrapped ? "IndexIDMap2(IndexHNSWFlat)" : "IndexHNSWFlat");
    TempDir dir;
    const PersistConfig cfg = config_for(dir / "gap.iqdb", false);
    std::unique_ptr<faiss::Index> ix = std::make_unique<faiss::IndexHNSWFlat>(kDim, 4);
    if (wrapped) {
      auto m = std::make_unique<faiss::IndexIDMap2>(ix.release());
      m->own_fields = true;
      ix = std::move(m);
    }
    auto db = PersistedIndex<FaissIndex>::open_with(FaissIndex(std::move(ix)), cfg);
    const std::vector<float> x = gaussian(kNodes, kDim, 41);
    for (std::size_t i = 0; i < kNodes; ++i) db.insert(i, row(x, i, kDim));
    faiss::HNSW& h = hnsw_of(const_cast<faiss::Index&>(db.index().faiss_index()));
    for (int node = 0; node < kNodes; ++node) {
      std::size_t b = 0;
      std::size_t e = 0;
      h.neighbor_range(node, 0, &b, &e);
      for (std::size_t j = b; j < e; ++j) h.neighbors[j] = -1;
      h.neighbors[e - 1] = (node + 1) % kNodes;
    }
    db.save();
    db.close();
    expect_load_refused(cfg, "gap.iqdb", "follows an empty slot");
  }
}

TEST(FaissAdapterHostile, CraftedParametersWithValidChecksumsAreRefusedInAChildProcess) {
  TempDir dir;
  for (const HostileParam& h : hostile_params()) {
    SCOPED_TRACE(h.name);
    const FaissIndex original = base_index(h.index_case, h.n);
    std::unique_ptr<faiss::Index> hostile = faiss_copy(original.faiss_index());
    h.set(*hostile);
    const std::vector<std::byte> p = payload_with(original, *hostile);
    const fs::path path = dir / "hostile.iqdb";
    write_snapshot(default_file_system(), path,
                   SnapshotInfo{"faiss", original.dim(), original.metric(), original.size(), 0}, Compression::none(),
                   false, [&](PayloadWriter& w) { w.write(p.data(), p.size()); });
    ASSERT_NO_THROW(verify_snapshot(default_file_system(), path, ReadLimits{}));  // the CRCs are right
    EXPECT_EQ(run_child(path, dir / "child.log"), "");
  }
}

// The same parameters on an index built in memory: the constructor refuses
// them (InvalidArgument) before anything can search (no snapshot, no byte
// editing: FAISS's API alone sets them).
TEST(FaissAdapterHostile, AdoptingAnIndexWithHostileParametersIsRefused) {
  for (const HostileParam& h : hostile_params()) {
    SCOPED_TRACE(h.name);
    const FaissIndex original = base_index(h.index_case, h.n);
    std::unique_ptr<faiss::Index> hostile = faiss_copy(original.faiss_index());
    h.set(*hostile);
    EXPECT_EQ(error_of([&] { FaissIndex ix(std::move(hostile), FaissOptions{original.metric() == DistanceMetric::Cosine}); }),
              ErrorKind::InvalidArgument);
  }
  // What FAISS does not serialize can only come this way.
  const auto ivf_with = [](int mode) {
    auto ix = ivf(kDim, faiss::METRIC_L2, false);
    dynamic_cast<faiss::IndexIVF&>(*ix).parallel_mode = mode;
    return ix;
  };
  for (const int mode : {-1, 4, 1024, 1024 + 1}) {
    SCOPED_TRACE("IVF parallel_mode " + std::to_string(mode));
    EXPECT_EQ(error_of([&] { FaissIndex ix(ivf_with(mode)); }), ErrorKind::InvalidArgument);
  }
  for (const int mode : {0, 1, 2, 3}) EXPECT_NO_THROW(FaissIndex ix(ivf_with(mode)));
}

// The in-memory case of the issue, end to end: an IndexHNSWFlat with
// upper_beam 0 was adopted, saved and loaded, and the first search crashed.
TEST(FaissAdapterHostile, UpperBeamZeroBuiltInMemoryIsRefusedWhenAdopted) {
  auto h = std::make_unique<faiss::IndexHNSWFlat>(kDim, 8);
  const std::vector<float> x = gaussian(10, kDim, 5);
  h->add(10, x.data());
  h->hnsw.upper_beam = 0;
  try {
    FaissIndex ix(std::move(h));
    ADD_FAILURE() << "accepted";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("upper_beam"), std::string::npos) << e.what();
  }
}

// A valid index whose parameters are changed behind the adapter's back
// (through a pointer kept from before it was adopted): searches and inserts
// refuse with PersistError instead of crashing or throwing FAISS's
// exceptions; what FAISS still throws arrives as PersistError.
TEST(FaissAdapterHostile, FaissFailuresReachTheCallerAsPersistError) {
  const std::vector<float> q(kDim, 0.25f);
  {
    SCOPED_TRACE("IVF nprobe set to 0 after adoption");
    auto index = ivf(kDim, faiss::METRIC_L2, false);
    auto* raw = dynamic_cast<faiss::IndexIVF*>(index.get());
    FaissIndex ix(std::move(index));
    for (std::uint64_t i = 0; i < 10; ++i) ix.insert(100 + i, gaussian(1, kDim, static_cast<std::uint32_t>(i)));
    raw->nprobe = 0;
    EXPECT_EQ(error_of([&] { (void)ix.search(q, 3); }), ErrorKind::InvalidArgument);
    EXPECT_EQ(error_of([&] { ix.insert(7, q); }), ErrorKind::InvalidArgument);
    raw->nprobe = 4;
    EXPECT_EQ(ix.search(q, 3).size(), 3u);
  }
  {
    SCOPED_TRACE("HNSW upper_beam set to 0 after adoption");
    auto index = std::make_unique<faiss::IndexHNSWFlat>(kDim, 8);
    auto* raw = index.get();
    FaissIndex ix(std::move(index));
    for (std::uint64_t i = 0; i < 10; ++i) ix.insert(i, gaussian(1, kDim, static_cast<std::uint32_t>(i)));
    raw->hnsw.upper_beam = 0;
    EXPECT_EQ(error_of([&] { (void)ix.search(q, 3); }), ErrorKind::InvalidArgument);
  }
  {
    SCOPED_TRACE("FaissException from add_with_ids (an array direct map set behind the adapter's back)");
    auto index = ivf(kDim, faiss::METRIC_L2, false);
    auto* raw = dynamic_cast<faiss::IndexIVF*>(index.get());
    FaissIndex ix(std::move(index));
    ix.insert(0, q);  // FAISS's array direct map needs sequential ids
    raw->set_direct_map_type(faiss::DirectMap::Array);
    try {
      ix.insert(6, q);
      ADD_FAILURE() << "accepted";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Unsupported) << e.what();
    }
    EXPECT_FALSE(ix.contains(6));
    EXPECT_EQ(ix.size(), 1u);
  }
  {
    SCOPED_TRACE("k above the cap");
    auto index = std::make_unique<faiss::IndexIDMap2>(new faiss::IndexFlatL2(1));
    index->own_fields = true;
    constexpr std::size_t kN = (std::size_t{1} << 20) + 1;
    std::vector<float> x(kN);
    std::vector<std::int64_t> ids(kN);
    for (std::size_t i = 0; i < kN; ++i) {
      x[i] = static_cast<float>(i);
      ids[i] = static_cast<std::int64_t>(i);
    }
    index->add_with_ids(static_cast<std::int64_t>(kN), x.data(), ids.data());
    FaissIndex ix(std::move(index));
    const std::vector<float> one{3.0f};
    EXPECT_EQ(error_of([&] { (void)ix.search(one, std::numeric_limits<std::size_t>::max()); }),
              ErrorKind::InvalidArgument);
    EXPECT_EQ(ix.search(one, std::size_t{1} << 20).size(), std::size_t{1} << 20);
    EXPECT_EQ(ix.search(one, 1).at(0).id, 3u);
  }
}

// ---------------------------------------------------------------- the guard

// The guard accepts FAISS's serialization of every supported type however it
// is split into reads, and refuses every proper prefix at finish().
// FAISS's serialization of each case with n vectors (built once).
const std::vector<std::uint8_t>& stream_of(std::size_t case_no, std::size_t n) {
  static std::map<std::pair<std::size_t, std::size_t>, std::vector<std::uint8_t>> cache;
  auto& s = cache[{case_no, n}];
  if (s.empty()) {
    const Case& c = cases()[case_no];
    IdSource ids(c, 13);
    const Built b = build(c, n, 20, ids);
    faiss::VectorIOWriter w;
    faiss::write_index(&b.index.faiss_index(), &w);
    s = w.data;
  }
  return s;
}

RC_GTEST_PROP(FaissStreamGuard, AcceptsEverySplitOfAValidStream, ()) {
  const auto case_no = *rc::gen::inRange<std::size_t>(0, cases().size());
  const auto n = *rc::gen::element<std::size_t>(0, 1, 9, 30);
  const std::vector<std::uint8_t>& s = stream_of(case_no, n);
  adapters::detail::FaissStreamGuard guard(true);
  std::size_t pos = 0;
  while (pos < s.size()) {
    const auto k = std::min(s.size() - pos, *rc::gen::inRange<std::size_t>(1, 64));
    guard.feed(s.data() + pos, k, s.size() - pos - k);
    pos += k;
  }
  guard.finish();

  const auto cut = *rc::gen::inRange<std::size_t>(0, s.size());
  adapters::detail::FaissStreamGuard partial(true);
  partial.feed(s.data(), cut, s.size() - cut);
  RC_ASSERT_THROWS_AS(partial.finish(), PersistError);
}

// The seeds of the faiss_crc fuzz target (fuzz/corpus/faiss_crc) and any
// regressions, through the target's harness and oracles, in every test run.
TEST(FaissAdapterFuzzCorpus, SeedsAndRegressionsReplayThroughTheFuzzTarget) {
  const fs::path fuzz_dir = fs::path(__FILE__).parent_path().parent_path().parent_path() / "fuzz";
  std::size_t replayed = 0;
  for (const char* kind : {"corpus", "regressions"}) {
    const fs::path dir = fuzz_dir / kind / "faiss_crc";
    if (!fs::is_directory(dir)) continue;
    for (const auto& e : fs::directory_iterator(dir)) {
      std::ifstream in(e.path(), std::ios::binary);
      const std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      SCOPED_TRACE(e.path().filename().string());
      fuzz::run_faiss_crc(bytes);
      ++replayed;
    }
  }
  EXPECT_GE(replayed, 3u) << "the committed corpus is missing";
}

}  // namespace
}  // namespace iqdb::persist
