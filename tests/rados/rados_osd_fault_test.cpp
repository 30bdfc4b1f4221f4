// OSDs paused (SIGSTOP) in the middle of a save and in the middle of a
// stream of appends (issue 11: "an OSD stopped during a save and during
// appends: a typed error or a successful call, never a hang past the
// configured timeout, the previous snapshot intact, everything acknowledged
// recoverable once the OSD is back; with three OSDs, writes go on while one
// is down"). The other RADOS tests pause OSDs before an operation starts;
// these pause them while it runs. Needs a scripts/ceph-cluster.sh cluster
// (its OSD pid files); the one-of-three tests need --osds 3:
//
//   scripts/ceph-cluster.sh run --osds 3 -- ctest --test-dir BUILD -R rados_osd_fault --output-on-failure
//
// Every result is compared with an independent model: a std::map of the
// vectors the test asked to store, each a function of its id.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "iqdb/persist.hpp"
#include "iqdb/persist/rados.hpp"
#include "rados_test_util.hpp"

namespace iqdb::persist {
namespace {

using namespace rados_test;
using namespace std::chrono_literals;

constexpr std::uint64_t kDim = 32;

std::vector<float> vector_of(std::uint64_t id) {
  std::vector<float> v(kDim);
  for (std::uint64_t d = 0; d < kDim; ++d) v[d] = static_cast<float>(id) + 0.25f * static_cast<float>(d);
  return v;
}

Model model_of(std::uint64_t first, std::uint64_t last) {
  Model m;
  for (std::uint64_t id = first; id <= last; ++id) m[id] = vector_of(id);
  return m;
}

FlatIndex index_of(const Model& m) {
  FlatIndex ix(kDim, DistanceMetric::Euclidean);
  for (const auto& [id, v] : m) ix.insert(id, v);
  return ix;
}

// "" when equal, else the first difference.
std::string diff(const FlatIndex& ix, const Model& m) {
  if (ix.size() != m.size()) return "size " + std::to_string(ix.size()) + ", model " + std::to_string(m.size());
  for (const auto& [id, v] : m) {
    if (!ix.contains(id)) return "id " + std::to_string(id) + " missing";
    const auto got = ix.get(id);
    if (!std::equal(got.begin(), got.end(), v.begin(), v.end())) return "id " + std::to_string(id) + " differs";
  }
  return "";
}

// Small stripes and log objects, so that a few MB make many operations.
RadosOptions options(std::chrono::seconds op_timeout) {
  RadosOptions o;
  o.stripe_size = 256 * 1024;
  o.io_chunk = 64 * 1024;
  o.max_in_flight = 4;
  o.log_object_size = 64 * 1024;
  o.op_timeout = op_timeout;
  return o;
}

// Forwards a payload in 64 KiB pieces and calls `at_half` once, when half
// of `total` bytes have gone through: the stripes before it are written or
// in flight, the rest not yet.
class GatedWriter final : public PayloadWriter {
 public:
  GatedWriter(PayloadWriter& inner, std::uint64_t total, std::function<void()> at_half)
      : inner_(inner), half_(total / 2), at_half_(std::move(at_half)) {}
  void write(const void* data, std::size_t size) override {
    const auto* p = static_cast<const std::byte*>(data);
    for (std::size_t done = 0; done < size;) {
      const std::size_t n = std::min<std::size_t>(size - done, 64 * 1024);
      inner_.write(p + done, n);
      done += n;
      if (at_half_ && inner_.bytes_written() >= half_) std::exchange(at_half_, nullptr)();
    }
  }
  std::uint64_t bytes_written() const noexcept override { return inner_.bytes_written(); }
  std::uint64_t file_offset() const noexcept override { return inner_.file_offset(); }
  void mark_aligned_block() override { inner_.mark_aligned_block(); }

