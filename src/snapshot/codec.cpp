#include "snapshot/codec.hpp"

#include <lz4.h>
#include <lz4frame.h>
// For ZSTD_c_srcSizeHint (an "experimental" parameter, stable since zstd 1.4.x;
// passed by number through the regular setParameter entry point).
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

#include <climits>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "iqdb/persist/error.hpp"

namespace iqdb::persist::codec {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void compression_error(const fs::path& path, std::string detail) {
  throw PersistError::at(ErrorKind::Compression, path, std::move(detail));
}

// A zstd call's result: its error, if any, as a Compression error.
std::size_t zstd_check(std::size_t r, const fs::path& path) {
  if (ZSTD_isError(r)) compression_error(path, std::string("zstd: ") + ZSTD_getErrorName(r));
  return r;
}

// ---------------------------------------------------------------- zstd

class ZstdEncoder final : public Encoder {
 public:
  ZstdEncoder(int level, ByteSink& sink, fs::path path, std::uint64_t size_hint, int threads)
      : sink_(sink), path_(std::move(path)), ctx_(ZSTD_createCCtx()), out_(ZSTD_CStreamOutSize()) {
    if (ctx_ == nullptr) compression_error(path_, "cannot allocate a zstd context");
    check(ZSTD_CCtx_setParameter(ctx_, ZSTD_c_compressionLevel, level));
    // Levels 20-22 would ask for windows up to 128 MiB; at most 8 MiB keeps
    // every frame this library writes on the reader's streaming path.
    if (ZSTD_getCParams(level, 0, 0).windowLog > 23) check(ZSTD_CCtx_setParameter(ctx_, ZSTD_c_windowLog, 23));
    if (threads > 1 && !ZSTD_isError(ZSTD_CCtx_setParameter(ctx_, ZSTD_c_nbWorkers, threads))) {
      // Jobs of 2 MiB: zstd's default (4 windows, up to 32 MiB here) held
      // about 100 MiB more for 2 workers; 2 MiB held 24 MiB more and was as
      // fast (docs/PERFORMANCE.md, "Notes").
      check(ZSTD_CCtx_setParameter(ctx_, ZSTD_c_jobSize, 2 << 20));
    }
    if (size_hint > 0) {
      // A hint only: the frame does not claim a content size.
      const int h = size_hint > static_cast<std::uint64_t>(INT_MAX) ? INT_MAX : static_cast<int>(size_hint);
      check(ZSTD_CCtx_setParameter(ctx_, ZSTD_c_srcSizeHint, h));
    }
  }
  ~ZstdEncoder() override { ZSTD_freeCCtx(ctx_); }

  void write(const std::byte* data, std::size_t size) override {
    ZSTD_inBuffer in{data, size, 0};
    while (in.pos < in.size) run(in, ZSTD_e_continue);
  }
  void finish() override {
    ZSTD_inBuffer in{nullptr, 0, 0};
    while (run(in, ZSTD_e_end) != 0) {
    }
  }

 private:
  std::size_t run(ZSTD_inBuffer& in, ZSTD_EndDirective mode) {
    ZSTD_outBuffer out{out_.data(), out_.size(), 0};
    const std::size_t r = ZSTD_compressStream2(ctx_, &out, &in, mode);
    check(r);
    if (out.pos > 0) sink_.put(out_.data(), out.pos);
    return r;
  }
  void check(std::size_t r) const { zstd_check(r, path_); }

  ByteSink& sink_;
  fs::path path_;
  ZSTD_CCtx* ctx_;
  std::vector<std::byte> out_;
};

class ZstdDecoder final : public Decoder {
 public:
  // The decoder's memory is bounded by the payload the header declares, not
  // by the window the frame asks for (a 92-byte file may ask for 2^31 bytes):
  //  - a frame whose window is at most kStreamWindowLog is decoded as a
  //    stream through zstd's own window buffer (at most 8 MiB);
  //  - a larger window (levels 20-22 of a streaming encoder, which does not
  //    shrink the window to the input) is decoded whole into one buffer of
  //    the declared length, which serves as the window (ZSTD_d_stableOutBuffer:
  //    zstd then allocates no window of its own). The declared length was
  //    checked against the stored bytes (the ratio guard) and the caller's
  //    ReadLimits before this decoder is made, and the index will hold that
  //    much anyway.
  static constexpr int kStreamWindowLog = 23;

  ZstdDecoder(ByteSource& src, fs::path path, std::uint64_t uncompressed_len)
      : src_(src), path_(std::move(path)), declared_(uncompressed_len), ctx_(ZSTD_createDCtx()) {
    if (ctx_ == nullptr) compression_error(path_, "cannot allocate a zstd context");
    in_buf_.resize(ZSTD_DStreamInSize());
  }
  ~ZstdDecoder() override { ZSTD_freeDCtx(ctx_); }

