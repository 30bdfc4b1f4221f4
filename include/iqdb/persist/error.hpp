// The single exception type of iqdb-persist.
//
// Every failure the library reports is a PersistError. Its kind() says what
// went wrong in a way a program can branch on; what() is a sentence for a
// human that names the file (and, for corruption, the byte offset).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>

namespace iqdb::persist {

// What went wrong. New kinds may be added in minor releases: a switch over
// ErrorKind should have a default branch.
enum class ErrorKind {
  Io,                  // a system call failed; sys_errno() holds errno
  BadMagic,            // the file does not start with the expected magic
  UnsupportedVersion,  // format version this build does not read
  ChecksumMismatch,    // stored CRC != computed CRC (expected_crc(), computed_crc())
  TruncatedHeader,     // the file ends inside its header
  TruncatedPayload,    // the file or the decoded payload ends too early
  InvalidMetric,       // a metric tag outside 0..4
  InvalidIndexType,    // the snapshot holds another index type (found(), expected())
  InvalidHeader,       // a header field is out of range or inconsistent
  InvalidPayload,      // the payload is structurally wrong (reason in what())
  Compression,         // compressing or decompressing failed
  Unsupported,         // a feature or flag this build or index does not support
  Locked,              // another writer holds the index open
  InvalidArgument,     // the caller passed something invalid (wrong dim, bad config)
  DuplicateId,         // insert of an id that is already present
  IdNotFound,          // erase of an id that is not present
  CorruptLog,          // a write-ahead log frame is damaged in the middle of the log, records are
                       // missing (an LSN gap, a snapshot older than its log), or a record does
                       // not apply to the snapshot
  Poisoned,            // an earlier durability failure makes further writes unsafe
  WouldLoseWrites,     // a save without the WAL would replace or orphan acknowledged writes
                       // the files hold and the index lacks (log records, a newer snapshot);
                       // what() names the file and the LSNs (PersistConfig::discard_log)
  Fenced,              // a newer writer took over; this writer can never write again
  Forked,              // the index or client was opened by the parent of this process (fork()):
                       // a child reads through it but never writes, syncs or reaches the storage
};

// The stable lower-case name of a kind, e.g. "checksum_mismatch".
std::string_view to_string(ErrorKind kind) noexcept;

class PersistError : public std::runtime_error {
 public:
  PersistError(ErrorKind kind, std::string message);

  ErrorKind kind() const noexcept { return kind_; }

  // The file the error is about (empty when none).
  const std::filesystem::path& path() const noexcept { return path_; }
  // errno of the failed system call (Io only; 0 otherwise).
  int sys_errno() const noexcept { return errno_; }
  // Byte offset in the file where corruption was found, when known.
  std::optional<std::uint64_t> offset() const noexcept { return offset_; }
  // ChecksumMismatch: the stored and the computed CRC.
  std::uint32_t expected_crc() const noexcept { return expected_crc_; }
  std::uint32_t computed_crc() const noexcept { return computed_crc_; }
  // InvalidIndexType: the tag found in the file and the one expected.
  const std::string& found() const noexcept { return found_; }
  const std::string& expected() const noexcept { return expected_; }

  // Builders. Each composes what() from the kind, the detail and the path.
  static PersistError io(const std::filesystem::path& path, std::string_view operation, int err);
  static PersistError at(ErrorKind kind, const std::filesystem::path& path, std::string detail,
                         std::optional<std::uint64_t> offset = std::nullopt);
  static PersistError checksum(const std::filesystem::path& path, std::uint32_t expected,
                               std::uint32_t computed, std::optional<std::uint64_t> offset,
                               std::string_view what = "payload");
  static PersistError index_type(const std::filesystem::path& path, std::string found,
                                 std::string expected);
  static PersistError argument(std::string detail);

  // A copy of this error with `path` attached (used when a lower layer that
  // does not know the file name raised it).
  PersistError with_path(const std::filesystem::path& path) const;

 private:
  ErrorKind kind_;
  std::filesystem::path path_;
  int errno_ = 0;
  std::optional<std::uint64_t> offset_;
  std::uint32_t expected_crc_ = 0;
  std::uint32_t computed_crc_ = 0;
  std::string found_;
  std::string expected_;
  std::string detail_;
};

}  // namespace iqdb::persist
