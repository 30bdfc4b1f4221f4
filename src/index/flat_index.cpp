// FlatIndex: exact search over contiguous storage, and its payload codec.
// Payload layout: docs/FORMAT.md, "flat payload".
#include "iqdb/persist/flat_index.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <future>
#include <new>
#include <system_error>

#include "iqdb/persist/error.hpp"
#include "index/flat_index_internals.hpp"
#include "util/keyed_hash.hpp"

namespace iqdb::persist {

namespace {
// Reserve room for `n` more elements, growing geometrically (an exact
// reserve per insert would copy the whole array every time).
template <class V>
void grow_for(V& v, std::size_t n) {
  if (v.capacity() - v.size() < n) v.reserve(std::max(v.size() + n, v.capacity() * 2));
}
}  // namespace

namespace detail {

// ---------------------------------------------------------------- row ids

void RowIds::reserve_more(std::size_t n, const VectorId& like) {
  if (!wide_ && !like.is_u64()) widen();
  if (wide_) {
    grow_for(any_, n);
  } else {
    grow_for(u64_, n);
  }
}

// Every id into VectorIds; allocates first, so a failure changes nothing.
void RowIds::widen() {
  std::vector<VectorId> all;
  all.reserve(std::max<std::size_t>(u64_.size() + 1, u64_.capacity()));
  for (const std::uint64_t v : u64_) all.emplace_back(v);
  any_.swap(all);
  U64s().swap(u64_);
  wide_ = true;
}

void RowIds::push_back(const VectorId& id) {
  if (wide_) {
    any_.push_back(id);
  } else {
    u64_.push_back(id.as_u64());
  }
}

void RowIds::pop_back() noexcept {
  if (wide_) {
    any_.pop_back();
  } else {
    u64_.pop_back();
  }
}

void RowIds::move_last_to(std::size_t row) noexcept {
  if (wide_) {
    any_[row] = std::move(any_.back());
  } else {
    u64_[row] = u64_.back();
  }
}

void RowIds::assign(U64s ids) noexcept {
  u64_ = std::move(ids);
  any_.clear();
  wide_ = false;
}

bool operator==(const RowIds& a, const RowIds& b) {
  if (!a.wide_ && !b.wide_) return a.u64_ == b.u64_;
  if (a.size() != b.size()) return false;
  for (std::size_t r = 0; r < a.size(); ++r) {
    if (!(a.at(r) == b.at(r))) return false;
  }
  return true;
}

}  // namespace detail

// ---------------------------------------------------------------- distances

float distance(DistanceMetric metric, std::span<const float> a, std::span<const float> b) noexcept {
  const std::size_t n = std::min(a.size(), b.size());
  switch (metric) {
    case DistanceMetric::Cosine: {
      // In double: a float's square overflows from about 1.8e19 and
      // vanishes below about 1e-23, where the cosine itself is defined.
      double dot = 0, na = 0, nb = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const double x = a[i], y = b[i];
        dot += x * y;
        na += x * x;
        nb += y * y;
      }
      if (na == 0 || nb == 0) return 1.0f;
      return static_cast<float>(1.0 - dot / (std::sqrt(na) * std::sqrt(nb)));
    }
    case DistanceMetric::DotProduct: {
      float dot = 0;
      for (std::size_t i = 0; i < n; ++i) dot += a[i] * b[i];
      return -dot;
    }
    case DistanceMetric::Euclidean: {
      float s = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const float d = a[i] - b[i];
        s += d * d;
      }
      return std::sqrt(s);
    }
    case DistanceMetric::Manhattan: {
      float s = 0;
      for (std::size_t i = 0; i < n; ++i) s += std::fabs(a[i] - b[i]);
      return s;
    }
    case DistanceMetric::Hamming: {
      std::uint32_t c = 0;
      for (std::size_t i = 0; i < n; ++i) c += a[i] != b[i] ? 1u : 0u;
      return static_cast<float>(c);
    }
  }
  return 0;
}

