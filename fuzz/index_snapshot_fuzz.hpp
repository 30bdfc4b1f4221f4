// The shared harness of the "<index>_crc" fuzz targets (flat_crc, faiss_crc,
// hnswlib_crc): a snapshot of one index type, with its checksums recomputed
// before it is read, so that mutations reach the index's own payload
// decoder and its semantic checks instead of stopping at the CRC. (A
// crafted file carries a valid CRC: the checks behind it are the defence.)
//
// Input: the snapshot file (version 3, or 1/2 for FlatIndex). The harness
// recomputes the payload CRC and the v3 header CRC and sets the v3
// stored_len to what the file holds (fix_snapshot), then loads it through
// PersistedIndex<I>::load on an in-memory file system.
// Oracles: only PersistError escapes load, search, insert and save (a
// foreign exception is std::terminate, a finding); a loaded index searches
// (at most k hits, none twice) and takes an insert of a new id; saving it
// and loading that gives an index of the same size and dimension.
#pragma once

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "fuzz_support.hpp"

namespace iqdb::persist::fuzz::index_snapshot {

inline const fs::path kPath = "/db/s.iqdb";
inline const fs::path kResaved = "/db/t.iqdb";

inline PersistConfig config(MemFileSystem& mfs, const fs::path& p) {
  PersistConfig cfg(p);
  cfg.file_system = &mfs;
  cfg.limits.max_payload_bytes = std::uint64_t{64} << 20;  // within the malloc limit
  return cfg;
}

// The id of a vector the index does not hold: size() first (a FaissIndex
// with positional ids takes exactly that one), else one above 2^40.
template <class I>
std::uint64_t fresh_id(const I& ix) {
  std::uint64_t id = ix.size();
  if (!ix.contains(VectorId(id))) return id;
  id = std::uint64_t{1} << 40;
  while (ix.contains(VectorId(id))) ++id;
  return id;
}

template <class I>
void check_search(const I& ix, const std::vector<float>& q) {
  constexpr std::size_t k = 5;
  try {
    const auto hits = ix.search(q, k);
    IQDB_FUZZ_CHECK(hits.size() <= k, "search returned more than k hits");
    std::set<std::string> seen;
    for (const auto& h : hits) {
      if constexpr (requires { h.id.to_string(); }) {
        IQDB_FUZZ_CHECK(seen.insert(h.id.to_string()).second, "search returned an id twice");
      } else {
        IQDB_FUZZ_CHECK(seen.insert(std::to_string(h.id)).second, "search returned an id twice");
      }
    }
  } catch (const PersistError&) {
  }
}

template <class I>
void run(std::span<const std::uint8_t> in) {
  Bytes file = to_bytes(in);
  fix_snapshot(file, true, true);
  MemFileSystem mfs;
  mfs.put(kPath, file);
  std::optional<PersistedIndex<I>> db;
  try {
    db.emplace(PersistedIndex<I>::load(config(mfs, kPath)));
  } catch (const PersistError&) {
    return;
  }
  const I& ix = db->index();
  IQDB_FUZZ_CHECK(ix.dim() >= 1, "a loaded index of dimension 0");
  if (ix.dim() > (1u << 16)) return;  // queries of that size would only be slow
  std::vector<float> q(static_cast<std::size_t>(ix.dim()));
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = static_cast<float>(i % 7) - 3.0f;
  check_search(ix, q);
  const std::uint64_t before = ix.size();
  bool inserted = false;
  try {
    db->index_mut().insert(VectorId(fresh_id(ix)), q);
    inserted = true;
  } catch (const PersistError&) {
  }
  IQDB_FUZZ_CHECK(ix.size() == before + (inserted ? 1 : 0), "an insert changed the size wrongly");
  check_search(ix, q);

  std::optional<FileHeader> written;
  try {
    const SnapshotInfo info{I::index_type, ix.dim(), ix.metric(), ix.size(), 0};
    written = write_snapshot(mfs, kResaved, info, Compression::none(), false, [&](PayloadWriter& w) { ix.save_to(w); });
  } catch (const PersistError&) {
  }
  if (!written) return;
  std::string why;
  try {
    auto again = PersistedIndex<I>::load(config(mfs, kResaved));
    IQDB_FUZZ_CHECK(again.index().size() == ix.size() && again.index().dim() == ix.dim(),
                    "save + load changed the size or the dimension");
    return;
  } catch (const PersistError& e) {
    why = e.what();
  }
  IQDB_FUZZ_CHECK(false, "a snapshot the library wrote does not load: " + why);
}

}  // namespace iqdb::persist::fuzz::index_snapshot
