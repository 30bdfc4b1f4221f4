// Write-ahead log reader: frames are checked (length bounds, CRC, LSN order)
// before they are decoded; a damaged frame is a torn tail only when nothing
// intact follows it.
#include "wal/log_reader.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <future>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "iqdb/persist/checksum.hpp"
#include "iqdb/persist/error.hpp"
#include "util/coding.hpp"
#include "wal/log_format.hpp"
#include "wal/record_codec.hpp"

namespace iqdb::persist::wal {

namespace {

namespace fs = std::filesystem;
constexpr std::size_t kWindow = std::size_t{4} << 20;
// Following a log (read replicas): each catch-up reads the few frames
// appended since, in pieces this size, without reading ahead; and bytes
// further than kFollowProbe past a frame are not looked at (a local log is
// grown ahead in zero-filled steps of up to 64 MiB: the zeros after the
// last frame say nothing a catch-up needs).
constexpr std::size_t kFollowWindow = std::size_t{256} << 10;
constexpr std::uint64_t kFollowProbe = std::uint64_t{1} << 20;
// Room in front of a read-ahead chunk for the start of a frame that crosses
// into it (larger frames take the synchronous path).
constexpr std::size_t kGap = std::size_t{2} << 20;

// A sliding read window over the file: bytes [start_, start_ + len_) are at
// cur_.data() + base_. While the caller works through the window, the next
// chunk of the file is read on another thread (replay is then bounded by
// decoding and applying, not by the copy out of the page cache); a pointer
// returned by at() is valid until the next call.
class Window {
 public:
  // `chunk`: bytes read at a time; `ahead`: read the next chunk on another
  // thread meanwhile.
  Window(const ReadableFile& f, std::size_t chunk, bool ahead)
      : f_(f), size_(f.size()), chunk_(chunk), ahead_enabled_(ahead) {}
  Window(const Window&) = delete;
  Window& operator=(const Window&) = delete;
  ~Window() { drop_ahead(); }
  std::uint64_t file_size() const noexcept { return size_; }

  // Forget what was read: the next at() reads from the file again.
  void forget() noexcept {
    drop_ahead();
    len_ = 0;
  }

  // Make [pos, pos + n) available and return a pointer to it. Precondition:
  // pos + n <= file_size() (callers check lengths against the file first).
  const std::byte* at(std::uint64_t pos, std::size_t n) {
    if (pos >= start_ && pos + n <= start_ + len_) return cur_.data() + base_ + (pos - start_);
    if (!take_ahead(pos, n)) {
      drop_ahead();
      const std::size_t want = static_cast<std::size_t>(
          std::min<std::uint64_t>(std::max<std::size_t>(n, chunk_), size_ - pos));
      if (cur_.size() < want) cur_.resize(want);
      const std::size_t got = f_.read_at(pos, {cur_.data(), want});
      if (got < n) shrank(pos + got);
      start_ = pos;
      base_ = 0;
      len_ = got;
    }
    read_ahead();
    return cur_.data() + base_;
  }

 private:
  // The chunk being read ahead starts where the window ends and covers
  // [pos, pos + n) together with the window's tail: move the tail in front of
  // it and make it the window.
  bool take_ahead(std::uint64_t pos, std::size_t n) {
    if (!ahead_.valid() || pos < start_ || pos > ahead_pos_ || ahead_pos_ - pos > kGap) return false;
    const std::size_t got = ahead_.get();  // rethrows the read's error
    if (got < ahead_want_) shrank(ahead_pos_ + got);
    const std::size_t tail = static_cast<std::size_t>(ahead_pos_ - pos);
    if (pos + n > ahead_pos_ + got) return false;  // a frame larger than the chunk
    std::memcpy(next_.data() + kGap - tail, cur_.data() + base_ + (pos - start_), tail);
    std::swap(cur_, next_);
    start_ = pos;
    base_ = kGap - tail;
    len_ = tail + got;
    return true;
  }

  void read_ahead() {
    const std::uint64_t from = start_ + len_;
    if (!ahead_enabled_ || from >= size_) return;
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(chunk_, size_ - from));
    if (next_.size() < kGap + want) next_.resize(kGap + want);
    ahead_pos_ = from;
    ahead_want_ = want;
    std::byte* dst = next_.data() + kGap;
    try {
      ahead_ = std::async(std::launch::async, [this, from, dst, want] { return f_.read_at(from, {dst, want}); });
    } catch (const std::system_error&) {
      ahead_enabled_ = false;  // no thread to be had (a process at its limit): at() reads
    }
  }

