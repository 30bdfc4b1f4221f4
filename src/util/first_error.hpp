// FirstError: try every step of a shutdown, throw the first failure after (internal).
#pragma once

#include <exception>
#include <utility>

namespace iqdb::persist::detail {

// For a close() that must try every step (sync, then close each handle,
// then let go of a lock) even when one fails, and report the first failure
// once all have run:
//
//   FirstError first;
//   first.run([&] { file_->datasync(); });
//   first.run([&] { file_->close(); });
//   first.rethrow();
class FirstError {
 public:
  // Run `step`; keep what it throws if nothing failed before.
  template <class Step>
  void run(Step&& step) noexcept {
    try {
      std::forward<Step>(step)();
    } catch (...) {
      keep(std::current_exception());
    }
  }
  // A failure found otherwise (a worker thread's, say).
  void keep(std::exception_ptr failure) noexcept {
    if (!first_) first_ = std::move(failure);
  }
  // Throw the first failure, if any.
  void rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::exception_ptr first_;
};

}  // namespace iqdb::persist::detail
