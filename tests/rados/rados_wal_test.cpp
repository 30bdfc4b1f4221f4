// PersistedIndex<FlatIndex> over a RADOS pool, with the write-ahead log in
// RADOS (issue 11). Needs a cluster; skipped unless CEPH_CONF and
// IQDB_RADOS_POOL are set:
//
//   scripts/ceph-cluster.sh run --osds 3 -- ctest --test-dir BUILD -L rados --output-on-failure
//
// Every result is compared with an independent model: a std::map of the
// vectors a writer was told to insert and erase, rebuilt by the test from
// the same deterministic stream of operations. The writers that are killed
// or paused are other processes (this binary, --child), each with its own
// RADOS client, standing in for other machines.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <functional>
#include <iostream>
#include <map>
#include <thread>
#include <utility>

#include "iqdb/persist.hpp"
#include "iqdb/persist/rados.hpp"
#include "rados/head_record.hpp"
#include "rados/rados_log.hpp"
#include "rados_test_util.hpp"
#include "support/forked_child.hpp"
#include "wal/log_format.hpp"

namespace iqdb::persist {
namespace {

using namespace rados_test;
using namespace std::chrono_literals;

constexpr std::uint64_t kDim = 16;

// ------------------------------------------------------------ the model

std::vector<float> vector_of(std::uint64_t id) {
  std::vector<float> v(kDim);
  for (std::uint64_t i = 0; i < kDim; ++i) v[i] = static_cast<float>(id) * 0.25f + static_cast<float>(i);
  return v;
}

enum class Kind { Insert, Erase, Batch, Checkpoint };
struct StreamOp {
  Kind kind = Kind::Insert;
  std::vector<std::pair<bool, std::uint64_t>> mutations;  // (insert?, id)
};

// Operation j (from 1) of a writer's stream: a function of j and of the
// model before it only.
StreamOp stream_op(const Model& m, std::uint64_t j) {
  if (j % 25 == 0) return {Kind::Checkpoint, {}};
  if (j % 7 == 0) {
    StreamOp op{Kind::Batch, {{true, 100000 + j}, {true, 200000 + j}}};
    if (!m.empty()) op.mutations.emplace_back(false, m.begin()->first);
    return op;
  }
  if (j % 5 == 0 && !m.empty()) return {Kind::Erase, {{false, m.begin()->first}}};
  return {Kind::Insert, {{true, j}}};
}

void apply_op(Model& m, const StreamOp& op) {
  for (const auto& [insert, id] : op.mutations) {
    if (insert) {
      m[id] = vector_of(id);
    } else {
      m.erase(id);
    }
  }
}

Model model_after(std::uint64_t ops) {
  Model m;
  for (std::uint64_t j = 1; j <= ops; ++j) apply_op(m, stream_op(m, j));
  return m;
}

// Does the same to the index.
void perform(PersistedIndex<FlatIndex>& db, const StreamOp& op) {
  switch (op.kind) {
    case Kind::Checkpoint:
      db.checkpoint();
      return;
    case Kind::Insert:
      db.insert(op.mutations[0].second, vector_of(op.mutations[0].second));
      return;
    case Kind::Erase:
      db.erase(op.mutations[0].second);
      return;
    case Kind::Batch: {
      WriteBatch b;
      for (const auto& [insert, id] : op.mutations) {
        if (insert) {
          b.insert(id, vector_of(id));
        } else {
          b.erase(id);
        }
      }
      db.write(b);
      return;
    }
  }
}

// ------------------------------------------------------------ configs

RadosOptions small_objects() {
  RadosOptions o;
  o.stripe_size = 64 * 1024;
  o.io_chunk = 16 * 1024;
  o.log_object_size = 4096;  // a rotation every ~35 records
  o.op_timeout = 20s;
  return o;
}

PersistConfig config_for(const std::string& name, const RadosOptions& o = small_objects(),
                         const RadosLockOptions& lock = {}) {
  RadosLocation loc;
  loc.pool = cluster_env()->pool;
  loc.name = name;
  PersistConfig cfg = rados_persist_config(loc, o, lock);
  cfg.wal_enabled = true;
  return cfg;
}

PersistConfig read_only(PersistConfig cfg) {
  cfg.wal_enabled = false;
  return cfg;
}

std::string log_object(const std::string& name, std::uint64_t gen, std::uint64_t k) {
  return name + ".log." + std::to_string(gen) + "." + std::to_string(k);
}

class RadosWal : public ::testing::Test {
 protected:
  void SetUp() override {
    env_ = cluster_env();
    if (!env_) GTEST_SKIP() << "no cluster: set CEPH_CONF and IQDB_RADOS_POOL (scripts/ceph-cluster.sh run)";
    name_ = unique_name("wal");
    raw_ = std::make_unique<RawPool>(*env_);
  }
  std::unique_ptr<RadosSnapshotStore> open_store(const std::string& name) {
    RadosLocation loc;
    loc.pool = env_->pool;
    loc.name = name;
    return RadosSnapshotStore::open(loc, small_objects());
  }
  std::uint64_t generation(const std::string& name) {
    const auto h = open_store(name)->head(name);
    return h ? h->generation : 0;
  }
  // A writer with the WAL inserts ids 1..n (LSNs 1..n) and closes, after a
  // checkpoint when `checkpoint` (the published generation's log then holds
  // the header only): the model.
  Model logged_ids(std::uint64_t n, bool checkpoint = false) {
    Model m;
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), config_for(name_));
    for (std::uint64_t id = 1; id <= n; ++id) {
      db.insert(id, vector_of(id));
      m[id] = vector_of(id);
    }
    if (checkpoint) db.checkpoint();
    db.close();
    return m;
  }
  Model ids_then_checkpoint(std::uint64_t n) { return logged_ids(n, /*checkpoint=*/true); }
  // The log objects of generation `gen`, in order.
  std::vector<std::string> log_objects(const std::string& name, std::uint64_t gen) {
    std::vector<std::string> out;
    while (raw_->exists(log_object(name, gen, out.size()))) out.push_back(log_object(name, gen, out.size()));
    return out;
  }
  std::string url(const std::string& oid) const { return "rados://" + env_->pool + "/" + oid; }

  std::optional<ClusterEnv> env_;
  std::string name_;
  std::unique_ptr<RawPool> raw_;
};

// ------------------------------------------------------------ round trips

// open_with, inserts, erases, batches and checkpoints (the stream), under
// each fsync policy; then load with the WAL and without it: both equal the
// model. The log rotates over many objects of 4 KiB.
TEST_F(RadosWal, RoundTripUnderEveryPolicy) {
  for (const FsyncPolicy policy : {FsyncPolicy::always(), FsyncPolicy::periodic(20ms), FsyncPolicy::never()}) {
    const std::string name = unique_name("rt");
    PersistConfig cfg = config_for(name);
    cfg.fsync_policy = policy;
    Model m;
    {
      auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), cfg);
      for (std::uint64_t j = 1; j <= 140; ++j) {
        const StreamOp op = stream_op(m, j);
        perform(db, op);
        apply_op(m, op);
      }
      ASSERT_TRUE(equals(db.index(), m));
      db.close();
    }
    // 140 ops, checkpoints at 25, 50, ..., 125: the last generation's log
    // holds ops 126..140 (15 records and more in batches).
    auto again = PersistedIndex<FlatIndex>::load(config_for(name));
    EXPECT_TRUE(equals(again.index(), m)) << static_cast<int>(policy.mode());
    EXPECT_GT(again.wal_stats().recovered_records, 14u);
    // More after the reopen, then a read-only load from another client.
    for (std::uint64_t j = 141; j <= 200; ++j) {
      const StreamOp op = stream_op(m, j);
      perform(again, op);
      apply_op(m, op);
    }
    again.close();
    auto reader = PersistedIndex<FlatIndex>::load(read_only(config_for(name)));
    EXPECT_TRUE(equals(reader.index(), m));
  }
}

