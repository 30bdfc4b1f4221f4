// Streaming snapshot writer: payload -> (compressor) -> CRC -> file, in
// bounded buffers, inside an atomic file replace.
#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <vector>

#include "iqdb/persist/checksum.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/file_system.hpp"
#include "format/header.hpp"
#include "iqdb/persist/snapshot.hpp"
#include "snapshot/codec.hpp"
#include "util/coding.hpp"

namespace iqdb::persist {
namespace {

// Small writes are gathered in a buffer of this size.
constexpr std::size_t kBufferSize = std::size_t{4} << 20;
// Large writes go straight from the caller's memory, in chunks small enough
// that the CRC pass leaves the chunk in cache for the write that follows,
// each ending on a multiple of this size in the file: a write that fills
// an aligned 2 MiB of the file lets the kernel keep it in the page cache as
// one 2 MiB folio (Linux with large folios, ext4 since 6.16, XFS), which a
// mapped load then maps with one page-table entry instead of 512.
constexpr std::size_t kDirectChunk = std::size_t{2} << 20;
// How often (in stored bytes) to ask the kernel to start writing back, so the
// final fsync has little left to do.
constexpr std::uint64_t kWritebackEvery = std::uint64_t{32} << 20;

// Where the stored bytes go: CRC, file, and a writeback hint every
// kWritebackEvery bytes. Small writes are gathered in a buffer of
// kBufferSize bytes; large ones go straight from the caller's memory.
//
// With `background` (compressed saves), every write goes through the
// buffers, and a full buffer is written (CRC, append, writeback hint) by a
// thread of the sink's own while the saving thread fills a second one: a
// compressed save then costs the compressor's time rather than the
// compressor's plus the CRC's and the page cache's copy. The thread starts
// with the first full buffer (a save whose stored bytes fit in one buffer
// never starts it; if no thread can be started, the saving thread writes,
// as without `background`) and is joined by the destructor. The file is only ever
// used by one thread at a time: the writer between hand-offs, the saving
// thread once drain() has returned. An error of the writer (a failed
// append, say) is thrown to the saving thread by its next hand-off, or by
// flush(), whichever comes first; nothing is written after it.
class FileSink final : public codec::ByteSink {
 public:
  FileSink(WritableFile& file, std::uint64_t start, bool durable, bool background)
      : file_(file), start_(start), durable_(durable), background_(background), written_back_(start) {}
  FileSink(const FileSink&) = delete;
  FileSink& operator=(const FileSink&) = delete;

  ~FileSink() override {
    if (!writer_.joinable()) return;
    {
      std::lock_guard lock(mu_);
      stop_ = true;  // a hand-off not yet taken is dropped: the save failed
    }
    cv_.notify_all();
    writer_.join();
  }

  void put(const std::byte* data, std::size_t size) override {
    if (size >= kBufferSize && !background_) {
      // Whatever is buffered goes first, then the large write straight from
      // the caller's memory (copying it through the buffer would cost an
      // extra pass over the vectors, which follow the buffered ids). In the
      // background, everything goes through the buffers: the caller (a
      // compressor: lz4 hands on 4 MiB blocks) reuses its memory on return,
      // and a copy costs little beside the compression.
      flush();
      while (size > 0) {
        const std::size_t to_boundary = kDirectChunk - static_cast<std::size_t>((start_ + stored_) % kDirectChunk);
        const std::size_t n = std::min(size, to_boundary);
        emit(data, n);
        data += n;
        size -= n;
      }
      return;
    }
    while (size > 0) {
      if (!buf_) buf_.reset(new std::byte[kBufferSize]);  // not zero-filled
      const std::size_t n = std::min(size, kBufferSize - used_);
      std::memcpy(buf_.get() + used_, data, n);
      used_ += n;
      data += n;
      size -= n;
      if (used_ == kBufferSize) {
        if (background_) {
          hand_off();
        } else {
          flush();
        }
      }
    }
  }

  // Writes what is buffered and waits for the writer thread: afterwards
  // every byte put is in the file, and stored() and crc() cover them.
  void flush() {
    if (writer_.joinable()) {
      if (used_ > 0) hand_off();
      drain();
      return;
    }
    if (used_ > 0) emit(buf_.get(), used_);
    used_ = 0;
  }

  std::uint64_t stored() const noexcept { return stored_; }
  std::uint32_t crc() const noexcept { return crc_.value(); }

