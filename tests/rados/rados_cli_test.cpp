// `iqdb-persist inspect`, `verify` and `copy` on rados://POOL/NAME (the CLI
// built with the RADOS component). Needs a cluster; skipped unless CEPH_CONF
// and IQDB_RADOS_POOL are set (scripts/ceph-cluster.sh run). Checked against
// what the test saved (the vectors' count and dimension, the vectors the
// test generated itself), against the source file's bytes, and against
// bytes the test damaged itself.
#include <gtest/gtest.h>
#include <rados/librados.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
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
      for (const std::string& n : {name_, name_ + "-b"}) {
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
  auto r = run_cli({"copy", src.string(), url_});
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
  r = run_cli({"copy", url_, dst.string()});
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
  auto r = run_cli({"copy", src.string(), url_});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("locked"), std::string::npos) << r.err;
  EXPECT_EQ(store_->head(name_)->generation, before->generation);
  lock->release();
  r = run_cli({"copy", src.string(), url_});
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
    execl(IQDB_PERSIST_CLI_EXE, "iqdb-persist", "copy", src.c_str(), url_.c_str(), static_cast<char*>(nullptr));
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
// published snapshot, `copy` refuses a source whose log holds records after
// its snapshot, `checkpoint` folds them (refused with Locked while a writer
// has the index open), and then the copy loads as the mutations made.
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
  r = run_cli({"copy", url_, dst.string()});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("4 records after the snapshot"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dst));

  r = run_cli({"checkpoint", url_});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("(4 log records folded)"), std::string::npos) << r.out;
  r = run_cli({"wal", "dump", url_});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find(": 0 records"), std::string::npos) << r.out;

  r = run_cli({"copy", url_, dst.string()});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  const auto db = PersistedIndex<FlatIndex>::load(PersistConfig(dst));
  ASSERT_EQ(db.index().size(), 2u);
  const auto v1 = db.index().get(1);
  const auto v3 = db.index().get(3);
  EXPECT_EQ(std::vector<float>(v1.begin(), v1.end()), (std::vector<float>{1, 2}));
  EXPECT_EQ(std::vector<float>(v3.begin(), v3.end()), (std::vector<float>{5, 6}));
  EXPECT_TRUE(db.index().get(2).empty());
  EXPECT_EQ(db.last_lsn(), 4u);
}

}  // namespace
}  // namespace iqdb::persist
