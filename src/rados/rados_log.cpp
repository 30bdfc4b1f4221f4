// The write-ahead log in RADOS: objects NAME.log.<gen>.<k> (docs/FORMAT.md,
// "RADOS objects of the write-ahead log"): reading them as one log, appending
// a group commit in one fenced write operation, rotating at a bounded size,
// and sealing the log against a writer that lost the lock.
#include "rados/rados_log.hpp"

#include <rados/librados.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <ctime>
#include <mutex>
#include <optional>

#include "iqdb/persist/error.hpp"
#include "rados/change_notify.hpp"
#include "rados/head_record.hpp"
#include "rados/rados_ops.hpp"
#include "rados/snapshot_store_impl.hpp"
#include "wal/log_format.hpp"

namespace iqdb::persist::rados_detail {

namespace fs = std::filesystem;

namespace {

// Set on object k once object k+1 exists: a reader then knows k+1 must be
// there (a missing last object is damage, not the end of the log).
constexpr const char* kLogMoreAttr = "iqdb.more";
// Largest piece one rados_read fetches.
constexpr std::size_t kMaxRead = std::size_t{16} << 20;
// Takeovers racing a writer that keeps rotating: give up after this many.
constexpr int kMaxSealRounds = 1000;

rados_ioctx_t io_of(RadosSnapshotStore& store) { return handles_of(store).io; }

// An object's size and attributes, read in one operation; nullopt: absent.
struct ObjectState {
  std::uint64_t size = 0;
  std::map<std::string, std::string> attrs;
  std::optional<std::uint64_t> attr(const char* name) const {
    const auto it = attrs.find(name);
    return it == attrs.end() ? std::nullopt : decode_generation(it->second);
  }
};

std::optional<ObjectState> stat_object(RadosSnapshotStore& store, const std::string& oid) {
  ReadOp op;
  Xattrs attrs;
  attrs.add_to(op);
  ObjectState st;
  std::time_t mtime = 0;
  int stat_rv = 0;
  rados_read_op_stat(op.op, &st.size, &mtime, &stat_rv);
  const int r = rados_read_op_operate(op.op, io_of(store), oid.c_str(), 0);
  if (r == -ENOENT) return std::nullopt;
  if (r < 0) throw_rados(object_path(store, oid), "reading the log object's attributes", r);
  st.attrs = attrs.values();
  return st;
}

// One object of the log, checked against what the objects before it say.
LogObject check_object(const ObjectState& st, std::uint64_t expect_start, const fs::path& where) {
  const auto epoch = st.attr(kLogEpochAttr);
  const auto start = st.attr(kLogStartAttr);
  const auto size = st.attr(kLogSizeAttr);
  if (!epoch || !start || !size) {
    throw PersistError::at(ErrorKind::InvalidHeader, where,
                           "a log object's attributes (iqdb.epoch, iqdb.start, iqdb.size) are missing or malformed");
  }
  if (*start != expect_start) {
    throw PersistError::at(ErrorKind::InvalidHeader, where,
                           "the log object says it starts at log offset " + std::to_string(*start) +
                               ", the objects before it end at " + std::to_string(expect_start));
  }
  if (st.size < *size) {
    throw PersistError::at(ErrorKind::TruncatedPayload, where,
                           "the log object holds " + std::to_string(st.size) + " bytes, its size attribute says " +
                               std::to_string(*size) + " were appended");
  }
  if (st.size > *size) {
    throw PersistError::at(ErrorKind::InvalidPayload, where,
                           "the log object holds " + std::to_string(st.size) + " bytes, more than the " +
                               std::to_string(*size) + " its size attribute says were appended");
  }
  return {*start, *size};
}

[[noreturn]] void throw_missing(const fs::path& where, std::uint64_t k, const std::string& why) {
  throw PersistError::at(ErrorKind::TruncatedPayload, where,
                         "log object " + std::to_string(k) + " is missing, but " + why +
                             " (if a newer generation was published meanwhile, load again)");
}

// The log's bytes over its objects. read_at is thread-safe (rados_read is).
class RadosLogFile final : public ReadableFile {
 public:
  RadosLogFile(RadosSnapshotStore& store, LogLayout layout)
      : store_(store),
        layout_(std::move(layout)),
        path_(object_path(store, layout_.name + ".log." + std::to_string(layout_.generation))) {}

