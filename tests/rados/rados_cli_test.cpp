// `iqdb-persist inspect`, `verify`, `copy`, `wal dump`, `wal repair`,
// `checkpoint` and `demo` on rados://POOL/NAME (the CLI built with the RADOS
// component). Needs a cluster; skipped unless CEPH_CONF
// and IQDB_RADOS_POOL are set (scripts/ceph-cluster.sh run). Checked against
// what the test saved (the vectors' count and dimension, the vectors the
// test generated itself), against the source file's bytes, and against
// bytes the test damaged itself.
#include <gtest/gtest.h>
#include <rados/librados.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "iqdb/persist.hpp"
#include "iqdb/persist/rados.hpp"
#include "support/cli_runner.hpp"

#if defined(IQDB_TEST_HAVE_FAISS)
#include <faiss/IndexFlat.h>
#include <faiss/IndexIDMap.h>

#include "iqdb/persist/adapters/faiss.hpp"
#endif
#if defined(IQDB_TEST_HAVE_HNSWLIB)
#include "iqdb/persist/adapters/hnswlib.hpp"
#endif

namespace iqdb::persist {
namespace {

using test::run_cli;

struct ClusterEnv {
  std::string conf;
  std::string pool;
};

std::optional<ClusterEnv> cluster_env() {
  const char* conf = std::getenv("CEPH_CONF");
  const char* pool = std::getenv("IQDB_RADOS_POOL");
  if (conf == nullptr || pool == nullptr || *conf == '\0' || *pool == '\0') return std::nullopt;
  return ClusterEnv{conf, pool};
}

// librados directly (the test's own view of the pool, not the store's).
class RawPool {
 public:
  explicit RawPool(const ClusterEnv& env) {
    ok_ = rados_create2(&cluster_, "ceph", "client.admin", 0) == 0 &&
          rados_conf_read_file(cluster_, env.conf.c_str()) == 0 && rados_connect(cluster_) == 0 &&
          rados_ioctx_create(cluster_, env.pool.c_str(), &io_) == 0;
  }
  ~RawPool() {
    if (io_ != nullptr) rados_ioctx_destroy(io_);
    if (cluster_ != nullptr) rados_shutdown(cluster_);
  }
  RawPool(const RawPool&) = delete;
  RawPool& operator=(const RawPool&) = delete;
  bool ok() const { return ok_; }
  bool exists(const std::string& obj) {
    std::uint64_t size = 0;
    std::time_t mtime = 0;
    return rados_stat(io_, obj.c_str(), &size, &mtime) == 0;
  }
  // XOR one byte of an object with 0x40.
  bool flip(const std::string& obj, std::uint64_t at) {
    char byte = 0;
    if (rados_read(io_, obj.c_str(), &byte, 1, at) != 1) return false;
    byte = static_cast<char>(byte ^ 0x40);
    return rados_write(io_, obj.c_str(), &byte, 1, at) == 0;
  }
  std::uint64_t size(const std::string& obj) {
    std::uint64_t size = 0;
    std::time_t mtime = 0;
    return rados_stat(io_, obj.c_str(), &size, &mtime) == 0 ? size : 0;
  }
  bool truncate(const std::string& obj, std::uint64_t size) { return rados_trunc(io_, obj.c_str(), size) == 0; }
  int remove(const std::string& obj) { return rados_remove(io_, obj.c_str()); }
  bool set_attr(const std::string& obj, const char* name, const std::string& value) {
    return rados_setxattr(io_, obj.c_str(), name, value.data(), value.size()) == 0;
  }
  // The head's iqdb.next attribute (16 hex digits): the generation the next save takes.
  std::uint64_t next_generation(const std::string& name) {
    char buf[32] = {};
    const int n = rados_getxattr(io_, RadosSnapshotStore::head_object(name).c_str(), "iqdb.next", buf, sizeof buf - 1);
    return n > 0 ? std::stoull(std::string(buf, static_cast<std::size_t>(n)), nullptr, 16) : 0;
  }

 private:
  rados_t cluster_ = nullptr;
  rados_ioctx_t io_ = nullptr;
  bool ok_ = false;
};

// What the test inserted, row by row: the independent model an index loaded
// from a copy must equal.
struct Model {
  std::size_t dim = 0;
  std::map<std::uint64_t, std::vector<float>> rows;

