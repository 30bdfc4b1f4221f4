// The pieces of the module _iqdb_persist (module.cpp registers them), and
// the templates that bind PersistedIndex<I> and ReadReplica<I> for each
// index type (persisted.hpp, replica.hpp). docs/PYTHON.md describes the Python API.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <iqdb/persist.hpp>

namespace iqdb::persist::python {

namespace py = pybind11;

void register_errors(py::module_& m);
void register_config(py::module_& m);
void register_replica_types(py::module_& m);
void register_flat(py::module_& m);
// Each registers nothing when its adapter was not built.
void register_hnswlib(py::module_& m);
void register_faiss(py::module_& m);

// An index object handed to Python: open_with() moves the index out, after
// which the Python object refuses every call (ValueError).
template <class I>
struct Owned {
  std::optional<I> ix;
  I& get() {
    if (!ix) throw py::value_error("this index was moved into a persisted index (open_with)");
    return *ix;
  }
  I take() {
    I out = std::move(get());
    ix.reset();
    return out;
  }
};

}  // namespace iqdb::persist::python
