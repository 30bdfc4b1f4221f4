// How subcommands plug into the tool (internal to iqdb_persist_cli).
//
// Adding a subcommand takes one new file and two lines:
//   1. cmd_<name>.cpp defines `void register_<name>(CommandSet& commands)`,
//      which declares its options on the CLI11 app that commands.add()
//      returns and hands over the function that runs it;
//   2. X(<name>) in IQDB_PERSIST_CLI_COMMANDS below;
//   3. the file in tools/CMakeLists.txt's source list.
//
// Nested subcommands such as `wal dump` and `wal repair` are added by path:
// commands.add("wal dump", ...) creates the `wal` group on first use.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>

#include <CLI/CLI.hpp>

#include "iqdb-persist/cli.hpp"

namespace iqdb::persist::cli {

// Where a subcommand writes: `out` for its results, `err` for diagnostics.
struct Console {
  std::ostream& out;
  std::ostream& err;
  // True when a progress indicator may be drawn on `err` (a terminal).
  bool interactive = false;
};

// Runs a parsed subcommand and returns its exit code. A PersistError it lets
// escape is reported by run(): exit 2 for ErrorKind::Io, 1 otherwise.
using Action = std::function<int(const Console&)>;

class CommandSet {
 public:
  explicit CommandSet(CLI::App& root) : root_(root) {}
  CommandSet(const CommandSet&) = delete;
  CommandSet& operator=(const CommandSet&) = delete;

  // Add the subcommand at `path` (words separated by spaces: "inspect",
  // "wal dump") that runs `action`. Returns its CLI11 app, on which the
  // caller declares options; their storage must outlive the parse (keep it
  // in a shared_ptr captured by `action`).
  CLI::App& add(std::string_view path, std::string description, Action action);

  // Set the description of a group of subcommands (e.g. "wal"), creating it
  // if needed. Optional: add() creates groups on demand.
  CLI::App& group(std::string_view path, std::string description);

  // After a successful parse: the action of the subcommand chosen on the
  // command line, or nullptr.
  const Action* chosen() const;

 private:
  CLI::App& subcommand(CLI::App& parent, const std::string& name);

  CLI::App& root_;
  std::map<const CLI::App*, Action> actions_;
};

// Every subcommand, in the order --help lists them.
#define IQDB_PERSIST_CLI_COMMANDS(X) \
  X(inspect)                         \
  X(verify)                          \
  X(copy)                            \
  X(demo)                            \
  X(wal_dump)                        \
  X(wal_repair)                      \
  X(checkpoint)

#define IQDB_PERSIST_CLI_DECLARE_REGISTER(name) void register_##name(CommandSet& commands);
IQDB_PERSIST_CLI_COMMANDS(IQDB_PERSIST_CLI_DECLARE_REGISTER)
#undef IQDB_PERSIST_CLI_DECLARE_REGISTER

}  // namespace iqdb::persist::cli