// open_with with the WAL over a RADOS index holding data (records in its
// log; a checkpoint's snapshot of vectors) is refused, WouldLoseWrites, and
// publishes nothing; with discard_log it replaces the index.
TEST_F(RadosWal, OpenWithRefusesToReplaceAnIndexHoldingData) {
  for (const bool checkpoint : {false, true}) {
    name_ = unique_name(checkpoint ? "ow-ckpt" : "ow-log");
    const Model old_model = logged_ids(5, checkpoint);
    const std::uint64_t gen = generation(name_);
    try {
      PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), config_for(name_));
      ADD_FAILURE() << "open_with replaced an index holding data";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::WouldLoseWrites) << e.what();
      EXPECT_NE(std::string(e.what()).find(checkpoint ? "5 vectors" : "5 acknowledged records"), std::string::npos)
          << e.what();
    }
    EXPECT_EQ(generation(name_), gen);
    EXPECT_TRUE(equals(PersistedIndex<FlatIndex>::load(config_for(name_)).index(), old_model));

    PersistConfig replace = config_for(name_);
    replace.discard_log = true;
    Model m;
    {
      auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), replace);
      db.insert(40, vector_of(40));
      m[40] = vector_of(40);
    }
    EXPECT_TRUE(equals(PersistedIndex<FlatIndex>::load(config_for(name_)).index(), m));
  }
}

// PersistConfig::checkpoint_log_bytes on RADOS: with a bound of 8 KiB
// (about 77 inserts of this size), the writer publishes new generations by
// itself; a reload has every insert and replays one log: at most a bound
// and what the writer committed before the checkpoint started (a few
// frames; the test allows another bound, for a loaded machine).
TEST_F(RadosWal, AutomaticCheckpointsPublishNewGenerations) {
  PersistConfig cfg = config_for(name_);
  cfg.checkpoint_log_bytes = 8 << 10;
  Model m;
  std::uint64_t before = 0;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), cfg);
    before = generation(name_);
    for (std::uint64_t id = 1; id <= 400; ++id) {
      db.insert(id, vector_of(id));
      m[id] = vector_of(id);
    }
    // close() waits for a checkpoint that runs and starts none.
    db.close();
    EXPECT_GE(db.wal_stats().auto_checkpoints, 2u);
    EXPECT_EQ(db.wal_stats().auto_checkpoint_failures, 0u);
  }
  EXPECT_GE(generation(name_), before + 2);
  auto again = PersistedIndex<FlatIndex>::load(read_only(config_for(name_)));
  EXPECT_TRUE(equals(again.index(), m));
  // A log holds at most a bound (frames here are over 80 bytes) and the
  // frames a single writer commits before the checkpoint it asked for starts
  // (a few; at most another bound's worth on a loaded machine).
  EXPECT_LE(again.wal_stats().recovered_records, 2 * ((std::uint64_t{8} << 10) / 80));
}

// The log's bytes in RADOS are a local log's: the concatenated objects, put
// in a local file, read with the local reader, hold the records logged
// since the last checkpoint, in order.
TEST_F(RadosWal, LogObjectsHoldTheLocalLogFormat) {
  PersistConfig cfg = config_for(name_);
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), cfg);
    for (std::uint64_t id = 1; id <= 120; ++id) db.insert(id, vector_of(id));
    db.close();
  }
  const auto objects = log_objects(name_, generation(name_));
  ASSERT_GE(objects.size(), 3u) << "4 KiB objects: the log rotated";
  std::vector<char> bytes;
  for (const auto& oid : objects) {
    const auto b = raw_->read(oid);
    EXPECT_LE(b.size(), 4096u) << oid;
    bytes.insert(bytes.end(), b.begin(), b.end());
  }
  const fs::path local = fs::temp_directory_path() / (name_ + ".wal");
  {
    std::ofstream out(local, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  std::vector<std::uint64_t> ids;
  const wal::ScanResult scan = wal::scan_log(default_file_system(), local, [&](const wal::RecordView& r) {
    ids.push_back(r.id->as_u64());
  });
  fs::remove(local);
  EXPECT_EQ(scan.version, 2u);
  EXPECT_EQ(scan.torn_tail_bytes, 0u);
  ASSERT_EQ(ids.size(), 120u);
  for (std::uint64_t i = 0; i < ids.size(); ++i) EXPECT_EQ(ids[i], i + 1);
}

// Without the WAL: save() publishes, load() reads; a second writer of the
// name is refused while the first holds the lock (only during a save).
TEST_F(RadosWal, WithoutTheWalSaveAndLoad) {
  PersistConfig cfg = read_only(config_for(name_));
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Cosine), cfg);
  Model m;
  for (std::uint64_t j = 1; j <= 60; ++j) {
    const StreamOp op = stream_op(m, j);
    if (op.kind == Kind::Checkpoint) {
      db.save();
      continue;
    }
    perform(db, op);
    apply_op(m, op);
  }
  db.save();
  auto again = PersistedIndex<FlatIndex>::load(read_only(config_for(name_)));
  EXPECT_TRUE(equals(again.index(), m));
  // With the WAL on top: the snapshot without a log loads, and goes on.
  auto w = PersistedIndex<FlatIndex>::load(config_for(name_));
  EXPECT_TRUE(equals(w.index(), m));
  w.insert(999999, vector_of(999999));
  w.close();
  m[999999] = vector_of(999999);
  EXPECT_TRUE(equals(PersistedIndex<FlatIndex>::load(read_only(config_for(name_))).index(), m));
}

// Loads through one store (copies of one config share it) run at once, and
// each pairs the snapshot it read with that snapshot's log, whatever another
// load read meanwhile: here load A reads generation G's snapshot, the writer
// checkpoints (G+1, a new and empty log) and load B, on another thread,
// reads G+1's snapshot before A opens its log. A must get G's log, which
// holds the ten inserts (G+1's holds only its header).
TEST_F(RadosWal, ConcurrentLoadsEachReadTheLogOfTheirOwnSnapshot) {
  auto w = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Cosine), config_for(name_));
  for (std::uint64_t id = 1; id <= 10; ++id) w.insert(id, vector_of(id));
  const PersistConfig reader = read_only(config_for(name_));
  FileHeader loaded;
  const auto log = reader.storage->open_log_with_snapshot(
      [&] {
        const FileHeader a = inspect_snapshot(detail::fs_of(reader), reader.path).header;  // load A
        w.checkpoint();
        std::thread([&] { (void)inspect_snapshot(detail::fs_of(reader), reader.path); }).join();  // load B
        return a;
      },
      loaded);
  EXPECT_EQ(loaded.last_lsn, 0U);
  ASSERT_NE(log, nullptr);
  EXPECT_GT(log->size(), 10 * kDim * sizeof(float)) << "not the log of the snapshot load A read";
}

// The writer creates log object k+1 before it marks k as continued
// (iqdb.more): a writer killed in between leaves k unmarked. A replica that
// knew k still finds k+1 (once k brings nothing new, it looks for the next
// object) and catches up with the writer.
TEST_F(RadosWal, ReplicaFindsTheNextLogObjectWhenAMarkIsMissing) {
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), config_for(name_));
  Model m;
  db.insert(1, vector_of(1));
  m[1] = vector_of(1);
  auto replica = ReadReplica<FlatIndex>::open(read_only(config_for(name_)));  // knows object 0
  for (std::uint64_t id = 2; id <= 100; ++id) {
    db.insert(id, vector_of(id));
    m[id] = vector_of(id);
  }
  const std::vector<std::string> objects = log_objects(name_, generation(name_));
  ASSERT_GE(objects.size(), 3u);
  ASSERT_EQ(rados_rmxattr(raw_->io(), objects[0].c_str(), "iqdb.more"), 0);
  for (int i = 0; i < 4 && replica.last_lsn() < db.last_lsn(); ++i) replica.catch_up();
  EXPECT_EQ(replica.last_lsn(), db.last_lsn());
  EXPECT_TRUE(equals(replica.index(), m));
}