  void read(std::byte* dst, std::size_t size) override {
    if (!started_) start();
    if (whole_) {
      if (size > whole_->size() - served_) throw truncated();
      if (size > 0) std::memcpy(dst, whole_->data() + served_, size);
      served_ += size;
      return;
    }
    ZSTD_outBuffer out{dst, size, 0};
    while (out.pos < out.size) {
      if (frame_done_) throw truncated();
      step(out);
    }
  }

  void finish() override {
    if (!started_) start();
    if (whole_ && served_ != whole_->size()) compression_error(path_, "zstd frame holds more than the declared length");
    // The payload is complete; the frame must end here (its epilogue may
    // still be ahead in the input). There must be no more output.
    std::byte probe;
    while (!frame_done_) {
      ZSTD_outBuffer out{&probe, 1, 0};
      step(out);
      if (out.pos != 0) compression_error(path_, "zstd frame holds more than the declared length");
    }
    if (in_.pos != in_.size || src_.left() != 0) compression_error(path_, "bytes after the end of the zstd frame");
  }

 private:
  // Reads the frame header and picks the way to decode (above).
  void start() {
    started_ = true;
    // At least a whole frame header, unless the input is shorter.
    std::size_t n = 0;
    while (n < ZSTD_FRAMEHEADERSIZE_MAX) {
      const std::size_t got = src_.get(in_buf_.data() + n, in_buf_.size() - n);
      if (got == 0) break;
      n += got;
    }
    in_ = ZSTD_inBuffer{in_buf_.data(), n, 0};
    ZSTD_frameHeader fh{};
    const std::size_t r = ZSTD_getFrameHeader(&fh, in_.src, in_.size);
    // An error or an incomplete header: the streaming path reports it.
    if (r != 0 || fh.frameType != ZSTD_frame || fh.windowSize <= (std::uint64_t{1} << kStreamWindowLog)) {
      check(ZSTD_DCtx_setParameter(ctx_, ZSTD_d_windowLogMax, kStreamWindowLog));
      return;
    }
    if (fh.frameContentSize != ZSTD_CONTENTSIZE_UNKNOWN && fh.frameContentSize != declared_) {
      compression_error(path_, "the zstd frame holds " + std::to_string(fh.frameContentSize) +
                                   " bytes, the header declares " + std::to_string(declared_));
    }
    if (declared_ > SIZE_MAX / 2) compression_error(path_, "the declared payload does not fit in memory");
    check(ZSTD_DCtx_setParameter(ctx_, ZSTD_d_windowLogMax, ZSTD_WINDOWLOG_MAX));
    check(ZSTD_DCtx_setParameter(ctx_, ZSTD_d_stableOutBuffer, 1));
    // The output buffer must stay the same between calls; one byte more
    // than declared catches a frame that holds more.
    std::vector<std::byte>& buf = whole_.emplace(static_cast<std::size_t>(declared_) + 1);
    ZSTD_outBuffer out{buf.data(), buf.size(), 0};
    while (!frame_done_) {
      step(out);
      if (out.pos > declared_) compression_error(path_, "zstd frame holds more than the declared length");
    }
    if (out.pos < declared_) throw truncated();
    buf.resize(static_cast<std::size_t>(declared_));
  }

  void check(std::size_t r) const { zstd_check(r, path_); }

  // One decompression step; throws when the input ends without progress.
  void step(ZSTD_outBuffer& out) {
    if (in_.pos == in_.size) refill();
    const std::size_t out_before = out.pos;
    const std::size_t in_before = in_.pos;
    const std::size_t r = zstd_check(ZSTD_decompressStream(ctx_, &out, &in_), path_);
    if (r == 0) {
      frame_done_ = true;
      return;
    }
    if (out.pos == out_before && in_.pos == in_before && in_.pos == in_.size && src_.left() == 0) throw truncated();
  }
  void refill() {
    const std::size_t n = src_.get(in_buf_.data(), in_buf_.size());
    in_ = ZSTD_inBuffer{in_buf_.data(), n, 0};
  }
  PersistError truncated() const {
    return PersistError::at(ErrorKind::TruncatedPayload, path_, "the zstd stream ends before the declared length");
  }

  ByteSource& src_;
  fs::path path_;
  std::uint64_t declared_;
  ZSTD_DCtx* ctx_;
  std::vector<std::byte> in_buf_;
  ZSTD_inBuffer in_{nullptr, 0, 0};
  bool started_ = false;
  bool frame_done_ = false;
  std::optional<std::vector<std::byte>> whole_;  // the large-window path's output
  std::size_t served_ = 0;
};

// ---------------------------------------------------------------- LZ4 frame

class Lz4FrameEncoder final : public Encoder {
 public:
  static constexpr std::size_t kChunk = 1 << 20;

