// RadosSnapshotStore: the FileSystem seam over a RADOS pool. A snapshot is
// striped over objects NAME.snap.<gen>.<k> and published by one guarded
// operation on NAME.head (docs/DISTRIBUTED.md).
// The C API of librados (rados/librados.h): its C++ headers do not parse
// as C++20 under clang (an ambiguous operator== in buffer.h), and the C
// calls copy what they write and read into the caller's buffers.
#include <rados/librados.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "iqdb/persist/checksum.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/rados.hpp"
#include "fs/in_place_read.hpp"
#include "rados/change_notify.hpp"
#include "rados/head_record.hpp"
#include "rados/rados_log.hpp"
#include "rados/rados_ops.hpp"
#include "rados/writer_fence.hpp"

namespace iqdb::persist {

namespace fs = std::filesystem;
using namespace rados_detail;

namespace {

constexpr const char* kScheme = "rados://";
// The first bytes of a snapshot stay in memory until the file is closed, so
// that write_snapshot's final header write (at offset 0) patches memory; a
// v3 header is at most 65536 bytes.
constexpr std::size_t kHold = 65536;
// A snapshot's pieces of at least this many bytes (or a quarter of io_chunk,
// if less) go into a write operation straight from the caller's memory;
// smaller ones are gathered first.
constexpr std::size_t kCopyBelow = std::size_t{64} << 10;

}  // namespace

struct RadosSnapshotStore::Impl {
  rados_t cluster = nullptr;
  rados_ioctx_t io = nullptr;
  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    // Their threads use io: stopped first (the collections queued are run,
    // each notifier stops after its notify in flight).
    stop_collector();
    for (auto& [name, n] : notifiers) n->shutdown();
    if (io != nullptr) rados_ioctx_destroy(io);
    if (cluster != nullptr) rados_shutdown(cluster);
  }
  std::string pool;
  RadosOptions options;
  std::mutex mu;
  // Saves in progress or closed but not published, by temporary path.
  struct Pending {
    std::string name;
    std::uint64_t generation = 0;
    std::uint64_t previous = 0;
    std::uint64_t stripes_touched = 0;
    bool closed = false;
    std::uint64_t total = 0;
    std::vector<std::uint32_t> crcs;
  };
  std::map<std::string, Pending> pending;
  std::random_device random;
  // Writer locks held through this store, by name (writer_lock.cpp).
  std::map<std::string, std::shared_ptr<Fence>> fences;
  // The generation each name's last open_read opened (the log that goes
  // with the snapshot a reader loaded: rados_storage.cpp).
  std::map<std::string, std::uint64_t> last_read;
  // Read replicas' wake-ups, by name (change_notify.hpp).
  std::map<std::string, std::shared_ptr<ChangeNotifier>> notifiers;

  // Garbage collection after publishes, on a thread of the store's own
  // (started by the first publish): rename() returns once the new head is
  // published, the superseded generation is removed behind it.
  std::mutex gc_mu;
  std::condition_variable gc_cv;
  std::set<std::string> gc_queue;  // names to collect
  bool gc_busy = false;            // a collection is running
  bool gc_stop = false;
  std::thread gc_thread;

  // Queue a collection of `name` (once, however many publishes ask). Where no
  // thread can be had, collects here.
  void schedule_collection(const std::string& name);
  // Blocks until nothing is queued or running.
  void wait_collections() {
    std::unique_lock lock(gc_mu);
    gc_cv.wait(lock, [this] { return gc_queue.empty() && !gc_busy; });
  }
  void stop_collector() noexcept {
    {
      std::lock_guard lock(gc_mu);
      gc_stop = true;
    }
    gc_cv.notify_all();
    if (gc_thread.joinable()) gc_thread.join();
  }
  void run_collector();

  std::shared_ptr<Fence> fence_of(const std::string& name) {
    std::lock_guard lock(mu);
    const auto it = fences.find(name);
    return it == fences.end() ? nullptr : it->second;
  }

  fs::path object_path(const std::string& object) const { return fs::path(kScheme + pool + "/" + object); }

