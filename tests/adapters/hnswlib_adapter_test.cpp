// The hnswlib adapter: L2, inner-product and cosine graphs saved and loaded
// through PersistedIndex, compared with the graph that was never saved (every
// public member of hnswlib's HierarchicalNSW, and the searches); the payload
// against bytes built here from the documented layout; hostile payloads in
// the style of hnswlib#673, each refused before anything is allocated or
// linked from it; WAL recovery from a crash image against the graph that
// never crashed; a graph built with hnswlib's own API, checked against
// hnswlib's saveIndex / loadIndex.
#include <gtest/gtest.h>
#include <hnswlib/hnswlib.h>  // the graph's members (graph(), adoption)
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <cstring>
#include <functional>
#include <iqdb/persist.hpp>
#include <iqdb/persist/adapters/hnswlib.hpp>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "adapters/adapter_test_util.hpp"
// The hnswlib_crc fuzz target (its entry point is not defined here).
#include "../../fuzz/hnswlib_crc_fuzzer.cpp"
#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;
using Graph = HnswlibIndex::Graph;
using test::BufferReader;
using test::BufferWriter;
using test::Bytes;
using test::config_for;
using test::crash_image;
using test::error_of;
using test::gaussian;
using test::TempDir;

constexpr std::size_t kDim = 16;

std::vector<float> row(const std::vector<float>& x, std::size_t i, std::size_t d = kDim) { return test::row(x, i, d); }

std::optional<Metadata> meta_for(std::uint64_t i) {
  if (i % 4 != 0) return std::nullopt;
  return Metadata{{"i", Value(static_cast<std::int64_t>(i))}, {"name", Value("v" + std::to_string(i))}};
}

template <class Engine>
std::string text_of(const Engine& e) {
  std::ostringstream os;
  os << e;
  return os.str();
}

// Every member of the graph that a search or a later insert reads.
void expect_same_graph(const Graph& a, const Graph& b) {
  ASSERT_EQ(a.cur_element_count, b.cur_element_count);
  const std::size_t n = a.cur_element_count;
  EXPECT_EQ(a.M_, b.M_);
  EXPECT_EQ(a.maxM_, b.maxM_);
  EXPECT_EQ(a.maxM0_, b.maxM0_);
  EXPECT_EQ(a.ef_construction_, b.ef_construction_);
  EXPECT_EQ(a.ef_, b.ef_);
  EXPECT_EQ(a.mult_, b.mult_);
  EXPECT_EQ(a.maxlevel_, b.maxlevel_);
  EXPECT_EQ(a.num_deleted_, b.num_deleted_);
  if (n > 0) {
    EXPECT_EQ(a.enterpoint_node_, b.enterpoint_node_);
  }
  ASSERT_EQ(a.size_data_per_element_, b.size_data_per_element_);
  EXPECT_EQ(std::memcmp(a.data_level0_memory_, b.data_level0_memory_, n * a.size_data_per_element_), 0);
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_EQ(a.element_levels_[i], b.element_levels_[i]) << i;
    if (a.element_levels_[i] > 0) {
      EXPECT_EQ(std::memcmp(a.linkLists_[i], b.linkLists_[i],
                            static_cast<std::size_t>(a.element_levels_[i]) * a.size_links_per_element_),
                0)
          << i;
    }
  }
  EXPECT_EQ((std::map<hnswlib::labeltype, hnswlib::tableint>(a.label_lookup_.begin(), a.label_lookup_.end())),
            (std::map<hnswlib::labeltype, hnswlib::tableint>(b.label_lookup_.begin(), b.label_lookup_.end())));
  EXPECT_EQ(text_of(a.level_generator_), text_of(b.level_generator_));
  EXPECT_EQ(text_of(a.update_probability_generator_), text_of(b.update_probability_generator_));
}

void expect_same_index(const HnswlibIndex& a, const HnswlibIndex& b) {
  EXPECT_EQ(a.size(), b.size());
  EXPECT_EQ(a.dim(), b.dim());
  EXPECT_EQ(a.metric(), b.metric());
  EXPECT_EQ(a.metadata_table(), b.metadata_table());
  expect_same_graph(a.graph(), b.graph());
  const std::vector<float> q = gaussian(20, a.dim(), 77);
  for (std::size_t i = 0; i < 20; ++i) EXPECT_EQ(a.search(row(q, i, a.dim()), 10), b.search(row(q, i, a.dim()), 10));
}

struct Built {
  HnswlibIndex index;
  std::map<std::uint64_t, std::vector<float>> live;
};