  static Model random(std::size_t dim, std::uint64_t n, std::uint64_t seed) {
    Model m{dim, {}};
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> value(-1.0f, 1.0f);
    for (std::uint64_t id = 0; id < n; ++id) {
      std::vector<float> v(dim);
      for (float& x : v) x = value(rng);
      m.rows.emplace(id * 7 + 3, std::move(v));
    }
    return m;
  }
  FlatIndex build() const {
    FlatIndex index(dim, DistanceMetric::Euclidean);
    for (const auto& [id, v] : rows) index.insert(id, v);
    return index;
  }
  void expect_equal(const FlatIndex& index) const {
    ASSERT_EQ(index.size(), rows.size());
    ASSERT_EQ(index.dim(), dim);
    for (const auto& [id, v] : rows) {
      const auto got = index.get(id);
      ASSERT_EQ(std::vector<float>(got.begin(), got.end()), v) << "id " << id;
    }
  }
};

std::string file_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

class RadosCli : public ::testing::Test {
 protected:
  void SetUp() override {
    env_ = cluster_env();
    if (!env_) GTEST_SKIP() << "no cluster: set CEPH_CONF and IQDB_RADOS_POOL (scripts/ceph-cluster.sh run)";
    std::random_device rd;
    name_ = "t-cli-" + std::to_string(rd() % 1000000000u);
    RadosLocation loc;
    loc.pool = env_->pool;
    loc.name = name_;
    RadosOptions o;
    o.stripe_size = 64 * 1024;
    o.io_chunk = 16 * 1024;
    store_ = RadosSnapshotStore::open(loc, o);
    url_ = loc.url();
  }
  void TearDown() override {
    if (store_) {
      for (const std::string& n : {name_, name_ + "-b", name_ + "-demo-none", name_ + "-demo-zstd",
                                   name_ + "-demo-lz4"}) {
        try {
          store_->remove(store_->path_of(n));
        } catch (const PersistError&) {
        }
      }
    }
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }
  // A scratch directory of this test's own.
  std::filesystem::path dir() {
    if (dir_.empty()) {
      dir_ = std::filesystem::temp_directory_path() / ("iqdb-rados-cli-" + name_);
      std::filesystem::create_directories(dir_);
    }
    return dir_;
  }
  // Save `m` as a local snapshot file (zstd: not the tool's default).
  std::filesystem::path save_local(const Model& m, const std::string& file) {
    PersistConfig cfg(dir() / file);
    cfg.compression = Compression::zstd(1);
    PersistedIndex<FlatIndex>::open_with(m.build(), cfg).save();
    return cfg.path;
  }
  // 2000 vectors of 24 dims: 192 KB, 4 stripes.
  void save() {
    std::mt19937_64 rng(5);
    std::uniform_real_distribution<float> value(-1.0f, 1.0f);
    FlatIndex index(kDim, DistanceMetric::Euclidean);
    std::vector<float> v(kDim);
    for (std::uint64_t id = 0; id < kRows; ++id) {
      for (float& x : v) x = value(rng);
      index.insert(id * 3 + 1, v);
    }
    save_to_rados(*store_, name_, index);
  }
  // A config for PersistedIndex at this test's name (own client).
  PersistConfig config(bool wal, const RadosOptions& o = {}) const {
    RadosLocation loc;
    loc.pool = env_->pool;
    loc.name = name_;
    PersistConfig cfg = rados_persist_config(loc, o);
    cfg.wal_enabled = wal;
    return cfg;
  }
  // Log object k of generation g, named as docs/FORMAT.md says.
  std::string log_obj(std::uint64_t g, std::uint64_t k) const {
    return name_ + ".log." + std::to_string(g) + "." + std::to_string(k);
  }
  static constexpr std::size_t kDim = 24;
  static constexpr std::uint64_t kRows = 2000;
  std::optional<ClusterEnv> env_;
  std::string name_, url_;
  std::unique_ptr<RadosSnapshotStore> store_;
  std::filesystem::path dir_;
};

TEST_F(RadosCli, InspectAndVerifyARadosSnapshot) {
  save();
  auto r = run_cli({"inspect", url_, "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"n_vectors\":" + std::to_string(kRows)), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"dim\":" + std::to_string(kDim)), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"file_size\":" + std::to_string(store_->head(name_)->total_size)), std::string::npos)
      << r.out;
  // --ceph-conf and --client-id given explicitly.
  r = run_cli({"verify", url_, "--ceph-conf", env_->conf, "--client-id", "admin"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("OK: " + url_), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(std::to_string(kRows) + " vectors x " + std::to_string(kDim) + " dims"), std::string::npos)
      << r.out;
}

TEST_F(RadosCli, DamagedStripeFailsVerify) {
  save();
  const auto head = store_->head(name_);
  ASSERT_TRUE(head);
  ASSERT_GE(head->stripe_count, 3u);
  // Flip one byte in the middle of stripe 1, with librados directly.
  rados_t cluster = nullptr;
  ASSERT_EQ(rados_create2(&cluster, "ceph", "client.admin", 0), 0);
  ASSERT_EQ(rados_conf_read_file(cluster, env_->conf.c_str()), 0);
  ASSERT_EQ(rados_connect(cluster), 0);
  rados_ioctx_t io = nullptr;
  ASSERT_EQ(rados_ioctx_create(cluster, env_->pool.c_str(), &io), 0);
  const std::string obj = RadosSnapshotStore::stripe_object(name_, head->generation, 1);
  char byte = 0;
  ASSERT_EQ(rados_read(io, obj.c_str(), &byte, 1, 1000), 1);
  byte = static_cast<char>(byte ^ 0x40);
  ASSERT_EQ(rados_write(io, obj.c_str(), &byte, 1, 1000), 0);
  rados_ioctx_destroy(io);
  rados_shutdown(cluster);

  const auto r = run_cli({"verify", url_});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("DAMAGED: " + url_), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(obj), std::string::npos) << r.err;  // names the stripe
  // inspect reads the header only (stripe 0): still fine.
  EXPECT_EQ(run_cli({"inspect", url_}).code, 0);
}

// Restoring a backup over a RADOS index whose snapshot header is damaged
// (a byte of it flipped in stripe 0: its CRC fails): refused without
// --force, replaced with it (before, the copy stopped at the destination's
// damage).
TEST_F(RadosCli, CopyForceReplacesADamagedIndex) {
  save();
  const auto head = store_->head(name_);
  ASSERT_TRUE(head);
  const std::string obj = RadosSnapshotStore::stripe_object(name_, head->generation, 0);
  RawPool raw(*env_);
  ASSERT_TRUE(raw.ok());
  ASSERT_TRUE(raw.flip(obj, 30));
  ASSERT_NE(run_cli({"inspect", url_}).code, 0);

  const Model m = Model::random(kDim, 300, 3);
  const auto src = save_local(m, "src.iqdb");
  auto r = run_cli({"copy", src.string(), url_});
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
  r = run_cli({"copy", "--force", src.string(), url_});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("could not be read"), std::string::npos) << r.out;
  EXPECT_EQ(run_cli({"verify", url_}).code, 0);
  m.expect_equal(load_from_rados<FlatIndex>(*store_, name_));
}