 private:
  void emit(const std::byte* data, std::size_t n) {
    crc_.update(data, n);
    file_.append({data, n});
    stored_ += n;
    const std::uint64_t end = start_ + stored_;
    if (durable_ && end - written_back_ >= kWritebackEvery) {
      file_.start_writeback(written_back_, end - written_back_);
      written_back_ = end;
    }
  }

  // Gives the buffer to the writer thread (started on first use) once it
  // is done with the previous one, and takes that one to fill next.
  void hand_off() {
    if (!writer_.joinable()) {
      try {
        writer_ = std::thread([this] { write_in_background(); });
      } catch (const std::system_error&) {
        // No thread to be had (a process at its limit): this one writes.
        background_ = false;
        emit(buf_.get(), used_);
        used_ = 0;
        return;
      }
    }
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return !job_; });
      if (error_) std::rethrow_exception(error_);
      job_ = Job{buf_.get(), used_};
    }
    cv_.notify_all();
    std::swap(buf_, spare_);  // spare_: the buffer just handed off, the writer's until it is idle
    used_ = 0;
  }

  void drain() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !job_; });
    if (error_) std::rethrow_exception(error_);
  }

  void write_in_background() {
    for (;;) {
      Job job;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return job_ || stop_; });
        if (stop_) return;
        job = *job_;  // stays set until written: the saving thread waits for it to clear
      }
      std::exception_ptr error;
      try {
        emit(job.data, job.size);
      } catch (...) {
        error = std::current_exception();
      }
      {
        std::lock_guard lock(mu_);
        job_.reset();
        if (error) error_ = error;
        // After an error nothing more is written: the saving thread sees it
        // at its next hand-off or flush and unwinds.
      }
      cv_.notify_all();
    }
  }

  struct Job {
    const std::byte* data = nullptr;
    std::size_t size = 0;
  };

  WritableFile& file_;
  std::uint64_t start_;
  bool durable_;
  bool background_;
  // Written by the writer thread while it runs, read by the saving thread
  // only after drain() (the mutex orders the two).
  std::uint64_t written_back_;
  std::uint64_t stored_ = 0;
  checksum::Crc32 crc_;
  // The saving thread's.
  std::unique_ptr<std::byte[]> buf_;    // being filled; not zero-filled
  std::unique_ptr<std::byte[]> spare_;  // the other buffer (background only)
  std::size_t used_ = 0;
  // Between the two threads, guarded by mu_.
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<Job> job_;  // handed off and not yet written (or failed)
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread writer_;  // last: joined (by the destructor) before the members above go
};

// What the index writes. Small writes (ids, metadata: a few bytes each) are
// gathered in a buffer and handed on kPayloadBuffer bytes at a time: a
// compressor called once per field would spend more time in its own
// bookkeeping than compressing. Writes of kPayloadBuffer bytes or more (the
// vectors) go on straight from the caller's memory.
class SnapshotPayloadWriter final : public PayloadWriter {
 public:
  static constexpr std::size_t kPayloadBuffer = std::size_t{64} << 10;

  SnapshotPayloadWriter(FileSink& sink, codec::Encoder* encoder, std::uint64_t file_offset)
      : sink_(sink), encoder_(encoder), buf_(new std::byte[kPayloadBuffer]), file_offset_(file_offset) {}

  void write(const void* data, std::size_t size) override {
    if (size <= kPayloadBuffer - used_) {
      if (size != 0) std::memcpy(buf_.get() + used_, data, size);
      used_ += size;
      n_ += size;
      return;
    }
    flush();
    if (size >= kPayloadBuffer) {
      emit(static_cast<const std::byte*>(data), size);
    } else {
      std::memcpy(buf_.get(), data, size);
      used_ = size;
    }
    n_ += size;
  }
  std::uint64_t bytes_written() const noexcept override { return n_; }
  std::uint64_t file_offset() const noexcept override { return file_offset_; }
  void mark_aligned_block() override { aligned_block_ = true; }
  bool aligned_block() const noexcept { return aligned_block_; }

  // Hand on what is buffered.
  void flush() {
    if (used_ > 0) emit(buf_.get(), used_);
    used_ = 0;
  }

 private:
  void emit(const std::byte* p, std::size_t size) {
    if (encoder_ != nullptr) {
      encoder_->write(p, size);
    } else {
      sink_.put(p, size);
    }
  }

