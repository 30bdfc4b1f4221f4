// A child process that reports each acknowledged step through a pipe before
// the parent SIGKILLs it at an instant of its choosing (the crash tests of
// replica_test.cpp and write_batch_test.cpp): whatever the child reported
// was acknowledged to it, so the parent knows what a recovery must hold.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>

namespace iqdb::persist::test {

class AckingChild {
 public:
  // Reports one acknowledged value to the parent (in the child).
  using Ack = std::function<void(std::uint64_t)>;
  // Forks; the child runs body(ack) and never returns into the caller (it
  // exits when body returns or throws, or when the parent is gone).
  explicit AckingChild(const std::function<void(const Ack&)>& body);
  ~AckingChild();  // kills and reaps a child still running
  AckingChild(const AckingChild&) = delete;
  AckingChild& operator=(const AckingChild&) = delete;

  bool started() const noexcept { return pid_ > 0; }
  // The first value the child acknowledged (waits for it); nullopt when it
  // ended without one.
  std::optional<std::uint64_t> first_ack();
  // SIGKILL, at once (the child is reaped by last_ack()).
  void kill() noexcept;
  // Reaps the killed child and returns the last value it acknowledged
  // before dying (`acked` when it acknowledged nothing more).
  std::uint64_t last_ack(std::uint64_t acked);

 private:
  pid_t pid_ = -1;
  int from_ = -1;  // read end of the pipe
};

}  // namespace iqdb::persist::test