  struct Parsed {
    std::string name;
    bool temp = false;
  };
  Parsed parse(const fs::path& path) const {
    const std::string s = path.string();
    const std::string prefix = kScheme + pool + "/";
    if (s.compare(0, prefix.size(), prefix) != 0) {
      throw PersistError::argument("path '" + s + "' is not in this store's pool (expected " + prefix + "NAME)");
    }
    std::string rest = s.substr(prefix.size());
    if (rest.size() > 1 && rest.front() == '.') {
      const std::size_t t = rest.rfind(".tmp-");
      if (t != std::string::npos && t > 1) {
        std::string name = rest.substr(1, t - 1);
        check_name(name);
        return {std::move(name), true};
      }
    }
    check_name(rest);
    return {std::move(rest), false};
  }

  [[noreturn]] void fail(const std::string& object, std::string_view op, int r) const {
    throw_rados(object_path(object), op, r);
  }

  // One attribute of `object`, nullopt when it is absent; at most 64 bytes.
  std::optional<std::string> read_attr(const std::string& object, const char* attr) {
    char buf[65];
    const int r = rados_getxattr(io, object.c_str(), attr, buf, sizeof buf);
    if (r == -ENODATA) return std::nullopt;
    if (r < 0) fail(object, std::string("reading attribute ") + attr, r);
    if (static_cast<std::size_t>(r) >= sizeof buf) {
      throw PersistError::at(ErrorKind::InvalidHeader, object_path(object),
                             std::string("attribute ") + attr + " is longer than 64 bytes");
    }
    return std::string(buf, static_cast<std::size_t>(r));
  }

  // The head's attributes: (published generation, next generation), or
  // nullopt when the head object does not exist.
  std::optional<std::pair<std::uint64_t, std::uint64_t>> read_counters(const std::string& name) {
    const std::string head = head_object(name);
    ReadOp op;
    Xattrs attrs;
    attrs.add_to(op);
    const int r = rados_read_op_operate(op.op, io, head.c_str(), 0);
    if (r == -ENOENT) return std::nullopt;
    if (r < 0) fail(head, "reading the head's attributes", r);
    auto values = attrs.values();
    const auto g = decode_generation(values[kGenAttr]);
    const auto n = decode_generation(values[kNextAttr]);
    if (!g || !n || *n <= *g) {
      throw PersistError::at(ErrorKind::InvalidHeader, object_path(head),
                             "the head's generation attributes are missing or malformed ('" + values[kGenAttr] +
                                 "', '" + values[kNextAttr] + "')");
    }
    return std::make_pair(*g, *n);
  }

  // Take a generation number no other writer has or will get.
  std::pair<std::uint64_t, std::uint64_t> allocate(const std::string& name) {
    const std::string head = head_object(name);
    for (int attempt = 0; attempt < 1000; ++attempt) {
      const auto counters = read_counters(name);
      if (!counters) {
        WriteOp op;
        rados_write_op_create(op.op, LIBRADOS_CREATE_EXCLUSIVE, nullptr);
        set_xattr(op, kGenAttr, encode_generation(0));
        set_xattr(op, kNextAttr, encode_generation(1));
        const int r = rados_write_op_operate(op.op, io, head.c_str(), nullptr, 0);
        if (r < 0 && r != -EEXIST) fail(head, "creating the head", r);
        continue;
      }
      const auto [published, next] = *counters;
      WriteOp op;
      cmp_xattr(op, kNextAttr, encode_generation(next));
      set_xattr(op, kNextAttr, encode_generation(next + 1));
      const int r = rados_write_op_operate(op.op, io, head.c_str(), nullptr, 0);
      if (r == -ECANCELED) continue;  // another writer took `next`
      if (r < 0) fail(head, "allocating a generation", r);
      return {next, published};
    }
    throw PersistError::at(ErrorKind::Locked, object_path(head), "could not allocate a generation (1000 races lost)");
  }

  void remove_object(const std::string& object) {
    const int r = rados_remove(io, object.c_str());
    if (r < 0 && r != -ENOENT) fail(object, "removing", r);
  }