  void drop_ahead() noexcept {
    if (!ahead_.valid()) return;
    try {
      (void)ahead_.get();  // waits; an error of a read no one needs is not one
    } catch (...) {
    }
  }

  [[noreturn]] void shrank(std::uint64_t at) const {
    throw PersistError::at(ErrorKind::TruncatedPayload, f_.path(), "the log shrank while being read", at);
  }

  const ReadableFile& f_;
  std::uint64_t size_;
  std::size_t chunk_;
  bool ahead_enabled_;
  std::vector<std::byte> cur_;
  std::vector<std::byte> next_;
  std::uint64_t start_ = 0;
  std::size_t base_ = 0;
  std::size_t len_ = 0;
  std::future<std::size_t> ahead_;
  std::uint64_t ahead_pos_ = 0;
  std::size_t ahead_want_ = 0;
};

format::LogHeader read_log_header(Window& w, const fs::path& path) {
  const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(w.file_size(), format::kV2HeaderLen));
  const std::byte* first = n > 0 ? w.at(0, n) : nullptr;
  return format::decode_header({first, n}, w.file_size(), path);
}

class Scanner {
 public:
  // `live`: a writer may be appending to the log (scan_file).
  Scanner(const ReadableFile& f, const std::function<void(const RecordView&)>& on_record, ScanMode mode,
          bool live = false)
      : f_(f), w_(f, kWindow, /*ahead=*/true), on_record_(on_record), mode_(mode), live_(live) {}
  // Following (follow()): small reads, no read-ahead, a bounded look past
  // the last frame.
  struct Follow {};
  Scanner(const ReadableFile& f, const std::function<void(const RecordView&)>& on_record, Follow)
      : f_(f), w_(f, kFollowWindow, /*ahead=*/false), on_record_(on_record), mode_(ScanMode::Strict),
        look_limit_(kFollowProbe) {}

  // Where a follower goes on after the frames read (ending at `offset`).
  FollowPoint point(std::uint64_t offset) const noexcept {
    return {offset, salt_, next_lsn_, chain_, last_frame_, chain_crc_};
  }

  ScanResult run() {
    const format::LogHeader h = read_log_header(w_, f_.path());
    r_.version = h.version;
    r_.salt = h.salt;
    r_.base_lsn = h.base_lsn;
    r_.file_size = w_.file_size();
    salt_ = h.salt;
    next_lsn_ = h.base_lsn;
    std::uint64_t pos = h.len;
    for (;;) {
      Verdict v = Verdict::End;
      try {
        v = check_frame(pos, /*deliver=*/true);
      } catch (const PersistError& e) {
        // A frame whose checksum holds but whose contents are malformed (an
        // LSN out of sequence, a record that does not decode): written so,
        // by something else than this library. Strict: CorruptLog. Report:
        // damage at the frame, the log's valid prefix ending before it and
        // the intact frames after it counted, not read, so that `wal repair`
        // can cut it (it could only fail before). Nothing of the frame was
        // delivered: its records are checked first.
        if (mode_ != ScanMode::Report || e.kind() != ErrorKind::CorruptLog || e.offset() != pos) throw;
        r_.valid_bytes = pos;
        r_.corrupt_offset = pos;
        r_.torn_tail_bytes = last_nonzero_end(pos, size()) - pos;
        count_frames_from(pos + format::kFrameHeaderLen + last_len_);  // (its length held: the CRC covered it)
        break;
      }
      if (v == Verdict::Damaged && live_) v = settle(pos);
      if (v == Verdict::Good) {
        chain_frame(pos);
        pos += format::kFrameHeaderLen + last_len_;
        continue;
      }
      r_.valid_bytes = pos;
      if (v == Verdict::End) break;
      handle_damage(pos);
      break;
    }
    return r_;
  }