 private:
  PayloadWriter& inner_;
  std::uint64_t half_;
  std::function<void()> at_half_;
};

// save_to_rados of `m`, calling `at_half` halfway through the payload.
void gated_save(RadosSnapshotStore& store, const std::string& name, const Model& m, std::function<void()> at_half) {
  const FlatIndex ix = index_of(m);
  const SnapshotInfo info{FlatIndex::index_type, kDim, ix.metric(), ix.size(), 0};
  const std::uint64_t payload = ix.size() * (kDim * sizeof(float) + sizeof(std::uint64_t));
  write_snapshot(store, store.path_of(name), info, Compression::none(), true, [&](PayloadWriter& w) {
    GatedWriter g(w, payload, at_half);
    ix.save_to(g);
  });
}


// The output of a monitor command (JSON), or nothing if it failed.
std::optional<std::string> mon_command(const ClusterEnv& env, const char* json_cmd) {
  rados_t c = nullptr;
  std::optional<std::string> r;
  if (rados_create2(&c, "ceph", "client.admin", 0) == 0 && rados_conf_read_file(c, env.conf.c_str()) == 0 &&
      rados_connect(c) == 0) {
    const char* cmd[] = {json_cmd};
    char *out = nullptr, *status = nullptr;
    std::size_t out_len = 0, status_len = 0;
    if (rados_mon_command(c, cmd, 1, "", 0, &out, &out_len, &status, &status_len) == 0) r.emplace(out, out_len);
    rados_buffer_free(out);
    rados_buffer_free(status);
  }
  rados_shutdown(c);
  return r;
}

// A monitor command's JSON output, parsed; null if the command or the
// parse failed.
nlohmann::json mon_json(const ClusterEnv& env, const char* json_cmd) {
  const auto out = mon_command(env, json_cmd);
  if (!out) return nullptr;
  return nlohmann::json::parse(*out, nullptr, /*allow_exceptions=*/false);
}

// How many OSDs the monitors count as up, and how many exist ("osd stat").
std::pair<int, int> osds_up(const ClusterEnv& env) {
  const nlohmann::json j = mon_json(env, R"({"prefix": "osd stat", "format": "json"})");
  if (!j.is_object()) return {-1, -1};
  return {j.value("num_up_osds", -1), j.value("num_osds", -1)};
}

// Whether every placement group is active+clean ("status": the PG map's
// states as the manager last reported them, within a second here:
// scripts/ceph-cluster.sh sets mgr_stats_period = 1).
bool pgs_clean(const ClusterEnv& env) {
  const nlohmann::json j = mon_json(env, R"({"prefix": "status", "format": "json"})");
  if (!j.is_object() || !j.contains("pgmap") || !j["pgmap"].is_object()) return false;
  const nlohmann::json& pgmap = j["pgmap"];
  const int total = pgmap.value("num_pgs", -1);
  int clean = 0;
  for (const nlohmann::json& s : pgmap.value("pgs_by_state", nlohmann::json::array())) {
    if (!s.is_object() || s.value("state_name", "") != "active+clean") return false;
    clean += s.value("count", 0);
  }
  return total > 0 && clean == total;
}

class RadosOsdFault : public ::testing::Test {
 protected:
  void SetUp() override {
    env_ = cluster_env();
    if (!env_) GTEST_SKIP() << "no cluster: set CEPH_CONF and IQDB_RADOS_POOL (scripts/ceph-cluster.sh run)";
    osds_ = osd_pids(*env_);
    if (osds_.empty()) GTEST_SKIP() << "no OSD pid files beside CEPH_CONF (not a scripts/ceph-cluster.sh cluster)";
    // An OSD paused by an earlier test is marked down until it rejoins:
    // pausing it again would test nothing.
    ASSERT_TRUE(all_osds_up()) << "not every OSD is up and every PG active+clean before the test";
    name_ = unique_name("osdfault");
    raw_ = std::make_unique<RawPool>(*env_);
  }
  // Leaves the cluster whole for the tests that run next.
  void TearDown() override {
    if (env_ && !osds_.empty()) {
      EXPECT_TRUE(all_osds_up()) << "an OSD did not rejoin, or a PG did not become active+clean, after the test";
    }
  }
  // Waits (up to two minutes) until the monitors count every OSD up and
  // every placement group is active+clean, twice in a row 2 s apart (a PG
  // map reported before an OSD went down or came back is not taken for the
  // state after): an OSD counted up may still be peering, and the tests
  // that run next (their bounds are seconds) would wait for it.
  bool all_osds_up() {
    const auto t0 = Clock::now();
    int clean_in_a_row = 0;
    for (;;) {
      const auto [up, all] = osds_up(*env_);
      const bool up_all = up > 0 && up == all && all == static_cast<int>(osds_.size());
      clean_in_a_row = up_all && pgs_clean(*env_) ? clean_in_a_row + 1 : 0;
      if (clean_in_a_row == 2) return true;
      if (Clock::now() - t0 > 120s) return false;
      std::this_thread::sleep_for(clean_in_a_row > 0 ? 2s : 500ms);
    }
  }
  std::shared_ptr<RadosSnapshotStore> store(std::chrono::seconds op_timeout) {
    RadosLocation loc;
    loc.pool = env_->pool;
    loc.name = name_;
    return RadosSnapshotStore::open(loc, options(op_timeout));
  }
  // `lease`: the writer lock's. A writer whose renewal stalls past it
  // (an OSD paused until the cluster marks it down: 6-14 s measured here)
  // fences itself, so the one-OSD test keeps the default 30 s.
  PersistConfig wal_config(std::chrono::seconds op_timeout, std::chrono::seconds lease = 30s) {
    RadosLockOptions lock;
    lock.lease = lease;
    lock.take_over = true;
    PersistConfig cfg = rados_persist_config(store(op_timeout), name_, lock);
    cfg.wal_enabled = true;
    return cfg;
  }
  // The generations that have stripe objects in the pool.
  std::set<std::uint64_t> generations_with_stripes() {
    std::set<std::uint64_t> out;
    rados_list_ctx_t ctx = nullptr;
    if (rados_nobjects_list_open(raw_->io(), &ctx) != 0) return out;
    const std::string prefix = name_ + ".snap.";
    const char* oid = nullptr;
    while (rados_nobjects_list_next(ctx, &oid, nullptr, nullptr) == 0) {
      const std::string o(oid);
      if (o.rfind(prefix, 0) == 0) out.insert(std::stoull(o.substr(prefix.size())));
    }
    rados_nobjects_list_close(ctx);
    return out;
  }
  void pause(const std::vector<pid_t>& which) {
    for (const pid_t p : which) ASSERT_EQ(::kill(p, SIGSTOP), 0);
  }

