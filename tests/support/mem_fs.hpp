// In-memory files for the corruption and garbage tests, which load thousands
// of variants of a file: served from memory, without disk I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <vector>

#include "iqdb/persist/file_system.hpp"

namespace iqdb::persist::test {

// A read-only file over shared bytes (never copied per open).
class MemReadableFile final : public ReadableFile {
 public:
  MemReadableFile(std::filesystem::path p, std::shared_ptr<const std::vector<std::byte>> bytes)
      : path_(std::move(p)), bytes_(std::move(bytes)) {}
  std::size_t read_at(std::uint64_t off, std::span<std::byte> dst) const override;
  std::uint64_t size() const noexcept override { return bytes_->size(); }
  const std::filesystem::path& path() const noexcept override { return path_; }

 private:
  std::filesystem::path path_;
  std::shared_ptr<const std::vector<std::byte>> bytes_;
};

// Serves one file, at `path`, from memory (the bytes last set()); every other
// call goes to `target`, the real file system by default.
class SingleFileMemFs final : public FileSystemWrapper {
 public:
  explicit SingleFileMemFs(std::filesystem::path path, FileSystem& target = default_file_system())
      : FileSystemWrapper(target), path_(std::move(path)) {}
  const std::filesystem::path& path() const noexcept { return path_; }
  void set(std::vector<std::byte> b) { bytes_ = std::make_shared<const std::vector<std::byte>>(std::move(b)); }

  std::unique_ptr<ReadableFile> open_read(const std::filesystem::path& p) override;
  bool exists(const std::filesystem::path& p) override { return p == path_ || target().exists(p); }

 private:
  std::filesystem::path path_;
  std::shared_ptr<const std::vector<std::byte>> bytes_ = std::make_shared<const std::vector<std::byte>>();
};

}  // namespace iqdb::persist::test
