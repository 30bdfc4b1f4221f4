// One writer per RADOS snapshot, fenced (RadosWriterLock, issue 11). Needs a
// cluster; skipped unless CEPH_CONF and IQDB_RADOS_POOL are set:
//
//   scripts/ceph-cluster.sh run -- ctest --test-dir build/fence -L rados --output-on-failure
//
// The writers that get killed or paused are other processes (this binary,
// --child-writer), each with its own RADOS client, standing in for another
// machine. What loads is checked against an independent model: which
// vectors each writer was told to publish, and which publishes succeeded.
#include <gtest/gtest.h>
#include <poll.h>
#include <rados/librados.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "iqdb/persist.hpp"
#include "iqdb/persist/rados.hpp"
#include "rados_test_util.hpp"
#include "support/no_threads.hpp"

namespace iqdb::persist {
namespace {

using namespace rados_test;
using namespace std::chrono_literals;

// The model: the vectors of snapshot version `seed`.
struct Model {
  std::uint64_t dim = 0;
  std::vector<std::pair<std::uint64_t, std::vector<float>>> rows;
};

Model make_model(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  Model m;
  m.dim = 16;
  const std::size_t n = 300 + static_cast<std::size_t>(seed % 7) * 10;
  std::set<std::uint64_t> used;
  while (m.rows.size() < n) {
    const std::uint64_t id = rng() % 100000;
    if (!used.insert(id).second) continue;
    std::vector<float> v(static_cast<std::size_t>(m.dim));
    for (float& x : v) x = value(rng);
    m.rows.emplace_back(id, std::move(v));
  }
  return m;
}

FlatIndex build(const Model& m) {
  FlatIndex index(m.dim, DistanceMetric::Euclidean);
  for (const auto& [id, v] : m.rows) index.insert(id, v);
  return index;
}

void expect_equal(const FlatIndex& index, const Model& m) {
  ASSERT_EQ(index.size(), m.rows.size());
  ASSERT_EQ(index.dim(), m.dim);
  for (const auto& [id, v] : m.rows) {
    const std::span<const float> got = index.get(id);
    ASSERT_EQ(got.size(), v.size()) << "id " << id;
    ASSERT_EQ(std::memcmp(got.data(), v.data(), v.size() * sizeof(float)), 0) << "id " << id;
  }
}

RadosOptions options() {
  RadosOptions o;
  o.stripe_size = 64 * 1024;
  o.io_chunk = 16 * 1024;
  o.op_timeout = std::chrono::seconds(20);
  return o;
}

std::unique_ptr<RadosSnapshotStore> open_store(const std::string& name) {
  RadosLocation loc;
  loc.pool = cluster_env()->pool;
  loc.name = name;
  return RadosSnapshotStore::open(loc, options());
}

// A writer in another process (this binary, --child-writer), driven by
// lines on its stdin; it answers one line per command on its stdout.
class ChildWriter : public ChildProcess {
 public:
  ChildWriter(const std::string& name, int lease_s, bool refuse_locally)
      : ChildProcess({"--child-writer", name, std::to_string(lease_s), refuse_locally ? "1" : "0"}) {}
  void killed() { kill(); }  // after the test SIGKILLed it: reaped
};

// "LOCKED <epoch> <address>"
struct Locked {
  std::uint64_t epoch = 0;
  std::string address;
};
std::optional<Locked> parse_locked(const std::string& line) {
  std::istringstream in(line);
  std::string word;
  Locked l;
  if (!(in >> word >> l.epoch >> l.address) || word != "LOCKED") return std::nullopt;
  return l;
}

class RadosWriterLockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cluster_env()) GTEST_SKIP() << "no cluster: set CEPH_CONF and IQDB_RADOS_POOL (scripts/ceph-cluster.sh run)";
    name_ = unique_name("lock");
    a_ = open_store(name_);
    b_ = open_store(name_);  // another client
  }
  void TearDown() override {
    if (b_) {
      try {
        b_->remove(b_->path_of(name_));
      } catch (const PersistError&) {
      }
    }
  }
  RadosLockOptions lease(int s) {
    RadosLockOptions o;
    o.lease = std::chrono::seconds(s);
    return o;
  }
  std::string name_;
  std::unique_ptr<RadosSnapshotStore> a_, b_;
};

