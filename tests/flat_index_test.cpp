// FlatIndex against an independent model: a RapidCheck state-machine test
// (inserts, erases, searches, copies, rejected calls) checked after every
// step against std::map + a brute-force search written here, plus distances
// on hand-computed values.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>
#include <rapidcheck/state.h>

#include <algorithm>
#include <cmath>
#include <iqdb/persist.hpp>
#include <limits>
#include <map>
#include <optional>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "index/flat_index_internals.hpp"
#include "support/test_util.hpp"

namespace iqdb::persist {

// How RapidCheck prints generated values in counterexamples.
void showValue(const VectorId& id, std::ostream& os) { os << (id.is_u64() ? "u64:" : "bytes:") << id.to_string(); }
void showValue(const Value& v, std::ostream& os) {
  switch (v.kind()) {
    case Value::Kind::String:
      os << '"' << v.as_string() << '"';
      break;
    case Value::Kind::Int:
      os << v.as_int();
      break;
    case Value::Kind::Float:
      os << v.as_float() << 'd';
      break;
    case Value::Kind::Bool:
      os << (v.as_bool() ? "true" : "false");
      break;
    case Value::Kind::Null:
      os << "null";
      break;
  }
}

namespace {

const std::vector<DistanceMetric> kMetrics = {DistanceMetric::Cosine, DistanceMetric::DotProduct,
                                              DistanceMetric::Euclidean, DistanceMetric::Manhattan,
                                              DistanceMetric::Hamming};

// ---------------------------------------------------------------- reference distances

// Straightforward double-precision distances, written from the contract in
// flat_index.hpp (smaller is closer).
double model_distance(DistanceMetric metric, const std::vector<float>& a, const std::vector<float>& b) {
  double dot = 0, na = 0, nb = 0, sq = 0, abs_sum = 0, differ = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double x = a[i], y = b[i];
    dot += x * y;
    na += x * x;
    nb += y * y;
    sq += (x - y) * (x - y);
    abs_sum += std::fabs(x - y);
    differ += a[i] != b[i] ? 1 : 0;
  }
  switch (metric) {
    case DistanceMetric::Cosine:
      return na == 0 || nb == 0 ? 1.0 : 1.0 - dot / (std::sqrt(na) * std::sqrt(nb));
    case DistanceMetric::DotProduct:
      return -dot;
    case DistanceMetric::Euclidean:
      return std::sqrt(sq);
    case DistanceMetric::Manhattan:
      return abs_sum;
    case DistanceMetric::Hamming:
      return differ;
  }
  return 0;
}

// FlatIndex accumulates in float: allow for its rounding.
double tolerance(double d) { return 1e-3 + 1e-4 * std::fabs(d); }

// ---------------------------------------------------------------- model

struct Entry {
  std::vector<float> vec;
  std::optional<Metadata> meta;
};

struct Model {
  std::uint64_t dim = 1;
  DistanceMetric metric = DistanceMetric::Euclidean;
  std::map<VectorId, Entry> entries;
  // Storage order as documented: insert appends a row; erase moves the last
  // row into the erased one.
  std::vector<VectorId> order;

