// The index seam: what an index must offer to be persisted.
#pragma once

#include <concepts>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "iqdb/persist/io.hpp"
#include "iqdb/persist/types.hpp"

namespace iqdb::persist {

// An in-memory vector index.
//   insert(id, vector, metadata): adds a vector; an existing id or a vector of
//     the wrong dimension is an error (PersistError).
//   erase(id): removes a vector; a missing id is an error.
//   contains(id), size(), dim(), metric().
template <class I>
concept Index = requires(I& index, const I& cindex, const VectorId& id, std::span<const float> vec,
                         std::optional<Metadata> meta) {
  index.insert(id, vec, std::move(meta));
  index.erase(id);
  { cindex.contains(id) } -> std::convertible_to<bool>;
  { cindex.size() } -> std::convertible_to<std::uint64_t>;
  { cindex.dim() } -> std::convertible_to<std::uint64_t>;
  { cindex.metric() } -> std::convertible_to<DistanceMetric>;
};

// An index that can be persisted by iqdb-persist.
//   I::index_type: a stable tag written into the snapshot header ("flat").
//   save_to(writer): writes the index's own payload, nothing else.
//   I::load_from(reader): rebuilds the index; treats every byte as hostile
//     (counts checked with reader.read_count / remaining()) and reports
//     problems with reader.fail() or by throwing PersistError.
//   Other exceptions thrown by load_from, or by insert / erase while load()
//   replays the log (or a ReadReplica's catch_up() applies it), reach the
//   caller as PersistError naming the file:
//   std::bad_alloc and std::system_error for no thread as Io (not damage),
//   anything else (a std::exception or not) as InvalidPayload for the
//   snapshot and CorruptLog for the log's record; a checksum mismatch takes
//   precedence over both.
//
// Optional hooks, used when present:
//   validate_insert(id, vec, meta) / validate_erase(id): throw PersistError if
//     the index cannot take this mutation for a reason of its own (say, an
//     index type that cannot erase: ErrorKind::Unsupported), without changing
//     the index. The library checks the dimension and the presence or absence
//     of the id itself (accounting for mutations logged but not yet applied),
//     then calls these, all before anything is logged.
//   validate_insert(id, vec, meta, size_before), preferred when present: the
//     same, told the size the index will have when this insert applies (its
//     size now, plus the inserts minus the erases logged but not yet applied
//     and those earlier in the same batch): for an index that numbers its
//     vectors itself, the only id it can take.
//   reserve(n): make room for n more vectors; replay calls it with an
//     estimate of the records in the log.
template <class I>
concept Persistable = Index<I> && requires(const I& cindex, PayloadWriter& w, PayloadReader& r) {
  { I::index_type } -> std::convertible_to<std::string_view>;
  cindex.save_to(w);
  { I::load_from(r) } -> std::same_as<I>;
};

namespace detail {

// A key over kMaxMetadataKeyBytes, a string value over 4 GiB, keys and
// string values that are not valid UTF-8 (PersistError(InvalidArgument)):
// what a snapshot's reader and the log's replay refuse (docs/FORMAT.md). The
// library checks it before logging a mutation, and an index's own insert
// checks it, so that nothing an index stores fails to load.
void check_metadata(const Metadata& meta);

// The library's validation of a mutation. `present` says whether the id is
// in the index as the mutation will find it.
template <Index I>
void check_insert(const I& index, bool present, const VectorId& id, std::span<const float> vec, const Metadata* meta,
                  std::uint64_t size_before) {
  if (vec.size() != index.dim()) {
    throw PersistError::argument("vector has dimension " + std::to_string(vec.size()) + ", the index has " +
                                 std::to_string(index.dim()));
  }
  if (present) throw PersistError(ErrorKind::DuplicateId, "id " + id.to_string() + " is already present");
  if (meta != nullptr) check_metadata(*meta);
  // (The metadata copy is paid only by indexes that have a hook.)
  if constexpr (requires(const std::optional<Metadata>& m) { index.validate_insert(id, vec, m, size_before); }) {
    index.validate_insert(id, vec, meta != nullptr ? std::optional<Metadata>(*meta) : std::nullopt, size_before);
  } else if constexpr (requires(const std::optional<Metadata>& m) { index.validate_insert(id, vec, m); }) {
    index.validate_insert(id, vec, meta != nullptr ? std::optional<Metadata>(*meta) : std::nullopt);
  }
}

template <Index I>
void check_erase(const I& index, bool present, const VectorId& id) {
  if (!present) throw PersistError(ErrorKind::IdNotFound, "id " + id.to_string() + " is not present");
  if constexpr (requires { index.validate_erase(id); }) index.validate_erase(id);
}

}  // namespace detail
}  // namespace iqdb::persist
