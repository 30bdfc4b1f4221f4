// The stripe reader of a RADOS snapshot store: a load's reads of a
// published snapshot, checked stripe by stripe against the head's CRCs
// (docs/DISTRIBUTED.md, "Reading").
#include <rados/librados.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "iqdb/persist/checksum.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/rados.hpp"
#include "fs/in_place_read.hpp"
#include "rados/head_record.hpp"
#include "rados/rados_ops.hpp"
#include "rados/snapshot_store_impl.hpp"

namespace iqdb::persist {

namespace fs = std::filesystem;
using namespace rados_detail;

namespace {

// Reads a published snapshot (docs/DISTRIBUTED.md, "Reading"). Two paths:
//  - buffered: io_chunk pieces of the stripe objects, read ahead up to
//    max_in_flight at once (once the caller reads on past its first chunk:
//    opening a snapshot for its header reads one chunk) into buffers it
//    reuses (at most max_in_flight + 1, allocated once: fresh memory costs a
//    page fault per page), copied out by read_at;
//  - in place, for a read of io_chunk bytes or more (the vector block):
//    io_chunk pieces read straight into the caller's memory, max_in_flight
//    at once, each checked once it has landed (its length; the object's, for
//    a stripe's last piece) and reported to the caller (InPlaceRead), which
//    checksums it while it is in cache. The bytes of such a read that lie in
//    chunks already in the read-ahead window are copied from there.
// Each stripe's CRC is computed in file order over the bytes as they are
// handed out (bytes a caller skips when it leaves their chunk, or jumps
// over, are read for it) and compared with the head's once the stripe's
// last byte is in: one CRC pass over every byte besides the caller's.
class StripeReader final : public ReadableFile, public detail::InPlaceRead {
 public:
  StripeReader(RadosSnapshotStore::Impl& store, std::string name, RadosHead head, fs::path path)
      : s_(store),
        name_(std::move(name)),
        head_(std::move(head)),
        path_(std::move(path)),
        chunk_(store.options.io_chunk),
        crc_(static_cast<std::size_t>(head_.stripe_count)),
        crc_end_(static_cast<std::size_t>(head_.stripe_count)) {
    for (std::size_t k = 0; k < crc_end_.size(); ++k) crc_end_[k] = k * head_.stripe_size;
  }
  StripeReader(const StripeReader&) = delete;
  StripeReader& operator=(const StripeReader&) = delete;

  ~StripeReader() override { window_.clear(); }

  std::size_t read_at(std::uint64_t offset, std::span<std::byte> dst) const override {
    return read_in_place(offset, dst, {});
  }

  std::size_t read_in_place(std::uint64_t offset, std::span<std::byte> dst, const Landed& landed) const override {
    std::lock_guard lock(mu_);
    if (failure_) std::rethrow_exception(failure_);
    if (offset >= head_.total_size) return 0;
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(dst.size(), head_.total_size - offset));
    try {
      const bool large = want >= chunk_;
      const std::size_t done = copy_out(offset, dst.first(want), landed, large);
      if (done < want) land_in_place(offset + done, dst.subspan(done, want - done), landed);
    } catch (const PersistError&) {
      // Sticky: the snapshot reader drains the rest after a decoding error;
      // it must see this error again, not bytes from past the damage.
      failure_ = std::current_exception();
      throw;
    }
    return want;
  }

  std::uint64_t size() const noexcept override { return head_.total_size; }
  const fs::path& path() const noexcept override { return path_; }

 private:
  // One read of [file_offset, file_offset + length), inside one stripe, into
  // `data`: a buffer of the window (owned) or the caller's memory.
  struct Fetch {
    std::uint64_t stripe = 0, chunk = 0, file_offset = 0, length = 0;
    bool last_in_stripe = false;
    bool checked = false;
    ReadOp op;
    std::unique_ptr<char[]> owned;
    char* data = nullptr;
    std::size_t bytes_read = 0;
    int read_rv = 0;
    std::uint64_t object_size = 0;
    std::time_t mtime = 0;
    int stat_rv = 0;
    Completion done;  // last: destroyed first, waiting for the read into the members above
  };

  std::uint64_t stripe_begin(std::uint64_t k) const { return k * head_.stripe_size; }
  std::uint64_t stripe_length(std::uint64_t k) const {
    return std::min(head_.stripe_size, head_.total_size - stripe_begin(k));
  }
  std::uint64_t stripe_end(std::uint64_t k) const { return stripe_begin(k) + stripe_length(k); }
  std::string object(std::uint64_t k) const { return RadosSnapshotStore::stripe_object(name_, head_.generation, k); }