  std::optional<ClusterEnv> env_;
  std::vector<pid_t> osds_;
  std::string name_;
  std::unique_ptr<RawPool> raw_;
};

// Every OSD paused halfway through a save (stripes written and in flight):
// the save fails with Io in bounded time; once the OSDs run again the
// previous snapshot loads unchanged, and the next writer's save publishes
// and removes the interrupted save's stripes.
TEST_F(RadosOsdFault, AllOsdsPausedInTheMiddleOfASave) {
  const Model before = model_of(1, 1000);
  save_to_rados(*store(60s), name_, index_of(before));
  const std::uint64_t gen_before = store(60s)->head(name_)->generation;

  const Model big = model_of(1, 40000);  // ~5.4 MB of payload: 21 stripes of 256 KiB
  const ResumeOnExit resume{osds_};
  Clock::time_point paused_at{};
  const auto e = error_of([&] {
    gated_save(*store(3s), name_, big, [&] {
      pause(osds_);
      paused_at = Clock::now();
    });
  });
  ASSERT_NE(paused_at, Clock::time_point{}) << "the save never reached its middle";
  const double took = secs(Clock::now() - paused_at);
  ASSERT_TRUE(e) << "the save succeeded with every OSD paused";
  EXPECT_EQ(e->kind(), ErrorKind::Io) << e->what();
  EXPECT_LT(took, 60.0) << e->what();
  std::cout << "[ MEASURED ] save with every OSD paused halfway: failed after " << took << " s: " << e->what()
            << "\n";
  for (const pid_t p : osds_) ::kill(p, SIGCONT);

  const FlatIndex loaded = when_back([&] { return load_from_rados<FlatIndex>(*store(10s), name_); }, {ErrorKind::Io}, "load");
  EXPECT_EQ(diff(loaded, before), "");
  EXPECT_EQ(store(60s)->head(name_)->generation, gen_before);

  const Model after = model_of(5, 3000);
  save_to_rados(*store(60s), name_, index_of(after));
  const std::uint64_t gen_after = store(60s)->head(name_)->generation;
  EXPECT_EQ(diff(load_from_rados<FlatIndex>(*store(60s), name_), after), "");
  // The publish keeps the generation it replaces and removes the others.
  EXPECT_EQ(generations_with_stripes(), (std::set<std::uint64_t>{gen_before, gen_after}));
}

// Every OSD paused just before a save's publish: the publish gets no answer
// within op_timeout, and whether it took effect is unknown (a paused OSD
// may apply it once it runs again). The save fails with Io (ETIMEDOUT) and
// keeps the new generation's stripes, so whichever head the cluster ends
// with loads whole: the previous snapshot or the new one, never a head
// whose stripes were removed.
TEST_F(RadosOsdFault, AllOsdsPausedAtThePublish) {
  const Model before = model_of(1, 1000);
  save_to_rados(*store(60s), name_, index_of(before));
  const Model big = model_of(1, 3000);
  const FlatIndex ix = index_of(big);
  const auto st = store(3s);
  struct PauseAtRename : FileSystemWrapper {
    using FileSystemWrapper::FileSystemWrapper;
    std::function<void()> at;
    void rename(const std::filesystem::path& from, const std::filesystem::path& to) override {
      at();
      FileSystemWrapper::rename(from, to);
    }
  } fs(*st);
  fs.at = [&] { pause(osds_); };
  const ResumeOnExit resume{osds_};
  const SnapshotInfo info{FlatIndex::index_type, kDim, ix.metric(), ix.size(), 0};
  const auto e = error_of([&] {
    write_snapshot(fs, st->path_of(name_), info, Compression::none(), true, [&](PayloadWriter& w) { ix.save_to(w); });
  });
  ASSERT_TRUE(e) << "the publish succeeded with every OSD paused";
  EXPECT_EQ(e->kind(), ErrorKind::Io) << e->what();
  EXPECT_EQ(e->sys_errno(), ETIMEDOUT) << e->what();
  for (const pid_t p : osds_) ::kill(p, SIGCONT);

  const FlatIndex loaded = when_back([&] { return load_from_rados<FlatIndex>(*store(10s), name_); }, {ErrorKind::Io}, "load");
  const bool old = diff(loaded, before).empty();
  const bool fresh = diff(loaded, big).empty();
  EXPECT_TRUE(old || fresh) << "neither snapshot: " << diff(loaded, big);
  std::cout << "[ MEASURED ] a publish without an answer " << (fresh ? "took effect later" : "did not take effect")
            << ": " << e->what() << "\n";
}

// With three OSDs (pool size 3, min_size 2), one paused halfway through a
// save: the save completes (once the cluster marks that OSD down) and the
// new snapshot loads.
TEST_F(RadosOsdFault, OneOfThreeOsdsPausedInTheMiddleOfASave) {
  if (osds_.size() < 3) GTEST_SKIP() << "needs 3 OSDs: scripts/ceph-cluster.sh run --osds 3 -- ...";
  save_to_rados(*store(60s), name_, index_of(model_of(1, 100)));
  const Model big = model_of(1, 40000);
  const ResumeOnExit resume{{osds_[1]}};
  Clock::time_point paused_at{};
  gated_save(*store(120s), name_, big, [&] {
    pause({osds_[1]});
    paused_at = Clock::now();
  });
  ASSERT_NE(paused_at, Clock::time_point{});
  std::cout << "[ MEASURED ] save with 1 of 3 OSDs paused halfway: completed " << secs(Clock::now() - paused_at)
            << " s after the pause\n";
  EXPECT_EQ(diff(load_from_rados<FlatIndex>(*store(120s), name_), big), "");
}

// Four threads insert under Always; what each call returned is recorded.
struct Stream {
  std::mutex mu;
  Model acked;                   // returned normally
  std::set<std::uint64_t> unknown;  // threw: outcome unknown (a time-out) or refused (Poisoned)
  std::vector<std::string> errors;
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> calls{0};
  std::atomic<int> finished{0};
  double max_call_s = 0;

