// FlatIndex and PersistedFlatIndex.
#include "persisted.hpp"

namespace iqdb::persist::python {

void register_flat(py::module_& m) {
  py::class_<Owned<FlatIndex>> c(m, "FlatIndex", "Exact (brute-force) index: FlatIndex(dim, metric).");
  c.def(py::init([](std::uint64_t dim, py::handle metric) { return Owned<FlatIndex>{FlatIndex(dim, to_metric(metric))}; }),
        py::arg("dim"), py::arg("metric") = DistanceMetric::Euclidean);
  bind_index_methods(c);
  auto p = bind_persisted<FlatIndex>(m, "PersistedFlatIndex", "A FlatIndex with durable, crash-safe persistence.");
  p.def(
      "get",
      [](Persisted<FlatIndex>& self, py::handle id) -> py::object {
        const VectorId vid = to_id(id);
        // Copied under the read lock with the GIL released, converted after.
        const std::vector<float> v = self.reading([&](const FlatIndex& ix) {
          const std::span<const float> found = ix.get(vid);
          return std::vector<float>(found.begin(), found.end());
        });
        if (v.empty()) return py::none();
        py::array_t<float> out(static_cast<py::ssize_t>(v.size()));
        std::copy(v.begin(), v.end(), out.mutable_data());
        return out;
      },
      py::arg("id"), "A copy of the stored vector of an id (float32), or None.");
}

}  // namespace iqdb::persist::python
