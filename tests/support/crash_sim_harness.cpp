// The crash simulator's harness: model, workload driver, explorer, report.
#include "support/crash_sim_harness.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <utility>

#include "iqdb/persist/checksum.hpp"

namespace iqdb::persist::test::crash {

namespace fs = std::filesystem;

// ---------------------------------------------------------------- the model

bool operator==(const Entry& a, const Entry& b) {
  return a.vec.size() == b.vec.size() &&
         (a.vec.empty() || std::memcmp(a.vec.data(), b.vec.data(), a.vec.size() * sizeof(float)) == 0) &&
         a.meta == b.meta;
}

Model model_of(const FlatIndex& index) {
  Model m;
  for (std::size_t row = 0; row < index.size(); ++row) {
    const std::span<const float> v = index.vector_at(row);
    const Metadata* meta = index.metadata_at(row);
    m[index.id_at(row)] = Entry{{v.begin(), v.end()}, meta != nullptr ? std::optional<Metadata>(*meta) : std::nullopt};
  }
  return m;
}

std::string describe(const Model& m, const Model* other) {
  std::string s = std::to_string(m.size()) + " vectors:";
  for (const auto& [id, e] : m) s += " " + id.to_string();
  if (other != nullptr) {
    std::string d;
    for (const auto& [id, e] : m) {
      const auto it = other->find(id);
      if (it == other->end()) {
        d += " +" + id.to_string();
      } else if (!(it->second == e)) {
        d += " ~" + id.to_string();
      }
    }
    for (const auto& [id, e] : *other) {
      if (m.count(id) == 0) d += " -" + id.to_string();
    }
    s += " (vs expected:" + (d.empty() ? std::string(" same") : d) + ")";
  }
  return s;
}

std::vector<float> vec_of(std::uint64_t seed, std::uint64_t dim) {
  std::vector<float> v(static_cast<std::size_t>(dim));
  for (std::size_t k = 0; k < v.size(); ++k) {
    v[k] = static_cast<float>((seed * 131 + k * 17) % 1000) / 8.0f - 60.0f;
  }
  return v;
}

// ---------------------------------------------------------------- workloads

Workload::Workload(SimFs& recorder, PersistConfig config) : recorder_(recorder), config_(std::move(config)) {}

Workload::~Workload() = default;

template <class F>
void Workload::call(std::string what, bool mutates, std::int64_t promises, F&& f) {
  Step s;
  s.what = std::move(what);
  s.begin = recorder_.op_count();
  std::forward<F>(f)();
  s.end = recorder_.op_count();
  if (mutates) models_.push_back(next_);
  s.model = current();
  // A promise about "the model after this call": resolve the sentinel.
  s.promises = promises == -2 ? current() : promises;
  steps_.push_back(std::move(s));
}

// promises: -2 = "the model after this call", -1 = nothing.
namespace {
constexpr std::int64_t kThis = -2;
constexpr std::int64_t kNothing = -1;
}  // namespace

void Workload::open_with(const Model& initial, std::uint64_t dim) {
  dim_ = dim;
  FlatIndex index(dim, DistanceMetric::Euclidean);
  for (const auto& [id, e] : initial) index.insert(id, e.vec, e.meta);
  next_ = initial;
  // With a WAL, open_with writes a durable base snapshot; without, nothing.
  call("open_with (" + std::to_string(initial.size()) + " vectors)", true, config_.wal_enabled ? kThis : kNothing,
       [&] {
         db_.reset();
         db_.emplace(PersistedIndex<FlatIndex>::open_with(std::move(index), config_));
       });
}

void Workload::insert(const VectorId& id, const std::vector<float>& vec, std::optional<Metadata> meta) {
  next_ = model();
  next_[id] = Entry{vec, meta};
  const bool durable = config_.wal_enabled && mode() == FsyncPolicy::Mode::Always;
  call("insert " + id.to_string(), true, durable ? kThis : kNothing, [&] { db_->insert(id, vec, std::move(meta)); });
}

void Workload::erase(const VectorId& id) {
  next_ = model();
  next_.erase(id);
  const bool durable = config_.wal_enabled && mode() == FsyncPolicy::Mode::Always;
  call("erase " + id.to_string(), true, durable ? kThis : kNothing, [&] { db_->erase(id); });
}

void Workload::write(const WriteBatch& batch) {
  next_ = model();
  for (const WriteBatch::Mutation& m : batch.mutations()) {
    if (m.op == wal::Op::Insert) {
      next_[m.id] = Entry{m.vector, m.metadata};
    } else {
      next_.erase(m.id);
    }
  }
  const bool durable = config_.wal_enabled && mode() == FsyncPolicy::Mode::Always;
  call("write batch of " + std::to_string(batch.size()), true, durable ? kThis : kNothing,
       [&] { db_->write(batch); });
}

void Workload::sync() {
  call("sync", false, config_.wal_enabled ? kThis : kNothing, [&] { db_->sync(); });
}

void Workload::checkpoint() {
  // With a WAL a checkpoint's snapshot is always durable; without, it is save().
  const bool durable = config_.wal_enabled || mode() != FsyncPolicy::Mode::Never;
  call("checkpoint", false, durable ? kThis : kNothing, [&] { db_->checkpoint(); });
}

void Workload::save() {
  const bool durable = config_.wal_enabled || mode() != FsyncPolicy::Mode::Never;
  call("save", false, durable ? kThis : kNothing, [&] { db_->save(); });
}

void Workload::close() {
  const bool durable = config_.wal_enabled && mode() != FsyncPolicy::Mode::Never;
  call("close", false, durable ? kThis : kNothing, [&] {
    db_->close();
    db_.reset();
  });
}

void Workload::wait_for_auto_checkpoints(std::uint64_t count) {
  call("automatic checkpoint " + std::to_string(count), false, kNothing, [&] {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (db_->wal_stats().auto_checkpoints < count) {
      if (std::chrono::steady_clock::now() > until) {
        throw std::runtime_error("automatic checkpoint " + std::to_string(count) + " did not run in 20 s");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
}

void Workload::reopen() {
  call("load", false, kNothing, [&] { db_.emplace(PersistedIndex<FlatIndex>::load(config_)); });
}

// ---------------------------------------------------------------- recovering

namespace {

// What recovering one disk gave.
struct Recovered {
  enum class Kind { Index, Error, Foreign };
  Kind kind = Kind::Index;
  ErrorKind error = ErrorKind::Io;
  int sys_errno = 0;
  std::string what;
  Model model;                       // Kind::Index
  std::vector<std::size_t> matches;  // workload models equal to it
  bool crash_checked = false;
  std::string unstable;  // a crash during this recovery recovered something else
};

struct Key {
  std::uint64_t hash;
  std::uint32_t crc;
  std::uint64_t bytes;
  friend bool operator==(const Key&, const Key&) = default;
};
struct KeyHash {
  std::size_t operator()(const Key& k) const noexcept { return static_cast<std::size_t>(k.hash ^ k.crc); }
};

Key key_of(const Image& img) {
  Key k{image_hash(img), 0, 0};
  checksum::Crc32 crc;
  for (const auto& [path, content] : img) {
    crc.update(path.native().data(), path.native().size());
    const std::span<const std::byte> b = content.stored();
    crc.update(b.data(), b.size());
    const std::uint64_t size = content.size();
    crc.update(&size, sizeof size);
    k.bytes += b.size() + 1;
  }
  k.crc = crc.value();
  return k;
}

class Recoverer {
 public:
  Recoverer(const PersistConfig& cfg, std::set<fs::path> dirs, const std::vector<Model>& models,
            const ExploreOptions& options, Report& report)
      : cfg_(cfg), dirs_(std::move(dirs)), models_(models), options_(options), report_(report) {}

  const Recovered& recover(const Image& img) {
    const Key k = key_of(img);
    auto it = cache_.find(k);
    if (it == cache_.end()) {
      ++report_.recoveries;
      std::vector<Op> trace;
      Recovered r = load(img, options_.crash_recoveries ? &trace : nullptr);
      if (options_.crash_recoveries && r.kind == Recovered::Kind::Index) crash_check(img, trace, r);
      r.crash_checked = true;
      it = cache_.emplace(k, std::move(r)).first;
    }
    return it->second;
  }

 private:
  Recovered load(const Image& img, std::vector<Op>* trace) {
    SimFs sim(dirs_, img, SimFs::Options{0xbadcafe, trace != nullptr});
    PersistConfig c = cfg_;
    c.file_system = &sim;
    // A recovery is a plain load: no thread of its own writing behind it
    // (the recorded workload's automatic checkpoints are what is checked).
    c.checkpoint_log_bytes = 0;
    Recovered r;
    try {
      {
        auto db = PersistedIndex<FlatIndex>::load(c);
        r.model = model_of(db.index());
        db.close();
      }
      for (std::size_t p = 0; p < models_.size(); ++p) {
        if (models_[p] == r.model) r.matches.push_back(p);
      }
    } catch (const PersistError& e) {
      r.kind = Recovered::Kind::Error;
      r.error = e.kind();
      r.sys_errno = e.sys_errno();
      r.what = e.what();
    } catch (const std::exception& e) {
      r.kind = Recovered::Kind::Foreign;
      r.what = e.what();
    }
    if (trace != nullptr) *trace = sim.trace();
    return r;
  }

  // A crash at any point of the recovery (and of the close after it) must
  // recover the same index.
  void crash_check(const Image& img, const std::vector<Op>& trace, Recovered& r) {
    const bool wrote = std::any_of(trace.begin(), trace.end(), [](const Op& op) {
      return op.kind == OpKind::Write || op.kind == OpKind::Truncate || op.kind == OpKind::Rename ||
             (op.kind == OpKind::Remove && op.ino != 0);
    });
    if (!wrote) return;
    const Key original = key_of(img);
    replay(dirs_, img, trace, [&](std::size_t point, const DiskModel& disk) {
      if (!r.unstable.empty()) return;
      for (const CrashState& s : disk.crash_states(options_.states)) {
        ++report_.recovery_states;
        const Key k = key_of(s.image);
        if (k == original) continue;  // nothing of the recovery persisted
        auto it = plain_.find(k);
        if (it == plain_.end()) {
          ++report_.recovery_loads;
          it = plain_.emplace(k, load(s.image, nullptr)).first;
        }
        const Recovered& again = it->second;
        if (again.kind == Recovered::Kind::Index && again.model == r.model) continue;
        r.unstable = "a crash after op " + std::to_string(point) + " of the recovery (" +
                     (point > 0 ? trace[point - 1].describe() : std::string("start")) + "), state \"" + s.how +
                     "\" [" + describe(s.image) + "], recovers " +
                     (again.kind == Recovered::Kind::Index ? describe(again.model, &r.model) : "an error: " + again.what);
        return;
      }
    });
  }

  PersistConfig cfg_;
  std::set<fs::path> dirs_;
  const std::vector<Model>& models_;
  const ExploreOptions& options_;
  Report& report_;
  std::unordered_map<Key, Recovered, KeyHash> cache_;
  std::unordered_map<Key, Recovered, KeyHash> plain_;  // recoveries of crashed recoveries
};

// Typed errors a policy allows after a power loss (beyond "no index yet").
bool error_allowed(const PersistConfig& cfg, ErrorKind kind) {
  const FsyncPolicy::Mode mode = cfg.fsync_policy.mode();
  if (cfg.wal_enabled) {
    // Unsynced log writes may land out of order: a lost record followed by
    // a persisted one reads as damage in the middle of the log, which the
    // library reports rather than guesses about (`wal repair` cuts it).
    return mode != FsyncPolicy::Mode::Always && kind == ErrorKind::CorruptLog;
  }
  // Without a WAL and with FsyncPolicy::Never snapshots are not fsynced: a
  // renamed snapshot whose data did not reach the disk is documented loss.
  return mode == FsyncPolicy::Mode::Never && kind != ErrorKind::Io;
}

}  // namespace

std::string Report::examples_text() const {
  std::string s;
  for (const std::string& e : examples) s += e + "\n";
  if (violations > examples.size()) s += "... and " + std::to_string(violations - examples.size()) + " more\n";
  return s;
}

Report explore(const std::string& name, const SimFs& recorder, const Workload& w, const ExploreOptions& options) {
  return explore(name, recorder, w.config(), w.steps(), w.models(), options);
}

Report explore(const std::string& name, const SimFs& recorder, const PersistConfig& cfg,
               const std::vector<Step>& steps, const std::vector<Model>& models, const ExploreOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  Report rep;
  rep.name = name;
  const std::vector<Op> trace = recorder.trace();
  rep.ops = trace.size();
  rep.steps = steps.size();
  const fs::path snapshot = cfg.path.lexically_normal();
  Recoverer rec(cfg, recorder.dirs(), models, options, rep);
  const bool always = cfg.fsync_policy.mode() == FsyncPolicy::Mode::Always;

  replay(recorder.dirs(), recorder.initial_image(), trace, [&](std::size_t point, const DiskModel& disk) {
    if (rep.violations >= options.stop_after) return;
    ++rep.crash_points;
    // What the calls so far promise and allow.
    std::int64_t required = -1;  // every model up to this one must survive
    std::int64_t acked = -1;     // the model after the last call that returned
    std::int64_t issued = -1;    // the model after the last call that started
    const Step* last_acked = nullptr;
    for (const Step& s : steps) {
      if (s.end <= point) {
        required = std::max(required, s.promises);
        acked = std::max(acked, s.model);
        last_acked = &s;
      }
      if (s.begin < point) issued = std::max(issued, s.model);
    }

    for (const CrashState& state : disk.crash_states(options.states)) {
      ++rep.states;
      std::string outcome;
      std::string violation;
      const bool has_snapshot = state.image.count(snapshot) != 0;
      if (!has_snapshot && required >= 0) {
        violation = "the snapshot is gone although the model after call " + std::to_string(required) +
                    " was promised durable";
      } else {
        const Recovered& r = rec.recover(state.image);
        switch (r.kind) {
          case Recovered::Kind::Foreign:
            violation = "recovery threw a non-PersistError exception: " + r.what;
            break;
          case Recovered::Kind::Error:
            if (!has_snapshot && r.error == ErrorKind::Io && r.sys_errno == ENOENT) {
              outcome = "no index yet (nothing promised)";
            } else if (error_allowed(cfg, r.error) && !always) {
              outcome = "typed error " + std::string(to_string(r.error)) + " (allowed: nothing unsynced promised)";
            } else {
              violation = "recovery failed: " + r.what;
            }
            break;
          case Recovered::Kind::Index: {
            std::int64_t best = -1;
            for (const std::size_t p : r.matches) {
              const auto q = static_cast<std::int64_t>(p);
              if (q >= required && q <= issued) best = std::max(best, q);
            }
            if (!has_snapshot) {
              violation = "recovered an index although the snapshot file is missing";
            } else if (best >= 0) {
              if (best == issued) {
                outcome = "recovered every call issued";
              } else if (best >= acked) {
                outcome = "recovered every acknowledged call, lost the one in flight";
              } else {
                outcome = "lost acknowledged calls the policy does not promise durable";
              }
              if (!r.unstable.empty()) violation = "recovery is not crash-safe: " + r.unstable;
            } else if (!r.matches.empty() && static_cast<std::int64_t>(r.matches.back()) < required) {
              violation = "acknowledged calls lost: recovered the model after call " +
                          std::to_string(r.matches.back()) + ", the acknowledged calls promise " +
                          std::to_string(required) + " (" + describe(r.model, &models[static_cast<std::size_t>(required)]) + ")";
            } else if (!r.matches.empty()) {
              violation = "recovered calls that were not issued yet (model " + std::to_string(r.matches.front()) + ")";
            } else {
              const std::size_t near = static_cast<std::size_t>(std::max<std::int64_t>(std::min(issued, acked), 0));
              violation = "recovered an index that is not the model after any prefix of the calls: " +
                          describe(r.model, &models[std::min(near, models.size() - 1)]);
            }
            break;
          }
        }
      }
      if (violation.empty()) {
        ++rep.outcomes[outcome];
        continue;
      }
      ++rep.violations;
      ++rep.outcomes["VIOLATION"];
      if (rep.examples.size() < options.max_examples) {
        std::ostringstream o;
        o << "[" << name << "] crash after op " << point << " of " << trace.size();
        if (point > 0) o << " (" << trace[point - 1].describe() << ")";
        o << "; last acknowledged call: " << (last_acked != nullptr ? last_acked->what : std::string("none"))
          << "; promised model " << required << ", issued up to " << issued << "\n    state: " << state.how
          << "\n    disk: " << describe(state.image) << "\n    " << violation;
        rep.examples.push_back(o.str());
      }
    }
  });
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

std::string format_reports(const std::vector<Report>& reports) {
  std::ostringstream o;
  char line[256];
  std::snprintf(line, sizeof line, "%-24s %6s %7s %7s %8s %10s %10s %10s %10s %7s\n", "workload", "calls", "fs-ops",
                "points", "states", "recoveries", "re-crashed", "re-loads", "violations", "secs");
  o << line;
  Report total;
  for (const Report& r : reports) {
    std::snprintf(line, sizeof line, "%-24s %6zu %7zu %7zu %8zu %10zu %10zu %10zu %10zu %7.2f\n", r.name.c_str(),
                  r.steps, r.ops, r.crash_points, r.states, r.recoveries, r.recovery_states, r.recovery_loads,
                  r.violations, r.seconds);
    o << line;
    total.steps += r.steps;
    total.ops += r.ops;
    total.crash_points += r.crash_points;
    total.states += r.states;
    total.recoveries += r.recoveries;
    total.recovery_states += r.recovery_states;
    total.recovery_loads += r.recovery_loads;
    total.violations += r.violations;
    total.seconds += r.seconds;
    for (const auto& [k, v] : r.outcomes) total.outcomes[k] += v;
  }
  std::snprintf(line, sizeof line, "%-24s %6zu %7zu %7zu %8zu %10zu %10zu %10zu %10zu %7.2f\n", "total",
                total.steps, total.ops, total.crash_points, total.states, total.recoveries, total.recovery_states,
                total.recovery_loads, total.violations, total.seconds);
  o << line << "outcomes (states):\n";
  for (const Report& r : reports) {
    o << "  " << r.name << ":";
    for (const auto& [k, v] : r.outcomes) o << " [" << k << ": " << v << "]";
    o << "\n";
  }
  return o.str();
}

}  // namespace iqdb::persist::test::crash
