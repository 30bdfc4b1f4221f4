// checksum::compute / extend / combine / verify / Crc32 against zlib's crc32, the
// reference CRC-32/ISO-HDLC implementation.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <string_view>
#include <vector>

#include "iqdb/persist/checksum.hpp"

namespace iqdb::persist {
namespace {

// The independent model: zlib.
std::uint32_t zlib_crc(const std::byte* data, std::size_t size) {
  return static_cast<std::uint32_t>(crc32_z(0, reinterpret_cast<const Bytef*>(data), size));
}

std::vector<std::byte> random_bytes(std::mt19937_64& rng, std::size_t n) {
  std::vector<std::byte> out(n);
  for (auto& b : out) b = static_cast<std::byte>(rng() & 0xff);
  return out;
}

TEST(Checksum, KnownVector) {
  constexpr std::string_view kCheck = "123456789";
  EXPECT_EQ(checksum::compute(kCheck.data(), kCheck.size()), 0xCBF43926u);
  EXPECT_EQ(checksum::compute(std::as_bytes(std::span(kCheck.data(), kCheck.size()))), 0xCBF43926u);
}

TEST(Checksum, EmptyInputIsZero) {
  EXPECT_EQ(checksum::compute(nullptr, 0), zlib_crc(nullptr, 0));
  EXPECT_EQ(checksum::compute(std::span<const std::byte>()), 0u);
  EXPECT_EQ(checksum::extend(0x12345678u, nullptr, 0), 0x12345678u);
}

TEST(Checksum, MatchesZlibForEveryLengthUpTo4096) {
  std::mt19937_64 rng(0xC0FFEE);
  const std::vector<std::byte> buf = random_bytes(rng, 4096);
  for (std::size_t len = 0; len <= buf.size(); ++len) {
    // A fresh random window each time so different lengths see different bytes.
    const std::size_t start = len == buf.size() ? 0 : static_cast<std::size_t>(rng() % (buf.size() - len + 1));
    const std::byte* p = buf.data() + start;
    ASSERT_EQ(checksum::compute(p, len), zlib_crc(p, len)) << "length " << len << " start " << start;
    ASSERT_EQ(checksum::compute(std::span<const std::byte>(p, len)), zlib_crc(p, len)) << "length " << len;
  }
}

TEST(Checksum, MatchesZlibForSpecialPatterns) {
  for (const int fill : {0x00, 0xff, 0x80, 0x01}) {
    for (const std::size_t len : {1u, 15u, 16u, 63u, 64u, 65u, 255u, 256u, 1000u, 65536u, 100003u}) {
      const std::vector<std::byte> buf(len, static_cast<std::byte>(fill));
      EXPECT_EQ(checksum::compute(buf.data(), len), zlib_crc(buf.data(), len)) << "fill " << fill << " len " << len;
    }
  }
}

TEST(Checksum, MatchesZlibOnUnalignedBuffers) {
  std::mt19937_64 rng(7);
  const std::vector<std::byte> buf = random_bytes(rng, 8192 + 16);
  for (std::size_t offset = 1; offset <= 15; ++offset) {
    for (const std::size_t len : {0u, 1u, 3u, 7u, 8u, 15u, 16u, 17u, 31u, 32u, 33u, 63u, 64u, 65u, 127u, 128u, 129u,
                                  255u, 256u, 257u, 511u, 1024u, 4095u, 4096u, 4097u, 8192u}) {
      const std::byte* p = buf.data() + offset;
      ASSERT_EQ(checksum::compute(p, len), zlib_crc(p, len)) << "offset " << offset << " len " << len;
    }
  }
}

TEST(Checksum, ExtendEqualsOneShotAtEverySplit) {
  std::mt19937_64 rng(11);
  const std::vector<std::byte> buf = random_bytes(rng, 777);
  const std::uint32_t whole = zlib_crc(buf.data(), buf.size());
  for (std::size_t cut = 0; cut <= buf.size(); ++cut) {
    const std::uint32_t head = checksum::compute(buf.data(), cut);
    ASSERT_EQ(checksum::extend(head, buf.data() + cut, buf.size() - cut), whole) << "cut " << cut;
  }
}

TEST(Checksum, ExtendContinuesAnArbitraryZlibCrc) {
  std::mt19937_64 rng(13);
  for (int round = 0; round < 200; ++round) {
    const std::vector<std::byte> a = random_bytes(rng, rng() % 3000);
    const std::vector<std::byte> b = random_bytes(rng, rng() % 3000);
    const std::uint32_t za = zlib_crc(a.data(), a.size());
    const auto zab = static_cast<std::uint32_t>(crc32_z(za, reinterpret_cast<const Bytef*>(b.data()), b.size()));
    ASSERT_EQ(checksum::extend(za, b.data(), b.size()), zab) << "round " << round;
  }
}

TEST(Checksum, Crc32RandomSplitsEqualOneShot) {
  std::mt19937_64 rng(17);
  for (int round = 0; round < 300; ++round) {
    const std::vector<std::byte> buf = random_bytes(rng, rng() % 20000);
    checksum::Crc32 crc;
    std::size_t pos = 0;
    bool use_span = false;
    while (pos < buf.size()) {
      // Mostly short pieces (tail handling), sometimes long ones (the folding path).
      const std::size_t max_piece = rng() % 4 == 0 ? 5000 : 40;
      const std::size_t n = std::min<std::size_t>(buf.size() - pos, rng() % (max_piece + 1));
      if (use_span) {
        crc.update(std::span<const std::byte>(buf.data() + pos, n));
      } else {
        crc.update(buf.data() + pos, n);
      }
      use_span = !use_span;
      pos += n;
    }
    ASSERT_EQ(crc.value(), zlib_crc(buf.data(), buf.size())) << "round " << round << " size " << buf.size();
  }
}

// combine(crc(a), crc(b), |b|) == crc(a ++ b), the model being zlib's CRC of
// the joined bytes; also the known vector, lengths 0, pieces of several MiB
// (lengths past 32 bits' worth of bits), and Crc32::append_crc mixed with
// update() in random pieces.
TEST(Checksum, CombineEqualsTheCrcOfTheJoinedBytes) {
  const std::uint32_t known = checksum::combine(zlib_crc(reinterpret_cast<const std::byte*>("1234"), 4),
                                                zlib_crc(reinterpret_cast<const std::byte*>("56789"), 5), 5);
  EXPECT_EQ(known, 0xCBF43926u);
  std::mt19937_64 rng(29);
  for (int round = 0; round < 200; ++round) {
    const std::vector<std::byte> a = random_bytes(rng, rng() % 3000);
    const std::vector<std::byte> b = random_bytes(rng, round % 50 == 0 ? (std::size_t{5} << 20) + rng() % 99 : rng() % 3000);
    std::vector<std::byte> ab(a);
    ab.insert(ab.end(), b.begin(), b.end());
    ASSERT_EQ(checksum::combine(zlib_crc(a.data(), a.size()), zlib_crc(b.data(), b.size()), b.size()),
              zlib_crc(ab.data(), ab.size()))
        << "round " << round << " sizes " << a.size() << " + " << b.size();
  }
  EXPECT_EQ(checksum::combine(0x12345678u, 0, 0), 0x12345678u);  // nothing appended

  const std::vector<std::byte> buf = random_bytes(rng, 300000);
  checksum::Crc32 crc;
  std::size_t pos = 0;
  for (bool joined = false; pos < buf.size(); joined = !joined) {
    const std::size_t n = std::min<std::size_t>(buf.size() - pos, rng() % 40000);
    if (joined) {
      crc.append_crc(zlib_crc(buf.data() + pos, n), n);
    } else {
      crc.update(buf.data() + pos, n);
    }
    pos += n;
  }
  EXPECT_EQ(crc.value(), zlib_crc(buf.data(), buf.size()));
}

TEST(Checksum, Crc32ResetStartsOver) {
  checksum::Crc32 crc;
  EXPECT_EQ(crc.value(), 0u);
  crc.update("garbage", 7);
  crc.reset();
  EXPECT_EQ(crc.value(), 0u);
  crc.update("1234", 4);
  crc.update("56789", 5);
  EXPECT_EQ(crc.value(), 0xCBF43926u);
}

TEST(Checksum, Verify) {
  std::mt19937_64 rng(19);
  const std::vector<std::byte> buf = random_bytes(rng, 1234);
  const std::uint32_t good = zlib_crc(buf.data(), buf.size());
  EXPECT_TRUE(checksum::verify(buf, good));
  EXPECT_FALSE(checksum::verify(buf, good ^ 1u));
  EXPECT_FALSE(checksum::verify(buf, good ^ 0x80000000u));
  EXPECT_TRUE(checksum::verify(std::span<const std::byte>(), 0u));
  EXPECT_FALSE(checksum::verify(std::span<const std::byte>(), 1u));
  // Any single flipped bit in the data is detected.
  std::vector<std::byte> damaged = buf;
  for (std::size_t i = 0; i < damaged.size(); i += 37) {
    damaged[i] ^= std::byte{0x10};
    EXPECT_FALSE(checksum::verify(damaged, good)) << "byte " << i;
    damaged[i] ^= std::byte{0x10};
  }
  EXPECT_TRUE(checksum::verify(damaged, good));
}

}  // namespace
}  // namespace iqdb::persist
