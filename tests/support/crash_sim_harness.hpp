// The crash simulator's harness for PersistedIndex<FlatIndex>: an independent
// model (std::map), a workload driver that records which call returned when,
// and the explorer that recovers every crash state of a recorded run and
// checks it against the model.
//
//   SimFs fs({"/db"});
//   PersistConfig cfg("/db/v.iqdb");  cfg.wal_enabled = true;  cfg.file_system = &fs;
//   Workload w(fs, cfg);
//   w.open_with(initial, 8);  w.insert(1, vec);  w.checkpoint();  w.close();
//   Report r = explore("always/none", fs, w, {});
//   EXPECT_EQ(r.violations, 0u) << r.examples_text();
//
// What is checked, for every crash point and every state DiskModel builds
// (docs/reliability/crash-simulation.md has the details):
//  - the snapshot file exists once open_with (or, without a WAL, a durable
//    save) has been acknowledged: the last good snapshot is never lost;
//  - recovery (PersistedIndex<FlatIndex>::load on a fresh SimFs holding
//    exactly that state) succeeds, or fails with a typed error only where
//    that is allowed (never under FsyncPolicy::Always);
//  - the recovered index equals the model after some prefix of the calls,
//    no shorter than what the acknowledged calls promise durable and no
//    longer than the calls issued;
//  - recovery is stable: its own crash states (a crash during recovery)
//    recover to the same index.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "iqdb/persist.hpp"
#include "support/crash_sim.hpp"

namespace iqdb::persist::test::crash {

// ---------------------------------------------------------------- the model

struct Entry {
  std::vector<float> vec;
  std::optional<Metadata> meta;
  // Vectors compare bit for bit.
  friend bool operator==(const Entry& a, const Entry& b);
};
using Model = std::map<VectorId, Entry>;

Model model_of(const FlatIndex& index);
// "3 vectors: 1 2 0x61"; with `other`, what differs.
std::string describe(const Model& m, const Model* other = nullptr);

// ---------------------------------------------------------------- workloads

// One call of a workload.
struct Step {
  std::string what;              // "insert 7", "checkpoint", ...
  std::size_t begin = 0;         // ops recorded before the call
  std::size_t end = 0;           // ops recorded when it returned
  std::int64_t model = -1;       // index in models() after the call (-1: no index)
  std::int64_t promises = -1;    // the model the call, once returned, promises durable (-1: nothing)
};

// Drives a PersistedIndex<FlatIndex> and records every call as a Step and
// the model after each mutation. `config.file_system` is what the index
// uses (the recorder itself or a wrapper over it); the recorder counts ops.
class Workload {
 public:
  Workload(SimFs& recorder, PersistConfig config);
  ~Workload();

  void open_with(const Model& initial, std::uint64_t dim);
  void insert(const VectorId& id, const std::vector<float>& vec, std::optional<Metadata> meta = {});
  void erase(const VectorId& id);
  void write(const WriteBatch& batch);
  void sync();
  void checkpoint();
  void save();
  void close();
  // load() again (after close()).
  void reopen();
  // Waits (a step of its own, promising nothing more) until the index's own
  // thread has run `count` automatic checkpoints since it was opened
  // (PersistConfig::checkpoint_log_bytes); throws after 20 s.
  void wait_for_auto_checkpoints(std::uint64_t count);

  const PersistConfig& config() const noexcept { return config_; }
  const std::vector<Step>& steps() const noexcept { return steps_; }
  const std::vector<Model>& models() const noexcept { return models_; }
  // Model index after the last call so far.
  std::int64_t current() const noexcept { return static_cast<std::int64_t>(models_.size()) - 1; }
  const Model& model() const { return models_.back(); }

 private:
  template <class F>
  void call(std::string what, bool mutates, std::int64_t promises_if_acked, F&& f);
  std::int64_t durable_if(bool yes) const { return yes ? current() : -1; }
  FsyncPolicy::Mode mode() const noexcept { return config_.fsync_policy.mode(); }

  SimFs& recorder_;
  PersistConfig config_;
  std::optional<PersistedIndex<FlatIndex>> db_;
  std::vector<Step> steps_;
  std::vector<Model> models_;
  Model next_;  // the model a mutation in progress produces
  std::uint64_t dim_ = 0;
};

// A deterministic vector for `id`.
std::vector<float> vec_of(std::uint64_t seed, std::uint64_t dim);

// ---------------------------------------------------------------- exploring

struct ExploreOptions {
  StateOptions states;
  // Also crash every recovery that changed the disk, at each of its crash
  // points, and check that recovering again gives the same index.
  bool crash_recoveries = true;
  // Keep at most this many violations in full in the report.
  std::size_t max_examples = 8;
  // Stop exploring once this many violations were found.
  std::size_t stop_after = SIZE_MAX;
};

struct Report {
  std::string name;
  std::size_t ops = 0;           // file-system calls recorded
  std::size_t steps = 0;         // workload calls
  std::size_t crash_points = 0;  // points visited (after ops that change the disk)
  std::size_t states = 0;        // (crash point, distinct disk) pairs checked
  std::size_t recoveries = 0;    // distinct disks recovered (load runs)
  std::size_t recovery_states = 0;  // states of crashed recoveries checked
  std::size_t recovery_loads = 0;   // ... of which distinct ones recovered again
  std::size_t violations = 0;
  std::map<std::string, std::size_t> outcomes;  // how each state ended
  std::vector<std::string> examples;            // the first violations, in full
  double seconds = 0;

  std::string examples_text() const;
};

// Explore every crash point of the run recorded by `recorder` for workload `w`.
Report explore(const std::string& name, const SimFs& recorder, const Workload& w, const ExploreOptions& options);
// The same for a run driven by hand (e.g. from several threads): `steps` say
// when each call started and returned, `models` the model after each
// mutation in log order, `config` how to recover.
Report explore(const std::string& name, const SimFs& recorder, const PersistConfig& config,
               const std::vector<Step>& steps, const std::vector<Model>& models, const ExploreOptions& options);

// A table of reports (one row each) with totals.
std::string format_reports(const std::vector<Report>& reports);

}  // namespace iqdb::persist::test::crash
