// Where a subcommand reads or writes an index: a local snapshot file or a
// RADOS location rados://POOL/NAME (internal to iqdb_persist_cli).
//
// The RADOS options (--ceph-conf, --client-id) are declared once here for
// every subcommand that takes a location; a build without the RADOS
// component refuses rados:// locations with ErrorKind::Unsupported.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include <CLI/CLI.hpp>

#include "iqdb/persist/config.hpp"
#include "iqdb/persist/file_system.hpp"

namespace iqdb::persist {
class RadosSnapshotStore;
}  // namespace iqdb::persist

namespace iqdb::persist::cli {

// How to reach a cluster: the options of every command that takes a
// rados:// location (one cluster per command line).
struct RadosArgs {
  std::string ceph_conf;  // empty: $CEPH_CONF, then Ceph's usual search
  std::string client_id = "admin";
};

// Declare --ceph-conf and --client-id on `cmd`, stored in `args`.
void add_rados_options(CLI::App& cmd, RadosArgs& args);

// True when `where` names a RADOS location (starts with "rados://").
bool is_rados(std::string_view where);

// An opened location: the FileSystem and the path to hand the snapshot
// functions (write_snapshot, read_snapshot, verify_snapshot). For RADOS it
// owns the connection (a RadosSnapshotStore).
class Location {
 public:
  // A local path as is; a rados:// location is parsed and connected to
  // (PersistError Io naming it when the cluster or the pool cannot be
  // reached, InvalidArgument when malformed, Unsupported without RADOS).
  static Location open(const std::string& where, const RadosArgs& args);

  Location(Location&&) noexcept;
  Location& operator=(Location&&) noexcept;
  ~Location();

  FileSystem& fs() const noexcept { return *fs_; }
  const std::filesystem::path& path() const noexcept { return path_; }
  // What the user wrote (for messages).
  const std::string& label() const noexcept { return label_; }
  bool rados() const noexcept { return owned_ != nullptr; }

  // Become the index's only writer for as long as the result lives: the
  // writer lock every PersistedIndex writer takes, through the same seam
  // (IndexStorage::lock_writer: PATH.lock, then the temporaries crashed
  // writers left are removed; in RADOS the RadosWriterLock of NAME, which
  // fences our publish, and the previous writer's log is sealed). Throws
  // PersistError(Locked) when a live writer holds it.
  std::unique_ptr<FileLock> lock_writer() const;

  // A PersistConfig for PersistedIndex at this location (RADOS: through
  // this location's client, rados_persist_config).
  PersistConfig config() const;
  // Where its snapshot and log live (the seam PersistedIndex uses).
  std::shared_ptr<IndexStorage> storage() const;

  // rados() only: the connected store and NAME of rados://POOL/NAME.
  RadosSnapshotStore& rados_store() const;
  const std::string& rados_name() const noexcept { return rados_name_; }

 private:
  Location() = default;
  std::shared_ptr<FileSystem> owned_;  // the RADOS store, when rados()
  FileSystem* fs_ = nullptr;
  std::filesystem::path path_;
  std::string label_;
  std::string rados_name_;  // NAME of rados://POOL/NAME
};

}  // namespace iqdb::persist::cli
