// Mapped blocks of snapshot files (file_mapping.hpp). The system calls of
// the mapped load are made here.
#include "fs/file_mapping.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <utility>

#include "iqdb/persist/error.hpp"
#include "util/huge_phase.hpp"

namespace iqdb::persist {
namespace detail {

// The mapped file, kept open, and what it looked like when it was mapped.
class MappedOrigin {
 public:
  MappedOrigin(int fd, std::filesystem::path path, const struct stat& st) noexcept
      : fd_(fd), path_(std::move(path)), size_(st.st_size), mtime_(st.st_mtim) {}
  MappedOrigin(const MappedOrigin&) = delete;
  MappedOrigin& operator=(const MappedOrigin&) = delete;
  ~MappedOrigin() { ::close(fd_); }

  // A write() or a truncation by anyone sets the modification time; a
  // rename over the path or an unlink does not (the inode is unchanged).
  void check() const {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) throw PersistError::io(path_, "fstat", errno);
    if (st.st_size != size_ || st.st_mtim.tv_sec != mtime_.tv_sec || st.st_mtim.tv_nsec != mtime_.tv_nsec) {
      throw PersistError::at(ErrorKind::InvalidPayload, path_,
                             "the mapped snapshot was written to or truncated in place since it was loaded "
                             "(size " + std::to_string(size_) + " -> " + std::to_string(st.st_size) +
                                 "): its vectors may no longer be the verified ones");
    }
  }
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  int fd_;
  std::filesystem::path path_;
  off_t size_;
  struct timespec mtime_;
};

void check_mapped_origin(const MappedOrigin& origin) { origin.check(); }
const std::filesystem::path& mapped_origin_path(const MappedOrigin& origin) noexcept { return origin.path(); }

namespace {

std::size_t round_up(std::size_t n, std::size_t to) noexcept { return (n + to - 1) / to * to; }

// The origin: a duplicate of fd and its state now; null when fd cannot be
// duplicated (the caller copies instead).
std::shared_ptr<const MappedOrigin> make_origin(int fd, const std::filesystem::path& path) {
  const int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return nullptr;
  struct stat st {};
  if (::fstat(dup, &st) != 0) {
    ::close(dup);
    return nullptr;
  }
  try {
    return std::make_shared<const MappedOrigin>(dup, path, st);
  } catch (...) {
    ::close(dup);  // not owned yet (out of memory)
    throw;
  }
}

}  // namespace

MappedBlock map_file_block(int fd, const std::filesystem::path& path, std::uint64_t offset, std::size_t size,
                           std::size_t reserve) {
  if (offset % kMapPage != 0 || size == 0) return {};
  auto origin = make_origin(fd, path);
  if (!origin) return {};
  const std::size_t file_part = round_up(size, kMapPage);
  const std::size_t total = round_up(std::max(reserve, size), kMapPage);
  // The whole range first (anonymous, address space only), then the file
  // over its start: growth lands in place, behind the file's bytes.
  // At an address equal to the file offset modulo 2 MiB: the file's bytes
  // can then be mapped by 2 MiB entries where the page cache holds them in
  // 2 MiB folios (the snapshot writer fills the file in aligned 2 MiB
  // writes): one entry instead of 512 to set up and walk, which was most of
  // what mapping cost (docs/PERFORMANCE.md, "Mapped load").
  void* const base = map_at_huge_phase(total, offset, MAP_NORESERVE);
  if (base == nullptr) return {};
  void* p = ::mmap(base, file_part, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) {
    ::munmap(base, total);
    return {};
  }
  MappedBlock block(static_cast<std::byte*>(base), size, total, std::move(origin));
  // Page tables for the file's pages, read-only (no copy), in one call; and
  // a file cut short meanwhile shows up here as EFAULT, not as SIGBUS at
  // the first read. EINVAL: a kernel before 5.14; the pages fault in as
  // they are read.
  if (::madvise(base, file_part, MADV_POPULATE_READ) != 0 && errno != EINVAL) {
    if (errno == EFAULT) {
      throw PersistError::at(ErrorKind::TruncatedPayload, path, "the file shrank while being mapped", offset + size);
    }
    return {};
  }
  return block;
}

}  // namespace detail

MappedBlock::MappedBlock(std::byte* data, std::size_t size, std::size_t reserved,
                         std::shared_ptr<const detail::MappedOrigin> origin) noexcept
    : data_(data), size_(size), reserved_(reserved), origin_(std::move(origin)) {}

MappedBlock::MappedBlock(MappedBlock&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      reserved_(std::exchange(o.reserved_, 0)),
      origin_(std::move(o.origin_)) {}

MappedBlock& MappedBlock::operator=(MappedBlock&& o) noexcept {
  if (this != &o) {
    if (data_ != nullptr) ::munmap(data_, reserved_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    reserved_ = std::exchange(o.reserved_, 0);
    origin_ = std::move(o.origin_);
  }
  return *this;
}

MappedBlock::~MappedBlock() {
  if (data_ != nullptr) ::munmap(data_, reserved_);
}

std::byte* MappedBlock::release() noexcept {
  size_ = reserved_ = 0;
  return std::exchange(data_, nullptr);
}

}  // namespace iqdb::persist