  // Remove `objects`, up to max_in_flight at once (one after the other,
  // 16 stripes took ~80 ms on the test cluster); a missing one is no error.
  // Every removal is tried; the first failure is thrown once none is in
  // flight.
  void remove_objects(const std::vector<std::string>& objects) {
    struct Removal {
      explicit Removal(const std::string* o) noexcept : object(o) {}
      const std::string* object;
      Completion done;
    };
    std::deque<Removal> flying;
    const std::string* failed = nullptr;
    int failed_rv = 0;
    const auto note = [&](const std::string& o, int r) {
      if (r < 0 && r != -ENOENT && failed == nullptr) {
        failed = &o;
        failed_rv = r;
      }
    };
    const auto reap = [&] {
      note(*flying.front().object, flying.front().done.wait());
      flying.pop_front();
    };
    for (const std::string& o : objects) {
      Removal& x = flying.emplace_back(&o);
      const int r = rados_aio_remove(io, o.c_str(), x.done.c);
      if (r < 0) {
        note(o, r);
        flying.pop_back();  // never submitted
      } else {
        x.done.submitted = true;
      }
      while (flying.size() >= options.max_in_flight) reap();  // at least 1 (open checks)
    }
    while (!flying.empty()) reap();
    if (failed != nullptr) fail(*failed, "removing", failed_rv);
  }

  // Every stripe object NAME.snap.<gen>.<k> and every log object
  // NAME.log.<gen>.<k> of NAME: (generation, object name).
  std::vector<std::pair<std::uint64_t, std::string>> list_stripes(const std::string& name) {
    const std::string snap_prefix = name + ".snap.";
    const std::string log_prefix = name + ".log.";
    std::vector<std::pair<std::uint64_t, std::string>> out;
    rados_list_ctx_t ctx = nullptr;
    int r = rados_nobjects_list_open(io, &ctx);
    if (r < 0) fail(name, "listing the pool", r);
    for (;;) {
      const char* entry = nullptr;
      r = rados_nobjects_list_next(ctx, &entry, nullptr, nullptr);
      if (r == -ENOENT) break;
      if (r < 0) {
        rados_nobjects_list_close(ctx);
        fail(name, "listing the pool", r);
      }
      const std::string_view oid = entry;
      const std::size_t prefix = oid.starts_with(snap_prefix)  ? snap_prefix.size()
                                 : oid.starts_with(log_prefix) ? log_prefix.size()
                                                               : 0;
      if (prefix == 0) continue;
      // Strictly <decimal gen>.<decimal stripe>, so other names never match.
      const std::string_view rest = oid.substr(prefix);
      const std::size_t dot = rest.find('.');
      if (dot == 0 || dot == std::string_view::npos || dot + 1 == rest.size() || dot > 19) continue;
      const auto digits = [](std::string_view d) {
        return std::all_of(d.begin(), d.end(), [](char c) { return c >= '0' && c <= '9'; });
      };
      if (!digits(rest.substr(0, dot)) || !digits(rest.substr(dot + 1))) continue;
      out.emplace_back(std::stoull(std::string(rest.substr(0, dot))), std::string(oid));
    }
    rados_nobjects_list_close(ctx);
    return out;
  }
};

// ------------------------------------------------------------ the writer

namespace {

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
    std::vector<std::string> created;
    for (std::uint64_t k = 0; k < created_.size(); ++k) {
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

// ------------------------------------------------------------ the reader

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

// ------------------------------------------------------------ the store

RadosLocation RadosLocation::parse(std::string_view url) {
  const std::string_view scheme = kScheme;
  if (url.substr(0, scheme.size()) != scheme) {
    throw PersistError::argument("'" + std::string(url) + "' is not a rados://POOL/NAME location");
  }
  const std::string_view rest = url.substr(scheme.size());
  const std::size_t slash = rest.find('/');
  if (slash == std::string_view::npos || slash == 0) {
    throw PersistError::argument("'" + std::string(url) + "': expected rados://POOL/NAME");
  }
  RadosLocation loc;
  loc.pool = std::string(rest.substr(0, slash));
  loc.name = std::string(rest.substr(slash + 1));
  for (const char c : loc.pool) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      throw PersistError::argument("'" + std::string(url) + "': the pool name has a control character");
    }
  }
  check_name(loc.name);
  return loc;
}

std::string RadosLocation::url() const { return kScheme + pool + "/" + name; }

RadosSnapshotStore::RadosSnapshotStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