  // The chunk after (k, j) in file order, if any.
  bool next(std::uint64_t& k, std::uint64_t& j) const {
    if ((j + 1) * chunk_ < stripe_length(k)) {
      ++j;
      return true;
    }
    if (k + 1 < head_.stripe_count) {
      ++k;
      j = 0;
      return true;
    }
    return false;
  }

  // A buffer of io_chunk bytes: a reused one, else a new one (not
  // zero-filled: the read overwrites it).
  std::unique_ptr<char[]> take_buffer() const {
    if (spare_.empty()) return std::make_unique_for_overwrite<char[]>(static_cast<std::size_t>(chunk_));
    std::unique_ptr<char[]> b = std::move(spare_.back());
    spare_.pop_back();
    return b;
  }

  // A read of `length` bytes at file offset `at` (inside one stripe) into
  // `data`, or into a buffer of its own when `data` is null; submitted.
  std::unique_ptr<Fetch> submit(std::uint64_t at, std::uint64_t length, char* data) const {
    auto f = std::make_unique<Fetch>();
    f->stripe = at / head_.stripe_size;
    f->file_offset = at;
    f->length = length;
    f->last_in_stripe = at + length == stripe_end(f->stripe);
    if (data == nullptr) {
      f->owned = take_buffer();
      data = f->owned.get();
    }
    f->data = data;
    rados_read_op_read(f->op.op, at - stripe_begin(f->stripe), static_cast<std::size_t>(length), f->data,
                       &f->bytes_read, &f->read_rv);
    // The last piece also checks that the object has no bytes past the end.
    if (f->last_in_stripe) rados_read_op_stat(f->op.op, &f->object_size, &f->mtime, &f->stat_rv);
    const std::string oid = object(f->stripe);
    const int r = rados_aio_read_op_operate(f->op.op, s_.io, f->done.c, oid.c_str(), 0);
    if (r < 0) {
      if (f->owned) spare_.push_back(std::move(f->owned));  // never submitted: librados does not write into it
      s_.fail(oid, "reading", r);
    }
    f->done.submitted = true;
    return f;
  }

  Fetch& issue(std::uint64_t k, std::uint64_t j) const {
    const std::uint64_t at = stripe_begin(k) + j * chunk_;
    std::unique_ptr<Fetch> f = submit(at, std::min<std::uint64_t>(chunk_, stripe_end(k) - at), nullptr);
    f->chunk = j;
    last_k_ = k;
    last_j_ = j;
    window_.push_back(std::move(f));
    return *window_.back();
  }

  // The front chunk is done with: the bytes the caller skipped go into the
  // stripe's CRC, and its buffer back to the spares once librados is done.
  void retire_front() const {
    std::unique_ptr<Fetch> f = std::move(window_.front());
    window_.pop_front();
    if (f->checked) checksum_to(*f, f->length);
    (void)f->done.wait();
    spare_.push_back(std::move(f->owned));
  }

  bool in_window(std::uint64_t at) const {
    return std::any_of(window_.begin(), window_.end(),
                       [&](const auto& f) { return at >= f->file_offset && at < f->file_offset + f->length; });
  }

  // Copy out of the window's chunks from `offset`: all of `dst` for a small
  // read, for a large one as far as the window already reaches (no read
  // ahead is started for it). Returns the bytes copied.
  std::size_t copy_out(std::uint64_t offset, std::span<std::byte> dst, const Landed& landed, bool large) const {
    std::size_t done = 0;
    while (done < dst.size()) {
      const std::uint64_t at = offset + done;
      if (large && !in_window(at)) break;
      const std::uint64_t k = at / head_.stripe_size;
      const std::uint64_t j = (at - stripe_begin(k)) / chunk_;
      Fetch& f = fetch(k, j, !large);
      const std::uint64_t in = at - f.file_offset;
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(dst.size() - done, f.length - in));
      // The CRC pass reads the piece into cache, the copy then takes it
      // from there; an in-place caller gets the piece's CRC from the same
      // pass.
      if (landed) {
        const std::uint32_t crc = checksum_piece(f, in, n);
        std::memcpy(dst.data() + done, f.data + in, n);
        landed(dst.subspan(done, n), crc);
      } else {
        checksum_to(f, in + n);
        std::memcpy(dst.data() + done, f.data + in, n);
      }
      done += n;
    }
    return done;
  }

