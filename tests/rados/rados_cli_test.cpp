// `iqdb-persist inspect` and `verify` on rados://POOL/NAME (the CLI built
// with the RADOS component). Needs a cluster; skipped unless CEPH_CONF and
// IQDB_RADOS_POOL are set (scripts/ceph-cluster.sh run). Checked against
// what the test saved (the vectors' count and dimension), and against a
// stripe the test damaged itself.
#include <gtest/gtest.h>
#include <rados/librados.h>

#include <cstdlib>
#include <optional>
#include <random>
#include <string>
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
      try {
        store_->remove(store_->path_of(name_));
      } catch (const PersistError&) {
      }
    }
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

}  // namespace
}  // namespace iqdb::persist