// n vectors (ids 1000 + 7i), then every 9th erased and one erased id
// inserted again with a new vector.
Built build(DistanceMetric metric, std::size_t n, std::uint32_t seed) {
  Built b{HnswlibIndex(kDim, metric, HnswlibParams{8, 64, 32, 100, 0}), {}};
  const std::vector<float> x = gaussian(n + 1, kDim, seed);
  for (std::size_t i = 0; i < n; ++i) {
    b.index.insert(1000 + 7 * i, row(x, i), meta_for(i));
    b.live[1000 + 7 * i] = row(x, i);
  }
  for (std::size_t i = 0; i < n; i += 9) {
    b.index.erase(1000 + 7 * i);
    b.live.erase(1000 + 7 * i);
  }
  if (n > 9) {
    b.index.insert(1000 + 7 * 9, row(x, n), Metadata{{"again", Value(true)}});
    b.live[1000 + 7 * 9] = row(x, n);
  }
  return b;
}

// ---------------------------------------------------------------- round trip

TEST(HnswlibAdapter, LoadsAsSavedAndSearchesIdentically) {
  const DistanceMetric metrics[] = {DistanceMetric::Euclidean, DistanceMetric::DotProduct, DistanceMetric::Cosine};
  const Compression compressions[] = {Compression::none(), Compression::zstd(3), Compression::lz4()};
  for (std::size_t m = 0; m < 3; ++m) {
    SCOPED_TRACE(to_string(metrics[m]));
    TempDir dir;
    Built b = build(metrics[m], 400, static_cast<std::uint32_t>(m + 1));
    PersistConfig cfg = config_for(dir / "h.iqdb", false);
    cfg.compression = compressions[m];
    auto db = PersistedIndex<HnswlibIndex>::open_with(std::move(b.index), cfg);
    db.save();
    const SnapshotSummary s = inspect_snapshot(default_file_system(), cfg.path);
    EXPECT_EQ(s.header.index_type, "hnswlib");
    EXPECT_EQ(s.header.dim, kDim);
    EXPECT_EQ(s.header.metric, metrics[m]);
    EXPECT_EQ(s.header.n_vectors, b.live.size());

    auto loaded = PersistedIndex<HnswlibIndex>::load(cfg);
    expect_same_index(loaded.index(), db.index());
    for (std::uint64_t i = 0; i < 400; ++i) {
      const std::uint64_t id = 1000 + 7 * i;
      EXPECT_EQ(loaded.index().contains(id), b.live.count(id) == 1) << id;
    }
    EXPECT_EQ(*loaded.index().metadata(1000 + 7 * 9), (Metadata{{"again", Value(true)}}));
    // Erased vectors are never found; live vectors find themselves (HNSW is
    // approximate: nearly always).
    std::size_t found_self = 0;
    for (const auto& [id, v] : b.live) {
      const auto hits = loaded.index().search(v, 3);
      ASSERT_FALSE(hits.empty());
      for (const auto& h : hits) EXPECT_EQ(b.live.count(h.id), 1u) << h.id;
      if (hits[0].id == id) ++found_self;
    }
    if (metrics[m] != DistanceMetric::DotProduct) {
      EXPECT_GE(found_self * 100, b.live.size() * 95);
    }
  }
}

TEST(HnswlibAdapter, EmptyAndTinyGraphsRoundTrip) {
  for (std::size_t n : {0u, 1u, 2u, 9u}) {
    SCOPED_TRACE(n);
    TempDir dir;
    const PersistConfig cfg = config_for(dir / "t.iqdb", false);
    auto db = PersistedIndex<HnswlibIndex>::open_with(build(DistanceMetric::Euclidean, n, 3).index, cfg);
    db.save();
    auto loaded = PersistedIndex<HnswlibIndex>::load(cfg);
    expect_same_index(loaded.index(), db.index());
  }
}

// ---------------------------------------------------------------- the documented layout

Bytes& engine(Bytes& b, const std::string& text) { return b.u64(text.size()).str(text); }

