#include "support/acking_child.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

namespace iqdb::persist::test {

namespace {
constexpr int kExitPipeGone = 3;  // the parent stopped reading
constexpr int kExitThrew = 4;

bool read_value(int fd, std::uint64_t& v) { return ::read(fd, &v, sizeof v) == static_cast<ssize_t>(sizeof v); }
}  // namespace

AckingChild::AckingChild(const std::function<void(const Ack&)>& body) {
  int fds[2];
  if (::pipe(fds) != 0) return;
  pid_ = ::fork();
  if (pid_ == 0) {
    ::close(fds[0]);
    const int to = fds[1];
    try {
      body([to](std::uint64_t v) {
        if (::write(to, &v, sizeof v) != static_cast<ssize_t>(sizeof v)) ::_exit(kExitPipeGone);
      });
    } catch (...) {
      ::_exit(kExitThrew);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  from_ = fds[0];
  if (pid_ < 0) {
    ::close(from_);
    from_ = -1;
  }
}

AckingChild::~AckingChild() {
  if (pid_ > 0) {
    kill();
    ::waitpid(pid_, nullptr, 0);
  }
  if (from_ >= 0) ::close(from_);
}

std::optional<std::uint64_t> AckingChild::first_ack() {
  std::uint64_t v = 0;
  if (from_ < 0 || !read_value(from_, v)) return std::nullopt;
  return v;
}

void AckingChild::kill() noexcept {
  if (pid_ > 0) ::kill(pid_, SIGKILL);
}

std::uint64_t AckingChild::last_ack(std::uint64_t acked) {
  if (pid_ > 0) {
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  std::uint64_t got = 0;
  while (from_ >= 0 && read_value(from_, got)) acked = got;
  return acked;
}

}  // namespace iqdb::persist::test
