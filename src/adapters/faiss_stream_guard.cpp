// FaissStreamGuard: the grammar of FAISS's serialization for the supported
// index types, checked byte by byte (see faiss_stream_guard.hpp).
#include "adapters/faiss_stream_guard.hpp"

#include <algorithm>
#include <cstring>

#include "iqdb/persist/error.hpp"

namespace iqdb::persist::adapters::detail {
namespace {

constexpr std::uint32_t fourcc(const char (&s)[5]) noexcept {
  return static_cast<std::uint32_t>(static_cast<unsigned char>(s[0])) |
         static_cast<std::uint32_t>(static_cast<unsigned char>(s[1])) << 8 |
         static_cast<std::uint32_t>(static_cast<unsigned char>(s[2])) << 16 |
         static_cast<std::uint32_t>(static_cast<unsigned char>(s[3])) << 24;
}

constexpr std::uint32_t kFlatL2 = fourcc("IxF2");
constexpr std::uint32_t kFlatIP = fourcc("IxFI");
constexpr std::uint32_t kFlat = fourcc("IxFl");
constexpr std::uint32_t kHnswFlat = fourcc("IHNf");
constexpr std::uint32_t kIvfFlat = fourcc("IwFl");
constexpr std::uint32_t kIdMap = fourcc("IxMp");
constexpr std::uint32_t kIdMap2 = fourcc("IxM2");
constexpr std::uint32_t kArrayInvlists = fourcc("ilar");
constexpr std::uint32_t kFullSizes = fourcc("full");
constexpr std::uint32_t kSparseSizes = fourcc("sprs");

// FAISS's metric_type values (faiss/MetricType.h).
constexpr std::int32_t kMetricInnerProduct = 0;
constexpr std::int32_t kMetricL2 = 1;
constexpr std::int32_t kMetricL1 = 2;

// READVECTOR's own limit.
constexpr std::uint64_t kFaissMaxVector = std::uint64_t{1} << 40;

std::string printable(std::uint32_t code) {
  std::string s;
  for (int i = 0; i < 4; ++i) {
    const auto c = static_cast<char>((code >> (8 * i)) & 0xff);
    s += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  return "\"" + s + "\"";
}

// a * b, or false on overflow.
bool mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) noexcept {
  if (a != 0 && b > ~std::uint64_t{0} / a) return false;
  out = a * b;
  return true;
}

}  // namespace

FaissStreamGuard::FaissStreamGuard(bool reading, bool capture) : reading_(reading), capture_(reading && capture) {
  stack_.push_back(index(kNoParent));
}

void FaissStreamGuard::fail(const std::string& why) const {
  if (reading_) {
    throw PersistError(ErrorKind::InvalidPayload,
                       "FAISS index, byte " + std::to_string(offset_) + " of its serialization: " + why);
  }
  throw PersistError(ErrorKind::Unsupported, "the FAISS index cannot be persisted: " + why);
}

void FaissStreamGuard::then(const std::vector<Step>& steps) {
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) stack_.push_back(*it);
}

void FaissStreamGuard::add_header(std::vector<Step>& seq, std::size_t node) {
  seq.push_back(field(Field::HeaderD, 4, node));
  seq.push_back(field(Field::HeaderNtotal, 8, node));
  seq.push_back(field(Field::HeaderDummy, 8, node));
  seq.push_back(field(Field::HeaderDummy, 8, node));
  seq.push_back(field(Field::HeaderTrained, 1, node));
  seq.push_back(field(Field::HeaderMetric, 4, node));
}

// Runs the steps that consume no bytes: nested index starts, checks, and
// skips or arrays that are already complete.
void FaissStreamGuard::drain() {
  while (!stack_.empty()) {
    Step& top = stack_.back();
    if (top.op == Op::Index) {
      const std::size_t parent = top.node;
      stack_.pop_back();
      const int depth = parent == kNoParent ? 1 : nodes_[parent].depth + 1;
      if (depth > kMaxDepth) fail("indexes nested more than " + std::to_string(kMaxDepth) + " deep");
      Node n;
      n.depth = depth;
      n.parent = parent;
      nodes_.push_back(n);
      const std::size_t id = nodes_.size() - 1;
      if (parent != kNoParent) nodes_[parent].child = id;
      stack_.push_back(field(Field::Fourcc, 4, id));
    } else if (top.op == Op::Check) {
      const Step s = top;
      stack_.pop_back();
      on_check(s);
    } else if ((top.op == Op::Skip || top.op == Op::U64Array) && top.count == 0) {
      stack_.pop_back();
    } else {
      return;
    }
  }
}

