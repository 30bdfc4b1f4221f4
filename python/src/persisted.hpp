// bind_index<I> and bind_persisted<I>: the Python classes of an index type
// and of PersistedIndex<I>. The GIL is released around every call into the
// library that may do I/O, fsync, load, save or search; arguments are
// converted (and checked) before, results after.
#pragma once

#include <memory>
#include <string>

#include "bindings.hpp"
#include "convert.hpp"
#include "reads.hpp"

namespace iqdb::persist::python {

// The methods every index class has, standalone (in memory, nothing logged).
template <class I>
void bind_index_methods(py::class_<Owned<I>>& c) {
  c.def("__repr__",
        [](py::handle self) -> py::str {
          auto& o = self.cast<Owned<I>&>();
          const py::object name = py::type::of(self).attr("__name__");
          if (!o.ix) return py::str("{}(<moved into a persisted index>)").format(name);
          return py::str("{}(dim={}, metric={}, len={})").format(name, o.ix->dim(), py::str(py::cast(o.ix->metric())),
                                                                   o.ix->size());
        })
      .def_property_readonly("dim", [](Owned<I>& o) { return o.get().dim(); })
      .def_property_readonly("metric", [](Owned<I>& o) { return o.get().metric(); })
      .def("__len__", [](Owned<I>& o) { return o.get().size(); })
      .def("__contains__",
           [](Owned<I>& o, py::handle id) {
             const VectorId vid = to_id(id);  // first: the conversion may move the index out (get() refuses then)
             return o.get().contains(vid);
           })
      .def(
          "insert",
          [](Owned<I>& o, py::handle id, py::handle vector, py::handle metadata) {
            OneInsert a = to_one_insert(id, vector, metadata, o.get().dim());
            o.get().insert(a.id, a.vector.floats, std::move(a.meta));  // (get(): the conversion may have taken it)
          },
          py::arg("id"), py::arg("vector"), py::arg("metadata") = py::none(),
          "Insert into the in-memory index (nothing is persisted until open_with).")
      .def(
          "search",
          [](Owned<I>& o, py::handle query, py::handle k_arg) {
            const std::size_t k = to_k(k_arg);
            const I& ix = o.get();
            const Queries q = as_queries(query, ix.dim());
            // The GIL stays held: it is what keeps a standalone index's
            // insert from running beside this search.
            return to_numpy(search_rows(ix, q, k), q.single);
          },
          py::arg("query"), py::arg("k"), "(ids, distances) of the k nearest vectors, closest first.");
}

// PersistedIndex<I> as a Python object. close() keeps the in-memory index
// readable (search, len, in); the destructor closes with the GIL released.
template <class I>
struct Persisted {
  std::optional<PersistedIndex<I>> db;
  std::uint64_t dim = 0;

  explicit Persisted(PersistedIndex<I> d) : db(std::move(d)), dim(db->index().dim()) {}
  // A writer's index keeps its dimension.
  std::uint64_t current_dim() const noexcept { return dim; }
  std::optional<std::uint64_t> query_dim() const noexcept { return dim; }
  Persisted(const Persisted&) = delete;
  Persisted& operator=(const Persisted&) = delete;
  // With the GIL held: letting it go would mean taking it back, which at
  // the interpreter's exit ends a daemon thread dropping the last reference
  // (pthread_exit), and its unwinding cannot pass a destructor (ReleasedGil).
  // close() lets it go.
  ~Persisted() { db.reset(); }

  void insert_one(py::handle id, py::handle vector, py::handle metadata) {
    OneInsert a = to_one_insert(id, vector, metadata, dim);
    without_gil([&] { db->insert(a.id, a.vector.floats, std::move(a.meta)); });
  }

  // One batch: one log frame, one fsync, all or nothing.
  void insert_rows(py::handle ids, py::handle vectors, py::handle metadata) {
    RowsInsert a = to_rows_insert(ids, vectors, metadata, dim);
    const Ids& id = a.ids;
    const Rows& rows = a.rows;
    std::vector<std::optional<Metadata>>& metas = a.metas;
    WriteBatch b;
    if (id.all_u64() && metas.empty()) {
      b.insert_rows_ref(id.u64, rows.floats, dim);
    } else {
      b.reserve(rows.n);
      for (std::size_t i = 0; i < rows.n; ++i) {
        VectorId vid = id.all_u64() ? VectorId(id.u64[i]) : id.general[i];
        b.insert_ref(std::move(vid), rows.floats.subspan(i * dim, dim),
                     metas.empty() ? std::nullopt : std::move(metas[i]));
      }
    }
    without_gil([&] { db->write(b); });
  }

  void insert(py::handle ids, py::handle vectors, py::handle metadata) {
    if (is_batch_of_rows(vectors)) {
      insert_rows(ids, vectors, metadata);
    } else {
      insert_one(ids, vectors, metadata);
    }
  }

