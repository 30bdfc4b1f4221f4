// Metric, FsyncPolicy, Compression, PersistConfig (keyword arguments with the
// C++ defaults; a rados://POOL/NAME path goes to rados.cpp), WalStats,
// WriteBatch and snapshot_index_type.
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <memory>

#include "bindings.hpp"
#include "convert.hpp"

namespace iqdb::persist::python {

namespace {

void bind_policies(py::module_& m) {
  py::enum_<DistanceMetric>(m, "Metric", "Distance metrics (smaller is closer for each).")
      .value("Cosine", DistanceMetric::Cosine)
      .value("DotProduct", DistanceMetric::DotProduct)
      .value("Euclidean", DistanceMetric::Euclidean)
      .value("Manhattan", DistanceMetric::Manhattan)
      .value("Hamming", DistanceMetric::Hamming);
  py::class_<FsyncPolicy>(m, "FsyncPolicy", "When log records and snapshots reach stable storage.")
      .def_static("always", &FsyncPolicy::always, "Durable before the call returns (fdatasync; group commit).")
      .def_static(
          "periodic", [](std::int64_t ms) {
            if (ms <= 0) throw py::value_error("periodic interval must be a positive number of milliseconds");
            return FsyncPolicy::periodic(std::chrono::milliseconds(ms));
          },
          py::arg("interval_ms"), "Durable within interval_ms, by a background flusher.")
      .def_static("never", &FsyncPolicy::never, "Left to the operating system (survives a process crash only).")
      .def_property_readonly("mode", [](const FsyncPolicy& p) {
        return p.mode() == FsyncPolicy::Mode::Always ? "always" : p.mode() == FsyncPolicy::Mode::Periodic ? "periodic" : "never";
      })
      .def_property_readonly("interval_ms", [](const FsyncPolicy& p) { return p.interval().count(); })
      .def("__eq__", [](const FsyncPolicy& a, const FsyncPolicy& b) { return a == b; })
      .def("__repr__", [](const FsyncPolicy& p) {
        return p.mode() == FsyncPolicy::Mode::Periodic ? "FsyncPolicy.periodic(" + std::to_string(p.interval().count()) + ")"
               : p.mode() == FsyncPolicy::Mode::Always ? std::string("FsyncPolicy.always()")
                                                         : std::string("FsyncPolicy.never()");
      });
  py::class_<Compression>(m, "Compression", "Compression of the snapshot payload.")
      .def_static("none", &Compression::none)
      .def_static("zstd", &Compression::zstd, py::arg("level") = 3, py::arg("threads") = 1,
                  "zstd, level 1..22; threads 1..16: more than 1 compresses on zstd's own worker threads "
                  "(faster on idle cores, about 12 MiB more memory each); both checked when a snapshot is written.")
      .def_static("lz4", &Compression::lz4)
      .def_property_readonly("kind", [](const Compression& c) {
        return c.kind() == Compression::Kind::Zstd ? "zstd" : c.kind() == Compression::Kind::Lz4 ? "lz4" : "none";
      })
      .def_property_readonly("level", &Compression::level)
      .def_property_readonly("threads", &Compression::threads)
      .def("__eq__", [](const Compression& a, const Compression& b) { return a == b; })
      .def("__repr__", [](const Compression& c) {
        if (c.kind() == Compression::Kind::Lz4) return std::string("Compression.lz4()");
        if (c.kind() != Compression::Kind::Zstd) return std::string("Compression.none()");
        return "Compression.zstd(" + std::to_string(c.level()) +
               (c.threads() == 1 ? std::string() : ", threads=" + std::to_string(c.threads())) + ")";
      });
}

// A rados:// config holds a RADOS client, which the last copy's destructor
// shuts down (librados joins its threads). With the GIL held, as
// ~Persisted: a deleter runs in a destructor.
struct ConfigDeleter {
  void operator()(PersistConfig* c) const { delete c; }
};

void bind_config(py::module_& m) {
  const PersistConfig d("");  // the C++ defaults
  py::class_<PersistConfig, std::unique_ptr<PersistConfig, ConfigDeleter>>(m, "PersistConfig", "Where and how an index is persisted (docs/API.md, PersistConfig).")
      .def(py::init([](const std::filesystem::path& path, bool wal_enabled, FsyncPolicy fsync_policy,
                       Compression compression, std::int64_t commit_spin_us, bool discard_log,
                       std::uint64_t checkpoint_log_bytes, bool map_snapshot, std::uint64_t max_payload_bytes,
                       std::uint64_t max_expansion_ratio,
                       std::optional<std::string> ceph_conf, std::optional<std::string> client_id,
                       std::optional<std::int64_t> op_timeout_s, std::optional<std::int64_t> connect_timeout_s,
                       std::optional<std::int64_t> lock_lease_s, std::optional<bool> take_over,
                       std::optional<std::int64_t> take_over_timeout_s, std::optional<bool> blocklist_previous,
                       std::optional<std::int64_t> reader_grace_s) {
             if (commit_spin_us < 0) throw py::value_error("commit_spin_us must be >= 0");
             const RadosKeywords kw{std::move(ceph_conf), std::move(client_id), op_timeout_s, connect_timeout_s,
                                    lock_lease_s,         take_over,            take_over_timeout_s,
                                    blocklist_previous,   reader_grace_s};
             const bool rados = is_rados_path(path);
             if (!rados && kw.any()) {
               throw PersistError::argument("ceph_conf, client_id, op_timeout_s, connect_timeout_s, lock_lease_s, "
                                            "take_over, take_over_timeout_s, blocklist_previous and reader_grace_s "
                                            "are for a "
                                            "rados://POOL/NAME path, not '" + path.string() + "'");
             }
             PersistConfig c = rados ? rados_config(path, kw) : PersistConfig(path);
             c.wal_enabled = wal_enabled;
             c.fsync_policy = fsync_policy;
             c.compression = compression;
             c.commit_spin = std::chrono::microseconds(commit_spin_us);
             c.discard_log = discard_log;
             c.checkpoint_log_bytes = checkpoint_log_bytes;
             c.map_snapshot = map_snapshot;
             c.limits.max_payload_bytes = max_payload_bytes;
             c.limits.max_expansion_ratio = max_expansion_ratio;
             return c;
           }),
           py::arg("path"), py::kw_only(), py::arg("wal_enabled").noconvert() = d.wal_enabled,
           py::arg("fsync_policy") = d.fsync_policy, py::arg("compression") = d.compression,
           py::arg("commit_spin_us") = d.commit_spin.count(), py::arg("discard_log").noconvert() = d.discard_log,
           py::arg("checkpoint_log_bytes") = d.checkpoint_log_bytes, py::arg("map_snapshot").noconvert() = d.map_snapshot,
           py::arg("max_payload_bytes") = d.limits.max_payload_bytes,
           py::arg("max_expansion_ratio") = d.limits.max_expansion_ratio, py::arg("ceph_conf") = py::none(),
           py::arg("client_id") = py::none(), py::arg("op_timeout_s") = py::none(),
           py::arg("connect_timeout_s") = py::none(), py::arg("lock_lease_s") = py::none(),
           py::arg("take_over") = py::none(), py::arg("take_over_timeout_s") = py::none(),
           py::arg("blocklist_previous") = py::none(), py::arg("reader_grace_s") = py::none(),
           "PersistConfig(path, *, wal_enabled=False, fsync_policy=FsyncPolicy.always(), ...).\n\n"
           "path: a local snapshot file (its log is path + '.wal'; './rados:x' for a file named so), or "
           "'rados://POOL/NAME' for an index in a "
           "Ceph RADOS pool (HAVE_RADOS; UnsupportedError in a build without it). A rados:// config connects "
           "to the cluster here (IoError naming the location when that fails, within connect_timeout_s) and "
           "its copies share the connection. Its keywords (None: the default): ceph_conf (default $CEPH_CONF, "
           "then Ceph's search), client_id ('admin'), op_timeout_s (30), connect_timeout_s (10), "
           "lock_lease_s (the writer lock's lease, 30), take_over (False: LockedError while another writer "
           "holds the lock; True: wait for its lease to run out, fence it, take over), take_over_timeout_s "
           "(0: 2 * lease + 30), blocklist_previous (True: fence a taken-over writer by blocklisting it), "
           "reader_grace_s (0: how long what a publish superseded stays readable). "
           "docs/PYTHON.md, 'RADOS'.")
      .def_property_readonly("path", [](const PersistConfig& c) { return path_str(c.path); })
      .def_readonly("wal_enabled", &PersistConfig::wal_enabled)
      .def_readonly("fsync_policy", &PersistConfig::fsync_policy)
      .def_readonly("compression", &PersistConfig::compression)
      .def_property_readonly("commit_spin_us", [](const PersistConfig& c) { return c.commit_spin.count(); })
      .def_readonly("discard_log", &PersistConfig::discard_log)
      .def_readonly("checkpoint_log_bytes", &PersistConfig::checkpoint_log_bytes)
      .def_readonly("map_snapshot", &PersistConfig::map_snapshot)
      .def_property_readonly("max_payload_bytes", [](const PersistConfig& c) { return c.limits.max_payload_bytes; })
      .def_property_readonly("max_expansion_ratio", [](const PersistConfig& c) { return c.limits.max_expansion_ratio; })
      .def("__repr__", [d](py::handle self) {
        // The path and the keywords that change what is persisted and how;
        // the others where they differ from the defaults (d).
        const auto& c = self.cast<const PersistConfig&>();
        std::string s = "PersistConfig(" + py::repr(self.attr("path")).cast<std::string>() +
                        ", wal_enabled=" + (c.wal_enabled ? "True" : "False") +
                        ", fsync_policy=" + py::repr(self.attr("fsync_policy")).cast<std::string>() +
                        ", compression=" + py::repr(self.attr("compression")).cast<std::string>();
        if (c.checkpoint_log_bytes != d.checkpoint_log_bytes) {
          s += ", checkpoint_log_bytes=" + std::to_string(c.checkpoint_log_bytes);
        }
        if (c.map_snapshot) s += ", map_snapshot=True";
        if (c.discard_log) s += ", discard_log=True";
        if (c.commit_spin != d.commit_spin) s += ", commit_spin_us=" + std::to_string(c.commit_spin.count());
        if (c.limits.max_payload_bytes != d.limits.max_payload_bytes) {
          s += ", max_payload_bytes=" + std::to_string(c.limits.max_payload_bytes);
        }
        if (c.limits.max_expansion_ratio != d.limits.max_expansion_ratio) {
          s += ", max_expansion_ratio=" + std::to_string(c.limits.max_expansion_ratio);
        }
        return s + ")";
      });
  py::class_<wal::WalStats>(m, "WalStats", "What the log did since the index was opened, and what load found.")
      .def_readonly("commits", &wal::WalStats::commits)
      .def_readonly("records", &wal::WalStats::records)
      .def_readonly("log_syncs", &wal::WalStats::log_syncs)
      .def_readonly("auto_checkpoints", &wal::WalStats::auto_checkpoints)
      .def_readonly("auto_checkpoint_failures", &wal::WalStats::auto_checkpoint_failures)
      .def_readonly("recovered_records", &wal::WalStats::recovered_records)
      .def_readonly("torn_tail_bytes", &wal::WalStats::torn_tail_bytes)
      .def_readonly("unsynced_frames_dropped", &wal::WalStats::unsynced_frames_dropped)
      .def_readonly("migrated_v1_log", &wal::WalStats::migrated_v1_log)
      .def("__repr__", [](const wal::WalStats& s) {
        return "WalStats(commits=" + std::to_string(s.commits) + ", records=" + std::to_string(s.records) +
               ", log_syncs=" + std::to_string(s.log_syncs) + ", auto_checkpoints=" +
               std::to_string(s.auto_checkpoints) + ", auto_checkpoint_failures=" +
               std::to_string(s.auto_checkpoint_failures) + ", recovered_records=" +
               std::to_string(s.recovered_records) + ", torn_tail_bytes=" + std::to_string(s.torn_tail_bytes) +
               ", unsynced_frames_dropped=" + std::to_string(s.unsynced_frames_dropped) +
               ", migrated_v1_log=" + (s.migrated_v1_log ? "True" : "False") + ")";
      });
}

void bind_write_batch(py::module_& m) {
  py::class_<PyWriteBatch>(m, "WriteBatch",
                         "Inserts and erases applied together by write(): one log frame, one fsync, all or nothing. "
                         "Vectors are copied into the batch.")
      .def(py::init<>())
      .def(
          "insert",
          [](PyWriteBatch& pb, py::handle ids, py::handle vectors, py::handle metadata) -> PyWriteBatch& {
            // Every argument converted first (this can run Python code,
            // which could resize the arrays or start a write() of this batch
            // in another thread), then the batch checked and changed with no
            // Python code in between.
            if (is_batch_of_rows(vectors)) {
              RowsInsert a = to_rows_insert(ids, vectors, metadata, std::nullopt);
              WriteBatch& b = pb.changeable();
              const std::size_t n = a.rows.n;
              const std::size_t dim = n == 0 ? 0 : a.rows.floats.size() / n;
              for (std::size_t i = 0; i < n; ++i) {
                b.insert(a.ids.all_u64() ? VectorId(a.ids.u64[i]) : a.ids.general[i], a.rows.floats.subspan(i * dim, dim),
                         a.metas.empty() ? std::nullopt : std::move(a.metas[i]));
              }
              return pb;
            }
            OneInsert a = to_one_insert(ids, vectors, metadata, std::nullopt);
            pb.changeable().insert(a.id, a.vector.floats, std::move(a.meta));
            return pb;
          },
          py::arg("id"), py::arg("vector"), py::arg("metadata") = py::none(), py::return_value_policy::reference_internal,
          "insert(id, vector[, metadata]) or insert(ids, vectors (n, dim)[, metadatas]); returns the batch.")
      .def(
          "erase",
          [](PyWriteBatch& pb, py::handle id) -> PyWriteBatch& {
            VectorId vid = to_id(id);  // (may run Python code: converted before the check)
            pb.changeable().erase(std::move(vid));
            return pb;
          },
          py::arg("id"), py::return_value_policy::reference_internal)
      .def("clear", [](PyWriteBatch& pb) { pb.changeable().clear(); })
      .def("__len__", [](const PyWriteBatch& pb) { return pb.size(); });
}

}  // namespace

void register_config(py::module_& m) {
  bind_policies(m);
  bind_config(m);
  bind_write_batch(m);
  m.def(
       "snapshot_index_type",
       [](const PersistConfig& cfg) {
         return without_gil([&] { return inspect_snapshot(detail::fs_of(cfg), cfg.path).header.index_type; });
       },
       py::arg("config"), "The index type the header of config's snapshot names (local or rados://).")
      .def(
          "snapshot_index_type",
          [](const std::filesystem::path& path) {
            if (is_rados_path(path)) {
              throw PersistError::argument("snapshot_index_type('" + path.string() +
                                           "'): pass the PersistConfig of a rados:// location");
            }
            return without_gil([&] { return inspect_snapshot(default_file_system(), path).header.index_type; });
          },
          py::arg("path"), "The index type a snapshot's header names (\"flat\", \"faiss\", \"hnswlib\").");
}

}  // namespace iqdb::persist::python