// ---------------------------------------------------------------- id table

// Open addressing with linear probing. A slot holds row + 1 in its low 40
// bits (0 = empty) and the top 24 bits of the id's hash above them, so a probe
// that meets another id is rejected without touching the id array (one cache
// miss per lookup instead of two). Ids are compared through the index's id
// array. Deletion shifts the following cluster back (no tombstones). The
// hash is keyed, with a key drawn at random for each table
// (util/keyed_hash.hpp): the ids of a file cannot be chosen to share a probe
// run, which would make a load quadratic. Nothing depends on where an id
// lands: the slots are never saved or iterated in order.
class FlatIndex::IdTable {
 public:
  static constexpr std::size_t npos = ~std::size_t{0};
  static constexpr std::uint64_t kRowMask = (std::uint64_t{1} << 40) - 1;

  explicit IdTable(std::size_t expected = 0)
      : slots_(capacity_for(expected), 0), mask_(capacity_for(expected) - 1) {}

  std::size_t find(const VectorId& id, const detail::RowIds& ids) const noexcept {
    const std::size_t i = probe(hash(id), [&](std::size_t r) { return ids.equals(r, id); });
    return slots_[i] == 0 ? npos : i;
  }
  // The slot of the id of `row` (present).
  std::size_t find_row(std::size_t row, const detail::RowIds& ids) const noexcept {
    return probe(hash(ids, row), [&](std::size_t r) { return ids.same(r, row); });
  }
  // The slots the lookups of every stored id pass, in all (n_ when each id
  // sits in its home slot).
  std::uint64_t probes(const detail::RowIds& ids) const noexcept {
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      if (slots_[i] != 0) total += ((i - (hash(ids, row(i)) & mask_)) & mask_) + 1;
    }
    return total;
  }
  std::uint64_t row(std::size_t slot) const noexcept { return (slots_[slot] & kRowMask) - 1; }
  void set_row(std::size_t slot, std::uint64_t row) noexcept { slots_[slot] = (slots_[slot] & ~kRowMask) | (row + 1); }

  // Room for n ids without growing (one rehash at most).
  void reserve(std::size_t n, const detail::RowIds& ids) {
    const std::size_t cap = capacity_for(n);
    if (cap > slots_.size()) rebuild(cap, ids);
  }

  // Insert `row` (whose id is ids[row]); returns false if the id is present.
  bool insert(std::uint64_t row, const detail::RowIds& ids) { return insert_hashed(row, hash(ids, row), ids); }

  // Insert rows [0, n) (a load); returns false at the first id present
  // twice. A table of a million ids is larger than the caches, so every
  // insert's first probe misses: the slots of the next kAhead rows are
  // prefetched while this one is placed, which takes a load's table from
  // about 55 to under 20 ns a row on the 2-core VM (docs/PERFORMANCE.md).
  bool insert_all(std::uint64_t n, const detail::RowIds& ids) {
    constexpr std::uint64_t kAhead = 16;
    std::array<std::size_t, kAhead> hashes{};
    const auto ahead = [&](std::uint64_t row) {
      const std::size_t h = hash(ids, row);
      hashes[row % kAhead] = h;
      __builtin_prefetch(&slots_[h & mask_], 1);
    };
    for (std::uint64_t row = 0; row < std::min(n, kAhead); ++row) ahead(row);
    for (std::uint64_t row = 0; row < n; ++row) {
      const std::size_t h = hashes[row % kAhead];
      if (row + kAhead < n) ahead(row + kAhead);
      if (!insert_hashed(row, h, ids)) return false;
    }
    return true;
  }

  void erase_slot(std::size_t i, const detail::RowIds& ids) noexcept {
    std::size_t j = i;
    for (;;) {
      j = (j + 1) & mask_;
      if (slots_[j] == 0) break;
      const std::size_t home = hash(ids, row(j)) & mask_;
      // Move slots_[j] into the hole at i unless its home lies cyclically in (i, j].
      const bool home_in_between = i <= j ? (i < home && home <= j) : (i < home || home <= j);
      if (!home_in_between) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i] = 0;
    --n_;
  }

 private:
  std::size_t hash(const VectorId& id) const noexcept {
    return static_cast<std::size_t>(id.is_u64() ? detail::keyed_hash(id.as_u64(), key_)
                                                : detail::keyed_hash(id.as_bytes(), key_));
  }
  std::size_t hash(const detail::RowIds& ids, std::size_t row) const noexcept {
    return ids.compact() ? static_cast<std::size_t>(detail::keyed_hash(ids.u64s()[row], key_)) : hash(ids.wide()[row]);
  }
  bool insert_hashed(std::uint64_t row, std::size_t h, const detail::RowIds& ids) {
    if ((n_ + 1) * 2 > slots_.size()) rebuild(slots_.size() * 2, ids);
    const std::size_t i = probe(h, [&](std::size_t r) { return ids.same(r, row); });
    if (slots_[i] != 0) return false;
    slots_[i] = tag_of(h) | (row + 1);
    ++n_;
    return true;
  }
  static std::uint64_t tag_of(std::size_t h) noexcept { return (static_cast<std::uint64_t>(h) >> 40) << 40; }
  static std::size_t capacity_for(std::size_t n) { return std::bit_ceil(std::max<std::size_t>(16, n * 2)); }
  // The slot of the row whose id same_id(row) accepts (an id whose hash is
  // h), or the empty slot that ends its probe sequence. A slot whose tag
  // differs is passed without touching the ids.
  template <class SameId>
  std::size_t probe(std::size_t h, SameId same_id) const noexcept {
    const std::uint64_t tag = tag_of(h);
    std::size_t i = h & mask_;
    for (; slots_[i] != 0; i = (i + 1) & mask_) {
      if ((slots_[i] & ~kRowMask) == tag && same_id((slots_[i] & kRowMask) - 1)) break;
    }
    return i;
  }
  // Into a table of `cap` slots. Allocates first: if that fails, the table
  // is as it was (FlatIndex::insert relies on it for its strong guarantee).
  void rebuild(std::size_t cap, const detail::RowIds& ids) {
    decltype(slots_) fresh(cap, 0);
    const std::size_t mask = cap - 1;
    for (const std::uint64_t s : slots_) {
      if (s == 0) continue;
      std::size_t i = hash(ids, (s & kRowMask) - 1) & mask;
      while (fresh[i] != 0) i = (i + 1) & mask;
      fresh[i] = s;
    }
    slots_.swap(fresh);
    mask_ = mask;
  }

  // Tag and row + 1 per slot, 0 when empty (at 1M rows: 16 MiB, in 2 MiB pages).
  std::vector<std::uint64_t, detail::LargeAllocator<std::uint64_t>> slots_;
  std::size_t mask_ = 0;
  std::size_t n_ = 0;
  std::uint64_t key_ = detail::random_key();  // the hash's key (copied with the slots)
};