  void run(PersistedIndex<FlatIndex>& db, std::uint64_t thread) {
    struct Done {
      std::atomic<int>& n;
      ~Done() { ++n; }
    } done{finished};
    for (std::uint64_t k = 0; !stop; ++k) {
      const std::uint64_t id = 1'000'000 * (thread + 1) + k;
      const auto t0 = Clock::now();
      const auto e = error_of([&] { db.insert(id, vector_of(id)); });
      const double took = secs(Clock::now() - t0);
      ++calls;
      std::lock_guard g(mu);
      max_call_s = std::max(max_call_s, took);
      if (!e) {
        acked[id] = vector_of(id);
        continue;
      }
      unknown.insert(id);
      errors.push_back(std::string(to_string(e->kind())) + " after " + std::to_string(took) + " s: " + e->what());
      if (e->kind() == ErrorKind::Poisoned || e->kind() == ErrorKind::Fenced) return;
    }
  }
};

// With three OSDs, one paused for 20 s in the middle of a stream of inserts
// from four threads under Always: every call succeeds (none waits past the
// operation time-out), and another client then loads exactly what was
// acknowledged.
TEST_F(RadosOsdFault, OneOfThreeOsdsPausedDuringAppends) {
  if (osds_.size() < 3) GTEST_SKIP() << "needs 3 OSDs: scripts/ceph-cluster.sh run --osds 3 -- ...";
  const PersistConfig cfg = wal_config(120s);
  Stream s;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), cfg);
    std::vector<std::thread> threads;
    for (std::uint64_t t = 0; t < 4; ++t) threads.emplace_back([&, t] { s.run(db, t); });
    std::this_thread::sleep_for(1s);
    const std::uint64_t before_pause = s.calls;
    {
      const ResumeOnExit resume{{osds_[2]}};
      pause({osds_[2]});
      std::this_thread::sleep_for(20s);
    }
    const std::uint64_t during_pause = s.calls - before_pause;
    std::this_thread::sleep_for(1s);
    s.stop = true;
    for (auto& t : threads) t.join();
    std::cout << "[ MEASURED ] 4 threads, 1 of 3 OSDs paused for 20 s: " << s.calls << " calls, " << during_pause
              << " during the pause (and the second after it), longest call " << s.max_call_s << " s\n";
    ASSERT_TRUE(s.errors.empty()) << s.errors.front();
    EXPECT_GT(during_pause, 0u) << "no write went through while one OSD was down";
    EXPECT_LT(s.max_call_s, 120.0);
    db.close();
  }
  const auto loaded = PersistedIndex<FlatIndex>::load(wal_config(60s));
  EXPECT_EQ(diff(loaded.index(), s.acked), "");
}