// copy of a live source whose writer checkpoints without pause: two
// publishes while the copy reads remove the generation it reads (the
// collection behind the second). The copy starts again from the newer one
// instead of reporting the source DAMAGED (exit 1, as it did). Every copy
// succeeds and holds exactly the inserts 1..L of the LSN L it arrived at.
TEST_F(RadosCli, CopyOfASourceThatCheckpointsWithoutPauseSucceeds) {
  constexpr std::uint64_t kBase = 20000;  // ids 1..kBase in the first snapshot: 1.9 MB to read
  const auto row = [](std::uint64_t id) {
    std::vector<float> v(kDim);
    for (std::size_t d = 0; d < kDim; ++d) v[d] = static_cast<float>((id * 31 + d) % 1009);
    return v;
  };
  RadosOptions o;
  o.stripe_size = 256 * 1024;
  FlatIndex start(kDim, DistanceMetric::Euclidean);
  for (std::uint64_t id = 1; id <= kBase; ++id) start.insert(id, row(id));
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> checkpoints{0};
  auto db = PersistedIndex<FlatIndex>::open_with(std::move(start), config(true, o));
  std::thread writer([&] {
    for (std::uint64_t id = kBase + 1; !stop.load(); ++id) {
      db.insert(id, row(id));
      db.checkpoint();
      checkpoints.fetch_add(1);
    }
  });
  int copies = 0, failed = 0;
  std::string first_failure;
  for (; copies < 12; ++copies) {
    const std::filesystem::path dst = dir() / ("copy-" + std::to_string(copies) + ".iqdb");
    const auto r = run_cli({"copy", url_, dst.string()});
    if (r.code != 0) {
      if (failed++ == 0) first_failure = r.err;
      continue;
    }
    auto copy = PersistedIndex<FlatIndex>::load(PersistConfig(dst));
    const std::uint64_t lsn = copy.last_lsn();
    ASSERT_GE(copy.index().size(), kBase);
    EXPECT_EQ(copy.index().size(), kBase + lsn) << "copy " << copies << " at LSN " << lsn;
    for (const std::uint64_t id : {std::uint64_t{1}, kBase, kBase + lsn}) {  // the first, the last before, the last
      const std::span<const float> got = copy.index().get(id);
      const std::vector<float> want = row(id);
      ASSERT_EQ(got.size(), want.size()) << "id " << id;
      EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin())) << "id " << id;
    }
  }
  stop.store(true);
  writer.join();
  db.close();
  std::cout << "[ MEASURED ] " << copies << " copies during " << checkpoints.load() << " checkpoints: " << failed
            << " failed\n";
  EXPECT_EQ(failed, 0) << "first: " << first_failure;
}

TEST_F(RadosCli, MissingSnapshotOrClusterIsExit2) {
  auto r = run_cli({"verify", url_});  // nothing published
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  r = run_cli({"inspect", url_});
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  r = run_cli({"inspect", url_, "--ceph-conf", "no-such-dir/ceph.conf"});
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  r = run_cli({"verify", "rados://" + env_->pool});  // no NAME
  EXPECT_NE(r.code, 0);
}

// local -> rados -> local: the file that comes back is the source file byte
// for byte; the snapshot in RADOS loads as the model (2 stripes of the
// tool's default 32 MiB), and so does a rados -> rados copy.
TEST_F(RadosCli, CopyRoundTripIsByteForByte) {
  const Model m = Model::random(128, 80000, 11);  // 41 MB
  const auto src = save_local(m, "src.iqdb");
  auto r = run_cli({"copy", src.string(), url_});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("verified at the destination"), std::string::npos) << r.out;
  const auto head = store_->head(name_);
  ASSERT_TRUE(head);
  EXPECT_EQ(head->total_size, std::filesystem::file_size(src));
  EXPECT_EQ(head->stripe_count, 2u);
  m.expect_equal(load_from_rados<FlatIndex>(*store_, name_));

  const std::string url_b = url_ + "-b";
  r = run_cli({"copy", url_, url_b, "--ceph-conf", env_->conf, "--client-id", "admin"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  m.expect_equal(load_from_rados<FlatIndex>(*store_, name_ + "-b"));

  const auto back = dir() / "back.iqdb";
  r = run_cli({"copy", url_b, back.string()});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(file_bytes(back) == file_bytes(src)) << "the restored file differs from the source";
  m.expect_equal(PersistedIndex<FlatIndex>::load(PersistConfig(back)).index());
}

// A damaged source is refused naming the file or the stripe object; the
// destination keeps its previous snapshot (RADOS: the same generation).
TEST_F(RadosCli, CopyOfADamagedSourcePublishesNothing) {
  save();  // 64 KiB stripes: 4 of them
  const auto before = store_->head(name_);
  ASSERT_TRUE(before);
  const Model m = Model::random(16, 3000, 12);
  const auto src = save_local(m, "bad.iqdb");
  {
    std::fstream f(src, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(std::filesystem::file_size(src) / 2));
    f.put('\x5a');
  }
  auto r = run_cli({"copy", "--force", src.string(), url_});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("DAMAGED: " + src.string()), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("nothing was copied"), std::string::npos) << r.err;
  EXPECT_EQ(store_->head(name_)->generation, before->generation);
  EXPECT_EQ(load_from_rados<FlatIndex>(*store_, name_).size(), kRows);

  // A flipped byte in stripe 2 of the RADOS snapshot, copied to a file.
  RawPool pool(*env_);
  ASSERT_TRUE(pool.ok());
  const std::string stripe = RadosSnapshotStore::stripe_object(name_, before->generation, 2);
  ASSERT_TRUE(pool.flip(stripe, 100));
  const auto dst = save_local(m, "dst.iqdb");  // m's intact file, to be kept
  const std::string dst_before = file_bytes(dst);
  r = run_cli({"copy", "--force", url_, dst.string()});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("DAMAGED: " + url_), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(stripe), std::string::npos) << r.err;  // names the object
  EXPECT_TRUE(file_bytes(dst) == dst_before);
  for (const auto& e : std::filesystem::directory_iterator(dir())) {
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  }
}

