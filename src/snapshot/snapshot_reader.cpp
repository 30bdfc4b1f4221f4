// Snapshot reader: one streaming pass over the stored bytes, CRC computed as
// they arrive, payload decoded as hostile input, result accepted only when
// the CRC matches.

#include <algorithm>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "format/header.hpp"
#include "iqdb/persist/checksum.hpp"
#include "iqdb/persist/detail/resource_error.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/file_system.hpp"
#include "iqdb/persist/snapshot.hpp"
#include "fs/file_mapping.hpp"
#include "fs/in_place_read.hpp"
#include "snapshot/codec.hpp"

namespace iqdb::persist {
namespace {

// Inside a catch (...): whether what is caught is no C++ exception, as the
// forced unwinding of a thread that pthread_exit or pthread_cancel ends
// (libstdc++ gives no exception_ptr for those). Used instead of a handler
// for abi::__forced_unwind, whose reference the runtime binds to null
// (UBSan: "reference binding to null pointer").
bool foreign_exception() noexcept { return !std::current_exception(); }

namespace fs = std::filesystem;

// Reads land in the caller's buffer in chunks of this size; each chunk is
// checksummed while it is still in cache.
constexpr std::size_t kReadChunk = std::size_t{2} << 20;
constexpr std::size_t kDrainBuffer = std::size_t{1} << 20;

class FileSource final : public codec::ByteSource {
 public:
  using Progress = std::function<void(std::uint64_t, std::uint64_t)>;

  FileSource(const ReadableFile& file, std::uint64_t begin, std::uint64_t end, const Progress& progress)
      : file_(file),
        in_place_(dynamic_cast<const detail::InPlaceRead*>(&file)),
        begin_(begin),
        pos_(begin),
        end_(end),
        progress_(progress) {}

  std::size_t get(std::byte* dst, std::size_t size) override {
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(size, end_ - pos_));
    if (in_place_ != nullptr) return get_in_place(dst, want);
    std::size_t done = 0;
    while (done < want) {
      const std::size_t n = std::min(want - done, kReadChunk);
      const std::size_t got = file_.read_at(pos_, {dst + done, n});
      if (got != n) {
        throw PersistError::at(ErrorKind::TruncatedPayload, file_.path(), "the file shrank while being read", pos_ + got);
      }
      crc_.update(dst + done, n);
      pos_ += n;
      done += n;
      if (progress_) progress_(pos_ - begin_, end_ - begin_);
    }
    return done;
  }

  // One call for the whole destination (a storage that fills it in place):
  // each piece's CRC, which the storage computed for its own checks, is
  // joined to the snapshot's as the piece is reported.
  std::size_t get_in_place(std::byte* dst, std::size_t want) {
    const std::uint64_t from = pos_;
    const std::size_t got = in_place_->read_in_place(pos_, {dst, want}, [&](std::span<const std::byte> piece,
                                                                              std::uint32_t piece_crc) {
      crc_.append_crc(piece_crc, piece.size());
      pos_ += piece.size();
      if (progress_) progress_(pos_ - begin_, end_ - begin_);
    });
    if (got != want || pos_ != from + want) {
      throw PersistError::at(ErrorKind::TruncatedPayload, file_.path(), "the file shrank while being read", from + got);
    }
    return want;
  }
  std::uint64_t left() const noexcept override { return end_ - pos_; }
  std::uint64_t position() const noexcept { return pos_; }
  const ReadableFile& file() const noexcept { return file_; }

  // Take the next `n` stored bytes from `in_place` (the same bytes of the
  // file, mapped) instead of reading them: checksummed where they lie.
  void consume_in_place(const std::byte* in_place, std::size_t n) {
    for (std::size_t done = 0; done < n;) {
      const std::size_t k = std::min(n - done, kReadChunk);
      crc_.update(in_place + done, k);
      pos_ += k;
      done += k;
      if (progress_) progress_(pos_ - begin_, end_ - begin_);
    }
  }

  void seed_crc(std::span<const std::byte> bytes) {
    crc_.update(bytes);
    seed_ = crc_;
  }
  std::uint32_t crc() const noexcept { return crc_.value(); }

  // Back to the first stored byte, with the CRC as seeded.
  void rewind() noexcept {
    pos_ = begin_;
    crc_ = seed_;
  }

  // Checksum whatever is left, with a bounded buffer.
  void drain() {
    if (pos_ == end_) return;
    std::vector<std::byte> buf(static_cast<std::size_t>(std::min<std::uint64_t>(kDrainBuffer, end_ - pos_)));
    while (get(buf.data(), buf.size()) != 0) {
    }
  }