  std::size_t read_at(std::uint64_t offset, std::span<std::byte> dst) const override {
    std::size_t done = 0;
    const std::uint64_t total = layout_.size();
    while (done < dst.size() && offset + done < total) {
      const std::uint64_t at = offset + done;
      // The last object starting at or before `at` (empty objects before it
      // hold nothing).
      const auto it = std::prev(std::upper_bound(layout_.objects.begin(), layout_.objects.end(), at,
                                                 [](std::uint64_t a, const LogObject& o) { return a < o.start; }));
      const auto k = static_cast<std::uint64_t>(it - layout_.objects.begin());
      const std::uint64_t in = at - it->start;
      const std::size_t n = static_cast<std::size_t>(
          std::min<std::uint64_t>({dst.size() - done, it->size - in, std::uint64_t{kMaxRead}}));
      const std::string oid = log_object(layout_.name, layout_.generation, k);
      const int r = rados_read(io_of(store_), oid.c_str(), reinterpret_cast<char*>(dst.data() + done), n, in);
      if (r == -ENOENT) throw_missing(object_path(store_, oid), k, "it was there when the log was opened");
      if (r < 0) throw_rados(object_path(store_, oid), "reading the log", r);
      if (static_cast<std::size_t>(r) != n) {
        throw PersistError::at(ErrorKind::TruncatedPayload, object_path(store_, oid),
                               "the log object is shorter than when the log was opened", at + static_cast<std::uint64_t>(r));
      }
      done += n;
    }
    return done;
  }
  std::uint64_t size() const noexcept override { return layout_.size(); }
  const fs::path& path() const noexcept override { return path_; }

 private:
  RadosSnapshotStore& store_;
  LogLayout layout_;
  fs::path path_;
};

// Appends to the log: frames gather in memory and go out at datasync(), each
// run of whole groups that fits the current object in one write operation
// (docs/DISTRIBUTED.md, "The log in RADOS").
class RadosLogSink final : public detail::LogSink {
 public:
  struct Position {
    std::uint64_t k = 0;          // the current object
    std::uint64_t obj_start = 0;  // its log offset
    std::uint64_t obj_size = 0;
    bool exists = false;  // false: the next write creates it
  };

  RadosLogSink(RadosSnapshotStore& store, std::string name, std::uint64_t generation, std::shared_ptr<Fence> fence,
               std::uint64_t salt, Position at)
      : store_(store),
        name_(std::move(name)),
        gen_(generation),
        fence_(std::move(fence)),
        epoch_(encode_generation(fence_->epoch)),
        salt_(salt),
        limit_(store.options().log_object_size),
        sent_(at.obj_start + at.obj_size),
        end_(sent_),
        at_(at),
        notifier_(notifier_of(store, name_)) {}

  void append(std::span<const std::byte> frame) override {
    refused_.store(false);  // (as in write_staged: refused_whole() is of this call)
    bool full = false;
    {
      std::lock_guard lk(mu_);
      check_usable();
      // Room for the bound first: out of memory then leaves nothing behind
      // (a frame without its bound would be sent with the next one).
      bounds_.reserve(bounds_.size() + 1);
      pending_.insert(pending_.end(), frame.begin(), frame.end());
      bounds_.push_back(pending_.size());
      end_.store(end_.load() + frame.size());
      full = pending_.size() >= limit_;
    }
    // Periodic, Never: what waits for the flusher stays bounded.
    if (full) flush();
  }

  void datasync() override { flush(); }

  void stage(std::span<const std::byte> frame) override {
    std::lock_guard lk(mu_);
    staged_.insert(staged_.end(), frame.begin(), frame.end());
    end_.store(end_.load() + frame.size());
  }

  void take_staged(Staged& out, std::uint64_t upto) override {
    std::lock_guard lk(mu_);
    out.offset = end_.load() - staged_.size();
    detail::take_staged_prefix(staged_, out, upto);
  }

  void write_staged(const Staged& s) override {
    refused_.store(false);  // (a failure here is no refusal: refused_whole() is of this sync)
    if (s.bytes.empty()) return;
    std::lock_guard lk(mu_);
    check_usable();
    if (s.offset != sent_ + pending_.size()) {
      throw PersistError::at(ErrorKind::Io, log_name(), "internal: staged frames out of order");
    }
    bounds_.reserve(bounds_.size() + 1);  // (as in append)
    pending_.insert(pending_.end(), s.bytes.begin(), s.bytes.end());
    bounds_.push_back(pending_.size());  // one group: one operation
  }

  void cut(std::uint64_t end) override {
    std::lock_guard f(flush_mu_);
    std::lock_guard lk(mu_);
    staged_.clear();
    if (end >= sent_) {  // only bytes not sent yet
      pending_.resize(static_cast<std::size_t>(std::min<std::uint64_t>(end - sent_, pending_.size())));
      std::erase_if(bounds_, [&](std::uint64_t b) { return b > pending_.size(); });
      end_.store(end);
      return;
    }
    truncate_current(end);
  }

