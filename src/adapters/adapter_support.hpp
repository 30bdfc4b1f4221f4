// Internal pieces shared by the FAISS and hnswlib adapters (not an API, not
// installed): both adapters are compiled libraries (cmake/adapters.cmake).
#pragma once

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <cstddef>
#include <cstdint>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>

#include "iqdb/persist/error.hpp"
#include "util/huge_phase.hpp"

namespace iqdb::persist::adapters::detail {

// Which error a problem with an index is: a payload that decodes to it is
// damaged or crafted (InvalidPayload); an index handed to an adapter's
// constructor is unsupported (Unsupported) or invalid (InvalidArgument).
// `library` names the library in the message ("FAISS", "hnswlib").
struct Problems {
  const char* library;
  bool from_payload;
  [[noreturn]] void unsupported(const std::string& what) const {
    throw PersistError(from_payload ? ErrorKind::InvalidPayload : ErrorKind::Unsupported,
                       std::string(library) + " index: " + what);
  }
  [[noreturn]] void invalid(const std::string& what) const {
    throw PersistError(from_payload ? ErrorKind::InvalidPayload : ErrorKind::InvalidArgument,
                       std::string(library) + " index: " + what);
  }
};

// Advise the 2 MiB-aligned part of [p, p + n) for transparent huge pages
// (advisory; errors ignored).
inline void advise_huge_pages([[maybe_unused]] void* p, [[maybe_unused]] std::size_t n) noexcept {
#if defined(__linux__)
  using persist::detail::kHugePage;
  using persist::detail::round_up_to_huge;
  if (n < 2 * kHugePage) return;
  const std::uintptr_t begin = round_up_to_huge(reinterpret_cast<std::uintptr_t>(p));
  const std::uintptr_t end = (reinterpret_cast<std::uintptr_t>(p) + n) & ~std::uintptr_t{kHugePage - 1};
  if (end > begin) (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// Runs f, a call into the adapted library, and turns any exception it throws
// that is not a PersistError into one: `kind` with "<what>: <message>". The
// libraries throw their own types (faiss::FaissException, std::runtime_error
// from hnswlib) and std::bad_alloc / std::length_error for memory; none of
// them reaches the caller of an adapter.
template <class F>
decltype(auto) translate_exceptions(ErrorKind kind, const std::string& what, F&& f) {
  try {
    return f();
  } catch (const PersistError&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw PersistError(kind, what + ": out of memory");
  } catch (const std::exception& e) {
    throw PersistError(kind, what + ": " + e.what());
  } catch (...) {
    throw PersistError(kind, what + ": unknown exception");
  }
}

}  // namespace iqdb::persist::adapters::detail
