// FirstError (src/util/first_error.hpp): every step of a close() runs, the
// first failure is thrown after the last step.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "util/first_error.hpp"

using iqdb::persist::detail::FirstError;

TEST(FirstError, NothingFailedThrowsNothing) {
  FirstError first;
  int ran = 0;
  first.run([&] { ++ran; });
  first.run([&] { ++ran; });
  EXPECT_EQ(ran, 2);
  EXPECT_NO_THROW(first.rethrow());
}

TEST(FirstError, EveryStepRunsAndTheFirstFailureIsThrown) {
  FirstError first;
  std::vector<std::string> ran;
  first.run([&] { ran.push_back("sync"); });
  first.run([&] {
    ran.push_back("close log");
    throw std::runtime_error("first");
  });
  first.run([&] {
    ran.push_back("close grower");
    throw std::logic_error("second");
  });
  first.run([&] { ran.push_back("unlock"); });
  EXPECT_EQ(ran, (std::vector<std::string>{"sync", "close log", "close grower", "unlock"}));
  try {
    first.rethrow();
    ADD_FAILURE() << "nothing thrown";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "first");
  }
  // Thrown again, the same failure, as often as asked.
  EXPECT_THROW(first.rethrow(), std::runtime_error);
}

TEST(FirstError, AKeptFailureCountsInOrder) {
  FirstError first;
  first.keep(std::make_exception_ptr(std::runtime_error("the worker's")));
  first.run([] { throw std::logic_error("the handle's"); });
  first.keep(nullptr);  // nothing: changes nothing
  try {
    first.rethrow();
    ADD_FAILURE() << "nothing thrown";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "the worker's");
  }
  FirstError none;
  none.keep(nullptr);
  EXPECT_NO_THROW(none.rethrow());
}