  bool has(const VectorId& id) const { return entries.count(id) != 0; }
  void insert(const VectorId& id, std::vector<float> vec, std::optional<Metadata> meta) {
    entries.emplace(id, Entry{std::move(vec), std::move(meta)});
    order.push_back(id);
  }
  void erase(const VectorId& id) {
    entries.erase(id);
    auto it = std::find(order.begin(), order.end(), id);
    *it = order.back();
    order.pop_back();
  }
  std::size_t row_of(const VectorId& id) const {
    return static_cast<std::size_t>(std::find(order.begin(), order.end(), id) - order.begin());
  }
};

// Every id a generated command can use (so probing them all covers the index).
std::vector<VectorId> id_pool() {
  std::vector<VectorId> ids;
  for (std::uint64_t i = 0; i < 24; ++i) ids.emplace_back(i);
  ids.emplace_back(std::numeric_limits<std::uint64_t>::max());
  ids.emplace_back(std::uint64_t{1} << 63);
  const std::string alphabet("a\0\xff", 3);
  for (char c : alphabet) {
    ids.push_back(VectorId::bytes(std::string(1, c)));
    for (char d : alphabet) ids.push_back(VectorId::bytes(std::string{c, d}));
  }
  return ids;
}

const std::vector<VectorId>& pool() {
  static const std::vector<VectorId> ids = id_pool();
  return ids;
}

// ---------------------------------------------------------------- generators

rc::Gen<VectorId> gen_id() { return rc::gen::elementOf(pool()); }

// Half-integers in [-4, 4]: products and sums stay exact in float for small
// dims, and ties (equal distances) are common enough to exercise tie order.
rc::Gen<std::vector<float>> gen_vector(std::uint64_t dim) {
  return rc::gen::container<std::vector<float>>(
      static_cast<std::size_t>(dim),
      rc::gen::map(rc::gen::inRange(-8, 9), [](int i) { return static_cast<float>(i) / 2.0f; }));
}

rc::Gen<Value> gen_value() {
  return rc::gen::oneOf(rc::gen::map(rc::gen::container<std::string>(rc::gen::character<char>()),
                                     [](const std::string& s) { return Value(test::latin1_to_utf8(s)); }),
                        rc::gen::map(rc::gen::arbitrary<std::int64_t>(), [](std::int64_t i) { return Value(i); }),
                        rc::gen::map(rc::gen::arbitrary<double>(), [](double d) { return Value(d); }),
                        rc::gen::map(rc::gen::arbitrary<bool>(), [](bool b) { return Value(b); }),
                        rc::gen::just(Value()));
}

rc::Gen<std::optional<Metadata>> gen_meta() {
  return rc::gen::oneOf(rc::gen::just(std::optional<Metadata>()),
                        rc::gen::map(rc::gen::container<Metadata>(
                                         rc::gen::container<std::string>(rc::gen::inRange('a', 'e')), gen_value()),
                                     [](Metadata m) { return std::optional<Metadata>(std::move(m)); }));
}

// ---------------------------------------------------------------- checks

template <class F>
void expect_error(ErrorKind kind, F&& f) {
  try {
    f();
  } catch (const PersistError& e) {
    RC_ASSERT(e.kind() == kind);
    return;
  }
  RC_FAIL("expected PersistError " + std::string(to_string(kind)));
}

bool same_floats(std::span<const float> a, const std::vector<float>& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

// The index holds exactly what the model holds.
void check_state(const Model& m, const FlatIndex& index) {
  RC_ASSERT(index.dim() == m.dim);
  RC_ASSERT(index.metric() == m.metric);
  RC_ASSERT(index.size() == m.entries.size());
  for (std::size_t row = 0; row < m.order.size(); ++row) {
    RC_ASSERT(index.id_at(row) == m.order[row]);
    const Entry& e = m.entries.at(m.order[row]);
    RC_ASSERT(same_floats(index.vector_at(row), e.vec));
    RC_ASSERT((index.metadata_at(row) != nullptr) == e.meta.has_value());
  }
  for (const VectorId& id : pool()) {
    const auto it = m.entries.find(id);
    if (it == m.entries.end()) {
      RC_ASSERT(!index.contains(id));
      RC_ASSERT(index.get(id).empty());
      RC_ASSERT(index.metadata(id) == nullptr);
      continue;
    }
    RC_ASSERT(index.contains(id));
    RC_ASSERT(same_floats(index.get(id), it->second.vec));
    const Metadata* meta = index.metadata(id);
    RC_ASSERT((meta != nullptr) == it->second.meta.has_value());
    if (meta != nullptr) RC_ASSERT(*meta == *it->second.meta);
  }
}

// search(q, k) returns the k nearest by the model: distances within
// tolerance, closest first, ties in storage order, and the same id set
// wherever the k-th distance does not tie.
void check_search(const Model& m, const FlatIndex& index, const std::vector<float>& q, std::size_t k) {
  const std::vector<SearchHit> hits = index.search(q, k);
  std::vector<std::pair<double, VectorId>> all;
  for (const auto& [id, e] : m.entries) all.emplace_back(model_distance(m.metric, q, e.vec), id);
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first < b.first; });

