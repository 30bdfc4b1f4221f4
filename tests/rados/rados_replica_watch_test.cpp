// Read replicas on RADOS woken by their writer through watch/notify (issue
// 11; docs/DISTRIBUTED.md, "How replicas are woken"). Needs a cluster;
// skipped unless CEPH_CONF and IQDB_RADOS_POOL are set:
//
//   scripts/ceph-cluster.sh run --osds 3 -- ctest --test-dir BUILD -L rados -R ReplicaWatch --output-on-failure
//
// Every replica polls only once a minute here (FollowOptions::interval
// 60 s), so a replica that holds a record seconds after the writer
// acknowledged it was woken. Results are compared with a model: the
// writer's acknowledged inserts. The replica that is paused is another
// process (this binary, --child replica), with its own RADOS client.
#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <iostream>
#include <map>
#include <thread>

#include "iqdb/persist.hpp"
#include "iqdb/persist/rados.hpp"
#include "rados_test_util.hpp"

namespace iqdb::persist {
namespace {

using namespace rados_test;
using namespace std::chrono_literals;

constexpr std::uint64_t kDim = 8;
constexpr auto kPoll = 60s;  // the replicas' fallback poll interval
// A wake-up that takes longer than this was not one (on a loaded 2-core
// machine a catch-up can take a second or more).
constexpr auto kWoken = 10s;

std::vector<float> vector_of(std::uint64_t id) {
  std::vector<float> v(kDim);
  for (std::uint64_t i = 0; i < kDim; ++i) v[i] = static_cast<float>(id) * 0.5f - static_cast<float>(i);
  return v;
}


PersistConfig config_for(const std::string& name, const RadosOptions& o = {}) {
  RadosLocation loc;
  loc.pool = cluster_env()->pool;
  loc.name = name;
  PersistConfig cfg = rados_persist_config(loc, o);  // a client of its own
  cfg.wal_enabled = true;
  return cfg;
}

FollowOptions watched() {
  FollowOptions o;
  o.interval = kPoll;
  return o;
}

void report(const char* what, std::vector<double> v) {
  std::sort(v.begin(), v.end());
  std::cout << "[ MEASURED ] " << what << ": " << v.size() << " inserts, lag median " << v[v.size() / 2] * 1e3
            << " ms, max " << v.back() * 1e3 << " ms\n";
}

class ReplicaWatch : public ::testing::Test {
 protected:
  void SetUp() override {
    env_ = cluster_env();
    if (!env_) GTEST_SKIP() << "no cluster: set CEPH_CONF and IQDB_RADOS_POOL (scripts/ceph-cluster.sh run)";
    name_ = unique_name("watch");
    raw_ = std::make_unique<RawPool>(*env_);
  }

  // Inserts id (acknowledged: into the model).
  void insert(PersistedIndex<FlatIndex>& db, std::uint64_t id) {
    db.insert(id, vector_of(id));
    m_[id] = vector_of(id);
  }
  // How long `r` took to cover the writer's last LSN (fails past kWoken).
  double caught(const PersistedIndex<FlatIndex>& db, const ReadReplica<FlatIndex>& r, const char* what) {
    const std::uint64_t lsn = db.last_lsn();
    const auto took = within(kWoken, [&] { return r.last_lsn() >= lsn; });
    EXPECT_TRUE(took.has_value()) << what << ": the replica has LSN " << r.last_lsn() << " of " << lsn << " after "
                                  << secs(kWoken) << " s (it polls every " << secs(kPoll) << " s)";
    return took.value_or(secs(kWoken));
  }
  // Inserts ids from..to one at a time, each waited for in `r`; prints the lags.
  void insert_each(PersistedIndex<FlatIndex>& db, const ReadReplica<FlatIndex>& r, std::uint64_t from,
                   std::uint64_t to, const char* what) {
    std::vector<double> lags;
    for (std::uint64_t id = from; id <= to; ++id) {
      insert(db, id);
      lags.push_back(caught(db, r, what));
    }
    report(what, lags);
  }
  PersistedIndex<FlatIndex> writer(const RadosOptions& o = {}) {
    return PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), config_for(name_, o));
  }
  // A replica (a client of its own) following in the background, its watch
  // standing.
  ReadReplica<FlatIndex> watching_replica() {
    auto r = ReadReplica<FlatIndex>::open(config_for(name_));
    r.start_following(watched());
    if (!within(30s, [&] { return r.watching(); })) throw std::runtime_error("no watch registered within 30 s");
    return r;
  }

