// The read methods a persisted index (persisted.hpp) and a read replica
// (replica.hpp) share: search, metadata, get (FlatIndex), len, in, dim.
// W is the Python object's C++ side: it has `current_dim()`, `query_dim()`
// (the dimension queries are checked against before the lock, or nullopt:
// under it) and `reading(f)`, which
// runs f(const I&) under the index's read lock with the GIL released (f
// must not touch Python objects). Results are copied under the lock and
// converted to Python objects after it.
#pragma once

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "convert.hpp"

namespace iqdb::persist::python {

inline py::object str_or_none(const std::optional<std::string>& s) {
  return s ? py::object(py::str(*s)) : py::object(py::none());
}

inline VectorId hit_id(const VectorId& id) { return id; }
inline VectorId hit_id(std::uint64_t id) { return VectorId(id); }

// Search every row of `q` in `ix` (GIL released by the caller).
template <class I>
HitTable search_rows(const I& ix, const Queries& q, std::size_t k) {
  HitTable t;
  t.ids.resize(q.rows.n);
  t.distances.resize(q.rows.n);
  const std::size_t dim = static_cast<std::size_t>(ix.dim());
  // Checked here, under the index's lock, where the caller could not check
  // the dimension before (a replica's, which a catch-up that loads anew can
  // change: query_dim() nullopt).
  if (q.dim != dim) {
    throw py::value_error("the queries have dimension " + std::to_string(q.dim) + ", the index has " + std::to_string(dim));
  }
  for (std::size_t r = 0; r < q.rows.n; ++r) {
    for (const auto& h : ix.search(q.rows.floats.subspan(r * dim, dim), k)) {
      t.ids[r].push_back(hit_id(h.id));
      t.distances[r].push_back(h.distance);
    }
  }
  return t;
}

template <class I, class W>
void bind_reads(py::class_<W>& c) {
  // Cached or lock-free attributes only (a replica's dim and metric wait for
  // the catch-up of one log frame at most): a repr never waits for a
  // checkpoint.
  c.def("__repr__",
        [](py::handle self) {
          return py::str("{}({!r}, dim={}, metric={})")
              .format(py::type::of(self).attr("__name__"), self.attr("path"), self.attr("dim"),
                      py::str(self.attr("metric")));
        })
      .def(
       "search",
       [](W& w, py::handle query, py::handle k_arg) {
            const std::size_t k = to_k(k_arg);
         const Queries q = as_queries(query, w.query_dim());
         const HitTable t = w.reading([&](const I& ix) { return search_rows(ix, q, k); });
         return to_numpy(t, q.single);
       },
       py::arg("query"), py::arg("k"),
       "(ids, distances) of the k nearest vectors: 1-D arrays for one query (shape (dim,)); for n queries "
       "(shape (n, dim)) arrays of shape (n, k'), k' the most hits any query got (at most k, and at most the "
       "number of vectors), shorter rows padded with id 2**64-1 / None and distance inf.")
      .def(
          "metadata",
          [](W& w, py::handle id) {
            const VectorId vid = to_id(id);
            const std::optional<Metadata> meta = w.reading([&](const I& ix) -> std::optional<Metadata> {
              const Metadata* found = ix.metadata(vid);
              return found != nullptr ? std::optional<Metadata>(*found) : std::nullopt;
            });
            return from_metadata(meta ? &*meta : nullptr);
          },
          py::arg("id"), "The metadata dict of an id, or None.")
      .def_property_readonly("dim", [](W& w) { return w.current_dim(); })
      .def("__len__", [](W& w) { return w.reading([](const I& ix) { return ix.size(); }); })
      .def("__contains__", [](W& w, py::handle id) {
        const VectorId vid = to_id(id);
        return w.reading([&](const I& ix) { return ix.contains(vid); });
      });
}

// get(id) of a FlatIndex's persisted index or replica.
template <class W>
void bind_flat_get(py::class_<W>& c) {
  c.def(
      "get",
      [](W& w, py::handle id) -> py::object {
        const VectorId vid = to_id(id);
        const std::vector<float> v = w.reading([&](const FlatIndex& ix) {
          const std::span<const float> found = ix.get(vid);
          return std::vector<float>(found.begin(), found.end());
        });
        if (v.empty()) return py::none();
        py::array_t<float> out(static_cast<py::ssize_t>(v.size()));
        std::copy(v.begin(), v.end(), out.mutable_data());
        return out;
      },
      py::arg("id"), "A copy of the stored vector of an id (float32), or None.");
}

}  // namespace iqdb::persist::python