 private:
  const ReadableFile& file_;
  const detail::InPlaceRead* in_place_;  // when the file offers it
  std::uint64_t begin_;
  std::uint64_t pos_;
  std::uint64_t end_;
  const Progress& progress_;
  checksum::Crc32 crc_;
  checksum::Crc32 seed_;
};

// What the index reads. Small reads (the ids, the metadata: a few bytes
// each) are served from a buffer that is filled kPayloadBuffer bytes at a
// time, so the file (or the decompressor) sees one call per buffer, not one
// per field; a read of kPayloadBuffer bytes or more (the vectors) goes
// straight from the decoder into the caller's memory, with no extra copy.
//
// The buffer never reads ahead of the declared payload length. Reading ahead
// must not change which error a damaged file reports: the bytes the index
// asks for are decoded first, exactly as without the buffer (their errors
// propagate as they would have); the rest of the buffer is read ahead only
// speculatively. Should that fail (a compressed stream damaged a little
// further on, in a file whose CRC is right, since it was written that way),
// the reader forgets the read-ahead, decodes the stream again from the start
// up to where the index is, and continues without reading ahead: the index
// then meets the bytes in the same order and the same error as without a
// buffer (and its own error first, if the damage lies beyond it).
class SnapshotPayloadReader final : public PayloadReader {
 public:
  static constexpr std::size_t kPayloadBuffer = std::size_t{64} << 10;
  using MakeDecoder = std::function<std::unique_ptr<codec::Decoder>()>;

  // `map_at`: for a mapped load of an uncompressed payload, the file
  // offset of payload byte 0; nullopt otherwise (map() then maps nothing).
  SnapshotPayloadReader(MakeDecoder make_decoder, FileSource& source, std::uint64_t length, const fs::path& path,
                        std::optional<std::uint64_t> map_at)
      : make_decoder_(std::move(make_decoder)),
        source_(source),
        decoder_(make_decoder_()),
        length_(length),
        remaining_(length),
        path_(path),
        map_at_(map_at) {}

  void read(void* dst, std::size_t size) override {
    if (size <= static_cast<std::size_t>(end_ - pos_)) {
      if (size != 0) std::memcpy(dst, pos_, size);
      pos_ += size;
      remaining_ -= size;
      return;
    }
    read_slow(static_cast<std::byte*>(dst), size);
  }
  std::uint64_t remaining() const noexcept override { return remaining_; }
  std::uint64_t file_offset() const noexcept override { return map_at_.value_or(0); }
  MappedBlock map(std::size_t size, std::size_t reserve) override;

  // The payload has been read: the stored stream must end here.
  void finish() { decoder_->finish(); }
  // After the checksum matched: the file behind a mapped block did not
  // change while the load read it (docs/API.md, "Mapped load").
  void check_mapped() const {
    if (mapped_origin_) detail::check_mapped_origin(*mapped_origin_);
  }

 private:
  void read_slow(std::byte* dst, std::size_t size) {
    if (size > remaining_) {
      throw PersistError::at(ErrorKind::TruncatedPayload, path_,
                             "the index payload needs " + std::to_string(size) + " more bytes, " +
                                 std::to_string(remaining_) + " remain");
    }
    // What is buffered first, then the rest.
    const std::size_t have = static_cast<std::size_t>(end_ - pos_);
    if (have != 0) std::memcpy(dst, pos_, have);
    pos_ = end_ = nullptr;
    remaining_ -= have;
    dst += have;
    size -= have;
    if (size >= kPayloadBuffer) {
      decoder_->read(dst, size);  // straight into the caller's memory
      decoded_ += size;
      remaining_ -= size;
      return;
    }
    fill(size);
    std::memcpy(dst, pos_, size);
    pos_ += size;
    remaining_ -= size;
  }

  // Buffer `need` bytes (< kPayloadBuffer, <= remaining_), and as many more
  // as fit unless reading ahead has failed before.
  void fill(std::size_t need) {
    if (!buf_) {
      // At most the payload's length (a tiny file gets a tiny buffer).
      cap_ = static_cast<std::size_t>(std::min<std::uint64_t>(kPayloadBuffer, remaining_));
      buf_.reset(new std::byte[cap_]);  // not zero-filled
    }
    const std::size_t want = read_ahead_ ? static_cast<std::size_t>(std::min<std::uint64_t>(cap_, remaining_)) : need;
    if (!decoder_->content_errors()) {
      // Uncompressed: one read of the file per buffer.
      decoder_->read(buf_.get(), want);
      decoded_ += want;
      pos_ = buf_.get();
      end_ = pos_ + want;
      return;
    }
    decoder_->read(buf_.get(), need);
    decoded_ += need;
    std::size_t got = need;
    const std::size_t ahead = want - need;
    if (ahead > 0) {
      try {
        decoder_->read(buf_.get() + need, ahead);
        decoded_ += ahead;
        got += ahead;
      } catch (...) {
        // A thread ending (pthread_cancel at the read, pthread_exit in a
        // progress callback) unwinds as an exception of no C++ type: it
        // must go on (foreign_exception()).
        if (foreign_exception()) throw;
        restart();
      }
    }
    pos_ = buf_.get();
    end_ = pos_ + got;
  }