// ---------------------------------------------------------------- FlatIndex

FlatIndex::FlatIndex(std::uint64_t dim, DistanceMetric metric)
    : dim_(dim), metric_(metric), table_(std::make_unique<IdTable>()) {
  if (dim == 0 || dim > kMaxDim) {
    throw PersistError::argument("FlatIndex dimension " + std::to_string(dim) + " is outside 1 .. " +
                                 std::to_string(kMaxDim));
  }
  if (static_cast<std::uint8_t>(metric) > kMaxMetricTag) throw PersistError::argument("unknown distance metric");
}

FlatIndex::FlatIndex(FlatIndex&&) noexcept = default;
// Not defaulted: moved into itself, each member's own move empties some
// (the rows) and keeps others (the id table), an index whose table names
// rows it no longer has (an outside hunt: contains() then crashed).
FlatIndex& FlatIndex::operator=(FlatIndex&& o) noexcept {
  if (this == &o) return *this;
  dim_ = o.dim_;
  metric_ = o.metric_;
  data_ = std::move(o.data_);
  ids_ = std::move(o.ids_);
  meta_ = std::move(o.meta_);
  table_ = std::move(o.table_);
  return *this;
}
FlatIndex::~FlatIndex() = default;

// A moved-from index is empty (same dim and metric) and usable: its id
// table is made again by the first insert or reserve.
FlatIndex::FlatIndex(const FlatIndex& o)
    : dim_(o.dim_),
      metric_(o.metric_),
      data_(o.data_),
      ids_(o.ids_),
      table_(o.table_ ? std::make_unique<IdTable>(*o.table_) : std::make_unique<IdTable>()) {
  meta_.reserve(o.meta_.size());
  for (const auto& m : o.meta_) meta_.push_back(m ? std::make_unique<Metadata>(*m) : nullptr);
}

