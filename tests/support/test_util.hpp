// Helpers shared by the tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "iqdb/persist/error.hpp"

namespace iqdb::persist::test {

// A fresh directory under the system temp dir, removed when destroyed.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const noexcept { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }
  // Names of the entries in the directory, sorted.
  std::vector<std::string> entries() const;

 private:
  std::filesystem::path path_;
};

std::vector<std::byte> read_file(const std::filesystem::path& p);
void write_file(const std::filesystem::path& p, const std::vector<std::byte>& bytes);

// Whether `p` lies on tmpfs, whose pages never leave memory (page-cache
// checks skip there).
bool on_tmpfs(const std::filesystem::path& p);
// How many pages of the file's bytes [offset, offset + len) are in the page
// cache (mincore of a read-only mapping; offset a multiple of 4096). Throws
// std::runtime_error when the file cannot be opened or mapped.
std::size_t resident_pages(const std::filesystem::path& p, std::uint64_t offset, std::uint64_t len);

// The bytes of a file or a buffer.
using Buf = std::vector<std::byte>;

// Little-endian byte builder for crafting files byte by byte in tests.
class Bytes {
 public:
  Bytes& raw(const void* p, std::size_t n);
  Bytes& str(const std::string& s) { return raw(s.data(), s.size()); }
  Bytes& u8(std::uint8_t v) { return raw(&v, 1); }
  Bytes& u16(std::uint16_t v);
  Bytes& u32(std::uint32_t v);
  Bytes& u64(std::uint64_t v);
  Bytes& i64(std::int64_t v) { return u64(static_cast<std::uint64_t>(v)); }
  Bytes& f32(float v);
  Bytes& f64(double v);
  Bytes& append(const std::vector<std::byte>& b) { return raw(b.data(), b.size()); }
  std::vector<std::byte>& data() noexcept { return b_; }
  std::size_t size() const noexcept { return b_.size(); }

 private:
  std::vector<std::byte> b_;
};

// The little-endian u32 / u64 at byte `at` of `b` (which must hold it).
std::uint32_t get_u32(const std::vector<std::byte>& b, std::size_t at);
std::uint64_t get_u64(const std::vector<std::byte>& b, std::size_t at);

// The kind of the PersistError f() throws (nullopt if it returns).
template <class F>
std::optional<ErrorKind> error_of(F&& f) {
  try {
    f();
  } catch (const PersistError& e) {
    return e.kind();
  }
  return std::nullopt;
}

// Runs `child` in a forked process and returns its exit code (98 when it
// threw, 128 + the signal when a signal ended it). (support/forked_child.hpp:
// a child that also reports back through a pipe.)
int in_child(const std::function<int()>& child);

// The bytes of `s` read as the code points U+0000..U+00FF, in UTF-8: any
// generated string made valid metadata text (metadata is UTF-8).
std::string latin1_to_utf8(std::string_view s);

// Another process that holds something while the test goes on: a forked
// child runs setup(), keeps what it returns (a lock, say), tells the parent,
// and stays until finish(). The constructor returns once the child has run
// setup() (or failed to).
class HeldChild {
 public:
  explicit HeldChild(const std::function<std::shared_ptr<void>()>& setup);
  ~HeldChild();  // finish(), if not called yet
  HeldChild(const HeldChild&) = delete;
  HeldChild& operator=(const HeldChild&) = delete;
  // Lets the child exit; its exit code: 0, 98 when setup() threw, 1 when
  // the pipes failed, 128 + the signal when a signal ended it.
  int finish();

 private:
  int pid_ = -1;
  int go_[2] = {-1, -1};       // parent -> child: exit now
  int started_[2] = {-1, -1};  // child -> parent: setup ran
};

}  // namespace iqdb::persist::test
