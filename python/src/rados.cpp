// PersistConfig("rados://POOL/NAME", ...): an index in a Ceph RADOS pool
// (docs/PYTHON.md, "RADOS"), through rados_persist_config when the module
// was built with the RADOS component (IQDB_PY_HAVE_RADOS), else a typed
// Unsupported error. Also iqdb_persist.HAVE_RADOS.
#include "bindings.hpp"

#if defined(IQDB_PY_HAVE_RADOS)
#include <iqdb/persist/rados.hpp>
#endif

namespace iqdb::persist::python {

bool is_rados_path(const std::filesystem::path& path) { return path.native().starts_with("rados:"); }

bool RadosKeywords::any() const {
  return ceph_conf || client_id || op_timeout_s || connect_timeout_s || lock_lease_s || take_over ||
         take_over_timeout_s || blocklist_previous || reader_grace_s;
}

#if defined(IQDB_PY_HAVE_RADOS)

namespace {

// Checked here, at construction, so that the error names the keyword (the
// library checks the same ranges, the lease only when the lock is taken).
std::chrono::seconds seconds(const char* name, std::int64_t s, std::int64_t lo) {
  constexpr std::int64_t kDay = 86400;
  if (s < lo || s > kDay) {
    throw PersistError::argument(std::string(name) + " = " + std::to_string(s) + " is outside " + std::to_string(lo) +
                                 " .. " + std::to_string(kDay) + " seconds");
  }
  return std::chrono::seconds(s);
}

}  // namespace

PersistConfig rados_config(const std::filesystem::path& url, const RadosKeywords& kw) {
  RadosLocation location = RadosLocation::parse(url.native());
  if (kw.ceph_conf) location.conf_path = *kw.ceph_conf;
  if (kw.client_id) location.client_id = *kw.client_id;
  RadosOptions options;
  if (kw.op_timeout_s) options.op_timeout = seconds("op_timeout_s", *kw.op_timeout_s, 1);
  if (kw.connect_timeout_s) options.connect_timeout = seconds("connect_timeout_s", *kw.connect_timeout_s, 1);
  if (kw.reader_grace_s) options.reader_grace = seconds("reader_grace_s", *kw.reader_grace_s, 0);
  RadosLockOptions lock;
  if (kw.lock_lease_s) lock.lease = seconds("lock_lease_s", *kw.lock_lease_s, 2);
  if (kw.take_over) lock.take_over = *kw.take_over;
  if (kw.take_over_timeout_s) lock.wait_timeout = seconds("take_over_timeout_s", *kw.take_over_timeout_s, 0);
  if (kw.blocklist_previous) lock.blocklist_previous = *kw.blocklist_previous;
  // Connecting waits up to connect_timeout.
  return without_gil([&] { return rados_persist_config(location, options, lock); });
}

void register_rados(py::module_& m) { m.attr("HAVE_RADOS") = true; }

#else

PersistConfig rados_config(const std::filesystem::path& url, const RadosKeywords&) {
  throw PersistError::at(ErrorKind::Unsupported, url,
                         "this build of iqdb_persist has no RADOS support: install librados-dev "
                         "(scripts/deps.sh rados) and rebuild the module (pip install again, or CMake "
                         "with -DIQDB_PERSIST_WITH_RADOS=ON)");
}

void register_rados(py::module_& m) { m.attr("HAVE_RADOS") = false; }

#endif

}  // namespace iqdb::persist::python