  // f(db) with the GIL released: every call that may wait for a lock, I/O
  // or an fsync (docs/PYTHON.md, "The GIL"). f must not touch Python objects.
  template <class F>
  decltype(auto) released(F&& f) {
    return without_gil([&] { return std::forward<F>(f)(*db); });
  }

  // f(const I&) under the index's read lock (which a write holds while it
  // applies a batch), with the GIL released.
  template <class F>
  decltype(auto) reading(F&& f) {
    return released([&](PersistedIndex<I>& d) { return d.read(std::forward<F>(f)); });
  }
};

template <class I>
py::class_<Persisted<I>> bind_persisted(py::module_& m, const char* name, const char* doc) {
  using P = Persisted<I>;
  using Db = PersistedIndex<I>;
  py::class_<P> c(m, name, doc);
  c.def_static(
       "open_with",
       [](Owned<I>& index, const PersistConfig& cfg) {
         I ix = index.take();
         try {
           return without_gil([&] { return std::make_unique<P>(Db::open_with(std::move(ix), cfg)); });
         } catch (...) {
           index.give_back(std::move(ix));  // open_with hands an index back when it fails
           throw;
         }
       },
       py::arg("index"), py::arg("config"),
       "Wrap an in-memory index (moved in: the index object is unusable afterwards). With the WAL: takes "
       "the writer lock, writes a base snapshot, starts an empty log; an index at the path that holds data "
       "(log records, vectors) is replaced only with discard_log=True, else WouldLoseWritesError.")
      .def_static(
          "load",
          [](const PersistConfig& cfg) {
            return without_gil([&] { return std::make_unique<P>(Db::load(cfg)); });
          },
          py::arg("config"), "Load and verify the snapshot at config.path, replaying the log.")
      .def("insert", &P::insert, py::arg("id"), py::arg("vector"), py::arg("metadata") = py::none(),
           "insert(id, vector[, metadata]): one vector (float32, shape (dim,)).\n"
           "insert(ids, vectors[, metadata]): a batch (vectors float32 (n, dim) C-contiguous, used in place; "
           "ids a uint64 array or a sequence of int / bytes; metadata None or n dicts): one log frame, one "
           "fsync, all or nothing.")
      .def(
          "erase",
          [](P& p, py::handle id) {
            const VectorId vid = to_id(id);
            p.released([&](Db& db) { db.erase(vid); });
          },
          py::arg("id"), "Erase a vector (IdNotFoundError if absent).")
      .def(
          "write",
          [](P& p, PyWriteBatch& b) {
            const PyWriteBatch::Reading reading(b);  // changing b meanwhile raises
            p.released([&](Db& db) { db.write(b); });
          },
          py::arg("batch"),
          "Apply a WriteBatch: validated whole, one log frame, one fsync, all or nothing.")
      .def("save", [](P& p) { p.released([](Db& db) { db.save(); }); }, "Atomic, durable snapshot (with the WAL: checkpoint).")
      .def("checkpoint", [](P& p) { p.released([](Db& db) { db.checkpoint(); }); },
           "With the WAL: fold the log into a new snapshot, start an empty log. Without: save().")
      .def("sync", [](P& p) { p.released([](Db& db) { db.sync(); }); }, "Make every acknowledged mutation durable now.")
      .def("close", [](P& p) { p.released([](Db& db) { db.close(); }); },
           "Sync (unless FsyncPolicy.never()) and release the writer lock; later mutations fail. Reports errors.")
      // The log's mutex, which these take, is held through a checkpoint.
      .def_property_readonly("last_lsn", [](P& p) { return p.released([](Db& db) { return db.last_lsn(); }); })
      .def("wal_stats", [](P& p) { return p.released([](Db& db) { return db.wal_stats(); }); },
           "What the log did since opening, and what load found.")
      .def(
          "failure",
          [](P& p) -> py::object {
            return str_or_none(p.released([](Db& db) { return db.failure(); }));
          },
          "Why mutations are refused (Poisoned), or None.")
      .def(
          "auto_checkpoint_failure",
          [](P& p) -> py::object {
            return str_or_none(p.released([](Db& db) { return db.auto_checkpoint_failure(); }));
          },
          "Why the last automatic checkpoint (checkpoint_log_bytes) failed, or None (none failed since the "
          "last that succeeded). Mutations go on unless failure() says otherwise.")
      .def_property_readonly("metric", [](P& p) { return p.db->index().metric(); })
      .def_property_readonly("path", [](P& p) { return path_str(p.db->config().path); })
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](P& p, py::handle exc_type, py::handle, py::handle) {
        // Closes; an error of close() is raised unless the block raised one.
        try {
          p.released([](Db& db) { db.close(); });
        } catch (const PersistError&) {
          if (exc_type.is_none()) throw;
        }
        return false;
      });
  bind_reads<I>(c);
  return c;
}

}  // namespace iqdb::persist::python