  RC_ASSERT(hits.size() == std::min(k, all.size()));
  std::set<VectorId> returned;
  for (std::size_t i = 0; i < hits.size(); ++i) {
    const SearchHit& h = hits[i];
    RC_ASSERT(m.has(h.id));
    RC_ASSERT(returned.insert(h.id).second);  // no id twice
    const double expect = model_distance(m.metric, q, m.entries.at(h.id).vec);
    RC_ASSERT(std::fabs(static_cast<double>(h.distance) - expect) <= tolerance(expect));
    if (i > 0) {
      RC_ASSERT(hits[i - 1].distance <= h.distance);
      if (hits[i - 1].distance == h.distance) RC_ASSERT(m.row_of(hits[i - 1].id) < m.row_of(h.id));
    }
  }
  if (hits.empty()) return;
  const double kth = all[hits.size() - 1].first;
  for (const auto& [d, id] : all) {
    if (d < kth - tolerance(kth)) RC_ASSERT(returned.count(id) == 1u);  // strictly nearer: must be there
  }
  for (const VectorId& id : returned) {
    const double d = model_distance(m.metric, q, m.entries.at(id).vec);
    RC_ASSERT(d <= kth + tolerance(kth));  // nothing farther than the k-th nearest
  }
}

// ---------------------------------------------------------------- commands

using Command = rc::state::Command<Model, FlatIndex>;

struct Insert : Command {
  VectorId id;
  std::vector<float> vec;
  std::optional<Metadata> meta;

  explicit Insert(const Model& m) : id(*gen_id()), vec(*gen_vector(m.dim)), meta(*gen_meta()) {}

  void apply(Model& m) const override {
    if (!m.has(id)) m.insert(id, vec, meta);
  }
  void run(const Model& m, FlatIndex& index) const override {
    if (m.has(id)) {
      expect_error(ErrorKind::DuplicateId, [&] { index.insert(id, vec, meta); });
    } else {
      index.insert(id, vec, meta);
    }
    check_state(nextState(m), index);
  }
  void show(std::ostream& os) const override {
    os << "insert ";
    showValue(id, os);
    os << (meta ? " with metadata" : "");
  }
};

struct Erase : Command {
  VectorId id;

  explicit Erase(const Model& m) : id(pick(m)) {}
  static VectorId pick(const Model& m) {
    if (!m.order.empty() && *rc::gen::inRange(0, 4) != 0) return *rc::gen::elementOf(m.order);
    return *gen_id();  // usually absent
  }

  void apply(Model& m) const override {
    if (m.has(id)) m.erase(id);
  }
  void run(const Model& m, FlatIndex& index) const override {
    if (m.has(id)) {
      index.erase(id);
    } else {
      expect_error(ErrorKind::IdNotFound, [&] { index.erase(id); });
    }
    check_state(nextState(m), index);
  }
  void show(std::ostream& os) const override {
    os << "erase ";
    showValue(id, os);
  }
};

// Calls the index rejects; each must leave it unchanged.
struct WrongDimension : Command {
  VectorId id;
  std::vector<float> vec;

  explicit WrongDimension(const Model& m) : id(*gen_id()) {
    const auto d =
        *rc::gen::suchThat(rc::gen::inRange<std::uint64_t>(0, m.dim + 3), [&](std::uint64_t x) { return x != m.dim; });
    vec = *gen_vector(d);
  }
  void checkPreconditions(const Model& m) const override { RC_PRE(!m.has(id)); }
  void run(const Model& m, FlatIndex& index) const override {
    expect_error(ErrorKind::InvalidArgument, [&] { index.insert(id, vec); });
    expect_error(ErrorKind::InvalidArgument, [&] { (void)index.search(vec, 3); });
    check_state(m, index);
  }
  void show(std::ostream& os) const override { os << "wrong dimension " << vec.size(); }
};

struct Search : Command {
  std::vector<float> query;
  std::size_t k;

  explicit Search(const Model& m)
      : query(m.order.empty() || *rc::gen::arbitrary<bool>() ? *gen_vector(m.dim)
                                                             : m.entries.at(*rc::gen::elementOf(m.order)).vec),
        k(*rc::gen::inRange<std::size_t>(0, m.entries.size() + 3)) {}

