// The extension module iqdb_persist._iqdb_persist (docs/PYTHON.md).
#include "bindings.hpp"
#include "convert.hpp"

PYBIND11_MODULE(_iqdb_persist, m) {
  namespace p = iqdb::persist::python;
  m.doc() = "Crash-safe persistence for vector-search indexes (the C++ core of iqdb_persist).";
  m.attr("__version__") = std::string(iqdb::persist::VERSION);
  p::init_numpy_scalars();
  p::register_errors(m);
  p::register_config(m);
  p::register_replica_types(m);
  p::register_flat(m);
  p::register_hnswlib(m);
  p::register_faiss(m);
  p::register_rados(m);
}
