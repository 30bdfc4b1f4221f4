// Running the iqdb-persist command line in-process, for the tests that link
// the CLI library (cli_test, cli_wal_test, adapter_cli_test).
#pragma once

#include <sstream>
#include <string>
#include <vector>

#include "iqdb-persist/cli.hpp"

namespace iqdb::persist::test {

struct CliResult {
  int code;
  std::string out;
  std::string err;
};

// `args` without the program name; what the command printed, and its exit code.
inline CliResult run_cli(const std::vector<std::string>& args) {
  std::ostringstream out;
  std::ostringstream err;
  const int code = cli::run(args, out, err);
  return {code, out.str(), err.str()};
}

}  // namespace iqdb::persist::test