  void run(const Model& m, FlatIndex& index) const override {
    check_search(m, index, query, k);
    check_state(m, index);
  }
  void show(std::ostream& os) const override { os << "search k=" << k; }
};

// Copies (construction and assignment) are deep: changing a copy leaves the
// original alone, and the copy behaves like the original.
struct Copy : Command {
  void run(const Model& m, FlatIndex& index) const override {
    FlatIndex copy(index);
    check_state(m, copy);
    FlatIndex assigned(1, DistanceMetric::Hamming);
    assigned = index;
    check_state(m, assigned);

    Model changed = m;
    for (const VectorId& id : pool()) {
      if (changed.has(id)) {
        changed.erase(id);
        copy.erase(id);
        assigned.erase(id);
        break;
      }
    }
    for (const VectorId& id : pool()) {
      if (!changed.has(id)) {
        const std::vector<float> v(static_cast<std::size_t>(m.dim), 0.5f);
        changed.insert(id, v, Metadata{{"copy", Value(true)}});
        copy.insert(id, v, Metadata{{"copy", Value(true)}});
        assigned.insert(id, v, Metadata{{"copy", Value(true)}});
        break;
      }
    }
    check_state(changed, copy);
    check_state(changed, assigned);
    check_state(m, index);
  }
  void show(std::ostream& os) const override { os << "copy"; }
};

RC_GTEST_PROP(FlatIndexModel, BehavesLikeMapWithBruteForceSearch, ()) {
  Model m;
  m.dim = *rc::gen::inRange<std::uint64_t>(1, 9);
  m.metric = *rc::gen::elementOf(kMetrics);
  FlatIndex index(m.dim, m.metric);
  rc::state::check(
      m, index,
      rc::state::gen::execOneOfWithArgs<Insert, Insert, Insert, Erase, Erase, WrongDimension, Search, Search, Copy>());
}

// ---------------------------------------------------------------- larger churn

// Many ids through the hash table (growth, backward-shift deletion over long
// clusters), checked against a map.
TEST(FlatIndex, ChurnAgainstMap) {
  std::mt19937_64 rng(12345);
  FlatIndex index(2, DistanceMetric::Euclidean);
  std::map<VectorId, float> model;
  for (int step = 0; step < 20000; ++step) {
    const std::uint64_t raw = rng() % 3000;
    const VectorId id = raw % 5 == 0 ? VectorId::bytes("id" + std::to_string(raw)) : VectorId(raw);
    if (rng() % 3 != 0) {
      const float f = static_cast<float>(step);
      if (model.count(id) != 0) {
        EXPECT_THROW(index.insert(id, std::vector<float>{f, -f}), PersistError);
      } else {
        index.insert(id, std::vector<float>{f, -f});
        model[id] = f;
      }
    } else if (model.count(id) != 0) {
      index.erase(id);
      model.erase(id);
    }
  }
  ASSERT_EQ(index.size(), model.size());
  for (std::uint64_t raw = 0; raw < 3000; ++raw) {
    const VectorId id = raw % 5 == 0 ? VectorId::bytes("id" + std::to_string(raw)) : VectorId(raw);
    const auto it = model.find(id);
    ASSERT_EQ(index.contains(id), it != model.end()) << id.to_string();
    if (it != model.end()) {
      const auto v = index.get(id);
      ASSERT_EQ(v.size(), 2u);
      EXPECT_EQ(v[0], it->second);
      EXPECT_EQ(v[1], -it->second);
    }
  }
}

