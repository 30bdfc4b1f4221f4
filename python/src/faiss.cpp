// FaissIndex, PersistedFaissIndex and FaissReadReplica (when the FAISS adapter was built).
// A FAISS index comes from a factory string (faiss::index_factory) or from
// the bytes of faiss.serialize_index (so any index built with Debian's
// python3-faiss can be persisted).
#include "persisted.hpp"
#include "replica.hpp"

#ifdef IQDB_PY_HAVE_FAISS
#include <faiss/Index.h>
#include <faiss/impl/io.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>

#include <limits>
#include <string>

#include <iqdb/persist/adapters/faiss.hpp>
#endif

namespace iqdb::persist::python {

#ifdef IQDB_PY_HAVE_FAISS
namespace {

faiss::MetricType faiss_metric(DistanceMetric m) {
  switch (m) {
    case DistanceMetric::Euclidean: return faiss::METRIC_L2;
    case DistanceMetric::DotProduct:
    case DistanceMetric::Cosine: return faiss::METRIC_INNER_PRODUCT;
    case DistanceMetric::Manhattan: return faiss::METRIC_L1;
    default: throw py::value_error("the FAISS adapter takes Euclidean, DotProduct, Cosine or Manhattan");
  }
}

// FAISS reports its own errors as faiss::FaissException (a std::exception).
template <class F>
auto faiss_call(F&& f) {
  try {
    return std::forward<F>(f)();
  } catch (const PersistError&) {
    throw;
  } catch (const std::exception& e) {
    throw py::value_error(std::string("FAISS: ") + e.what());
  }
}

Owned<FaissIndex> from_factory(std::uint64_t dim, const std::string& description, py::handle metric) {
  const DistanceMetric m = to_metric(metric);
  // FAISS takes an int dimension and a C string: no silent wrap or cut.
  if (dim > static_cast<std::uint64_t>(std::numeric_limits<int>::max())) {
    throw py::value_error("FaissIndex.from_factory: dim " + std::to_string(dim) + " is above FAISS's limit " +
                          std::to_string(std::numeric_limits<int>::max()));
  }
  if (description.find('\0') != std::string::npos) {
    throw py::value_error("FaissIndex.from_factory: the description holds a NUL character");
  }
  std::unique_ptr<faiss::Index> ix(faiss_call([&] {
    return faiss::index_factory(static_cast<int>(dim), description.c_str(), faiss_metric(m));
  }));
  return Owned<FaissIndex>{FaissIndex(std::move(ix), FaissOptions{m == DistanceMetric::Cosine})};
}

// Read as a snapshot's FAISS bytes are (FaissIndex::from_serialized): hostile.
Owned<FaissIndex> from_serialized(const py::bytes& data, bool cosine) {
  char* p = nullptr;
  Py_ssize_t n = 0;
  if (PyBytes_AsStringAndSize(data.ptr(), &p, &n) != 0) throw py::error_already_set();
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(p), static_cast<std::size_t>(n));
  // (The bytes object stays referenced by the caller.)
  return without_gil([&] {
    return faiss_call([&] { return Owned<FaissIndex>{FaissIndex::from_serialized(bytes, FaissOptions{cosine})}; });
  });
}

}  // namespace
#endif

void register_faiss([[maybe_unused]] py::module_& m) {
#ifdef IQDB_PY_HAVE_FAISS
  py::class_<Owned<FaissIndex>> c(m, "FaissIndex",
                                  "A FAISS index (IndexFlat, IndexHNSWFlat, IndexIVFFlat, bare or in an IDMap): "
                                  "FaissIndex.from_factory(dim, 'IDMap2,Flat', metric) or "
                                  "FaissIndex.from_serialized(faiss.serialize_index(index).tobytes()). Ids are ints.");
  c.def_static("from_factory", &from_factory, py::arg("dim"), py::arg("description"),
               py::arg("metric") = DistanceMetric::Euclidean, "faiss::index_factory(dim, description, metric).")
      .def_static("from_serialized", &from_serialized, py::arg("data"), py::arg("cosine") = false,
                  "An index from the bytes of faiss.serialize_index (cosine: an inner-product index over "
                  "normalized vectors).");
  bind_index_methods(c);
  bind_persisted<FaissIndex>(m, "PersistedFaissIndex", "A FaissIndex with durable, crash-safe persistence.");
  bind_replica<FaissIndex>(m, "FaissReadReplica", "A read-only FaissIndex that follows its writer's log.");
#endif
}

}  // namespace iqdb::persist::python
