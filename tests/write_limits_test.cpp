// Nothing is written that the library then refuses to read:
// - an index's own insert refuses metadata a snapshot cannot hold (before,
//   FlatIndex::insert stored a 65,537-byte key, open_with saved it, and the
//   index, with every write logged after, no longer loaded);
// - a snapshot is written for the limits it will be read with
//   (PersistConfig::limits: a payload compressed beyond max_expansion_ratio
//   is stored uncompressed, one over max_payload_bytes is refused with the
//   previous file intact), and limits of 0 are refused;
// - LSNs never wrap: a header claiming more than 2^63 - 1 is refused, and a
//   write that would log past it is refused before anything is logged.
// And a FIFO where the snapshot or the log should be is refused as any file
// that is not regular, instead of waiting for a writer forever.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <string>
#include <vector>

#include <iqdb/persist.hpp>

#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

const std::vector<float> kV{1.0f, 2.0f};

template <class F>
ErrorKind kind_of(F&& f) {
  try {
    f();
  } catch (const PersistError& e) {
    return e.kind();
  }
  ADD_FAILURE() << "no PersistError";
  return ErrorKind::Io;
}

TEST(WriteLimits, AnIndexRefusesAKeyASnapshotCannotHold) {
  FlatIndex ix(2, DistanceMetric::Euclidean);
  const std::string too_long(kMaxMetadataKeyBytes + 1, 'k');
  EXPECT_EQ(kind_of([&] { ix.insert(1, kV, Metadata{{too_long, Value(1)}}); }), ErrorKind::InvalidArgument);
  EXPECT_EQ(ix.size(), 0u);
  // What it holds then saves and loads, and the log goes on after it.
  ix.insert(2, kV, Metadata{{std::string(kMaxMetadataKeyBytes, 'k'), Value(1)}});
  test::TempDir dir;
  PersistConfig cfg(dir / "x.iqdb");
  cfg.wal_enabled = true;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(std::move(ix), cfg);
    db.insert(3, kV);
    db.close();
  }
  const auto db = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(db.index().size(), 2u);
  EXPECT_TRUE(db.index().contains(3));
}

// Such a byte id cannot be made, so no index can store one.
TEST(WriteLimits, AnEmptyOrOverlongByteIdCannotBeMade) {
  FlatIndex ix(2, DistanceMetric::Euclidean);
  EXPECT_EQ(kind_of([] { (void)VectorId::bytes(""); }), ErrorKind::InvalidArgument);
  EXPECT_EQ(kind_of([] { (void)VectorId::bytes(std::string(kMaxIdBytes + 1, 'x')); }), ErrorKind::InvalidArgument);
  ix.insert(VectorId::bytes(std::string(kMaxIdBytes, 'x')), kV);
  EXPECT_EQ(ix.size(), 1u);
}

// All-zero vectors compress about 590-fold with zstd: over a ratio of 64.
TEST(WriteLimits, ASnapshotIsStoredAsItsOwnLimitsReadIt) {
  test::TempDir dir;
  PersistConfig cfg(dir / "x.iqdb");
  cfg.wal_enabled = true;
  cfg.compression = Compression::zstd(3);
  cfg.limits.max_expansion_ratio = 64;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(128, DistanceMetric::Euclidean), cfg);
    const std::vector<float> zeros(128, 0.0f);
    WriteBatch b;
    for (std::uint64_t i = 0; i < 2000; ++i) b.insert(i, zeros);
    db.write(b);
    const FileHeader h = db.checkpoint();
    EXPECT_EQ(h.compression, CompressionScheme::None) << "stored compressed " << h.uncompressed_len << " -> "
                                                      << h.stored_len;
    db.close();
  }
  EXPECT_EQ(PersistedIndex<FlatIndex>::load(cfg).index().size(), 2000u);
  // Compressed where the ratio allows it.
  cfg.limits.max_expansion_ratio = 4096;
  {
    auto db = PersistedIndex<FlatIndex>::load(cfg);
    EXPECT_EQ(db.checkpoint().compression, CompressionScheme::Zstd);
  }
  EXPECT_EQ(PersistedIndex<FlatIndex>::load(cfg).index().size(), 2000u);
}

TEST(WriteLimits, APayloadOverTheLimitIsRefusedAndThePreviousSnapshotStays) {
  test::TempDir dir;
  PersistConfig cfg(dir / "x.iqdb");
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), cfg);
  db.insert(1, kV);
  (void)db.save();
  const std::uint64_t small = inspect_snapshot(default_file_system(), cfg.path).header.uncompressed_len;
  for (std::uint64_t i = 2; i < 100; ++i) db.insert(i, kV);
  PersistConfig tight = cfg;
  tight.limits.max_payload_bytes = small + 8;  // less than 99 vectors take
  auto again = PersistedIndex<FlatIndex>::open_with(FlatIndex(db.index()), tight);
  EXPECT_EQ(kind_of([&] { (void)again.save(); }), ErrorKind::InvalidArgument);
  EXPECT_EQ(PersistedIndex<FlatIndex>::load(cfg).index().size(), 1u);
}