// Every OSD paused in the middle of a stream of inserts from four threads
// under Always (3 s operation time-out): each thread's call fails in
// bounded time (Io for the unknown outcome, Poisoned for the calls after
// it), none hangs; once the OSDs run again another client loads every
// acknowledged insert, and of the failed ones only whole, correct records.
TEST_F(RadosOsdFault, AllOsdsPausedDuringAppends) {
  Stream s;
  {
    auto db =
        PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), wal_config(3s, 8s));
    std::vector<std::thread> threads;
    for (std::uint64_t t = 0; t < 4; ++t) threads.emplace_back([&, t] { s.run(db, t); });
    std::this_thread::sleep_for(1s);
    const ResumeOnExit resume{osds_};
    pause(osds_);
    const auto paused_at = Clock::now();
    // Every thread stops at its first Poisoned (or is stopped after 60 s).
    while (s.finished < 4 && Clock::now() - paused_at < 60s) std::this_thread::sleep_for(50ms);
    const double took = secs(Clock::now() - paused_at);
    s.stop = true;
    for (auto& t : threads) t.join();
    std::cout << "[ MEASURED ] 4 threads, every OSD paused: all failed within " << took << " s ("
              << s.acked.size() << " acknowledged before)\n";
    ASSERT_EQ(s.finished, 4) << "a writer thread was still writing 60 s after every OSD was paused";
    EXPECT_LT(took, 60.0);
    EXPECT_TRUE(db.failure());
    for (const std::string& err : s.errors) {
      EXPECT_TRUE(err.rfind(to_string(ErrorKind::Io), 0) == 0 || err.rfind(to_string(ErrorKind::Poisoned), 0) == 0)
          << err;
    }
  }
  const auto loaded = when_back([&] { return PersistedIndex<FlatIndex>::load(wal_config(10s, 8s)); },
                                {ErrorKind::Io, ErrorKind::Locked}, "load");
  for (const auto& [id, v] : s.acked) ASSERT_TRUE(loaded.index().contains(id)) << "acknowledged id " << id << " lost";
  std::size_t resolved = 0;
  for (const std::uint64_t id : s.unknown) {
    if (!loaded.index().contains(id)) continue;
    ++resolved;
    const auto got = loaded.index().get(id);
    const auto want = vector_of(id);
    EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin(), want.end())) << "id " << id;
  }
  EXPECT_EQ(loaded.index().size(), s.acked.size() + resolved) << "the load holds ids no thread wrote";
  std::cout << "[ MEASURED ] of " << s.unknown.size() << " failed calls, " << resolved << " had reached RADOS\n";
}