// The payload of a small graph, built here field by field from
// docs/ADAPTERS.md ("hnswlib payload") and hnswlib's accessors.
TEST(HnswlibAdapter, PayloadFollowsTheDocumentedLayout) {
  HnswlibIndex ix(3, DistanceMetric::Euclidean, HnswlibParams{2, 4, 5, 100, 0});
  const std::vector<float> x = gaussian(6, 3, 5);
  for (std::size_t i = 0; i < 6; ++i) ix.insert(50 + i, row(x, i, 3), i == 2 ? meta_for(0) : std::nullopt);
  ix.erase(53);
  const Graph& g = ix.graph();

  Bytes want;
  want.u32(1).u8(2).u64(3).u64(2).u64(4).u64(5).u64(6).i64(g.maxlevel_).u64(g.enterpoint_node_);
  engine(want, text_of(g.level_generator_));
  engine(want, text_of(g.update_probability_generator_));
  // Metadata side table: one record (id 52).
  want.u64(1).u64(52).u32(2).u32(1).str("i").u8(1).i64(0).u32(4).str("name").u8(0).u32(2).str("v0");
  for (hnswlib::tableint i = 0; i < 6; ++i) {
    auto* l0 = g.get_linklist0(i);
    const auto count = g.getListCount(l0);
    want.u16(count).u8(g.isMarkedDeleted(i) ? 1 : 0).u8(0);
    const auto* ids = reinterpret_cast<const hnswlib::tableint*>(l0 + 1);
    // Slots past the count hold what hnswlib left there (unspecified).
    for (std::size_t j = 0; j < 4; ++j) want.u32(ids[j]);
    for (std::size_t d = 0; d < 3; ++d) want.f32(x[i * 3 + d]);
    want.u64(g.getExternalLabel(i));
  }
  for (hnswlib::tableint i = 0; i < 6; ++i) want.u32(static_cast<std::uint32_t>(g.element_levels_[i]));
  for (hnswlib::tableint i = 0; i < 6; ++i) {
    for (int l = 1; l <= g.element_levels_[i]; ++l) {
      auto* list = g.get_linklist(i, l);
      const auto count = g.getListCount(list);
      want.u16(count).u16(0);
      const auto* ids = reinterpret_cast<const hnswlib::tableint*>(list + 1);
      for (std::size_t j = 0; j < 2; ++j) want.u32(ids[j]);
    }
  }

  BufferWriter got;
  ix.save_to(got);
  EXPECT_EQ(got.bytes, want.data());
}

// ---------------------------------------------------------------- hostile payloads

// A hand-made graph of 4 elements (labels 10..13, dim 2, M 2): element 0 is
// the entry point, on levels 0 and 1; level 0 links everyone to everyone.
struct Crafted {
  std::uint32_t version = 1;
  std::uint8_t metric = 2;
  std::uint64_t dim = 2;
  std::uint64_t M = 2;
  std::uint64_t efc = 8;
  std::uint64_t ef = 4;
  std::uint64_t n = 4;
  std::int64_t max_level = 1;
  std::uint64_t entry = 0;
  std::string gen = "1";
  std::vector<std::vector<std::uint32_t>> level0 = {{1, 2, 3}, {0, 2, 3}, {0, 1, 3}, {0, 1, 2}};
  std::vector<std::uint8_t> flags = {0, 0, 0, 0};
  std::vector<std::uint8_t> reserved = {0, 0, 0, 0};
  std::vector<std::uint64_t> labels = {10, 11, 12, 13};
  std::vector<std::uint32_t> levels = {1, 0, 0, 0};
  std::vector<std::uint32_t> upper = {};  // the level-1 neighbors of every element on level 1
  std::optional<std::uint64_t> upper_count;

  std::vector<std::byte> bytes() const {
    Bytes b;
    b.u32(version).u8(metric).u64(dim).u64(M).u64(efc).u64(ef).u64(n).i64(max_level).u64(entry);
    engine(b, gen);
    engine(b, gen);
    b.u64(0);  // no metadata
    for (std::size_t i = 0; i < level0.size(); ++i) {
      b.u16(static_cast<std::uint16_t>(level0[i].size())).u8(flags[i]).u8(reserved[i]);
      for (std::size_t j = 0; j < 2 * M; ++j) b.u32(j < level0[i].size() ? level0[i][j] : 0);
      for (std::size_t d = 0; d < dim; ++d) b.f32(static_cast<float>(i) + 0.5f * static_cast<float>(d));
      b.u64(labels[i]);
    }
    for (const std::uint32_t l : levels) b.u32(l);
    // Lists for level 1 only (the hand-made graph has no higher level; a
    // damaged level claims lists that are not there).
    for (std::size_t i = 0; i < levels.size(); ++i) {
      for (std::uint32_t l = 0; l < std::min<std::uint32_t>(levels[i], 1); ++l) {
        b.u16(static_cast<std::uint16_t>(upper_count.value_or(upper.size()))).u16(0);
        for (std::size_t j = 0; j < M; ++j) b.u32(j < upper.size() ? upper[j] : 0);
      }
    }
    return b.data();
  }
};

HnswlibIndex load(const std::vector<std::byte>& p) {
  BufferReader r(p);
  return HnswlibIndex::load_from(r);
}

TEST(HnswlibAdapterPayload, TheHandMadeGraphLoadsAndSearches) {
  const HnswlibIndex ix = load(Crafted{}.bytes());
  EXPECT_EQ(ix.size(), 4u);
  for (std::uint64_t i = 0; i < 4; ++i) {
    const std::vector<float> q = {static_cast<float>(i), static_cast<float>(i) + 0.5f};
    const auto hits = ix.search(q, 2);
    ASSERT_EQ(hits.size(), 2u);
    EXPECT_EQ(hits[0].id, 10 + i);
    EXPECT_EQ(hits[0].distance, 0.0f);
  }
}

