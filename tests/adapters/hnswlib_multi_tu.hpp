// What the two translation units of hnswlib_multi_tu_test share: functions
// of hnswlib_multi_tu_other.cpp, called from hnswlib_multi_tu_test.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <iqdb/persist/adapters/hnswlib.hpp>
#include <vector>

namespace iqdb::persist::test {

constexpr std::size_t kMultiTuDim = 8;

// Vector i of the test's data (a fixed seed per i).
std::vector<float> multi_tu_vector(std::uint64_t i);
// An L2 graph of vectors 0..n-1, each with metadata {"i": i}.
HnswlibIndex multi_tu_index(std::uint64_t n);
// Load the snapshot `file` and search it.
std::vector<HnswlibIndex::Hit> multi_tu_load_and_search(const std::filesystem::path& file,
                                                        const std::vector<float>& query, std::size_t k);

}  // namespace iqdb::persist::test