  Followed follow(const FollowPoint& from, bool check_last_frame, std::uint64_t until) {
    Followed out;
    std::uint64_t pos = from.offset;
    r_.version = 2;
    salt_ = from.salt;
    next_lsn_ = from.next_lsn;
    chain_ = from.chain;
    last_frame_ = from.last_frame;
    chain_crc_ = from.last_crc;
    if (pos == 0) {
      if (w_.file_size() == 0) return out;  // not written yet
      const format::LogHeader h = read_log_header(w_, f_.path());
      if (h.version != 2) {
        throw PersistError::at(ErrorKind::Unsupported, f_.path(),
                               "a version-1 log cannot be followed: open the index with the WAL once to migrate it");
      }
      salt_ = h.salt;
      next_lsn_ = h.base_lsn;
      out.base_lsn = h.base_lsn;
      pos = h.len;
    }
    if (pos > size()) {
      throw PersistError::at(ErrorKind::CorruptLog, f_.path(),
                             "the log is " + std::to_string(size()) + " bytes now, shorter than the " +
                                 std::to_string(pos) + " already read: it was cut back",
                             size());
    }
    if (check_last_frame && from.last_frame != 0) {
      // The frame read last must still be there. A log cut back (the frames
      // of a failed fsync) and written again holds another frame in its
      // place, even where the new frames line up with the old ones. Its
      // header alone is read, apart: the window starts at the new frames.
      std::byte header[format::kFrameHeaderLen] = {};
      const std::size_t got = f_.read_at(from.last_frame, header);
      const auto [len, crc] = format::decode_frame_header(header);
      if (got != sizeof header || crc != from.last_crc || from.last_frame + format::kFrameHeaderLen + len != pos) {
        throw PersistError::at(ErrorKind::CorruptLog, f_.path(),
                               "the frame read last, at offset " + std::to_string(from.last_frame) +
                                   ", is not there any more: the log was cut back and written again",
                               from.last_frame);
      }
    }
    Verdict v = Verdict::End;
    while (pos < until && (v = check_frame(pos, /*deliver=*/true)) == Verdict::Good) {
      chain_frame(pos);
      pos += format::kFrameHeaderLen + last_len_;
    }
    out.at = point(pos);
    out.records = r_.records;
    // Intact frames after a damaged one that vouch for it: corruption
    // (CorruptLog), else a frame still being written.
    if (v == Verdict::Damaged) handle_damage(pos);
    out.pending_bytes = r_.torn_tail_bytes;
    if (v == Verdict::End && pos < until && pos < size()) out.zero_bytes = size() - pos;
    return out;
  }

 private:
  enum class Verdict { Good, End, Damaged };

  std::uint64_t size() const noexcept { return w_.file_size(); }

  // The frame at `pos`, just checked (last_crc_), joins the chain.
  void chain_frame(std::uint64_t pos) noexcept {
    std::byte b[sizeof(std::uint32_t)];
    coding::store<std::uint32_t>(b, last_crc_);
    chain_ = checksum::extend(chain_, b, sizeof b);
    last_frame_ = pos;
    chain_crc_ = last_crc_;
  }

  // Checks the frame at pos; when `deliver`, decodes it and hands its records
  // on (and advances the LSN and counts).
  Verdict check_frame(std::uint64_t pos, bool deliver) {
    if (size() - pos < format::kFrameHeaderLen) return all_zero(pos, size()) ? Verdict::End : Verdict::Damaged;
    const auto [len, crc] = format::decode_frame_header(w_.at(pos, format::kFrameHeaderLen));
    if (len == 0 && crc == 0) return all_zero(pos, size()) ? Verdict::End : Verdict::Damaged;
    const std::uint32_t min_len = r_.version == 2 ? format::kV2BodyPrefixLen + format::kMinOpLen : format::kMinOpLen;
    if (len < min_len || len > MAX_FRAME_LEN || len > size() - pos - format::kFrameHeaderLen) return Verdict::Damaged;
    const std::byte* body = w_.at(pos + format::kFrameHeaderLen, len);
    r_.bytes_checksummed += len;
    const std::uint32_t computed = r_.version == 2 ? format::frame_crc_v2(salt_, len, body) : checksum::compute(body, len);
    if (computed != crc) return Verdict::Damaged;
    last_len_ = len;
    last_crc_ = crc;
    if (!deliver) return Verdict::Good;
    decode_frame(pos, body, len);
    return Verdict::Good;
  }

