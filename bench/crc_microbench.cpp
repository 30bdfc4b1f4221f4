// Google Benchmark micro benchmarks: CRC-32 (iqdb / ISA-L, zlib) and memcpy
// over a range of buffer sizes. The headline CRC-vs-memcpy comparison is in
// iqdb_persist_bench; this one shows how the ratio depends on the size.
//
//   iqdb_persist_microbench --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>
#include <zlib.h>

#include <cstring>
#include <random>
#include <vector>

#include "iqdb/persist/checksum.hpp"

namespace {

std::vector<unsigned char> random_bytes(std::size_t n) {
  std::vector<unsigned char> v(n);
  std::mt19937_64 rng(7);
  for (auto& b : v) b = static_cast<unsigned char>(rng());
  return v;
}

void BM_Memcpy(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto src = random_bytes(n);
  std::vector<unsigned char> dst(n, 1);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), n);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * state.range(0));
}

void BM_Crc32Iqdb(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto src = random_bytes(n);
  for (auto _ : state) benchmark::DoNotOptimize(iqdb::persist::checksum::compute(src.data(), n));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * state.range(0));
}

void BM_Crc32Zlib(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto src = random_bytes(n);
  for (auto _ : state) benchmark::DoNotOptimize(crc32_z(0, src.data(), n));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * state.range(0));
}

// 4 KiB (one page) .. 2 MiB (the snapshot I/O chunk) .. 256 MiB (the size).
#define IQDB_SIZES ->Arg(4 << 10)->Arg(64 << 10)->Arg(2 << 20)->Arg(32 << 20)->Arg(256 << 20)->UseRealTime()
BENCHMARK(BM_Memcpy) IQDB_SIZES;
BENCHMARK(BM_Crc32Iqdb) IQDB_SIZES;
BENCHMARK(BM_Crc32Zlib) IQDB_SIZES;

}  // namespace

BENCHMARK_MAIN();