FlatIndex& FlatIndex::operator=(const FlatIndex& o) {
  if (this != &o) *this = FlatIndex(o);
  return *this;
}

void FlatIndex::insert(const VectorId& id, std::span<const float> vec, std::optional<Metadata> meta) {
  if (vec.size() != dim_) {
    throw PersistError::argument("vector has dimension " + std::to_string(vec.size()) + ", the index has " +
                                 std::to_string(dim_));
  }
  // What a snapshot's reader refuses is never stored (the library checks
  // mutations before logging them; this covers the index used directly).
  // (A byte id is 1 to kMaxIdBytes long by construction: VectorId::bytes.)
  if (meta) detail::check_metadata(*meta);
  if (!table_) table_ = std::make_unique<IdTable>();  // moved from: empty, and usable again
  // Strong guarantee: reserve everything first, then commit with steps that
  // cannot fail (the table insert may grow, so it goes before the rest).
  data_.reserve(data_.size() + dim_);  // geometric
  ids_.reserve_more(1, id);
  // The per-row metadata array exists from the first row with metadata on.
  const bool with_meta = meta.has_value() || !meta_.empty();
  if (with_meta) grow_for(meta_, ids_.size() + 1 - meta_.size());
  auto m = meta ? std::make_unique<Metadata>(std::move(*meta)) : nullptr;
  ids_.push_back(id);
  bool inserted = false;
  try {
    inserted = table_->insert(ids_.size() - 1, ids_);
  } catch (...) {
    ids_.pop_back();
    throw;
  }
  if (!inserted) {
    ids_.pop_back();
    throw PersistError(ErrorKind::DuplicateId, "id " + id.to_string() + " is already present");
  }
  data_.append(vec);
  if (with_meta) {
    meta_.resize(ids_.size() - 1);  // within the capacity reserved: no throw
    meta_.push_back(std::move(m));
  }
}

void FlatIndex::erase(const VectorId& id) {
  const std::size_t slot = find(id);
  if (slot == IdTable::npos) throw PersistError(ErrorKind::IdNotFound, "id " + id.to_string() + " is not present");
  const std::size_t row = table_->row(slot);
  const std::size_t last = ids_.size() - 1;
  table_->erase_slot(slot, ids_);
  if (row != last) {
    const std::size_t moved_slot = table_->find_row(last, ids_);
    table_->set_row(moved_slot, row);
    std::memcpy(data_.data() + row * dim_, data_.data() + last * dim_, dim_ * sizeof(float));
    ids_.move_last_to(row);
    if (!meta_.empty()) meta_[row] = std::move(meta_[last]);
  }
  ids_.pop_back();
  if (!meta_.empty()) meta_.pop_back();
  data_.resize(last * dim_);
}

// Geometric, like insert's own growth: a reserve before every batch does
// not reallocate for every batch.
void FlatIndex::reserve(std::uint64_t n) {
  if (n > SIZE_MAX / dim_ / sizeof(float)) throw std::bad_alloc();
  const auto more = static_cast<std::size_t>(n);
  data_.reserve(data_.size() + more * dim_);
  ids_.reserve_more(more, VectorId(0));
  if (!meta_.empty()) grow_for(meta_, more);
  if (!table_) table_ = std::make_unique<IdTable>();
  table_->reserve(ids_.size() + more, ids_);
}

