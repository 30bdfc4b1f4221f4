// Where the log is replayed: the records after the snapshot's last LSN reach
// the index in LSN order, each exactly once (docs/FORMAT.md, "Reading a log
// (replay)"). Frames are checked and decoded in log_reader.cpp (scan_file);
// the index applies each record in PersistedIndex's replay callback
// (include/iqdb/persist/persisted_index.hpp). Also here: the size hints that
// let the index reserve room before replay, and load without the WAL.
#include <cxxabi.h>

#include <algorithm>
#include <array>
#include <exception>
#include <string>
#include <string_view>

#include "iqdb/persist/detail/resource_error.hpp"
#include "iqdb/persist/error.hpp"
#include "wal/engine_impl.hpp"
#include "wal/log_format.hpp"
#include "wal/log_reader.hpp"

namespace iqdb::persist::detail {

namespace fs = std::filesystem;

namespace {

wal::format::LogPeek peek_log(const ReadableFile& f) {
  std::array<std::byte, wal::format::kPeekLen> b;
  const std::size_t got = f.read_at(0, b);
  return wal::format::peek({b.data(), got});
}

// Records the log's first `end` bytes can hold, judged by its first frame
// (records tend to be alike). Only a hint for preallocation: never trusted.
std::uint64_t estimate_records(const ReadableFile& f, std::uint64_t end) {
  const wal::format::LogPeek p = peek_log(f);
  if (p.first_frame == 0 || end <= p.header_len) return 0;
  const std::uint64_t per_record = std::max<std::uint64_t>(p.first_frame / p.first_count, wal::format::kMinOpLen);
  return (end - p.header_len) / per_record;
}

// About where the frames end: the log is grown ahead of its frames in
// zero-filled steps of up to 64 MiB, which must not count as records (a
// hint 10 % too large made replay 20 % slower). A binary search for the
// first 4 KiB block from which on the file reads as zeros; a block of
// zeros inside the frames can end it early, which only makes the hint
// smaller. About 17 reads of 4 KiB for a 600 MB log.
std::uint64_t frames_end_estimate(const ReadableFile& f) {
  constexpr std::uint64_t kBlock = 4096;
  std::array<std::byte, kBlock> buf;
  const auto zero_block = [&](std::uint64_t b) {
    const std::size_t got = f.read_at(b * kBlock, buf);
    return std::all_of(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(got),
                       [](std::byte x) { return x == std::byte{0}; });
  };
  std::uint64_t lo = 0;
  std::uint64_t hi = (f.size() + kBlock - 1) / kBlock;
  while (lo < hi) {
    const std::uint64_t mid = lo + (hi - lo) / 2;
    if (zero_block(mid)) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return std::min(f.size(), lo * kBlock);
}

// The record with LSN `lsn` is not the next one the index needs.
[[noreturn]] void throw_gap(const fs::path& log_path, std::uint64_t lsn, std::uint64_t expect,
                            std::uint64_t frame_offset) {
  throw PersistError::at(ErrorKind::CorruptLog, log_path,
                         "the log continues at LSN " + std::to_string(lsn) + " but the snapshot ends at " +
                             std::to_string(expect - 1) + ": records are missing",
                         frame_offset);
}

}  // namespace

std::uint64_t lsn_bound_with_log(std::uint64_t floor, const ReadableFile& log) {
  const std::uint64_t base = peek_log(log).base_lsn;
  const std::uint64_t records = log.size() / wal::format::kMinOpLen;  // each record takes >= 10 bytes
  const std::uint64_t from = std::max(floor, base > 0 ? base - 1 : 0);
  return records > UINT64_MAX - from ? UINT64_MAX : from + records;  // (saturating: a foreign header)
}

PersistError record_not_applied(const std::exception_ptr& thrown, const wal::RecordView& r, std::uint64_t lsn,
                                const fs::path& log_path) {
  const auto does_not_apply = [&](std::string_view why) {
    return PersistError::at(ErrorKind::CorruptLog, log_path,
                            "record with LSN " + std::to_string(lsn) + " does not apply to the snapshot: " +
                                std::string(why),
                            r.frame_offset);
  };
  try {
    std::rethrow_exception(thrown);
  } catch (const PersistError& e) {
    return does_not_apply(e.what());
  } catch (const std::exception& e) {
    // Out of memory or no thread: not damage. Anything else an index type
    // throws (one of a user's, refusing the record with its own exception)
    // is the record not applying, as a PersistError from the library's own
    // types is.
    const int err = resource_errno(e);
    if (err != 0) return resource_error(log_path, "applying the record with LSN " + std::to_string(lsn), err);
    return does_not_apply(std::string("the index refused it: ") + e.what());
  } catch (...) {
    return does_not_apply("the index threw an exception that is not a std::exception");
  }
}

Replayed replay_log(IndexStorage& storage, const ReadableFile& file, const fs::path& log_path,
                    std::uint64_t folded, const WalEngine::Replay& replay, const WalEngine::ReserveHint& reserve,
                    bool live) {
  std::uint64_t expect = folded + 1;  // the next LSN the index needs
  std::uint64_t implicit_lsn = 0;     // version-1 logs number their records 1, 2, ...
  if (reserve) {
    const std::uint64_t end = frames_end_estimate(file);
    reserve(estimate_records(file, end), end);
  }
  const auto on_record = [&](const wal::RecordView& r) {
    const std::uint64_t lsn = r.lsn ? *r.lsn : ++implicit_lsn;
    if (lsn < expect) return;  // already folded into the snapshot
    if (lsn != expect) throw_gap(log_path, lsn, expect, r.frame_offset);
    try {
      replay(r);
    } catch (const abi::__forced_unwind&) {
      throw;  // a thread ending (pthread_exit): not the index's refusal
    } catch (...) {
      throw record_not_applied(std::current_exception(), r, lsn, log_path);
    }
    ++expect;
  };
  wal::ScanResult scan;
  wal::FollowPoint end;
  try {
    scan = wal::scan_file(file, on_record, wal::ScanMode::Strict, &end, live);
  } catch (const PersistError& e) {
    // Damage found in the log: name the object holding it (RADOS).
    if (!e.offset() || e.path() != file.path() || storage.locate(*e.offset()) == e.path()) throw;
    throw e.with_path(storage.locate(*e.offset()));
  } catch (const std::exception& e) {
    // Out of memory (the index growing as records apply, say), or no
    // thread to be had: not damage, and not for the caller to catch as
    // anything but a PersistError.
    const int err = resource_errno(e);
    if (err == 0) throw;
    throw resource_error(log_path, "replaying the log", err);
  }
  storage.check_scan(scan);
  if (scan.version == 2 && scan.base_lsn > folded + 1) {
    throw PersistError::at(ErrorKind::CorruptLog, log_path,
                           "the log starts at LSN " + std::to_string(scan.base_lsn) + " but the snapshot ends at " +
                               std::to_string(folded) + ": the snapshot is older than the log");
  }
  return {scan, expect, end};
}

WalEngine::ReadOnlyReplay WalEngine::replay_read_only(const PersistConfig& cfg,
                                                      const std::function<FileHeader()>& load_snapshot,
                                                      const Replay& replay, const ReserveHint& reserve) {
  const std::shared_ptr<IndexStorage> storage = storage_of(cfg);
  return load_again_if_removed(*storage, [&] {
    FileHeader h;
    const std::unique_ptr<ReadableFile> log = storage->open_log_with_snapshot(load_snapshot, h);
    ReadOnlyReplay out;
    out.last_lsn = h.last_lsn;
    if (!log) return out;
    const Replayed r = replay_log(*storage, *log, storage->log_path(), h.last_lsn, replay, reserve, /*live=*/true);
    out.last_lsn = r.next - 1;
    out.stats.recovered_records = r.next - 1 - h.last_lsn;
    out.stats.torn_tail_bytes = r.scan.torn_tail_bytes;
    out.stats.unsynced_frames_dropped = r.scan.unsynced_frames_dropped;
    return out;
  });
}

}  // namespace iqdb::persist::detail