  void close() override {
    if (closed_) return;
    bool failed = false;
    {
      std::lock_guard lk(mu_);
      failed = failed_;
    }
    if (!failed) flush();
    closed_ = true;
  }

  std::uint64_t end() const noexcept override { return end_.load(); }
  std::uint64_t salt() const noexcept override { return salt_; }
  // A group is at most one log object's worth (a frame larger than that goes
  // alone, into an object of its own): every write operation stays within
  // kMaxLogObject, below osd_max_write_size.
  std::uint64_t max_group_bytes() const noexcept override { return limit_; }
  bool refused_whole() const noexcept override { return refused_.load(); }

 private:
  fs::path log_name() const { return object_path(store_, name_ + ".log." + std::to_string(gen_)); }
  std::string oid(std::uint64_t k) const { return log_object(name_, gen_, k); }

  void check_usable() const {
    if (failed_) {
      throw PersistError::at(ErrorKind::Io, log_name(), "an earlier append failed: its outcome is unknown; reopen");
    }
  }

  // Every byte appended or written so far, out in write operations.
  void flush() {
    std::lock_guard f(flush_mu_);
    refused_.store(false);
    std::uint64_t sent_before = 0;
    {
      std::lock_guard lk(mu_);
      check_usable();
      sent_before = sent_;
      std::swap(out_, pending_);
      std::swap(out_bounds_, bounds_);
    }
    try {
      send();
    } catch (const PersistError& e) {
      std::lock_guard lk(mu_);
      // A full pool refused the first operation: nothing of this flush is
      // in the log (docs/DISTRIBUTED.md, "A full pool"). The bytes go back
      // in front of those appended since, to be sent again or cut.
      if (sent_ == sent_before && refusal(e)) {
        try {
          put_back();
          refused_.store(true);
        } catch (...) {  // out of memory
          failed_ = true;
        }
      } else {
        failed_ = true;
      }
      throw;
    } catch (...) {
      std::lock_guard lk(mu_);
      failed_ = true;
      throw;
    }
    // Read replicas are woken (never waited for).
    if (!out_.empty()) notifier_->changed();
    out_.clear();
    out_bounds_.clear();
  }

  // A full pool's answer to an operation that takes room, sent with
  // rados_set_pool_full_try: the OSD checks the pool's mark after it
  // recognised a resent operation as done before (which it answers as
  // before), so the refusal is certain; the operation is one transaction,
  // so none of it happened.
  static bool refusal(const PersistError& e) noexcept {
    return e.kind() == ErrorKind::Io && (e.sys_errno() == EDQUOT || e.sys_errno() == ENOSPC);
  }

  // out_ (unsent) back in front of pending_ (mu_ held).
  void put_back() {
    const std::size_t n = out_.size();
    out_.reserve(n + pending_.size());
    out_bounds_.reserve(out_bounds_.size() + bounds_.size());
    out_.insert(out_.end(), pending_.begin(), pending_.end());
    for (const std::uint64_t b : bounds_) out_bounds_.push_back(b + n);
    std::swap(out_, pending_);
    std::swap(out_bounds_, bounds_);
    out_.clear();
    out_bounds_.clear();
  }

  // out_ in operations of whole units (an appended frame, a staged group),
  // each as many as fit the current object; a unit larger than an object
  // gets a new object of its own.
  void send() {
    std::uint64_t pos = 0;
    while (pos < out_.size()) {
      const std::uint64_t room = limit_ > at_.obj_size ? limit_ - at_.obj_size : 0;
      std::uint64_t end = pos;
      for (const std::uint64_t b : out_bounds_) {
        if (b <= pos) continue;
        if (b - pos > room) break;
        end = b;
      }
      if (end == pos) {
        if (at_.obj_size > 0) {
          rotate();
          continue;
        }
        end = *std::upper_bound(out_bounds_.begin(), out_bounds_.end(), pos);
      }
      write({out_.data() + pos, static_cast<std::size_t>(end - pos)});
      pos = end;
    }
  }

  // The next write goes to a new object; the current one is marked as
  // continued once the new one exists.
  void rotate() {
    at_.k += 1;
    at_.obj_start += at_.obj_size;
    at_.obj_size = 0;
    at_.exists = false;
  }