  std::optional<ClusterEnv> env_;
  std::string name_;
  std::unique_ptr<RawPool> raw_;
  Model m_;
};

// A replica polling once a minute holds each insert within seconds: woken
// by the writer's notification. The notifications counted, one watch.
TEST_F(ReplicaWatch, WokenByTheWritersCommits) {
  auto db = writer();
  auto r = watching_replica();
  insert_each(db, r, 1, 20, "woken replica");
  EXPECT_TRUE(equals(r.index(), m_));
  const ReplicaStats s = r.stats();
  EXPECT_GE(s.notifications, 1u);
  EXPECT_EQ(s.watches, 1u);
  EXPECT_EQ(s.watch_breaks, 0u);
  EXPECT_EQ(r.failure(), std::nullopt);
  db.close();
}

// Through checkpoints (a publish, then the next generation's log): the
// replica follows without loading anew, woken each time.
TEST_F(ReplicaWatch, WokenThroughCheckpoints) {
  auto db = writer();
  auto r = watching_replica();
  std::uint64_t id = 0;
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 5; ++i) insert(db, ++id);
    caught(db, r, "inserts");
    db.checkpoint();
    insert(db, ++id);  // into the new generation's log
    caught(db, r, "the first insert after a checkpoint");
    ASSERT_TRUE(equals(r.index(), m_)) << "round " << round;
  }
  EXPECT_EQ(r.stats().reloads, 0u);
  EXPECT_EQ(r.failure(), std::nullopt);
  db.close();
}

// The watch broken for real: NAME.notify removed under the replica (the
// OSD drops its watchers). The replica falls back to polling every
// watch_retry (1 s), so it still holds new inserts within seconds; the
// writer's next notify makes the object again and the replica registers
// its watch anew, after which it is woken again.
TEST_F(ReplicaWatch, BrokenWatchFallsBackToPollingAndRegistersAgain) {
  auto db = writer();
  auto r = watching_replica();
  insert(db, 1);
  caught(db, r, "before");
  ASSERT_EQ(raw_->remove(name_ + ".notify"), 0);
  ASSERT_TRUE(within(30s, [&] { return r.stats().watch_breaks >= 1; })) << "the replica did not see its watch break";
  insert(db, 2);  // the writer's notify finds no object: it makes it
  caught(db, r, "while the watch is down");
  ASSERT_TRUE(within(30s, [&] { return r.stats().watches >= 2 && r.watching(); })) << "not registered again";
  insert_each(db, r, 3, 8, "woken again, after the watch was registered anew");
  EXPECT_TRUE(equals(r.index(), m_));
  const ReplicaStats s = r.stats();
  std::cout << "[ MEASURED ] notifications " << s.notifications << ", watches " << s.watches << ", breaks "
            << s.watch_breaks << "\n";
  EXPECT_EQ(r.failure(), std::nullopt);
  db.close();
}

// Notifications carry nothing the replica trusts: hostile ones (from any
// client that can reach the pool: a fenced writer, garbage payloads of 0
// bytes to 1 MiB) only make it read what RADOS holds. It applies nothing
// new and stays equal to the writer's acknowledged inserts.
TEST_F(ReplicaWatch, HostileNotificationsOnlyWake) {
  auto db = writer();
  for (std::uint64_t id = 1; id <= 5; ++id) insert(db, id);
  auto r = watching_replica();
  caught(db, r, "before");
  const std::uint64_t before = r.stats().notifications;
  std::mt19937_64 rng(7);
  const std::string oid = name_ + ".notify";
  for (const std::size_t len : {std::size_t{0}, std::size_t{1}, std::size_t{64}, std::size_t{1} << 20}) {
    std::vector<char> junk(len);
    for (char& c : junk) c = static_cast<char>(rng());
    char* reply = nullptr;
    std::size_t reply_len = 0;
    const int rc = rados_notify2(raw_->io(), oid.c_str(), junk.data(), static_cast<int>(len), 5000, &reply, &reply_len);
    if (reply != nullptr) rados_buffer_free(reply);
    EXPECT_EQ(rc, 0) << "notify of " << len << " bytes";
  }
  ASSERT_TRUE(within(kWoken, [&] { return r.stats().notifications >= before + 4; }));
  std::this_thread::sleep_for(200ms);  // the rounds they started
  EXPECT_EQ(r.last_lsn(), db.last_lsn());
  EXPECT_TRUE(equals(r.index(), m_));
  EXPECT_EQ(r.failure(), std::nullopt);
  insert(db, 6);
  caught(db, r, "after");
  EXPECT_TRUE(equals(r.index(), m_));
  db.close();
}

