// ReplicaLag and ReplicaStats, the values a read replica reports (the
// replica classes themselves are bound per index type: replica.hpp).
#include "replica.hpp"

#include <string>

namespace iqdb::persist::python {

void register_replica_types(py::module_& m) {
  py::class_<Lag>(m, "ReplicaLag",
                  "How far a read replica is behind its writer (ReadReplica.lag()). fresh_as_of: every record "
                  "acknowledged before this instant (seconds on time.monotonic()'s clock) is in the replica.")
      .def_readonly("applied_lsn", &Lag::applied_lsn, "The LSN the replica's index covers.")
      .def_readonly("available_lsn", &Lag::available_lsn, "The last LSN the log held when lag() read it.")
      .def_readonly("records_behind", &Lag::records_behind, "available_lsn - applied_lsn.")
      .def_readonly("fresh_as_of", &Lag::fresh_as_of, "When the last catch-up began reading (time.monotonic()).")
      .def_readonly("time_behind", &Lag::time_behind, "Seconds since fresh_as_of.")
      .def("__repr__", [](const Lag& l) {
        return "ReplicaLag(applied_lsn=" + std::to_string(l.applied_lsn) +
               ", available_lsn=" + std::to_string(l.available_lsn) +
               ", records_behind=" + std::to_string(l.records_behind) +
               ", time_behind=" + std::to_string(l.time_behind) + ")";
      });
  py::class_<ReplicaStats>(m, "ReplicaStats", "What a read replica did since it was opened.")
      .def_readonly("catch_ups", &ReplicaStats::catch_ups, "catch_up() calls and background rounds that succeeded.")
      .def_readonly("records_applied", &ReplicaStats::records_applied, "After the first load.")
      .def_readonly("reloads", &ReplicaStats::reloads, "Loads anew (the records it needed were gone).")
      .def_readonly("load", &ReplicaStats::load, "What the first load replayed (WalStats).");
}

}  // namespace iqdb::persist::python