// A checkpoint publishes generation G, then creates G's log object 0 (its
// header). When that create gets no answer, the writer is poisoned, and the
// create may still be applied later, after another writer took over. The
// takeover's seal must make it fail wherever it lands: here it lands
// between the seal and the new writer's own create (before the fix the seal
// found nothing to seal, the late create succeeded, and the new writer's
// create failed as Fenced). The new writer's header then goes into the
// empty object its seal made, and the index opens with everything.
TEST_F(RadosWal, LateCreateOfALogAfterATakeoverFails) {
  Model m = ids_then_checkpoint(10);
  const std::uint64_t g = generation(name_);
  const std::string obj0 = log_object(name_, g, 0);
  // What the old writer's create sends: its header and attributes.
  const std::vector<char> old_header = raw_->read(obj0);
  ASSERT_FALSE(old_header.empty());
  char old_epoch[16] = {};
  ASSERT_EQ(rados_getxattr(raw_->io(), obj0.c_str(), "iqdb.epoch", old_epoch, sizeof old_epoch), 16);
  ASSERT_EQ(rados_remove(raw_->io(), obj0.c_str()), 0);  // not applied yet

  const auto store = open_store(name_);
  auto lock = RadosWriterLock::acquire(*store, name_);
  const std::shared_ptr<rados_detail::Fence> fence = rados_detail::fence_of(*lock);
  rados_detail::seal_log(*store, name_, g, fence->epoch);  // as an open does, first
  {
    const std::string size = rados_detail::encode_generation(old_header.size());
    const std::string start = rados_detail::encode_generation(0);
    rados_write_op_t op = rados_create_write_op();
    rados_write_op_create(op, LIBRADOS_CREATE_EXCLUSIVE, nullptr);
    rados_write_op_setxattr(op, "iqdb.epoch", old_epoch, sizeof old_epoch);
    rados_write_op_setxattr(op, "iqdb.start", start.data(), start.size());
    rados_write_op_write(op, old_header.data(), old_header.size(), 0);
    rados_write_op_setxattr(op, "iqdb.size", size.data(), size.size());
    const int r = rados_write_op_operate(op, raw_->io(), obj0.c_str(), nullptr, 0);
    rados_release_write_op(op);
    EXPECT_EQ(r, -EEXIST) << "the old writer's late create of log object 0 was applied after the takeover's seal";
  }
  auto sink = rados_detail::create_log_sink(*store, name_, g, fence, 0x1234, 11);
  sink->close();
  const auto header = wal::format::encode_v2_header(0x1234, 11);
  const std::vector<char> got = raw_->read(obj0);
  ASSERT_EQ(got.size(), header.size());
  EXPECT_EQ(std::memcmp(got.data(), header.data(), header.size()), 0);
  EXPECT_EQ(log_objects(name_, g).size(), 1u);
  lock->release();

  auto b = PersistedIndex<FlatIndex>::load(config_for(name_));
  EXPECT_TRUE(equals(b.index(), m));
  b.insert(11, vector_of(11));
  m[11] = vector_of(11);
  b.close();
  EXPECT_TRUE(equals(PersistedIndex<FlatIndex>::load(read_only(config_for(name_))).index(), m));
}

// Writers that took over a generation without a log and died before they
// created one leave only their seals, empty log objects: loads and replicas
// read the snapshot alone, the next writer writes its log into the last of
// them, and the replica follows it there.
TEST_F(RadosWal, AnEmptyLogLeftByATakeoverIsNoLogUntilAWriterFillsIt) {
  Model m = ids_then_checkpoint(10);
  const std::uint64_t g = generation(name_);
  ASSERT_EQ(rados_remove(raw_->io(), log_object(name_, g, 0).c_str()), 0);  // its create never arrived
  {
    const auto store = open_store(name_);
    auto lock = RadosWriterLock::acquire(*store, name_);
    rados_detail::seal_log(*store, name_, g, lock->epoch());
    ASSERT_EQ(log_objects(name_, g).size(), 1u);
    EXPECT_TRUE(raw_->read(log_object(name_, g, 0)).empty());
    rados_detail::seal_log(*store, name_, g, lock->epoch());  // as a second takeover's seal: an empty object 1
  }
  ASSERT_EQ(log_objects(name_, g).size(), 2u);
  EXPECT_TRUE(raw_->read(log_object(name_, g, 1)).empty());

  EXPECT_TRUE(equals(PersistedIndex<FlatIndex>::load(read_only(config_for(name_))).index(), m));
  auto replica = ReadReplica<FlatIndex>::open(read_only(config_for(name_)));
  EXPECT_TRUE(equals(replica.index(), m));
  {
    auto c = PersistedIndex<FlatIndex>::load(config_for(name_));
    EXPECT_TRUE(equals(c.index(), m));
    for (std::uint64_t id = 11; id <= 60; ++id) {  // past one 4 KiB object
      c.insert(id, vector_of(id));
      m[id] = vector_of(id);
    }
    EXPECT_EQ(generation(name_), g);
  }
  // Objects 0 and 1 are the two seals above; c's own open sealed once more
  // (object 2), and its header went into that last empty object.
  ASSERT_GE(log_objects(name_, g).size(), 3u);
  EXPECT_TRUE(raw_->read(log_object(name_, g, 0)).empty());
  EXPECT_TRUE(raw_->read(log_object(name_, g, 1)).empty());
  const std::vector<char> third = raw_->read(log_object(name_, g, 2));
  const auto header = wal::format::encode_v2_header(0, 1);
  ASSERT_GE(third.size(), 16u);
  EXPECT_EQ(std::memcmp(third.data(), header.data(), 16), 0) << "magic, version, header length";
  for (int i = 0; i < 4 && !equals(replica.index(), m); ++i) replica.catch_up();
  EXPECT_TRUE(equals(replica.index(), m));
  EXPECT_TRUE(equals(PersistedIndex<FlatIndex>::load(read_only(config_for(name_))).index(), m));
}

// Group commit: 8 threads inserting under Always share RADOS operations
// (fewer log syncs than commits); everything acknowledged loads.
TEST_F(RadosWal, ConcurrentWritersShareOperations) {
  RadosOptions o = small_objects();
  o.log_object_size = 1 << 20;
  PersistConfig cfg = config_for(name_, o);
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), cfg);
  constexpr int kThreads = 8, kEach = 60;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&db, t] {
      for (int i = 0; i < kEach; ++i) {
        const std::uint64_t id = static_cast<std::uint64_t>(t * 1000 + i + 1);
        db.insert(id, vector_of(id));
      }
    });
  }
  for (auto& th : threads) th.join();
  const wal::WalStats st = db.wal_stats();
  std::cout << "[ MEASURED ] " << st.commits << " commits in " << st.log_syncs << " RADOS appends\n";
  EXPECT_EQ(st.commits, static_cast<std::uint64_t>(kThreads * kEach));
  EXPECT_LT(st.log_syncs, st.commits);
  db.close();
  Model m;
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kEach; ++i) m[static_cast<std::uint64_t>(t * 1000 + i + 1)] = vector_of(static_cast<std::uint64_t>(t * 1000 + i + 1));
  }
  EXPECT_TRUE(equals(PersistedIndex<FlatIndex>::load(read_only(config_for(name_))).index(), m));
}

// A batch whose frame would not fit one RADOS write operation (a log
// object: 64 MiB) is refused before anything is logged; the index is not
// poisoned and goes on.
TEST_F(RadosWal, OversizedBatchIsRefusedBeforeLogging) {
  constexpr std::uint64_t kWide = 4096, kRows = 4200;  // 4200 rows of 16 KiB: ~69 MB
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kWide, DistanceMetric::Euclidean), config_for(name_));
  std::vector<float> rows(kWide * kRows, 0.5f);
  std::vector<std::uint64_t> ids(kRows);
  for (std::uint64_t i = 0; i < kRows; ++i) ids[i] = i + 1;
  const auto e = error_of([&] { db.write(WriteBatch().insert_rows_ref(ids, rows, kWide)); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind(), ErrorKind::InvalidArgument) << e->what();
  EXPECT_EQ(db.last_lsn(), 0u);
  EXPECT_EQ(db.failure(), std::nullopt);
  const std::vector<float> one(kWide, 1.0f);
  db.insert(7, one);  // not poisoned
  db.close();
  const auto again = PersistedIndex<FlatIndex>::load(read_only(config_for(name_)));
  ASSERT_EQ(again.index().size(), 1u);
  EXPECT_TRUE(again.index().contains(VectorId(std::uint64_t{7})));
}