// A destination whose writer lock a live writer holds is refused (Locked),
// and taken once the writer released it.
TEST_F(RadosCli, CopyRefusesALockedDestination) {
  save();
  const auto before = store_->head(name_);
  const Model m = Model::random(8, 100, 13);
  const auto src = save_local(m, "src.iqdb");
  auto lock = RadosWriterLock::acquire(*store_, name_);
  auto r = run_cli({"copy", "--force", src.string(), url_});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("locked"), std::string::npos) << r.err;
  EXPECT_EQ(store_->head(name_)->generation, before->generation);
  lock->release();
  r = run_cli({"copy", src.string(), url_});  // an index is there
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
  EXPECT_EQ(store_->head(name_)->generation, before->generation);
  r = run_cli({"copy", "--force", src.string(), url_});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  m.expect_equal(load_from_rados<FlatIndex>(*store_, name_));
}

// The tool (a process of its own) SIGKILLed in the middle of copying a large
// index into RADOS, once the first stripe of its generation is written: the
// destination's previous snapshot is still the published one, complete.
TEST_F(RadosCli, KilledCopyLeavesTheDestinationIntact) {
  save();
  const auto before = store_->head(name_);
  const Model big = Model::random(256, 100000, 14);  // 102 MB: 4 stripes
  const auto src = save_local(big, "big.iqdb");
  RawPool pool(*env_);
  ASSERT_TRUE(pool.ok());
  const std::uint64_t gen = pool.next_generation(name_);
  ASSERT_GT(gen, before->generation);

  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    execl(IQDB_PERSIST_CLI_EXE, "iqdb-persist", "copy", "--force", src.c_str(), url_.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool started = false;
  while (!started && std::chrono::steady_clock::now() < deadline) {
    started = pool.exists(RadosSnapshotStore::stripe_object(name_, gen, 0));
    if (!started) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ::kill(child, SIGKILL);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(started) << "the copy never wrote a stripe";
  ASSERT_TRUE(WIFSIGNALED(status)) << "the copy finished before it was killed; status " << status;

  const auto after = store_->head(name_);
  ASSERT_TRUE(after);
  EXPECT_EQ(after->generation, before->generation);
  EXPECT_EQ(load_from_rados<FlatIndex>(*store_, name_).size(), kRows);
  const auto r = run_cli({"verify", url_});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
}

// PersistedIndex with its log in RADOS: `wal dump` lists the log of the
// published snapshot, `copy` of a source whose log holds records after its
// snapshot folds them into the copy (last LSN 4), `checkpoint` folds them
// in RADOS (refused with Locked while a writer has the index open), and
// then the copy is the snapshot's bytes; both load as the mutations made.
TEST_F(RadosCli, WalDumpCheckpointAndCopyOfARadosLog) {
  RadosLocation loc;
  loc.pool = env_->pool;
  loc.name = name_;
  PersistConfig cfg = rados_persist_config(loc);
  cfg.wal_enabled = true;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), cfg);
    db.insert(1, std::vector<float>{1, 2});
    db.insert(2, std::vector<float>{3, 4});
    db.insert(3, std::vector<float>{5, 6});
    db.erase(2);
    const auto r = run_cli({"checkpoint", url_});
    EXPECT_EQ(r.code, 1) << r.out << r.err;
    EXPECT_NE(r.err.find("locked"), std::string::npos) << r.err;
    db.close();
  }
  auto r = run_cli({"wal", "dump", url_});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("lsn=1 "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("lsn=4 "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("erase  id=2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(": 4 records in 4 frames"), std::string::npos) << r.out;

  const auto dst = dir() / "copy.iqdb";
  const auto expect_model = [&](std::uint64_t lsn = 4) {
    const auto db = PersistedIndex<FlatIndex>::load(PersistConfig(dst));
    ASSERT_EQ(db.index().size(), 2u);
    const auto v1 = db.index().get(1);
    const auto v3 = db.index().get(3);
    EXPECT_EQ(std::vector<float>(v1.begin(), v1.end()), (std::vector<float>{1, 2}));
    EXPECT_EQ(std::vector<float>(v3.begin(), v3.end()), (std::vector<float>{5, 6}));
    EXPECT_TRUE(db.index().get(2).empty());
    EXPECT_EQ(db.last_lsn(), lsn);
  };
  r = run_cli({"copy", url_, dst.string()});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("log held 4 records after its snapshot (LSN 0)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("last LSN 4"), std::string::npos) << r.out;
  expect_model();

  r = run_cli({"checkpoint", url_});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("(4 log records folded)"), std::string::npos) << r.out;
  r = run_cli({"wal", "dump", url_});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find(": 0 records"), std::string::npos) << r.out;

  // Over the first copy (LSN 4), the same state claims LSN 5 (LSNs at a
  // path only go up: docs/DISTRIBUTED.md, "Backup and restore").
  r = run_cli({"copy", "--force", url_, dst.string()});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("last LSN 5"), std::string::npos) << r.out;
  expect_model(5);
  // To an empty destination: the snapshot's bytes, nothing to fold.
  std::filesystem::remove(dst);
  r = run_cli({"copy", url_, dst.string()});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_EQ(r.out.find("log held"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("last LSN 4"), std::string::npos) << r.out;
  expect_model();
}

// A local index whose log holds records after its snapshot, copied into
// RADOS while its writer has it open: one generation holding them, with the
// source's last LSN; a writer that loads it with the WAL logs its next
// record in RADOS with the next LSN, and a later load agrees with the model.
TEST_F(RadosCli, CopyFoldsALocalLogIntoRadosAndAWriterGoesOn) {
  PersistConfig local(dir() / "src.iqdb");
  local.wal_enabled = true;
  Model m = Model::random(8, 50, 15);
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(8, DistanceMetric::Euclidean), local);
  std::uint64_t n = 0;
  for (const auto& [id, v] : m.rows) {
    db.insert(id, v);
    if (++n == 20) db.checkpoint();  // snapshot LSN 20; LSN 21..50 in the log
  }
  db.erase(m.rows.begin()->first);  // LSN 51
  m.rows.erase(m.rows.begin());
  auto r = run_cli({"copy", local.path.string(), url_});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("log held 31 records after its snapshot (LSN 20)"), std::string::npos) << r.out;
  db.close();
  m.expect_equal(load_from_rados<FlatIndex>(*store_, name_));
  r = run_cli({"inspect", url_, "--json"});
  EXPECT_NE(r.out.find("\"last_lsn\":51"), std::string::npos) << r.out;
  {
    auto w = PersistedIndex<FlatIndex>::load(config(true));
    EXPECT_EQ(w.last_lsn(), 51u);
    const std::vector<float> v(8, 0.25f);
    w.insert(999, v);
    m.rows[999] = v;
    EXPECT_EQ(w.last_lsn(), 52u);
    w.close();
  }
  r = run_cli({"wal", "dump", url_});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("lsn=52 "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("base LSN 52: 1 records"), std::string::npos) << r.out;
  const auto again = PersistedIndex<FlatIndex>::load(config(false));
  m.expect_equal(again.index());
  EXPECT_EQ(again.last_lsn(), 52u);
}

