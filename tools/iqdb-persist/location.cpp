#include "iqdb-persist/location.hpp"

#include "iqdb/persist/detail/index_storage.hpp"
#include "iqdb/persist/error.hpp"
#ifdef IQDB_PERSIST_CLI_HAVE_RADOS
#include "iqdb/persist/rados.hpp"
#endif

namespace iqdb::persist::cli {
namespace {

constexpr std::string_view kRadosScheme = "rados://";

}  // namespace

void add_rados_options(CLI::App& cmd, RadosArgs& args) {
  cmd.add_option("--ceph-conf", args.ceph_conf,
                 "rados://: the Ceph configuration (default: $CEPH_CONF, /etc/ceph/ceph.conf)")
      ->type_name("PATH");
  cmd.add_option("--client-id", args.client_id, "rados://: the Ceph client id (user client.ID; default admin)")
      ->type_name("ID");
}

bool is_rados(std::string_view where) { return where.starts_with(kRadosScheme); }

Location::Location(Location&&) noexcept = default;
Location& Location::operator=(Location&&) noexcept = default;
Location::~Location() = default;

Location Location::open(const std::string& where, const RadosArgs& args) {
  Location l;
  l.label_ = where;
  if (!is_rados(where)) {
    if (where.empty()) throw PersistError::argument("an empty path names no file");
    l.fs_ = &default_file_system();
    l.path_ = where;
    return l;
  }
#ifdef IQDB_PERSIST_CLI_HAVE_RADOS
  RadosLocation loc = RadosLocation::parse(where);
  loc.conf_path = args.ceph_conf;
  loc.client_id = args.client_id;
  std::shared_ptr<RadosSnapshotStore> store = RadosSnapshotStore::open(loc);
  l.path_ = store->path_of(loc.name);
  l.rados_name_ = loc.name;
  l.fs_ = store.get();
  l.owned_ = std::move(store);
  return l;
#else
  (void)args;
  throw PersistError::at(ErrorKind::Unsupported, where, "this iqdb-persist was built without RADOS support");
#endif
}

std::unique_ptr<FileLock> Location::lock_writer() const { return storage()->lock_writer(); }

PersistConfig Location::config() const {
#ifdef IQDB_PERSIST_CLI_HAVE_RADOS
  if (rados()) return rados_persist_config(std::static_pointer_cast<RadosSnapshotStore>(owned_), rados_name_);
#endif
  return PersistConfig(path_);
}

RadosSnapshotStore& Location::rados_store() const {
#ifdef IQDB_PERSIST_CLI_HAVE_RADOS
  if (rados()) return *std::static_pointer_cast<RadosSnapshotStore>(owned_);
#endif
  throw PersistError::at(ErrorKind::Unsupported, path_, "not a RADOS location");
}

std::shared_ptr<IndexStorage> Location::storage() const {
  PersistConfig cfg = config();
  return cfg.storage ? cfg.storage : detail::make_local_storage(*fs_, path_);
}

}  // namespace iqdb::persist::cli
