// RadosSnapshotStore: the FileSystem seam over a RADOS pool. A snapshot is
// striped over objects NAME.snap.<gen>.<k> (written by stripe_writer.cpp,
// read by stripe_reader.cpp) and published by one guarded operation on
// NAME.head (docs/DISTRIBUTED.md); this file opens the store, allocates
// generations, publishes, and collects what publishes leave behind.
// The C API of librados (rados/librados.h): its C++ headers do not parse
// as C++20 under clang (an ambiguous operator== in buffer.h), and the C
// calls copy what they write and read into the caller's buffers.
#include <rados/librados.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "iqdb/persist/checksum.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/rados.hpp"
#include "rados/change_notify.hpp"
#include "rados/head_record.hpp"
#include "rados/rados_log.hpp"
#include "rados/rados_ops.hpp"
#include "rados/snapshot_store_impl.hpp"
#include "rados/writer_fence.hpp"

namespace iqdb::persist {

namespace fs = std::filesystem;
using namespace rados_detail;

// ------------------------------------------------------------ the store's state

RadosSnapshotStore::Impl::Parsed RadosSnapshotStore::Impl::parse(const fs::path& path) const {
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

std::optional<std::string> RadosSnapshotStore::Impl::read_attr(const std::string& object, const char* attr) {
  // Room for the longest client address (iqdb.writer) and one byte more.
  char buf[kMaxAddress + 1];
  const int r = rados_getxattr(io, object.c_str(), attr, buf, sizeof buf);
  if (r == -ENODATA || r == -ENOENT) return std::nullopt;
  // librados answers -ERANGE for a value longer than the buffer.
  if (r == -ERANGE || (r >= 0 && static_cast<std::size_t>(r) >= sizeof buf)) {
    throw PersistError::at(ErrorKind::InvalidHeader, object_path(object),
                           std::string("attribute ") + attr + " is longer than " + std::to_string(kMaxAddress) +
                               " bytes");
  }
  if (r < 0) fail(object, std::string("reading attribute ") + attr, r);
  return std::string(buf, static_cast<std::size_t>(r));
}

std::optional<std::pair<std::uint64_t, std::uint64_t>> RadosSnapshotStore::Impl::read_counters(
    const std::string& name) {
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
    // Hostile values are described, never quoted whole or with control bytes.
    throw PersistError::at(ErrorKind::InvalidHeader, object_path(head),
                           "the head's generation attributes are missing or malformed (" +
                               shown(values[kGenAttr], 32) + ", " + shown(values[kNextAttr], 32) + ")");
  }
  return std::make_pair(*g, *n);
}

std::pair<std::uint64_t, std::uint64_t> RadosSnapshotStore::Impl::allocate(const std::string& name) {
  const std::string head = head_object(name);
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const auto counters = read_counters(name);
    if (!counters) {
      WriteOp op;
      rados_write_op_create(op.op, LIBRADOS_CREATE_EXCLUSIVE, nullptr);
      set_xattr(op, kGenAttr, encode_generation(0));
      set_xattr(op, kNextAttr, encode_generation(1));
      // Epoch 0 from the start: the first writer's raise then compares too
      // (writer_lock.cpp), so two first writers cannot both get epoch 1.
      set_xattr(op, kEpochAttr, encode_generation(0));
      // Nothing below generation 1 to collect: no collection lists the pool.
      set_xattr(op, kCollectedAttr, encode_generation(1));
      const int r = rados_write_op_operate(op.op, io, head.c_str(), nullptr, 0);
      if (r < 0 && r != -EEXIST) fail(head, "making sure the head exists (an exclusive create)", r);
      continue;
    }
    const auto [published, next] = *counters;
    if (next == std::numeric_limits<std::uint64_t>::max()) {
      // (Only a hostile or damaged attribute gets here: the counter would
      // wrap to 0 and every later save fail.)
      throw PersistError::at(ErrorKind::InvalidHeader, object_path(head),
                             "the head's generation counter (iqdb.next) is at its maximum: no generation is left");
    }
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

void RadosSnapshotStore::Impl::remove_object(const std::string& object) {
  const int r = rados_remove(io, object.c_str());
  if (r < 0 && r != -ENOENT) fail(object, "removing", r);
}

void RadosSnapshotStore::Impl::remove_objects(const std::vector<std::string>& objects) {
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

std::vector<std::pair<std::uint64_t, std::string>> RadosSnapshotStore::Impl::list_stripes(const std::string& name) {
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

// How many indexes in a row may be missing below objects of one generation
// that exist. A save creates its stripes in file order with at most
// kMaxInFlight writes in flight, except those wholly inside the first kHold
// bytes, created at close (at most kHold / kMinStripe of them, from index
// 0): a save killed at any point leaves at most that many missing in a row.
// A collection removes in descending order, so one cut short leaves the
// lowest indexes and at most kMaxInFlight missing among the highest left.
// A log's objects are created one after the other.
constexpr std::uint64_t kProbeWindow = kMaxInFlight + kHold / kMinStripe + 1;

std::vector<std::string> RadosSnapshotStore::Impl::objects_of_generation(const std::string& name,
                                                                          std::uint64_t gen) {
  std::vector<std::string> out;
  const auto probe = [&](const auto& object_at, std::uint64_t cap) {
    std::vector<std::string> found;
    std::uint64_t next = 0;          // the next index to probe
    std::uint64_t missing_from = 0;  // where the current run of missing indexes began
    while (next - missing_from < kProbeWindow && next < cap + kProbeWindow) {
      struct Stat {
        std::string object;
        std::uint64_t size = 0;
        std::time_t mtime = 0;
        Completion done;  // destroyed first: waits before size and mtime go
      };
      std::deque<Stat> batch;
      for (std::uint64_t i = 0; i < options.max_in_flight; ++i) {
        Stat& st = batch.emplace_back();
        st.object = object_at(next + i);
        const int r = rados_aio_stat(io, st.object.c_str(), st.done.c, &st.size, &st.mtime);
        if (r < 0) fail(st.object, "probing for leftovers", r);
        st.done.submitted = true;
      }
      for (std::uint64_t i = 0; i < batch.size(); ++i) {
        const int r = batch[i].done.wait();
        if (r == 0) {
          found.push_back(batch[i].object);
          missing_from = next + i + 1;
        } else if (r != -ENOENT) {
          fail(batch[i].object, "probing for leftovers", r);
        }
      }
      next += batch.size();
    }
    out.insert(out.end(), std::make_move_iterator(found.rbegin()), std::make_move_iterator(found.rend()));
  };
  probe([&](std::uint64_t k) { return RadosSnapshotStore::stripe_object(name, gen, k); }, kMaxStripes);
  probe([&](std::uint64_t k) { return log_object(name, gen, k); }, kMaxLogObjects);
  return out;
}

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
  auto& read = store.impl().last_read;
  const auto it = read.find({std::this_thread::get_id(), name});
  if (it == read.end()) return 0;
  const std::uint64_t g = it->second;
  read.erase(it);
  return g;
}

fs::path object_path(const RadosSnapshotStore& store, const std::string& object) {
  return fs::path(kScheme + store.pool() + "/" + object);
}

std::shared_ptr<ChangeNotifier> notifier_of(RadosSnapshotStore& store, const std::string& name) {
  RadosSnapshotStore::Impl& s = store.impl();
  s.refuse_if_inherited("a notification");
  std::lock_guard lock(s.mu);
  std::shared_ptr<ChangeNotifier>& n = s.notifiers[name];
  if (!n) {
    n = std::make_shared<ChangeNotifier>(s.io, notify_object(name), s.options.notify_timeout, s.options.notify_gap);
  }
  return n;
}

StoreHandles handles_of(RadosSnapshotStore& store) {
  store.impl().refuse_if_inherited("a RADOS operation");
  return {store.impl().cluster, store.impl().io};
}

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
RadosSnapshotStore::~RadosSnapshotStore() {
  // In a child of fork() the client is the parent's: abandoned, not shut
  // down (its threads are not here; detail/process_bound.hpp).
  if (impl_ && impl_->born.inherited()) (void)impl_.release();
}

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
  range("reader_grace", static_cast<std::uint64_t>(options.reader_grace.count()), 0, 86400);
  if (location.pool.empty()) throw PersistError::argument("RadosLocation::pool is empty");
  if (location.client_id.empty()) throw PersistError::argument("RadosLocation::client_id is empty");

  auto impl = std::make_unique<Impl>();
  impl->pool = location.pool;
  impl->options = options;
  // Errors name the index the store was opened for (rados://POOL/NAME), or
  // the pool alone when the name is not one.
  fs::path where = kScheme + location.pool;
  try {
    check_name(location.name);
    where = location.url();
  } catch (const PersistError&) {
  }
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
  // A full pool (its quota reached, or the cluster full) refuses a write
  // that would take room at once, with EDQUOT or ENOSPC, instead of holding
  // it until op_timeout (a failure whose outcome is unknown); what takes no
  // room still goes through: renewing and releasing the writer lock,
  // removing what a checkpoint replaced (docs/DISTRIBUTED.md, "A full pool").
  rados_set_pool_full_try(impl->io);
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

// `attrs`, when given, receives the head's attributes, read in the same
// operation.
std::optional<HeadRecord> read_head_record(RadosSnapshotStore::Impl& s, const std::string& name,
                                           std::map<std::string, std::string>* attrs_out = nullptr) {
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
  if (attrs_out != nullptr) *attrs_out = values;
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
  impl_->refuse_if_inherited("reading a head");
  check_name(name);
  auto rec = read_head_record(*impl_, std::string(name));
  if (!rec) return std::nullopt;
  return std::move(rec->head);
}

namespace {

// A collection's work, for the store's thread (after a publish: `list`
// false, `upto` the generation that publish published: what it superseded
// is collected, not what later publishes did, whose grace may still run)
// and RadosSnapshotStore::collect_garbage (`list` true, no bound).
std::size_t collect(RadosSnapshotStore::Impl& s, const std::string& name, bool list,
                    std::uint64_t upto = std::numeric_limits<std::uint64_t>::max()) {
  std::map<std::string, std::string> attrs;
  const auto rec = read_head_record(s, name, &attrs);
  if (!rec) return 0;
  const std::uint64_t published = std::min(rec->head.generation, upto);
  // The generation just before the head's (at or above `published` when a
  // later publish moved the head on: then nothing below `published` is it).
  const std::uint64_t keep = s.options.keep_previous_generation ? rec->previous_generation : 0;
  // The mark: generations below it are collected already. Missing (a head
  // made before it existed), malformed or above the published generation
  // (hostile): the pool is listed instead, and the mark set.
  const auto mark_attr = attrs.find(kCollectedAttr);
  std::uint64_t mark = 0;  // 0: none to go by
  if (mark_attr != attrs.end()) mark = decode_generation(mark_attr->second).value_or(0);
  if (mark > rec->head.generation) mark = 0;
  // Below the published generation nothing can still be published (every
  // writer of a lower generation compares against an older head), so what
  // is there is a leftover. Higher ones may be saves in progress: untouched.
  std::vector<std::string> leftovers;
  // Probing visits each generation from the mark to the published one; a
  // gap wider than a few failed saves leave (a hostile iqdb.next that made
  // the published generation jump by 2^32) is listed instead, once.
  constexpr std::uint64_t kMaxProbedGenerations = 64;
  if (list || mark == 0 || (published > mark && published - mark > kMaxProbedGenerations)) {
    for (auto& [gen, oid] : s.list_stripes(name)) {
      if (gen >= published || gen == keep) continue;
      leftovers.push_back(std::move(oid));
    }
  } else {
    for (std::uint64_t gen = mark; gen < published; ++gen) {
      if (gen == keep) continue;
      std::vector<std::string> objects = s.objects_of_generation(name, gen);
      leftovers.insert(leftovers.end(), std::make_move_iterator(objects.begin()),
                       std::make_move_iterator(objects.end()));
    }
  }
  s.remove_objects(leftovers);  // throws on a failure: the mark stays
  // Every generation below the published one but `keep` is collected now.
  const std::uint64_t collected = std::max(mark, keep != 0 && keep < published ? keep : published);
  if (collected != mark) {
    // Compared with what was read (a concurrent collection may have moved
    // it on: then this one's is not needed); never creates a head that a
    // removal took away meanwhile.
    WriteOp op;
    rados_write_op_assert_exists(op.op);
    cmp_xattr(op, kCollectedAttr, mark_attr != attrs.end() ? mark_attr->second : std::string());
    set_xattr(op, kCollectedAttr, encode_generation(collected));
    const std::string head = RadosSnapshotStore::head_object(name);
    const int r = rados_write_op_operate(op.op, s.io, head.c_str(), nullptr, 0);
    if (r < 0 && r != -ECANCELED && r != -ENOENT) s.fail(head, "recording what was collected", r);
  }
  return leftovers.size();
}

}  // namespace

void RadosSnapshotStore::Impl::schedule_collection(const std::string& name, std::uint64_t upto) {
  {
    std::lock_guard lock(gc_mu);
    if (!gc_stop) {
      try {
        if (!gc_thread.joinable()) gc_thread = std::thread([this] { run_collector(); });
        gc_queue.push_back(Collection{name, upto, std::chrono::steady_clock::now() + options.reader_grace, gc_queued + 1});
        ++gc_queued;
        gc_cv.notify_all();
        return;
      } catch (const std::exception&) {
        // No thread (or no memory for the queue): collect here.
      }
    }
  }
  if (options.reader_grace.count() != 0) return;  // readers were promised the grace: the next publish collects
  try {
    (void)collect(*this, name, false, upto);
  } catch (const std::exception&) {
    // Published all the same; the next publish collects what is left.
  }
}

void RadosSnapshotStore::Impl::run_collector() {
  std::unique_lock lock(gc_mu);
  for (;;) {
    if (gc_queue.empty()) {
      if (gc_stop) return;  // everything queued was collected
      gc_cv.wait(lock);
      continue;
    }
    const auto now = std::chrono::steady_clock::now();
    if (gc_queue.front().due > now) {
      if (gc_stop) {
        // Still within their grace: left for the next publish's collection
        // (any writer's) or collect_garbage.
        gc_queue.clear();
        gc_done = gc_queued;
        gc_cv.notify_all();
        return;
      }
      gc_cv.wait_until(lock, gc_queue.front().due);
      continue;
    }
    // Every collection due, one per name (the highest bound: it covers the
    // lower ones).
    std::map<std::string, std::uint64_t> due;
    std::uint64_t last = 0;
    while (!gc_queue.empty() && gc_queue.front().due <= now) {
      std::uint64_t& upto = due[gc_queue.front().name];
      upto = std::max(upto, gc_queue.front().upto);
      last = gc_queue.front().seq;
      gc_queue.pop_front();
    }
    lock.unlock();
    for (const auto& [name, upto] : due) {
      try {
        (void)collect(*this, name, false, upto);
      } catch (const std::exception&) {
        // As for a failed collection at the publish: the next one retries.
      }
    }
    lock.lock();
    gc_done = last;
    gc_cv.notify_all();
  }
}

std::size_t RadosSnapshotStore::collect_garbage(std::string_view name) {
  impl_->refuse_if_inherited("a garbage collection");
  check_name(name);
  return collect(*impl_, std::string(name), true);
}

void RadosSnapshotStore::wait_for_garbage_collection() {
  impl_->refuse_if_inherited("waiting for garbage collection");
  impl_->wait_collections();
}

std::unique_ptr<WritableFile> RadosSnapshotStore::create_exclusive(const fs::path& path) {
  impl_->refuse_if_inherited("a save");
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
  return open_stripe_writer(*impl_, p.name, generation, path);
}

std::unique_ptr<WritableFile> RadosSnapshotStore::open_append(const fs::path& path) {
  throw PersistError::at(ErrorKind::Unsupported, path,
                         "FileSystem::open_append is not supported on RADOS: the log is written to log objects by "
                         "the WAL's RADOS storage (rados_persist_config)");
}

std::unique_ptr<ReadableFile> RadosSnapshotStore::open_read(const fs::path& path) {
  impl_->refuse_if_inherited("a read");
  const Impl::Parsed p = impl_->parse(path);
  if (p.temp) throw PersistError::at(ErrorKind::Unsupported, path, "a save in progress cannot be read");
  auto rec = read_head_record(*impl_, p.name);
  if (!rec) {
    throw PersistError::io(path, "opening (no snapshot was published under this name)", ENOENT);
  }
  {
    std::lock_guard lock(impl_->mu);
    impl_->last_read[{std::this_thread::get_id(), p.name}] = rec->head.generation;
  }
  return open_stripe_reader(*impl_, p.name, std::move(rec->head), path);
}

void RadosSnapshotStore::rename(const fs::path& from, const fs::path& to) {
  impl_->refuse_if_inherited("a publish");
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
  // the generation this save started from. A save without the lock is
  // applied only while no writer holds it (iqdb.writer absent, which RADOS
  // compares as the empty value): it must not replace the snapshot of a
  // live writer, whose log it would orphan.
  WriteOp op;
  if (fence) {
    cmp_xattr(op, kEpochAttr, encode_generation(fence->epoch));
  } else {
    cmp_xattr(op, kWriterAttr, std::string());
  }
  cmp_xattr(op, kGenAttr, encode_generation(p.previous));
  rados_write_op_write_full(op.op, reinterpret_cast<const char*>(bytes.data()), bytes.size());
  set_xattr(op, kGenAttr, encode_generation(p.generation));
  const int r = rados_write_op_operate(op.op, impl_->io, head.c_str(), nullptr, 0);
  if (r == -ETIMEDOUT) {
    // No answer: the operation may still be applied (an OSD that was paused
    // or slow), so the head may name this generation already. Its stripes
    // stay: the save is forgotten here, so that remove() leaves them (the
    // next publish's collection removes them if it never was published).
    {
      std::lock_guard lock(impl_->mu);
      impl_->pending.erase(from.string());
    }
    throw PersistError::io(impl_->object_path(head),
                           "publishing generation " + std::to_string(p.generation) +
                               " (no answer within op_timeout: whether it was published is unknown until the head "
                               "is read again; its stripes are kept)",
                           ETIMEDOUT);
  }
  if (r == -ECANCELED && fence) {
    std::optional<std::string> epoch;
    try {
      epoch = impl_->read_attr(head, kEpochAttr);
    } catch (const PersistError&) {
    }
    if (epoch != encode_generation(fence->epoch)) {
      const std::string why = "the head's fencing epoch is now " + (epoch ? shown(*epoch, 32) : std::string("unreadable")) +
                              ", this writer's is " + std::to_string(fence->epoch) + ": a newer writer took over";
      fence->mark_lost(why);
      throw PersistError::at(ErrorKind::Fenced, impl_->object_path(head),
                             why + "; generation " + std::to_string(p.generation) + " was not published");
    }
  }
  if (r == -ECANCELED && !fence) {
    std::string holder;
    try {
      const std::string address = impl_->read_attr(head, kWriterAttr).value_or(std::string());
      if (!address.empty()) holder = shown(address, kMaxAddress);
    } catch (const PersistError& e) {
      holder = "(not known: " + std::string(e.what()) + ")";
    }
    if (!holder.empty()) {
      throw PersistError::at(ErrorKind::Locked, impl_->object_path(head),
                             "the writer lock is held by " + holder +
                                 " (or its holder stopped without releasing it), and this save does not hold it; "
                                 "generation " + std::to_string(p.generation) +
                                 " was not published (save through the lock: RadosWriterLock, or PersistedIndex; "
                                 "take_over fences a holder that stopped)");
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
  impl_->schedule_collection(p.name, p.generation);  // behind the publish: see Impl
}

void RadosSnapshotStore::remove(const fs::path& path) {
  impl_->refuse_if_inherited("a removal");
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
    // Highest index first, as the collection removes: a removal cut short
    // (the process killed) leaves the lowest indexes, where a collection's
    // probe starts (docs/DISTRIBUTED.md, "Writing", step 5); lowest first,
    // it could leave a run of missing indexes longer than the probe's
    // window below the stripes left, which no collection would then find.
    std::vector<std::string> stripes;
    for (std::uint64_t k = e.stripes_touched; k-- > 0;) stripes.push_back(stripe_object(e.name, e.generation, k));
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
  impl_->refuse_if_inherited("a look-up");
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
