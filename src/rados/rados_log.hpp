// Internal: the write-ahead log in RADOS (docs/FORMAT.md, "RADOS objects of
// the write-ahead log"; docs/DISTRIBUTED.md, "The log in RADOS"). The log
// that follows snapshot generation G is the bytes of a local version-2 log
// (header and frames) cut at group boundaries into objects NAME.log.<G>.<k>,
// k = 0, 1, ...: each group commit is one RADOS write operation on one
// object, carrying the writer's fencing-epoch compare.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "iqdb/persist/detail/index_storage.hpp"
#include "iqdb/persist/rados.hpp"
#include "rados/writer_fence.hpp"

namespace iqdb::persist::rados_detail {

// Attributes of every log object, each 16 lower-case hex digits: the epoch
// of the writer that may append to it, the log offset of its first byte, and
// its size (updated by the operation that appends).
inline constexpr const char* kLogEpochAttr = "iqdb.epoch";
inline constexpr const char* kLogStartAttr = "iqdb.start";
inline constexpr const char* kLogSizeAttr = "iqdb.size";
// Bounds of RadosOptions::log_object_size; more objects than this in one log
// is damage.
inline constexpr std::uint64_t kMinLogObject = 4096;
inline constexpr std::uint64_t kMaxLogObject = std::uint64_t{64} << 20;  // below osd_max_write_size
inline constexpr std::uint64_t kMaxLogObjects = std::uint64_t{1} << 20;

std::string log_object(std::string_view name, std::uint64_t generation, std::uint64_t k);

struct LogObject {
  std::uint64_t start = 0;  // log offset of its first byte
  std::uint64_t size = 0;
};

// The objects of the log of one generation, checked (each object's size
// equals its size attribute, starts follow each other, no object missing
// before an existing one). No bytes: there is no log (has_bytes).
struct LogLayout {
  std::string name;
  std::uint64_t generation = 0;
  std::vector<LogObject> objects;
  std::uint64_t size() const noexcept { return objects.empty() ? 0 : objects.back().start + objects.back().size; }
  // A log exists once its header does: without bytes (no object, or only the
  // empty ones a takeover's seal leaves, which the next writer's new log
  // fills: create_log_sink) it counts as no log.
  bool has_bytes() const noexcept { return size() != 0; }
};

LogLayout read_log_layout(RadosSnapshotStore& store, const std::string& name, std::uint64_t generation);
// Read replicas: `layout` brought up to date (its last object may have
// grown, objects may have followed it).
void refresh_log_layout(RadosSnapshotStore& store, LogLayout& layout);
// The log's bytes, read from the objects of `layout` (bytes appended after it
// was read are not seen).
std::unique_ptr<ReadableFile> open_log_file(RadosSnapshotStore& store, LogLayout layout);
// The object holding log offset `offset`, as a path (for messages).
std::filesystem::path log_object_path(RadosSnapshotStore& store, const LogLayout& layout, std::uint64_t offset);

// The head's record that the log of a generation was created (an attribute
// of NAME.head, 16 lower-case hex digits: the generation whose log a writer
// created last; absent in heads no writer created a log in since this
// attribute was added). A log whose every object was removed is detected by
// it: the head names it, object 0 does not exist.
inline constexpr const char* kLoggedAttr = "iqdb.logged";

// Records in NAME.head that the log of `generation` exists (its header is
// in), under the head's epoch compare: Fenced when a newer writer took over.
void mark_log_created(RadosSnapshotStore& store, const std::string& name, std::uint64_t generation,
                      const std::shared_ptr<Fence>& fence);
// A log of `generation` without object 0 that the head records as created
// (kLoggedAttr) was removed by someone else: TruncatedPayload naming object
// 0. (The attribute is read only when object 0 is missing, and object 0
// looked for again after it, so a writer creating the log meanwhile is not
// taken for a removal.)
void check_log_not_removed(RadosSnapshotStore& store, const std::string& name, std::uint64_t generation);
// read_log_layout, with that check when no object is found.
LogLayout read_log_layout_checked(RadosSnapshotStore& store, const std::string& name, std::uint64_t generation);

// Make every append of an older epoch to this log fail: the last object
// gets `epoch`, and an empty object after it is created with `epoch` (so a
// rotation of the old writer fails); a log without objects gets an empty
// object 0 of `epoch` (so a late create of the old writer's fails). Needs
// the writer lock.
void seal_log(RadosSnapshotStore& store, const std::string& name, std::uint64_t generation, std::uint64_t epoch);

// A new log for `generation` (object 0 holds the header; a log whose
// objects are all empty, as a seal leaves one, takes it in its last) / the log of
// `layout` continued after its last object.
std::unique_ptr<detail::LogSink> create_log_sink(RadosSnapshotStore& store, const std::string& name,
                                                 std::uint64_t generation, const std::shared_ptr<Fence>& fence,
                                                 std::uint64_t salt, std::uint64_t base_lsn);
std::unique_ptr<detail::LogSink> continue_log_sink(RadosSnapshotStore& store, const LogLayout& layout,
                                                   std::shared_ptr<Fence> fence, std::uint64_t salt);

// `iqdb-persist wal repair` on RADOS (docs/DISTRIBUTED.md, "The command
// line on RADOS"). The objects of the log of `generation` as far as they are
// consistent: the longest prefix of objects whose attributes are present
// and whose starts follow each other; an object whose size differs from its
// size attribute counts with the bytes both vouch for, and ends the prefix.
struct LogPrefix {
  LogLayout layout;
  std::vector<std::uint64_t> beyond;  // existing objects after the prefix (probed until two are missing)
  std::string stopped;                // why the prefix ends there ("" when every object is consistent)
};
LogPrefix read_log_prefix(RadosSnapshotStore& store, const std::string& name, std::uint64_t generation);

// Cut that log at log offset `end` (at most prefix.layout.size()), knowingly:
// every object after the one holding `end` is removed (the last first, each
// after the one before it no longer says it continues), that object is cut
// to `end` with its size attribute and given the epoch of `lock`, and the
// log is sealed as a writer's takeover seals it (seal_log). Needs `lock`,
// the writer lock of `prefix.layout.name`; each step leaves a log that reads
// as a consistent prefix of the one before.
void cut_log(RadosSnapshotStore& store, const RadosWriterLock& lock, const LogPrefix& prefix, std::uint64_t end);

}  // namespace iqdb::persist::rados_detail