  // A frame whose CRC matched: its bytes are what the writer wrote, so a
  // malformed body or an LSN out of sequence is corruption (or a foreign
  // file), never a torn tail.
  void decode_frame(std::uint64_t pos, const std::byte* body, std::uint32_t len) {
    coding::ByteCursor in({body, len});
    std::uint64_t lsn = 0;
    std::uint32_t count = 1;
    if (r_.version == 2) {
      const format::V2BodyPrefix prefix = format::decode_v2_body_prefix(body);
      in.skip(format::kV2BodyPrefixLen);  // len >= kV2BodyPrefixLen (check_frame)
      check_v2_prefix(pos, prefix, in.remaining());
      lsn = prefix.first_lsn;
      count = prefix.count;
    }
    // A batch is all or nothing: check every record of the frame before
    // delivering any (decoding twice rather than holding `count` decoded
    // records, whose size a crafted frame could inflate).
    if (count > 1) decode_ops(pos, in, count, /*first_lsn=*/std::nullopt, /*deliver=*/false);
    decode_ops(pos, in, count, r_.version == 2 ? std::optional(lsn) : std::nullopt, /*deliver=*/true);
    if (r_.version == 2) {
      next_lsn_ = lsn + count;
      r_.last_lsn = next_lsn_ - 1;
    }
    r_.records += count;
    r_.frames += 1;
  }

  // A v2 frame's LSNs continue the log and its count fits its ops' bytes.
  void check_v2_prefix(std::uint64_t pos, const format::V2BodyPrefix& p, std::size_t ops_len) const {
    if (p.synced_lsn >= p.first_lsn) {
      corrupt(pos, "frame claims LSN " + std::to_string(p.synced_lsn) + " durable before writing LSN " +
                       std::to_string(p.first_lsn));
    }
    if (p.first_lsn != next_lsn_) {
      corrupt(pos, "frame has LSN " + std::to_string(p.first_lsn) + ", expected " + std::to_string(next_lsn_));
    }
    if (p.count == 0 || p.count > ops_len / format::kMinOpLen) {
      corrupt(pos, "frame record count " + std::to_string(p.count) + " is out of range");
    }
  }

  // Decode the frame's `count` ops from `in` (a copy: the caller's cursor
  // stays where the ops start); the last must end the frame. When
  // `deliver`, hand each record on.
  void decode_ops(std::uint64_t pos, coding::ByteCursor in, std::uint32_t count, std::optional<std::uint64_t> first_lsn,
                  bool deliver) {
    std::string why;
    for (std::uint32_t i = 0; i < count; ++i) {
      if (!decode_op(in, op_, why)) corrupt(pos, "record " + std::to_string(i) + ": " + why);
      if (i + 1 == count && in.remaining() != 0) {
        corrupt(pos, std::to_string(in.remaining()) + " stray bytes at the end of the frame");
      }
      if (!deliver) continue;
      RecordView rv;
      if (first_lsn) rv.lsn = *first_lsn + i;
      rv.op = op_.op;
      rv.id = &op_.id;
      rv.vector = op_.vector;
      rv.metadata = op_.metadata ? &*op_.metadata : nullptr;
      rv.frame_offset = pos;
      rv.index_in_frame = i;
      rv.frame_records = count;
      if (on_record_) on_record_(rv);
    }
  }

  [[noreturn]] void corrupt(std::uint64_t pos, const std::string& why) const {
    throw PersistError::at(ErrorKind::CorruptLog, f_.path(), "log frame is malformed: " + why, pos);
  }

  bool all_zero(std::uint64_t from, std::uint64_t to) { return last_nonzero_end(from, to) == from; }

