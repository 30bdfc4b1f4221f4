// `copy` of an index whose log holds records its snapshot lacks (internal to
// iqdb_persist_cli): the index as it is now, in one snapshot at the
// destination. docs/DISTRIBUTED.md, "Backup and restore: copy".
//
// The source is loaded read-only (PersistedIndex::load without the WAL: no
// writer lock; the snapshot and the records of its log, consistent even
// while a writer checkpoints), and one snapshot is written at the
// destination holding them, whose last LSN is the LSN the loaded state
// covers, so that a writer that later loads the destination with the WAL
// numbers its records on from there. On arrival the destination is verified
// (header, CRC, count, last LSN) and loaded again, and must equal the index
// that was loaded from the source.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>

#include "iqdb-persist/location.hpp"
#include "iqdb/persist/config.hpp"
#include "iqdb/persist/file_system.hpp"
#include "iqdb/persist/format.hpp"
#include "iqdb/persist/snapshot.hpp"

namespace iqdb::persist::cli {

// The compression a snapshot whose header is `h` was written with (zstd at
// level 3: the header does not keep the level).
Compression compression_of(const FileHeader& h);

// What a folded copy wrote, and how to check it once published.
struct FoldedCopy {
  FileHeader written;                  // the destination snapshot's header
  std::uint64_t records_folded = 0;    // log records replayed onto the source's snapshot
  std::function<void()> check_arrival;  // re-reads DST; throws PersistError naming it
};

// Refuse (CorruptLog naming the log, at the damaged frame) to fold the
// log of a local index whose load would drop intact frames after a damaged
// one as a torn tail: frames no later frame says were made durable, but
// that a sync(), a periodic fsync or a clean close may have made durable
// (the log does not record those). Dropping them for good is for
// `wal repair --yes` to do knowingly. RADOS logs have no torn tails.
void refuse_dropping_unsynced_frames(const Location& src);

// Load `src` (holding an index of type `index_type`: flat always, faiss and
// hnswlib when the tool is built with their adapters; Unsupported
// otherwise) and write it at `dst` through `publisher` (a wrapper of
// dst.fs(), atomic as every snapshot write), with `compression`.
// `reading_source` is true while the source is loaded (a failure then is
// the source's). `min_lsn`: the copy's last LSN is
// at least this (LSNs at the destination's path only go up: a copy over an
// index there claims one more than that index's, docs/DISTRIBUTED.md).
// `snapshot_only`: the source's snapshot alone, its log not replayed
// (copy --snapshot-only).
FoldedCopy fold_into(const Location& src, std::string_view index_type, const Location& dst, FileSystem& publisher,
                     const Compression& compression, bool& reading_source, std::uint64_t min_lsn = 0,
                     bool snapshot_only = false);

}  // namespace iqdb::persist::cli
