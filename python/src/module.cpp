// The extension module iqdb_persist._iqdb_persist (docs/PYTHON.md).
#include <new>

#include "bindings.hpp"
#include "convert.hpp"

namespace iqdb::persist::python {
namespace {

// pybind11 gives an object made by `Cls.__new__(Cls)`, whose __init__
// never ran, a lazily allocated C++ value that was never constructed
// (pybind11/detail/type_caster_base.h, load_value) the first time a method
// reads it: garbage read as an index, a replica or a config (a crash, a
// hang, a wrong answer). This allocator takes its place for every class of
// the module, so such an object refuses every use with a TypeError.
// pybind11 uses it for nothing else: __init__, factories and unpickling
// construct through the instance's holder.
[[noreturn]] void* refuse_uninitialised(std::size_t) {
  throw py::type_error(
      "this object was never initialised (made by __new__ without __init__): construct it by calling the class");
}

void refuse_uninitialised_objects(py::module_& m) {
  for (auto item : m.attr("__dict__").cast<py::dict>()) {
    if (!PyType_Check(item.second.ptr())) continue;
    auto* info = py::detail::get_type_info(reinterpret_cast<PyTypeObject*>(item.second.ptr()));
    if (info != nullptr) info->operator_new = &refuse_uninitialised;
  }
}

}  // namespace
}  // namespace iqdb::persist::python

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
  p::refuse_uninitialised_objects(m);  // last: every class is registered
}
