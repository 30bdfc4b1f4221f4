// FunctionRef: a non-owning, non-allocating reference to a callable (not a
// public API: the WAL engine's callbacks into PersistedIndex).
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

namespace iqdb::persist::detail {

// A non-owning reference to a callable (no allocation, unlike
// std::function): for callbacks that do not outlive the call they are passed to.
template <class Sig>
class FunctionRef;

template <class R, class... Args>
class FunctionRef<R(Args...)> {
 public:
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef>)
  FunctionRef(F&& f) noexcept  // NOLINT: implicit by design
      : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* o, Args... a) -> R { return (*static_cast<std::remove_reference_t<F>*>(o))(std::forward<Args>(a)...); }) {}
  R operator()(Args... a) const { return call_(obj_, std::forward<Args>(a)...); }

 private:
  void* obj_;
  R (*call_)(void*, Args...);
};

}  // namespace iqdb::persist::detail
