#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support/test_util.hpp"

#include "support/forked_child.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <fstream>
#include <random>
#include <stdexcept>

namespace iqdb::persist::test {

TempDir::TempDir() {
  std::random_device rd;
  const auto base = std::filesystem::temp_directory_path();
  for (int attempt = 0; attempt < 100; ++attempt) {
    auto p = base / ("iqdb-test-" + std::to_string(rd()) + std::to_string(rd()));
    if (std::filesystem::create_directory(p)) {
      path_ = p;
      return;
    }
  }
  throw std::runtime_error("cannot create a temporary directory");
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::vector<std::string> TempDir::entries() const {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(path_)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::byte> read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + p.string());
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(c.size());
  if (!c.empty()) std::memcpy(out.data(), c.data(), c.size());
  return out;
}

bool on_tmpfs(const std::filesystem::path& p) {
  struct statfs sf {};
  if (::statfs(p.c_str(), &sf) != 0) throw std::runtime_error("cannot statfs " + p.string());
  return sf.f_type == TMPFS_MAGIC;
}

std::size_t resident_pages(const std::filesystem::path& p, std::uint64_t offset, std::uint64_t len) {
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open " + p.string());
  void* m = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(offset));
  ::close(fd);
  if (m == MAP_FAILED) throw std::runtime_error("cannot map " + p.string());
  std::vector<unsigned char> res((len + 4095) / 4096);
  const int r = ::mincore(m, len, res.data());
  ::munmap(m, len);
  if (r != 0) throw std::runtime_error("mincore failed on " + p.string());
  std::size_t n = 0;
  for (const unsigned char c : res) n += c & 1;
  return n;
}

void write_file(const std::filesystem::path& p, const std::vector<std::byte>& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + p.string());
}

Bytes& Bytes::raw(const void* p, std::size_t n) {
  const auto* c = static_cast<const std::byte*>(p);
  b_.insert(b_.end(), c, c + n);
  return *this;
}

template <class T>
static void put_le(std::vector<std::byte>& b, T v) {
  for (std::size_t i = 0; i < sizeof(T); ++i) b.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xff));
}

Bytes& Bytes::u16(std::uint16_t v) { put_le(b_, v); return *this; }
Bytes& Bytes::u32(std::uint32_t v) { put_le(b_, v); return *this; }
Bytes& Bytes::u64(std::uint64_t v) { put_le(b_, v); return *this; }
Bytes& Bytes::f32(float v) { return u32(std::bit_cast<std::uint32_t>(v)); }
Bytes& Bytes::f64(double v) { return u64(std::bit_cast<std::uint64_t>(v)); }

template <class T>
static T get_le(const std::vector<std::byte>& b, std::size_t at) {
  T v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(std::to_integer<T>(b.at(at + i)) << (8 * i));
  return v;
}

std::uint32_t get_u32(const std::vector<std::byte>& b, std::size_t at) { return get_le<std::uint32_t>(b, at); }
std::uint64_t get_u64(const std::vector<std::byte>& b, std::size_t at) { return get_le<std::uint64_t>(b, at); }

HeldChild::HeldChild(const std::function<std::shared_ptr<void>()>& setup) {
  if (::pipe(go_) != 0 || ::pipe(started_) != 0) throw std::runtime_error("pipe failed");
  pid_ = ::fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    int code = 0;
    std::shared_ptr<void> held;
    try {
      held = setup();
    } catch (...) {
      code = 98;
    }
    char c = 's';
    if (::write(started_[1], &c, 1) != 1) code = 1;
    if (code == 0 && ::read(go_[0], &c, 1) != 1) code = 1;  // hold until told
    ::_exit(code);
  }
  char c = 0;
  if (::read(started_[0], &c, 1) != 1) throw std::runtime_error("the held child never started");
}

HeldChild::~HeldChild() {
  if (pid_ > 0) (void)finish();
}

int HeldChild::finish() {
  (void)::write(go_[1], "x", 1);
  int status = 0;
  const bool reaped = ::waitpid(pid_, &status, 0) == pid_;
  pid_ = -1;
  for (const int fd : {go_[0], go_[1], started_[0], started_[1]}) ::close(fd);
  if (!reaped) throw std::runtime_error("waitpid failed");
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int in_child(const std::function<int()>& child) {
  const ChildResult r = run_in_child([&](int) {
    try {
      return child();
    } catch (...) {
      return 98;
    }
  });
  return WIFEXITED(r.status) ? WEXITSTATUS(r.status) : 128 + WTERMSIG(r.status);
}

std::string latin1_to_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x80) {
      out += ch;
    } else {
      out += static_cast<char>(0xC0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  return out;
}

}  // namespace iqdb::persist::test