// A pool of the test's own (8 placement groups), deleted on every way out.
class OwnPool {
 public:
  OwnPool(const ClusterEnv& env, std::string name) : env_(env), name_(std::move(name)) {
    const std::string cmd = R"({"prefix": "osd pool create", "pool": ")" + name_ + R"(", "pg_num": 8})";
    created_ = mon_command(env_, cmd.c_str()).has_value();
  }
  ~OwnPool() {
    raw_.reset();  // (its connection first)
    if (!created_) return;
    const std::string cmd = R"({"prefix": "osd pool delete", "pool": ")" + name_ + R"(", "pool2": ")" + name_ +
                            R"(", "yes_i_really_really_mean_it": true})";
    (void)mon_command(env_, cmd.c_str());
  }
  OwnPool(const OwnPool&) = delete;
  OwnPool& operator=(const OwnPool&) = delete;
  bool created() const { return created_; }
  const std::string& name() const { return name_; }
  RadosLocation location(const std::string& index_name) const {
    RadosLocation loc;
    loc.pool = name_;
    loc.name = index_name;
    return loc;
  }
  // Sets the pool's byte quota (0: none).
  bool set_max_bytes(std::uint64_t bytes) {
    const std::string cmd = R"({"prefix": "osd pool set-quota", "pool": ")" + name_ +
                            R"(", "field": "max_bytes", "val": ")" + std::to_string(bytes) + R"("})";
    return mon_command(env_, cmd.c_str()).has_value();
  }
  // Whether the OSD map marks the pool full (its quota reached).
  bool full() {
    const nlohmann::json j = mon_json(env_, R"({"prefix": "osd dump", "format": "json"})");
    if (!j.is_object()) return false;
    for (const nlohmann::json& p : j.value("pools", nlohmann::json::array())) {
      if (p.is_object() && p.value("pool_name", "") == name_) {
        return p.value("flags_names", "").find("full") != std::string::npos;
      }
    }
    return false;
  }
  // The result of a one-byte write, tried despite a full pool, to each of
  // 32 new probe objects (spread over the placement groups, so over every
  // OSD): every one EDQUOT once the OSDs enforce the quota, 0 once they no
  // longer do (they learn a new OSD map after the monitors). New each time:
  // a full pool lets through a write that takes no more room (the same
  // byte over an object's only byte).
  bool every_probe_gets(int result) {
    if (!raw_) {
      raw_ = std::make_unique<RawPool>(ClusterEnv{env_.conf, name_});
      rados_set_pool_full_try(raw_->io());
    }
    const std::byte one{1};
    const std::string round = "probe." + std::to_string(++probes_) + ".";
    for (int i = 0; i < 32; ++i) {
      if (raw_->write_full(round + std::to_string(i), {&one, 1}) != result) return false;
    }
    return true;
  }

 private:
  ClusterEnv env_;
  std::string name_;
  bool created_ = false;
  std::unique_ptr<RawPool> raw_;
  int probes_ = 0;
};