  // `dst` (the bytes at file offset `at`) read straight into place in
  // io_chunk pieces, max_in_flight at once, each checked, checksummed into
  // its stripe's CRC and reported in file order once it has landed.
  void land_in_place(std::uint64_t at, std::span<std::byte> dst, const Landed& landed) const {
    leave_window(at);
    const std::uint64_t end = at + dst.size();
    std::deque<std::unique_ptr<Fetch>> flying;
    for (std::uint64_t next_at = at; next_at < end || !flying.empty();) {
      while (next_at < end && flying.size() < s_.options.max_in_flight) {
        const std::uint64_t n = std::min({std::uint64_t{chunk_}, end - next_at, stripe_end(next_at / head_.stripe_size) - next_at});
        flying.push_back(submit(next_at, n, reinterpret_cast<char*>(dst.data() + (next_at - at))));
        next_at += n;
      }
      Fetch& f = *flying.front();
      check(f);
      const std::uint32_t crc = checksum_piece(f, 0, static_cast<std::size_t>(f.length));
      if (landed) landed(dst.subspan(static_cast<std::size_t>(f.file_offset - at), static_cast<std::size_t>(f.length)), crc);
      flying.pop_front();
    }
    // Read ahead again only once the caller moves on past the chunk it ends in.
    ahead_ = 0;
    asked_k_ = (end - 1) / head_.stripe_size;
    asked_j_ = (end - 1 - stripe_begin(asked_k_)) / chunk_;
  }

  // Before an in-place read at `at`: chunks of the window before it are done
  // with (into the CRC), the others are not needed.
  void leave_window(std::uint64_t at) const {
    while (!window_.empty() && window_.front()->file_offset + window_.front()->length <= at) retire_front();
    window_.clear();
  }

  Fetch& fetch(std::uint64_t k, std::uint64_t j, bool read_ahead) const {
    // Chunks before (k, j) are done with; a chunk after it means a jump back.
    Fetch* found = nullptr;
    while (!window_.empty()) {
      Fetch& f = *window_.front();
      if (f.stripe == k && f.chunk == j) {
        found = &f;
        break;
      }
      if (f.stripe > k || (f.stripe == k && f.chunk > j)) {
        window_.clear();
        break;
      }
      retire_front();
    }
    if (found == nullptr) found = &issue(k, j);
    if (read_ahead) read_ahead_from(k, j);
    if (!found->checked) check(*found);
    return *found;
  }

  // Read ahead: none while the caller stays in its first chunk (a header
  // read), then twice as many chunks each time it moves on to the next
  // one, up to max_in_flight reads besides the chunk (k, j) being copied out.
  void read_ahead_from(std::uint64_t k, std::uint64_t j) const {
    std::uint64_t ak = asked_k_, aj = asked_j_;
    if (next(ak, aj) && ak == k && aj == j) {
      ahead_ = std::min<std::uint64_t>(std::max<std::uint64_t>(ahead_ * 2, 1), s_.options.max_in_flight);
    }
    asked_k_ = k;
    asked_j_ = j;
    std::uint64_t nk = last_k_, nj = last_j_;
    while (window_.size() <= ahead_ && next(nk, nj)) issue(nk, nj);
  }

  // The read of `f` completed whole, and the object is as long as the head
  // says (its last piece).
  void check(Fetch& f) const {
    const std::string obj = object(f.stripe);
    const fs::path where = s_.object_path(obj);
    const int r = f.done.wait();
    if (r == -ENOENT) {
      throw PersistError::at(ErrorKind::TruncatedPayload, where,
                             "stripe " + std::to_string(f.stripe) + " of generation " +
                                 std::to_string(head_.generation) +
                                 " is missing (if a newer generation was published meanwhile, load again)",
                             f.file_offset);
    }
    if (r < 0) s_.fail(obj, "reading", r);
    if (f.bytes_read != f.length) {
      throw PersistError::at(ErrorKind::TruncatedPayload, where,
                             "stripe object is shorter than the head declares: " + std::to_string(f.bytes_read) +
                                 " bytes at offset " + std::to_string(f.file_offset - stripe_begin(f.stripe)) +
                                 ", " + std::to_string(f.length) + " expected",
                             f.file_offset + f.bytes_read);
    }
    if (f.last_in_stripe && f.object_size != stripe_length(f.stripe)) {
      throw PersistError::at(ErrorKind::InvalidPayload, where,
                             "stripe object holds " + std::to_string(f.object_size) + " bytes, the head declares " +
                                 std::to_string(stripe_length(f.stripe)));
    }
    f.checked = true;
  }

