// Which objects' read(f) runs on this thread (not a public API: the
// templates PersistedIndex and ReadReplica use it). A call from inside f back
// into the same object would wait for f's own read lock, or for a writer
// that waits for it: a deadlock. Such calls are refused instead
// (ErrorKind::InvalidArgument, before anything is logged or changed), and a
// nested read() runs its f at once, under the read lock already held.
#pragma once

#include <string>

#include "iqdb/persist/error.hpp"

namespace iqdb::persist::detail {

class ReadScope {
 public:
  // This thread runs f of `object`'s read() until destroyed.
  explicit ReadScope(const void* object) noexcept : object_(object), outer_(innermost_) { innermost_ = this; }
  ~ReadScope() { innermost_ = outer_; }
  ReadScope(const ReadScope&) = delete;
  ReadScope& operator=(const ReadScope&) = delete;

  // Whether this thread is inside read(f) of `object`.
  static bool active(const void* object) noexcept {
    for (const ReadScope* s = innermost_; s != nullptr; s = s->outer_) {
      if (s->object_ == object) return true;
    }
    return false;
  }

  // Throws InvalidArgument naming `call` when this thread is inside read(f)
  // of `object`.
  static void refuse(const void* object, const char* call) {
    if (!active(object)) return;
    throw PersistError(ErrorKind::InvalidArgument,
                       std::string(call) +
                           " was called from inside read() on the same object: it would wait for that read to "
                           "end, a deadlock; call it after read() returns");
  }

 private:
  const void* object_;
  const ReadScope* outer_;
  static inline thread_local const ReadScope* innermost_ = nullptr;
};

}  // namespace iqdb::persist::detail
