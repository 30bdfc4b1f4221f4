// The iqdb-persist command-line tool, callable as a function.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace iqdb::persist::cli {

// Exit codes of every subcommand.
inline constexpr int kExitOk = 0;       // success: the file is intact, every check passed
inline constexpr int kExitFailed = 1;   // the file is damaged, or a check failed
inline constexpr int kExitUsage = 2;    // bad command line (InvalidArgument too), or a file that cannot be opened

// Run the tool. `args` are the command-line arguments without the program
// name, e.g. {"inspect", "vectors.iqdb", "--json"}. Normal output goes to
// `out`, diagnostics to `err`; returns the process exit code. Never throws.
// Output that could not all be written to `out` (flushed at the end) makes
// the exit code 2 (kExitUsage) when it would have been 0.
//
// A progress indicator is drawn only when `err` is std::cerr and standard
// error is a terminal, so callers passing their own streams never see one.
int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace iqdb::persist::cli