TEST_F(RadosWriterLockTest, SecondWriterGetsLocked) {
  const auto t0 = Clock::now();
  auto first = RadosWriterLock::acquire(*a_, name_, lease(5));
  const auto t1 = Clock::now();
  std::cout << "[ MEASURED ] lock acquire (uncontended, head created, epoch raised): " << secs(t1 - t0) * 1e3
            << " ms\n";
  EXPECT_EQ(first->epoch(), 1u);
  EXPECT_TRUE(first->held());
  EXPECT_TRUE(first->fenced_writer().empty());
  EXPECT_FALSE(first->address().empty());

  const auto e = error_of([&] { (void)RadosWriterLock::acquire(*b_, name_, lease(5)); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind(), ErrorKind::Locked) << e->what();
  EXPECT_NE(std::string(e->what()).find(first->address()), std::string::npos) << e->what();

  const Model m1 = make_model(1);
  save_to_rados(*a_, name_, build(m1));
  expect_equal(load_from_rados<FlatIndex>(*b_, name_), m1);

  // A clean release: the next writer gets in at once and fences nobody.
  first->release();
  EXPECT_FALSE(first->held());
  const auto t2 = Clock::now();
  auto second = RadosWriterLock::acquire(*b_, name_, lease(5));
  std::cout << "[ MEASURED ] lock acquire after a release: " << secs(Clock::now() - t2) * 1e3 << " ms\n";
  EXPECT_EQ(second->epoch(), 2u);
  EXPECT_TRUE(second->fenced_writer().empty());
  const Model m2 = make_model(2);
  save_to_rados(*b_, name_, build(m2));
  expect_equal(load_from_rados<FlatIndex>(*a_, name_), m2);
}

TEST_F(RadosWriterLockTest, RenewalKeepsTheLockForSeveralLeases) {
  auto first = RadosWriterLock::acquire(*a_, name_, lease(3));
  const auto start = Clock::now();
  int refused = 0;
  while (Clock::now() - start < 13s) {  // over 4 leases
    auto o = lease(3);
    const auto e = error_of([&] { (void)RadosWriterLock::acquire(*b_, name_, o); });
    ASSERT_TRUE(e) << "the second writer got the lock after " << secs(Clock::now() - start) << " s";
    ASSERT_EQ(e->kind(), ErrorKind::Locked) << e->what();
    ++refused;
    ASSERT_TRUE(first->held());
    std::this_thread::sleep_for(1s);
  }
  EXPECT_GE(refused, 8);
  const Model m = make_model(3);
  save_to_rados(*a_, name_, build(m));
  expect_equal(load_from_rados<FlatIndex>(*b_, name_), m);
  // Waiting for it (take_over) gives up while it keeps renewing.
  auto o = lease(3);
  o.take_over = true;
  o.wait_timeout = 8s;
  const auto e = error_of([&] { (void)RadosWriterLock::acquire(*b_, name_, o); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind(), ErrorKind::Locked) << e->what();
  EXPECT_TRUE(first->held());
}

TEST_F(RadosWriterLockTest, KilledWriterIsTakenOverAfterItsLease) {
  constexpr int kLease = 4;
  ChildWriter child(name_, kLease, true);
  const auto locked = parse_locked(child.read_line());
  ASSERT_TRUE(locked);
  ASSERT_TRUE(child.send("SAVE 11"));
  ASSERT_EQ(child.read_line().substr(0, 5), "SAVED");
  expect_equal(load_from_rados<FlatIndex>(*b_, name_), make_model(11));

  ::kill(child.pid(), SIGKILL);
  const auto killed = Clock::now();
  child.killed();
  auto o = lease(kLease);
  o.take_over = true;
  auto taker = RadosWriterLock::acquire(*b_, name_, o);
  const double took = secs(Clock::now() - killed);
  std::cout << "[ MEASURED ] takeover after SIGKILL with a " << kLease << " s lease: " << took << " s\n";
  EXPECT_LE(took, kLease + 10.0);
  EXPECT_EQ(taker->epoch(), locked->epoch + 1);
  EXPECT_EQ(taker->fenced_writer(), locked->address);
  const Model m = make_model(12);
  save_to_rados(*b_, name_, build(m));
  expect_equal(load_from_rados<FlatIndex>(*a_, name_), m);
}

// Direct access to NAME.head's attributes (what a hostile or buggy peer
// could write there).
class RawHead : public RawPool {
 public:
  explicit RawHead(const std::string& object) : RawPool(*cluster_env()), object_(object) {}
  int set(const char* attr, const std::string& value) {
    return rados_setxattr(io(), object_.c_str(), attr, value.data(), value.size());
  }
  int remove(const char* attr) { return rados_rmxattr(io(), object_.c_str(), attr); }

 private:
  std::string object_;
};

TEST_F(RadosWriterLockTest, HostileLockAttributesAreTypedErrors) {
  { auto first = RadosWriterLock::acquire(*a_, name_, lease(5)); }  // creates the head; released
  RawHead raw(RadosSnapshotStore::head_object(name_));
  const auto kind_of_acquire = [&] {
    const auto e = error_of([&] { (void)RadosWriterLock::acquire(*a_, name_, lease(5)); });
    if (e) {
      EXPECT_EQ(e->path(), fs::path("rados://" + a_->pool() + "/" + RadosSnapshotStore::head_object(name_)));
    }
    return e ? std::optional<ErrorKind>(e->kind()) : std::nullopt;
  };
  ASSERT_EQ(raw.set("iqdb.epoch", "not a number"), 0);
  EXPECT_EQ(kind_of_acquire(), ErrorKind::InvalidHeader);
  EXPECT_EQ(kind_of_acquire(), ErrorKind::InvalidHeader);  // not Locked: the failed acquire unlocked
  ASSERT_EQ(raw.set("iqdb.epoch", "ffffffffffffffff"), 0);  // cannot be raised
  EXPECT_EQ(kind_of_acquire(), ErrorKind::InvalidHeader);
  ASSERT_EQ(raw.set("iqdb.epoch", "0000000000000005"), 0);
  ASSERT_EQ(raw.set("iqdb.writer", std::string("127.0.0.1:0/1") + std::string(1, static_cast<char>(1))), 0);
  EXPECT_EQ(kind_of_acquire(), ErrorKind::InvalidHeader);
  ASSERT_EQ(raw.set("iqdb.writer", std::string(300, 'a')), 0);
  EXPECT_EQ(kind_of_acquire(), ErrorKind::InvalidHeader);
  // Not one client's address. A port and nonce of 0 is the whole host to
  // the OSDs: blocklisting it fenced this very client (and every other one
  // on 127.0.0.1) for an hour, and the acquire then failed as Fenced.
  for (const char* bad : {"127.0.0.1:0/0", "v1:127.0.0.1:0/0", "[::1]:0/0", "not-an-address", "127.0.0.1/5",
                          "127.0.0.1:0/", "1.2.3:0/7", "127.0.0.1:99999/7", "127.0.0.1:0/4294967296"}) {
    ASSERT_EQ(raw.set("iqdb.writer", bad), 0);
    EXPECT_EQ(kind_of_acquire(), ErrorKind::InvalidHeader) << bad;
  }
  ASSERT_EQ(raw.remove("iqdb.writer"), 0);
  // The lock's own attribute (cls_lock's "lock.iqdb.writer") holding bytes
  // no RADOS lock wrote: Ceph answers EIO, which was passed on as an Io error.
  for (const std::string& bad : {std::string("garbage"), std::string(1, '\x01'), std::string(90, '\xff'), std::string()}) {
    ASSERT_EQ(raw.set("lock.iqdb.writer", bad), 0);
    EXPECT_EQ(kind_of_acquire(), ErrorKind::InvalidHeader) << bad.size();
  }
  ASSERT_EQ(raw.remove("lock.iqdb.writer"), 0);
  auto lock = RadosWriterLock::acquire(*a_, name_, lease(5));
  EXPECT_EQ(lock->epoch(), 6u);
  EXPECT_TRUE(lock->fenced_writer().empty());
}

// A save through a store that holds no lock for the name (save_to_rados
// with no RadosWriterLock) publishes only while no writer holds it: while
// one does, and after one stopped without releasing it, the save fails with
// Locked naming the holder, and the head stays. A clean release, or a
// takeover released in turn, lets it publish. A hostile writer attribute is
// described, not quoted.
TEST_F(RadosWriterLockTest, ASaveWithoutTheLockWaitsForNoWriter) {
  save_to_rados(*b_, name_, build(make_model(40)));  // no writer ever: publishes
  const auto unlocked_save = [&](std::uint64_t seed) {
    return error_of([&] { save_to_rados(*b_, name_, build(make_model(seed))); });
  };
  auto first = RadosWriterLock::acquire(*a_, name_, lease(30));
  const std::uint64_t gen = b_->head(name_)->generation;
  auto e = unlocked_save(41);
  ASSERT_TRUE(e) << "published over a held lock";
  EXPECT_EQ(e->kind(), ErrorKind::Locked) << e->what();
  EXPECT_NE(std::string(e->what()).find("'" + first->address() + "'"), std::string::npos) << e->what();
  EXPECT_EQ(b_->head(name_)->generation, gen);
  expect_equal(load_from_rados<FlatIndex>(*b_, name_), make_model(40));
  save_to_rados(*a_, name_, build(make_model(42)));  // the holder publishes
  first->release();
  save_to_rados(*b_, name_, build(make_model(43)));
  expect_equal(load_from_rados<FlatIndex>(*a_, name_), make_model(43));

  // A holder killed without releasing: refused, also after its lease ran
  // out, until a writer takes the lock over (and fences it).
  constexpr int kLease = 3;
  {
    ChildWriter child(name_, kLease, true);
    const auto locked = parse_locked(child.read_line());
    ASSERT_TRUE(locked);
    ::kill(child.pid(), SIGKILL);
    child.killed();
    std::this_thread::sleep_for(std::chrono::seconds(kLease + 1));
    e = unlocked_save(44);
    ASSERT_TRUE(e) << "published over a killed holder's lock";
    EXPECT_EQ(e->kind(), ErrorKind::Locked) << e->what();
    EXPECT_NE(std::string(e->what()).find(locked->address), std::string::npos) << e->what();
    auto o = lease(kLease);
    o.take_over = true;
    RadosWriterLock::acquire(*a_, name_, o)->release();
  }
  save_to_rados(*b_, name_, build(make_model(45)));
  expect_equal(load_from_rados<FlatIndex>(*a_, name_), make_model(45));

  RawHead raw(RadosSnapshotStore::head_object(name_));
  ASSERT_EQ(raw.set("iqdb.writer", std::string("evil\n") + std::string(1, '\n') + "x"), 0);
  e = unlocked_save(46);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind(), ErrorKind::Locked) << e->what();
  EXPECT_NE(std::string(e->what()).find("(7 bytes, not shown)"), std::string::npos) << e->what();
  EXPECT_EQ(std::string(e->what()).find('\n'), std::string::npos) << e->what();
  // Longer than 64 bytes (an IPv6 client address can be) is named; longer
  // than 256 (no address is) is described as such. (librados answers
  // ERANGE for a value longer than the reader's buffer: before, both read
  // as an I/O error.)
  const std::string long_address = "v2:[fd00:0000:0000:0000:0000:0000:0000:0001]:6801/" + std::string(40, '7');
  ASSERT_GT(long_address.size(), 64u);
  ASSERT_EQ(raw.set("iqdb.writer", long_address), 0);
  e = unlocked_save(46);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind(), ErrorKind::Locked) << e->what();
  EXPECT_NE(std::string(e->what()).find("held by '" + long_address + "'"), std::string::npos) << e->what();
  ASSERT_EQ(raw.set("iqdb.writer", std::string(300, 'a')), 0);
  e = unlocked_save(46);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind(), ErrorKind::Locked) << e->what();
  EXPECT_NE(std::string(e->what()).find("longer than 256 bytes"), std::string::npos) << e->what();
}

