// iqdb-persist inspect FILE [--json]: the header of a snapshot, any version
// and any index type, without reading the payload. FILE may be a RADOS
// location rados://POOL/NAME when the tool is built with the RADOS component
// (--ceph-conf PATH, else $CEPH_CONF; --client-id ID, default admin).
#include <memory>
#include <string>

#include "iqdb-persist/command.hpp"
#include "iqdb-persist/location.hpp"
#include "iqdb-persist/report.hpp"
#include "iqdb/persist/snapshot.hpp"

namespace iqdb::persist::cli {
namespace {

struct InspectOptions {
  std::string file;
  bool json = false;
  RadosArgs rados;
};

int inspect(const InspectOptions& opts, const Console& console) {
  // Errors propagate to run(): exit 2 when the file cannot be opened, 1 when damaged.
  const Location where = Location::open(opts.file, opts.rados);
  const SnapshotSummary summary = inspect_snapshot(where.fs(), where.path());
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
  cmd.add_option("FILE", opts->file, "The snapshot file, or rados://POOL/NAME")->required()->type_name("PATH");
  add_rados_options(cmd, opts->rados);
  cmd.add_flag("--json", opts->json,
               "Print one JSON object: format_version, index_type, dim, metric, n_vectors, crc32, "
               "compression, uncompressed_len, file_size, last_lsn (null before version 3), mappable, "
               "saved_without_wal (null before version 3)");
}

}  // namespace iqdb::persist::cli
