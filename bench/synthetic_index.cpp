#include "synthetic_index.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

namespace iqdb::persist::bench {
namespace {

template <class T>
void put_le(unsigned char* p, T v) {
  std::memcpy(p, &v, sizeof v);  // little-endian hosts only (io.hpp asserts it)
}

}  // namespace

std::string_view to_string(Dataset d) noexcept {
  switch (d) {
    case Dataset::Gaussian: return "gaussian";
    case Dataset::Quantized: return "quantized-8bit";
  }
  return "?";
}

SyntheticFlatPayload::SyntheticFlatPayload(std::uint64_t n, std::uint64_t dim, Dataset dataset, std::uint64_t seed)
    : n_(n), dim_(dim), dataset_(dataset), rng_(seed) {
  // The flat payload, version 1: u32 version, u64 dim, u8 metric, u64 count,
  // u8 id encoding (0 = all u64), count x u64 id, u64 metadata record count,
  // count x dim x f32.
  put_le<std::uint32_t>(prefix_, 1);
  put_le<std::uint64_t>(prefix_ + 4, dim);
  prefix_[12] = static_cast<unsigned char>(DistanceMetric::Euclidean);
  put_le<std::uint64_t>(prefix_ + 13, n);
  prefix_[21] = 0;
  put_le<std::uint64_t>(middle_, 0);
  ids_begin_ = sizeof prefix_;
  middle_begin_ = ids_begin_ + n * 8;
  floats_begin_ = middle_begin_ + sizeof middle_;
  total_ = floats_begin_ + n * dim * 4;
}

std::uint32_t SyntheticFlatPayload::component_bits(std::uint64_t i) {
  if (i == cached_index_) return cached_bits_;
  float v = normal_(rng_);
  if (dataset_ == Dataset::Quantized) {
    const float k = std::clamp(std::nearbyint(v * 32.0f), -127.0f, 127.0f);
    v = k / 127.0f;
  }
  cached_index_ = i;
  cached_bits_ = std::bit_cast<std::uint32_t>(v);
  return cached_bits_;
}

std::size_t SyntheticFlatPayload::read_ids(std::byte* dst, std::size_t size) {
  const std::uint64_t off = pos_ - ids_begin_;
  std::uint64_t i = off / 8;
  const std::size_t within = static_cast<std::size_t>(off % 8);
  if (within == 0 && size >= 8) {
    const std::size_t count = static_cast<std::size_t>(std::min<std::uint64_t>(size / 8, n_ - i));
    for (std::size_t k = 0; k < count; ++k, ++i) std::memcpy(dst + 8 * k, &i, 8);
    return count * 8;
  }
  unsigned char bytes[8];
  put_le<std::uint64_t>(bytes, i);
  const std::size_t take = std::min<std::size_t>(size, 8 - within);
  std::memcpy(dst, bytes + within, take);
  return take;
}

std::size_t SyntheticFlatPayload::read_floats(std::byte* dst, std::size_t size) {
  const std::uint64_t off = pos_ - floats_begin_;
  const std::uint64_t i = off / 4;
  const std::size_t within = static_cast<std::size_t>(off % 4);
  if (within == 0 && size >= 4) {
    const std::size_t count = static_cast<std::size_t>(std::min<std::uint64_t>(size / 4, n_ * dim_ - i));
    for (std::size_t k = 0; k < count; ++k) {
      const std::uint32_t bits = component_bits(i + k);
      std::memcpy(dst + 4 * k, &bits, 4);
    }
    return count * 4;
  }
  unsigned char bytes[4];
  put_le<std::uint32_t>(bytes, component_bits(i));
  const std::size_t take = std::min<std::size_t>(size, 4 - within);
  std::memcpy(dst, bytes + within, take);
  return take;
}

void SyntheticFlatPayload::read(void* dst_void, std::size_t size) {
  if (size > remaining()) fail("synthetic payload read past its end");
  auto* dst = static_cast<std::byte*>(dst_void);
  while (size > 0) {
    std::size_t n;
    if (pos_ < ids_begin_) {
      n = std::min<std::size_t>(size, static_cast<std::size_t>(ids_begin_ - pos_));
      std::memcpy(dst, prefix_ + pos_, n);
    } else if (pos_ < middle_begin_) {
      n = read_ids(dst, std::min<std::size_t>(size, static_cast<std::size_t>(middle_begin_ - pos_)));
    } else if (pos_ < floats_begin_) {
      n = std::min<std::size_t>(size, static_cast<std::size_t>(floats_begin_ - pos_));
      std::memcpy(dst, middle_ + (pos_ - middle_begin_), n);
    } else {
      n = read_floats(dst, size);
    }
    pos_ += n;
    dst += n;
    size -= n;
  }
}

FlatIndex make_index(std::uint64_t n, std::uint64_t dim, Dataset dataset, std::uint64_t seed) {
  SyntheticFlatPayload payload(n, dim, dataset, seed);
  FlatIndex index = FlatIndex::load_from(payload);
  if (payload.remaining() != 0 || index.size() != n) payload.fail("synthetic payload not fully consumed");
  return index;
}

}  // namespace iqdb::persist::bench
