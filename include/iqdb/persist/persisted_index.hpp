// PersistedIndex: an index with durable, crash-safe persistence.
//
//   using namespace iqdb::persist;
//   PersistConfig cfg("vectors.iqdb");
//   auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(128, DistanceMetric::Cosine), cfg);
//   db.insert(42, vec);
//   db.save();                                            // atomic snapshot
//   auto again = PersistedIndex<FlatIndex>::load(cfg);    // verified load
#pragma once

#include <optional>
#include <span>
#include <utility>

#include "iqdb/persist/config.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/file_system.hpp"
#include "iqdb/persist/index.hpp"
#include "iqdb/persist/snapshot.hpp"

namespace iqdb::persist {

namespace detail {
inline FileSystem& fs_of(const PersistConfig& cfg) {
  return cfg.file_system != nullptr ? *cfg.file_system : default_file_system();
}
// Validates a config for this build (throws InvalidArgument / Unsupported).
void validate_config(const PersistConfig& cfg);
}  // namespace detail

// Thread safety: a PersistedIndex is not internally synchronised; like a
// standard container, concurrent const calls are safe and any mutation needs
// exclusive access.
template <Persistable I>
class PersistedIndex {
 public:
  // Wrap an in-memory index. Nothing is written until save() / checkpoint().
  static PersistedIndex open_with(I index, PersistConfig config) {
    detail::validate_config(config);
    return PersistedIndex(std::move(index), std::move(config));
  }

  // Load the snapshot at config.path: verified (header, checksum, index type,
  // and the rebuilt index agrees with the header's dim, metric and count).
  static PersistedIndex load(PersistConfig config) {
    detail::validate_config(config);
    std::optional<I> loaded;
    const FileHeader h = read_snapshot(detail::fs_of(config), config.path, I::index_type, config.limits,
                                       [&](PayloadReader& r, const FileHeader&) { loaded.emplace(I::load_from(r)); });
    check_against_header(*loaded, h, config.path);
    return PersistedIndex(std::move(*loaded), std::move(config));
  }

  const I& index() const noexcept { return index_; }
  // Direct access for operations PersistedIndex does not wrap. Changes made
  // through it are persisted by the next save() / checkpoint().
  I& index_mut() noexcept { return index_; }
  const PersistConfig& config() const noexcept { return config_; }

  // Validated first: a mutation the index would reject throws and changes nothing.
  void insert(const VectorId& id, std::span<const float> vec, std::optional<Metadata> meta = {}) {
    detail::check_insert(index_, id, vec, meta);
    index_.insert(id, vec, std::move(meta));
  }
  void erase(const VectorId& id) {
    detail::check_erase(index_, id);
    index_.erase(id);
  }

  // Write a snapshot atomically: the previous file stays intact until the new
  // one is complete (and, unless FsyncPolicy::Never, durable).
  FileHeader save() {
    const SnapshotInfo info{I::index_type, static_cast<std::uint64_t>(index_.dim()), index_.metric(),
                            static_cast<std::uint64_t>(index_.size()), 0};
    return write_snapshot(detail::fs_of(config_), config_.path, info, config_.compression,
                          config_.fsync_policy.mode() != FsyncPolicy::Mode::Never,
                          [this](PayloadWriter& w) { index_.save_to(w); });
  }
  // Without a write-ahead log, the same as save().
  FileHeader checkpoint() { return save(); }

 private:
  PersistedIndex(I index, PersistConfig config) : index_(std::move(index)), config_(std::move(config)) {}

  static void check_against_header(const I& index, const FileHeader& h, const std::filesystem::path& path) {
    const auto mismatch = [&](const char* field, std::uint64_t header, std::uint64_t payload) {
      throw PersistError::at(ErrorKind::InvalidPayload, path,
                             std::string("header says ") + field + " " + std::to_string(header) +
                                 ", the payload holds " + std::to_string(payload));
    };
    if (index.dim() != h.dim) mismatch("dim", h.dim, index.dim());
    if (index.metric() != h.metric)
      mismatch("metric", static_cast<std::uint64_t>(h.metric), static_cast<std::uint64_t>(index.metric()));
    if (index.size() != h.n_vectors) mismatch("n_vectors", h.n_vectors, index.size());
  }

  I index_;
  PersistConfig config_;
};

}  // namespace iqdb::persist