// A renewal thread that cannot be started (this program's pthread_create
// refuses every thread meanwhile) fails the acquire with Io (EAGAIN), not an
// untyped std::system_error, and gives back everything it took: the next
// writer gets the lock at once (not after the 30 s lease) and fences
// nobody, and a save without the lock publishes (no writer recorded).
TEST_F(RadosWriterLockTest, ARenewalThreadThatCannotStartIsIoAndGivesTheLockBack) {
  std::optional<PersistError> e;
  long refused = 0;
  {
    test::NoThreads none;
    e = error_of([&] { (void)RadosWriterLock::acquire(*a_, name_, lease(30)); });
    refused = none.refused();
  }
  ASSERT_TRUE(e) << "acquired without a renewal thread";
  EXPECT_EQ(e->kind(), ErrorKind::Io) << e->what();
  EXPECT_NE(std::string(e->what()).find("renewal thread"), std::string::npos) << e->what();
  EXPECT_EQ(refused, 1);
  auto next = RadosWriterLock::acquire(*b_, name_, lease(5));
  EXPECT_EQ(next->epoch(), 2u);
  EXPECT_TRUE(next->fenced_writer().empty()) << next->fenced_writer();
  next->release();
  save_to_rados(*b_, name_, build(make_model(50)));
  expect_equal(load_from_rados<FlatIndex>(*a_, name_), make_model(50));
}