TEST(HnswlibAdapterPayload, HostileGraphsAreRefusedBeforeUse) {
  struct Hostile {
    std::string name;
    std::string reason;  // in the error message
    std::function<void(Crafted&)> damage;
  };
  const std::vector<Hostile> hostile = {
      {"unknown version", "payload version", [](Crafted& c) { c.version = 2; }},
      {"Manhattan metric", "not an hnswlib metric", [](Crafted& c) { c.metric = 3; }},
      {"dimension 0", "dimension 0", [](Crafted& c) { c.dim = 0; }},
      {"M 0", "M 0", [](Crafted& c) { c.M = 0; }},
      {"M 1", "M 1", [](Crafted& c) { c.M = 1; }},
      {"M beyond hnswlib's cap", "M 10001", [](Crafted& c) { c.M = 10001; }},
      {"ef 0", "ef 0", [](Crafted& c) { c.ef = 0; }},
      {"ef_construction below M", "ef_construction 1", [](Crafted& c) { c.efc = 1; }},
      {"element count far beyond the payload", "element count", [](Crafted& c) { c.n = std::uint64_t{1} << 40; }},
      {"element count one beyond the payload", "exceeds", [](Crafted& c) { c.n = 5; }},
      {"entry point outside the graph", "do not fit", [](Crafted& c) { c.entry = 4; }},
      {"entry point not on the top level", "not on the top level", [](Crafted& c) { c.entry = 1; }},
      {"top level below an element's", "above the top level", [](Crafted& c) { c.max_level = 0; }},
      {"negative top level", "do not fit", [](Crafted& c) { c.max_level = -1; }},
      {"empty graph with an entry point", "do not fit 0",
       [](Crafted& c) {
         c.n = 0;
         c.level0.clear();
         c.levels.clear();
       }},
      {"level-0 neighbor outside the graph", "links to 4 at level 0", [](Crafted& c) { c.level0[2][1] = 4; }},
      {"level-0 neighbor far outside the graph", "links to 4294967280",
       [](Crafted& c) { c.level0[3][0] = 0xfffffff0u; }},
      {"level-0 list longer than 2M", "link list of element 1 at level 0",
       [](Crafted& c) {
         c.level0[1] = {0, 2, 3, 0, 2};
       }},
      {"unknown flag", "link list of element 1", [](Crafted& c) { c.flags[1] = 0x02; }},
      {"reserved byte set", "link list of element 0 at level 0", [](Crafted& c) { c.reserved[0] = 1; }},
      {"upper neighbor missing on that level", "links to 2 at level 1", [](Crafted& c) { c.upper = {2}; }},
      {"upper list longer than M", "link list of element 0 at level 1", [](Crafted& c) { c.upper_count = 3; }},
      {"level far beyond any graph", "do not fit",
       [](Crafted& c) {
         c.levels[0] = 1u << 30;
         c.max_level = 1 << 30;
       }},
      {"level beyond the payload", "link list count",
       [](Crafted& c) {
         c.levels[0] = 60000;
         c.max_level = 60000;
       }},
      {"duplicate labels", "duplicate label", [](Crafted& c) { c.labels[3] = 11; }},
      {"damaged generator state", "generator state", [](Crafted& c) { c.gen = "seven"; }},
  };
  {
    SCOPED_TRACE("the undamaged graph");
    EXPECT_NO_THROW(load(Crafted{}.bytes()));
  }
  for (const Hostile& h : hostile) {
    SCOPED_TRACE(h.name);
    Crafted c;
    h.damage(c);
    const std::vector<std::byte> p = c.bytes();
    try {
      (void)load(p);
      ADD_FAILURE() << "accepted";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidPayload) << e.what();
      EXPECT_NE(std::string(e.what()).find(h.reason), std::string::npos) << e.what();
    }
  }
}

// Cut anywhere, a real graph's payload fails cleanly.
// Hash flooding: the label lookup hashes with std::hash (the identity) and
// was reserved for n labels on load, so labels that are multiples of that
// bucket count all shared one bucket and made the load quadratic (32k
// labels: 31 s under ASan). 64k such labels load as the model says, and no
// bucket of the loaded lookup is crowded.
TEST(HnswlibAdapterPayload, LabelsCraftedToCollideUnderStdHashLoadAsSaved) {
  constexpr std::size_t kIds = 1 << 16;
  std::unordered_map<hnswlib::labeltype, hnswlib::tableint> old_lookup;
  old_lookup.reserve(kIds);
  const std::size_t stride = old_lookup.bucket_count();
  HnswlibIndex ix(2, DistanceMetric::Euclidean, HnswlibParams{4, 8, 10, 100, kIds});
  // Built with another bucket count (3n's prime does not divide the labels).
  const_cast<Graph&>(ix.graph()).label_lookup_.reserve(3 * kIds);
  const std::vector<float> x = gaussian(kIds, 2, 45);
  std::map<std::uint64_t, std::vector<float>> model;
  for (std::size_t k = 0; k < kIds; ++k) {
    ix.insert((k + 1) * stride, row(x, k, 2));
    model[(k + 1) * stride] = row(x, k, 2);
  }
  TempDir dir;
  const PersistConfig cfg = config_for(dir / "flood.iqdb", false);
  PersistedIndex<HnswlibIndex>::open_with(std::move(ix), cfg).save();
  const auto db = PersistedIndex<HnswlibIndex>::load(cfg);
  const Graph& g = db.index().graph();
  ASSERT_EQ(db.index().size(), kIds);
  std::size_t crowded = 0;
  for (std::size_t b = 0; b < g.label_lookup_.bucket_count(); ++b)
    crowded = std::max(crowded, g.label_lookup_.bucket_size(b));
  EXPECT_LT(crowded, 64u);
  for (const auto& [id, v] : model) {
    ASSERT_TRUE(db.index().contains(id)) << id;
    ASSERT_FALSE(db.index().contains(id + 1)) << id;
    ASSERT_EQ(g.getDataByLabel<float>(id), v) << id;
  }
}

