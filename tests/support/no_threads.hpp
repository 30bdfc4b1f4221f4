// A test program that compiles support/no_threads.cpp starts every thread
// through that file's pthread_create (std::thread and std::async call it
// through libstdc++), which refuses each one with EAGAIN while a NoThreads
// lives, as a process at its limit of threads sees. Only for a program of
// its own: every thread of the program is refused meanwhile, librados's
// and the test framework's included.
#pragma once

namespace iqdb::persist::test {

class NoThreads {
 public:
  NoThreads();  // from now on every pthread_create fails with EAGAIN
  ~NoThreads();
  NoThreads(const NoThreads&) = delete;
  NoThreads& operator=(const NoThreads&) = delete;
  // Threads refused since this one was made.
  long refused() const;
};

}  // namespace iqdb::persist::test