void FaissStreamGuard::feed(const void* data, std::size_t n, std::uint64_t bytes_after) {
  const auto* p = static_cast<const unsigned char*>(data);
  std::size_t left = n;
  remaining_ = reading_ ? bytes_after + n : kUnknown;
  hidden_.clear();
  for (;;) {
    drain();  // runs the Index and Check steps: a Field, U64Array or Skip is on top
    if (left == 0) return;
    if (stack_.empty()) fail("bytes follow the end of the index");
    Step& top = stack_.back();
    const bool value = top.op == Op::Field || top.op == Op::U64Array;
    std::size_t k = 0;
    if (value) {
      k = buffer_value(top, p, left, n - left);
    } else if (top.op == Op::Skip) {
      k = static_cast<std::size_t>(std::min<std::uint64_t>(top.count, left));
      top.count -= k;
    }
    p += k;
    left -= k;
    offset_ += k;
    if (reading_) remaining_ -= k;
    if (value && have_ == value_width(top)) on_value(left);
  }
}

std::uint8_t FaissStreamGuard::value_width(const Step& s) noexcept { return s.op == Op::Field ? s.width : 8; }

// Copy the next bytes of the value on top (at offset `at` of the current
// feed) into buf_; returns how many.
std::size_t FaissStreamGuard::buffer_value(const Step& top, const unsigned char* p, std::size_t left, std::size_t at) {
  const std::size_t k = std::min<std::size_t>(value_width(top) - have_, left);
  if (top.op == Op::Field && top.hide) hidden_.emplace_back(at, k);
  std::memcpy(buf_ + have_, p, k);
  have_ = static_cast<std::uint8_t>(have_ + k);
  return k;
}

// The value on top is complete in buf_ (little-endian): act on it. `left`:
// the bytes of the current feed after it.
void FaissStreamGuard::on_value(std::size_t left) {
  Step& top = stack_.back();
  std::uint64_t v = 0;
  for (int i = value_width(top) - 1; i >= 0; --i) v = (v << 8) | buf_[i];
  have_ = 0;
  if (top.op != Op::Field) {
    on_u64_element(top, v);
    return;
  }
  const Step s = top;
  stack_.pop_back();
  on_field(s, v);
  // Captured codes are read by the adapter, not as part of a FAISS read
  // (FAISS reads a count by itself, so this cannot happen).
  if (capture_bytes_ && left > 0) fail("a read runs past a storage count");
}

void FaissStreamGuard::finish() {
  drain();
  if (!stack_.empty() || have_ != 0) fail("the serialization ends before the index does");
}