TEST(HnswlibAdapterPayload, TruncationFailsAnywhere) {
  const Built b = build(DistanceMetric::Euclidean, 60, 4);
  BufferWriter w;
  b.index.save_to(w);
  EXPECT_NO_THROW(load(w.bytes));
  for (std::size_t cut = 0; cut < w.bytes.size(); cut += 1 + w.bytes.size() / 211) {
    const std::vector<std::byte> p(w.bytes.begin(), w.bytes.begin() + static_cast<std::ptrdiff_t>(cut));
    const auto kind = error_of([&] { (void)load(p); });
    ASSERT_TRUE(kind == ErrorKind::TruncatedPayload || kind == ErrorKind::InvalidPayload) << "cut at " << cut;
  }
}

// Any single flipped byte either loads into a graph that passes the checks
// or is refused: never a crash (run under ASan in CI).
RC_GTEST_PROP(HnswlibAdapterPayload, FlippedBytesNeverCrash, ()) {
  static const std::vector<std::byte> good = [] {
    BufferWriter w;
    build(DistanceMetric::Euclidean, 30, 6).index.save_to(w);
    return w.bytes;
  }();
  std::vector<std::byte> p = good;
  const auto at = *rc::gen::inRange<std::size_t>(0, p.size());
  p[at] ^= std::byte{*rc::gen::inRange<std::uint8_t>(1, 255)};
  try {
    const HnswlibIndex ix = load(p);
    const std::vector<float> q(kDim, 0.25f);
    (void)ix.search(q, 5);
  } catch (const PersistError& e) {
    RC_ASSERT(e.kind() == ErrorKind::InvalidPayload || e.kind() == ErrorKind::TruncatedPayload);
  }
}

// Cosine normalises in double (an outside hunt): 1 / sqrt(norm) was taken
// to float, so a vector of components 1e-40 was scaled to infinity and
// every later search put it first at a NaN distance. Model: every vector
// along (1,1,1), whatever its finite length, is at distance 0 (1 - cos)
// from the query (1,1,1), before (1,0,0) and (0,1,0) at 1 - 1/sqrt(3);
// queries of any length likewise.
TEST(HnswlibAdapter, CosineNormalisesVectorsOfAnyFiniteLength) {
  HnswlibIndex ix(3, DistanceMetric::Cosine);
  test::check_cosine_over_any_length(ix, 0.0f, 1.0f - 1.0f / std::sqrt(3.0f));
}

// ---------------------------------------------------------------- WAL

TEST(HnswlibAdapter, WalRecoveryEqualsTheGraphThatNeverCrashed) {
  for (const DistanceMetric metric : {DistanceMetric::Euclidean, DistanceMetric::Cosine}) {
    SCOPED_TRACE(to_string(metric));
    TempDir dir;
    const PersistConfig cfg = config_for(dir / "w.iqdb", true);
    auto db = PersistedIndex<HnswlibIndex>::open_with(build(metric, 100, 7).index, cfg);
    const std::vector<float> x = gaussian(200, kDim, 8);
    for (std::size_t i = 0; i < 80; ++i) db.insert(5000 + i, row(x, i), meta_for(i));
    db.erase(5003);
    db.erase(1000 + 7 * 20);
    db.checkpoint();
    for (std::size_t i = 80; i < 160; ++i) db.insert(5000 + i, row(x, i), meta_for(i));
    db.erase(5090);
    db.insert(5003, row(x, 199));  // an erased id inserted again
    WriteBatch batch;
    batch.insert(9000, row(x, 170)).erase(5100).insert(9001, row(x, 171), Metadata{{"b", Value(1)}});
    db.write(batch);
    const std::uint64_t acknowledged = db.last_lsn();
    const fs::path image = crash_image(cfg, dir / "crash");

    auto recovered = PersistedIndex<HnswlibIndex>::load(config_for(image, true));
    EXPECT_EQ(recovered.last_lsn(), acknowledged);
    expect_same_index(recovered.index(), db.index());
    // Same generators: the next insert builds the same links in both.
    recovered.insert(7777, row(x, 180));
    db.insert(7777, row(x, 180));
    expect_same_graph(recovered.index().graph(), db.index().graph());
  }
}