namespace rados_detail {

void throw_rados(const fs::path& where, std::string_view op, int r) {
  if (r == -ESHUTDOWN) {  // EBLOCKLISTED: a newer writer fenced this client
    throw PersistError::at(ErrorKind::Fenced, where,
                           std::string(op) + " failed: this client is blocklisted (a newer writer took over)");
  }
  throw PersistError::io(where, op, -r);
}

std::uint64_t last_read_generation(RadosSnapshotStore& store, const std::string& name) {
  std::lock_guard lock(store.impl().mu);
  const auto it = store.impl().last_read.find(name);
  return it == store.impl().last_read.end() ? 0 : it->second;
}

fs::path object_path(const RadosSnapshotStore& store, const std::string& object) {
  return fs::path(kScheme + store.pool() + "/" + object);
}

std::shared_ptr<ChangeNotifier> notifier_of(RadosSnapshotStore& store, const std::string& name) {
  RadosSnapshotStore::Impl& s = store.impl();
  std::lock_guard lock(s.mu);
  std::shared_ptr<ChangeNotifier>& n = s.notifiers[name];
  if (!n) {
    n = std::make_shared<ChangeNotifier>(s.io, notify_object(name), s.options.notify_timeout, s.options.notify_gap);
  }
  return n;
}

StoreHandles handles_of(RadosSnapshotStore& store) { return {store.impl().cluster, store.impl().io}; }

void attach_fence(RadosSnapshotStore& store, const std::string& name, std::shared_ptr<Fence> fence) {
  std::lock_guard lock(store.impl().mu);
  store.impl().fences[name] = std::move(fence);
}

void detach_fence(RadosSnapshotStore& store, const std::string& name, const Fence* fence) {
  std::lock_guard lock(store.impl().mu);
  auto& fences = store.impl().fences;
  const auto it = fences.find(name);
  if (it != fences.end() && it->second.get() == fence) fences.erase(it);
}

}  // namespace rados_detail
RadosSnapshotStore::~RadosSnapshotStore() = default;

std::unique_ptr<RadosSnapshotStore> RadosSnapshotStore::open(const RadosLocation& location,
                                                             const RadosOptions& options) {
  const auto range = [](std::string_view what, std::uint64_t v, std::uint64_t lo, std::uint64_t hi) {
    if (v < lo || v > hi) {
      throw PersistError::argument("RadosOptions::" + std::string(what) + " = " + std::to_string(v) +
                                   " is outside " + std::to_string(lo) + ".." + std::to_string(hi));
    }
  };
  range("stripe_size", options.stripe_size, kMinStripe, kMaxStripe);
  range("io_chunk", options.io_chunk, kMinChunk, kMaxChunk);
  range("max_in_flight", options.max_in_flight, 1, kMaxInFlight);
  range("log_object_size", options.log_object_size, kMinLogObject, kMaxLogObject);
  range("op_timeout", static_cast<std::uint64_t>(options.op_timeout.count()), 1, 86400);
  range("connect_timeout", static_cast<std::uint64_t>(options.connect_timeout.count()), 1, 86400);
  range("notify_timeout", static_cast<std::uint64_t>(options.notify_timeout.count()), 1, 60);
  range("notify_gap", static_cast<std::uint64_t>(options.notify_gap.count()), 0, 1000);
  if (location.pool.empty()) throw PersistError::argument("RadosLocation::pool is empty");
  if (location.client_id.empty()) throw PersistError::argument("RadosLocation::client_id is empty");

  auto impl = std::make_unique<Impl>();
  impl->pool = location.pool;
  impl->options = options;
  const fs::path where = kScheme + location.pool;
  const std::string user = "client." + location.client_id;
  int r = rados_create2(&impl->cluster, "ceph", user.c_str(), 0);
  if (r < 0) throw PersistError::io(where, "initializing librados for " + user, -r);
  r = rados_conf_read_file(impl->cluster, location.conf_path.empty() ? nullptr : location.conf_path.c_str());
  if (r < 0) {
    throw PersistError::io(where,
                           "reading the Ceph configuration " +
                               (location.conf_path.empty() ? std::string("($CEPH_CONF or /etc/ceph/ceph.conf)")
                                                           : location.conf_path),
                           -r);
  }
  r = rados_conf_parse_env(impl->cluster, nullptr);  // CEPH_ARGS
  if (r < 0) throw PersistError::io(where, "parsing CEPH_ARGS", -r);
  const std::string op_s = std::to_string(options.op_timeout.count());
  const std::string connect_s = std::to_string(options.connect_timeout.count());
  for (const auto& [key, value] : {std::pair{"rados_osd_op_timeout", op_s}, std::pair{"rados_mon_op_timeout", op_s},
                                   std::pair{"client_mount_timeout", connect_s}}) {
    r = rados_conf_set(impl->cluster, key, value.c_str());
    if (r < 0) throw PersistError::io(where, std::string("setting ") + key, -r);
  }
  r = rados_connect(impl->cluster);
  if (r < 0) throw PersistError::io(where, "connecting to the cluster as " + user, -r);
  r = rados_ioctx_create(impl->cluster, location.pool.c_str(), &impl->io);
  if (r < 0) throw PersistError::io(where, "opening the pool", -r);
  return std::unique_ptr<RadosSnapshotStore>(new RadosSnapshotStore(std::move(impl)));
}

