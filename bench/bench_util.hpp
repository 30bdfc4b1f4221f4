// The timing harness shared by the benchmarks (persist_bench.cpp,
// adapter_bench.cpp): errors, timing and medians, the raw write / read
// limits, settling the file system, warming memory, and RSS readings.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace iqdb::persist::bench {

// The prefix of die()'s messages ("<program>: ..."); set once in main().
void set_program_name(const char* name);

// Print "<program>: what" on stderr and exit with status 2.
[[noreturn]] void die(const std::string& what);
// The same, with ": strerror(errno)" appended.
[[noreturn]] void die_errno(const std::string& what);

// Wall-clock seconds f() takes (steady clock).
template <class F>
double seconds(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  const auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double>(t1 - t0).count();
}

// The median (the mean of the middle two for an even count); 0 when empty.
double median(std::vector<double> v);

void remove_if_exists(const std::filesystem::path& p);
// Remove and let the file system settle (freed extents, journal) outside
// the timed region.
void remove_and_settle(const std::filesystem::path& p);

// open(O_CREAT|O_EXCL) + write() of all bytes + fsync() + close() to a fresh
// file: the limit for a durable save.
double time_write_fsync(const std::filesystem::path& p, const void* data, std::size_t n);
// open + malloc (not pre-touched) + read() of the whole file + close: the
// limit for a load. The buffer is freed outside the timed region.
double time_read_fresh(const std::filesystem::path& p);

// Memory state before each timed operation (both sides of every pair).
// In a VM with free page reporting (virtio-balloon; this machine), free
// memory that stayed free for a couple of seconds is handed back to the host
// and costs a host fault per page when next touched, which makes first-touch
// costs swing by 10x between runs. Touching and freeing warm_bytes(),
// advised for huge pages, right before each timed operation gives both sides
// host-backed free memory, as on bare metal. 0 (the default) disables it
// (--cold-memory).
void set_warm_bytes(std::size_t n);
std::size_t warm_bytes();
void prepare_memory();

// /proc/self/status field in KiB (VmRSS, VmHWM); 0 if absent.
std::uint64_t status_kib(const char* field);
// Resets VmHWM (and the peak the parent later sees) to the current RSS.
bool reset_peak_rss();

}  // namespace iqdb::persist::bench
