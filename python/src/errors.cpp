// PersistError -> the Python exception of its kind (iqdb_persist/_errors.py),
// with kind, path, offset and errno attributes.
#include "bindings.hpp"

namespace iqdb::persist::python {

namespace {

void raise_persist_error(const PersistError& e) {
  const py::object cls = py::module_::import("iqdb_persist._errors").attr("error_class")(std::string(to_string(e.kind())));
  const py::object exc = cls(text_str(e.what()));
  exc.attr("kind") = py::str(std::string(to_string(e.kind())));
  exc.attr("path") = e.path().empty() ? py::object(py::none()) : py::object(path_str(e.path()));
  exc.attr("offset") = e.offset() ? py::object(py::int_(*e.offset())) : py::object(py::none());
  exc.attr("errno") = e.sys_errno() != 0 ? py::object(py::int_(e.sys_errno())) : py::object(py::none());
  PyErr_SetObject(cls.ptr(), exc.ptr());
}

}  // namespace

py::str text_str(const std::string& s) {
  PyObject* o = PyUnicode_DecodeFSDefaultAndSize(s.data(), static_cast<Py_ssize_t>(s.size()));
  if (o == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

py::str path_str(const std::filesystem::path& p) { return text_str(p.string()); }

void register_errors(py::module_& /*m*/) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const PersistError& e) {
      raise_persist_error(e);
    }
  });
}

}  // namespace iqdb::persist::python