  Lz4FrameEncoder(ByteSink& sink, fs::path path) : sink_(sink), path_(std::move(path)) {
    check(LZ4F_createCompressionContext(&ctx_, LZ4F_VERSION));
    std::memset(&prefs_, 0, sizeof prefs_);
    prefs_.frameInfo.blockSizeID = LZ4F_max4MB;
    prefs_.frameInfo.blockMode = LZ4F_blockIndependent;
    out_.resize(LZ4F_compressBound(kChunk, &prefs_) + LZ4F_HEADER_SIZE_MAX);
    const std::size_t n = LZ4F_compressBegin(ctx_, out_.data(), out_.size(), &prefs_);
    check(n);
    sink_.put(out_.data(), n);
  }
  ~Lz4FrameEncoder() override { LZ4F_freeCompressionContext(ctx_); }

  void write(const std::byte* data, std::size_t size) override {
    while (size > 0) {
      const std::size_t n = size < kChunk ? size : kChunk;
      const std::size_t r = LZ4F_compressUpdate(ctx_, out_.data(), out_.size(), data, n, nullptr);
      check(r);
      if (r > 0) sink_.put(out_.data(), r);
      data += n;
      size -= n;
    }
  }
  void finish() override {
    const std::size_t r = LZ4F_compressEnd(ctx_, out_.data(), out_.size(), nullptr);
    check(r);
    sink_.put(out_.data(), r);
  }

 private:
  void check(std::size_t r) const {
    if (LZ4F_isError(r)) compression_error(path_, std::string("lz4: ") + LZ4F_getErrorName(r));
  }
  ByteSink& sink_;
  fs::path path_;
  LZ4F_cctx* ctx_ = nullptr;
  LZ4F_preferences_t prefs_;
  std::vector<std::byte> out_;
};

class Lz4FrameDecoder final : public Decoder {
 public:
  Lz4FrameDecoder(ByteSource& src, fs::path path) : src_(src), path_(std::move(path)) {
    const std::size_t r = LZ4F_createDecompressionContext(&ctx_, LZ4F_VERSION);
    if (LZ4F_isError(r)) compression_error(path_, std::string("lz4: ") + LZ4F_getErrorName(r));
    in_buf_.resize(256 * 1024);
  }
  ~Lz4FrameDecoder() override { LZ4F_freeDecompressionContext(ctx_); }

  void read(std::byte* dst, std::size_t size) override {
    std::size_t done = 0;
    while (done < size) {
      if (frame_done_) throw truncated();
      done += step(dst + done, size - done);
    }
  }

  void finish() override {
    std::byte probe;
    while (!frame_done_) {
      if (step(&probe, 1) != 0) compression_error(path_, "lz4 frame holds more than the declared length");
    }
    if (in_pos_ != in_len_ || src_.left() != 0) compression_error(path_, "bytes after the end of the lz4 frame");
  }

 private:
  // One decompression step into dst[0, cap); returns the bytes produced.
  std::size_t step(std::byte* dst, std::size_t cap) {
    if (in_pos_ == in_len_) refill();
    std::size_t out_n = cap;
    std::size_t in_n = in_len_ - in_pos_;
    const std::size_t r = LZ4F_decompress(ctx_, dst, &out_n, in_buf_.data() + in_pos_, &in_n, nullptr);
    if (LZ4F_isError(r)) compression_error(path_, std::string("lz4: ") + LZ4F_getErrorName(r));
    in_pos_ += in_n;
    if (r == 0) {
      frame_done_ = true;
    } else if (out_n == 0 && in_n == 0 && in_pos_ == in_len_ && src_.left() == 0) {
      throw truncated();
    }
    return out_n;
  }
  void refill() {
    in_len_ = src_.get(in_buf_.data(), in_buf_.size());
    in_pos_ = 0;
  }
  PersistError truncated() const {
    return PersistError::at(ErrorKind::TruncatedPayload, path_, "the lz4 stream ends before the declared length");
  }
  ByteSource& src_;
  fs::path path_;
  LZ4F_dctx* ctx_ = nullptr;
  std::vector<std::byte> in_buf_;
  std::size_t in_pos_ = 0;
  std::size_t in_len_ = 0;
  bool frame_done_ = false;
};

// ---------------------------------------------------------------- LZ4 block (legacy, read only)

class Lz4BlockDecoder final : public Decoder {
 public:
  Lz4BlockDecoder(ByteSource& src, std::uint64_t uncompressed_len, const fs::path& path) : path_(path) {
    const std::uint64_t stored = src.left();
    if (stored > static_cast<std::uint64_t>(LZ4_MAX_INPUT_SIZE) || uncompressed_len > INT_MAX) {
      compression_error(path_, "lz4 block larger than the LZ4 block format allows");
    }
    // Both lengths are bounded: stored by the file's size, uncompressed by the
    // expansion guard the caller applied.
    std::vector<char> in(static_cast<std::size_t>(stored));
    std::size_t got = 0;
    while (got < in.size()) {
      const std::size_t n = src.get(reinterpret_cast<std::byte*>(in.data()) + got, in.size() - got);
      if (n == 0) break;
      got += n;
    }
    if (got != in.size()) throw PersistError::at(ErrorKind::TruncatedPayload, path_, "the lz4 block is truncated");
    out_.resize(static_cast<std::size_t>(uncompressed_len));
    const int n = LZ4_decompress_safe(in.data(), reinterpret_cast<char*>(out_.data()), static_cast<int>(in.size()),
                                      static_cast<int>(out_.size()));
    if (n < 0) compression_error(path_, "lz4 block is damaged");
    if (static_cast<std::uint64_t>(n) != uncompressed_len) {
      compression_error(path_, "lz4 block decompressed to " + std::to_string(n) + " bytes, declared " +
                                   std::to_string(uncompressed_len));
    }
  }
  void read(std::byte* dst, std::size_t size) override {
    if (size > out_.size() - pos_) {
      throw PersistError::at(ErrorKind::TruncatedPayload, path_, "read past the end of the lz4 block");
    }
    if (size == 0) return;  // out_ may be empty (data() null)
    std::memcpy(dst, out_.data() + pos_, size);
    pos_ += size;
  }
  void finish() override {}

