// coding::is_valid_utf8 (keys and strings of metadata, read from snapshots
// and log records) against a model written from RFC 3629's grammar (section
// 4), byte ranges and not code-point arithmetic: exhaustively for every
// sequence of up to 3 bytes and every 4-byte lead with its boundaries, at
// every offset of the 8-byte ASCII fast path, and on random strings.
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "util/coding.hpp"

namespace iqdb::persist {
namespace {

// RFC 3629:
//   UTF8-1 = %x00-7F
//   UTF8-2 = %xC2-DF UTF8-tail
//   UTF8-3 = %xE0 %xA0-BF UTF8-tail / %xE1-EC 2( UTF8-tail ) /
//            %xED %x80-9F UTF8-tail / %xEE-EF 2( UTF8-tail )
//   UTF8-4 = %xF0 %x90-BF 2( UTF8-tail ) / %xF1-F3 3( UTF8-tail ) /
//            %xF4 %x80-8F 2( UTF8-tail )
//   UTF8-tail = %x80-BF
bool model(const std::string& s) {
  const auto in = [](unsigned char c, unsigned lo, unsigned hi) { return c >= lo && c <= hi; };
  std::size_t i = 0;
  const std::size_t n = s.size();
  const auto at = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const auto tails = [&](std::size_t from, std::size_t count) {
    if (from + count > n) return false;
    for (std::size_t k = from; k < from + count; ++k) {
      if (!in(at(k), 0x80, 0xBF)) return false;
    }
    return true;
  };
  while (i < n) {
    const unsigned char c = at(i);
    if (c <= 0x7F) {
      i += 1;
    } else if (in(c, 0xC2, 0xDF)) {
      if (!tails(i + 1, 1)) return false;
      i += 2;
    } else if (c == 0xE0 || c == 0xED || in(c, 0xE1, 0xEC) || in(c, 0xEE, 0xEF)) {
      if (i + 1 >= n) return false;
      const unsigned char d = at(i + 1);
      if (c == 0xE0 && !in(d, 0xA0, 0xBF)) return false;
      if (c == 0xED && !in(d, 0x80, 0x9F)) return false;
      if (c != 0xE0 && c != 0xED && !in(d, 0x80, 0xBF)) return false;
      if (!tails(i + 2, 1)) return false;
      i += 3;
    } else if (in(c, 0xF0, 0xF4)) {
      if (i + 1 >= n) return false;
      const unsigned char d = at(i + 1);
      if (c == 0xF0 && !in(d, 0x90, 0xBF)) return false;
      if (c == 0xF4 && !in(d, 0x80, 0x8F)) return false;
      if (in(c, 0xF1, 0xF3) && !in(d, 0x80, 0xBF)) return false;
      if (!tails(i + 2, 2)) return false;
      i += 4;
    } else {
      return false;
    }
  }
  return true;
}

// `seq` placed after `offset` ASCII bytes and followed by `after` of them:
// every position relative to the 8-byte blocks of the fast path.
void expect_agrees(const std::string& seq) {
  for (std::size_t offset = 0; offset < 10; ++offset) {
    for (std::size_t after : {std::size_t{0}, std::size_t{1}, std::size_t{9}}) {
      const std::string s = std::string(offset, 'a') + seq + std::string(after, 'z');
      ASSERT_EQ(coding::is_valid_utf8(s), model(s)) << "sequence of " << seq.size() << " bytes, first "
                                                    << static_cast<int>(static_cast<unsigned char>(seq[0]))
                                                    << ", after " << offset << " ASCII bytes";
    }
  }
}

TEST(Utf8, EverySequenceOfUpToTwoBytesAtEveryOffset) {
  for (unsigned a = 0; a < 256; ++a) {
    expect_agrees(std::string(1, static_cast<char>(a)));
    for (unsigned b = 0; b < 256; ++b) expect_agrees({static_cast<char>(a), static_cast<char>(b)});
  }
}

TEST(Utf8, EveryThreeByteSequence) {
  std::uint64_t valid = 0;
  for (unsigned a = 0x80; a < 256; ++a) {
    for (unsigned b = 0; b < 256; ++b) {
      for (unsigned c = 0; c < 256; ++c) {
        const std::string s{static_cast<char>(a), static_cast<char>(b), static_cast<char>(c)};
        ASSERT_EQ(coding::is_valid_utf8(s), model(s)) << a << " " << b << " " << c;
        valid += model(s) ? 1 : 0;
      }
    }
  }
  // The 3-byte forms: U+0800..U+FFFF without the 2,048 surrogates (61,440),
  // plus 2-byte forms followed by one ASCII byte (1,920 x 128).
  EXPECT_EQ(valid, 61'440u + 1'920u * 128u);
}

TEST(Utf8, FourByteBoundariesAtEveryOffset) {
  const std::vector<std::string> cases = {
      "\xF0\x90\x80\x80",  // U+10000, the first
      "\xF4\x8F\xBF\xBF",  // U+10FFFF, the last
      "\xF0\x8F\xBF\xBF",  // overlong U+FFFF
      "\xF4\x90\x80\x80",  // U+110000
      "\xF5\x80\x80\x80", "\xF8\x88\x80\x80\x80", "\xF0\x9F\x98\x80", "\xF0\x9F\x98", "\xF3\xBF\xBF\xBF",
      "\xED\x9F\xBF",  // U+D7FF, before the surrogates
      "\xED\xA0\x80",  // U+D800
      "\xEE\x80\x80",  // U+E000, after them
      "\xC0\x80", "\xC1\xBF", "\xC2\x80", "\xE0\x9F\xBF", "\xE0\xA0\x80",
  };
  for (const std::string& c : cases) expect_agrees(c);
}

RC_GTEST_PROP(Utf8, AgreesWithTheGrammarOnRandomStrings, ()) {
  // Mostly ASCII with lead and tail bytes mixed in, as text and damage mix.
  const auto bytes = *rc::gen::container<std::vector<std::uint8_t>>(rc::gen::oneOf(
      rc::gen::inRange<std::uint8_t>(0x20, 0x7F), rc::gen::inRange<std::uint8_t>(0x80, 0xC0),
      rc::gen::inRange<std::uint8_t>(0xC0, 0xFF), rc::gen::arbitrary<std::uint8_t>()));
  const std::string s(bytes.begin(), bytes.end());
  RC_ASSERT(coding::is_valid_utf8(s) == model(s));
}

}  // namespace
}  // namespace iqdb::persist
