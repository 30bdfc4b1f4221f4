#include "support/mem_fs.hpp"

#include <algorithm>
#include <cstring>

namespace iqdb::persist::test {

std::size_t MemReadableFile::read_at(std::uint64_t off, std::span<std::byte> dst) const {
  if (off >= bytes_->size()) return 0;
  const std::size_t n = std::min<std::size_t>(dst.size(), bytes_->size() - static_cast<std::size_t>(off));
  if (n > 0) std::memcpy(dst.data(), bytes_->data() + off, n);
  return n;
}

std::unique_ptr<ReadableFile> SingleFileMemFs::open_read(const std::filesystem::path& p) {
  if (p == path_) return std::make_unique<MemReadableFile>(p, bytes_);
  return target().open_read(p);
}

}  // namespace iqdb::persist::test
