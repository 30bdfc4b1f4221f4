#include "iqdb/persist/error.hpp"

#include <cerrno>
#include <cstring>
#include <new>
#include <system_error>
#include <sstream>

#include "iqdb/persist/detail/resource_error.hpp"

namespace iqdb::persist {

std::string_view to_string(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::Io: return "io";
    case ErrorKind::BadMagic: return "bad_magic";
    case ErrorKind::UnsupportedVersion: return "unsupported_version";
    case ErrorKind::ChecksumMismatch: return "checksum_mismatch";
    case ErrorKind::TruncatedHeader: return "truncated_header";
    case ErrorKind::TruncatedPayload: return "truncated_payload";
    case ErrorKind::InvalidMetric: return "invalid_metric";
    case ErrorKind::InvalidIndexType: return "invalid_index_type";
    case ErrorKind::InvalidHeader: return "invalid_header";
    case ErrorKind::InvalidPayload: return "invalid_payload";
    case ErrorKind::Compression: return "compression";
    case ErrorKind::Unsupported: return "unsupported";
    case ErrorKind::Locked: return "locked";
    case ErrorKind::InvalidArgument: return "invalid_argument";
    case ErrorKind::DuplicateId: return "duplicate_id";
    case ErrorKind::IdNotFound: return "id_not_found";
    case ErrorKind::CorruptLog: return "corrupt_log";
    case ErrorKind::Poisoned: return "poisoned";
    case ErrorKind::WouldLoseWrites: return "would_lose_writes";
    case ErrorKind::Fenced: return "fenced";
    case ErrorKind::Forked: return "forked";
  }
  return "unknown";
}

namespace {

std::string compose(ErrorKind kind, const std::string& detail, const std::filesystem::path& path,
                    std::optional<std::uint64_t> offset) {
  std::string s(to_string(kind));
  s += ": ";
  s += detail;
  if (!path.empty()) {
    s += " (file ";
    s += path.string();
    if (offset) s += ", offset " + std::to_string(*offset);
    s += ")";
  } else if (offset) {
    s += " (offset " + std::to_string(*offset) + ")";
  }
  return s;
}

std::string hex32(std::uint32_t v) {
  std::ostringstream o;
  o << "0x" << std::hex;
  o.width(8);
  o.fill('0');
  o << v;
  return o.str();
}

}  // namespace

PersistError::PersistError(ErrorKind kind, std::string message)
    : std::runtime_error(compose(kind, message, {}, std::nullopt)), kind_(kind), detail_(std::move(message)) {}

PersistError PersistError::io(const std::filesystem::path& path, std::string_view operation, int err) {
  std::string detail(operation);
  detail += " failed: ";
  detail += std::generic_category().message(err);  // thread-safe, unlike strerror
  PersistError e = at(ErrorKind::Io, path, std::move(detail));
  e.errno_ = err;
  return e;
}

PersistError PersistError::at(ErrorKind kind, const std::filesystem::path& path, std::string detail,
                              std::optional<std::uint64_t> offset) {
  PersistError e(kind, detail);
  static_cast<std::runtime_error&>(e) = std::runtime_error(compose(kind, detail, path, offset));
  e.path_ = path;
  e.offset_ = offset;
  return e;
}

PersistError PersistError::checksum(const std::filesystem::path& path, std::uint32_t expected,
                                    std::uint32_t computed, std::optional<std::uint64_t> offset,
                                    std::string_view what) {
  PersistError e = at(ErrorKind::ChecksumMismatch, path,
                      std::string(what) + " CRC-32 stored " + hex32(expected) + ", computed " + hex32(computed),
                      offset);
  e.expected_crc_ = expected;
  e.computed_crc_ = computed;
  return e;
}

PersistError PersistError::index_type(const std::filesystem::path& path, std::string found, std::string expected) {
  PersistError e = at(ErrorKind::InvalidIndexType, path,
                      "the snapshot holds index type '" + found + "', expected '" + expected + "'");
  e.found_ = std::move(found);
  e.expected_ = std::move(expected);
  return e;
}

PersistError PersistError::argument(std::string detail) {
  return PersistError(ErrorKind::InvalidArgument, std::move(detail));
}

PersistError PersistError::with_path(const std::filesystem::path& path) const {
  PersistError e = *this;
  static_cast<std::runtime_error&>(e) = std::runtime_error(compose(kind_, detail_, path, offset_));
  e.path_ = path;
  return e;
}

}  // namespace iqdb::persist

namespace iqdb::persist::detail {

namespace {
// Short enough for the small-string buffer: constructing it allocates nothing.
constexpr const char* kOutOfMemory = "out of memory";
}  // namespace

std::string exception_text(const std::exception_ptr& e) noexcept {
  try {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      return ex.what();
    } catch (...) {
      return "an exception that is not a std::exception";
    }
  } catch (...) {
    return kOutOfMemory;
  }
}

std::string partial_batch_reason(const std::exception_ptr& e) noexcept {
  try {
    return "a batch was applied only in part (" + exception_text(e) + "); reopen the index";
  } catch (...) {
    return kOutOfMemory;
  }
}

int resource_errno(const std::exception& e) noexcept {
  if (dynamic_cast<const std::bad_alloc*>(&e) != nullptr) return ENOMEM;
  if (const auto* s = dynamic_cast<const std::system_error*>(&e)) {
    const std::error_category& c = s->code().category();
    if (c == std::generic_category() || c == std::system_category()) return s->code().value();
  }
  return 0;
}

PersistError resource_error(const std::filesystem::path& path, std::string_view doing, int err) {
  std::string operation(doing);
  operation += " (not damage: the process ran out of memory or threads)";
  return PersistError::io(path, operation, err);
}

PersistError thread_error(const std::filesystem::path& path, std::string_view thread, const std::system_error& e) {
  const int err = resource_errno(e);
  std::string operation = "starting ";
  operation += thread;
  return PersistError::io(path, operation, err != 0 ? err : EAGAIN);
}

}  // namespace iqdb::persist::detail
