// Little-endian fixed-width encoding helpers (internal).
//
// Contract: fixed-width integers are little-endian; decoders never read past
// the end of their input (callers check lengths first, or use ByteCursor,
// which reports failure instead).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace iqdb::persist::coding {

template <class T>
inline void put(std::vector<std::byte>& out, T v) {
  const auto* p = reinterpret_cast<const std::byte*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}
inline void put_bytes(std::vector<std::byte>& out, const void* data, std::size_t n) {
  const auto* p = static_cast<const std::byte*>(data);
  out.insert(out.end(), p, p + n);
}
template <class T>
inline T get(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <class T>
inline void store(std::byte* p, T v) noexcept {
  std::memcpy(p, &v, sizeof(T));
}

// A read cursor over a byte span: every read is bounds-checked and returns
// false (leaving the output untouched) when the input is too short.
class ByteCursor {
 public:
  explicit ByteCursor(std::span<const std::byte> data) noexcept : data_(data) {}
  std::size_t position() const noexcept { return pos_; }
  std::size_t remaining() const noexcept { return data_.size() - pos_; }

  template <class T>
  bool read(T& out) noexcept {
    if (remaining() < sizeof(T)) return false;
    out = get<T>(data_.data() + pos_);
    pos_ += sizeof(T);
    return true;
  }
  bool read_bytes(std::size_t n, std::span<const std::byte>& out) noexcept {
    if (remaining() < n) return false;
    out = data_.subspan(pos_, n);
    pos_ += n;
    return true;
  }
  bool skip(std::size_t n) noexcept {
    if (remaining() < n) return false;
    pos_ += n;
    return true;
  }

 private:
  std::span<const std::byte> data_;
  std::size_t pos_ = 0;
};

// Strict UTF-8 check: no overlong forms, no surrogates, nothing above U+10FFFF.
bool is_valid_utf8(std::string_view s) noexcept;

}  // namespace iqdb::persist::coding
