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
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "iqdb/persist/error.hpp"
#include "iqdb/persist/types.hpp"

namespace iqdb::persist {

static_assert(std::endian::native == std::endian::little,
              "iqdb-persist currently supports little-endian hosts only");

namespace detail {
// The file behind a mapped block (src/fs/file_mapping.cpp): kept open to
// tell whether it was written to or truncated since it was mapped.
class MappedOrigin;
}  // namespace detail

// A block of payload bytes used in place from a private mapping of the
// snapshot file: what a mapped load (PersistConfig::map_snapshot; see
// docs/API.md, "Mapped load") gives an index instead of copying the bytes.
//
// [data(), data() + size()) are the file's bytes, checksummed (with the rest
// of the payload) before the load returns; behind them, up to data() +
// reserved(), anonymous memory reserved for growth. The whole range may be
// read and written: the first store into a page of the file's part copies
// that page (copy-on-write, MAP_PRIVATE), never reaching the file. data() is
// aligned to the page size (4096). Move-only; unmapped when destroyed unless
// released.
class MappedBlock {
 public:
  MappedBlock() noexcept = default;
  MappedBlock(std::byte* data, std::size_t size, std::size_t reserved,
              std::shared_ptr<const detail::MappedOrigin> origin) noexcept;
  MappedBlock(MappedBlock&& o) noexcept;
  MappedBlock& operator=(MappedBlock&& o) noexcept;
  MappedBlock(const MappedBlock&) = delete;
  MappedBlock& operator=(const MappedBlock&) = delete;
  ~MappedBlock();

  explicit operator bool() const noexcept { return data_ != nullptr; }
  std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  std::size_t reserved() const noexcept { return reserved_; }
  const std::shared_ptr<const detail::MappedOrigin>& origin() const noexcept { return origin_; }
  // The caller takes over the range: it must munmap(data(), reserved()).
  std::byte* release() noexcept;

 private:
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t reserved_ = 0;
  std::shared_ptr<const detail::MappedOrigin> origin_;
};

namespace detail {
// Throw PersistError(InvalidPayload) naming the file when the file behind a
// mapped block was written to or changed size since it was mapped (its
// modification time or size differ); the bytes in place may then no longer
// be the ones verified (docs/API.md, "Mapped load").
void check_mapped_origin(const MappedOrigin& origin);
const std::filesystem::path& mapped_origin_path(const MappedOrigin& origin) noexcept;
}  // namespace detail

class PayloadWriter {
 public:
  virtual ~PayloadWriter() = default;

  // Append `size` bytes. May throw PersistError (I/O, compression).
  virtual void write(const void* data, std::size_t size) = 0;
  // Bytes written so far.
  virtual std::uint64_t bytes_written() const noexcept = 0;
  // Where payload byte 0 lies in the file (the snapshot header's length), so
  // that an index can place a block at an aligned file offset; 0 when the
  // writer does not know.
  virtual std::uint64_t file_offset() const noexcept { return 0; }
  // The index is about to write a block that a mapped load may use in place
  // (page aligned in the file when stored uncompressed): the writer records
  // it in the header (docs/FORMAT.md, optional flag "aligned block").
  virtual void mark_aligned_block() {}

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
  // Where payload byte 0 lies in the file; 0 when the reader does not know.
  virtual std::uint64_t file_offset() const noexcept { return 0; }
  // A mapped load: the next `size` payload bytes in place (consumed as if
  // read), with room for `reserve` bytes in all (>= size) behind data().
  // Empty, consuming nothing, when this reader does not map (the default; a
  // load without PersistConfig::map_snapshot; a compressed payload; bytes
  // not page aligned in the file): the caller then reads them.
  virtual MappedBlock map(std::size_t size, std::size_t reserve) {
    (void)size;
    (void)reserve;
    return {};
  }

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
