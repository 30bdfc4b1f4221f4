// HnswlibIndex, PersistedHnswlibIndex and HnswlibReadReplica (when the hnswlib adapter was built).
#include "persisted.hpp"
#include "replica.hpp"

#ifdef IQDB_PY_HAVE_HNSWLIB
#include <iqdb/persist/adapters/hnswlib.hpp>
#endif

namespace iqdb::persist::python {

void register_hnswlib([[maybe_unused]] py::module_& m) {
#ifdef IQDB_PY_HAVE_HNSWLIB
  py::class_<Owned<HnswlibIndex>> c(m, "HnswlibIndex",
                                    "hnswlib HNSW graph: HnswlibIndex(dim, metric, M=16, ef_construction=200, ef=10, "
                                    "random_seed=100, initial_capacity=0). Ids are ints.");
  const HnswlibParams d{};
  c.def(py::init([](std::uint64_t dim, py::handle metric, std::size_t M, std::size_t ef_construction, std::size_t ef,
                    std::size_t random_seed, std::size_t initial_capacity) {
          const HnswlibParams p{M, ef_construction, ef, random_seed, initial_capacity};
          return Owned<HnswlibIndex>{HnswlibIndex(dim, to_metric(metric), p)};
        }),
        py::arg("dim"), py::arg("metric") = DistanceMetric::Euclidean, py::kw_only(), py::arg("M") = d.M,
        py::arg("ef_construction") = d.ef_construction, py::arg("ef") = d.ef, py::arg("random_seed") = d.random_seed,
        py::arg("initial_capacity") = d.initial_capacity);
  bind_index_methods(c);
  bind_persisted<HnswlibIndex>(m, "PersistedHnswlibIndex", "An HnswlibIndex with durable, crash-safe persistence.");
  bind_replica<HnswlibIndex>(m, "HnswlibReadReplica", "A read-only HnswlibIndex that follows its writer's log.");
#endif
}

}  // namespace iqdb::persist::python
