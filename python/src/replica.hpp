// bind_replica<I>: the Python class of ReadReplica<I> (docs/PYTHON.md, "Read
// replicas"). The GIL is released around every call into the replica (a
// catch-up reads the log, lag() reads its end, searches and promote() may
// wait for a lock); the background follower is the library's own thread and
// never touches a Python object.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>  // std::shared_lock
#include <string>

#include "persisted.hpp"
#include "reads.hpp"

namespace iqdb::persist::python {

// ReplicaLag with its times in seconds: fresh_as_of on the clock of Python's
// time.monotonic() (both read CLOCK_MONOTONIC on Linux).
struct Lag {
  std::uint64_t applied_lsn = 0;
  std::uint64_t available_lsn = 0;
  std::uint64_t records_behind = 0;
  double fresh_as_of = 0;
  double time_behind = 0;
};

inline Lag to_lag(const ReplicaLag& l) {
  using Seconds = std::chrono::duration<double>;
  return {l.applied_lsn, l.available_lsn, l.records_behind,
          std::chrono::duration_cast<Seconds>(l.fresh_as_of.time_since_epoch()).count(),
          std::chrono::duration_cast<Seconds>(l.time_behind).count()};
}

// ReadReplica<I> as a Python object. promote() and close() end it: every
// later call raises ValueError. Calls hold `life` shared (GIL released);
// promote() and close() hold it exclusively, so they wait for the calls of
// other Python threads to return, as ReadReplica requires (and calls that
// start after them wait behind them).
template <class I>
struct Replica {
  std::optional<ReadReplica<I>> r;
  // As last seen: a catch-up that loads anew may bring an index of another
  // dimension or metric (the path's index made again); dim and metric are
  // read again under the read lock when asked for.
  std::atomic<std::uint64_t> dim = 0;
  std::atomic<DistanceMetric> metric = DistanceMetric::Euclidean;
  std::string path;
  const char* gone = "closed";
  // Writer-preferring (detail::RwLock): with std::shared_mutex, searches
  // that kept starting made close() and promote() wait for seconds.
  detail::RwLock life;

  explicit Replica(ReadReplica<I> x)
      : r(std::move(x)), dim(r->index().dim()), metric(r->index().metric()), path(r->config().path.string()) {}
  Replica(const Replica&) = delete;
  Replica& operator=(const Replica&) = delete;
  // (With the GIL held, as ~Persisted; close() lets it go.)
  ~Replica() { r.reset(); }  // stops the background follower

  // The index's dimension and metric now (as last seen once closed). Under
  // the read lock, which a catch-up holds while it applies one log frame.
  std::uint64_t current_dim() {
    refresh();
    return dim.load();
  }
  DistanceMetric current_metric() {
    refresh();
    return metric.load();
  }
  // Queries are checked under the read lock, against the index they search.
  static std::optional<std::uint64_t> query_dim() noexcept { return std::nullopt; }

  // f(ReadReplica&) with the GIL released. f must not touch Python objects.
  template <class F>
  decltype(auto) released(F&& f) {
    return without_gil([&] {
      std::shared_lock lk(life);
      return std::forward<F>(f)(live());
    });
  }

  // f(const I&) under the replica's read lock, with the GIL released.
  template <class F>
  decltype(auto) reading(F&& f) {
    return released([&](ReadReplica<I>& x) { return x.read(std::forward<F>(f)); });
  }

  PersistedIndex<I> promote() {
    return without_gil([&] {
      std::unique_lock lk(life);
      ReadReplica<I>& x = live();
      try {
        PersistedIndex<I> out = std::move(x).promote();
        end("promoted");
        return out;
      } catch (...) {
        // Locked (a live writer): still a replica. Later failures consume it.
        if (!x.valid()) end("consumed by a promote() that failed after taking the writer lock");
        throw;
      }
    });
  }

  void close() {
    without_gil([&] {
      std::unique_lock lk(life);
      if (r) end("closed");
    });
  }

 private:
  void refresh() {
    without_gil([&] {
      std::shared_lock lk(life);
      if (!r) return;
      r->read([&](const I& ix) {
        dim.store(ix.dim());
        metric.store(ix.metric());
      });
    });
  }
  // (life held)
  ReadReplica<I>& live() {
    if (!r) throw py::value_error(std::string("this read replica was ") + gone);
    return *r;
  }
  void end(const char* why) {
    r.reset();
    gone = why;
  }
};

template <class I>
void bind_replica_follow(py::class_<Replica<I>>& c) {
  using R = Replica<I>;
  using X = ReadReplica<I>;
  c.def("catch_up", [](R& r) { return r.released([](X& x) { return x.catch_up(); }); },
        "Apply the records the writer logged since (following checkpoints; loads anew when the records it needs "
        "are gone). Returns how far the LSN moved. Raises PersistError (e.g. CorruptLogError): the replica stays "
        "at the last good record and the call can be repeated.")
      .def(
          "start_following",
          [](R& r, std::int64_t interval_ms) {
            if (interval_ms <= 0) throw py::value_error("interval_ms must be a positive number of milliseconds");
            r.released([&](X& x) { x.start_following(std::chrono::milliseconds(interval_ms)); });
          },
          py::arg("interval_ms"),
          "Catch up in a background thread every interval_ms until stop_following(), promote() or close(); its "
          "last error is failure(). No effect when already following.")
      .def("stop_following", [](R& r) { r.released([](X& x) { x.stop_following(); }); },
           "Stop the background follower (waits for a catch-up in progress).")
      .def(
          "failure", [](R& r) { return str_or_none(r.released([](X& x) { return x.failure(); })); },
          "The last background catch-up's error as a str, or None (after one succeeded).")
      .def(
          "lag", [](R& r) { return r.released([](X& x) { return to_lag(x.lag()); }); },
          "How far behind the writer: reads the log's end, applies nothing.")
      .def_property_readonly("last_lsn", [](R& r) { return r.released([](X& x) { return x.last_lsn(); }); })
      .def(
          "stats", [](R& r) { return r.released([](X& x) { return x.stats(); }); },
          "Catch-ups, records applied, loads anew, and what the first load replayed.");
}

template <class I>
py::class_<Replica<I>> bind_replica(py::module_& m, const char* name, const char* doc) {
  using R = Replica<I>;
  py::class_<R> c(m, name, doc);
  c.def_static(
       "open",
       [](const PersistConfig& cfg) {
         return without_gil([&] { return std::make_unique<R>(ReadReplica<I>::open(cfg)); });
       },
       py::arg("config"),
       "Load and verify the snapshot at config.path and replay its log (config.wal_enabled is ignored); the log "
       "is then followed. Takes no lock, writes nothing: any number of replicas beside one writer.")
      .def(
          "promote", [](R& r) { return std::make_unique<Persisted<I>>(r.promote()); },
          "Failover: take the writer lock (LockedError while the writer lives: this stays a replica, not "
          "following), catch up on every record the log holds, return the writable persisted index. This "
          "replica is unusable afterwards (ValueError).")
      .def("close", &R::close, "Stop following and free the replica; later calls raise ValueError.")
      .def_property_readonly("metric", [](R& r) { return r.current_metric(); })
      .def_property_readonly("path", [](R& r) { return text_str(r.path); })
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](R& r, py::handle, py::handle, py::handle) {
        r.close();
        return false;
      });
  bind_replica_follow(c);
  bind_reads<I>(c);
  return c;
}

}  // namespace iqdb::persist::python
