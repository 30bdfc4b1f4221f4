#include "wal/log_writer.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "iqdb/persist/checksum.hpp"
#include "iqdb/persist/error.hpp"
#include "util/coding.hpp"
#include "util/first_error.hpp"
#include "wal/log_format.hpp"

namespace iqdb::persist::wal {

namespace {
constexpr std::uint64_t kMapWindow = std::uint64_t{4} << 20;
constexpr std::uint64_t kPage = 4096;
// Frames larger than this are written with write_at() even when appends go
// through the mapping: a copy into a mapping touches each page through a new
// user mapping, which costs a page fault per 4 KiB (measured: a 527 KB frame,
// a batch of 1000 dim-128 inserts, took ~0.4 ms to copy into the window
// against ~0.06 ms for pwrite), while for frames of a few hundred bytes the
// fault is shared by many frames and saves a system call each.
constexpr std::size_t kMapMaxFrame = std::size_t{16} << 10;
// datasync() drops synced pages from the page cache once this many have
// gathered (one system call per 64 KiB of log at most).
constexpr std::uint64_t kDropStep = std::uint64_t{64} << 10;
// The log open for appending, with its shared lock taken: held while the
// writer lives, so that `wal repair` (which takes it exclusively) refuses a
// log a writer has open, by whatever name it is asked to repair it.
std::unique_ptr<WritableFile> open_held(FileSystem& fs, const std::filesystem::path& path) {
  std::unique_ptr<WritableFile> f = fs.open_append(path);
  if (!f->try_lock(/*exclusive=*/false)) {
    throw PersistError::at(ErrorKind::Locked, path,
                           "another process is repairing this log (it holds the log file's lock)");
  }
  return f;
}
}  // namespace

std::unique_ptr<LogWriter> LogWriter::create(FileSystem& fs, const std::filesystem::path& path, std::uint64_t salt,
                                             std::uint64_t base_lsn) {
  const auto header = format::encode_v2_header(salt, base_lsn);
  // The first step of zero padding, unless the disk has no room for it: a
  // checkpoint on a nearly full disk then starts a log of its header alone,
  // which grows as any log does (a full disk under the padding is no
  // failure), instead of failing after its snapshot was published (which
  // refused every later write until a reopen).
  std::uint64_t ready = kLogFirstStep;
  replace_file_atomically(fs, path, /*durable=*/true, [&](WritableFile& f) {
    f.append(header);
    try {
      write_zeros(f, header.size(), kLogFirstStep);
    } catch (const PersistError& e) {
      if (!out_of_space(e)) throw;
      f.truncate(header.size());
      ready = header.size();
    }
  });
  return std::unique_ptr<LogWriter>(new LogWriter(fs, open_held(fs, path), salt, header.size(), ready));
}

std::unique_ptr<LogWriter> LogWriter::open(FileSystem& fs, const std::filesystem::path& path, std::uint64_t salt,
                                           std::uint64_t end, std::uint64_t file_size) {
  return std::unique_ptr<LogWriter>(new LogWriter(fs, open_held(fs, path), salt, end, std::max(end, file_size)));
}

void LogWriter::extend(std::uint64_t need, std::uint64_t bytes) {
  grower_.check();
  grower_.advance(need);
  grower_.reserve(need, bytes, *file_);
}

bool LogWriter::copy_to_map(std::span<const std::byte> frame) {
  const std::uint64_t need = end_ + frame.size();
  if (!map_ || end_ < map_at_ || need > map_at_ + map_->bytes().size()) {
    map_.reset();
    const std::uint64_t at = end_ / kPage * kPage;
    const std::uint64_t len = std::min(kMapWindow, grower_.ready() - at);
    if (need > at + len) return false;  // larger than a window
    map_ = file_->map_for_write(at, static_cast<std::size_t>(len));
    if (!map_) {
      use_map_ = false;  // not offered (or failing): plain writes from now on
      return false;
    }
    map_at_ = at;
  }
  std::memcpy(map_->bytes().data() + (end_ - map_at_), frame.data(), frame.size());
  return true;
}

void LogWriter::append(std::span<const std::byte> frame) {
  const LogPreallocator::Activity busy(grower_);
  const std::uint64_t need = end_ + frame.size();
  extend(need, frame.size());
  if (!use_map_ || frame.size() > kMapMaxFrame || !copy_to_map(frame)) file_->write_at(end_, frame);
  end_ = need;
  written_.store(need, std::memory_order_release);
}

void LogWriter::stage(std::span<const std::byte> frame) {
  staged_.insert(staged_.end(), frame.begin(), frame.end());
  end_ += frame.size();
}

void LogWriter::take_staged(Staged& out, std::uint64_t upto) {
  out.offset = end_ - staged_.size();
  detail::take_staged_prefix(staged_, out, upto);
}

void LogWriter::write_staged(const Staged& s) {
  if (s.bytes.empty()) return;
  const LogPreallocator::Activity busy(grower_);
  extend(s.offset + s.bytes.size(), s.bytes.size());
  file_->write_at(s.offset, s.bytes);
  written_.store(s.offset + s.bytes.size(), std::memory_order_release);
}

void LogWriter::datasync() {
  const LogPreallocator::Activity busy(grower_);
  grower_.check();
  // What was written before the fdatasync began is durable, and its pages
  // clean, once it returns (a write beside it lands at or after `written`).
  const std::uint64_t written = written_.load(std::memory_order_acquire);
  file_->datasync();
  drop_synced(written);
}

void LogWriter::drop_synced(std::uint64_t written) noexcept {
  const std::uint64_t from = dropped_.load(std::memory_order_relaxed);
  const std::uint64_t to = written / kPage * kPage;
  if (to < from + kDropStep) return;
  file_->drop_cached(from, to - from);
  dropped_.store(to, std::memory_order_relaxed);
}

void LogWriter::cut(std::uint64_t end) {
  staged_.clear();
  map_.reset();    // no mapping may reach past the end of the file
  grower_.stop();  // nor a zero-fill in flight
  file_->truncate(end);
  file_->sync();
  end_ = end;
  written_.store(end, std::memory_order_release);
  dropped_.store(std::min(dropped_.load(std::memory_order_relaxed), end / kPage * kPage), std::memory_order_relaxed);
  grower_.restart(end);
}

void LogWriter::close() {
  map_.reset();
  detail::FirstError first;
  first.run([&] { grower_.close(); });
  first.run([&] { file_->close(); });
  first.rethrow();
}

}  // namespace iqdb::persist::wal
