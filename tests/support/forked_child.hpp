// A child process that runs a piece of the test and reports back through a
// pipe: what it wrote there and how it ended. For checks that must happen
// in another process (a fork's view of an index, a resource limit set for
// one process) whose output the parent examines.
#pragma once

#include <functional>
#include <string>

namespace iqdb::persist::test {

struct ChildResult {
  int status = 0;       // as waitpid gives it (WIFEXITED, WEXITSTATUS, WTERMSIG)
  std::string report;   // every byte the child wrote to its report descriptor
};

// Fork; the child runs `body(report_fd)` and exits (_exit) with what it
// returns (90 if it throws). Fork while no other thread of the test runs
// where the child allocates: GCC 12's AddressSanitizer takes no allocator
// lock around fork(), so a child forked while another thread was inside
// malloc can wait for ever (docs/RELIABILITY.md). The parent reads the report until the child
// closes it (exits), then reaps the child. Throws std::system_error if the
// pipe or the fork cannot be made.
ChildResult run_in_child(const std::function<int(int report_fd)>& body);

}  // namespace iqdb::persist::test
