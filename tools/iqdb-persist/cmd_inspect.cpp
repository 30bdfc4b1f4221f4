// iqdb-persist inspect FILE [--json]: the header of a snapshot, any version
// and any index type, without reading the payload.
#include <memory>
#include <string>

#include "iqdb-persist/command.hpp"
#include "iqdb-persist/report.hpp"
#include "iqdb/persist/file_system.hpp"
#include "iqdb/persist/snapshot.hpp"

namespace iqdb::persist::cli {
namespace {

struct InspectOptions {
  std::string file;
  bool json = false;
};

int inspect(const InspectOptions& opts, const Console& console) {
  // Errors propagate to run(): exit 2 when the file cannot be opened, 1 when damaged.
  const SnapshotSummary summary = inspect_snapshot(default_file_system(), opts.file);
  if (opts.json) {
    console.out << header_json(summary) << '\n';
  } else {
    print_header(console.out, summary);
  }
  return kExitOk;
}

}  // namespace

void register_inspect(CommandSet& commands) {
  auto opts = std::make_shared<InspectOptions>();
  CLI::App& cmd = commands.add("inspect", "Print the header of a snapshot (format version 1, 2 or 3, any index type)",
                               [opts](const Console& console) { return inspect(*opts, console); });
  cmd.add_option("FILE", opts->file, "The snapshot file")->required()->type_name("PATH");
  cmd.add_flag("--json", opts->json,
               "Print one JSON object: format_version, index_type, dim, metric, n_vectors, crc32, "
               "compression, uncompressed_len, file_size");
}

}  // namespace iqdb::persist::cli
