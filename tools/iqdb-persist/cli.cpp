// Command-line parsing (CLI11) and dispatch to the subcommands.
#include "iqdb-persist/cli.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <iostream>
#include <sstream>

#include "iqdb-persist/command.hpp"
#include "iqdb-persist/report.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/format.hpp"
#include "iqdb/persist/version.hpp"
#include "iqdb/persist/wal.hpp"

namespace iqdb::persist::cli {

CLI::App& CommandSet::subcommand(CLI::App& parent, const std::string& name) {
  const auto same_name = [&](CLI::App* app) { return app->get_name() == name; };
  if (const auto existing = parent.get_subcommands(same_name); !existing.empty()) return *existing.front();
  CLI::App* created = parent.add_subcommand(name);
  // A group is useless on its own: `iqdb-persist wal` asks for one of its subcommands.
  parent.require_subcommand(1);
  return *created;
}

CLI::App& CommandSet::group(std::string_view path, std::string description) {
  CLI::App* app = &root_;
  std::istringstream words{std::string(path)};
  for (std::string word; words >> word;) app = &subcommand(*app, word);
  app->description(std::move(description));
  return *app;
}

CLI::App& CommandSet::add(std::string_view path, std::string description, Action action) {
  CLI::App& app = group(path, std::move(description));
  actions_[&app] = std::move(action);
  return app;
}

const Action* CommandSet::chosen() const {
  const CLI::App* app = &root_;
  while (!app->get_subcommands().empty()) app = app->get_subcommands().front();
  const auto it = actions_.find(app);
  return it == actions_.end() ? nullptr : &it->second;
}

namespace {

void register_all(CommandSet& commands) {
#define IQDB_PERSIST_CLI_REGISTER(name) register_##name(commands);
  IQDB_PERSIST_CLI_COMMANDS(IQDB_PERSIST_CLI_REGISTER)
#undef IQDB_PERSIST_CLI_REGISTER
}

// What --version prints: the library's version and the format versions it
// writes and reads.
std::string version_text() {
  std::ostringstream o;
  o << "iqdb-persist " << VERSION << "\n"
    << "snapshot format: writes version " << format::CURRENT_VERSION << ", reads versions "
    << format::MIN_READ_VERSION << " to " << format::CURRENT_VERSION << "\n"
    << "write-ahead log format: writes version " << wal::CURRENT_VERSION << ", reads versions "
    << wal::MIN_READ_VERSION << " to " << wal::CURRENT_VERSION;
  return o.str();
}

int run_parsed(const Action& action, const Console& console) {
  try {
    return action(console);
  } catch (const PersistError& e) {
    return report_error(console.err, e);
  } catch (const std::exception& e) {
    console.err << "error: " << e.what() << "\n";
    return kExitFailed;
  }
}

// A command's output that could not all be written (a full disk, a closed
// pipe, /dev/full) is a failure: nothing downstream may take a cut-off
// report or JSON document for the whole. Exit 2 (Io), unless the command
// failed already.
int flushed(int status, std::ostream& out, std::ostream& err) {
  errno = 0;
  out.flush();
  if (out) return status;
  const int e = errno;
  err << "error: io: the output could not be written" << (e != 0 ? std::string(": ") + std::strerror(e) : "")
      << "; what was written is incomplete\n";
  return status == kExitOk ? kExitUsage : status;
}

int run_unflushed(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  try {
    CLI::App app{"Inspect, verify and demonstrate iQDB snapshot files.", "iqdb-persist"};
    app.set_version_flag("--version", version_text(),
                         "Print the version and the snapshot and log format versions it writes and reads");
    app.require_subcommand(1);
    app.footer(
        "Exit status: 0 success, 1 damaged file, locked index or failed check, 2 usage error (also a refused "
        "argument) or file that cannot be opened.");
    CommandSet commands(app);
    register_all(commands);

    // CLI11 would report "A subcommand is required" for a misspelt one, at
    // the top (`iqdb-persist dumo`) or below (`iqdb-persist wal dumb`).
    CLI::App* level = &app;
    for (const std::string& word : args) {
      if (level->get_subcommands([](CLI::App*) { return true; }).empty() || word.empty() || word.front() == '-') break;
      const auto found = level->get_subcommands([&](CLI::App* sub) { return sub->get_name() == word; });
      if (found.empty()) {
        err << "error: invalid_argument: Unknown subcommand: " << word << "\nRun with --help for more information.\n";
        return kExitUsage;
      }
      level = found.front();
    }
    try {
      std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 consumes from the back
      app.parse(reversed);
    } catch (const CLI::ParseError& e) {
      // --help and --version are "errors" with exit code 0. The others are
      // printed as every error is, "error: <kind>: <message>".
      if (e.get_exit_code() == 0) return app.exit(e, out, err) == 0 ? kExitOk : kExitUsage;
      err << "error: invalid_argument: " << e.what() << "\nRun with --help for more information.\n";
      return kExitUsage;
    }
    const Action* action = commands.chosen();
    if (action == nullptr) {
      err << app.help();
      return kExitUsage;
    }
    const bool interactive = &err == &std::cerr && ::isatty(STDERR_FILENO) == 1;
    return run_parsed(*action, Console{out, err, interactive});
  } catch (const std::exception& e) {
    err << "error: " << e.what() << "\n";
    return kExitFailed;
  }
}

}  // namespace

int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  return flushed(run_unflushed(args, out, err), out, err);
}

}  // namespace iqdb::persist::cli
