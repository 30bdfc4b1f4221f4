#include "iqdb/persist/detail/process_bound.hpp"

#include <pthread.h>

#include <atomic>
#include <string>

#include "iqdb/persist/error.hpp"

namespace iqdb::persist::detail {
namespace {

std::atomic<std::uint64_t> g_generation{0};

void on_fork_child() noexcept { g_generation.fetch_add(1, std::memory_order_relaxed); }

}  // namespace

std::uint64_t fork_generation() noexcept {
  static const bool installed = ::pthread_atfork(nullptr, nullptr, on_fork_child) == 0;
  (void)installed;
  return g_generation.load(std::memory_order_relaxed);
}

namespace {
// Installed when the library is loaded, so before any object records its
// generation, and never lazily: a fork while another thread is inside the
// first call would leave the child waiting for ever on the static's guard,
// held by a thread that is not in the child.
[[maybe_unused]] const std::uint64_t g_installed_at_load = fork_generation();
}  // namespace

std::string forked_reason(std::string_view what) {
  return std::string(what) +
         " refused: the index (or RADOS client) was opened by the parent of this process (fork()); only the "
         "process that opened it writes, syncs, checkpoints or reads its storage through it. Open it anew in "
         "this process";
}

void throw_forked(const std::filesystem::path& path, std::string_view what) {
  throw PersistError::at(ErrorKind::Forked, path, forked_reason(what));
}

}  // namespace iqdb::persist::detail