// A head without iqdb.epoch (made before heads were created with epoch 0):
// the first writer's raise still compares, with the empty value, which is
// what RADOS compares a missing attribute as. Checked here as the raise
// relies on it: a compare with "" passes while the attribute is missing and
// fails once it holds an epoch, so of two writers that both read it missing
// only one raises it.
TEST_F(RadosWriterLockTest, MissingAttributeComparesAsEmpty) {
  { auto first = RadosWriterLock::acquire(*a_, name_, lease(5)); }  // creates the head; released
  const std::string head = RadosSnapshotStore::head_object(name_);
  RawHead raw(head);
  ASSERT_EQ(raw.remove("iqdb.epoch"), 0);
  const auto compare_and_set = [&](const std::string& expect, const std::string& value) {
    rados_write_op_t op = rados_create_write_op();
    rados_write_op_cmpxattr(op, "iqdb.epoch", LIBRADOS_CMPXATTR_OP_EQ, expect.data(), expect.size());
    rados_write_op_setxattr(op, "iqdb.epoch", value.data(), value.size());
    const int r = rados_write_op_operate(op, raw.io(), head.c_str(), nullptr, 0);
    rados_release_write_op(op);
    return r;
  };
  EXPECT_EQ(compare_and_set("0000000000000000", "0000000000000007"), -ECANCELED);  // missing is not 0
  ASSERT_EQ(compare_and_set("", "0000000000000007"), 0);                         // missing is ""
  EXPECT_EQ(compare_and_set("", "0000000000000009"), -ECANCELED);                // present is not ""
  ASSERT_EQ(raw.remove("iqdb.epoch"), 0);
  auto lock = RadosWriterLock::acquire(*a_, name_, lease(5));
  EXPECT_EQ(lock->epoch(), 1u);
  char value[32] = {};
  ASSERT_EQ(rados_getxattr(raw.io(), head.c_str(), "iqdb.epoch", value, sizeof value), 16);
  EXPECT_EQ(std::string(value, 16), "0000000000000001");
}

