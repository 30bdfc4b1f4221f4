// The stripe writer of a RADOS snapshot store: a save's bytes go to the
// stripe objects NAME.snap.<gen>.<k> as they come (docs/DISTRIBUTED.md,
// "Writing"); the publish is the store's (rados_store.cpp).
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
#include "rados/head_record.hpp"
#include "rados/rados_ops.hpp"
#include "rados/snapshot_store_impl.hpp"

namespace iqdb::persist {

namespace fs = std::filesystem;
using namespace rados_detail;

namespace {

// A snapshot's pieces of at least this many bytes (or a quarter of io_chunk,
// if less) go into a write operation straight from the caller's memory;
// smaller ones are gathered first.
constexpr std::size_t kCopyBelow = std::size_t{64} << 10;

// Writes a snapshot's bytes to its stripe objects as they come
// (docs/DISTRIBUTED.md, "Writing"): write operations of up to io_chunk
// bytes within one stripe, max_in_flight in flight. Pieces of copy_below_
// bytes or more (kCopyBelow) are added to the open operation straight from
// the caller's memory (librados copies them into the operation at once: the
// only copy); smaller ones are gathered first. The first kHold bytes stay
// in memory until close.
class StripeWriter final : public WritableFile {
 public:
  StripeWriter(RadosSnapshotStore::Impl& store, std::string name, std::uint64_t generation, fs::path temp)
      : s_(store),
        name_(std::move(name)),
        gen_(generation),
        temp_(std::move(temp)),
        stripe_(store.options.stripe_size),
        chunk_(store.options.io_chunk),
        copy_below_(static_cast<std::size_t>(std::min<std::uint64_t>(kCopyBelow, store.options.io_chunk / 4))) {
    hold_.reserve(kHold);
  }

  ~StripeWriter() override {
    in_flight_.clear();  // waits for each
    std::lock_guard lock(s_.mu);
    auto it = s_.pending.find(temp_.string());
    if (it != s_.pending.end()) it->second.stripes_touched = std::max<std::uint64_t>(created_.size(), 1);
  }

  void append(std::span<const std::byte> data) override {
    check_usable();
    while (!data.empty()) {
      if (pos_ < kHold) {
        const std::size_t n = std::min<std::size_t>(data.size(), kHold - static_cast<std::size_t>(pos_));
        hold_.insert(hold_.end(), data.begin(), data.begin() + static_cast<std::ptrdiff_t>(n));
        hold_dirty_ = true;
        grow(pos_ + n);
        pos_ += n;
        data = data.subspan(n);
        continue;
      }
      if (!open_) start_op();
      const std::size_t n = std::min<std::size_t>(data.size(), op_cap_ - op_len_);
      if (n < copy_below_) {
        // Small pieces are gathered, so that an operation does not carry
        // many tiny writes.
        if (small_.empty()) small_off_ = pos_;
        small_.insert(small_.end(), data.begin(), data.begin() + static_cast<std::ptrdiff_t>(n));
      } else {
        // Straight from the caller's memory: librados copies the bytes into
        // the operation now (one copy, as for any librados write).
        flush_small();
        rados_write_op_write(open_->op.op, reinterpret_cast<const char*>(data.data()), n, pos_ - op_k_ * stripe_);
      }
      stream_crc_[static_cast<std::size_t>(pos_ / stripe_)].update(data.data(), n);
      op_len_ += n;
      pos_ += n;
      data = data.subspan(n);
      if (op_len_ == op_cap_) submit_op();
    }
  }

  void write_at(std::uint64_t offset, std::span<const std::byte> data) override {
    check_usable();
    if (offset > hold_.size() || data.size() > hold_.size() - offset) {
      throw PersistError::at(ErrorKind::Unsupported, temp_,
                             "a RADOS snapshot can rewrite only its first " + std::to_string(hold_.size()) +
                                 " bytes (write of " + std::to_string(data.size()) + " at " + std::to_string(offset) +
                                 ")");
    }
    std::memcpy(hold_.data() + offset, data.data(), data.size());
    hold_dirty_ = true;
  }

  void sync() override {
    check_usable();
    submit_op();
    if (hold_dirty_) write_hold();
    drain();
  }
  void datasync() override { sync(); }