// A pool whose quota is reached (Ceph marks it full; a write to it waits
// until it is not, unless it is tried): an insert under Always fails at
// once with Io EDQUOT, not after op_timeout with an unknown outcome
// (ETIMEDOUT before the fix), as does a checkpoint; the refusal is certain,
// so the writer is not poisoned and goes on once the quota is lifted; its
// lock is still renewed while the pool is full, and close() releases it;
// nothing acknowledged is lost, and no refused write comes back.
TEST_F(RadosOsdFault, AFullPoolRefusesWritesAtOnceAndKeepsTheLockWorking) {
  OwnPool pool(*env_, unique_name("full"));
  ASSERT_TRUE(pool.created()) << "osd pool create failed";
  const RadosLocation loc = pool.location(name_);
  RadosLockOptions lock;
  lock.lease = 6s;  // renewed every 2 s: renewals run while the pool is full
  const auto config = [&] {
    PersistConfig cfg = rados_persist_config(RadosSnapshotStore::open(loc, options(15s)), name_, lock);
    cfg.wal_enabled = true;
    return cfg;
  };
  const auto fill = [&] {
    return pool.set_max_bytes(1) && within(90s, [&] { return pool.full() && pool.every_probe_gets(-EDQUOT); });
  };
  const auto refused = [](const std::optional<PersistError>& err, const char* what) {
    ASSERT_TRUE(err.has_value()) << what << " into a full pool succeeded";
    EXPECT_EQ(err->kind(), ErrorKind::Io) << what << ": " << err->what();
    EXPECT_EQ(err->sys_errno(), EDQUOT) << what << ": " << err->what();
  };
  Model acked = model_of(1, 40);
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), config());
    for (std::uint64_t id = 1; id <= 20; ++id) db.insert(id, vector_of(id));
    db.checkpoint();
    for (std::uint64_t id = 21; id <= 40; ++id) db.insert(id, vector_of(id));
    ASSERT_TRUE(fill()) << "the pool was not marked full within 90 s";
    // A checkpoint fails as at once (its first stripe takes room); the
    // writer goes on, its snapshot and log as they were.
    refused(error_of([&] { db.checkpoint(); }), "a checkpoint");
    const auto t0 = Clock::now();
    const auto err = error_of([&] { db.insert(41, vector_of(41)); });
    const double took = secs(Clock::now() - t0);
    std::cout << "[ MEASURED ] an insert into the full pool failed after " << took << " s\n";
    refused(err, "an insert");
    // The refusal is certain (nothing was appended): the writer is not
    // poisoned, every later write is refused the same way and changes
    // nothing, lone or in a group of threads.
    EXPECT_FALSE(db.failure().has_value()) << db.failure().value_or("");
    refused(error_of([&] { db.insert(42, vector_of(42)); }), "a second insert");
    refused(error_of([&] { db.erase(7); }), "an erase");
    WriteBatch batch;
    batch.insert(43, vector_of(43));
    batch.erase(8);
    refused(error_of([&] { db.write(batch); }), "a batch");
    // A batch larger than a log object goes out with its own append.
    WriteBatch big;
    for (std::uint64_t i = 0; i < 60000; ++i) big.insert(1000000 + i, vector_of(i));
    refused(error_of([&] { db.write(big); }), "a batch of 60000 (over 8 MiB)");
    {
      std::vector<std::optional<PersistError>> errs(4);
      std::vector<std::thread> threads;
      for (std::size_t t = 0; t < errs.size(); ++t) {
        threads.emplace_back([&, t] {
          const std::uint64_t id = 50 + t;
          errs[t] = error_of([&] { db.insert(id, vector_of(id)); });
        });
      }
      for (auto& t : threads) t.join();
      for (const auto& e : errs) refused(e, "a concurrent insert");
    }
    EXPECT_FALSE(db.failure().has_value()) << db.failure().value_or("");
    EXPECT_EQ(db.last_lsn(), 40u);
    EXPECT_EQ(diff(db.index(), acked), "");
    // Two leases on, the lock is still this writer's: renewed while the
    // pool is full (it would have run out otherwise, and another writer
    // would take it).
    std::this_thread::sleep_for(14s);
    const auto second = error_of([&] { (void)PersistedIndex<FlatIndex>::load(config()); });
    ASSERT_TRUE(second.has_value()) << "a second writer opened beside the first";
    EXPECT_EQ(second->kind(), ErrorKind::Locked) << second->what();
    // Room again: the same writer goes on, at the next LSN (41: the
    // refused writes took none).
    ASSERT_TRUE(pool.set_max_bytes(0));
    ASSERT_TRUE(within(90s, [&] { return !pool.full() && pool.every_probe_gets(0); }))
        << "the pool was still full 90 s after its quota was lifted";
    db.insert(41, vector_of(41));
    EXPECT_EQ(db.last_lsn(), 41u);
    db.erase(7);
    acked[41] = vector_of(41);
    acked.erase(7);
    // Full again: close() releases the lock all the same.
    ASSERT_TRUE(fill()) << "the pool was not marked full again within 90 s";
    db.close();
  }
  // Released by close(), within the lease: the next writer is not Locked
  // (it may fail for want of room, or open without writing).
  {
    const auto next = error_of([&] { (void)PersistedIndex<FlatIndex>::load(config()); });
    if (next) {
      EXPECT_NE(next->kind(), ErrorKind::Locked) << next->what();
    }
    // Reading needs no room; the log holds no trace of the refused writes.
    PersistConfig read_cfg = config();
    read_cfg.wal_enabled = false;
    const auto read = PersistedIndex<FlatIndex>::load(read_cfg);
    EXPECT_EQ(diff(read.index(), acked), "");
    EXPECT_EQ(read.last_lsn(), 42u);
  }
}

