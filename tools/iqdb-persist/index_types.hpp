// The index types this build of the tool can load with their log (internal
// to iqdb_persist_cli): flat always, faiss and hnswlib when the tool is built
// with their adapters (tools/CMakeLists.txt). Applying a log record needs the
// index type's code: `checkpoint` and a `copy` that folds a log dispatch here.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "iqdb/persist/flat_index.hpp"
#if defined(IQDB_PERSIST_CLI_HAVE_FAISS)
#include "iqdb/persist/adapters/faiss.hpp"
#endif
#if defined(IQDB_PERSIST_CLI_HAVE_HNSWLIB)
#include "iqdb/persist/adapters/hnswlib.hpp"
#endif

namespace iqdb::persist::cli {

// f.template operator()<I>() for the index type named `type`; nullopt when
// this build does not know it.
template <class F>
auto with_index_type(std::string_view type, F&& f) -> std::optional<decltype(f.template operator()<FlatIndex>())> {
  if (type == FlatIndex::index_type) return f.template operator()<FlatIndex>();
#if defined(IQDB_PERSIST_CLI_HAVE_FAISS)
  if (type == FaissIndex::index_type) return f.template operator()<FaissIndex>();
#endif
#if defined(IQDB_PERSIST_CLI_HAVE_HNSWLIB)
  if (type == HnswlibIndex::index_type) return f.template operator()<HnswlibIndex>();
#endif
  return std::nullopt;
}

// "'flat', 'faiss', 'hnswlib'": the types with_index_type knows.
inline std::string known_index_types() {
  std::string known = "'" + std::string(FlatIndex::index_type) + "'";
#if defined(IQDB_PERSIST_CLI_HAVE_FAISS)
  known += ", '" + std::string(FaissIndex::index_type) + "'";
#endif
#if defined(IQDB_PERSIST_CLI_HAVE_HNSWLIB)
  known += ", '" + std::string(HnswlibIndex::index_type) + "'";
#endif
  return known;
}

}  // namespace iqdb::persist::cli