void FaissStreamGuard::on_fourcc(std::size_t id, std::uint32_t code) {
  Node& node = nodes_[id];
  node.fourcc = code;
  std::vector<Step> seq;
  add_header(seq, id);
  if (code == kFlatL2 || code == kFlatIP || code == kFlat) {
    node.kind = Kind::Flat;
    // The vector storage (nothing under an IVF, whose quantizer is small):
    // captured by the adapter.
    node.capture = capture_;
    for (std::size_t up = node.parent; up != kNoParent; up = nodes_[up].parent) {
      if (nodes_[up].kind == Kind::Ivf) node.capture = false;
    }
    if (node.capture) seq[1].hide = true;  // ntotal
    seq.push_back(field(Field::XbCount, 8, id));
    seq.back().hide = node.capture;
    seq.push_back(check(Check::FlatDone, id));
  } else if (code == kHnswFlat) {
    node.kind = Kind::Hnsw;
    seq.push_back(vec(VecRole::Plain, 8, id));  // assign_probas
    seq.push_back(vec(VecRole::Plain, 4, id));  // cum_nneighbor_per_level
    seq.push_back(vec(VecRole::Plain, 4, id));  // levels
    seq.push_back(vec(VecRole::Plain, 8, id));  // offsets
    seq.push_back(vec(VecRole::Plain, 4, id));  // neighbors
    for (int i = 0; i < 5; ++i) seq.push_back(field(Field::I32, 4, id));
    seq.push_back(index(id));  // storage
    seq.push_back(check(Check::HnswDone, id));
  } else if (code == kIvfFlat) {
    node.kind = Kind::Ivf;
    seq.push_back(field(Field::IvfNlist, 8, id));
    seq.push_back(field(Field::IvfNprobe, 8, id));
    seq.push_back(index(id));  // quantizer
    seq.push_back(check(Check::IvfQuantizerDone, id));
    seq.push_back(field(Field::DirectMapType, 1, id));
    seq.push_back(field(Field::InvlistsFourcc, 4, id));
  } else if (code == kIdMap || code == kIdMap2) {
    node.kind = Kind::IdMap;
    // IndexIDMap2: FAISS is shown count 0, so that it builds no reverse map
    // (its construct_rev_map hashes with the identity: crafted ids make it
    // quadratic); the adapter sets the count and builds the map.
    if (code == kIdMap2 && capture_) seq[1].hide = true;
    seq.push_back(index(id));  // sub-index
    seq.push_back(check(Check::IdMapSubDone, id));
    seq.push_back(vec(VecRole::IdMap, 8, id));
  } else {
    fail("index type " + printable(code) +
         " is not supported (supported: IndexFlat, IndexHNSWFlat, IndexIVFFlat, IndexIDMap, IndexIDMap2)");
  }
  then(seq);
}

void FaissStreamGuard::on_field(const Step& s, std::uint64_t v) {
  switch (s.field) {
    case Field::Fourcc: on_fourcc(s.node, static_cast<std::uint32_t>(v)); return;
    case Field::HeaderD:
    case Field::HeaderNtotal:
    case Field::HeaderDummy:
    case Field::HeaderTrained:
    case Field::HeaderMetric:
    case Field::HeaderMetricArg: on_header_field(s, v); return;
    case Field::XbCount: on_flat_storage(s, v); return;
    case Field::VecCount: on_vec_count(s, v); return;
    case Field::I32: return;
    case Field::IvfNlist:
    case Field::IvfNprobe:
    case Field::DirectMapType: on_ivf_field(s, v); return;
    case Field::InvlistsFourcc:
    case Field::InvlistsNlist:
    case Field::InvlistsCodeSize:
    case Field::InvlistsListType: on_invlists_field(s, v); return;
  }
}

// The fields every index header has (faiss::read_index_header).
void FaissStreamGuard::on_header_field(const Step& s, std::uint64_t v) {
  Node& node = nodes_[s.node];
  switch (s.field) {
    case Field::HeaderD: {
      const auto d = static_cast<std::int32_t>(static_cast<std::uint32_t>(v));
      if (d < 1) fail("dimension " + std::to_string(d) + " is not positive");
      node.d = d;
      return;
    }
    case Field::HeaderNtotal: {
      const auto n = static_cast<std::int64_t>(v);
      // Every vector takes at least a byte further on.
      if (n < 0 || v > remaining_) {
        fail("vector count " + std::to_string(n) + " is impossible with " + std::to_string(remaining_) + " bytes left");
      }
      node.ntotal = n;
      return;
    }
    case Field::HeaderTrained:
      if (v > 1) fail("is_trained byte " + std::to_string(v) + " is not 0 or 1");
      return;
    case Field::HeaderMetric: {
      const auto m = static_cast<std::int32_t>(static_cast<std::uint32_t>(v));
      if (m != kMetricInnerProduct && m != kMetricL2 && m != kMetricL1) {
        fail("metric type " + std::to_string(m) + " is not supported (inner product, L2 and L1 are)");
      }
      if ((node.fourcc == kFlatL2 && m != kMetricL2) || (node.fourcc == kFlatIP && m != kMetricInnerProduct)) {
        fail("metric type " + std::to_string(m) + " contradicts index type " + printable(node.fourcc));
      }
      node.metric = m;
      if (m > 1) stack_.push_back(field(Field::HeaderMetricArg, 4, s.node));
      return;
    }
    default: return;  // HeaderMetricArg: not checked
  }
}