  FileSink& sink_;
  codec::Encoder* encoder_;
  std::unique_ptr<std::byte[]> buf_;  // not zero-filled
  std::size_t used_ = 0;
  std::uint64_t n_ = 0;
  std::uint64_t file_offset_;
  bool aligned_block_ = false;
};

CompressionScheme scheme_for(const Compression& c) {
  codec::check_compression(c);
  switch (c.kind()) {
    case Compression::Kind::None: return CompressionScheme::None;
    case Compression::Kind::Zstd: return CompressionScheme::Zstd;
    case Compression::Kind::Lz4: return CompressionScheme::Lz4Frame;
  }
  throw PersistError::argument("unknown compression kind");
}

}  // namespace

FileHeader write_snapshot(FileSystem& fs, const std::filesystem::path& path, const SnapshotInfo& info,
                          Compression compression, bool durable, const std::function<void(PayloadWriter&)>& body,
                          const ReadLimits& limits) {
  FileHeader h;
  h.format_version = 3;
  h.index_type = std::string(info.index_type);
  h.dim = info.dim;
  h.metric = info.metric;
  h.n_vectors = info.n_vectors;
  h.last_lsn = info.last_lsn;
  h.optional_flags = info.optional_flags & ~format::OPTIONAL_FLAG_ALIGNED_BLOCK;
  h.compression = scheme_for(compression);
  // Validates the tag before any file is created.
  const std::size_t header_len = format::write_header(h).size();
  h.crc_offset = h.payload_offset = header_len;

  try {
    replace_file_atomically(fs, path, durable, [&](WritableFile& file) {
      // Placeholder; the real header (with lengths and CRC) goes in last.
      const std::vector<std::byte> zeros(header_len);
      bool aligned_block = false;
      file.append(zeros);
      const auto stream = [&] {
        // Compressed, the stored bytes are written by the sink's own thread
        // while this one compresses (where there is a second core for it).
        const bool background = h.compression != CompressionScheme::None && std::thread::hardware_concurrency() > 1;
        FileSink sink(file, header_len, durable, background);
        std::unique_ptr<codec::Encoder> encoder;
        if (h.compression != CompressionScheme::None) {
          // The vectors dominate a payload: a size hint lets zstd size its
          // tables (level 19 otherwise prepares for an unbounded input).
          const std::uint64_t hint = info.n_vectors * info.dim * sizeof(float) + 4096;
          encoder = codec::make_encoder(h.compression, compression.level(), sink, path, hint, compression.threads());
        }
        SnapshotPayloadWriter writer(sink, encoder.get(), header_len);
        body(writer);
        writer.flush();
        if (encoder) encoder->finish();
        sink.flush();
        aligned_block = writer.aligned_block();
        h.uncompressed_len = writer.bytes_written();
        h.stored_len = sink.stored();
        h.payload_crc = sink.crc();
      };
      stream();
      if (h.uncompressed_len > limits.max_payload_bytes) {
        throw PersistError::at(ErrorKind::InvalidArgument, path,
                               "the snapshot's payload of " + std::to_string(h.uncompressed_len) +
                                   " bytes is over the configured limit of " + std::to_string(limits.max_payload_bytes) +
                                   " (ReadLimits::max_payload_bytes): it would not load; nothing was replaced");
      }
      // A payload so repetitive that it compresses beyond the readers'
      // expansion guard would be refused on load: store it uncompressed.
      const std::uint64_t ratio = std::max<std::uint64_t>(limits.max_expansion_ratio, 1);
      if (h.compression != CompressionScheme::None && h.uncompressed_len / ratio >= h.stored_len) {
        file.truncate(header_len);
        h.compression = CompressionScheme::None;
        stream();
      }
      // Stored uncompressed, the index's aligned block is aligned in the file.
      if (aligned_block && h.compression == CompressionScheme::None) {
        h.optional_flags |= format::OPTIONAL_FLAG_ALIGNED_BLOCK;
      }
      const std::vector<std::byte> header = format::write_header(h);
      h.header_crc = coding::get<std::uint32_t>(header.data() + header.size() - format::kV3HeaderCrcLen);
      file.write_at(0, header);
    });
  } catch (const PersistError& e) {
    if (e.path().empty()) throw e.with_path(path);
    throw;
  }
  return h;
}

}  // namespace iqdb::persist