TEST(WriteLimits, LimitsOfZeroAreRefused) {
  test::TempDir dir;
  PersistConfig cfg(dir / "x.iqdb");
  cfg.limits.max_expansion_ratio = 0;
  EXPECT_EQ(kind_of([&] { (void)PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), cfg); }),
            ErrorKind::InvalidArgument);
  cfg.limits.max_expansion_ratio = 1;
  cfg.limits.max_payload_bytes = 0;
  EXPECT_EQ(kind_of([&] { (void)PersistedIndex<FlatIndex>::load(cfg); }), ErrorKind::InvalidArgument);
  EXPECT_FALSE(default_file_system().exists(cfg.path));
}

// A snapshot at the highest LSN but one: one more write is logged, the
// next is refused before anything is logged, and the index loads.
TEST(WriteLimits, LsnsNeverWrap) {
  test::TempDir dir;
  PersistConfig cfg(dir / "x.iqdb");
  const SnapshotInfo info{FlatIndex::index_type, 2, DistanceMetric::Euclidean, 0, format::MAX_LSN - 1};
  (void)write_snapshot(default_file_system(), cfg.path, info, Compression::none(), true,
                       [](PayloadWriter& w) { FlatIndex(2, DistanceMetric::Euclidean).save_to(w); });
  cfg.wal_enabled = true;
  {
    auto db = PersistedIndex<FlatIndex>::load(cfg);
    db.insert(1, kV);
    EXPECT_EQ(db.last_lsn(), format::MAX_LSN);
    EXPECT_EQ(kind_of([&] { db.insert(2, kV); }), ErrorKind::InvalidArgument);
    EXPECT_EQ(kind_of([&] { db.write(WriteBatch{}.insert(3, kV).insert(4, kV)); }), ErrorKind::InvalidArgument);
    EXPECT_EQ(db.failure(), std::nullopt) << "a refused write is not a failure";
    db.close();
  }
  {
    auto db = PersistedIndex<FlatIndex>::load(cfg);
    EXPECT_EQ(db.index().size(), 1u);
    EXPECT_EQ(db.last_lsn(), format::MAX_LSN);
    (void)db.checkpoint();  // a snapshot at the highest LSN, and a log that can take nothing
    db.close();
  }
  EXPECT_EQ(inspect_snapshot(default_file_system(), cfg.path).header.last_lsn, format::MAX_LSN);
  {
    auto db = PersistedIndex<FlatIndex>::load(cfg);
    EXPECT_EQ(db.index().size(), 1u);
    EXPECT_EQ(kind_of([&] { db.insert(5, kV); }), ErrorKind::InvalidArgument);
  }
  // Saved without the WAL at the highest LSN, it opens with the WAL as it
  // was (no LSN is left to claim it again, and none to log).
  {
    PersistConfig plain(cfg.path);
    auto db = PersistedIndex<FlatIndex>::load(plain);
    const FileHeader h = db.save();
    EXPECT_EQ(h.last_lsn, format::MAX_LSN);
    EXPECT_NE(h.optional_flags & format::OPTIONAL_FLAG_SAVED_WITHOUT_WAL, 0u);
  }
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(db.index().size(), 1u);
  EXPECT_EQ(db.last_lsn(), format::MAX_LSN);
  EXPECT_EQ(kind_of([&] { db.insert(5, kV); }), ErrorKind::InvalidArgument);
  // A snapshot cannot claim more.
  const SnapshotInfo over{FlatIndex::index_type, 2, DistanceMetric::Euclidean, 0, format::MAX_LSN + 1};
  EXPECT_EQ(kind_of([&] {
              (void)write_snapshot(default_file_system(), dir / "y.iqdb", over, Compression::none(), true,
                                   [](PayloadWriter& w) { FlatIndex(2, DistanceMetric::Euclidean).save_to(w); });
            }),
            ErrorKind::InvalidArgument);
}

// Runs load(cfg) in another thread; a load still waiting after 10 s is
// released by opening the FIFO for writing, and fails the test.
void expect_refused_not_waited(const PersistConfig& cfg, const std::filesystem::path& fifo) {
  auto f = std::async(std::launch::async, [&] { return kind_of([&] { (void)PersistedIndex<FlatIndex>::load(cfg); }); });
  if (f.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
    ADD_FAILURE() << "load waited on the FIFO " << fifo;
    f.wait();
    if (fd >= 0) ::close(fd);
    return;
  }
  EXPECT_EQ(f.get(), ErrorKind::Io);
}

TEST(WriteLimits, AFifoIsRefusedNotWaitedFor) {
  test::TempDir dir;
  PersistConfig cfg(dir / "x.iqdb");
  ASSERT_EQ(::mkfifo(cfg.path.c_str(), 0600), 0);
  expect_refused_not_waited(cfg, cfg.path);
  ::unlink(cfg.path.c_str());
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), cfg);
    db.insert(1, kV);
    (void)db.save();
  }
  const std::filesystem::path log = wal::log_path_for(cfg.path);
  ASSERT_EQ(::mkfifo(log.c_str(), 0600), 0);
  expect_refused_not_waited(cfg, log);  // a load without the WAL reads the log too
}

}  // namespace
}  // namespace iqdb::persist