std::size_t FlatIndex::find(const VectorId& id) const noexcept {
  return table_ ? table_->find(id, ids_) : IdTable::npos;
}

bool FlatIndex::contains(const VectorId& id) const noexcept { return find(id) != IdTable::npos; }

std::span<const float> FlatIndex::get(const VectorId& id) const noexcept {
  const std::size_t slot = find(id);
  if (slot == IdTable::npos) return {};
  return vector_at(table_->row(slot));
}

const Metadata* FlatIndex::metadata(const VectorId& id) const noexcept {
  const std::size_t slot = find(id);
  if (slot == IdTable::npos) return nullptr;
  return metadata_at(table_->row(slot));
}

std::vector<SearchHit> FlatIndex::search(std::span<const float> query, std::size_t k) const {
  if (query.size() != dim_) {
    throw PersistError::argument("query has dimension " + std::to_string(query.size()) + ", the index has " +
                                 std::to_string(dim_));
  }
  const std::size_t n = ids_.size();
  k = std::min(k, n);
  if (k == 0) return {};
  struct Cand {
    float d;
    std::size_t row;
  };
  // Total order: NaN distances last, then by distance, then by row.
  const auto less = [](const Cand& a, const Cand& b) {
    const bool an = std::isnan(a.d), bn = std::isnan(b.d);
    if (an != bn) return bn;
    if (!an && a.d != b.d) return a.d < b.d;
    return a.row < b.row;
  };
  std::vector<Cand> cands(n);
  for (std::size_t r = 0; r < n; ++r) cands[r] = Cand{distance(metric_, query, vector_at(r)), r};
  std::partial_sort(cands.begin(), cands.begin() + static_cast<std::ptrdiff_t>(k), cands.end(), less);
  std::vector<SearchHit> hits;
  hits.reserve(k);
  for (std::size_t i = 0; i < k; ++i) hits.push_back(SearchHit{ids_.at(cands[i].row), cands[i].d});
  return hits;
}

bool operator==(const FlatIndex& a, const FlatIndex& b) {
  if (a.dim_ != b.dim_ || a.metric_ != b.metric_ || !(a.ids_ == b.ids_)) return false;
  if (a.data_.size() != b.data_.size() ||
      (!a.data_.empty() && std::memcmp(a.data_.data(), b.data_.data(), a.data_.size() * sizeof(float)) != 0)) {
    return false;
  }
  for (std::size_t r = 0; r < a.ids_.size(); ++r) {
    const Metadata* x = a.metadata_at(r);
    const Metadata* y = b.metadata_at(r);
    if ((x == nullptr) != (y == nullptr)) return false;
    if (x != nullptr && *x != *y) return false;
  }
  return true;
}

// ---------------------------------------------------------------- payload

namespace {

// Version 2 aligns the vectors in the file (docs/FORMAT.md, "The flat
// payload"); version 1 (no padding field) is still read.
constexpr std::uint32_t kPayloadVersion = 2;
constexpr std::uint32_t kPayloadVersionUnaligned = 1;
// The vectors start at a multiple of this in the file (uncompressed).
constexpr std::uint64_t kVectorAlignment = 4096;
constexpr std::uint8_t kIdsAllU64 = 0;
constexpr std::uint8_t kIdsTagged = 1;
constexpr std::uint8_t kIdKindU64 = 0;
constexpr std::uint8_t kIdKindBytes = 1;
}  // namespace