// A backup restored over an index that replicas follow (copy of the live
// writer's index to a file at LSN 30; the writer goes on to 60, checkpoints
// and closes; copy --force of the backup back over it): the copy claims
// LSN 61, above the replicas (docs/DISTRIBUTED.md, "Backup and restore",
// step 6), so a replica's next catch-up loads anew and holds the backup's
// contents at 61, as does a background follower; a writer then goes on
// from there. (An outside hunt could not try it: its writer still held the
// name.)
TEST_F(RadosCli, ReplicasFollowARestoreOfAnOlderBackup) {
  const Model m = Model::random(8, 60, 21);
  Model backup{8, {}};
  const std::filesystem::path file = dir() / "backup.iqdb";
  {
    auto w = PersistedIndex<FlatIndex>::open_with(FlatIndex(8, DistanceMetric::Euclidean), config(true));
    std::uint64_t n = 0;
    for (const auto& [id, v] : m.rows) {
      w.insert(id, v);
      if (++n <= 30) backup.rows.emplace(id, v);
      if (n == 30) {
        const auto r = run_cli({"copy", url_, file.string()});
        ASSERT_EQ(r.code, 0) << r.out << r.err;
      }
      if (n == 45) w.checkpoint();
    }
    w.checkpoint();  // (copy --force replaces an index whose log holds nothing more)
    w.close();
  }
  auto replica = ReadReplica<FlatIndex>::open(config(false));
  ASSERT_EQ(replica.last_lsn(), 60u);
  replica.read([&](const FlatIndex& ix) { m.expect_equal(ix); });
  auto follower = ReadReplica<FlatIndex>::open(config(false));
  follower.start_following(std::chrono::milliseconds(20));

  const auto r = run_cli({"copy", "--force", file.string(), url_});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  (void)replica.catch_up();
  EXPECT_EQ(replica.last_lsn(), 61u);
  EXPECT_EQ(replica.stats().reloads, 1u);
  replica.read([&](const FlatIndex& ix) { backup.expect_equal(ix); });
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (follower.last_lsn() != 61 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  follower.stop_following();
  ASSERT_EQ(follower.last_lsn(), 61u) << (follower.failure() ? *follower.failure() : std::string("no failure"));
  follower.read([&](const FlatIndex& ix) { backup.expect_equal(ix); });

  auto w = PersistedIndex<FlatIndex>::load(config(true));
  EXPECT_EQ(w.last_lsn(), 61u);
  const std::vector<float> v(8, 0.5f);
  w.insert(1000, v);
  w.close();
  backup.rows[1000] = v;
  (void)replica.catch_up();
  EXPECT_EQ(replica.last_lsn(), 62u);
  replica.read([&](const FlatIndex& ix) { backup.expect_equal(ix); });
}

// A log written with 4 KiB objects, one insert per frame, every frame the
// same size: the test's own arithmetic over the objects' sizes (the 40-byte
// header, then whole frames, docs/FORMAT.md) says which records each holds.
struct LoggedRows {
  std::vector<std::pair<std::uint64_t, std::vector<float>>> rows;  // in LSN order
  std::uint64_t generation = 0;
  std::vector<std::uint64_t> object_sizes;
  std::uint64_t frame = 0;
  std::uint64_t bytes_before(std::size_t k) const {
    std::uint64_t b = 0;
    for (std::size_t i = 0; i < k; ++i) b += object_sizes[i];
    return b;
  }
  // The first `kept` rows, as a model.
  Model first(std::uint64_t kept) const {
    Model m{16, {}};
    for (std::uint64_t i = 0; i < kept; ++i) m.rows.emplace(rows[i].first, rows[i].second);
    return m;
  }
};
constexpr std::uint64_t kLogHeader = 40;

class RadosCliRepair : public RadosCli {
 protected:
  LoggedRows write_log(std::uint64_t n) {
    RadosOptions o;
    o.log_object_size = 4096;
    LoggedRows out;
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(16, DistanceMetric::Euclidean), config(true, o));
    std::mt19937_64 rng(n);
    std::uniform_real_distribution<float> value(-1.0f, 1.0f);
    for (std::uint64_t i = 0; i < n; ++i) {
      std::vector<float> v(16);
      for (float& x : v) x = value(rng);
      db.insert(100 + i, v);
      out.rows.emplace_back(100 + i, std::move(v));
    }
    db.close();
    out.generation = store_->head(name_)->generation;
    RawPool pool(*env_);
    for (std::uint64_t k = 0; pool.exists(log_obj(out.generation, k)); ++k) {
      out.object_sizes.push_back(pool.size(log_obj(out.generation, k)));
    }
    const std::uint64_t total = out.bytes_before(out.object_sizes.size());
    EXPECT_EQ((total - kLogHeader) % n, 0u) << total;
    out.frame = (total - kLogHeader) / n;
    return out;
  }
  // A load fails with `kind`, naming `object`.
  void expect_load_fails(ErrorKind kind, const std::string& object) {
    try {
      (void)PersistedIndex<FlatIndex>::load(config(false));
      ADD_FAILURE() << "the damaged log loaded";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), kind) << e.what();
      EXPECT_NE(std::string(e.what()).find(object), std::string::npos) << e.what();
    }
  }
  // After the repair: a load holds the first `kept` rows; a writer goes on
  // with LSN kept + 1, and a later load has its record too.
  void expect_repaired(const LoggedRows& log, std::uint64_t kept) {
    const auto db = PersistedIndex<FlatIndex>::load(config(false));
    log.first(kept).expect_equal(db.index());
    EXPECT_EQ(db.last_lsn(), kept);
    Model m = log.first(kept);
    {
      auto w = PersistedIndex<FlatIndex>::load(config(true));
      const std::vector<float> v(16, 0.5f);
      w.insert(7, v);
      m.rows[7] = v;
      EXPECT_EQ(w.last_lsn(), kept + 1);
      w.close();
    }
    m.expect_equal(PersistedIndex<FlatIndex>::load(config(false)).index());
  }
};