// The per-row metadata array exists only once a row has metadata: an index
// that had none takes some (after a refused duplicate that carried some),
// erases move it with its row, reserve() calls (as a batch makes) come in
// between, and a copy and the index agree with a map of optional metadata.
TEST(FlatIndex, MetadataArrivingLateFollowsItsRows) {
  std::mt19937_64 rng(777);
  FlatIndex index(2, DistanceMetric::Euclidean);
  std::map<std::uint64_t, std::optional<Metadata>> model;
  for (std::uint64_t i = 0; i < 500; ++i) {
    index.insert(VectorId(i), std::vector<float>{1, 2});
    model[i] = std::nullopt;
  }
  EXPECT_THROW(index.insert(VectorId(3), std::vector<float>{1, 2}, Metadata{{"a", Value(1)}}), PersistError);
  EXPECT_EQ(index.metadata(VectorId(3)), nullptr);
  for (int step = 0; step < 4000; ++step) {
    const std::uint64_t id = rng() % 1500;
    if (step % 100 == 0) index.reserve(rng() % 64);
    if (model.count(id) != 0) {
      index.erase(VectorId(id));
      model.erase(id);
      continue;
    }
    std::optional<Metadata> meta;
    if (rng() % 2 == 0) meta = Metadata{{"id", Value(static_cast<std::int64_t>(id))}, {"step", Value(step)}};
    index.insert(VectorId(id), std::vector<float>{static_cast<float>(id), 0}, meta);
    model[id] = meta;
  }
  const FlatIndex copy = index;  // NOLINT(performance-unnecessary-copy-initialization): the copy is checked too
  for (const FlatIndex* x : {static_cast<const FlatIndex*>(&index), &copy}) {
    ASSERT_EQ(x->size(), model.size());
    for (std::uint64_t id = 0; id < 1500; ++id) {
      const auto it = model.find(id);
      const Metadata* got = x->metadata(VectorId(id));
      if (it == model.end() || !it->second) {
        ASSERT_EQ(got, nullptr) << id;
      } else {
        ASSERT_NE(got, nullptr) << id;
        EXPECT_EQ(*got, *it->second) << id;
      }
    }
  }
  EXPECT_TRUE(copy == index);
}

// Storage past 2 MiB lives in its own mapping that grows by remapping
// (detail::FloatBuffer): grow through the heap-to-mapping switch and several
// remaps (dim 512: 2 KiB per vector, 12 MiB in all), shrink by erasing, copy
// and move a mapped index, and check every vector against its own formula.
TEST(FlatIndex, LargeStorageGrowsCopiesAndMovesIntact) {
  constexpr std::uint64_t dim = 512, n = 6000;
  const auto value = [](std::uint64_t i, std::uint64_t j) { return static_cast<float>(i) * 1000.0f + static_cast<float>(j); };
  const auto check = [&](const FlatIndex& index, std::uint64_t from, std::uint64_t to) {
    ASSERT_EQ(index.size(), to - from);
    for (std::uint64_t i = from; i < to; ++i) {
      const auto v = index.get(VectorId(i));
      ASSERT_EQ(v.size(), dim) << i;
      for (std::uint64_t j = 0; j < dim; j += 37) ASSERT_EQ(v[j], value(i, j)) << i << "/" << j;
      ASSERT_EQ(v[dim - 1], value(i, dim - 1)) << i;
    }
  };
  FlatIndex index(dim, DistanceMetric::Euclidean);
  std::vector<float> v(dim);
  for (std::uint64_t i = 0; i < n; ++i) {
    for (std::uint64_t j = 0; j < dim; ++j) v[j] = value(i, j);
    index.insert(i, v);
  }
  check(index, 0, n);
  for (std::uint64_t i = 0; i < n / 2; ++i) index.erase(VectorId(i));
  check(index, n / 2, n);
  const FlatIndex copy = index;  // NOLINT(performance-unnecessary-copy-initialization): the copy is the test
  check(copy, n / 2, n);
  FlatIndex moved = std::move(index);
  check(moved, n / 2, n);
  for (std::uint64_t i = 0; i < n / 2; ++i) {
    for (std::uint64_t j = 0; j < dim; ++j) v[j] = value(i, j);
    moved.insert(i, v);
  }
  check(moved, 0, n);
  check(copy, n / 2, n);
  moved = copy;  // a mapped block replaced by a copy of another
  check(moved, n / 2, n);
  const auto hits = moved.search(std::vector<float>(v.begin(), v.end()), 1);
  ASSERT_EQ(hits.size(), 1u);
  EXPECT_EQ(hits[0].id, VectorId(n / 2));  // the nearest to vector n/2 - 1 among n/2 .. n-1
}