  // The stripe's CRC over the first `upto` bytes of `f` (a checked read):
  // the bytes past what the CRC holds, after the ones before `f` that it
  // lacks (read for it); compared with the head's once the stripe's last
  // byte is in.
  void checksum_to(const Fetch& f, std::uint64_t upto) const {
    const auto k = static_cast<std::size_t>(f.stripe);
    if (crc_end_[k] < f.file_offset) fill_gap(f.stripe, f.file_offset);
    const std::uint64_t end = f.file_offset + upto;
    if (end <= crc_end_[k]) return;
    crc_[k].update(f.data + (crc_end_[k] - f.file_offset), static_cast<std::size_t>(end - crc_end_[k]));
    crc_end_[k] = end;
    check_stripe_crc(f.stripe);
  }

  // f's bytes [in, in + n) into its stripe's CRC, as checksum_to(f, in +
  // n); returns the CRC of those bytes alone, for the caller's own CRC
  // (InPlaceRead::Landed). One pass over them when the stripe's CRC ends
  // where they start (always, but after a jump within the chunk): the
  // stripe's CRC is then joined with theirs (checksum::combine), not
  // computed again.
  std::uint32_t checksum_piece(const Fetch& f, std::uint64_t in, std::size_t n) const {
    const auto k = static_cast<std::size_t>(f.stripe);
    if (crc_end_[k] < f.file_offset) fill_gap(f.stripe, f.file_offset);
    const std::uint32_t crc = checksum::compute(f.data + in, n);
    const std::uint64_t at = f.file_offset + in;
    if (crc_end_[k] != at) {
      checksum_to(f, in + n);
      return crc;
    }
    crc_[k].append_crc(crc, n);
    crc_end_[k] = at + n;
    check_stripe_crc(f.stripe);
    return crc;
  }

  // Once stripe k's CRC covers its last byte: equal to the head's, or a
  // typed error naming the object.
  void check_stripe_crc(std::uint64_t k) const {
    const auto i = static_cast<std::size_t>(k);
    if (crc_end_[i] == stripe_end(k) && crc_[i].value() != head_.stripe_crcs[i]) {
      throw PersistError::checksum(s_.object_path(object(k)), head_.stripe_crcs[i], crc_[i].value(), stripe_begin(k),
                                   "stripe");
    }
  }

  // The stripe's bytes from where its CRC stops up to file offset `to`
  // (which the caller jumped over), read into a spare buffer for the CRC.
  void fill_gap(std::uint64_t k, std::uint64_t to) const {
    auto& crc_end = crc_end_[static_cast<std::size_t>(k)];
    while (crc_end < to) {
      std::unique_ptr<Fetch> f = submit(crc_end, std::min<std::uint64_t>(chunk_, to - crc_end), nullptr);
      check(*f);
      crc_[static_cast<std::size_t>(k)].update(f->data, static_cast<std::size_t>(f->length));
      crc_end += f->length;
      spare_.push_back(std::move(f->owned));
    }
  }

  RadosSnapshotStore::Impl& s_;
  std::string name_;
  RadosHead head_;
  fs::path path_;
  std::uint64_t chunk_;
  mutable std::mutex mu_;
  mutable std::vector<std::unique_ptr<char[]>> spare_;  // buffers of chunk_ bytes no read uses
  mutable std::deque<std::unique_ptr<Fetch>> window_;
  mutable std::vector<checksum::Crc32> crc_;         // per stripe, of its bytes up to crc_end_
  mutable std::vector<std::uint64_t> crc_end_;       // per stripe, the file offset its CRC reaches
  mutable std::exception_ptr failure_;
  mutable std::uint64_t last_k_ = 0, last_j_ = 0;    // the chunk issued last
  mutable std::uint64_t asked_k_ = 0, asked_j_ = 0;  // the chunk read_at took bytes from last
  mutable std::uint64_t ahead_ = 0;                  // chunks to keep in flight after it
};

}  // namespace

std::unique_ptr<ReadableFile> rados_detail::open_stripe_reader(RadosSnapshotStore::Impl& store, std::string name,
                                                               RadosHead head, fs::path path) {
  return std::make_unique<StripeReader>(store, std::move(name), std::move(head), std::move(path));
}

}  // namespace iqdb::persist
