// Internal: RAII over librados's C handles (write and read operations, aio
// completions, attribute iterators) and the attribute helpers, shared by the
// snapshot store (rados_store.cpp), the log (rados_log.cpp) and the writer
// lock.
#pragma once

#include <rados/librados.h>

#include <algorithm>
#include <cstddef>
#include <map>
#include <string>
#include <string_view>

namespace iqdb::persist::rados_detail {

// Whether a value read from RADOS may be quoted in a message or used as a
// name: visible ASCII only, no space, no control bytes.
inline bool printable(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}
// A value read from RADOS as a message shows it: quoted when printable and at
// most `max_quoted` bytes, else described by its size only.
inline std::string shown(std::string_view v, std::size_t max_quoted) {
  if (v.size() <= max_quoted && printable(v)) return "'" + std::string(v) + "'";
  return "(" + std::to_string(v.size()) + " bytes, not shown)";
}

// RAII over librados's C handles.
struct WriteOp {
  rados_write_op_t op = rados_create_write_op();
  WriteOp() = default;
  WriteOp(const WriteOp&) = delete;
  WriteOp& operator=(const WriteOp&) = delete;
  ~WriteOp() { rados_release_write_op(op); }
};
struct ReadOp {
  rados_read_op_t op = rados_create_read_op();
  ReadOp() = default;
  ReadOp(const ReadOp&) = delete;
  ReadOp& operator=(const ReadOp&) = delete;
  ~ReadOp() { rados_release_read_op(op); }
};

// An aio completion, released when destroyed (after waiting, once submitted:
// librados must not write into buffers that are gone).
struct Completion {
  rados_completion_t c = nullptr;
  bool submitted = false;  // set once librados has the operation
  Completion() { (void)rados_aio_create_completion2(nullptr, nullptr, &c); }
  Completion(const Completion&) = delete;
  Completion& operator=(const Completion&) = delete;
  ~Completion() {
    if (submitted) (void)rados_aio_wait_for_complete(c);
    rados_aio_release(c);
  }
  int wait() {
    (void)rados_aio_wait_for_complete(c);
    return rados_aio_get_return_value(c);
  }
};

// An object's attributes, read by a read operation they were added to.
struct Xattrs {
  rados_xattrs_iter_t iter = nullptr;
  int rv = 0;
  Xattrs() = default;
  Xattrs(const Xattrs&) = delete;
  Xattrs& operator=(const Xattrs&) = delete;
  ~Xattrs() {
    if (iter != nullptr) rados_getxattrs_end(iter);
  }
  void add_to(ReadOp& op) { rados_read_op_getxattrs(op.op, &iter, &rv); }
  // After the operation succeeded. Each value is copied up to 4097 bytes:
  // this project's attributes are a few bytes (16 hex digits, a client
  // address), so a longer one is cut, still too long for any check to pass
  // (librados has already received it whole; no more copies of it).
  std::map<std::string, std::string> values() {
    std::map<std::string, std::string> out;
    for (;;) {
      const char* name = nullptr;
      const char* value = nullptr;
      std::size_t len = 0;
      if (rados_getxattrs_next(iter, &name, &value, &len) != 0 || name == nullptr) break;
      out[name] = std::string(value, std::min<std::size_t>(len, 4097));
    }
    return out;
  }
};

inline void set_xattr(WriteOp& op, const char* name, const std::string& value) {
  rados_write_op_setxattr(op.op, name, value.data(), value.size());
}
inline void cmp_xattr(WriteOp& op, const char* name, const std::string& value) {
  rados_write_op_cmpxattr(op.op, name, LIBRADOS_CMPXATTR_OP_EQ, value.data(), value.size());
}

}  // namespace iqdb::persist::rados_detail