const std::string& RadosSnapshotStore::pool() const noexcept { return impl_->pool; }
const RadosOptions& RadosSnapshotStore::options() const noexcept { return impl_->options; }

fs::path RadosSnapshotStore::path_of(std::string_view name) const {
  check_name(name);
  return impl_->object_path(std::string(name));
}

std::string RadosSnapshotStore::head_object(std::string_view name) { return std::string(name) + ".head"; }

std::string RadosSnapshotStore::stripe_object(std::string_view name, std::uint64_t generation, std::uint64_t stripe) {
  return std::string(name) + ".snap." + std::to_string(generation) + "." + std::to_string(stripe);
}

namespace {

std::optional<HeadRecord> read_head_record(RadosSnapshotStore::Impl& s, const std::string& name) {
  const std::string head = RadosSnapshotStore::head_object(name);
  // One operation: the record and the attribute are read atomically. One
  // byte more than the largest record, to see one that is too long.
  std::vector<char> data(kHeadMax + 1);
  std::size_t data_len = 0;
  int data_rv = 0;
  ReadOp op;
  rados_read_op_read(op.op, 0, data.size(), data.data(), &data_len, &data_rv);
  Xattrs attrs;
  attrs.add_to(op);
  const int r = rados_read_op_operate(op.op, s.io, head.c_str(), 0);
  if (r == -ENOENT) return std::nullopt;
  if (r < 0) s.fail(head, "reading the head", r);
  auto values = attrs.values();
  const auto g = decode_generation(values[kGenAttr]);
  if (!g) {
    throw PersistError::at(ErrorKind::InvalidHeader, s.object_path(head),
                           "the head's generation attribute is missing or malformed");
  }
  if (*g == 0) {
    if (data_len != 0) {
      throw PersistError::at(ErrorKind::InvalidHeader, s.object_path(head),
                             "the head holds a record but no published generation");
    }
    return std::nullopt;  // allocated by a writer, nothing published yet
  }
  const auto* bytes = reinterpret_cast<const std::byte*>(data.data());
  HeadRecord rec = decode_head({bytes, data_len}, s.object_path(head));
  if (rec.head.generation != *g) {
    throw PersistError::at(ErrorKind::InvalidHeader, s.object_path(head),
                           "the record says generation " + std::to_string(rec.head.generation) +
                               ", the attribute " + std::to_string(*g));
  }
  return rec;
}

}  // namespace

std::optional<RadosHead> RadosSnapshotStore::head(std::string_view name) {
  check_name(name);
  auto rec = read_head_record(*impl_, std::string(name));
  if (!rec) return std::nullopt;
  return std::move(rec->head);
}

namespace {

// RadosSnapshotStore::collect_garbage's work, for the store and its thread.
std::size_t collect(RadosSnapshotStore::Impl& s, const std::string& name) {
  const auto rec = read_head_record(s, name);
  if (!rec) return 0;
  const std::uint64_t published = rec->head.generation;
  const std::uint64_t keep = s.options.keep_previous_generation ? rec->previous_generation : 0;
  // Below the published generation nothing can still be published (every
  // writer of a lower generation compares against an older head), so what
  // is there is a leftover. Higher ones may be saves in progress: untouched.
  std::vector<std::string> leftovers;
  for (auto& [gen, oid] : s.list_stripes(name)) {
    if (gen >= published || gen == keep) continue;
    leftovers.push_back(std::move(oid));
  }
  s.remove_objects(leftovers);
  return leftovers.size();
}

}  // namespace