// Moved into itself (through a reference, as generic code may), an index
// keeps its contents: it used to lose its rows and keep its id table, and
// contains(), get() and erase() then read rows that were gone (SIGSEGV under
// ASan; an outside hunt).
TEST(FlatIndex, MovedIntoItselfKeepsItsContents) {
  FlatIndex index(4, DistanceMetric::Euclidean);
  for (std::uint64_t i = 0; i < 10; ++i) {
    index.insert(i, std::vector<float>{1, 2, 3, static_cast<float>(i)}, Metadata{{"i", Value(static_cast<std::int64_t>(i))}});
  }
  FlatIndex& same = index;
  index = std::move(same);
  ASSERT_EQ(index.size(), 10U);
  EXPECT_TRUE(index.contains(VectorId(std::uint64_t{3})));
  const auto got = index.get(VectorId(std::uint64_t{3}));
  EXPECT_EQ(std::vector<float>(got.begin(), got.end()), (std::vector<float>{1, 2, 3, 3}));
  ASSERT_NE(index.metadata(VectorId(std::uint64_t{3})), nullptr);
  index.erase(VectorId(std::uint64_t{3}));
  EXPECT_FALSE(index.contains(VectorId(std::uint64_t{3})));
  index.insert(3, std::vector<float>{0, 0, 0, 0});
  const auto hits = index.search(std::vector<float>{0, 0, 0, 0}, 1);
  ASSERT_EQ(hits.size(), 1U);
  EXPECT_EQ(hits[0].id, VectorId(std::uint64_t{3}));
}

// ---------------------------------------------------------------- errors

TEST(FlatIndex, RejectsBadConstruction) {
  const auto kind_of = [](auto f) -> std::optional<ErrorKind> {
    try {
      f();
    } catch (const PersistError& e) {
      return e.kind();
    }
    return std::nullopt;
  };
  EXPECT_EQ(kind_of([] { FlatIndex(0, DistanceMetric::Cosine); }), ErrorKind::InvalidArgument);
  EXPECT_EQ(kind_of([] { FlatIndex(3, static_cast<DistanceMetric>(5)); }), ErrorKind::InvalidArgument);
  EXPECT_EQ(kind_of([] { VectorId::bytes(""); }), ErrorKind::InvalidArgument);
  // What a snapshot's reader refuses is refused here: a byte id over 1 MiB,
  // a dimension whose vector bytes, doubled, overflow a u64 (both used to be
  // accepted, saved, and then refused by load).
  EXPECT_EQ(kind_of([] { VectorId::bytes(std::string((1u << 20) + 1, 'x')); }), ErrorKind::InvalidArgument);
  EXPECT_EQ(VectorId::bytes(std::string(1u << 20, 'x')).as_bytes().size(), 1u << 20);
  EXPECT_EQ(kind_of([] { FlatIndex(std::uint64_t{1} << 62, DistanceMetric::Cosine); }), ErrorKind::InvalidArgument);
  EXPECT_EQ(kind_of([] { FlatIndex((UINT64_MAX - 1) / 8 + 1, DistanceMetric::Cosine); }), ErrorKind::InvalidArgument);
  EXPECT_EQ(FlatIndex((UINT64_MAX - 1) / 8, DistanceMetric::Cosine).dim(), (UINT64_MAX - 1) / 8);
}

// A byte id of 1 MiB, the most a reader takes, saves and loads.
TEST(FlatIndex, TheLongestByteIdRoundTrips) {
  FlatIndex index(2, DistanceMetric::Euclidean);
  const VectorId id = VectorId::bytes(std::string(kMaxIdBytes, 'i'));
  index.insert(id, std::vector<float>{1.0f, 2.0f});
  test::TempDir dir;
  const PersistConfig cfg(dir / "ids.iqdb");
  PersistedIndex<FlatIndex>::open_with(std::move(index), cfg).save();
  const auto back = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_TRUE(back.index().contains(id));
  EXPECT_EQ(back.index().size(), 1u);
}

// The id whose (unkeyed) VectorId::hash is h: splitmix64's finaliser inverted.
std::uint64_t unhash(std::uint64_t h) {
  const auto inverse = [](std::uint64_t a) {  // a * x = 1 mod 2^64 (Newton; a odd)
    std::uint64_t x = a;
    for (int i = 0; i < 6; ++i) x *= 2 - a * x;
    return x;
  };
  const auto unshift = [](std::uint64_t y, int s) {  // x with x ^ (x >> s) = y
    std::uint64_t x = y;
    for (int i = 0; i <= 64 / s; ++i) x = y ^ (x >> s);
    return x;
  };
  std::uint64_t x = unshift(h, 31) * inverse(0x94d049bb133111ebULL);
  x = unshift(x, 27) * inverse(0xbf58476d1ce4e5b9ULL);
  return unshift(x, 30) - 0x9e3779b97f4a7c15ULL;
}

