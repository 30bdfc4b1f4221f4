// Messages for exceptions caught by `catch (...)`: code of the program's (an
// index type, a FileSystem) may throw anything, and a catch block that
// builds a message must not throw in turn (out of memory) where it runs on
// a thread of the library's or leaves state to restore.
#pragma once

#include <exception>
#include <string>

namespace iqdb::persist::detail {

// what() of a std::exception, else a fixed text. Never throws: when the
// text cannot be allocated, "out of memory" (short enough to need no
// allocation).
std::string exception_text(const std::exception_ptr& e) noexcept;

// Why writes are refused after a batch applied only in part, failing with
// `e`. Never throws, as exception_text.
std::string partial_batch_reason(const std::exception_ptr& e) noexcept;

}  // namespace iqdb::persist::detail
