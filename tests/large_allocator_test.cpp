// detail::LargeAllocator (include/iqdb/persist/detail/large_allocator.hpp):
// the memory of FlatIndex's large id arrays and id table. Checked against
// plain models: values written are read back across growth, large arrays
// start zeroed and 2 MiB-aligned, small ones come from the heap.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "iqdb/persist/detail/large_allocator.hpp"

namespace iqdb::persist::detail {
namespace {

constexpr std::size_t kHuge = std::size_t{2} << 20;
using U64s = std::vector<std::uint64_t, LargeAllocator<std::uint64_t>>;

TEST(LargeAllocator, LargeArraysAreZeroedAndAlignedForHugePages) {
  for (const std::size_t bytes : {kLargeFrom, kLargeFrom + 8, 3 * kHuge + 4096, 5 * kHuge - 8}) {
    const std::size_t n = bytes / sizeof(std::uint64_t);
    U64s v(n);  // value-initialised: zeros however the memory came
    if (array_is_mapped(bytes)) {
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(v.data()) % kHuge, 0u) << bytes;
    }
    std::uint64_t nonzero = 0;
    for (const std::uint64_t x : v) nonzero += x != 0;
    EXPECT_EQ(nonzero, 0u);
    for (std::size_t i = 0; i < n; ++i) v[i] = i * 7 + 3;  // every byte writable, to the last
    EXPECT_EQ(v.back(), (n - 1) * 7 + 3);
  }
  // Raw memory from a mapping is zero-filled by the kernel.
  if (array_is_mapped(kLargeFrom)) {
    auto* p = static_cast<const unsigned char*>(allocate_array(kLargeFrom));
    std::size_t nonzero = 0;
    for (std::size_t i = 0; i < kLargeFrom; i += 4093) nonzero += p[i] != 0;
    EXPECT_EQ(nonzero, 0u);
    free_array(const_cast<unsigned char*>(p), kLargeFrom);
  }
}

TEST(LargeAllocator, SmallArraysAreNotMapped) {
  EXPECT_FALSE(array_is_mapped(0));
  EXPECT_FALSE(array_is_mapped(kLargeFrom - 1));
  U64s v(16, 5);
  EXPECT_EQ(v[15], 5u);
}

// Growth by push_back from empty through the threshold to three times it
// (heap, then mappings of growing size, each freed as the next takes over),
// and shrinking back below it: every value as a plain vector holds it.
TEST(LargeAllocator, GrowthAcrossTheThresholdKeepsEveryValue) {
  U64s v;
  std::vector<std::uint64_t> model;
  const std::size_t n = 3 * kLargeFrom / sizeof(std::uint64_t) + 1001;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t x = i * 0x9e3779b97f4a7c15ULL;
    v.push_back(x);
    model.push_back(x);
  }
  ASSERT_EQ(v.size(), model.size());
  EXPECT_TRUE(std::equal(v.begin(), v.end(), model.begin()));
  v.resize(1000);
  v.shrink_to_fit();
  EXPECT_TRUE(std::equal(v.begin(), v.end(), model.begin()));
  U64s w = v;  // copy: same allocator
  w.swap(v);
  EXPECT_TRUE(std::equal(w.begin(), w.end(), model.begin()));
}

}  // namespace
}  // namespace iqdb::persist::detail