// Under Periodic the records a full pool refused were acknowledged already:
// the writer refuses writes (Poisoned), and its close() sends them once
// there is room.
TEST_F(RadosOsdFault, UnderPeriodicRecordsAFullPoolRefusedAreSentByClose) {
  OwnPool pool(*env_, unique_name("fullp"));
  ASSERT_TRUE(pool.created()) << "osd pool create failed";
  const RadosLocation loc = pool.location(name_);
  const auto config = [&] {
    PersistConfig cfg = rados_persist_config(RadosSnapshotStore::open(loc, options(15s)), name_);
    cfg.wal_enabled = true;
    cfg.fsync_policy = FsyncPolicy::periodic(50ms);
    return cfg;
  };
  Model acked = model_of(1, 12);
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), config());
    for (std::uint64_t id = 1; id <= 10; ++id) db.insert(id, vector_of(id));
    db.sync();
    ASSERT_TRUE(pool.set_max_bytes(1));
    ASSERT_TRUE(within(90s, [&] { return pool.full() && pool.every_probe_gets(-EDQUOT); }))
        << "the pool was not marked full within 90 s";
    db.insert(11, vector_of(11));  // acknowledged before its flush
    db.insert(12, vector_of(12));
    ASSERT_TRUE(within(10s, [&] { return db.failure().has_value(); }))
        << "the periodic flush into the full pool did not fail within 10 s";
    EXPECT_NE(db.failure()->find("full"), std::string::npos) << *db.failure();
    const auto after = error_of([&] { db.insert(13, vector_of(13)); });
    ASSERT_TRUE(after.has_value()) << "an insert after the failed flush succeeded";
    EXPECT_EQ(after->kind(), ErrorKind::Poisoned) << after->what();
    ASSERT_TRUE(pool.set_max_bytes(0));
    ASSERT_TRUE(within(90s, [&] { return !pool.full() && pool.every_probe_gets(0); }))
        << "the pool was still full 90 s after its quota was lifted";
    db.close();
  }
  PersistConfig read_cfg = config();
  read_cfg.wal_enabled = false;
  const auto read = PersistedIndex<FlatIndex>::load(read_cfg);
  EXPECT_EQ(diff(read.index(), acked), "");
  EXPECT_EQ(read.last_lsn(), 12u);
}

}  // namespace
}  // namespace iqdb::persist