// IndexFlat's codes, counted in 4-byte units.
void FaissStreamGuard::on_flat_storage(const Step& s, std::uint64_t v) {
  const Node& node = nodes_[s.node];
  std::uint64_t want = 0;
  if (!mul(static_cast<std::uint64_t>(node.ntotal), static_cast<std::uint64_t>(node.d), want) || v != want) {
    fail("flat storage of " + std::to_string(v) + " floats does not hold " + std::to_string(node.ntotal) +
         " vectors of dimension " + std::to_string(node.d));
  }
  if (v >= kFaissMaxVector || v > remaining_ / 4) {
    fail("flat storage of " + std::to_string(v) + " floats exceeds the " + std::to_string(remaining_) +
         " bytes left");
  }
  if (node.capture) capture_bytes_ = v * 4;
  stack_.push_back(skip(v * 4));
}

// IndexIVFFlat's own fields, before its inverted lists.
void FaissStreamGuard::on_ivf_field(const Step& s, std::uint64_t v) {
  Node& node = nodes_[s.node];
  switch (s.field) {
    case Field::IvfNlist:
      // The quantizer that follows holds nlist centroids of d floats.
      if (v == 0 || v > remaining_) fail("nlist " + std::to_string(v) + " is out of range");
      node.nlist = v;
      return;
    case Field::DirectMapType: {
      if (v > 2) fail("direct map type " + std::to_string(v) + " is unknown");
      node.dm_type = static_cast<std::uint8_t>(v);
      std::vector<Step> seq{vec(VecRole::DirectMapArray, 8, s.node)};
      if (v == 2) seq.push_back(vec(VecRole::DirectMapHashtable, 16, s.node));
      then(seq);
      return;
    }
    default: return;  // IvfNprobe: not checked
  }
}

// The ArrayInvertedLists of an IndexIVFFlat.
void FaissStreamGuard::on_invlists_field(const Step& s, std::uint64_t v) {
  Node& node = nodes_[s.node];
  switch (s.field) {
    case Field::InvlistsFourcc:
      if (v != kArrayInvlists) {
        fail("inverted lists of type " + printable(static_cast<std::uint32_t>(v)) +
             " are not supported (only ArrayInvertedLists, \"ilar\", stored with the index)");
      }
      then({field(Field::InvlistsNlist, 8, s.node), field(Field::InvlistsCodeSize, 8, s.node),
            field(Field::InvlistsListType, 4, s.node)});
      return;
    case Field::InvlistsNlist:
      if (v != node.nlist) {
        fail("inverted lists count " + std::to_string(v) + " lists, the index " + std::to_string(node.nlist));
      }
      return;
    case Field::InvlistsCodeSize:
      if (v != static_cast<std::uint64_t>(node.d) * 4) {
        fail("code size " + std::to_string(v) + " is not that of " + std::to_string(node.d) + " floats");
      }
      node.code_size = v;
      return;
    case Field::InvlistsListType:
      if (v == kFullSizes) {
        stack_.push_back(vec(VecRole::SizesFull, 8, s.node));
      } else if (v == kSparseSizes) {
        stack_.push_back(vec(VecRole::SizesSparse, 8, s.node));
      } else {
        fail("list size encoding " + printable(static_cast<std::uint32_t>(v)) + " is unknown");
      }
      return;
    default: return;
  }
}

