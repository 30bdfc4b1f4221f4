// Python <-> library conversions (convert.hpp).
#include "convert.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

namespace iqdb::persist::python {

namespace {

std::string type_name(py::handle h) { return py::str(py::type::handle_of(h).attr("__name__")); }

[[noreturn]] void type_error(const std::string& what) { throw py::type_error(what); }
[[noreturn]] void value_error(const std::string& what) { throw py::value_error(what); }

bool is_native_float32(const py::array& a) {
  const py::dtype dt = a.dtype();
  return dt.kind() == 'f' && dt.itemsize() == sizeof(float) && dt.attr("isnative").cast<bool>();
}

// An array whose data is not aligned for its items (numpy.frombuffer at an
// odd offset) is read through typed pointers: undefined behaviour. Refused.
void require_aligned(const py::array& a, const char* what, std::size_t alignment) {
  if (reinterpret_cast<std::uintptr_t>(a.data()) % alignment != 0) {
    value_error(std::string(what) + " must be aligned for its dtype (numpy.frombuffer at an odd offset is not; use .copy())");
  }
}

// A float32, C-contiguous numpy array (TypeError / ValueError otherwise).
py::array float32_array(py::handle h, const char* what) {
  if (!py::isinstance<py::array>(h)) {
    type_error(std::string(what) + " must be a numpy.ndarray of float32, not " + type_name(h));
  }
  py::array a = py::reinterpret_borrow<py::array>(h);
  if (!is_native_float32(a)) {
    type_error(std::string(what) + " must have dtype float32, not " + std::string(py::str(a.dtype())) +
               " (convert with .astype(numpy.float32))");
  }
  if ((a.flags() & py::array::c_style) == 0) {
    value_error(std::string(what) + " must be C-contiguous (use numpy.ascontiguousarray)");
  }
  require_aligned(a, what, alignof(float));
  return a;
}

std::string shape_of(const py::array& a) { return py::str(a.attr("shape")); }

// A str as UTF-8 (ValueError for one that has none, such as a lone surrogate).
std::string utf8(py::handle s, const std::string& what) {
  Py_ssize_t n = 0;
  const char* p = PyUnicode_AsUTF8AndSize(s.ptr(), &n);
  if (p == nullptr) {
    PyErr_Clear();
    value_error(what + " is not valid Unicode (it cannot be encoded as UTF-8)");
  }
  return {p, static_cast<std::size_t>(n)};
}

// numpy.integer, numpy.floating, numpy.bool_ (references kept for the
// process's life: init_numpy_scalars).
py::handle g_np_integer, g_np_floating, g_np_bool;

bool is_int(py::handle h) { return py::isinstance<py::int_>(h) || py::isinstance(h, g_np_integer); }
bool is_bool(py::handle h) { return py::isinstance<py::bool_>(h) || py::isinstance(h, g_np_bool); }
bool is_float(py::handle h) { return py::isinstance<py::float_>(h) || py::isinstance(h, g_np_floating); }

// An int or numpy integer as a Python int.
py::int_ as_int(py::handle h) {
  if (py::isinstance<py::int_>(h)) return py::reinterpret_borrow<py::int_>(h);
  PyObject* i = PyNumber_Index(h.ptr());
  if (i == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::int_>(i);
}

// A non-negative Python int as a u64; nullopt when it is above 2**64-1.
std::optional<std::uint64_t> u64_of(const py::int_& i) {
  const unsigned long long v = PyLong_AsUnsignedLongLong(i.ptr());  // a PyLong (as_int): not a numpy int
  if (PyErr_Occurred() != nullptr) {
    PyErr_Clear();
    return std::nullopt;
  }
  return static_cast<std::uint64_t>(v);
}

}  // namespace

void init_numpy_scalars() {
  const py::module_ np = py::module_::import("numpy");
  g_np_integer = py::object(np.attr("integer")).release();
  g_np_floating = py::object(np.attr("floating")).release();
  g_np_bool = py::object(np.attr("bool_")).release();
}

std::size_t to_k(py::handle h) {
  // A bool is an int to Python (range(True) runs once), but k=True is a
  // slip, not a count: refused as the ids refuse it.
  if (is_bool(h) || !is_int(h)) type_error("k must be an int, not " + type_name(h));
  const py::int_ i = as_int(h);
  if (i < py::int_(0)) value_error("k must not be negative, not " + std::string(py::str(h)));
  // Beyond 2**64-1: more than any index holds.
  return static_cast<std::size_t>(u64_of(i).value_or(std::numeric_limits<std::uint64_t>::max()));
}

VectorId to_id(py::handle h) {
  if (is_bool(h)) type_error("an id must be an int or bytes, not " + type_name(h));
  if (is_int(h)) {
    const py::int_ i = as_int(h);
    const std::optional<std::uint64_t> v = i < py::int_(0) ? std::nullopt : u64_of(i);
    if (!v) value_error("an int id must be in 0..2**64-1, not " + std::string(py::str(h)));
    return VectorId(*v);
  }
  if (py::isinstance<py::bytes>(h)) {
    std::string b = py::reinterpret_borrow<py::bytes>(h);
    if (b.empty()) value_error("a bytes id must not be empty");
    if (b.size() > kMaxIdBytes) {
      value_error("a bytes id must be at most " + std::to_string(kMaxIdBytes) + " bytes long, not " +
                  std::to_string(b.size()));
    }
    return VectorId::bytes(std::move(b));
  }
  type_error("an id must be an int or bytes, not " + type_name(h));
}

py::object from_id(const VectorId& id) {
  if (id.is_u64()) return py::int_(id.as_u64());
  return py::bytes(id.as_bytes());
}

py::object from_id(std::uint64_t id) { return py::int_(id); }

namespace {

Value to_value(py::handle v, const std::string& key) {
  if (v.is_none()) return Value();
  if (is_bool(v)) {
    const int truth = PyObject_IsTrue(v.ptr());  // a look-alike's __bool__ may raise
    if (truth < 0) throw py::error_already_set();
    return Value(truth == 1);
  }
  if (is_int(v)) {
    long long x = PyLong_AsLongLong(as_int(v).ptr());
    if (PyErr_Occurred() != nullptr) {
      PyErr_Clear();
      value_error("metadata value of '" + key + "' is outside the int64 range");
    }
    return Value(static_cast<std::int64_t>(x));
  }
  if (is_float(v)) {
    const double x = PyFloat_AsDouble(v.ptr());  // numpy floats convert through __float__
    if (x == -1.0 && PyErr_Occurred() != nullptr) throw py::error_already_set();
    // Metadata floats are float64: a wider numpy float (longdouble) is
    // taken only when it converts without rounding, never narrowed silently.
    if (!PyFloat_Check(v.ptr()) && x == x) {
      const int same = PyObject_RichCompareBool(py::float_(x).ptr(), v.ptr(), Py_EQ);
      if (same < 0) throw py::error_already_set();
      if (same == 0) {
        value_error("metadata value of '" + key + "' (" + type_name(v) + ") cannot be stored as a float64 without rounding");
      }
    }
    return Value(x);
  }
  if (py::isinstance<py::str>(v)) return Value(utf8(v, "metadata value of '" + key + "'"));
  type_error("metadata value of '" + key + "' must be str, int, float, bool or None, not " + type_name(v));
}

}  // namespace

std::optional<Metadata> to_metadata(py::handle h) {
  if (h.is_none()) return std::nullopt;
  if (!py::isinstance<py::dict>(h)) type_error("metadata must be a dict or None, not " + type_name(h));
  Metadata m;
  // Over a list of the items, which holds a reference to every key and
  // value: checking a value's type can run Python code (a __class__
  // property, __index__) that changes the dict, which would free what a
  // walk over the dict itself holds only borrowed.
  const auto items = py::reinterpret_steal<py::list>(PyDict_Items(h.ptr()));
  if (!items) throw py::error_already_set();
  for (const py::handle item : items) {
    const auto kv = py::reinterpret_borrow<py::tuple>(item);
    const py::object k = kv[0];
    const py::object v = kv[1];
    if (!py::isinstance<py::str>(k)) type_error("metadata keys must be str, not " + type_name(k));
    std::string key = utf8(k, "a metadata key");
    Value value = to_value(v, key);
    // Two str keys of the same text (a subclass that compares by identity)
    // would keep one value and drop the other without a word.
    if (!m.emplace(key, std::move(value)).second) value_error("metadata key '" + key + "' is given twice");
  }
  return m;
}

py::object from_metadata(const Metadata* m) {
  if (m == nullptr) return py::none();
  // Text is UTF-8, but a snapshot written through an index used directly
  // (before its insert checked) may hold other bytes: they come back as
  // lone surrogates (as os.fsdecode gives them), never a UnicodeDecodeError.
  const auto text = [](const std::string& s) {
    PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "surrogateescape");
    if (o == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::str>(o);
  };
  py::dict d;
  for (const auto& [k, v] : *m) {
    const py::str key = text(k);
    switch (v.kind()) {
      case Value::Kind::String: d[key] = text(v.as_string()); break;
      case Value::Kind::Int: d[key] = py::int_(v.as_int()); break;
      case Value::Kind::Float: d[key] = py::float_(v.as_float()); break;
      case Value::Kind::Bool: d[key] = py::bool_(v.as_bool()); break;
      case Value::Kind::Null: d[key] = py::none(); break;
    }
  }
  return d;
}

DistanceMetric to_metric(py::handle h) {
  if (py::isinstance<py::str>(h)) {
    const std::string name = utf8(h, "a metric name");
    const auto m = metric_from_name(name);
    if (!m) value_error("unknown metric '" + name + "' (cosine, dotproduct, euclidean, manhattan, hamming)");
    return *m;
  }
  try {
    return h.cast<DistanceMetric>();
  } catch (const py::cast_error&) {
    type_error("metric must be a Metric or its name, not " + type_name(h));
  }
}

Vector as_vector(py::handle h, std::optional<std::uint64_t> dim, const char* what) {
  py::array a = float32_array(h, what);
  if (a.ndim() != 1 || (dim && static_cast<std::uint64_t>(a.shape(0)) != *dim)) {
    value_error(std::string(what) + " must have shape (" + (dim ? std::to_string(*dim) : "dim") + ",), not " +
                shape_of(a));
  }
  const auto* p = static_cast<const float*>(a.data());
  return Vector{a, {p, static_cast<std::size_t>(a.shape(0))}};
}

Rows as_rows(py::handle h, std::optional<std::uint64_t> dim, const char* what) {
  py::array a = float32_array(h, what);
  if (a.ndim() != 2 || (dim && static_cast<std::uint64_t>(a.shape(1)) != *dim)) {
    value_error(std::string(what) + " must have shape (n, " + (dim ? std::to_string(*dim) : "dim") + "), not " +
                shape_of(a));
  }
  const auto n = static_cast<std::size_t>(a.shape(0));
  const auto* p = static_cast<const float*>(a.data());
  return Rows{a, {p, n * static_cast<std::size_t>(a.shape(1))}, n};
}

bool is_batch_of_rows(py::handle vectors) {
  if (!py::isinstance<py::array>(vectors)) return false;
  const auto a = py::reinterpret_borrow<py::array>(vectors);
  if (a.ndim() == 2) return true;
  if (a.ndim() != 1) {
    value_error("vectors must have shape (dim,) for one vector or (n, dim) for a batch, not " + shape_of(a));
  }
  return false;
}

Queries as_queries(py::handle h, std::optional<std::uint64_t> dim) {
  if (py::isinstance<py::array>(h) && py::reinterpret_borrow<py::array>(h).ndim() == 1) {
    Vector v = as_vector(h, dim, "query");
    return Queries{Rows{v.array, v.floats, 1}, true, v.floats.size()};
  }
  Rows rows = as_rows(h, dim, "queries");
  const auto cols = static_cast<std::size_t>(rows.array.shape(1));
  return Queries{std::move(rows), false, cols};
}

namespace {

Ids ids_from_array(const py::array& a, std::size_t n) {
  const char kind = a.dtype().kind();
  if (kind != 'u' && kind != 'i') type_error("an ids array must have an integer dtype, not " + std::string(py::str(a.dtype())));
  if (a.ndim() != 1 || static_cast<std::size_t>(a.shape(0)) != n) {
    value_error("ids must have shape (" + std::to_string(n) + ",), not " + shape_of(a));
  }
  require_aligned(a, "an ids array", static_cast<std::size_t>(a.itemsize()));
  Ids ids;
  const bool in_place = kind == 'u' && a.itemsize() == sizeof(std::uint64_t) && a.dtype().attr("isnative").cast<bool>() &&
                        (a.flags() & py::array::c_style) != 0;
  if (in_place) {
    ids.keep = a;
    ids.u64 = {static_cast<const std::uint64_t*>(a.data()), n};
    return ids;
  }
  if (kind == 'i') {
    // Copied, then checked: the copy is what the batch holds (a thread that
    // released the GIL may be writing into the array meanwhile).
    const auto s = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
    ids.copied.assign(s.data(), s.data() + n);
    for (std::size_t i = 0; i < n; ++i) {
      if (static_cast<std::int64_t>(ids.copied[i]) < 0) {
        value_error("ids must be non-negative (ids[" + std::to_string(i) + "] is negative)");
      }
    }
  } else {
    const auto u = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>::ensure(a);
    ids.copied.assign(u.data(), u.data() + n);
  }
  ids.u64 = ids.copied;
  return ids;
}

}  // namespace

Ids to_ids(py::handle h, std::size_t n) {
  // An object array (what search() returns when an id is bytes) is read as
  // a sequence of ids; any other array must hold integers.
  if (py::isinstance<py::array>(h)) {
    const auto a = py::reinterpret_borrow<py::array>(h);
    if (a.dtype().kind() != 'O' || a.ndim() != 1) return ids_from_array(a, n);
  }
  // (A bytes-like object is a sequence of small ints, but never meant as
  // ids: one id of bytes, or a buffer, is refused.)
  if (!py::isinstance<py::sequence>(h) || py::isinstance<py::str>(h) || py::isinstance<py::bytes>(h) ||
      PyByteArray_Check(h.ptr()) || PyMemoryView_Check(h.ptr())) {
    type_error("ids must be a numpy integer array or a sequence of int / bytes, not " + type_name(h));
  }
  const auto seq = py::reinterpret_borrow<py::sequence>(h);
  if (seq.size() != n) value_error("got " + std::to_string(seq.size()) + " ids for " + std::to_string(n) + " vectors");
  Ids ids;
  std::vector<VectorId> all;
  all.reserve(n);
  bool any_bytes = false;
  for (std::size_t i = 0; i < n; ++i) {
    all.push_back(to_id(seq[i]));
    any_bytes = any_bytes || all.back().is_bytes();
  }
  if (any_bytes) {
    ids.general = std::move(all);
    return ids;
  }
  ids.copied.reserve(n);
  for (const VectorId& id : all) ids.copied.push_back(id.as_u64());
  ids.u64 = ids.copied;
  return ids;
}

std::vector<std::optional<Metadata>> to_metadata_list(py::handle h, std::size_t n) {
  std::vector<std::optional<Metadata>> out;
  if (h.is_none()) return out;
  if (!py::isinstance<py::sequence>(h) || py::isinstance<py::dict>(h)) {
    type_error("metadata of a batch must be a sequence of dict | None, not " + type_name(h));
  }
  const auto seq = py::reinterpret_borrow<py::sequence>(h);
  if (seq.size() != n) value_error("got " + std::to_string(seq.size()) + " metadata for " + std::to_string(n) + " vectors");
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) out.push_back(to_metadata(seq[i]));
  return out;
}

py::tuple to_numpy(const HitTable& t, bool single) {
  std::size_t k = 0;
  bool any_bytes = false;
  for (const auto& row : t.ids) {
    k = std::max(k, row.size());
    for (const VectorId& id : row) any_bytes = any_bytes || id.is_bytes();
  }
  const std::size_t n = t.ids.size();
  py::array_t<float> dist({n, k});
  auto d = dist.mutable_unchecked<2>();
  py::array ids = any_bytes ? py::array(py::dtype("O"), {n, k}) : py::array(py::dtype::of<std::uint64_t>(), {n, k});
  for (std::size_t q = 0; q < n; ++q) {
    for (std::size_t j = 0; j < k; ++j) {
      const bool hit = j < t.ids[q].size();
      d(q, j) = hit ? t.distances[q][j] : std::numeric_limits<float>::infinity();
      const auto at = static_cast<py::ssize_t>(q * k + j);
      if (any_bytes) {
        // An object array holds references (None pads); it starts empty
        // (NULL) or full of None, depending on numpy's version.
        PyObject** slot = static_cast<PyObject**>(ids.mutable_data()) + at;
        PyObject* old = *slot;
        *slot = (hit ? from_id(t.ids[q][j]) : py::none()).release().ptr();
        Py_XDECREF(old);
      } else {
        static_cast<std::uint64_t*>(ids.mutable_data())[at] =
            hit ? t.ids[q][j].as_u64() : std::numeric_limits<std::uint64_t>::max();
      }
    }
  }
  if (single) return py::make_tuple(ids.attr("reshape")(k), dist.attr("reshape")(k));
  return py::make_tuple(ids, dist);
}

OneInsert to_one_insert(py::handle id, py::handle vector, py::handle metadata, std::optional<std::uint64_t> dim) {
  VectorId vid = to_id(id);
  (void)as_vector(vector, dim);  // its errors before the metadata's
  std::optional<Metadata> meta = to_metadata(metadata);
  return OneInsert{std::move(vid), std::move(meta), as_vector(vector, dim)};
}

RowsInsert to_rows_insert(py::handle ids, py::handle vectors, py::handle metadata, std::optional<std::uint64_t> dim) {
  const std::size_t n = as_rows(vectors, dim).n;  // its errors first
  std::vector<std::optional<Metadata>> metas = to_metadata_list(metadata, n);
  Ids id = to_ids(ids, n);
  Rows rows = as_rows(vectors, dim);
  if (rows.n != n) throw py::value_error("the vectors array changed while the ids and metadata were read");
  return RowsInsert{std::move(metas), std::move(id), std::move(rows)};
}

}  // namespace iqdb::persist::python