void RadosSnapshotStore::Impl::schedule_collection(const std::string& name) {
  {
    std::lock_guard lock(gc_mu);
    if (!gc_stop) {
      try {
        if (!gc_thread.joinable()) gc_thread = std::thread([this] { run_collector(); });
        gc_queue.insert(name);
        gc_cv.notify_all();
        return;
      } catch (const std::exception&) {
        // No thread (or no memory for the queue): collect here.
      }
    }
  }
  try {
    (void)collect(*this, name);
  } catch (const std::exception&) {
    // Published all the same; the next publish collects what is left.
  }
}

void RadosSnapshotStore::Impl::run_collector() {
  std::unique_lock lock(gc_mu);
  for (;;) {
    gc_cv.wait(lock, [this] { return gc_stop || !gc_queue.empty(); });
    if (gc_queue.empty()) return;  // stopped, and everything queued was collected
    const std::string name = gc_queue.extract(gc_queue.begin()).value();
    gc_busy = true;
    lock.unlock();
    try {
      (void)collect(*this, name);
    } catch (const std::exception&) {
      // As for a failed collection at the publish: the next one retries.
    }
    lock.lock();
    gc_busy = false;
    gc_cv.notify_all();
  }
}

std::size_t RadosSnapshotStore::collect_garbage(std::string_view name) {
  check_name(name);
  return collect(*impl_, std::string(name));
}

void RadosSnapshotStore::wait_for_garbage_collection() { impl_->wait_collections(); }

std::unique_ptr<WritableFile> RadosSnapshotStore::create_exclusive(const fs::path& path) {
  const Impl::Parsed p = impl_->parse(path);
  if (!p.temp) {
    throw PersistError::at(ErrorKind::Unsupported, path,
                           "a RADOS snapshot is written through write_snapshot (a save in progress, then a publish)");
  }
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->pending.count(path.string()) != 0) throw PersistError::at(ErrorKind::Io, path, "exists", 0);
  }
  if (const auto fence = impl_->fence_of(p.name)) fence->check(impl_->object_path(head_object(p.name)));
  const auto [generation, previous] = impl_->allocate(p.name);
  {
    std::lock_guard lock(impl_->mu);
    Impl::Pending& e = impl_->pending[path.string()];
    e.name = p.name;
    e.generation = generation;
    e.previous = previous;
  }
  return std::make_unique<StripeWriter>(*impl_, p.name, generation, path);
}

std::unique_ptr<WritableFile> RadosSnapshotStore::open_append(const fs::path& path) {
  throw PersistError::at(ErrorKind::Unsupported, path, "appending to a RADOS object (the log) is not built yet");
}

std::unique_ptr<ReadableFile> RadosSnapshotStore::open_read(const fs::path& path) {
  const Impl::Parsed p = impl_->parse(path);
  if (p.temp) throw PersistError::at(ErrorKind::Unsupported, path, "a save in progress cannot be read");
  auto rec = read_head_record(*impl_, p.name);
  if (!rec) {
    throw PersistError::io(path, "opening (no snapshot was published under this name)", ENOENT);
  }
  {
    std::lock_guard lock(impl_->mu);
    impl_->last_read[p.name] = rec->head.generation;
  }
  return std::make_unique<StripeReader>(*impl_, p.name, std::move(rec->head), path);
}