  void truncate(std::uint64_t size) override {
    check_usable();
    if (size == pos_) return;
    if (size > pos_ || size > hold_.size()) {
      throw PersistError::at(ErrorKind::Unsupported, temp_,
                             "a RADOS snapshot can be truncated only within its first " +
                                 std::to_string(hold_.size()) + " bytes");
    }
    // Start over from the held bytes: what was streamed goes.
    open_.reset();  // never submitted
    small_.clear();
    op_len_ = 0;
    drain();
    std::vector<std::string> created;  // highest index first (RadosSnapshotStore::remove)
    for (std::uint64_t k = created_.size(); k-- > 0;) {
      if (created_[k]) created.push_back(object(k));
    }
    s_.remove_objects(created);
    created_.assign(created_.size(), false);
    for (auto& c : stream_crc_) c.reset();
    hold_.resize(static_cast<std::size_t>(size));
    hold_dirty_ = true;
    pos_ = size;
  }

  void start_writeback(std::uint64_t, std::uint64_t) override {}

  void close() override {
    check_usable();
    submit_op();
    if (hold_dirty_) write_hold();
    drain();
    const std::uint64_t count = (pos_ + stripe_ - 1) / stripe_;
    if (count > kMaxStripes) {
      throw PersistError::at(ErrorKind::InvalidArgument, temp_,
                             "the snapshot needs " + std::to_string(count) + " stripes, at most " +
                                 std::to_string(kMaxStripes) + " are allowed: raise RadosOptions::stripe_size");
    }
    std::vector<std::uint32_t> crcs(static_cast<std::size_t>(count));
    for (std::uint64_t k = 0; k < count; ++k) {
      const std::uint64_t begin = k * stripe_;
      const std::uint64_t end = std::min(begin + stripe_, pos_);
      // Held part [begin, min(end, held)), streamed part after it.
      const std::uint64_t held_end = std::min<std::uint64_t>(end, hold_.size());
      const std::uint64_t held_len = held_end > begin ? held_end - begin : 0;
      const std::uint32_t held_crc = checksum::compute(hold_.data() + std::min<std::uint64_t>(begin, hold_.size()),
                                                       static_cast<std::size_t>(held_len));
      const std::uint32_t stream = k < stream_crc_.size() ? stream_crc_[k].value() : 0;
      crcs[k] = checksum::combine(held_crc, stream, (end - begin) - held_len);
    }
    closed_ = true;
    std::lock_guard lock(s_.mu);
    auto& p = s_.pending.at(temp_.string());
    p.closed = true;
    p.total = pos_;
    p.crcs = std::move(crcs);
    p.stripes_touched = std::max<std::uint64_t>(created_.size(), 1);
  }

  const fs::path& path() const noexcept override { return temp_; }

 private:
  struct Write {
    WriteOp op;  // holds its own copy of the bytes
    std::uint64_t stripe = 0;
    Completion done;  // last: destroyed first, waiting for the operation
  };

  std::string object(std::uint64_t k) const { return RadosSnapshotStore::stripe_object(name_, gen_, k); }

  void check_usable() const {
    if (closed_) throw PersistError::at(ErrorKind::InvalidArgument, temp_, "the file is closed");
    if (failed_) throw PersistError::at(ErrorKind::Io, temp_, "an earlier write failed");
  }

  // Track the stripes that the bytes up to `end` reach.
  void grow(std::uint64_t end) {
    const std::uint64_t stripes = (end + stripe_ - 1) / stripe_;
    if (stripes > kMaxStripes + 1) {
      failed_ = true;
      throw PersistError::at(ErrorKind::InvalidArgument, temp_,
                             "the snapshot exceeds " + std::to_string(kMaxStripes) +
                                 " stripes: raise RadosOptions::stripe_size");
    }
    if (stream_crc_.size() < stripes) stream_crc_.resize(static_cast<std::size_t>(stripes));
  }

  // Open the operation that takes the bytes from pos_ on: up to io_chunk
  // bytes, within pos_'s stripe.
  void start_op() {
    const std::uint64_t stripe_end = (pos_ / stripe_ + 1) * stripe_;
    op_cap_ = static_cast<std::size_t>(std::min<std::uint64_t>(chunk_, stripe_end - pos_));
    grow(pos_ + op_cap_);
    op_k_ = pos_ / stripe_;
    open_ = begin_write(op_k_);
    op_len_ = 0;
  }

  // The gathered small pieces, into the open operation.
  void flush_small() {
    if (small_.empty()) return;
    rados_write_op_write(open_->op.op, reinterpret_cast<const char*>(small_.data()), small_.size(),
                         small_off_ - op_k_ * stripe_);
    small_.clear();
  }