TEST(HnswlibAdapter, RefusalsComeBeforeLogging) {
  TempDir dir;
  const PersistConfig cfg = config_for(dir / "r.iqdb", true);
  auto db = PersistedIndex<HnswlibIndex>::open_with(build(DistanceMetric::Euclidean, 20, 9).index, cfg);
  const std::uint64_t lsn = db.last_lsn();
  const std::vector<float> v(kDim, 0.5f);
  EXPECT_EQ(error_of([&] { db.insert(VectorId::bytes("doc"), v); }), ErrorKind::InvalidArgument);
  EXPECT_EQ(error_of([&] { db.insert(1007, v); }), ErrorKind::DuplicateId);
  EXPECT_EQ(error_of([&] { db.insert(1, std::vector<float>(kDim - 1, 0.5f)); }), ErrorKind::InvalidArgument);
  EXPECT_EQ(error_of([&] { db.erase(1000); }), ErrorKind::IdNotFound);  // erased by build()
  EXPECT_EQ(error_of([&] { db.erase(VectorId::bytes("doc")); }), ErrorKind::IdNotFound);
  EXPECT_EQ(db.last_lsn(), lsn);
  db.insert(1000, v);  // an erased id may come back
  EXPECT_TRUE(db.index().contains(1000));
  EXPECT_EQ(db.last_lsn(), lsn + 1);
}

// A batch that erases an id and inserts it again (another vector), and one
// that inserts a new id and erases it, validate as their mutations apply,
// in order (docs/API.md, write(): "each mutation sees the earlier ones"):
// the adapter's own hook refused the first with DuplicateId, looking at the
// index instead of the batch (an outside hunt). Both hold after a reload.
TEST(HnswlibAdapter, ABatchSeesItsOwnEarlierMutations) {
  TempDir dir;
  const PersistConfig cfg = config_for(dir / "b.iqdb", true);
  auto db = PersistedIndex<HnswlibIndex>::open_with(build(DistanceMetric::Euclidean, 20, 9).index, cfg);
  const std::size_t size = db.index().size();
  ASSERT_TRUE(db.index().contains(1007));
  const std::vector<float> v(kDim, 7.5f);  // far from build()'s vectors
  db.write(WriteBatch().erase(1007).insert(1007, v, Metadata{{"again", Value(true)}}));
  db.write(WriteBatch().insert(4242, v).erase(4242));
  for (int pass = 0; pass < 2; ++pass) {
    const HnswlibIndex& ix = db.index();
    EXPECT_EQ(ix.size(), size) << pass;
    EXPECT_FALSE(ix.contains(4242)) << pass;
    const auto hits = ix.search(v, 1);
    ASSERT_EQ(hits.size(), 1u);
    EXPECT_EQ(hits[0].id, 1007u) << pass;
    EXPECT_FLOAT_EQ(hits[0].distance, 0.0f) << pass;
    ASSERT_NE(ix.metadata(1007), nullptr);
    EXPECT_EQ(*ix.metadata(1007), (Metadata{{"again", Value(true)}}));
    if (pass == 0) {
      db.close();
      db = PersistedIndex<HnswlibIndex>::load(cfg);
    }
  }
}

// The index used directly refuses metadata a snapshot's reader refuses (not
// UTF-8), as the flat index does: it would be saved and then fail to load.
TEST(HnswlibAdapter, TheIndexItselfRefusesMetadataThatIsNotUtf8) {
  HnswlibIndex ix = build(DistanceMetric::Euclidean, 5, 3).index;
  const std::uint64_t size = ix.size();
  const std::vector<float> v(kDim, 0.25f);
  EXPECT_EQ(error_of([&] { ix.insert(77, v, Metadata{{"\xc0\xaf", Value(1)}}); }), ErrorKind::InvalidArgument);
  EXPECT_EQ(error_of([&] { ix.insert(77, v, Metadata{{"k", Value(std::string("a\x80"))}}); }),
            ErrorKind::InvalidArgument);
  EXPECT_EQ(ix.size(), size);
  EXPECT_FALSE(ix.contains(77));
}

TEST(HnswlibAdapter, GrowsPastItsCapacity) {
  HnswlibIndex ix(kDim, DistanceMetric::Euclidean, HnswlibParams{4, 16, 16, 1, 1});
  const std::vector<float> x = gaussian(300, kDim, 10);
  for (std::size_t i = 0; i < 300; ++i) ix.insert(i, row(x, i));
  EXPECT_EQ(ix.size(), 300u);
  EXPECT_GE(ix.graph().max_elements_, 300u);
  for (std::size_t i = 0; i < 300; i += 37) EXPECT_EQ(ix.search(row(x, i), 1).at(0).id, i);
}