// Concurrent batches under Always whose frames together exceed what one
// RADOS write operation may carry: group commit puts at most one log
// object's worth (RadosOptions::log_object_size) into one operation, a
// larger frame alone. `threads` writers each write `batches` batches of
// `rows` rows of `dim` floats; ids t * 1e6 + j * 1000 + r. Every call
// succeeds; returns the model of what was acknowledged.
Model write_concurrent_batches(PersistedIndex<FlatIndex>& db, int threads, std::uint64_t batches, std::uint64_t rows,
                               std::uint64_t dim) {
  std::vector<Model> acked(static_cast<std::size_t>(threads));
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      const auto tt = static_cast<std::uint64_t>(t) + 1;
      for (std::uint64_t j = 0; j < batches; ++j) {
        std::vector<std::uint64_t> ids(rows);
        std::vector<float> flat(rows * dim);
        for (std::uint64_t r = 0; r < rows; ++r) {
          ids[r] = tt * 1000000 + j * 1000 + r;
          std::fill_n(flat.begin() + static_cast<std::ptrdiff_t>(r * dim), dim, static_cast<float>(ids[r]));
        }
        const auto e = error_of([&] { db.write(WriteBatch().insert_rows_ref(ids, flat, dim)); });
        if (e) {
          ADD_FAILURE() << "thread " << tt << " batch " << j << ": " << e->what();
          return;
        }
        for (std::uint64_t r = 0; r < rows; ++r) {
          acked[tt - 1][ids[r]].assign(flat.begin() + static_cast<std::ptrdiff_t>(r * dim),
                                       flat.begin() + static_cast<std::ptrdiff_t>((r + 1) * dim));
        }
      }
    });
  }
  for (auto& th : ts) th.join();
  Model all;
  for (const Model& m : acked) all.insert(m.begin(), m.end());
  return all;
}

// 4 threads write batches of ~247 KB, just under the 256 KiB per-operation
// limit (log_object_size), concurrently: every object of the log holds at
// most 256 KiB (two batches in one operation would make an object of ~494
// KB); a reload and a replica see every batch; the concatenated objects,
// read with the local reader, hold each thread's batches in its order.
TEST_F(RadosWal, ConcurrentBatchesNearTheOperationLimitAreSplitIntoGroups) {
  constexpr std::uint64_t kWide = 1024, kRows = 60, kLimit = 256 * 1024;
  RadosOptions o = small_objects();
  o.log_object_size = kLimit;
  auto replica_cfg = read_only(config_for(name_, o));
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kWide, DistanceMetric::Euclidean), config_for(name_, o));
  auto replica = ReadReplica<FlatIndex>::open(replica_cfg);
  const Model m = write_concurrent_batches(db, 4, 5, kRows, kWide);
  ASSERT_EQ(m.size(), 4 * 5 * kRows);
  const wal::WalStats st = db.wal_stats();
  db.close();
  std::cout << "[ MEASURED ] " << st.commits << " batches in " << st.log_syncs << " RADOS appends\n";
  std::vector<char> bytes;
  for (const auto& oid : log_objects(name_, generation(name_))) {
    const auto b = raw_->read(oid);
    EXPECT_LE(b.size(), kLimit) << oid;
    bytes.insert(bytes.end(), b.begin(), b.end());
  }
  EXPECT_TRUE(equals(PersistedIndex<FlatIndex>::load(read_only(config_for(name_, o))).index(), m));
  replica.catch_up();
  EXPECT_TRUE(equals(replica.index(), m));
  const fs::path local = fs::temp_directory_path() / (name_ + ".wal");
  {
    std::ofstream out(local, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  std::map<std::uint64_t, std::uint64_t> last;  // thread -> last id seen + 1
  std::uint64_t records = 0;
  wal::scan_log(default_file_system(), local, [&](const wal::RecordView& r) {
    const std::uint64_t id = r.id->as_u64();
    EXPECT_LT(last[id / 1000000], id + 1) << "thread " << id / 1000000 << "'s batches reordered";
    last[id / 1000000] = id + 1;
    ++records;
  });
  fs::remove(local);
  EXPECT_EQ(records, m.size());
}

// ------------------------------------------------------------ crashes

// The last operation number a `--child stream` printed until `until` (or
// the end of its output); `acked` if none. An error line fails the test.
std::uint64_t read_acks(ChildProcess& child, Clock::time_point until, std::uint64_t acked) {
  while (Clock::now() < until) {
    const std::string line = child.read_line(std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()) + 1ms);
    if (line.empty()) continue;
    if (line.substr(0, 3) == "err") {
      ADD_FAILURE() << line;
      return acked;
    }
    acked = std::stoull(line);
  }
  return acked;
}

// After the child was SIGKILLed and reaped: the last operation number it
// printed before it died (all of its output is in the pipe, to its end).
std::uint64_t read_acks_to_the_end(ChildProcess& child, std::uint64_t acked) {
  for (std::string line = child.read_line(); !line.empty(); line = child.read_line()) {
    if (line.substr(0, 3) == "err") {
      ADD_FAILURE() << line;
      return acked;
    }
    acked = std::stoull(line);
  }
  return acked;
}

// Restore elsewhere: a writer process streams inserts, erases, batches and
// checkpoints under Always, acknowledging each; it is SIGKILLed at a random
// instant (during any of them, checkpoints included). Another process (this
// one, its own client) loads: exactly the acknowledged operations, or one
// more (in flight). Then a writer takes the dead one's lock over, loads the
// same, and goes on.
TEST_F(RadosWal, KilledWriterLosesNoAcknowledgedWrite) {
  std::mt19937_64 rng(std::random_device{}());
  constexpr int kRounds = 6;
  for (int round = 0; round < kRounds; ++round) {
    const std::string name = unique_name("kill");
    ChildProcess child({"--child", "stream", name, "4"});
    ASSERT_EQ(child.read_line(), "open");
    std::uint64_t acked = read_acks(child, Clock::now() + std::chrono::milliseconds(200 + rng() % 1200), 0);
    child.kill();
    acked = read_acks_to_the_end(child, acked);  // written before the kill
    const Model at = model_after(acked), after = model_after(acked + 1);
    auto loaded = PersistedIndex<FlatIndex>::load(read_only(config_for(name)));
    const bool one_more = !equals(loaded.index(), at);
    EXPECT_TRUE(equals(loaded.index(), one_more ? after : at)) << "round " << round << ", " << acked << " acked";
    std::cout << "[ MEASURED ] round " << round << ": killed after " << acked << " acknowledged operations"
              << (one_more ? " (+1 in flight)" : "") << "\n";
    if (round == 0) {
      // The dead writer's lock (4 s lease): taken over, its log sealed.
      RadosLockOptions lo;
      lo.lease = 4s;
      lo.take_over = true;
      auto w = PersistedIndex<FlatIndex>::load(config_for(name, small_objects(), lo));
      Model m = one_more ? after : at;
      EXPECT_TRUE(equals(w.index(), m));
      w.insert(777777, vector_of(777777));
      m[777777] = vector_of(777777);
      w.checkpoint();
      w.insert(777778, vector_of(777778));
      m[777778] = vector_of(777778);
      w.close();
      EXPECT_TRUE(equals(PersistedIndex<FlatIndex>::load(read_only(config_for(name))).index(), m));
    }
  }
}

// ------------------------------------------------------------ fencing

// Writer A (another process) logs, is paused (SIGSTOP); B takes over after
// A's lease, loads everything A acknowledged and writes; A is resumed and
// sends its next writes (refuse_locally = false): they fail with Fenced and
// none of them is in any later load. Once with the blocklist, once with the
// epoch compare of the log objects alone. A replica watching from before the
// pause (polling only once a minute) is woken by B's commits, never holds
// A's fenced attempts, and ends equal to the model.
TEST_F(RadosWal, PausedWriterIsFenced) {
  for (const bool blocklist : {true, false}) {
    const std::string name = unique_name(blocklist ? "fence-bl" : "fence-ep");
    ChildProcess a({"--child", "commands", name, "3"});
    ASSERT_EQ(a.read_line(), "open");
    Model m;
    for (std::uint64_t id = 1; id <= 40; ++id) {
      ASSERT_TRUE(a.send("insert " + std::to_string(id)));
      ASSERT_EQ(a.read_line(), "ok") << id;
      m[id] = vector_of(id);
    }
    auto replica = ReadReplica<FlatIndex>::open(read_only(config_for(name)));
    FollowOptions follow;
    follow.interval = 60s;  // a replica that catches up within seconds was woken
    replica.start_following(follow);
    ASSERT_TRUE(within(30s, [&] { return replica.watching(); }));
    ASSERT_EQ(::kill(a.pid(), SIGSTOP), 0);
    RadosLockOptions lo;
    lo.lease = 30s;  // its own: the takeover waits for A's (3 s); a stall of B's renewals must not fence B
    lo.take_over = true;
    lo.blocklist_previous = blocklist;
    const auto paused = Clock::now();
    auto b = PersistedIndex<FlatIndex>::load(config_for(name, small_objects(), lo));
    std::cout << "[ MEASURED ] takeover of a paused writer (3 s lease): " << secs(Clock::now() - paused) << " s\n";
    EXPECT_TRUE(equals(b.index(), m));
    for (std::uint64_t id = 500; id < 510; ++id) {
      b.insert(id, vector_of(id));
      m[id] = vector_of(id);
    }
    ASSERT_EQ(::kill(a.pid(), SIGCONT), 0);
    for (const std::uint64_t id : {41, 42}) {
      ASSERT_TRUE(a.send("insert " + std::to_string(id)));
      const std::string reply = a.read_line();
      EXPECT_EQ(reply.substr(0, 10), "err fenced") << reply;
    }
    b.insert(510, vector_of(510));
    m[510] = vector_of(510);
    const std::uint64_t b_lsn = b.last_lsn();
    EXPECT_TRUE(within(15s, [&] { return replica.last_lsn() >= b_lsn; }))
        << "the replica was not woken by the new writer's commits: LSN " << replica.last_lsn() << " of " << b_lsn;
    EXPECT_FALSE(replica.failure()) << *replica.failure();
    EXPECT_TRUE(replica.read([&](const FlatIndex& ix) { return equals(ix, m); }));
    replica.stop_following();
    b.close();
    EXPECT_TRUE(equals(PersistedIndex<FlatIndex>::load(read_only(config_for(name))).index(), m));
    lo.take_over = false;
    EXPECT_TRUE(equals(PersistedIndex<FlatIndex>::load(config_for(name, small_objects(), lo)).index(), m));
  }
}