// The ids: all u64 in one block when they are, else tagged one by one.
void FlatIndex::save_ids(PayloadWriter& w) const {
  const std::size_t n = ids_.size();
  const bool all_u64 = ids_.compact() || std::all_of(ids_.wide().begin(), ids_.wide().end(),
                                                     [](const VectorId& id) { return id.is_u64(); });
  w.write_u8(all_u64 ? kIdsAllU64 : kIdsTagged);
  if (ids_.compact()) {
    w.write(ids_.u64s().data(), n * sizeof(std::uint64_t));
  } else if (all_u64) {
    std::vector<std::uint64_t> buf;
    constexpr std::size_t kBatch = std::size_t{64} * 1024;
    buf.reserve(std::min<std::size_t>(n, kBatch));
    for (std::size_t i = 0; i < n; i += kBatch) {
      buf.clear();
      for (std::size_t j = i; j < std::min<std::size_t>(n, i + kBatch); ++j) buf.push_back(ids_.wide()[j].as_u64());
      w.write(buf.data(), buf.size() * sizeof(std::uint64_t));
    }
  } else {
    for (const VectorId& id : ids_.wide()) {
      if (id.is_u64()) {
        w.write_u8(kIdKindU64);
        w.write_u64(id.as_u64());
      } else {
        w.write_u8(kIdKindBytes);
        w.write_string(id.as_bytes());
      }
    }
  }
}

void FlatIndex::save_to(PayloadWriter& w) const {
  const std::uint64_t n = ids_.size();
  w.write_u32(kPayloadVersion);
  w.write_u64(dim_);
  w.write_u8(static_cast<std::uint8_t>(metric_));
  w.write_u64(n);
  save_ids(w);
  const std::uint64_t with_meta = static_cast<std::uint64_t>(
      std::count_if(meta_.begin(), meta_.end(), [](const auto& m) { return m != nullptr; }));
  w.write_u64(with_meta);
  for (std::uint64_t row = 0; row < n; ++row) {
    const Metadata* m = metadata_at(row);
    if (m == nullptr) continue;
    w.write_u64(row);
    write_metadata(w, *m);
  }
  write_vector_padding(w);
  w.write(data_.data(), data_.size() * sizeof(float));
}

// pad_len u32, then pad_len zero bytes: the vectors that follow start at a
// file offset that is a multiple of kVectorAlignment.
void FlatIndex::write_vector_padding(PayloadWriter& w) {
  const std::uint64_t at = w.file_offset() + w.bytes_written() + sizeof(std::uint32_t);
  const auto pad = static_cast<std::uint32_t>((kVectorAlignment - at % kVectorAlignment) % kVectorAlignment);
  w.write_u32(pad);
  static constexpr std::array<std::byte, kVectorAlignment> kZeros{};
  w.write(kZeros.data(), pad);
  w.mark_aligned_block();
}

// The padding of version 2: at most kVectorAlignment - 1 bytes, all zero.
void FlatIndex::read_vector_padding(PayloadReader& r) {
  const std::uint32_t pad = r.read_u32();
  if (pad >= kVectorAlignment) r.fail("vector padding of " + std::to_string(pad) + " bytes");
  std::array<std::byte, kVectorAlignment> bytes{};
  r.read(bytes.data(), pad);
  if (std::any_of(bytes.begin(), bytes.begin() + pad, [](std::byte b) { return b != std::byte{0}; })) {
    r.fail("vector padding holds non-zero bytes");
  }
}

// The vectors: in place when the reader maps them (a mapped load), else
// read into the index's own memory.
void FlatIndex::load_vectors(PayloadReader& r, std::uint64_t floats) {
  if (floats > r.remaining() / sizeof(float)) r.fail("the vectors do not fit the payload");
  const auto n = static_cast<std::size_t>(floats);
  // Room to grow in place: as much again (address space only).
  if (MappedBlock block = r.map(n * sizeof(float), 2 * n * sizeof(float))) {
    data_.adopt(std::move(block), n);
    return;
  }
  data_.resize(n);
  r.read(data_.data(), n * sizeof(float));
}

void FlatIndex::check_mapping() const {
  if (const detail::MappedOrigin* origin = data_.origin()) detail::check_mapped_origin(*origin);
}

