// The log bytes of docs/FORMAT.md's worked example, checked byte for byte
// (CRCs by zlib, not by the code under test).
#include <gtest/gtest.h>
#include <zlib.h>

#include <iqdb/persist.hpp>

#include "support/test_util.hpp"

namespace iqdb::persist {
namespace {

std::uint32_t zcrc(const std::vector<std::byte>& b) {
  return static_cast<std::uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(b.data()), static_cast<uInt>(b.size())));
}

TEST(WalFormat, WorkedExampleBytes) {
  test::TempDir dir;
  PersistConfig cfg(dir / "db.iqdb");
  cfg.wal_enabled = true;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(2, DistanceMetric::Euclidean), cfg);
    db.insert(7, std::vector<float>{1.0f, 2.0f});
    db.erase(7);
  }
  const std::vector<std::byte> log = test::read_file(wal::log_path_for(cfg.path));
  ASSERT_GE(log.size(), 129u);
  std::uint64_t salt = 0;
  std::memcpy(&salt, log.data() + 16, 8);

  test::Bytes header;
  header.str(std::string("IQDBWAL\0", 8)).u32(2).u32(40).u64(salt).u64(1).u32(0);
  header.u32(zcrc(header.data()));

  const auto frame = [&](test::Bytes body) {
    test::Bytes crc_input;
    crc_input.u64(salt).u32(static_cast<std::uint32_t>(body.size())).append(body.data());
    test::Bytes f;
    f.u32(static_cast<std::uint32_t>(body.size())).u32(zcrc(crc_input.data())).append(body.data());
    return f.data();
  };
  test::Bytes insert_body;
  insert_body.u64(1).u32(1).u64(0).u8(1).u8(0).u64(7).u32(2).f32(1.0f).f32(2.0f).u8(0);
  test::Bytes erase_body;
  erase_body.u64(2).u32(1).u64(1).u8(2).u8(0).u64(7);

  test::Bytes expected;
  expected.append(header.data()).append(frame(insert_body)).append(frame(erase_body));
  ASSERT_EQ(expected.size(), 129u);
  EXPECT_TRUE(std::equal(expected.data().begin(), expected.data().end(), log.begin()));
  // Zero padding follows (Always preallocates).
  EXPECT_TRUE(std::all_of(log.begin() + 129, log.end(), [](std::byte b) { return b == std::byte{0}; }));
}

}  // namespace
}  // namespace iqdb::persist
