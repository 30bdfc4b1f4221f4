// The pieces of the module _iqdb_persist (module.cpp registers them), and
// the templates that bind PersistedIndex<I> and ReadReplica<I> for each
// index type (persisted.hpp, replica.hpp). docs/PYTHON.md describes the Python API.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <exception>
#include <filesystem>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include <iqdb/persist.hpp>

namespace iqdb::persist::python {

namespace py = pybind11;

// The GIL let go for the scope, as py::gil_scoped_release, but one that
// lets a thread end at the interpreter's exit. There, taking the GIL back
// ends any thread but the finalizing one (a daemon thread still inside a
// call) with pthread_exit, whose unwinding std::terminate stops at the
// first noexcept frame: gil_scoped_release's destructor is one (SIGABRT,
// pybind11 issue 2215); this one lets the unwinding pass, and pybind11's
// dispatcher rethrows it. Only through without_gil: taken back while an
// exception unwinds, pthread_exit's unwinding would start inside it
// (std::terminate). Not for destructors, which are noexcept: they keep the
// GIL (Persisted, Replica, ConfigDeleter).
class ReleasedGil {
 public:
  ReleasedGil() : state_(PyEval_SaveThread()) {}
  ~ReleasedGil() noexcept(false) { PyEval_RestoreThread(state_); }
  ReleasedGil(const ReleasedGil&) = delete;
  ReleasedGil& operator=(const ReleasedGil&) = delete;

 private:
  PyThreadState* state_;
};

// f() with the GIL released (f must not touch Python objects). What f
// throws is caught while the GIL is let go and thrown again once it is
// back, so that the GIL is never taken back during an unwinding (a library
// error raised in a daemon thread at the interpreter's exit used to end
// the process with SIGABRT).
template <class F>
decltype(auto) without_gil(F&& f) {
  using R = decltype(std::forward<F>(f)());
  static_assert(!std::is_reference_v<R>, "without_gil returns values");
  std::exception_ptr error;
  if constexpr (std::is_void_v<R>) {
    {
      ReleasedGil rel;
      try {
        std::forward<F>(f)();
      } catch (...) {
        error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
  } else {
    std::optional<R> out;
    {
      ReleasedGil rel;
      try {
        out.emplace(std::forward<F>(f)());
      } catch (...) {
        error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
    return R(std::move(*out));
  }
}

// A filesystem path as a Python str, as os.fsdecode gives it: bytes that
// are not UTF-8 (a legal Linux file name) become lone surrogates instead of
// a UnicodeDecodeError.
py::str path_str(const std::filesystem::path& p);
// Text that may hold such a path (an error message), with the same escapes.
py::str text_str(const std::string& s);

void register_errors(py::module_& m);
void register_config(py::module_& m);
void register_replica_types(py::module_& m);
void register_flat(py::module_& m);
// Each registers nothing when its adapter was not built.
void register_hnswlib(py::module_& m);
void register_faiss(py::module_& m);
// iqdb_persist.HAVE_RADOS (rados.cpp).
void register_rados(py::module_& m);

// The keyword arguments of PersistConfig that only a `rados://` path takes
// (docs/PYTHON.md, "RADOS"); None keeps the C++ default.
struct RadosKeywords {
  std::optional<std::string> ceph_conf;
  std::optional<std::string> client_id;
  std::optional<std::int64_t> op_timeout_s;
  std::optional<std::int64_t> connect_timeout_s;
  std::optional<std::int64_t> lock_lease_s;
  std::optional<bool> take_over;
  std::optional<std::int64_t> take_over_timeout_s;
  std::optional<bool> blocklist_previous;
  std::optional<std::int64_t> reader_grace_s;
  bool any() const;
};
// Whether a PersistConfig path names a RADOS location (`rados:...`).
bool is_rados_path(const std::filesystem::path& path);
// rados_persist_config for `url` (connects to the cluster: GIL released),
// or PersistError(Unsupported) when the module was built without RADOS.
PersistConfig rados_config(const std::filesystem::path& url, const RadosKeywords& kw);

// WriteBatch as Python sees it. write() reads the batch with the GIL
// released, so another Python thread could change it meanwhile (freeing the
// memory being logged and applied): while a write() of it runs, changing it
// raises BufferError, as resizing a bytearray with a view of it does.
struct PyWriteBatch : WriteBatch {
  int writing = 0;  // write() calls reading it; touched with the GIL held only
  WriteBatch& changeable() {
    if (writing != 0) {
      throw py::buffer_error("this WriteBatch is being written by write() in another thread: change it after that returns");
    }
    return *this;
  }
  // Marks the batch as being read from construction to destruction; both
  // with the GIL held.
  class Reading {
   public:
    explicit Reading(PyWriteBatch& b) : b_(b) { ++b_.writing; }
    ~Reading() { --b_.writing; }
    Reading(const Reading&) = delete;
    Reading& operator=(const Reading&) = delete;

   private:
    PyWriteBatch& b_;
  };
};

// An index object handed to Python: open_with() moves the index out, after
// which the Python object refuses every call (ValueError); an open_with that
// fails puts it back (give_back).
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
  void give_back(I&& i) { ix.emplace(std::move(i)); }
};

}  // namespace iqdb::persist::python