// ---------------------------------------------------------------- hnswlib's own API and files

TEST(HnswlibAdapter, AdoptsAGraphBuiltWithHnswlibAndAgreesWithItsOwnFiles) {
  TempDir dir;
  const std::vector<float> x = gaussian(300, kDim, 11);
  auto space = std::make_unique<hnswlib::L2Space>(kDim);
  auto graph = std::make_unique<Graph>(space.get(), 300, 8, 50, 42);
  for (std::size_t i = 0; i < 300; ++i) graph->addPoint(x.data() + i * kDim, 100 + i);
  graph->markDelete(105);
  graph->setEf(40);
  const std::string native = (dir / "native.bin").string();
  graph->saveIndex(native);

  HnswlibIndex adopted(std::move(space), std::move(graph));
  EXPECT_EQ(adopted.size(), 299u);
  EXPECT_FALSE(adopted.contains(105));
  const PersistConfig cfg = config_for(dir / "a.iqdb", false);
  auto db = PersistedIndex<HnswlibIndex>::open_with(std::move(adopted), cfg);
  db.save();
  auto loaded = PersistedIndex<HnswlibIndex>::load(cfg);
  expect_same_index(loaded.index(), db.index());

  hnswlib::L2Space native_space(kDim);
  Graph from_native(&native_space, native);
  from_native.setEf(40);  // hnswlib's loader resets ef to 10
  const std::vector<float> q = gaussian(20, kDim, 12);
  for (std::size_t i = 0; i < 20; ++i) {
    auto pq = from_native.searchKnn(q.data() + i * kDim, 10);
    std::vector<HnswlibIndex::Hit> want(pq.size());
    for (std::size_t j = want.size(); j-- > 0; pq.pop()) want[j] = {pq.top().second, pq.top().first};
    EXPECT_EQ(loaded.index().search(row(q, i), 10), want);
  }
}

TEST(HnswlibAdapter, AdoptionChecksTheGraph) {
  auto space = std::make_unique<hnswlib::L2Space>(kDim);
  auto graph = std::make_unique<Graph>(space.get(), 10, 4, 16, 1);
  const std::vector<float> x = gaussian(3, kDim, 13);
  for (std::size_t i = 0; i < 3; ++i) graph->addPoint(x.data() + i * kDim, i);
  // Corrupt a level-0 link in memory.
  auto* l0 = graph->get_linklist0(0);
  reinterpret_cast<hnswlib::tableint*>(l0 + 1)[0] = 9;
  EXPECT_EQ(error_of([&] { HnswlibIndex ix(std::move(space), std::move(graph)); }), ErrorKind::InvalidArgument);
  EXPECT_EQ(error_of([] { HnswlibIndex ix(kDim, DistanceMetric::Manhattan); }), ErrorKind::Unsupported);
  EXPECT_EQ(error_of([] { HnswlibIndex ix(kDim, DistanceMetric::Euclidean, HnswlibParams{1}); }),
            ErrorKind::InvalidArgument);
  EXPECT_EQ(error_of([] { HnswlibIndex ix(0, DistanceMetric::Euclidean); }), ErrorKind::InvalidArgument);
}

// A search or construction list size above what a load accepts (2^31) was
// taken: the inserts were acknowledged and every later load refused the
// snapshot ("ef ... is out of range"), so the writes were lost. The
// constructor refuses such parameters; set_ef takes 2^31 for more, and the
// index saves and loads.
TEST(HnswlibAdapter, ParametersALoadWouldRefuseAreNeverTaken) {
  constexpr std::size_t kTooMany = (std::size_t{1} << 31) + 1;
  EXPECT_EQ(error_of([] { HnswlibIndex ix(kDim, DistanceMetric::Euclidean, HnswlibParams{.ef = kTooMany}); }),
            ErrorKind::InvalidArgument);
  EXPECT_EQ(
      error_of([] { HnswlibIndex ix(kDim, DistanceMetric::Euclidean, HnswlibParams{.ef_construction = kTooMany}); }),
      ErrorKind::InvalidArgument);
  TempDir dir;
  const PersistConfig cfg = config_for(dir / "h.iqdb", true);
  const std::vector<float> x = gaussian(5, kDim, 21);
  {
    auto db = PersistedIndex<HnswlibIndex>::open_with(
        HnswlibIndex(kDim, DistanceMetric::Euclidean, HnswlibParams{.ef = std::size_t{1} << 31}), cfg);
    for (std::uint64_t i = 0; i < 5; ++i) db.insert(i + 1, std::span<const float>(x.data() + i * kDim, kDim));
    db.checkpoint();
  }
  {
    auto db = PersistedIndex<HnswlibIndex>::load(cfg);
    EXPECT_EQ(db.index().size(), 5u);
    db.index_mut().set_ef(std::numeric_limits<std::size_t>::max());
    db.checkpoint();
  }
  EXPECT_EQ(PersistedIndex<HnswlibIndex>::load(cfg).index().size(), 5u);
}