// ------------------------------------------------------------ damage

// A log of several objects, written and closed; then one object damaged.
class RadosWalDamage : public RadosWal {
 protected:
  void write_log() {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), config_for(name_));
    for (std::uint64_t id = 1; id <= 150; ++id) db.insert(id, vector_of(id));
    db.close();
    objects_ = log_objects(name_, generation(name_));
    ASSERT_GE(objects_.size(), 4u);
  }
  // Both loads fail with `kind`, naming `object`.
  void expect_refused(ErrorKind kind, const std::string& object) {
    for (const bool wal : {true, false}) {
      const auto e = error_of([&] {
        PersistConfig cfg = config_for(name_);
        cfg.wal_enabled = wal;
        (void)PersistedIndex<FlatIndex>::load(cfg);
      });
      ASSERT_TRUE(e) << (wal ? "with" : "without") << " the WAL";
      EXPECT_EQ(e->kind(), kind) << e->what();
      EXPECT_EQ(e->path().string(), url(object)) << e->what();
    }
  }
  std::vector<std::string> objects_;
};

TEST_F(RadosWalDamage, FlippedByteInAMiddleObjectIsCorruptLog) {
  write_log();
  auto b = raw_->read(objects_[1]);
  b[b.size() / 2] = static_cast<char>(b[b.size() / 2] ^ 0x5a);
  ASSERT_EQ(raw_->write_at(objects_[1], {b[b.size() / 2]}, b.size() / 2), 0);
  expect_refused(ErrorKind::CorruptLog, objects_[1]);
}

TEST_F(RadosWalDamage, FlippedByteInTheLastFrameIsCorruptLog) {
  write_log();
  const std::string& last = objects_.back();
  auto b = raw_->read(last);
  ASSERT_GT(b.size(), 10u);
  ASSERT_EQ(raw_->write_at(last, {static_cast<char>(b[b.size() - 3] ^ 0x01)}, b.size() - 3), 0);
  expect_refused(ErrorKind::CorruptLog, last);
}

TEST_F(RadosWalDamage, TruncatedObjectIsTruncatedPayload) {
  write_log();
  ASSERT_EQ(raw_->truncate(objects_[2], raw_->read(objects_[2]).size() - 50), 0);
  expect_refused(ErrorKind::TruncatedPayload, objects_[2]);
}

TEST_F(RadosWalDamage, MissingObjectIsTruncatedPayload) {
  write_log();
  // The last one: its predecessor says the log continues there.
  ASSERT_EQ(raw_->remove(objects_.back()), 0);
  expect_refused(ErrorKind::TruncatedPayload, objects_.back());
  // One in the middle: the reader stops there and finds the next one.
  ASSERT_EQ(raw_->remove(objects_[1]), 0);
  expect_refused(ErrorKind::TruncatedPayload, objects_[1]);
}

// Every object of the log removed, the last first (the head records that
// the log was created: iqdb.logged): loads with and without the WAL and a
// replica's open fail naming object 0, and the writer's open fails before
// its takeover seal (which would have made the removed log an empty one:
// object 0 stays missing). Before iqdb.logged, all three read the snapshot
// alone. (A generation whose log was never created, as a save without the
// WAL publishes one, loads as its snapshot:
// ASaveWithoutTheWalIsNotTakenForTheStateItReplaced.)
TEST_F(RadosWalDamage, EveryObjectRemovedIsTruncatedPayload) {
  write_log();
  for (auto it = objects_.rbegin(); it != objects_.rend(); ++it) ASSERT_EQ(raw_->remove(*it), 0);
  expect_refused(ErrorKind::TruncatedPayload, objects_[0]);
  EXPECT_FALSE(raw_->exists(objects_[0]));
  const auto e = error_of([&] { (void)ReadReplica<FlatIndex>::open(read_only(config_for(name_))); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind(), ErrorKind::TruncatedPayload) << e->what();
  EXPECT_EQ(e->path().string(), url(objects_[0])) << e->what();
  // The attribute is hostile bytes too: anything but 16 lower-case hex
  // digits is InvalidHeader naming the head.
  const std::string head = RadosSnapshotStore::head_object(name_);
  const std::vector<std::string> hostile = {"not a generation", "000000000000000G", std::string(100, '0'), ""};
  for (const std::string& bad : hostile) {
    ASSERT_EQ(raw_->set_xattr(head, "iqdb.logged", bad), 0);
    expect_refused(ErrorKind::InvalidHeader, head);
  }
}

// A replica that loaded the first 30 records, then a flipped byte in a log
// object after them: its catch-up fails with CorruptLog naming that object,
// and the replica holds exactly a prefix of the log (nothing from the
// damaged frame on).
TEST_F(RadosWalDamage, ReplicaReportsDamageNamingTheObject) {
  Model m;
  std::optional<ReadReplica<FlatIndex>> replica;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), config_for(name_));
    for (std::uint64_t id = 1; id <= 150; ++id) {
      db.insert(id, vector_of(id));
      if (id == 30) replica.emplace(ReadReplica<FlatIndex>::open(read_only(config_for(name_))));
    }
    db.close();
  }
  objects_ = log_objects(name_, generation(name_));
  ASSERT_GE(objects_.size(), 4u);
  auto b = raw_->read(objects_[2]);
  ASSERT_EQ(raw_->write_at(objects_[2], {static_cast<char>(b[b.size() / 2] ^ 0x5a)}, b.size() / 2), 0);
  const auto e = error_of([&] { replica->catch_up(); });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind(), ErrorKind::CorruptLog) << e->what();
  EXPECT_EQ(e->path().string(), url(objects_[2])) << e->what();
  const std::uint64_t at = replica->last_lsn();
  EXPECT_GE(at, 30u);
  EXPECT_LT(at, 150u);
  for (std::uint64_t id = 1; id <= at; ++id) m[id] = vector_of(id);
  EXPECT_TRUE(equals(replica->index(), m));
}

// ------------------------------------------------------------ time-outs

// Every OSD paused: an insert under Always fails in bounded time (the 3 s
// operation time-out: the outcome is unknown), the index refuses further
// writes (Poisoned); once the OSDs run again, a reopen loads every
// acknowledged insert (and the unknown one, or not).
TEST_F(RadosWal, TimeoutPoisonsAndReopenResolves) {
  const std::vector<pid_t> osds = osd_pids(*env_);
  if (osds.empty()) GTEST_SKIP() << "no OSD pid files beside CEPH_CONF (not a scripts/ceph-cluster.sh cluster)";
  RadosOptions o = small_objects();
  o.op_timeout = 3s;
  RadosLockOptions lo;
  lo.lease = 8s;
  lo.take_over = true;
  Model m;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), config_for(name_, o, lo));
    for (std::uint64_t id = 1; id <= 20; ++id) {
      db.insert(id, vector_of(id));
      m[id] = vector_of(id);
    }
    const ResumeOnExit resume{osds};
    for (const pid_t p : osds) ASSERT_EQ(::kill(p, SIGSTOP), 0);
    const auto t0 = Clock::now();
    const auto e = error_of([&] { db.insert(21, vector_of(21)); });
    const double took = secs(Clock::now() - t0);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->kind(), ErrorKind::Io) << e->what();
    EXPECT_EQ(e->sys_errno(), ETIMEDOUT) << e->what();
    EXPECT_LT(took, 30.0);
    std::cout << "[ MEASURED ] append with every OSD paused: " << took << " s: " << e->what() << "\n";
    EXPECT_TRUE(db.failure());
    const auto again = error_of([&] { db.insert(22, vector_of(22)); });
    ASSERT_TRUE(again);
    EXPECT_EQ(again->kind(), ErrorKind::Poisoned) << again->what();
  }
  // Resumed (Resume); the closed writer's lock is released or runs out.
  auto loaded = when_back([&] { return PersistedIndex<FlatIndex>::load(config_for(name_, o, lo)); },
                          {ErrorKind::Io, ErrorKind::Locked}, "reopen");
  const bool has_unknown = loaded.index().contains(21);
  Model with = m;
  with[21] = vector_of(21);
  EXPECT_TRUE(equals(loaded.index(), has_unknown ? with : m));
  loaded.insert(23, vector_of(23));
  loaded.close();
}