  // One past the last non-zero byte in [from, to), or `from` if all zero
  // (following: only up to look_limit_ bytes past `from` are looked at).
  std::uint64_t last_nonzero_end(std::uint64_t from, std::uint64_t to) {
    to = std::min(to, from + std::min(look_limit_, to - from));
    std::uint64_t end = from;
    for (std::uint64_t p = from; p < to;) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(to - p, kWindow));
      const std::byte* b = w_.at(p, n);
      for (std::size_t i = n; i > 0; --i) {
        if (b[i - 1] != std::byte{0}) {
          end = p + i;
          break;
        }
      }
      p += n;
    }
    return end;
  }

  // A live log: the frame at `pos` looked damaged. The window can hold its
  // bytes as read before the writer finished it, and bytes further on as
  // read after (read ahead later): read it again, fresh. Still damaged and
  // vouched for by an intact frame after it (which the writer wrote after
  // it had made this one durable), it is read again as DamageSettler says
  // (a writer descheduled in the middle of the frame) before it counts.
  // Not vouched for, it is where the writer is writing: the end, at once.
  Verdict settle(std::uint64_t pos) {
    DamageSettler settler;
    for (;;) {
      w_.forget();
      const Verdict v = check_frame(pos, /*deliver=*/true);
      if (v != Verdict::Damaged) return v;
      const std::uint64_t dropped = r_.unsynced_frames_dropped;  // (search_after_damage counts them)
      bad_ = pos;
      const AfterDamage found = search_after_damage(pos, last_nonzero_end(pos, size()));
      r_.unsynced_frames_dropped = dropped;
      if (found.what == AfterDamage::TornTail || !settler.read_again(pos)) return v;
    }
  }

  // The frame at `bad` is damaged. Look for an intact frame of this log
  // after it that proves the damaged frame had been made durable (v2: its
  // synced_lsn reaches the damaged frame's LSN; v1 frames carry no such
  // record, so any intact frame counts): then this is corruption in the
  // middle of the log. Intact frames that do not vouch for it were written
  // before it was known durable: a power loss may persist writes out of
  // order, so they are part of a torn tail.
  void handle_damage(std::uint64_t bad) {
    bad_ = bad;
    const std::uint64_t dirty_end = last_nonzero_end(bad, size());
    r_.torn_tail_bytes = dirty_end - bad;
    const AfterDamage found = search_after_damage(bad, dirty_end);
    if (found.what == AfterDamage::TornTail) return;
    if (mode_ == ScanMode::Strict) {
      if (found.what == AfterDamage::OverBudget) {
        throw PersistError::at(ErrorKind::CorruptLog, f_.path(),
                               "log frame is damaged and what follows it cannot be classified cheaply", bad);
      }
      throw PersistError::at(ErrorKind::CorruptLog, f_.path(),
                             "log frame is damaged and intact frames follow it at offset " + std::to_string(found.at) +
                                 "; this is not a torn tail. `iqdb-persist wal repair` drops everything from "
                                 "the damaged frame on, knowingly",
                             bad);
    }
    r_.corrupt_offset = bad;
    if (found.what == AfterDamage::Vouched) count_frames_from(found.at);
  }

  // What lies between a damaged frame and the last non-zero byte after it.
  struct AfterDamage {
    enum What : std::uint8_t { TornTail, Vouched, OverBudget } what = TornTail;
    std::uint64_t at = 0;  // Vouched: the intact frame that vouches for the damaged one
  };

  // Tries every plausible frame start after `bad` (counting the intact
  // frames that do not vouch for it as unsynced). Each candidate costs a CRC
  // over its claimed length; the total is bounded so that a hostile tail
  // cannot make the search quadratic.
  AfterDamage search_after_damage(std::uint64_t bad, std::uint64_t dirty_end) {
    std::uint64_t budget = 8 * (dirty_end - bad) + (std::uint64_t{16} << 20);
    for (std::uint64_t p = bad + 1; p + format::kFrameHeaderLen <= dirty_end; ++p) {
      if (!plausible_frame_start(p)) continue;
      const std::uint64_t cost = format::kFrameHeaderLen + format::decode_frame_header(w_.at(p, format::kFrameHeaderLen)).len;
      if (cost > budget) return {AfterDamage::OverBudget, 0};
      budget -= cost;
      if (check_frame(p, /*deliver=*/false) != Verdict::Good) continue;
      if (!vouches_for_damage(p)) {
        r_.unsynced_frames_dropped += 1;
        p += format::kFrameHeaderLen + last_len_ - 1;  // continue after this frame
        continue;
      }
      return {AfterDamage::Vouched, p};
    }
    return {};
  }

  // The intact frame at p records the damaged frame as durable (v2: its
  // synced_lsn reaches the next LSN this scan needs; v1: always).
  bool vouches_for_damage(std::uint64_t p) {
    if (r_.version != 2) return true;
    const std::uint64_t synced = coding::get<std::uint64_t>(
        w_.at(p + format::kFrameHeaderLen + format::kSyncedLsnOffset, sizeof(std::uint64_t)));
    return synced >= next_lsn_;
  }

  bool plausible_frame_start(std::uint64_t p) {
    const std::uint32_t len = format::decode_frame_header(w_.at(p, format::kFrameHeaderLen)).len;
    if (len == 0 || len > MAX_FRAME_LEN || len > size() - p - format::kFrameHeaderLen) return false;
    if (r_.version == 2) {
      if (len < format::kV2BodyPrefixLen + format::kMinOpLen) return false;
      // Same generation and later than what we have: LSN must exceed the last good one.
      const std::uint64_t lsn = coding::get<std::uint64_t>(
          w_.at(p + format::kFrameHeaderLen + format::kFirstLsnOffset, sizeof(std::uint64_t)));
      // Records between the last good one and this frame must fit the bytes before it.
      if (lsn < next_lsn_ || lsn - next_lsn_ > (p - bad_) / format::kMinOpLen + 1) return false;
    }
    // The first op's fixed fields must fit the frame (O(1), before any CRC).
    const std::uint64_t ops_at = p + format::kFrameHeaderLen + (r_.version == 2 ? format::kV2BodyPrefixLen : 0);
    const std::uint64_t ops_len = p + format::kFrameHeaderLen + len - ops_at;
    if (ops_len < format::kMinOpLen) return false;
    const std::byte* op = w_.at(ops_at, format::kMinOpLen);
    const auto code = static_cast<std::uint8_t>(op[0]);
    const auto kind = static_cast<std::uint8_t>(op[1]);
    if ((code != 1 && code != 2) || kind > 1) return false;
    std::uint64_t id_len = 8;
    if (kind == 1) {
      id_len = 8 + coding::get<std::uint64_t>(op + 2);
      if (id_len < 9 || id_len > ops_len) return false;
    }
    if (code == 2) return 2 + id_len <= ops_len;
    if (2 + id_len + 4 > ops_len) return false;
    const std::uint32_t vec_len = coding::get<std::uint32_t>(w_.at(ops_at + 2 + id_len, 4));
    return 2 + id_len + 4 + std::uint64_t{4} * vec_len + 1 <= ops_len;
  }

  void count_frames_from(std::uint64_t p) {
    while (check_frame(p, false) == Verdict::Good) {
      const std::byte* body = w_.at(p + format::kFrameHeaderLen, last_len_);
      r_.frames_after_corruption += 1;
      r_.records_after_corruption += r_.version == 2 ? format::decode_v2_body_prefix(body).count : 1;
      p += format::kFrameHeaderLen + last_len_;
    }
  }

  const ReadableFile& f_;
  Window w_;
  const std::function<void(const RecordView&)>& on_record_;
  ScanMode mode_;
  bool live_ = false;
  ScanResult r_;
  std::uint64_t salt_ = 0;
  std::uint64_t next_lsn_ = 0;
  std::uint32_t last_len_ = 0;
  std::uint32_t last_crc_ = 0;  // of the frame check_frame found good last
  // FollowPoint's chain, last_frame and last_crc for the frames read in
  // order so far.
  std::uint32_t chain_ = 0;
  std::uint64_t last_frame_ = 0;
  std::uint32_t chain_crc_ = 0;
  std::uint64_t bad_ = 0;
  std::uint64_t look_limit_ = UINT64_MAX;
  DecodedOp op_;
};

}  // namespace