void RadosSnapshotStore::rename(const fs::path& from, const fs::path& to) {
  const Impl::Parsed src = impl_->parse(from);
  const Impl::Parsed dst = impl_->parse(to);
  Impl::Pending p;
  {
    std::lock_guard lock(impl_->mu);
    const auto it = impl_->pending.find(from.string());
    if (!src.temp || dst.temp || it == impl_->pending.end() || !it->second.closed || src.name != dst.name) {
      throw PersistError::at(ErrorKind::Unsupported, from,
                             "only a closed save in progress can be published, under its own name");
    }
    p = it->second;
  }
  HeadRecord rec;
  rec.head.generation = p.generation;
  rec.head.total_size = p.total;
  rec.head.stripe_size = impl_->options.stripe_size;
  rec.head.stripe_count = p.crcs.size();
  rec.head.stripe_crcs = p.crcs;
  rec.previous_generation = p.previous;
  const std::string head = head_object(p.name);
  check_geometry(rec.head.total_size, rec.head.stripe_size, rec.head.stripe_count, impl_->object_path(head));
  const std::vector<std::byte> bytes = encode_head(rec);
  // A writer holding the lock: applied only while the head's fencing epoch
  // is still this writer's (a newer writer that took over raised it).
  const auto fence = impl_->fence_of(p.name);
  if (fence) fence->check(impl_->object_path(head));

  // The publish: one atomic operation, applied only if the head still names
  // the generation this save started from.
  WriteOp op;
  if (fence) cmp_xattr(op, kEpochAttr, encode_generation(fence->epoch));
  cmp_xattr(op, kGenAttr, encode_generation(p.previous));
  rados_write_op_write_full(op.op, reinterpret_cast<const char*>(bytes.data()), bytes.size());
  set_xattr(op, kGenAttr, encode_generation(p.generation));
  const int r = rados_write_op_operate(op.op, impl_->io, head.c_str(), nullptr, 0);
  if (r == -ECANCELED && fence) {
    std::optional<std::string> epoch;
    try {
      epoch = impl_->read_attr(head, kEpochAttr);
    } catch (const PersistError&) {
    }
    if (epoch != encode_generation(fence->epoch)) {
      const std::string why = "the head's fencing epoch is now " + (epoch ? "'" + *epoch + "'" : std::string("unreadable")) +
                              ", this writer's is " + std::to_string(fence->epoch) + ": a newer writer took over";
      fence->mark_lost(why);
      throw PersistError::at(ErrorKind::Fenced, impl_->object_path(head),
                             why + "; generation " + std::to_string(p.generation) + " was not published");
    }
  }
  if (r == -ECANCELED) {
    std::string now = "another generation";
    try {
      if (const auto c = impl_->read_counters(p.name)) now = "generation " + std::to_string(c->first);
    } catch (const PersistError&) {
    }
    throw PersistError::at(ErrorKind::Locked, impl_->object_path(head),
                           "another writer published " + now + " after this save began from generation " +
                               std::to_string(p.previous) + "; generation " + std::to_string(p.generation) +
                               " was not published");
  }
  if (r < 0) impl_->fail(head, "publishing generation " + std::to_string(p.generation), r);
  {
    std::lock_guard lock(impl_->mu);
    impl_->pending.erase(from.string());
  }
  notifier_of(*this, p.name)->changed();
  impl_->schedule_collection(p.name);  // behind the publish: see Impl
}

void RadosSnapshotStore::remove(const fs::path& path) {
  const Impl::Parsed p = impl_->parse(path);
  if (p.temp) {
    Impl::Pending e;
    {
      std::lock_guard lock(impl_->mu);
      const auto it = impl_->pending.find(path.string());
      if (it == impl_->pending.end()) return;
      e = it->second;
      impl_->pending.erase(it);
    }
    std::vector<std::string> stripes;
    for (std::uint64_t k = 0; k < e.stripes_touched; ++k) stripes.push_back(stripe_object(e.name, e.generation, k));
    impl_->remove_objects(stripes);
    return;
  }
  // The whole snapshot: every generation's stripes, then the head.
  std::vector<std::string> stripes;
  for (auto& entry : impl_->list_stripes(p.name)) stripes.push_back(std::move(entry.second));
  impl_->remove_objects(stripes);
  impl_->remove_object(head_object(p.name));
}

void RadosSnapshotStore::sync_dir(const fs::path&) {}

bool RadosSnapshotStore::exists(const fs::path& path) {
  const Impl::Parsed p = impl_->parse(path);
  if (p.temp) {
    std::lock_guard lock(impl_->mu);
    return impl_->pending.count(path.string()) != 0;
  }
  return read_head_record(*impl_, p.name).has_value();
}

std::vector<std::string> RadosSnapshotStore::list_dir(const fs::path& dir) {
  throw PersistError::at(ErrorKind::Unsupported, dir, "listing a RADOS pool as a directory is not supported");
}

std::unique_ptr<FileLock> RadosSnapshotStore::lock(const fs::path& path) {
  throw PersistError::at(ErrorKind::Unsupported, path, "FileSystem::lock is not supported on RADOS: take a RadosWriterLock for the name");
}

std::uint64_t RadosSnapshotStore::random_u64() {
  std::lock_guard lock(impl_->mu);
  return (std::uint64_t{impl_->random()} << 32) ^ impl_->random();
}

}  // namespace iqdb::persist
