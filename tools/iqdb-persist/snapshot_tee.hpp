// Read a snapshot once, through one open handle, and copy exactly the bytes
// that were read (internal to iqdb_persist_cli; used by `copy`).
//
// OpenFileSystem serves open_read(path) from a file opened already, so that
// inspect_snapshot and verify_snapshot check the very handle that is copied
// (no second open that a concurrent save could point at another file). With
// a sink, every byte the reader reads for the first time is appended to the
// sink, in file order: when verify_snapshot returns, the sink holds the
// bytes it verified, byte for byte.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>

#include "iqdb/persist/file_system.hpp"

namespace iqdb::persist::cli {

// Tracks what a tee wrote to its sink, and whether the sink failed (so that
// a caller can tell a damaged source from a failing destination).
struct TeeState {
  std::uint64_t written = 0;
  bool sink_failed = false;
};

class OpenFileSystem final : public FileSystemWrapper {
 public:
  // `file` and `sink` (may be null: no copy) must outlive this object.
  OpenFileSystem(FileSystem& target, const ReadableFile& file, WritableFile* sink, TeeState& state)
      : FileSystemWrapper(target), file_(file), sink_(sink), state_(state) {}

  std::unique_ptr<ReadableFile> open_read(const std::filesystem::path& path) override;

  // After the reader is done: the sink must hold the whole file (a reader
  // that accepted the file read all of it). Throws InvalidPayload naming
  // the file otherwise.
  void check_complete() const;

 private:
  const ReadableFile& file_;
  WritableFile* sink_;
  TeeState& state_;
};

}  // namespace iqdb::persist::cli
