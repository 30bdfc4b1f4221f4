// Payload streams: what an index's save_to / load_from see.
//
// An index writes its own payload to a PayloadWriter and reads it back from a
// PayloadReader. Framing (header, checksum, compression, the atomic file
// replace) belongs to the library. Encoding contract: fixed-width integers are
// little-endian; floats are IEEE-754 bit patterns, little-endian; sizes are
// u64, never the host's word size.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "iqdb/persist/error.hpp"
#include "iqdb/persist/types.hpp"

namespace iqdb::persist {

static_assert(std::endian::native == std::endian::little,
              "iqdb-persist currently supports little-endian hosts only");

class PayloadWriter {
 public:
  virtual ~PayloadWriter() = default;

  // Append `size` bytes. May throw PersistError (I/O, compression).
  virtual void write(const void* data, std::size_t size) = 0;
  // Bytes written so far.
  virtual std::uint64_t bytes_written() const noexcept = 0;

  void write_u8(std::uint8_t v) { write(&v, 1); }
  void write_u32(std::uint32_t v) { write(&v, 4); }
  void write_u64(std::uint64_t v) { write(&v, 8); }
  void write_i64(std::int64_t v) { write(&v, 8); }
  void write_f32(float v) { write(&v, 4); }
  void write_f64(double v) { write(&v, 8); }
  void write_floats(std::span<const float> v) { write(v.data(), v.size_bytes()); }
  // u64 length, then the bytes.
  void write_string(std::string_view s) {
    write_u64(s.size());
    write(s.data(), s.size());
  }
};

class PayloadReader {
 public:
  virtual ~PayloadReader() = default;

  // Read exactly `size` bytes or throw PersistError(TruncatedPayload).
  virtual void read(void* dst, std::size_t size) = 0;
  // Bytes left in the payload. Exact (the payload's length is known before
  // decoding starts), so a count read from the payload can be checked against
  // it before anything is allocated.
  virtual std::uint64_t remaining() const noexcept = 0;

  // Throw PersistError(InvalidPayload) with `reason` (the library adds the
  // file's path as the error propagates).
  [[noreturn]] void fail(std::string reason) const { throw PersistError(ErrorKind::InvalidPayload, std::move(reason)); }

  std::uint8_t read_u8() { return read_pod<std::uint8_t>(); }
  std::uint32_t read_u32() { return read_pod<std::uint32_t>(); }
  std::uint64_t read_u64() { return read_pod<std::uint64_t>(); }
  std::int64_t read_i64() { return read_pod<std::int64_t>(); }
  float read_f32() { return read_pod<float>(); }
  double read_f64() { return read_pod<double>(); }

  // A count of items of at least `min_item_bytes` each, checked against the
  // bytes that remain: a count the payload cannot hold fails here, before the
  // caller allocates for it.
  std::uint64_t read_count(std::uint64_t min_item_bytes, std::string_view what) {
    const std::uint64_t n = read_u64();
    check_count(n, min_item_bytes, what);
    return n;
  }
  void check_count(std::uint64_t n, std::uint64_t min_item_bytes, std::string_view what) const {
    if (min_item_bytes != 0 && n > remaining() / min_item_bytes) {
      fail(std::string(what) + " count " + std::to_string(n) + " exceeds the " +
           std::to_string(remaining()) + " bytes that remain");
    }
  }
  // u64 length then bytes, length checked against remaining() and `max_len`.
  std::string read_string(std::uint64_t max_len, std::string_view what) {
    const std::uint64_t n = read_count(1, what);
    if (n > max_len) fail(std::string(what) + " length " + std::to_string(n) + " exceeds the limit");
    std::string s(static_cast<std::size_t>(n), '\0');
    read(s.data(), s.size());
    return s;
  }

 private:
  template <class T>
  T read_pod() {
    T v;
    read(&v, sizeof v);
    return v;
  }
};

// The metadata of one vector, as the flat payload and the adapters' side
// table store it (docs/FORMAT.md, "The flat payload"): n_entries u32, then
// per entry key_len u32, the key's bytes and the value, keys strictly
// ascending. A value is tag u8 then 0 String (len u32 + bytes), 1 Int (i64),
// 2 Float (f64 bits), 3 Bool (u8, 0 or 1), 4 Null.
inline constexpr std::uint32_t kMaxMetadataKeyBytes = 1u << 16;  // longest key accepted on load

void write_metadata(PayloadWriter& w, const Metadata& meta);
// Counts and lengths checked against the bytes that remain before anything
// is allocated; keys out of order fail (a map would silently merge them).
Metadata read_metadata(PayloadReader& r);

}  // namespace iqdb::persist
