// Conversions between Python objects and the library's types, each checking
// what a Python caller passes (docs/PYTHON.md, "Types"): hostile input is a
// TypeError / ValueError naming what was expected, raised before anything is
// logged.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include <iqdb/persist.hpp>

namespace iqdb::persist::python {

namespace py = pybind11;

// numpy's scalar types, looked up once when the module is imported (under
// the GIL, before any conversion runs): what indexing a numpy array gives,
// so that an id taken from search() or from an ids array, and a metadata
// value taken from a numpy column, are accepted as the int, float or bool
// they stand for.
void init_numpy_scalars();

// An int (or numpy integer) in 0..2^64-1 or a non-empty bytes object.
VectorId to_id(py::handle h);
py::object from_id(const VectorId& id);
py::object from_id(std::uint64_t id);

// The k of a search: an int (or numpy integer) >= 0, not a bool; one above
// 2**64-1 is taken as 2**64-1 (every hit).
std::size_t to_k(py::handle h);

// None or a dict of str to str | int (int64) | float | bool | None; numpy
// integers, floats and bools count as int, float and bool.
std::optional<Metadata> to_metadata(py::handle h);
py::object from_metadata(const Metadata* m);

// A Cosine / ... member of Metric, or its name ("cosine", case-insensitive).
DistanceMetric to_metric(py::handle h);

// A float32 numpy array of shape (dim,), C-contiguous, viewed in place. The
// array object is kept so the memory lives as long as the view. dim nullopt:
// any length (a WriteBatch, checked against the index when written).
struct Vector {
  py::array array;
  std::span<const float> floats;
};
Vector as_vector(py::handle h, std::optional<std::uint64_t> dim, const char* what = "vector");

// Whether an insert's `vectors` is a batch: true for a 2-D numpy array,
// false for anything else that is not an array of another rank (a 1-D array
// is one vector; a non-array is left to as_vector's message). A numpy array
// of any other rank is a ValueError naming both shapes accepted, raised
// before the ids are looked at.
bool is_batch_of_rows(py::handle vectors);

// A float32 numpy array of shape (n, dim), C-contiguous, viewed in place.
struct Rows {
  py::array array;
  std::span<const float> floats;
  std::size_t n = 0;
};
Rows as_rows(py::handle h, std::optional<std::uint64_t> dim, const char* what = "vectors");

// A float32 array of shape (dim,) or (n, dim): a query or a block of them.
// dim nullopt: any dimension (checked against the index under its lock).
struct Queries {
  Rows rows;
  bool single = false;
  std::size_t dim = 0;  // the queries' own dimension (a (0, d) block has one too)
};
Queries as_queries(py::handle h, std::optional<std::uint64_t> dim);

// Ids of a batch: a numpy array of unsigned (or non-negative) integers,
// viewed in place when it is C-contiguous uint64; or a sequence of int /
// bytes. `n` rows are expected.
struct Ids {
  py::object keep;
  std::vector<std::uint64_t> copied;     // when not viewed in place
  std::span<const std::uint64_t> u64;    // all ids are ints: here
  std::vector<VectorId> general;         // some ids are bytes: here (u64 empty)
  bool all_u64() const noexcept { return general.empty(); }
};
Ids to_ids(py::handle h, std::size_t n);

// None, or a sequence of n (dict | None).
std::vector<std::optional<Metadata>> to_metadata_list(py::handle h, std::size_t n);

// Search results as numpy arrays: ids (uint64, or object when any id is
// bytes) and float32 distances; 1-D for one query, (n, k) for several, rows
// padded (id 2^64-1 or None, distance inf) when a query found fewer.
struct HitTable {
  std::vector<std::vector<VectorId>> ids;
  std::vector<std::vector<float>> distances;
};
py::tuple to_numpy(const HitTable& t, bool single);

// The arguments of one insert, converted in the one safe order: the id, the
// vector's own errors, the metadata, then the vector's view last.
// Converting an id or metadata can run Python code (__index__, a __class__
// property, a sequence's __getitem__) that could resize the array and free
// the memory a view taken earlier would read. dim nullopt: any length.
struct OneInsert {
  VectorId id;
  std::optional<Metadata> meta;
  Vector vector;
};
OneInsert to_one_insert(py::handle id, py::handle vector, py::handle metadata, std::optional<std::uint64_t> dim);

// The arguments of a batch of rows, in the same order: the rows' own
// errors, the metadata, the ids (a uint64 array is viewed in place), then
// the rows' view last, checked to hold as many rows as before.
struct RowsInsert {
  std::vector<std::optional<Metadata>> metas;  // empty: no metadata
  Ids ids;
  Rows rows;
};
RowsInsert to_rows_insert(py::handle ids, py::handle vectors, py::handle metadata, std::optional<std::uint64_t> dim);

}  // namespace iqdb::persist::python