  // One write operation on the current object: the fencing compare (an
  // exclusive create for a new object), the bytes at its end, its new size.
  void write(std::span<const std::byte> data) {
    const std::string object = oid(at_.k);
    const fs::path where = object_path(store_, object);
    fence_->check(where);
    WriteOp op;
    if (at_.exists) {
      cmp_xattr(op, kLogEpochAttr, epoch_);
    } else {
      rados_write_op_create(op.op, LIBRADOS_CREATE_EXCLUSIVE, nullptr);
      set_xattr(op, kLogEpochAttr, epoch_);
      set_xattr(op, kLogStartAttr, encode_generation(at_.obj_start));
    }
    rados_write_op_write(op.op, reinterpret_cast<const char*>(data.data()), data.size(), at_.obj_size);
    set_xattr(op, kLogSizeAttr, encode_generation(at_.obj_size + data.size()));
    const int r = rados_write_op_operate(op.op, io_of(store_), object.c_str(), nullptr, 0);
    if (r < 0) fail(where, r, at_.exists);
    const bool created = !at_.exists;
    at_.exists = true;
    at_.obj_size += data.size();
    {
      std::lock_guard lk(mu_);
      sent_ += data.size();
    }
    if (created && at_.k > 0) mark_continued(at_.k - 1);
  }

  void mark_continued(std::uint64_t k) {
    const std::string object = oid(k);
    WriteOp op;
    cmp_xattr(op, kLogEpochAttr, epoch_);
    set_xattr(op, kLogMoreAttr, encode_generation(1));
    const int r = rados_write_op_operate(op.op, io_of(store_), object.c_str(), nullptr, 0);
    if (r < 0) fail(object_path(store_, object), r, true, k + 1);
  }

  // Cut back within the current object (sent bytes: a rollback after the
  // index refused a logged mutation).
  void truncate_current(std::uint64_t end) {
    check_usable();
    if (end < at_.obj_start || !at_.exists) {
      throw PersistError::at(ErrorKind::Unsupported, log_name(),
                             "cutting the log back to offset " + std::to_string(end) + ", before its current object " +
                                 std::to_string(at_.k) + " (at " + std::to_string(at_.obj_start) + ")");
    }
    const std::string object = oid(at_.k);
    WriteOp op;
    cmp_xattr(op, kLogEpochAttr, epoch_);
    rados_write_op_truncate(op.op, end - at_.obj_start);
    set_xattr(op, kLogSizeAttr, encode_generation(end - at_.obj_start));
    const int r = rados_write_op_operate(op.op, io_of(store_), object.c_str(), nullptr, 0);
    if (r < 0) {
      failed_ = true;
      fail(object_path(store_, object), r, true);
    }
    pending_.clear();
    bounds_.clear();
    at_.obj_size = end - at_.obj_start;
    sent_ = end;
    end_.store(end);
  }

  // `written_to`: the mark of an object as continued failed after this
  // append's frames were written to the next object, `written_to` (0: the
  // failed operation was the append itself, so nothing of it was written).
  // A newer writer's recovery reads past an unmarked object, so those
  // frames may still count.
  [[noreturn]] void fail(const fs::path& where, int r, bool existed, std::uint64_t written_to = 0) {
    if (r == -ECANCELED || (r == -EEXIST && !existed)) {
      const std::string why = r == -ECANCELED
                                  ? "the log object carries a newer writer's fencing epoch (a newer writer took over)"
                                  : "the log object exists already: a newer writer sealed this log";
      fence_->mark_lost(why);
      throw PersistError::at(ErrorKind::Fenced, where,
                             why + (written_to == 0
                                        ? std::string("; nothing was appended")
                                        : "; this append's frames were written to log object " +
                                              std::to_string(written_to) +
                                              " before: whether they count is unknown until the newer writer's "
                                              "recovery (it may keep them)"));
    }
    if (r == -ETIMEDOUT) {
      throw PersistError::io(where,
                             "appending to the log (no answer within op_timeout: whether the append happened is "
                             "unknown until the index is reopened)",
                             ETIMEDOUT);
    }
    if (r == -EDQUOT || r == -ENOSPC) {
      throw PersistError::io(where,
                             std::string("appending to the log (the pool is full: ") +
                                 (r == -EDQUOT ? "its quota" : "the cluster's full ratio") +
                                 "; refused whole, nothing of this write was appended)",
                             -r);
    }
    throw_rados(where, "appending to the log", r);
  }