// ------------------------------------------------------------ fork()

// A child of fork() inherits the writer, its lock and its RADOS client but
// none of their threads (docs/API.md, "fork()"). Through them it reads the
// index as it was; every write, sync, checkpoint and load through the
// inherited client is refused with Forked (before, a load there waited on
// librados threads that are not in the child); dropping them neither waits
// nor releases the parent's lock. A client of its own works. The parent
// keeps the lock and loses nothing.
//
// Not under AddressSanitizer: GCC 12's runtime takes no allocator lock
// around fork(), so a child whose parent had a librados thread inside
// malloc at the fork waits for ever in its first allocation of that size
// (seen: the child's own client's dispatch thread blocked in
// SizeClassAllocator64::GetFromAllocator, once in 14 runs). The normal
// build runs it.
TEST_F(RadosWal, AForkedChildNeverUsesTheParentsClient) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "GCC 12's AddressSanitizer runtime is not fork-safe in a process with librados threads";
#endif
  const PersistConfig cfg = config_for(name_);
  Model m;
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), cfg);
  for (std::uint64_t id = 1; id <= 5; ++id) {
    db.insert(id, vector_of(id));
    m[id] = vector_of(id);
  }
  const auto forked = [](auto&& f) {
    const auto e = error_of(f);
    return e && e->kind() == ErrorKind::Forked;
  };
  // The child writes the number of each check before it makes it, so a
  // hang names the check it hung in.
  const test::ChildResult child = test::run_in_child([&](int steps) {
    ::alarm(60);  // a hang fails the test (SIGALRM)
    int code = 0;
    int n = 0;
    const auto next = [&] {
      const unsigned char b = static_cast<unsigned char>(++n);
      (void)!::write(steps, &b, 1);
    };
    const auto check = [&](bool ok) {
      if (!ok && code == 0) code = n;
    };
    try {
      next();
      check(equals(db.index(), m));
      next();
      check(forked([&] { db.insert(std::uint64_t{100}, vector_of(100)); }));
      next();
      check(forked([&] { db.sync(); }));
      next();
      check(forked([&] { db.checkpoint(); }));
      next();
      check(forked([&] { PersistedIndex<FlatIndex>::load(read_only(cfg)); }));
      next();
      check(db.failure().has_value());
      next();
      { auto gone = std::move(db); }  // neither waits nor unlocks
      // A client of the child's own.
      next();
      check(equals(PersistedIndex<FlatIndex>::load(read_only(config_for(name_))).index(), m));
    } catch (...) {
      code = 90;
    }
    return code;
  });
  const int status = child.status;
  const int reached = child.report.empty() ? 0 : static_cast<unsigned char>(child.report.back());
  ASSERT_TRUE(WIFEXITED(status)) << "the child was ended by signal " << WTERMSIG(status)
                                 << " (14: it hung) in its check " << reached << " (1-based, of 8)";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the number of the child's first failed check";

  // The lock is still the parent's: another writer is refused, the parent writes.
  const auto other = error_of([&] { PersistedIndex<FlatIndex>::load(config_for(name_)); });
  EXPECT_TRUE(other && other->kind() == ErrorKind::Locked) << (other ? other->what() : "opened");
  for (std::uint64_t id = 6; id <= 10; ++id) {
    db.insert(id, vector_of(id));
    m[id] = vector_of(id);
  }
  db.close();
  EXPECT_TRUE(equals(PersistedIndex<FlatIndex>::load(read_only(config_for(name_))).index(), m));
}

// ------------------------------------------------------------ read replicas

// A writer runs the stream (inserts, erases, batches, a checkpoint every 25
// operations, the log rotating over 4 KiB objects); one replica (its own
// client) catches up every few operations and follows each checkpoint to
// the next generation's log without loading anew; another catches up only
// at the end (generations it needed are gone: it loads anew). Both end
// equal to the model and to the writer.
TEST_F(RadosWal, ReplicasFollowTheStreamThroughCheckpoints) {
  PersistConfig cfg = config_for(name_);
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), cfg);
  auto often = ReadReplica<FlatIndex>::open(read_only(config_for(name_)));
  auto late = ReadReplica<FlatIndex>::open(read_only(config_for(name_)));
  Model m;
  for (std::uint64_t j = 1; j <= 110; ++j) {
    const StreamOp op = stream_op(m, j);
    perform(db, op);
    apply_op(m, op);
    if (j % 4 == 0) {
      often.catch_up();
      ASSERT_TRUE(equals(often.index(), m)) << "after operation " << j;
    }
  }
  often.catch_up();
  late.catch_up();
  EXPECT_TRUE(equals(often.index(), m));
  EXPECT_TRUE(equals(late.index(), m));
  EXPECT_EQ(often.last_lsn(), db.last_lsn());
  EXPECT_EQ(late.last_lsn(), db.last_lsn());
  EXPECT_EQ(often.stats().reloads, 0u);  // four checkpoints followed from log to log
  EXPECT_EQ(late.stats().reloads, 1u);
  db.close();
}

// A save without the WAL replaces the state a replica followed, keeping
// the LSN; the next writer with the WAL writes it again one LSN higher
// before it logs (docs/FORMAT.md, "Saves without the WAL"), so the replica
// loads it anew instead of applying the new log onto the state it has.
TEST_F(RadosWal, ASaveWithoutTheWalIsNotTakenForTheStateItReplaced) {
  Model m = logged_ids(3);
  auto replica = ReadReplica<FlatIndex>::open(read_only(config_for(name_)));
  ASSERT_TRUE(equals(replica.index(), m));
  {
    auto plain = PersistedIndex<FlatIndex>::load(read_only(config_for(name_)));
    plain.erase(1);
    m.erase(1);
    plain.insert(50, vector_of(50));
    m[50] = vector_of(50);
    const FileHeader h = plain.save();
    EXPECT_EQ(h.last_lsn, 3u);
    EXPECT_NE(h.optional_flags & format::OPTIONAL_FLAG_SAVED_WITHOUT_WAL, 0u);
  }
  auto w = PersistedIndex<FlatIndex>::load(config_for(name_));
  EXPECT_EQ(w.last_lsn(), 4u);
  w.insert(7, vector_of(7));
  m[7] = vector_of(7);
  replica.catch_up();
  EXPECT_TRUE(equals(replica.index(), m));
  EXPECT_EQ(replica.last_lsn(), 5u);
  EXPECT_EQ(replica.stats().reloads, 1u);
  w.close();
}

// The replica sees such a save at its next catch-up, before any writer with
// the WAL opens: the publish starts a new generation without a log, and its
// snapshot, flagged, is not the one the replica loaded. So does a second
// save, at the same LSN again; a catch-up with nothing new loads nothing.
TEST_F(RadosWal, ReplicaSeesASaveWithoutTheWalAtTheLsnItHolds) {
  Model m = logged_ids(3);
  auto replica = ReadReplica<FlatIndex>::open(read_only(config_for(name_)));
  ASSERT_TRUE(equals(replica.index(), m));
  for (std::uint64_t round = 1; round <= 2; ++round) {
    auto plain = PersistedIndex<FlatIndex>::load(read_only(config_for(name_)));
    plain.erase(round);
    m.erase(round);
    plain.insert(50 + round, vector_of(50 + round));
    m[50 + round] = vector_of(50 + round);
    EXPECT_EQ(plain.save().last_lsn, 3u);
    replica.catch_up();
    EXPECT_TRUE(equals(replica.index(), m)) << "round " << round;
    EXPECT_EQ(replica.last_lsn(), 3u);
    EXPECT_EQ(replica.stats().reloads, round);
    replica.catch_up();
    EXPECT_EQ(replica.stats().reloads, round);
  }
}

