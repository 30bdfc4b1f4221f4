// FlatIndex, PersistedFlatIndex and FlatReadReplica.
#include "persisted.hpp"
#include "replica.hpp"

namespace iqdb::persist::python {

void register_flat(py::module_& m) {
  py::class_<Owned<FlatIndex>> c(m, "FlatIndex", "Exact (brute-force) index: FlatIndex(dim, metric).");
  c.def(py::init([](std::uint64_t dim, py::handle metric) { return Owned<FlatIndex>{FlatIndex(dim, to_metric(metric))}; }),
        py::arg("dim"), py::arg("metric") = DistanceMetric::Euclidean);
  bind_index_methods(c);
  auto p = bind_persisted<FlatIndex>(m, "PersistedFlatIndex", "A FlatIndex with durable, crash-safe persistence.");
  bind_flat_get(p);
  auto r = bind_replica<FlatIndex>(m, "FlatReadReplica", "A read-only FlatIndex that follows its writer's log.");
  bind_flat_get(r);
}

}  // namespace iqdb::persist::python
