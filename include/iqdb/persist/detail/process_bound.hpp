// Objects that belong to the process that made them (internal; docs/API.md,
// "fork()").
//
// A child of fork() inherits a copy of every object of its parent but none
// of its threads, and shares its parent's descriptors, file locks and RADOS
// client. An object that runs threads or owns a writer lock, a log or a
// RADOS client records the fork generation when it is made. In a child (a
// later generation) it keeps serving reads from its memory, refuses every
// call that would write, sync or talk to the storage with
// PersistError(Forked), and when dropped it is abandoned, not destroyed:
// destroying it would join threads that do not exist here, wait for locks
// whose holders are gone, release its parent's writer lock or shut its
// parent's cluster client down.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace iqdb::persist::detail {

// 0 in a process that is not a child of fork(); one more in each child (a
// pthread_atfork handler, installed when the library is loaded).
std::uint64_t fork_generation() noexcept;

// Throws PersistError(Forked) for `what` (a call, e.g. "a mutation") of an
// object opened at `path` by a parent process.
[[noreturn]] void throw_forked(const std::filesystem::path& path, std::string_view what);
// The text of that error (failure() of an inherited writer).
std::string forked_reason(std::string_view what);

class ProcessBound {
 public:
  ProcessBound() noexcept : born_(fork_generation()) {}
  // True in a child of fork() of the process that made the object.
  bool inherited() const noexcept { return fork_generation() != born_; }
  // throw_forked(path, what) when inherited().
  void refuse_if_inherited(const std::filesystem::path& path, std::string_view what) const {
    if (inherited()) throw_forked(path, what);
  }

 private:
  std::uint64_t born_;
};

}  // namespace iqdb::persist::detail