// A program that saves without the lock (save_to_rados, write_snapshot)
// does not publish over a live writer with the WAL: that would replace the
// snapshot the writer's log continues, and the records it acknowledged
// would be gone for every load. The publish compares the head's writer
// attribute (absent while no writer holds the lock) in the same operation,
// so it fails with Locked and the writer's index stays whole.
TEST_F(RadosWal, ASaveWithoutTheLockDoesNotReplaceALiveWritersSnapshot) {
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), config_for(name_));
  Model m;
  for (std::uint64_t id = 1; id <= 20; ++id) {
    db.insert(id, vector_of(id));
    m[id] = vector_of(id);
  }
  const std::uint64_t gen = generation(name_);
  FlatIndex foreign(kDim, DistanceMetric::Euclidean);
  foreign.insert(777, vector_of(777));
  const auto other = open_store(name_);
  const auto e = error_of([&] { save_to_rados(*other, name_, foreign); });
  ASSERT_TRUE(e) << "a save without the lock was published over a live writer";
  EXPECT_EQ(e->kind(), ErrorKind::Locked) << e->what();
  EXPECT_NE(std::string(e->what()).find("writer lock is held by"), std::string::npos) << e->what();
  EXPECT_EQ(generation(name_), gen);
  // Every acknowledged insert is in what a load reads, while the writer
  // lives and after it closes; the writer goes on.
  EXPECT_TRUE(equals(PersistedIndex<FlatIndex>::load(read_only(config_for(name_))).index(), m));
  db.insert(21, vector_of(21));
  m[21] = vector_of(21);
  db.close();
  EXPECT_TRUE(equals(PersistedIndex<FlatIndex>::load(read_only(config_for(name_))).index(), m));
  // Once no writer holds the lock, the same save publishes.
  save_to_rados(*other, name_, foreign);
  EXPECT_TRUE(equals(load_from_rados<FlatIndex>(*other, name_), Model{{777, vector_of(777)}}));
}

// A FlatIndex whose load runs `on_load` once, after the snapshot's payload
// was read: a reader held between its snapshot and that snapshot's log.
struct GatedFlat : FlatIndex {
  static constexpr std::string_view index_type = FlatIndex::index_type;
  explicit GatedFlat(FlatIndex&& f) : FlatIndex(std::move(f)) {}
  static inline std::function<void()> on_load;
  static GatedFlat load_from(PayloadReader& r) {
    GatedFlat out(FlatIndex::load_from(r));
    if (const auto f = std::exchange(on_load, nullptr)) f();
    return out;
  }
};

// A reader (a read-only load, a replica's open) reads generation G's
// snapshot; meanwhile the writer checkpoints twice and the collection behind
// the second removes G with its log. The reader then finds G's log gone.
// It loads again, from the newest generation, and holds every acknowledged
// insert. Before, G's log read as no log: the load returned G's snapshot
// alone, without the inserts acknowledged after it (and a replica's refresh
// of a log whose objects were removed read it as an empty, "version-1",
// log: Unsupported).
TEST_F(RadosWal, AReaderWhoseGenerationIsRemovedWhileItReadsLoadsAgain) {
  const std::shared_ptr<RadosSnapshotStore> store = open_store(name_);
  PersistConfig wcfg = rados_persist_config(store, name_);
  wcfg.wal_enabled = true;
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), wcfg);
  Model m;
  std::uint64_t next = 1;
  const auto insert = [&] {
    db.insert(next, vector_of(next));
    m[next] = vector_of(next);
    ++next;
  };
  const auto two_checkpoints = [&] {
    for (int i = 0; i < 2; ++i) {
      insert();
      db.checkpoint();
    }
    insert();  // in the newest generation's log
    store->wait_for_garbage_collection();
  };
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 5; ++i) insert();
    db.checkpoint();
    for (int i = 0; i < 3; ++i) insert();  // in generation G's log
    const std::uint64_t g = generation(name_);
    GatedFlat::on_load = two_checkpoints;
    if (round == 0) {
      auto loaded = PersistedIndex<GatedFlat>::load(read_only(config_for(name_)));
      EXPECT_TRUE(equals(loaded.index(), m));
      EXPECT_EQ(loaded.last_lsn(), db.last_lsn());
    } else {
      auto replica = ReadReplica<GatedFlat>::open(read_only(config_for(name_)));
      EXPECT_TRUE(equals(replica.index(), m));
      EXPECT_EQ(replica.last_lsn(), db.last_lsn());
    }
    EXPECT_FALSE(GatedFlat::on_load) << "the gate never ran";
    EXPECT_GE(generation(name_), g + 2);
    EXPECT_FALSE(raw_->exists(RadosSnapshotStore::stripe_object(name_, g, 0))) << "generation " << g << " was kept";
  }
  db.close();
}

// A background follower keeps up; lag() counts what it has not applied.
TEST_F(RadosWal, ReplicaLagAndBackgroundFollower) {
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), config_for(name_));
  auto r = ReadReplica<FlatIndex>::open(read_only(config_for(name_)));
  r.start_following(5ms);
  Model m;
  for (std::uint64_t id = 1; id <= 60; ++id) {
    db.insert(id, vector_of(id));
    m[id] = vector_of(id);
  }
  const std::uint64_t lsn = db.last_lsn();
  ASSERT_TRUE(within(60s, [&] { return r.last_lsn() >= lsn; }));
  r.stop_following();
  EXPECT_EQ(r.failure(), std::nullopt);
  EXPECT_TRUE(equals(r.index(), m));
  for (std::uint64_t id = 61; id <= 65; ++id) db.insert(id, vector_of(id));
  const ReplicaLag lag = r.lag();
  EXPECT_EQ(lag.applied_lsn, 60u);
  EXPECT_EQ(lag.available_lsn, 65u);
  EXPECT_EQ(lag.records_behind, 5u);
  db.close();
}

// lag() of a replica whose log the writer's checkpoints replaced and removed
// (the collection behind the second one): a lower bound, the replica's own
// LSN, until the next catch-up loads anew (docs/API.md). Before, it threw
// TruncatedPayload, "log object 0 is missing" (an outside hunt, with FAISS
// and hnswlib replicas on RADOS polling lag()).
TEST_F(RadosWal, ReplicaLagAfterItsLogWasRemovedIsALowerBound) {
  const std::shared_ptr<RadosSnapshotStore> store = open_store(name_);
  PersistConfig wcfg = rados_persist_config(store, name_);
  wcfg.wal_enabled = true;
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), wcfg);
  Model m;
  for (std::uint64_t id = 1; id <= 10; ++id) {
    db.insert(id, vector_of(id));
    m[id] = vector_of(id);
  }
  auto r = ReadReplica<FlatIndex>::open(read_only(config_for(name_)));
  ASSERT_EQ(r.last_lsn(), 10u);
  const std::uint64_t g = generation(name_);
  for (std::uint64_t id = 11; id <= 14; ++id) {
    db.insert(id, vector_of(id));
    m[id] = vector_of(id);
    if (id % 2 == 0) db.checkpoint();
  }
  store->wait_for_garbage_collection();
  ASSERT_FALSE(raw_->exists(RadosSnapshotStore::stripe_object(name_, g, 0))) << "generation " << g << " was kept";
  ReplicaLag lag;
  ASSERT_NO_THROW(lag = r.lag());
  EXPECT_EQ(lag.applied_lsn, 10u);
  EXPECT_EQ(lag.available_lsn, 10u);  // all it can vouch for
  EXPECT_EQ(lag.records_behind, 0u);
  r.catch_up();
  EXPECT_EQ(r.last_lsn(), 14u);
  EXPECT_TRUE(equals(r.index(), m));
  lag = r.lag();
  EXPECT_EQ(lag.applied_lsn, 14u);
  EXPECT_EQ(lag.available_lsn, 14u);
  db.close();
}