  // After a failed read-ahead: a fresh decoder from the first stored byte,
  // advanced to decoded_ (the bytes the index has been given or holds in
  // the buffer), and no more reading ahead.
  void restart() {
    read_ahead_ = false;
    decoder_.reset();
    source_.rewind();
    decoder_ = make_decoder_();
    std::vector<std::byte> skip(static_cast<std::size_t>(std::min<std::uint64_t>(kPayloadBuffer, decoded_)));
    for (std::uint64_t left = decoded_; left > 0;) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, skip.size()));
      decoder_->read(skip.data(), n);
      left -= n;
    }
  }

  MakeDecoder make_decoder_;
  FileSource& source_;
  std::unique_ptr<codec::Decoder> decoder_;
  std::uint64_t length_;     // the payload's length
  std::uint64_t remaining_;  // payload bytes the index has not read yet
  std::uint64_t decoded_ = 0;  // payload bytes taken from the decoder
  const fs::path& path_;
  std::unique_ptr<std::byte[]> buf_;
  std::size_t cap_ = 0;
  const std::byte* pos_ = nullptr;  // the buffered bytes not yet read: [pos_, end_)
  const std::byte* end_ = nullptr;
  bool read_ahead_ = true;
  std::optional<std::uint64_t> map_at_;
  std::shared_ptr<const detail::MappedOrigin> mapped_origin_;
};

// The next `size` payload bytes, mapped: stored uncompressed, payload
// position p is file offset map_at_ + p. The bytes the buffer read ahead
// (already checksummed as read) must equal the mapped ones; the rest are
// checksummed in the mapping, so every byte the index keeps is covered by
// the CRC that read_snapshot checks before it returns.
MappedBlock SnapshotPayloadReader::map(std::size_t size, std::size_t reserve) {
  if (!map_at_ || size == 0 || size > remaining_) return {};
  const std::uint64_t at = *map_at_ + (length_ - remaining_);
  const std::uint64_t read_to = source_.position();  // == at + the buffered bytes
  const std::size_t buffered = static_cast<std::size_t>(end_ - pos_);
  if (read_to != at + buffered || buffered > size || at % detail::kMapPage != 0) return {};
  MappedBlock block = source_.file().map(at, size, reserve);
  if (!block) return {};
  if (buffered != 0 && std::memcmp(block.data(), pos_, buffered) != 0) {
    throw PersistError::at(ErrorKind::InvalidPayload, path_, "the file changed while being read", at);
  }
  source_.consume_in_place(block.data() + buffered, size - buffered);
  decoded_ += size - buffered;
  remaining_ -= size;
  pos_ = end_ = nullptr;
  mapped_origin_ = block.origin();
  return block;
}

void check_lengths(const FileHeader& h, const ReadLimits& limits, const fs::path& path) {
  if (h.uncompressed_len > limits.max_payload_bytes) {
    throw PersistError::at(ErrorKind::InvalidHeader, path,
                           "declared payload of " + std::to_string(h.uncompressed_len) +
                               " bytes exceeds the configured limit of " + std::to_string(limits.max_payload_bytes));
  }
  if (h.compression == CompressionScheme::None) {
    if (h.uncompressed_len != h.stored_len) {
      throw PersistError::at(ErrorKind::InvalidHeader, path,
                             "uncompressed payload declared as " + std::to_string(h.uncompressed_len) +
                                 " bytes, " + std::to_string(h.stored_len) + " are stored");
    }
    return;
  }
  // Decompression-bomb guard, before anything is decompressed.
  const std::uint64_t ratio = std::max<std::uint64_t>(limits.max_expansion_ratio, 1);
  if (h.uncompressed_len / ratio > h.stored_len ||
      (h.uncompressed_len / ratio == h.stored_len && h.uncompressed_len % ratio != 0)) {
    throw PersistError::at(ErrorKind::Compression, path,
                           "declared uncompressed length " + std::to_string(h.uncompressed_len) + " is more than " +
                               std::to_string(ratio) + " times the " + std::to_string(h.stored_len) +
                               " compressed bytes");
  }
}