 private:
  fs::path path_;
  std::vector<std::byte> out_;
  std::size_t pos_ = 0;
};

// ---------------------------------------------------------------- none

class PlainDecoder final : public Decoder {
 public:
  PlainDecoder(ByteSource& src, fs::path path) : src_(src), path_(std::move(path)) {}
  void read(std::byte* dst, std::size_t size) override {
    while (size > 0) {
      const std::size_t n = src_.get(dst, size);
      if (n == 0) throw PersistError::at(ErrorKind::TruncatedPayload, path_, "the payload ends early");
      dst += n;
      size -= n;
    }
  }
  void finish() override {
    if (src_.left() != 0) {
      throw PersistError::at(ErrorKind::InvalidPayload, path_, "bytes after the end of the payload");
    }
  }
  // The stored bytes are the payload: the caller bounds reads by the
  // declared length, which equals the stored length.
  bool content_errors() const noexcept override { return false; }

 private:
  ByteSource& src_;
  fs::path path_;
};

}  // namespace

void check_compression(const Compression& c) {
  if (c.kind() != Compression::Kind::Zstd) return;
  if (c.level() < 1 || c.level() > 22) {
    throw PersistError::argument("zstd level " + std::to_string(c.level()) + " is outside 1..22");
  }
  if (c.threads() < 1 || c.threads() > Compression::kMaxThreads) {
    throw PersistError::argument("compression threads " + std::to_string(c.threads()) + " is outside 1.." +
                                 std::to_string(Compression::kMaxThreads));
  }
}

std::unique_ptr<Encoder> make_encoder(CompressionScheme scheme, int level, ByteSink& sink, const fs::path& path,
                                      std::uint64_t size_hint, int threads) {
  switch (scheme) {
    case CompressionScheme::Zstd:
      if (level < 1 || level > ZSTD_maxCLevel()) {
        throw PersistError::argument("zstd level " + std::to_string(level) + " is outside 1.." +
                                     std::to_string(ZSTD_maxCLevel()));
      }
      return std::make_unique<ZstdEncoder>(level, sink, path, size_hint, threads);
    case CompressionScheme::Lz4Frame: return std::make_unique<Lz4FrameEncoder>(sink, path);
    case CompressionScheme::None:
    case CompressionScheme::Lz4Block: break;
  }
  throw PersistError::argument("no streaming encoder for compression scheme " + std::string(to_string(scheme)));
}

std::unique_ptr<Decoder> make_decoder(CompressionScheme scheme, ByteSource& source, std::uint64_t uncompressed_len,
                                      const fs::path& path) {
  switch (scheme) {
    case CompressionScheme::None: return std::make_unique<PlainDecoder>(source, path);
    case CompressionScheme::Zstd: return std::make_unique<ZstdDecoder>(source, path, uncompressed_len);
    case CompressionScheme::Lz4Frame: return std::make_unique<Lz4FrameDecoder>(source, path);
    case CompressionScheme::Lz4Block: return std::make_unique<Lz4BlockDecoder>(source, uncompressed_len, path);
  }
  throw PersistError::at(ErrorKind::Compression, path,
                         "unknown compression scheme " + std::to_string(static_cast<unsigned>(scheme)));
}

}  // namespace iqdb::persist::codec
