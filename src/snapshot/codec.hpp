// Streaming compression codecs for snapshot payloads (internal).
//
// Encoders take payload bytes and emit stored (compressed) bytes to a
// ByteSink in bounded pieces; decoders pull stored bytes from a ByteSource
// and produce payload bytes. Neither ever holds the whole payload, except the
// LZ4 block decoder, which the block format forces to (read only, legacy v2).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>

#include "iqdb/persist/config.hpp"
#include "iqdb/persist/format.hpp"

namespace iqdb::persist::codec {

class ByteSink {
 public:
  virtual ~ByteSink() = default;
  virtual void put(const std::byte* data, std::size_t size) = 0;
};

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Copy up to `size` stored bytes into dst; returns the count, 0 at the end.
  virtual std::size_t get(std::byte* dst, std::size_t size) = 0;
  // Stored bytes not yet returned.
  virtual std::uint64_t left() const noexcept = 0;
};

class Encoder {
 public:
  virtual ~Encoder() = default;
  virtual void write(const std::byte* data, std::size_t size) = 0;
  // Flush everything; the stream is complete afterwards.
  virtual void finish() = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Produce exactly `size` payload bytes into dst, or throw (TruncatedPayload
  // when the stream ends early, Compression when it is damaged).
  virtual void read(std::byte* dst, std::size_t size) = 0;
  // The payload has been fully read: check that the compressed stream ends
  // exactly here (no trailing or missing bytes).
  virtual void finish() = 0;
  // Whether read() can fail because of what the stored bytes hold (a
  // damaged or short compressed stream). When it cannot, reading ahead of
  // what the index asks for can never report an error that reading field by
  // field would not (only I/O errors, and a file that shrank, which the
  // checksum pass after any failure would meet anyway).
  virtual bool content_errors() const noexcept { return true; }
};

// The checks a Compression passes before anything is written (a config's,
// and write_snapshot's): zstd level 1..22, threads 1..kMaxThreads. Throws
// PersistError(InvalidArgument).
void check_compression(const Compression& c);

// level is used by Zstd only (1..22). Scheme None and Lz4Block have no encoder.
// size_hint: the expected payload size (0 = unknown). threads (Zstd only):
// more than 1 lets zstd's own workers compress in 2 MiB jobs (where the
// library was built with them; otherwise it compresses inline).
std::unique_ptr<Encoder> make_encoder(CompressionScheme scheme, int level, ByteSink& sink,
                                      const std::filesystem::path& path, std::uint64_t size_hint = 0, int threads = 1);

std::unique_ptr<Decoder> make_decoder(CompressionScheme scheme, ByteSource& source, std::uint64_t uncompressed_len,
                                      const std::filesystem::path& path);

}  // namespace iqdb::persist::codec