  RadosSnapshotStore& store_;
  std::string name_;
  std::uint64_t gen_;
  std::shared_ptr<Fence> fence_;
  std::string epoch_;
  std::uint64_t salt_;
  std::uint64_t limit_;
  // The engine's calls (append, stage, take_staged, end) and the flush
  // (write_staged, datasync) may overlap: mu_ guards what both touch.
  mutable std::mutex mu_;
  std::vector<std::byte> pending_;     // appended, not sent
  std::vector<std::uint64_t> bounds_;  // ends of the units in pending_
  std::vector<std::byte> staged_;
  std::uint64_t sent_;  // log bytes RADOS acknowledged
  bool failed_ = false;
  std::atomic<bool> refused_{false};  // the last flush was refused whole (refused_whole())
  std::atomic<std::uint64_t> end_;
  // One flush at a time; it alone touches what follows.
  std::mutex flush_mu_;
  Position at_;
  std::vector<std::byte> out_;
  std::vector<std::uint64_t> out_bounds_;
  bool closed_ = false;
  std::shared_ptr<ChangeNotifier> notifier_;
};

}  // namespace

std::string log_object(std::string_view name, std::uint64_t generation, std::uint64_t k) {
  return std::string(name) + ".log." + std::to_string(generation) + "." + std::to_string(k);
}

namespace {

// The objects of `layout` from object k on, read anew. `must_exist`: why
// object k exists (empty: it may not): object k-1 says it continues
// there, or object k was read before (a refresh; gone, it was removed with
// its generation after newer ones were published: not the end of the log).
// `until_unmarked`: stop after an object that does not say the next one
// exists (a replica's refresh: one read when nothing rotated; a next object
// not marked yet is found by the next refresh).
void read_objects_from(RadosSnapshotStore& store, LogLayout& out, std::uint64_t k, std::string must_exist,
                       bool until_unmarked) {
  const std::string& name = out.name;
  const std::uint64_t generation = out.generation;
  out.objects.resize(k);
  for (;; ++k) {
    const std::string oid = log_object(name, generation, k);
    const fs::path where = object_path(store, oid);
    const std::optional<ObjectState> st = stat_object(store, oid);
    if (!st) {
      if (!must_exist.empty()) throw_missing(where, k, must_exist);
      if (stat_object(store, log_object(name, generation, k + 1))) {
        throw_missing(where, k, "log object " + std::to_string(k + 1) + " exists");
      }
      return;
    }
    if (k >= kMaxLogObjects) {
      throw PersistError::at(ErrorKind::InvalidHeader, where,
                             "the log has more than " + std::to_string(kMaxLogObjects) + " objects");
    }
    out.objects.push_back(check_object(*st, out.size(), where));
    const bool more = st->attrs.count(kLogMoreAttr) != 0;
    if (until_unmarked && !more) return;
    must_exist = more ? "log object " + std::to_string(k) + " says it continues there" : std::string();
  }
}

}  // namespace

LogLayout read_log_layout(RadosSnapshotStore& store, const std::string& name, std::uint64_t generation) {
  LogLayout out;
  out.name = name;
  out.generation = generation;
  read_objects_from(store, out, 0, {}, false);
  return out;
}

namespace {

// The generation NAME.head records as the last one whose log was created
// (kLoggedAttr); nullopt: the attribute is absent. Hostile bytes: anything
// but 16 lower-case hex digits is InvalidHeader naming the head.
std::optional<std::uint64_t> logged_generation(RadosSnapshotStore& store, const std::string& name) {
  const std::string head = RadosSnapshotStore::head_object(name);
  const std::optional<std::string> text = store.impl().read_attr(head, kLoggedAttr);
  if (!text) return std::nullopt;
  const auto g = decode_generation(*text);
  if (!g) {
    throw PersistError::at(ErrorKind::InvalidHeader, object_path(store, head),
                           std::string("attribute ") + kLoggedAttr + " is not 16 lower-case hex digits");
  }
  return g;
}

// Whether the log of `generation` has no object 0 while the head records
// that it was created: every object of it was removed.
bool log_was_removed(RadosSnapshotStore& store, const std::string& name, std::uint64_t generation) {
  const std::string first = log_object(name, generation, 0);
  // The writer creates object 0 before it records the log in the head: an
  // object 0 that came between the two reads here is there at the second.
  return !stat_object(store, first) && logged_generation(store, name) == generation && !stat_object(store, first);
}

}  // namespace

void check_log_not_removed(RadosSnapshotStore& store, const std::string& name, std::uint64_t generation) {
  if (!log_was_removed(store, name, generation)) return;
  throw PersistError::at(ErrorKind::TruncatedPayload, object_path(store, log_object(name, generation, 0)),
                         "log object 0 is missing, but the head records that the log of generation " +
                             std::to_string(generation) + " was created (" + kLoggedAttr +
                             "): every object of the log was removed, and with them every write acknowledged "
                             "since its snapshot (`iqdb-persist wal repair --yes` accepts the snapshot alone)");
}

LogLayout read_log_layout_checked(RadosSnapshotStore& store, const std::string& name, std::uint64_t generation) {
  LogLayout layout = read_log_layout(store, name, generation);
  if (!layout.objects.empty()) return layout;
  check_log_not_removed(store, name, generation);
  return read_log_layout(store, name, generation);
}

void mark_log_created(RadosSnapshotStore& store, const std::string& name, std::uint64_t generation,
                      const std::shared_ptr<Fence>& fence) {
  const std::string head = RadosSnapshotStore::head_object(name);
  const fs::path where = object_path(store, head);
  fence->check(where);
  WriteOp op;
  cmp_xattr(op, kEpochAttr, encode_generation(fence->epoch));
  set_xattr(op, kLoggedAttr, encode_generation(generation));
  const int r = rados_write_op_operate(op.op, io_of(store), head.c_str(), nullptr, 0);
  if (r == -ECANCELED) {
    const std::string why = "the head carries a newer writer's fencing epoch (a newer writer took over)";
    fence->mark_lost(why);
    throw PersistError::at(ErrorKind::Fenced, where, why + "; the log's header was written, nothing acknowledged");
  }
  if (r < 0) throw_rados(where, "recording in the head that the log was created", r);
}

void refresh_log_layout(RadosSnapshotStore& store, LogLayout& layout) {
  // The last object known may have grown; objects after it may have come.
  const std::uint64_t k = layout.objects.empty() ? 0 : layout.objects.size() - 1;
  const std::uint64_t known = layout.size();
  read_objects_from(store, layout, k, layout.objects.empty() ? std::string() : "it was read a moment ago",
                    /*until_unmarked=*/true);
  // A writer creates object k+1 before it marks k (iqdb.more), so one killed
  // in between (or whose mark failed) leaves k unmarked for good: when the
  // last object brought nothing new, look for the next one (one more read).
  if (layout.objects.empty() || layout.size() != known) return;
  const std::uint64_t next = layout.objects.size();
  if (stat_object(store, log_object(layout.name, layout.generation, next))) {
    read_objects_from(store, layout, next, {}, /*until_unmarked=*/true);
  }
}

std::unique_ptr<ReadableFile> open_log_file(RadosSnapshotStore& store, LogLayout layout) {
  return std::make_unique<RadosLogFile>(store, std::move(layout));
}

fs::path log_object_path(RadosSnapshotStore& store, const LogLayout& layout, std::uint64_t offset) {
  std::uint64_t k = 0;
  for (std::uint64_t i = 0; i < layout.objects.size(); ++i) {
    if (layout.objects[i].start <= offset) k = i;
  }
  return object_path(store, log_object(layout.name, layout.generation, k));
}

namespace {

// An empty log object k of epoch `mine` starting at log offset `start`,
// created exclusively; false: it exists already.
bool create_empty_object(RadosSnapshotStore& store, const std::string& oid, const std::string& mine,
                         std::uint64_t start) {
  WriteOp op;
  rados_write_op_create(op.op, LIBRADOS_CREATE_EXCLUSIVE, nullptr);
  set_xattr(op, kLogEpochAttr, mine);
  set_xattr(op, kLogStartAttr, encode_generation(start));
  set_xattr(op, kLogSizeAttr, encode_generation(0));
  const int r = rados_write_op_operate(op.op, io_of(store), oid.c_str(), nullptr, 0);
  if (r == -EEXIST) return false;
  if (r < 0) throw_rados(object_path(store, oid), "sealing the log", r);
  return true;
}

}  // namespace

void seal_log(RadosSnapshotStore& store, const std::string& name, std::uint64_t generation, std::uint64_t epoch) {
  const std::string mine = encode_generation(epoch);
  const LogLayout layout = read_log_layout(store, name, generation);
  std::uint64_t k = 0;
  if (layout.objects.empty()) {
    // No log object yet: a checkpoint published this generation and its
    // log's first create may still be on its way (it got no answer). An
    // empty object 0 of ours makes that create fail; if it came first, it
    // is sealed below like any log.
    if (create_empty_object(store, log_object(name, generation, 0), mine, 0)) return;
  } else {
    k = layout.objects.size() - 1;
  }
  for (int round = 0; round < kMaxSealRounds; ++round, ++k) {
    const std::string last = log_object(name, generation, k);
    {
      WriteOp op;  // from now on, appends of older epochs to it fail
      rados_write_op_assert_exists(op.op);
      set_xattr(op, kLogEpochAttr, mine);
      const int r = rados_write_op_operate(op.op, io_of(store), last.c_str(), nullptr, 0);
      if (r < 0) throw_rados(object_path(store, last), "sealing the log", r);
    }
    const std::optional<ObjectState> st = stat_object(store, last);
    if (!st) throw_missing(object_path(store, last), k, "it was sealed a moment ago");
    const LogObject obj = check_object(*st, st->attr(kLogStartAttr).value_or(0), object_path(store, last));
    // An empty next object of ours: a rotation of the old writer fails.
    const std::string next = log_object(name, generation, k + 1);
    if (!create_empty_object(store, next, mine, obj.start + obj.size)) continue;  // it rotated meanwhile: seal that
    WriteOp more;
    set_xattr(more, kLogMoreAttr, encode_generation(1));
    const int m = rados_write_op_operate(more.op, io_of(store), last.c_str(), nullptr, 0);
    if (m < 0) throw_rados(object_path(store, last), "sealing the log", m);
    return;
  }
  throw PersistError::at(ErrorKind::Locked, object_path(store, log_object(name, generation, k)),
                         "could not seal the log: the previous writer keeps adding objects");
}

std::unique_ptr<detail::LogSink> create_log_sink(RadosSnapshotStore& store, const std::string& name,
                                                 std::uint64_t generation, const std::shared_ptr<Fence>& fence,
                                                 std::uint64_t salt, std::uint64_t base_lsn) {
  // A new generation has no object yet. A takeover's seal of a log that had
  // none leaves an empty object 0 of this writer's epoch (and each further
  // takeover's seal an empty object after it, the last of this writer's
  // epoch): the header goes into the last one, under the epoch compare. A
  // log holding bytes was written by someone else.
  const LogLayout layout = read_log_layout(store, name, generation);
  RadosLogSink::Position at;
  if (!layout.objects.empty()) {
    if (layout.has_bytes()) {
      throw PersistError::at(ErrorKind::Fenced, object_path(store, log_object(name, generation, 0)),
                             "the log of this generation holds " + std::to_string(layout.size()) +
                                 " bytes already: another writer created it");
    }
    at.k = layout.objects.size() - 1;
    at.exists = true;
  }
  auto sink = std::make_unique<RadosLogSink>(store, name, generation, fence, salt, at);
  sink->append(wal::format::encode_v2_header(salt, base_lsn));
  sink->datasync();  // the header, in one write: an exclusive create of object 0, or a compare on the empty one
  // Before any record is acknowledged in it: a load that finds no object of
  // this log now knows it was removed (read_log_layout_checked).
  mark_log_created(store, name, generation, fence);
  return sink;
}

std::unique_ptr<detail::LogSink> continue_log_sink(RadosSnapshotStore& store, const LogLayout& layout,
                                                   std::shared_ptr<Fence> fence, std::uint64_t salt) {
  RadosLogSink::Position at;
  if (!layout.objects.empty()) {
    at.k = layout.objects.size() - 1;
    at.obj_start = layout.objects.back().start;
    at.obj_size = layout.objects.back().size;
    at.exists = true;
  }
  return std::make_unique<RadosLogSink>(store, layout.name, layout.generation, std::move(fence), salt, at);
}

namespace {

// Objects probed after the last existing one before a log counts as ended
// (a reader looks one past a missing object).
constexpr int kMissingToEnd = 2;

// The object at `k` of `prefix`, checked as far as repair needs it; false
// (with prefix.stopped) when it does not belong to the consistent prefix.
bool take_object(const ObjectState& st, std::uint64_t k, LogPrefix& prefix) {
  const auto start = st.attr(kLogStartAttr);
  const auto size = st.attr(kLogSizeAttr);
  const std::string obj = "log object " + std::to_string(k);
  if (!st.attr(kLogEpochAttr) || !start || !size) {
    prefix.stopped = obj + ": its attributes are missing or malformed";
    return false;
  }
  if (*start != prefix.layout.size()) {
    prefix.stopped = obj + " says it starts at " + std::to_string(*start) + ", the objects before it end at " +
                     std::to_string(prefix.layout.size());
    return false;
  }
  prefix.layout.objects.push_back({*start, std::min(st.size, *size)});
  if (st.size != *size) {
    prefix.stopped = obj + " holds " + std::to_string(st.size) + " bytes, its size attribute says " +
                     std::to_string(*size);
    return false;
  }
  return true;
}

void remove_object(RadosSnapshotStore& store, const std::string& oid) {
  const int r = rados_remove(io_of(store), oid.c_str());
  if (r < 0 && r != -ENOENT) throw_rados(object_path(store, oid), "removing a log object", r);
}

// Object k no longer says the next one exists (absent attribute: nothing to do).
void clear_more(RadosSnapshotStore& store, const std::string& oid) {
  WriteOp op;
  rados_write_op_assert_exists(op.op);
  rados_write_op_rmxattr(op.op, kLogMoreAttr);
  const int r = rados_write_op_operate(op.op, io_of(store), oid.c_str(), nullptr, 0);
  if (r < 0 && r != -ENOENT && r != -ENODATA) throw_rados(object_path(store, oid), "repairing the log", r);
}

}  // namespace

LogPrefix read_log_prefix(RadosSnapshotStore& store, const std::string& name, std::uint64_t generation) {
  LogPrefix out;
  out.layout.name = name;
  out.layout.generation = generation;
  std::uint64_t k = 0;
  bool continued = false;  // the last object taken says the next one exists
  for (; k < kMaxLogObjects; ++k) {
    const std::optional<ObjectState> st = stat_object(store, log_object(name, generation, k));
    if (!st) {
      // As a load reads it: a missing object that the one before promises
      // is damage (TruncatedPayload), not the log's end.
      if (continued && out.stopped.empty()) {
        out.stopped = "log object " + std::to_string(k - 1) + " says it continues at object " + std::to_string(k) +
                      ", which is missing";
      }
      break;
    }
    if (!take_object(*st, k, out)) break;
    continued = st->attrs.count(kLogMoreAttr) != 0;
  }
  // Objects after the prefix: a rejected one, and any past a missing one.
  int missing = 0;
  for (std::uint64_t i = out.layout.objects.size(); missing < kMissingToEnd && i < kMaxLogObjects; ++i) {
    if (stat_object(store, log_object(name, generation, i))) {
      out.beyond.push_back(i);
      missing = 0;
    } else {
      ++missing;
    }
  }
  if (out.stopped.empty() && !out.beyond.empty()) {
    out.stopped = "log object " + std::to_string(out.layout.objects.size()) + " is missing, but object " +
                  std::to_string(out.beyond.front()) + " exists";
  }
  // No object at all, as a load reads it: damage when the head records
  // that this log was created (as check_log_not_removed).
  if (out.stopped.empty() && out.layout.objects.empty() && out.beyond.empty() &&
      log_was_removed(store, name, generation)) {
    out.stopped = "log object 0 is missing, but the head records that the log of generation " +
                  std::to_string(generation) + " was created (" + kLoggedAttr + "): every object was removed";
  }
  return out;
}

void cut_log(RadosSnapshotStore& store, const RadosWriterLock& lock, const LogPrefix& prefix, std::uint64_t end) {
  const LogLayout& layout = prefix.layout;
  if (end > layout.size()) {
    throw PersistError::argument("cut_log: offset " + std::to_string(end) + " is past the log's consistent prefix");
  }
  const std::shared_ptr<Fence> fence = fence_of(lock);
  // The object holding `end`: the last one starting at or before it. None
  // when not even the first object is consistent: then every object goes,
  // and the seal leaves an empty object 0 of this epoch, which is no log.
  std::optional<std::uint64_t> j;
  for (std::uint64_t i = 0; i < layout.objects.size(); ++i) {
    if (layout.objects[i].start <= end) j = i;
  }
  std::vector<std::uint64_t> doomed;
  if (j) {
    for (std::uint64_t i = *j + 1; i < layout.objects.size(); ++i) doomed.push_back(i);
  }
  doomed.insert(doomed.end(), prefix.beyond.begin(), prefix.beyond.end());
  for (auto it = doomed.rbegin(); it != doomed.rend(); ++it) {
    const std::string oid = log_object(layout.name, layout.generation, *it);
    fence->check(object_path(store, oid));
    if (*it > 0) clear_more(store, log_object(layout.name, layout.generation, *it - 1));
    remove_object(store, oid);
  }
  if (j) {
    const std::string oid = log_object(layout.name, layout.generation, *j);
    const fs::path where = object_path(store, oid);
    fence->check(where);
    clear_more(store, oid);
    WriteOp op;
    rados_write_op_assert_exists(op.op);
    rados_write_op_truncate(op.op, end - layout.objects[*j].start);
    set_xattr(op, kLogSizeAttr, encode_generation(end - layout.objects[*j].start));
    set_xattr(op, kLogEpochAttr, encode_generation(fence->epoch));
    const int r = rados_write_op_operate(op.op, io_of(store), oid.c_str(), nullptr, 0);
    if (r < 0) throw_rados(where, "cutting the log", r);
  }
  seal_log(store, layout.name, layout.generation, fence->epoch);
}

}  // namespace iqdb::persist::rados_detail
