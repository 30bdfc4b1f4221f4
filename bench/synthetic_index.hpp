// Synthetic FlatIndex contents for the benchmarks.
//
// The index is built by FlatIndex::load_from over a PayloadReader that
// generates the flat payload on the fly (ids 0..n-1, no metadata, one vector
// per row), so building a 1M x 128 index needs no second copy of the vectors
// and does not go through insert() one vector at a time.
#pragma once

#include <cstdint>
#include <random>
#include <string_view>

#include "iqdb/persist/flat_index.hpp"
#include "iqdb/persist/io.hpp"

namespace iqdb::persist::bench {

enum class Dataset {
  // Independent N(0, 1) components.
  Gaussian,
  // 8-bit quantized: k / 127 with k = clamp(round(32 * N(0, 1)), -127, 127),
  // i.e. 255 distinct float values, most of the range in use.
  Quantized,
};

std::string_view to_string(Dataset d) noexcept;

// The flat payload (version 1, all-u64 ids) of n synthetic vectors, produced
// as it is read. Reads must be sequential, which is what load_from does.
class SyntheticFlatPayload final : public PayloadReader {
 public:
  SyntheticFlatPayload(std::uint64_t n, std::uint64_t dim, Dataset dataset, std::uint64_t seed);

  void read(void* dst, std::size_t size) override;
  std::uint64_t remaining() const noexcept override { return total_ - pos_; }

 private:
  // The bits of vector component `i` (components are generated in order).
  std::uint32_t component_bits(std::uint64_t i);
  // Copies up to `size` bytes of the segment holding pos_; returns the count.
  std::size_t read_ids(std::byte* dst, std::size_t size);
  std::size_t read_floats(std::byte* dst, std::size_t size);

  std::uint64_t n_;
  std::uint64_t dim_;
  Dataset dataset_;
  std::mt19937_64 rng_;
  std::normal_distribution<float> normal_{0.0f, 1.0f};

  unsigned char prefix_[22];  // version u32, dim u64, metric u8, n u64, id encoding u8
  unsigned char middle_[8];   // metadata record count u64 (0)
  std::uint64_t ids_begin_, middle_begin_, floats_begin_, total_;
  std::uint64_t pos_ = 0;
  // A float component split across two reads.
  std::uint64_t cached_index_ = ~std::uint64_t{0};
  std::uint32_t cached_bits_ = 0;
};

// Build an index of n synthetic vectors (Euclidean metric).
FlatIndex make_index(std::uint64_t n, std::uint64_t dim, Dataset dataset, std::uint64_t seed);

}  // namespace iqdb::persist::bench