// Failover: the writer (another process) runs the stream under Always and is
// SIGKILLed at a random instant; a replica that followed it in the
// background is promoted (waiting for the dead writer's 3 s lease, fencing
// it): it holds every acknowledged operation (or one more, in flight) and
// takes new writes; a later load agrees. Reports SIGKILL to first write.
TEST_F(RadosWal, ReplicaPromotedAfterTheWriterIsKilled) {
  std::mt19937_64 rng(std::random_device{}());
  for (int round = 0; round < 3; ++round) {
    const std::string name = unique_name("failover");
    ChildProcess child({"--child", "stream", name, "3"});
    ASSERT_EQ(child.read_line(), "open");
    RadosLockOptions lo;
    lo.lease = 3s;
    lo.take_over = true;
    auto replica = ReadReplica<FlatIndex>::open(read_only(config_for(name, small_objects(), lo)));
    replica.start_following(5ms);
    std::uint64_t acked = read_acks(child, Clock::now() + std::chrono::milliseconds(300 + rng() % 1200), 0);
    child.kill();
    const auto killed = Clock::now();
    acked = read_acks_to_the_end(child, acked);  // written before the kill
    const std::uint64_t followed = replica.last_lsn();
    auto w = std::move(replica).promote();
    w.insert(888888, vector_of(888888));
    const double took = secs(Clock::now() - killed);
    Model at = model_after(acked), after = model_after(acked + 1);
    at[888888] = vector_of(888888);
    after[888888] = vector_of(888888);
    const bool one_more = !equals(w.index(), at);
    EXPECT_TRUE(equals(w.index(), one_more ? after : at)) << "round " << round << ", " << acked << " acked";
    w.close();
    EXPECT_TRUE(equals(PersistedIndex<FlatIndex>::load(read_only(config_for(name))).index(), one_more ? after : at));
    std::cout << "[ MEASURED ] round " << round << ": " << acked << " operations acknowledged, the replica had LSN "
              << followed << "; SIGKILL to the promoted replica's first write (3 s lease): " << took << " s\n";
  }
}

// `wal repair` on RADOS killed midway: 400 inserts in 4 KiB log objects, a
// byte flipped in the first frame of object 2 (a load fails); a repair
// process (this binary, --child repair: the writer lock with a 2 s lease, the
// log's consistent prefix, rados_detail::cut_log at object 2's start, as the
// CLI does) is SIGKILLed at a random instant after it took the lock. Then a
// read-only load either fails with a typed error (the damage still there:
// the cut not reached) or holds exactly the records before object 2; a
// repair run afterwards (taking the dead one's lock over) finishes, and the
// load holds exactly those records.
TEST_F(RadosWal, KilledLogRepairLeavesADamagedOrTheRepairedLog) {
  std::mt19937_64 rng(std::random_device{}());
  int damaged = 0, repaired = 0;
  constexpr int kRounds = 4;
  for (int round = 0; round < kRounds; ++round) {
    const std::string name = unique_name("rep");
    {
      auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean), config_for(name));
      for (std::uint64_t id = 1; id <= 400; ++id) db.insert(id, vector_of(id));
      db.close();
    }
    const std::uint64_t gen = generation(name);
    const auto objects = log_objects(name, gen);
    ASSERT_GE(objects.size(), 6u);
    std::uint64_t total = 0;
    for (const auto& oid : objects) total += raw_->read(oid).size();
    const std::uint64_t frame = (total - 40) / 400;  // the v2 header is 40 bytes; every frame the same size
    const std::uint64_t end = raw_->read(objects[0]).size() + raw_->read(objects[1]).size();
    const std::uint64_t kept = (end - 40) / frame;
    std::vector<char> b = raw_->read(objects[2]);
    b[10] = static_cast<char>(b[10] ^ 0x40);
    ASSERT_EQ(raw_->write_at(objects[2], {b.begin() + 10, b.begin() + 11}, 10), 0);
    Model m;
    for (std::uint64_t id = 1; id <= kept; ++id) m[id] = vector_of(id);

    ChildProcess child({"--child", "repair", name, "2", std::to_string(end)});
    ASSERT_EQ(child.read_line(), "locked");
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 30000));
    child.kill();
    try {
      const auto db = PersistedIndex<FlatIndex>::load(read_only(config_for(name)));
      EXPECT_TRUE(equals(db.index(), m)) << "round " << round << ": a load after the killed repair";
      ++repaired;
    } catch (const PersistError& e) {
      EXPECT_TRUE(e.kind() == ErrorKind::CorruptLog || e.kind() == ErrorKind::TruncatedPayload) << e.what();
      ++damaged;
    }
    RadosLocation loc;
    loc.pool = env_->pool;
    loc.name = name;
    const auto store = RadosSnapshotStore::open(loc, small_objects());
    RadosLockOptions lo;
    lo.take_over = true;
    auto lock = RadosWriterLock::acquire(*store, name, lo);
    rados_detail::cut_log(*store, *lock, rados_detail::read_log_prefix(*store, name, gen), end);
    lock->release();
    EXPECT_TRUE(equals(PersistedIndex<FlatIndex>::load(read_only(config_for(name))).index(), m)) << "round " << round;
  }
  std::cout << "[ MEASURED ] " << kRounds << " killed repairs: " << damaged << " left the damaged log, " << repaired
            << " the repaired one\n";
}

// ------------------------------------------------------------ children

// --child stream NAME LEASE: open_with a new index (WAL, Always) and run the
// stream, printing each operation's number once it returned, until killed.
int child_stream(const std::string& name, int lease) {
  RadosLockOptions lo;
  lo.lease = std::chrono::seconds(lease);
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean),
                                                 config_for(name, small_objects(), lo));
  std::cout << "open" << std::endl;
  Model m;
  for (std::uint64_t j = 1;; ++j) {
    const StreamOp op = stream_op(m, j);
    try {
      perform(db, op);
    } catch (const PersistError& e) {
      std::cout << "err " << to_string(e.kind()) << " " << e.what() << std::endl;
      return 1;
    }
    apply_op(m, op);
    std::cout << j << std::endl;
  }
}

// --child commands NAME LEASE: open_with a new index (WAL, Always; its lock
// sends writes even when it knows it lost the lock), then "insert ID" lines:
// "ok" or "err KIND ...".
int child_commands(const std::string& name, int lease) {
  RadosLockOptions lo;
  lo.lease = std::chrono::seconds(lease);
  lo.refuse_locally = false;
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Euclidean),
                                                 config_for(name, small_objects(), lo));
  std::cout << "open" << std::endl;
  std::string cmd;
  std::uint64_t id = 0;
  while (std::cin >> cmd >> id) {
    try {
      db.insert(id, vector_of(id));
      std::cout << "ok" << std::endl;
    } catch (const PersistError& e) {
      std::cout << "err " << to_string(e.kind()) << " " << e.what() << std::endl;
    }
  }
  return 0;
}

// --child repair NAME LEASE END: what `iqdb-persist wal repair --yes` does
// to the log (under the writer lock, leased for LEASE s): cut it at log
// offset END; prints "locked" once it holds the lock, "cut" when done.
int child_repair(const std::string& name, int lease, std::uint64_t end) {
  RadosLocation loc;
  loc.pool = cluster_env()->pool;
  loc.name = name;
  const auto store = RadosSnapshotStore::open(loc, small_objects());
  RadosLockOptions lo;
  lo.lease = std::chrono::seconds(lease);
  auto lock = RadosWriterLock::acquire(*store, name, lo);
  const auto head = store->head(name);
  if (!head) return 3;
  const auto prefix = rados_detail::read_log_prefix(*store, name, head->generation);
  std::cout << "locked" << std::endl;
  rados_detail::cut_log(*store, *lock, prefix, end);
  std::cout << "cut" << std::endl;
  lock->release();
  return 0;
}

}  // namespace
}  // namespace iqdb::persist

int main(int argc, char** argv) {
  if (argc == 6 && std::string(argv[1]) == "--child" && std::string(argv[2]) == "repair") {
    try {
      return iqdb::persist::child_repair(argv[3], std::atoi(argv[4]), std::stoull(argv[5]));
    } catch (const std::exception& e) {
      std::cout << "err " << e.what() << std::endl;
      return 1;
    }
  }
  if (argc == 5 && std::string(argv[1]) == "--child") {
    const std::string mode = argv[2];
    try {
      if (mode == "stream") return iqdb::persist::child_stream(argv[3], std::atoi(argv[4]));
      if (mode == "commands") return iqdb::persist::child_commands(argv[3], std::atoi(argv[4]));
    } catch (const std::exception& e) {
      std::cout << "err " << e.what() << std::endl;
      return 1;
    }
    return 2;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