// Hash flooding: the id table hashed ids with VectorId::hash, unkeyed, so a
// file could hold ids that all start their probe in slot 0 (hash (k+1) << 40)
// and make its load quadratic (64k ids, a 750 KiB snapshot: 40 s instead of
// 15 ms). Keyed per table, they spread: the load equals the model, and the
// lookups of all ids pass about 1.5 slots each (FlatIndexInternals; the
// unkeyed table needed 2^31 in all).
TEST(FlatIndex, IdsCraftedToCollideUnderTheUnkeyedHashLoadInLinearProbes) {
  constexpr std::uint64_t kIds = std::uint64_t{1} << 16;
  std::map<std::uint64_t, std::vector<float>> model;
  FlatIndex index(2, DistanceMetric::Euclidean);
  for (std::uint64_t k = 0; k < kIds; ++k) {
    const std::uint64_t id = unhash((k + 1) << 40);
    ASSERT_EQ(VectorId(id).hash(), (k + 1) << 40);
    const std::vector<float> v{static_cast<float>(k), 0.5f};
    index.insert(id, v);
    model[id] = v;
  }
  test::TempDir dir;
  const PersistConfig cfg(dir / "flood.iqdb");
  PersistedIndex<FlatIndex>::open_with(std::move(index), cfg).save();
  const auto back = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_LE(detail::FlatIndexInternals::id_table_probes(back.index()), 3 * kIds);
  ASSERT_EQ(back.index().size(), model.size());
  for (const auto& [id, v] : model) {
    const std::span<const float> got = back.index().get(id);
    ASSERT_EQ(std::vector<float>(got.begin(), got.end()), v) << id;
  }
}

TEST(FlatIndex, FailedCallsChangeNothing) {
  FlatIndex index(3, DistanceMetric::Euclidean);
  index.insert(1, std::vector<float>{1, 2, 3}, Metadata{{"a", Value(1)}});
  index.insert(VectorId::bytes("x"), std::vector<float>{4, 5, 6});
  const FlatIndex before = index;

  struct Case {
    const char* name;
    ErrorKind kind;
    std::function<void()> call;
  };
  const std::vector<Case> cases = {
      {"duplicate u64", ErrorKind::DuplicateId,
       [&] {
         index.insert(1, std::vector<float>{0, 0, 0});
       }},
      {"duplicate bytes", ErrorKind::DuplicateId,
       [&] {
         index.insert(VectorId::bytes("x"), std::vector<float>{0, 0, 0}, Metadata{});
       }},
      {"erase missing", ErrorKind::IdNotFound, [&] { index.erase(2); }},
      {"erase missing bytes", ErrorKind::IdNotFound, [&] { index.erase(VectorId::bytes("y")); }},
      {"short vector", ErrorKind::InvalidArgument,
       [&] {
         index.insert(7, std::vector<float>{1, 2});
       }},
      {"long vector", ErrorKind::InvalidArgument,
       [&] {
         index.insert(7, std::vector<float>{1, 2, 3, 4});
       }},
      {"empty vector", ErrorKind::InvalidArgument, [&] { index.insert(7, std::span<const float>()); }},
      {"short query", ErrorKind::InvalidArgument, [&] { (void)index.search(std::vector<float>{1}, 1); }},
  };
  for (const Case& c : cases) {
    try {
      c.call();
      ADD_FAILURE() << c.name << ": no error";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), c.kind) << c.name << ": " << e.what();
    }
    EXPECT_TRUE(index == before) << c.name;
    EXPECT_EQ(index.size(), 2u) << c.name;
    EXPECT_FALSE(index.contains(7)) << c.name;
    ASSERT_NE(index.metadata(1), nullptr) << c.name;
    EXPECT_EQ(index.metadata(1)->at("a"), Value(1)) << c.name;
  }
}

// ---------------------------------------------------------------- distance

