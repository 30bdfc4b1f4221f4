// iqdb-persist inspect FILE [--json]: the header of a snapshot, any version
// and any index type, without reading the payload. FILE may be a RADOS
// location rados://POOL/NAME when the tool is built with the RADOS component
// (--ceph-conf PATH, else $CEPH_CONF; --client-id ID, default admin).
#include <memory>
#include <string>

#include "iqdb-persist/command.hpp"
#include "iqdb-persist/report.hpp"
#include "iqdb/persist/file_system.hpp"
#include "iqdb/persist/snapshot.hpp"
#ifdef IQDB_PERSIST_CLI_HAVE_RADOS
#include "iqdb/persist/rados.hpp"
#endif
#include "iqdb/persist/error.hpp"

namespace iqdb::persist::cli {
namespace {

struct InspectOptions {
  std::string file;
  bool json = false;
  std::string ceph_conf;
  std::string client_id = "admin";
};

SnapshotSummary inspect_any(const InspectOptions& opts) {
  if (opts.file.rfind("rados://", 0) != 0) return inspect_snapshot(default_file_system(), opts.file);
#ifdef IQDB_PERSIST_CLI_HAVE_RADOS
  RadosLocation loc = RadosLocation::parse(opts.file);
  loc.conf_path = opts.ceph_conf;
  loc.client_id = opts.client_id;
  auto store = RadosSnapshotStore::open(loc);
  return inspect_snapshot(*store, store->path_of(loc.name));
#else
  throw PersistError::at(ErrorKind::Unsupported, opts.file, "this iqdb-persist was built without RADOS support");
#endif
}

int inspect(const InspectOptions& opts, const Console& console) {
  // Errors propagate to run(): exit 2 when the file cannot be opened, 1 when damaged.
  const SnapshotSummary summary = inspect_any(opts);
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
  cmd.add_option("--ceph-conf", opts->ceph_conf, "rados://: the Ceph configuration (default: $CEPH_CONF, /etc/ceph/ceph.conf)")
      ->type_name("PATH");
  cmd.add_option("--client-id", opts->client_id, "rados://: the Ceph client id (user client.ID; default admin)")
      ->type_name("ID");
  cmd.add_flag("--json", opts->json,
               "Print one JSON object: format_version, index_type, dim, metric, n_vectors, crc32, "
               "compression, uncompressed_len, file_size, last_lsn (null before version 3)");
}

}  // namespace iqdb::persist::cli