ScanResult scan_file(const ReadableFile& file, const std::function<void(const RecordView&)>& on_record, ScanMode mode,
                     FollowPoint* end, bool live) {
  Scanner s(file, on_record, mode, live);
  ScanResult r = s.run();
  if (end != nullptr) *end = s.point(r.valid_bytes);
  return r;
}

bool DamageSettler::read_again(std::uint64_t offset) {
  moving_ = damaged_at_.has_value() && offset > *damaged_at_;
  if (rereads_++ >= kMaxRereads) return false;
  if (damaged_at_ == offset) {
    if (++waits_ > kMaxWaits) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1 << waits_));
  }
  damaged_at_ = offset;
  return true;
}

Followed follow_file(const ReadableFile& file, const FollowPoint& from,
                     const std::function<void(const RecordView&)>& on_record, bool check_last_frame,
                     std::uint64_t until) {
  return Scanner(file, on_record, Scanner::Follow{}).follow(from, check_last_frame, until);
}

fs::path log_path_for(const fs::path& snapshot) {
  fs::path p = snapshot;
  p += ".wal";
  return p;
}

ScanResult scan_log(FileSystem& fs, const fs::path& path, const std::function<void(const RecordView&)>& on_record,
                    ScanMode mode) {
  const std::unique_ptr<ReadableFile> f = fs.open_read(path);
  return scan_file(*f, on_record, mode);
}

ScanResult scan_live_log(FileSystem& fs, const fs::path& path, const std::function<void(const RecordView&)>& on_record,
                         ScanMode mode) {
  const std::unique_ptr<ReadableFile> f = fs.open_read(path);
  return scan_file(*f, on_record, mode, nullptr, /*live=*/true);
}

}  // namespace iqdb::persist::wal