// A watcher that stops answering (a replica process SIGSTOPped: its watch
// stays registered on the OSD, and every notify waits notify_timeout, 5 s
// here, for its acknowledgement) never holds the writer back: no insert
// call takes half the time-out, and the inserts per second stay within a
// quarter of those before the pause. A live replica in this process still
// sees the inserts. Resumed, the paused replica catches up with the writer.
TEST_F(ReplicaWatch, DeadWatcherNeverBlocksTheWriter) {
  RadosOptions o;
  o.notify_timeout = 5s;
  auto db = writer(o);
  ChildProcess child({"--child", "replica", name_});
  ASSERT_EQ(child.read_line(), "watching");
  ResumeOnExit resume{{child.pid()}};
  auto live = watching_replica();
  std::uint64_t id = 0;
  // Inserts for `span`: how many, and the slowest call.
  const auto phase = [&](std::chrono::seconds span) {
    std::uint64_t n = 0;
    double slowest = 0;
    const auto t0 = Clock::now();
    while (Clock::now() - t0 < span) {
      const auto c0 = Clock::now();
      insert(db, ++id);
      slowest = std::max(slowest, secs(Clock::now() - c0));
      ++n;
    }
    return std::pair{n, slowest};
  };
  const auto [n_live, slow_live] = phase(4s);
  ASSERT_EQ(::kill(child.pid(), SIGSTOP), 0);
  const auto [n_dead, slow_dead] = phase(4s);
  std::cout << "[ MEASURED ] inserts in 4 s: " << n_live << " (slowest call " << slow_live * 1e3 << " ms) with every "
            << "watcher alive, " << n_dead << " (slowest " << slow_dead * 1e3
            << " ms) with one stopped (notify time-out 5 s)\n";
  EXPECT_LT(slow_dead, 2.5);
  EXPECT_GE(n_dead * 4, n_live);
  // The live replica is woken by the first notify of each wait (delivered to
  // every watcher at once); at worst the next one comes a time-out later.
  const std::uint64_t lsn = db.last_lsn();
  const auto took = within(kWoken + 5s, [&] { return live.last_lsn() >= lsn; });
  ASSERT_TRUE(took.has_value()) << "the live replica has LSN " << live.last_lsn() << " of " << lsn;
  std::cout << "[ MEASURED ] the live replica held the last insert " << *took * 1e3 << " ms after it\n";
  EXPECT_TRUE(equals(live.index(), m_));
  ASSERT_EQ(::kill(child.pid(), SIGCONT), 0);
  // Resumed: woken by the notifications queued for it, or by its next
  // round; it reports the LSN and size it reached.
  const auto reached = within(60s, [&] {
    child.send("state");
    return child.read_line() == std::to_string(lsn) + " " + std::to_string(m_.size());
  });
  EXPECT_TRUE(reached.has_value()) << "the resumed replica did not reach LSN " << lsn;
  child.send("quit");
  db.close();
}

// --child replica NAME: a replica following with a watch (60 s polls);
// "watching" once the watch stands; then answers "state" with "LSN SIZE".
int child_replica(const std::string& name) {
  auto r = ReadReplica<FlatIndex>::open(config_for(name));
  r.start_following(watched());
  if (!within(30s, [&] { return r.watching(); })) {
    std::cout << "no watch" << std::endl;
    return 1;
  }
  std::cout << "watching" << std::endl;
  std::string cmd;
  while (std::getline(std::cin, cmd) && cmd != "quit") {
    const std::uint64_t lsn = r.last_lsn();  // not under read(): a catch-up takes poll_mu, then the index's lock
    const std::size_t size = r.read([](const FlatIndex& ix) { return ix.size(); });
    std::cout << lsn << " " << size << std::endl;
  }
  return 0;
}

}  // namespace
}  // namespace iqdb::persist

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--child" && std::string(argv[2]) == "replica") {
    try {
      return iqdb::persist::child_replica(argv[3]);
    } catch (const std::exception& e) {
      std::cout << "err " << e.what() << std::endl;
      return 1;
    }
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