// A flipped byte in log object 2 (intact frames after it): the load fails
// naming the object; `wal repair` is a dry run without --yes, refused while
// a writer holds the lock, and then cuts the log before object 2's first
// frame (later objects removed); the index loads with every record before
// the damage and a writer continues.
TEST_F(RadosCliRepair, WalRepairCutsAFlippedLogObject) {
  const LoggedRows log = write_log(150);
  ASSERT_GE(log.object_sizes.size(), 4u);
  const std::string damaged = log_obj(log.generation, 2);
  RawPool pool(*env_);
  ASSERT_TRUE(pool.flip(damaged, 10));
  const std::uint64_t kept = (log.bytes_before(2) - kLogHeader) / log.frame;
  expect_load_fails(ErrorKind::CorruptLog, damaged);
  // `wal dump` prints the records before the damage and says what a load
  // says (before: "... bytes after the last valid frame do not form a
  // frame", an outside hunt).
  auto r = run_cli({"wal", "dump", url_});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.out.find(std::to_string(kept) + " records in " + std::to_string(kept) + " frames"), std::string::npos)
      << r.out;
  EXPECT_NE(r.err.find("is damaged and"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("do not form a frame"), std::string::npos) << r.err;

  r = run_cli({"wal", "repair", url_});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.out.find("valid prefix: " + std::to_string(kept) + " records"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("dry run: nothing changed"), std::string::npos) << r.out;
  EXPECT_EQ(pool.size(damaged), log.object_sizes[2]);
  {
    auto lock = RadosWriterLock::acquire(*store_, name_);
    r = run_cli({"wal", "repair", url_, "--yes"});
    EXPECT_EQ(r.code, 1) << r.out << r.err;
    EXPECT_NE(r.err.find("locked"), std::string::npos) << r.err;
    lock->release();
  }
  r = run_cli({"wal", "repair", url_, "--yes"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("repaired: the log now ends at offset " + std::to_string(log.bytes_before(2)) + " after " +
                       std::to_string(kept) + " records"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(pool.size(damaged), 0u);
  for (std::size_t k = 4; k < log.object_sizes.size(); ++k) EXPECT_FALSE(pool.exists(log_obj(log.generation, k)));
  r = run_cli({"wal", "repair", url_, "--yes"});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("nothing to repair"), std::string::npos) << r.out;
  expect_repaired(log, kept);
}

// The last log object cut in the middle of a frame (shorter than its size
// attribute): the load fails naming it; the repair keeps every whole frame.
TEST_F(RadosCliRepair, WalRepairCutsATruncatedLogObject) {
  const LoggedRows log = write_log(100);
  const std::size_t last = log.object_sizes.size() - 1;
  ASSERT_GT(log.object_sizes[last], log.frame);
  const std::string damaged = log_obj(log.generation, last);
  RawPool pool(*env_);
  const std::uint64_t cut_to = log.object_sizes[last] - log.frame / 2;
  ASSERT_TRUE(pool.truncate(damaged, cut_to));
  const std::uint64_t kept = (log.bytes_before(last) + cut_to - kLogHeader) / log.frame;
  ASSERT_EQ(kept, 99u);
  expect_load_fails(ErrorKind::TruncatedPayload, damaged);

  const auto r = run_cli({"wal", "repair", url_, "--yes"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("damaged objects: log object " + std::to_string(last)), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("after " + std::to_string(kept) + " records"), std::string::npos) << r.out;
  expect_repaired(log, kept);
}

// Zero bytes after the last frame of the last log object, covered by its
// size attribute: a local log's padding, but nothing pads a RADOS log. Every
// reader agrees that it is damage (CorruptLog naming the object): a load
// without the WAL, a replica's open and a replica's catch-up (as a writer's
// load); `wal dump` fails, `wal repair` cuts them and keeps every record.
// Before, the loads without the WAL, replicas, `wal dump` and `wal repair`
// ("nothing to repair") took the zeros for the log's end, while a writer's
// load and `checkpoint` refused the log: no writer could open it, and no
// repair helped (an outside hunt).
TEST_F(RadosCliRepair, WalRepairCutsZerosAfterTheLastFrame) {
  const LoggedRows log = write_log(100);
  const std::size_t last = log.object_sizes.size() - 1;
  const std::string damaged = log_obj(log.generation, last);
  auto replica = ReadReplica<FlatIndex>::open(config(false));
  ASSERT_EQ(replica.last_lsn(), 100u);
  RawPool pool(*env_);
  const std::uint64_t size = log.object_sizes[last] + 16;
  ASSERT_TRUE(pool.truncate(damaged, size));  // (extends with zeros)
  char attr[17] = {};
  std::snprintf(attr, sizeof attr, "%016llx", static_cast<unsigned long long>(size));
  ASSERT_TRUE(pool.set_attr(damaged, "iqdb.size", attr));
  expect_load_fails(ErrorKind::CorruptLog, damaged);
  for (int reader = 0; reader < 2; ++reader) {
    try {
      if (reader == 0) {
        (void)ReadReplica<FlatIndex>::open(config(false));
      } else {
        replica.catch_up();
      }
      ADD_FAILURE() << (reader == 0 ? "a replica opened" : "a replica caught up with") << " the damaged log";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::CorruptLog) << e.what();
      EXPECT_NE(std::string(e.what()).find(damaged), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("16 zero bytes"), std::string::npos) << e.what();
    }
  }
  auto r = run_cli({"wal", "dump", url_});
  EXPECT_NE(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.err.find("zero bytes follow the last valid frame"), std::string::npos) << r.err;
  r = run_cli({"wal", "repair", url_});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.out.find("to drop: 16 bytes"), std::string::npos) << r.out;
  r = run_cli({"wal", "repair", url_, "--yes"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("after 100 records"), std::string::npos) << r.out;
  EXPECT_EQ(pool.size(damaged), log.object_sizes[last]);
  expect_repaired(log, 100);
}

// Damage in the log objects' attributes, where `wal repair` and the loads
// used to disagree: the repair said "nothing to repair" (exit 0) or "the
// published snapshot has no log" (exit 2) of a log that every load refused.
// (1) The last object says the log continues (iqdb.more) at an object that
// is missing: the load fails naming it (TruncatedPayload), the repair finds
// it damaged and keeps every record.
TEST_F(RadosCliRepair, WalRepairFindsAContinuationThatIsMissing) {
  const LoggedRows log = write_log(100);
  const std::size_t last = log.object_sizes.size() - 1;
  RawPool pool(*env_);
  ASSERT_TRUE(pool.set_attr(log_obj(log.generation, last), "iqdb.more", "0000000000000001"));
  expect_load_fails(ErrorKind::TruncatedPayload, log_obj(log.generation, last + 1));
  auto r = run_cli({"wal", "repair", url_});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.out.find("says it continues at object " + std::to_string(last + 1) + ", which is missing"),
            std::string::npos)
      << r.out;
  r = run_cli({"wal", "repair", url_, "--yes"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  expect_repaired(log, 100);
}

// (2) Object 0's attributes malformed (its size, or its start): nothing of
// the log is consistent, the load fails naming object 0 (InvalidHeader);
// the repair says so (exit 1), and with --yes removes every object: the
// snapshot loads alone (the records in the log are lost, as the dry run
// said), and a writer goes on. (3) Object 0's size attribute shorter than
// the log's header: the same. (4) Every object removed: the load fails
// naming object 0 (TruncatedPayload: the head records that the log was
// created), the repair's dry run says so, and --yes seals an empty object 0.
TEST_F(RadosCliRepair, WalRepairRemovesALogWhoseFirstObjectIsDamaged) {
  for (const std::string attr : {"iqdb.size", "iqdb.start", "short", "removed"}) {
    const LoggedRows log = write_log(60);
    const std::string first = log_obj(log.generation, 0);
    RawPool pool(*env_);
    if (attr == "short") {
      ASSERT_TRUE(pool.set_attr(first, "iqdb.size", "0000000000000010"));  // 16 bytes: inside the header
    } else if (attr == "removed") {
      for (std::size_t k = log.object_sizes.size(); k-- > 0;) ASSERT_EQ(pool.remove(log_obj(log.generation, k)), 0);
      expect_load_fails(ErrorKind::TruncatedPayload, first);
      // A writer's open refuses it too, before its takeover seal would
      // have made the removed log an empty one.
      try {
        (void)PersistedIndex<FlatIndex>::load(config(true));
        ADD_FAILURE() << "a writer opened the removed log";
      } catch (const PersistError& e) {
        EXPECT_EQ(e.kind(), ErrorKind::TruncatedPayload) << e.what();
      }
      EXPECT_FALSE(pool.exists(first));
    } else {
      ASSERT_TRUE(pool.set_attr(first, attr.c_str(), "not a number"));
    }
    EXPECT_ANY_THROW((void)PersistedIndex<FlatIndex>::load(config(false))) << attr;
    if (attr == "removed") {
      const auto dry = run_cli({"wal", "repair", url_});
      EXPECT_NE(dry.out.find("every object was removed"), std::string::npos) << dry.out << dry.err;
    }
    auto r = run_cli({"wal", "repair", url_});
    EXPECT_EQ(r.code, 1) << attr << ": " << r.out << r.err;
    EXPECT_NE(r.out.find("dry run: nothing changed"), std::string::npos) << attr << ": " << r.out;
    r = run_cli({"wal", "repair", url_, "--yes"});
    ASSERT_EQ(r.code, 0) << attr << ": " << r.out << r.err;
    EXPECT_NE(r.out.find("repaired: the log now ends at offset 0"), std::string::npos) << attr << ": " << r.out;
    // What is left: empty objects of the repair's seal (object 0, and
    // object 1 after a cut object 0), no bytes of the old log.
    for (std::size_t k = 0; k < log.object_sizes.size(); ++k) {
      if (!pool.exists(log_obj(log.generation, k))) continue;
      EXPECT_LE(k, 1u) << attr;
      EXPECT_EQ(pool.size(log_obj(log.generation, k)), 0u) << attr << ": object " << k;
    }
    expect_repaired(log, 0);
    store_->remove(store_->path_of(name_));  // the next round starts from nothing
  }
}

// The demo's tour against the pool: three snapshots NAME-demo-{none,zstd,lz4}
// with the requested count, dimension and compression; the uncompressed one
// holds the bytes the same demo writes to a file (same seed).
TEST_F(RadosCli, DemoRunsAgainstThePool) {
  auto r = run_cli({"demo", "--rados", url_, "--vectors", "2000", "--dim", "16"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  const std::string last_line = r.out.substr(r.out.rfind('\n', r.out.size() - 2) + 1);
  EXPECT_EQ(last_line.rfind("demo: all checks passed", 0), 0u) << last_line;
  for (const std::string c : {"none", "zstd", "lz4"}) {
    r = run_cli({"inspect", url_ + "-demo-" + c, "--json"});
    ASSERT_EQ(r.code, 0) << r.out << r.err;
    EXPECT_NE(r.out.find("\"n_vectors\":2000"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("\"dim\":16"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("\"compression\":\"" + c + "\""), std::string::npos) << r.out;
  }
  const auto local = dir() / "local";
  ASSERT_EQ(run_cli({"demo", "--dir", local.string(), "--vectors", "2000", "--dim", "16"}).code, 0);
  const auto back = dir() / "back.iqdb";
  ASSERT_EQ(run_cli({"copy", url_ + "-demo-none", back.string()}).code, 0);
  EXPECT_TRUE(file_bytes(back) == file_bytes(local / "demo-none.iqdb"));
  EXPECT_NE(run_cli({"demo", "--rados", "not-a-pool", "--vectors", "10"}).code, 0);
}

// An adapter index (I) whose log holds records after its snapshot, written
// through `cfg`, copied from `src` to `dst` by the tool: it folds 31 records
// onto the snapshot (LSN 30), and `load_dst()` then holds exactly the test's
// model, each vector its own nearest neighbour at distance 0, the erased one
// absent, with last LSN 61.
template <class I, class Make, class LoadDst>
void expect_adapter_fold(PersistConfig cfg, Make make, const std::string& src, const std::string& dst,
                         LoadDst load_dst) {
  Model m = Model::random(8, 60, 16);
  {
    cfg.wal_enabled = true;
    auto db = PersistedIndex<I>::open_with(make(), cfg);
    std::uint64_t n = 0;
    for (const auto& [id, v] : m.rows) {
      db.insert(id, v);
      if (++n == 30) db.checkpoint();
    }
    db.erase(m.rows.begin()->first);  // LSN 61
    const auto r = run_cli({"copy", src, dst});
    ASSERT_EQ(r.code, 0) << r.out << r.err;
    EXPECT_NE(r.out.find("log held 31 records after its snapshot (LSN 30)"), std::string::npos) << r.out;
    db.close();
  }
  const std::uint64_t erased = m.rows.begin()->first;
  m.rows.erase(m.rows.begin());
  const PersistedIndex<I> got = load_dst();
  EXPECT_EQ(got.last_lsn(), 61u);
  ASSERT_EQ(got.index().size(), m.rows.size());
  EXPECT_FALSE(got.index().contains(erased));
  for (const auto& [id, v] : m.rows) {
    const auto hits = got.index().search(v, 1);
    ASSERT_EQ(hits.size(), 1u) << id;
    EXPECT_EQ(hits[0].id, id);
    EXPECT_EQ(hits[0].distance, 0.0f) << id;
  }
}

#if defined(IQDB_TEST_HAVE_HNSWLIB)
// A local hnswlib index with its log, copied into RADOS.
TEST_F(RadosCli, CopyFoldsAnHnswlibLogIntoRados) {
  expect_adapter_fold<HnswlibIndex>(
      PersistConfig(dir() / "h.iqdb"), [] { return HnswlibIndex(8, DistanceMetric::Euclidean); },
      (dir() / "h.iqdb").string(), url_, [&] { return PersistedIndex<HnswlibIndex>::load(config(false)); });
}
#endif

#if defined(IQDB_TEST_HAVE_FAISS)
// A FAISS index (IndexIDMap2 over IndexFlatL2) with its log in RADOS, copied to a file.
TEST_F(RadosCli, CopyFoldsAFaissLogFromRados) {
  const auto file = dir() / "f.iqdb";
  expect_adapter_fold<FaissIndex>(
      config(true),
      [] {
        auto map = std::make_unique<faiss::IndexIDMap2>(new faiss::IndexFlatL2(8));
        map->own_fields = true;
        return FaissIndex(std::move(map));
      },
      url_, file.string(), [&] { return PersistedIndex<FaissIndex>::load(PersistConfig(file)); });
}
#endif

}  // namespace
}  // namespace iqdb::persist