// Finding hnswlib-empty-capacity (fuzz target hnswlib_crc): the loader built
// its graph with room for at least 16 elements, so a 216-byte snapshot of an
// empty graph of dimension 3.9 million made it allocate 247 MB. A loaded
// graph now has room for exactly its elements; it grows on insert.
TEST(HnswlibAdapterPayload, AnEmptyGraphOfALargeDimensionAllocatesNoElement) {
  constexpr std::uint64_t kBigDim = std::uint64_t{1} << 22;
  HnswlibIndex empty(kBigDim, DistanceMetric::Euclidean, HnswlibParams{.M = 2});
  BufferWriter w;
  empty.save_to(w);
  BufferReader r(w.bytes);
  const HnswlibIndex loaded = HnswlibIndex::load_from(r);
  EXPECT_EQ(loaded.graph().max_elements_, 0u);
  EXPECT_EQ(loaded.dim(), kBigDim);
  // Loaded graphs hold exactly their elements, and still take inserts.
  HnswlibIndex small(kDim, DistanceMetric::Euclidean, HnswlibParams{.M = 4});
  const std::vector<float> x = gaussian(3, kDim, 13);
  for (std::uint64_t i = 0; i < 3; ++i) small.insert(i, row(x, i));
  BufferWriter w2;
  small.save_to(w2);
  BufferReader r2(w2.bytes);
  HnswlibIndex again = HnswlibIndex::load_from(r2);
  EXPECT_EQ(again.graph().max_elements_, 3u);
  again.insert(9, row(x, 0));
  EXPECT_EQ(again.size(), 4u);
  EXPECT_EQ(again.search(row(x, 0), 1).at(0).distance, 0.0f);
}

// hnswlib throws std::runtime_error; none reaches the adapter's caller. The
// graph's capacity is lowered behind the adapter's back (through a pointer
// kept from before it was adopted), so that addPoint throws "The number of
// elements exceeds the specified limit": the insert fails with PersistError
// (Poisoned: the adapter cannot tell how far addPoint got), and so does
// every later call, instead of running on a graph in an unknown state.
TEST(HnswlibAdapter, HnswlibExceptionsReachTheCallerAsPersistError) {
  const std::vector<float> x = gaussian(20, kDim, 12);
  auto space = std::make_unique<hnswlib::L2Space>(kDim);
  auto graph = std::make_unique<Graph>(space.get(), 32, 8, 50, 42);
  for (std::size_t i = 0; i < 20; ++i) graph->addPoint(x.data() + i * kDim, 100 + i);
  Graph* raw = graph.get();
  HnswlibIndex ix(std::move(space), std::move(graph));
  raw->max_elements_ = 10;  // below the 20 elements it holds
  const std::vector<float> v = row(x, 3, kDim);
  try {
    ix.insert(7, v);
    ADD_FAILURE() << "accepted";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Poisoned) << e.what();
    EXPECT_NE(std::string(e.what()).find("exceeds"), std::string::npos) << e.what();
  }
  raw->max_elements_ = 32;
  EXPECT_EQ(error_of([&] { ix.insert(8, v); }), ErrorKind::Poisoned);
  EXPECT_EQ(error_of([&] { (void)ix.search(v, 3); }), ErrorKind::Poisoned);
  EXPECT_EQ(error_of([&] { ix.erase(100); }), ErrorKind::Poisoned);
}

// The seeds of the hnswlib_crc fuzz target (fuzz/corpus/hnswlib_crc) and any
// regressions, through the target's harness and oracles, in every test run.
TEST(HnswlibAdapterFuzzCorpus, SeedsAndRegressionsReplayThroughTheFuzzTarget) {
  const fs::path fuzz_dir = fs::path(__FILE__).parent_path().parent_path().parent_path() / "fuzz";
  std::size_t replayed = 0;
  for (const char* kind : {"corpus", "regressions"}) {
    const fs::path dir = fuzz_dir / kind / "hnswlib_crc";
    if (!fs::is_directory(dir)) continue;
    for (const auto& e : fs::directory_iterator(dir)) {
      std::ifstream in(e.path(), std::ios::binary);
      const std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      SCOPED_TRACE(e.path().filename().string());
      fuzz::run_hnswlib_crc(bytes);
      ++replayed;
    }
  }
  EXPECT_GE(replayed, 3u) << "the committed corpus is missing";
}

}  // namespace
}  // namespace iqdb::persist
