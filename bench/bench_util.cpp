#include "bench_util.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

namespace iqdb::persist::bench {

namespace {
const char* g_program = "bench";
std::size_t g_warm_bytes = 0;
}  // namespace

void set_program_name(const char* name) { g_program = name; }

void die(const std::string& what) {
  std::fprintf(stderr, "%s: %s\n", g_program, what.c_str());
  std::exit(2);
}
void die_errno(const std::string& what) { die(what + ": " + std::strerror(errno)); }

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : (v[m - 1] + v[m]) / 2;
}

void remove_if_exists(const std::filesystem::path& p) {
  std::error_code ec;
  std::filesystem::remove(p, ec);
}

void remove_and_settle(const std::filesystem::path& p) {
  remove_if_exists(p);
  ::sync();
}

double time_write_fsync(const std::filesystem::path& p, const void* data, std::size_t n) {
  const auto* bytes = static_cast<const char*>(data);
  return seconds([&] {
    const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) die_errno("open " + p.string());
    std::size_t done = 0;
    while (done < n) {
      const ssize_t w = ::write(fd, bytes + done, n - done);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) die_errno("write " + p.string());
      done += static_cast<std::size_t>(w);
    }
    if (::fsync(fd) != 0) die_errno("fsync " + p.string());
    if (::close(fd) != 0) die_errno("close " + p.string());
  });
}

double time_read_fresh(const std::filesystem::path& p) {
  void* buf = nullptr;
  const double t = seconds([&] {
    const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) die_errno("open " + p.string());
    struct stat st {};
    if (::fstat(fd, &st) != 0) die_errno("fstat");
    const auto n = static_cast<std::size_t>(st.st_size);
    buf = std::malloc(n);
    if (buf == nullptr) die("malloc failed");
    std::size_t done = 0;
    while (done < n) {
      const ssize_t r = ::read(fd, static_cast<char*>(buf) + done, n - done);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) die_errno("read " + p.string());
      done += static_cast<std::size_t>(r);
    }
    ::close(fd);
  });
  std::free(buf);
  return t;
}

void set_warm_bytes(std::size_t n) { g_warm_bytes = n; }
std::size_t warm_bytes() { return g_warm_bytes; }

void prepare_memory() {
  if (g_warm_bytes == 0) return;
  void* p = ::mmap(nullptr, g_warm_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die_errno("mmap");
  (void)::madvise(p, g_warm_bytes, MADV_HUGEPAGE);
  std::memset(p, 0, g_warm_bytes);
  ::munmap(p, g_warm_bytes);
}

std::uint64_t status_kib(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::size_t len = std::strlen(field);
  while (std::getline(in, line)) {
    if (line.compare(0, len, field) == 0 && line.size() > len && line[len] == ':') {
      return std::stoull(line.substr(len + 1));
    }
  }
  return 0;
}

bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

}  // namespace iqdb::persist::bench
