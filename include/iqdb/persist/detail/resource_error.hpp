// Running out of memory or threads is not damage. A load that cannot get
// the memory for the index, or a thread, says nothing about the file: it
// is reported as ErrorKind::Io with the errno it stands for (ENOMEM,
// EAGAIN), never as a kind that calls the file damaged, and the same call
// can succeed once memory or threads are free again.
#pragma once

#include <exception>
#include <filesystem>
#include <string_view>
#include <system_error>

#include "iqdb/persist/error.hpp"

namespace iqdb::persist::detail {

// The errno a shortage reported by `e` stands for: ENOMEM for
// std::bad_alloc, the value of a std::system_error of the generic or
// system category (EAGAIN when no thread can be started); 0 for anything
// else (a std::ios_base::failure, of the iostream category, is a decoding
// error like any other).
int resource_errno(const std::exception& e) noexcept;

// Io with `err` (resource_errno's): "<doing> (not damage: the process ran
// out of memory or threads) failed: <strerror>", naming `path`.
PersistError resource_error(const std::filesystem::path& path, std::string_view doing, int err);

// Io for a thread of the library's that could not be started (`e`, from
// std::thread's constructor): "starting <thread> failed: <strerror>",
// naming `path`.
PersistError thread_error(const std::filesystem::path& path, std::string_view thread, const std::system_error& e);

}  // namespace iqdb::persist::detail