void FaissStreamGuard::on_vec_count(const Step& s, std::uint64_t n) {
  Node& node = nodes_[s.node];
  if (n >= kFaissMaxVector || n > remaining_ / s.elem) {
    fail("a vector of " + std::to_string(n) + " elements of " + std::to_string(s.elem) + " bytes exceeds the " +
         std::to_string(remaining_) + " bytes left");
  }
  const auto ntotal = static_cast<std::uint64_t>(node.ntotal);
  switch (s.role) {
    case VecRole::Plain: break;
    case VecRole::IdMap:
      if (n != ntotal) fail("id map of " + std::to_string(n) + " ids for " + std::to_string(ntotal) + " vectors");
      break;
    case VecRole::DirectMapArray:
      if (n != (node.dm_type == 1 ? ntotal : 0)) fail("direct map array of " + std::to_string(n) + " entries");
      break;
    case VecRole::DirectMapHashtable:
      if (n != ntotal) fail("direct map hashtable of " + std::to_string(n) + " entries");
      break;
    case VecRole::SizesFull:
      if (n != node.nlist) fail(std::to_string(n) + " list sizes for " + std::to_string(node.nlist) + " lists");
      then({u64_array(s.role, n, s.node), check(Check::SizesDone, s.node)});
      return;
    case VecRole::SizesSparse:
      if (n % 2 != 0 || n / 2 > node.nlist) fail("sparse list sizes of " + std::to_string(n) + " numbers");
      then({u64_array(s.role, n, s.node), check(Check::SizesDone, s.node)});
      return;
  }
  stack_.push_back(skip(n * s.elem));
}

void FaissStreamGuard::on_u64_element(Step& s, std::uint64_t v) {
  Node& node = nodes_[s.node];
  const bool is_size = s.role == VecRole::SizesFull || s.index % 2 == 1;
  if (is_size) {
    if (v > remaining_ || node.list_total + v < node.list_total)
      fail("list size " + std::to_string(v) + " is impossible");
    node.list_total += v;
  } else {
    // Sparse encoding: list numbers strictly ascending, below nlist.
    if (v >= node.nlist || v < node.last_list) fail("list number " + std::to_string(v) + " is out of order or range");
    node.last_list = v + 1;
  }
  --s.count;
  ++s.index;
}

void FaissStreamGuard::on_check(const Step& s) {
  const Node& node = nodes_[s.node];
  const Node& child = nodes_[node.child];
  const auto same_shape = [&](const char* what) {
    if (child.d != node.d || child.ntotal != node.ntotal) {
      fail(std::string(what) + " holds " + std::to_string(child.ntotal) + " vectors of dimension " +
           std::to_string(child.d) + ", its parent " + std::to_string(node.ntotal) + " of dimension " +
           std::to_string(node.d));
    }
  };
  switch (s.check) {
    case Check::FlatDone: return;
    case Check::HnswDone:
      if (child.kind != Kind::Flat) fail("the storage of an IndexHNSWFlat is not an IndexFlat");
      same_shape("the HNSW storage");
      return;
    case Check::IvfQuantizerDone:
      if (child.kind != Kind::Flat && child.kind != Kind::Hnsw) fail("the IVF quantizer is not a flat or HNSW index");
      if (child.d != node.d || static_cast<std::uint64_t>(child.ntotal) != node.nlist) {
        fail("the IVF quantizer holds " + std::to_string(child.ntotal) + " centroids of dimension " +
             std::to_string(child.d) + " for " + std::to_string(node.nlist) + " lists of dimension " +
             std::to_string(node.d));
      }
      return;
    case Check::IdMapSubDone:
      if (child.kind == Kind::IdMap) fail("an IndexIDMap inside an IndexIDMap is not supported");
      same_shape("the sub-index of the IndexIDMap");
      return;
    case Check::SizesDone: {
      if (node.list_total != static_cast<std::uint64_t>(node.ntotal)) {
        fail("the inverted lists hold " + std::to_string(node.list_total) + " vectors, the index " +
             std::to_string(node.ntotal));
      }
      std::uint64_t bytes = 0;
      if (!mul(node.list_total, node.code_size + 8, bytes) || bytes > remaining_) {
        fail("the inverted lists' codes and ids exceed the " + std::to_string(remaining_) + " bytes left");
      }
      stack_.push_back(skip(bytes));
      return;
    }
  }
}

}  // namespace iqdb::persist::adapters::detail