// The epoch raised under a writer that believes it holds the lock (as a
// takeover would): its next publish fails with Fenced, nothing is published.
TEST_F(RadosWriterLockTest, EpochRaisedUnderTheWriterIsFenced) {
  auto lock = RadosWriterLock::acquire(*a_, name_, lease(30));
  save_to_rados(*a_, name_, build(make_model(31)));
  const std::uint64_t generation = b_->head(name_)->generation;
  RawHead raw(RadosSnapshotStore::head_object(name_));
  ASSERT_EQ(raw.set("iqdb.epoch", "0000000000000002"), 0);
  const auto e = error_of([&] { save_to_rados(*a_, name_, build(make_model(32))); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind(), ErrorKind::Fenced) << e->what();
  EXPECT_FALSE(lock->held());
  EXPECT_EQ(error_of([&] { lock->check(); })->kind(), ErrorKind::Fenced);
  EXPECT_EQ(b_->head(name_)->generation, generation);
  expect_equal(load_from_rados<FlatIndex>(*b_, name_), make_model(31));
  // Again: refused before anything is sent.
  EXPECT_EQ(error_of([&] { save_to_rados(*a_, name_, build(make_model(33))); })->kind(), ErrorKind::Fenced);
}

// The fencing test of issue 11: a writer is paused (SIGSTOP), another
// writer takes over after the lease and publishes, the first is resumed and
// tries to publish: it fails with Fenced and nothing it sent is visible.
void paused_writer_is_fenced(RadosSnapshotStore& b, RadosSnapshotStore& reader, const std::string& name,
                             bool refuse_locally, bool blocklist) {
  constexpr int kLease = 4;
  ChildWriter child(name, kLease, refuse_locally);
  const auto locked = parse_locked(child.read_line());
  ASSERT_TRUE(locked);
  ASSERT_TRUE(child.send("SAVE 21"));
  ASSERT_EQ(child.read_line().substr(0, 5), "SAVED");
  Model published = make_model(21);  // the model: what the last successful publish holds
  expect_equal(load_from_rados<FlatIndex>(reader, name), published);

  ASSERT_EQ(::kill(child.pid(), SIGSTOP), 0);
  const auto stopped = Clock::now();
  RadosLockOptions o;
  // Its own lease: the takeover waits for the child's (kLease); a stall of
  // the taker's renewals on a loaded machine must not cost it the lock.
  o.lease = std::chrono::seconds(30);
  o.take_over = true;
  o.blocklist_previous = blocklist;
  auto taker = RadosWriterLock::acquire(b, name, o);
  std::cout << "[ MEASURED ] takeover of a SIGSTOPped writer (" << kLease << " s lease): " << secs(Clock::now() - stopped)
            << " s\n";
  EXPECT_EQ(taker->epoch(), locked->epoch + 1);
  EXPECT_EQ(taker->fenced_writer(), blocklist ? locked->address : std::string());
  save_to_rados(b, name, build(make_model(22)));
  published = make_model(22);
  const std::uint64_t generation = reader.head(name)->generation;

  ASSERT_EQ(::kill(child.pid(), SIGCONT), 0);
  for (const char* seed : {"23", "24"}) {
    ASSERT_TRUE(child.send(std::string("SAVE ") + seed));
    const std::string answer = child.read_line();
    std::cout << "[ RESUMED  ] the paused writer's publish: " << answer << "\n";
    EXPECT_EQ(answer.substr(0, 12), "ERROR fenced") << answer;
  }
  ASSERT_TRUE(child.send("HELD"));
  EXPECT_EQ(child.read_line(), "HELD 0");
  // Nothing it attempted is visible; the taker still publishes.
  EXPECT_EQ(reader.head(name)->generation, generation);
  expect_equal(load_from_rados<FlatIndex>(reader, name), published);
  EXPECT_TRUE(taker->held());
  save_to_rados(b, name, build(make_model(25)));
  expect_equal(load_from_rados<FlatIndex>(reader, name), make_model(25));
}

// The resumed writer sends its writes (refuse_locally = false): the cluster
// refuses them (its client is blocklisted).
TEST_F(RadosWriterLockTest, PausedWriterIsFencedByTheBlocklist) { paused_writer_is_fenced(*b_, *a_, name_, false, true); }
// No blocklist: the epoch compare in the publish alone refuses it.
TEST_F(RadosWriterLockTest, PausedWriterIsFencedByTheEpoch) { paused_writer_is_fenced(*b_, *a_, name_, false, false); }
// Defaults: the resumed writer knows its lease ran out and refuses locally.
TEST_F(RadosWriterLockTest, PausedWriterRefusesLocally) { paused_writer_is_fenced(*b_, *a_, name_, true, true); }

// --child-writer NAME LEASE REFUSE_LOCALLY: take the lock, print
// "LOCKED <epoch> <address>", then per stdin line: "SAVE <seed>" publishes
// make_model(seed) ("SAVED <generation>" or "ERROR <kind> <what>"), "HELD"
// prints "HELD 0|1".
int child_writer(const std::string& name, int lease_s, bool refuse_locally) {
  if (!cluster_env()) return 2;
  auto store = open_store(name);
  RadosLockOptions o;
  o.lease = std::chrono::seconds(lease_s);
  o.refuse_locally = refuse_locally;
  auto lock = RadosWriterLock::acquire(*store, name, o);
  std::cout << "LOCKED " << lock->epoch() << " " << lock->address() << std::endl;
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.rfind("SAVE ", 0) == 0) {
      try {
        save_to_rados(*store, name, build(make_model(std::stoull(line.substr(5)))));
        std::cout << "SAVED " << store->head(name)->generation << std::endl;
      } catch (const PersistError& e) {
        std::string what = e.what();
        for (char& c : what) {
          if (c == '\n') c = ' ';
        }
        std::cout << "ERROR " << to_string(e.kind()) << " " << what << std::endl;
      }
    } else if (line == "HELD") {
      std::cout << "HELD " << (lock->held() ? 1 : 0) << std::endl;
    }
  }
  return 0;
}

}  // namespace
}  // namespace iqdb::persist

int main(int argc, char** argv) {
  if (argc == 5 && std::string(argv[1]) == "--child-writer") {
    return iqdb::persist::child_writer(argv[2], std::atoi(argv[3]), std::string(argv[4]) == "1");
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