FlatIndex FlatIndex::load_from(PayloadReader& r) {
  const std::uint32_t version = r.read_u32();
  if (version != kPayloadVersion && version != kPayloadVersionUnaligned) {
    r.fail("unknown flat payload version " + std::to_string(version));
  }
  const std::uint64_t dim = r.read_u64();
  // Only overflow is guarded here: the vector count below is bounded by the
  // bytes that remain (an empty index of any dimension is legitimate).
  if (dim == 0 || dim > kMaxDim) r.fail("dimension " + std::to_string(dim) + " is out of range");
  const std::uint8_t metric_tag = r.read_u8();
  const auto metric = metric_from_tag(metric_tag);
  if (!metric) r.fail("unknown metric tag " + std::to_string(metric_tag));
  FlatIndex index(dim, *metric);

  // Every vector needs dim * 4 bytes and at least one id byte: bound the
  // count before allocating for it.
  const std::uint64_t n = r.read_count(dim * sizeof(float) + 1, "vector");
  const std::uint8_t id_encoding = r.read_u8();
  if (id_encoding == kIdsAllU64) {
    r.check_count(n, sizeof(std::uint64_t) + dim * sizeof(float), "vector");
    detail::RowIds::U64s ids(static_cast<std::size_t>(n));
    r.read(ids.data(), ids.size() * sizeof(std::uint64_t));
    index.ids_.assign(std::move(ids));
  } else if (id_encoding == kIdsTagged) {
    index.ids_.reserve_more(static_cast<std::size_t>(n), VectorId(0));
    for (std::uint64_t i = 0; i < n; ++i) {
      const std::uint8_t kind = r.read_u8();
      if (kind == kIdKindU64) {
        index.ids_.push_back(VectorId(r.read_u64()));
      } else if (kind == kIdKindBytes) {
        std::string b = r.read_string(kMaxIdBytes, "byte id");
        if (b.empty()) r.fail("empty byte id");
        const VectorId id = VectorId::bytes(std::move(b));
        index.ids_.reserve_more(1, id);
        index.ids_.push_back(id);
      } else {
        r.fail("unknown id kind " + std::to_string(kind));
      }
    }
  } else {
    r.fail("unknown id encoding " + std::to_string(id_encoding));
  }

  // Build the id table on the other core while the vectors stream in; on
  // this thread after them when no thread can be had (a process at its
  // limit).
  const auto build_table = [&index, n] {
    auto table = std::make_unique<IdTable>(static_cast<std::size_t>(n));
    if (!table->insert_all(n, index.ids_)) return std::unique_ptr<IdTable>();
    return table;
  };
  std::future<std::unique_ptr<IdTable>> table_job;
  try {
    table_job = std::async(std::launch::async, build_table);
  } catch (const std::system_error&) {
  }
  try {
    // Each metadata record is at least 12 bytes (row u64 + entry count u32).
    const std::uint64_t with_meta = r.read_count(12, "metadata record");
    if (with_meta > n) r.fail("more metadata records than vectors");
    // The per-row array only when some row has metadata (see meta_).
    if (with_meta > 0) index.meta_.resize(static_cast<std::size_t>(n));
    std::uint64_t prev_row = 0;
    for (std::uint64_t i = 0; i < with_meta; ++i) {
      const std::uint64_t row = r.read_u64();
      if (row >= n || (i > 0 && row <= prev_row)) r.fail("metadata row " + std::to_string(row) + " is out of order");
      prev_row = row;
      index.meta_[row] = std::make_unique<Metadata>(read_metadata(r));
    }
    if (version == kPayloadVersion) read_vector_padding(r);
    index.load_vectors(r, n * dim);
  } catch (...) {
    if (table_job.valid()) table_job.wait();
    throw;
  }
  index.table_ = table_job.valid() ? table_job.get() : build_table();
  if (!index.table_) r.fail("duplicate vector id");
  return index;
}

std::uint64_t detail::FlatIndexInternals::id_table_probes(const FlatIndex& ix) noexcept {
  return ix.table_ ? ix.table_->probes(ix.ids_) : 0;
}

}  // namespace iqdb::persist