TEST(FlatIndex, DistanceKnownValues) {
  struct Case {
    DistanceMetric metric;
    std::vector<float> a, b;
    double want;  // computed by hand
  };
  const std::vector<Case> cases = {
      // Cosine: 1 - a.b / (|a||b|)
      {DistanceMetric::Cosine, {1, 0}, {0, 1}, 1.0},
      {DistanceMetric::Cosine, {1, 0}, {1, 1}, 0.29289321881},  // 1 - 1/sqrt(2)
      {DistanceMetric::Cosine, {3, 4}, {6, 8}, 0.0},
      {DistanceMetric::Cosine, {1, 2}, {-1, -2}, 2.0},
      {DistanceMetric::Cosine, {1, 2, 3}, {4, 5, 6}, 0.02536815},  // 1 - 32/sqrt(14*77)
      {DistanceMetric::Cosine, {0, 0, 0}, {1, 2, 3}, 1.0},         // zero vector
      {DistanceMetric::Cosine, {1, 2, 3}, {0, 0, 0}, 1.0},
      {DistanceMetric::Cosine, {0, 0}, {0, 0}, 1.0},
      // DotProduct: -(a.b)
      {DistanceMetric::DotProduct, {1, 2, 3}, {4, 5, 6}, -32.0},
      {DistanceMetric::DotProduct, {1, -1}, {1, 1}, 0.0},
      {DistanceMetric::DotProduct, {-2, 0.5}, {3, 4}, 4.0},
      // Euclidean
      {DistanceMetric::Euclidean, {0, 0}, {3, 4}, 5.0},
      {DistanceMetric::Euclidean, {1, 2, 3}, {4, 5, 6}, 5.19615242271},  // sqrt(27)
      {DistanceMetric::Euclidean, {1.5f}, {1.5f}, 0.0},
      // Manhattan
      {DistanceMetric::Manhattan, {1, -2, 3}, {-1, 2, 3}, 6.0},
      {DistanceMetric::Manhattan, {0.25f, 0}, {0, -0.5f}, 0.75},
      // Hamming: positions that differ
      {DistanceMetric::Hamming, {1, 2, 3, 4}, {1, 0, 3, 5}, 2.0},
      {DistanceMetric::Hamming, {1, 2}, {1, 2}, 0.0},
      {DistanceMetric::Hamming, {0.0f, 1}, {-0.0f, 1}, 0.0},  // -0 == +0
      {DistanceMetric::Hamming, {1, 2, 3}, {3, 2, 1}, 2.0},
  };
  for (const Case& c : cases) {
    EXPECT_NEAR(distance(c.metric, c.a, c.b), c.want, 1e-6) << to_string(c.metric) << " case " << (&c - cases.data());
  }
}

TEST(FlatIndex, SearchUsesTheIndexMetric) {
  // One index per metric over the same vectors; the nearest to q differs by metric.
  const std::vector<std::vector<float>> rows = {{10, 0}, {1, 1}, {0, 3}};
  const std::vector<float> q = {2, 0};
  struct Case {
    DistanceMetric metric;
    std::uint64_t nearest;
  };
  // Cosine: row 0 is parallel to q. Dot: -(20, 2, 0): row 0. Euclidean: |(8,0)|=8,
  // |(-1,1)|=1.41, |(-2,3)|=3.6: row 1. Manhattan: 8, 2, 5: row 1. Hamming: 2, 2, 2:
  // all tie, so the first stored (row 0).
  const std::vector<Case> cases = {{DistanceMetric::Cosine, 0},
                                   {DistanceMetric::DotProduct, 0},
                                   {DistanceMetric::Euclidean, 1},
                                   {DistanceMetric::Manhattan, 1},
                                   {DistanceMetric::Hamming, 0}};
  for (const Case& c : cases) {
    FlatIndex index(2, c.metric);
    for (std::uint64_t i = 0; i < rows.size(); ++i) index.insert(i, rows[i]);
    const auto hits = index.search(q, 1);
    ASSERT_EQ(hits.size(), 1u);
    EXPECT_EQ(hits[0].id, VectorId(c.nearest)) << to_string(c.metric);
  }
}

}  // namespace
}  // namespace iqdb::persist