  // The open operation, if it holds any bytes, to RADOS.
  void submit_op() {
    if (!open_) return;
    if (op_len_ > 0) {
      flush_small();
      launch(std::move(open_));
    }
    open_.reset();
    op_len_ = 0;
  }

  // The held bytes, to each stripe they overlap.
  void write_hold() {
    for (std::uint64_t begin = 0; begin < hold_.size();) {
      const std::uint64_t k = begin / stripe_;
      const std::uint64_t end = std::min<std::uint64_t>((k + 1) * stripe_, hold_.size());
      submit(k, begin - k * stripe_, hold_.data() + begin, static_cast<std::size_t>(end - begin));
      begin = end;
    }
    hold_dirty_ = false;
  }

  // Bytes to stripe k at `offset`; librados copies them.
  void submit(std::uint64_t k, std::uint64_t offset, const std::byte* data, std::size_t size) {
    std::unique_ptr<Write> w = begin_write(k);
    rados_write_op_write(w->op.op, reinterpret_cast<const char*>(data), size, offset);
    launch(std::move(w));
  }

  // A write operation on stripe k, not yet submitted.
  std::unique_ptr<Write> begin_write(std::uint64_t k) {
    if (created_.size() <= k) created_.resize(static_cast<std::size_t>(k + 1), false);
    auto w = std::make_unique<Write>();
    w->stripe = k;
    // Each stripe object is new: a collision with an object left by anyone
    // else is an error (EEXIST), never an overwrite.
    if (!created_[k]) rados_write_op_create(w->op.op, LIBRADOS_CREATE_EXCLUSIVE, nullptr);
    created_[k] = true;
    return w;
  }

  // Submit `w`, then wait for the oldest while max_in_flight are in flight.
  void launch(std::unique_ptr<Write> w) {
    const std::string oid = object(w->stripe);
    const int r = rados_aio_write_op_operate(w->op.op, s_.io, w->done.c, oid.c_str(), nullptr, 0);
    if (r < 0) {
      failed_ = true;
      s_.fail(oid, "writing", r);
    }
    w->done.submitted = true;
    in_flight_.push_back(std::move(w));
    while (in_flight_.size() >= s_.options.max_in_flight) reap();
  }

  void reap() {
    std::unique_ptr<Write> w = std::move(in_flight_.front());
    in_flight_.pop_front();
    const int r = w->done.wait();
    if (r < 0) {
      failed_ = true;
      in_flight_.clear();
      if (r == -EEXIST) {
        throw PersistError::at(ErrorKind::Io, s_.object_path(object(w->stripe)),
                               "the stripe object exists already (left by an earlier head of the same name?)");
      }
      s_.fail(object(w->stripe), "writing", r);
    }
  }

  void drain() {
    while (!in_flight_.empty()) reap();
  }

  RadosSnapshotStore::Impl& s_;
  std::string name_;
  std::uint64_t gen_;
  fs::path temp_;
  std::uint64_t stripe_;
  std::uint64_t chunk_;
  std::size_t copy_below_;  // pieces smaller than this are gathered (kCopyBelow)
  std::uint64_t pos_ = 0;  // bytes appended (the file's size)
  std::vector<std::byte> hold_;
  bool hold_dirty_ = false;
  std::unique_ptr<Write> open_;  // the operation being filled, not yet submitted
  std::uint64_t op_k_ = 0;       // its stripe
  std::size_t op_cap_ = 0;       // the bytes it takes
  std::size_t op_len_ = 0;       // the bytes it has (small_'s included)
  std::vector<std::byte> small_;  // small pieces gathered for open_, from file offset small_off_
  std::uint64_t small_off_ = 0;
  std::vector<checksum::Crc32> stream_crc_;  // per stripe, of the bytes after the held ones
  std::vector<bool> created_;
  std::deque<std::unique_ptr<Write>> in_flight_;
  bool closed_ = false;
  bool failed_ = false;
};

}  // namespace

std::unique_ptr<WritableFile> rados_detail::open_stripe_writer(RadosSnapshotStore::Impl& store, std::string name,
                                                               std::uint64_t generation, fs::path temp) {
  return std::make_unique<StripeWriter>(store, std::move(name), generation, std::move(temp));
}

}  // namespace iqdb::persist