FileHeader read_snapshot_impl(FileSystem& fs, const fs::path& path, std::string_view expected_type,
                              const ReadLimits& limits,
                              const std::function<void(PayloadReader&, const FileHeader&)>& body,
                              const FileSource::Progress& progress, bool map) {
  std::unique_ptr<ReadableFile> file = fs.open_read(path);
  const FileHeader h = format::read_header(*file);
  if (!expected_type.empty() && h.index_type != expected_type) {
    throw PersistError::index_type(path, h.index_type, std::string(expected_type));
  }
  FileSource source(*file, h.payload_offset, h.payload_offset + h.stored_len, progress);
  if (h.crc_offset < h.payload_offset) {
    // Version 2: the CRC covers the compression preamble too.
    std::vector<std::byte> pre(static_cast<std::size_t>(h.payload_offset - h.crc_offset));
    if (file->read_at(h.crc_offset, pre) != pre.size()) {
      throw PersistError::at(ErrorKind::TruncatedPayload, path, "the file shrank while being read");
    }
    source.seed_crc(pre);
  }
  const auto checksum_error = [&] {
    return PersistError::checksum(path, h.payload_crc, source.crc(), h.crc_offset);
  };

  try {
    // In v2 the lengths and the scheme sit in the CRC-covered preamble:
    // a failure here may be damage, which the CRC below tells apart. The
    // checks run before anything is decompressed.
    format::check_scheme(h, path);
    check_lengths(h, limits, path);
    // Stored uncompressed, payload and file bytes correspond one to one.
    const bool in_place = map && h.compression == CompressionScheme::None;
    SnapshotPayloadReader reader(
        [&] { return codec::make_decoder(h.compression, source, h.uncompressed_len, path); }, source,
        h.uncompressed_len, path, in_place ? std::optional(h.payload_offset) : std::nullopt);
    body(reader, h);
    if (reader.remaining() != 0) {
      throw PersistError::at(ErrorKind::InvalidPayload, path,
                             "the index left " + std::to_string(reader.remaining()) + " payload bytes unread");
    }
    reader.finish();
    source.drain();
    if (source.crc() != h.payload_crc) throw checksum_error();
    reader.check_mapped();
  } catch (const PersistError& e) {
    // Damage usually shows first as a decoding error; the checksum says
    // whether the bytes were corrupted (and takes precedence) or the file
    // was written that way.
    if (e.kind() != ErrorKind::Io) {
      source.drain();
      if (source.crc() != h.payload_crc) throw checksum_error();
    }
    if (e.path().empty()) throw e.with_path(path);
    throw;
  } catch (const std::exception& e) {
    source.drain();
    if (source.crc() != h.payload_crc) throw checksum_error();
    // Intact bytes. Out of memory, or no thread to be had, while decoding
    // them is not damage (the load can succeed when memory or threads are
    // free again): Io, never InvalidPayload.
    if (const int err = detail::resource_errno(e); err != 0) {
      throw detail::resource_error(path, "loading the snapshot", err);
    }
    throw PersistError::at(ErrorKind::InvalidPayload, path, std::string("decoding the payload failed: ") + e.what());
  } catch (...) {
    if (foreign_exception()) throw;  // a thread ending (pthread_exit, pthread_cancel)
    // An index type's load_from (a user's) threw something that is not a
    // std::exception: damage if the checksum says so, else the payload
    // is one this index type refuses, as for a std::exception.
    source.drain();
    if (source.crc() != h.payload_crc) throw checksum_error();
    throw PersistError::at(ErrorKind::InvalidPayload, path,
                           "decoding the payload failed: the index threw an exception that is not a std::exception");
  }
  return h;
}

}  // namespace

FileHeader read_snapshot(FileSystem& fs, const fs::path& path, std::string_view expected_type,
                         const ReadLimits& limits, const std::function<void(PayloadReader&, const FileHeader&)>& body,
                         bool map) {
  return read_snapshot_impl(fs, path, expected_type, limits, body, {}, map);
}

SnapshotSummary inspect_snapshot(FileSystem& fs, const fs::path& path) {
  std::unique_ptr<ReadableFile> file = fs.open_read(path);
  SnapshotSummary s{format::read_header(*file), file->size()};
  format::check_scheme(s.header, path);
  return s;
}

SnapshotSummary verify_snapshot(FileSystem& fs, const fs::path& path, const ReadLimits& limits,
                                const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
  const FileHeader h = read_snapshot_impl(
      fs, path, {}, limits,
      [&](PayloadReader& r, const FileHeader&) {
        std::vector<std::byte> buf(static_cast<std::size_t>(std::min<std::uint64_t>(r.remaining(), kDrainBuffer)));
        while (r.remaining() > 0) {
          r.read(buf.data(), static_cast<std::size_t>(std::min<std::uint64_t>(r.remaining(), buf.size())));
        }
      },
      progress, /*map=*/false);
  return SnapshotSummary{h, h.payload_offset + h.stored_len};
}

}  // namespace iqdb::persist
