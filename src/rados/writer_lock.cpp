// RadosWriterLock: one writer per snapshot name, fenced (docs/DISTRIBUTED.md,
// "One writer, fenced"). An exclusive cls_lock lock on NAME.head with a
// lease, renewed by a thread; a fencing epoch (NAME.head's iqdb.epoch)
// raised by every acquire and compared by every publish; the previous
// holder's client blocklisted when it did not release the lock.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <rados/librados.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "iqdb/persist/detail/process_bound.hpp"
#include "iqdb/persist/detail/resource_error.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/rados.hpp"
#include "rados/head_record.hpp"
#include "rados/rados_ops.hpp"
#include "rados/writer_fence.hpp"

namespace iqdb::persist {

namespace fs = std::filesystem;
using namespace rados_detail;
using Clock = std::chrono::steady_clock;

void rados_detail::Fence::check(const fs::path& where) {
  if (refuse_locally) enforce(where);
}

void rados_detail::Fence::enforce(const fs::path& where) {
  if (!lost.load() && Clock::now().time_since_epoch().count() >= valid_until.load()) {
    mark_lost("its lease ran out before it was renewed (another writer may have taken over)");
  }
  if (lost.load()) {
    std::lock_guard lock(mu);
    throw PersistError::at(ErrorKind::Fenced, where,
                           "this writer (epoch " + std::to_string(epoch) + ") lost the writer lock: " + reason);
  }
}

namespace {

// Whether `a` is one client instance's address as librados writes it
// (`[v1:|v2:|any:]IP:PORT/NONCE`, IPv6 in brackets) with a nonce other than
// 0: blocklisting an address whose port and nonce are 0 fences every client
// of that host (the OSDs match it against the whole IP), so a hostile
// iqdb.writer must not get that far.
bool one_client_address(std::string_view a) {
  for (const std::string_view prefix : {"v1:", "v2:", "any:"}) {
    if (a.substr(0, prefix.size()) == prefix) {
      a.remove_prefix(prefix.size());
      break;
    }
  }
  // Decimal digits only, the whole of `d`, at most `max`.
  const auto number = [](std::string_view d, std::uint64_t max) -> std::optional<std::uint64_t> {
    std::uint64_t v = 0;
    const auto [end, ec] = std::from_chars(d.data(), d.data() + d.size(), v);
    if (ec != std::errc() || end != d.data() + d.size() || v > max) return std::nullopt;
    return v;
  };
  const std::size_t slash = a.rfind('/');
  if (slash == std::string_view::npos) return false;
  const auto nonce = number(a.substr(slash + 1), 0xffffffffu);
  if (!nonce || *nonce == 0) return false;
  const std::string_view host_port = a.substr(0, slash);
  const std::size_t colon = host_port.rfind(':');
  if (colon == std::string_view::npos || !number(host_port.substr(colon + 1), 65535)) return false;
  std::string_view host = host_port.substr(0, colon);
  const bool v6 = host.size() >= 2 && host.front() == '[' && host.back() == ']';
  if (v6) host = host.substr(1, host.size() - 2);
  if (host.empty() || host.size() >= INET6_ADDRSTRLEN) return false;
  const std::string h(host);
  unsigned char buf[sizeof(in6_addr)];
  return ::inet_pton(v6 ? AF_INET6 : AF_INET, h.c_str(), buf) == 1;
}

struct Locker {
  std::string client, cookie, address;
};

// cls_lock answers EIO when the lock's attribute on the object ("lock." and
// the lock's name) cannot be decoded: bytes something other than a RADOS
// lock wrote there. An EIO while that attribute can be read is that,
// InvalidHeader naming the object; otherwise (r is another error, or the
// attribute cannot be read either) this returns and r is an I/O error.
void refuse_undecodable_lock(rados_ioctx_t io, const std::string& object, const fs::path& where, int r) {
  if (r != -EIO) return;
  const std::string attr = std::string("lock.") + kLockName;
  char byte = 0;
  const int g = rados_getxattr(io, object.c_str(), attr.c_str(), &byte, 0);
  if (g < 0 && g != -ERANGE) return;
  throw PersistError::at(ErrorKind::InvalidHeader, where,
                         "the attribute '" + attr + "' of the writer lock is not a lock Ceph's cls_lock can decode "
                         "(something other than a RADOS lock wrote it); with no writer alive, remove it (rados rmxattr " +
                             object + " " + attr + ")");
}

// The lockers of `lock` on `object`. Every byte from RADOS is checked.
std::vector<Locker> list_lockers(rados_ioctx_t io, const std::string& object, const fs::path& where) {
  std::size_t sizes[4] = {256, 4096, 4096, 4096};
  for (int attempt = 0; attempt < 4; ++attempt) {
    std::vector<char> tag(sizes[0]), clients(sizes[1]), cookies(sizes[2]), addrs(sizes[3]);
    std::size_t lens[4] = {tag.size(), clients.size(), cookies.size(), addrs.size()};
    int exclusive = 0;
    const ssize_t n = rados_list_lockers(io, object.c_str(), kLockName, &exclusive, tag.data(), &lens[0],
                                         clients.data(), &lens[1], cookies.data(), &lens[2], addrs.data(), &lens[3]);
    if (n == -ERANGE) {
      for (int i = 0; i < 4; ++i) {
        if (lens[i] > (std::size_t{1} << 20)) {
          throw PersistError::at(ErrorKind::InvalidHeader, where, "the writer lock's locker list is over 1 MiB");
        }
        sizes[i] = std::max(sizes[i], lens[i] + 1);
      }
      continue;
    }
    if (n == -ENOENT) return {};
    if (n < 0) {
      refuse_undecodable_lock(io, object, where, static_cast<int>(n));
      throw PersistError::io(where, "listing the writer lock's holders", static_cast<int>(-n));
    }
    const auto split = [&](const std::vector<char>& buf, std::size_t len) {
      std::vector<std::string> out;
      len = std::min(len, buf.size());
      std::size_t i = 0;
      while (i < len && out.size() < static_cast<std::size_t>(n)) {
        const auto* end = static_cast<const char*>(std::memchr(buf.data() + i, '\0', len - i));
        const std::size_t e = end == nullptr ? len : static_cast<std::size_t>(end - buf.data());
        out.emplace_back(buf.data() + i, e - i);
        i = e + 1;
      }
      if (out.size() != static_cast<std::size_t>(n)) {
        throw PersistError::at(ErrorKind::InvalidHeader, where,
                               "the writer lock's locker list is malformed (" + std::to_string(n) + " lockers, " +
                                   std::to_string(out.size()) + " entries)");
      }
      return out;
    };
    const auto c = split(clients, lens[1]);
    const auto k = split(cookies, lens[2]);
    const auto a = split(addrs, lens[3]);
    std::vector<Locker> out;
    for (std::size_t i = 0; i < c.size(); ++i) out.push_back({c[i], k[i], a[i]});
    return out;
  }
  throw PersistError::at(ErrorKind::InvalidHeader, where, "the writer lock's locker list keeps growing");
}

std::string describe(const std::vector<Locker>& lockers) {
  if (lockers.empty()) return "another writer";
  std::string s;
  for (const auto& l : lockers) {
    if (!s.empty()) s += ", ";
    s += "writer " + (printable(l.client) ? l.client : std::string("?")) + " at " +
         (printable(l.address) && l.address.size() <= kMaxAddress ? l.address : std::string("?"));
  }
  return s;
}

}  // namespace

struct RadosWriterLock::State {
  detail::ProcessBound born;  // a child of fork() does not hold its parent's lock
  RadosSnapshotStore* store = nullptr;
  StoreHandles h;
  std::string name, head, cookie, address, fenced;
  fs::path where;
  std::chrono::seconds lease{0};
  std::shared_ptr<Fence> fence = std::make_shared<Fence>();
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  bool released = false;
  std::thread renewer;

  timeval lease_tv() const { return timeval{static_cast<time_t>(lease.count()), 0}; }

  int lock(std::uint8_t flags) {
    timeval tv = lease_tv();
    return rados_lock_exclusive(h.io, head.c_str(), kLockName, cookie.c_str(), "iqdb-persist writer", &tv, flags);
  }

  // Renewals start every lease / 3, counted from when the last one was
  // sent, not from when it completed: a renewal that took longer than that
  // (a slow OSD) is followed by the next one at once, while the lease still
  // runs, instead of a full interval later (which a renewal taking over
  // 2/3 of the lease would push past the lease's end).
  void renew_loop() {
    const auto interval = std::chrono::duration_cast<Clock::duration>(lease) / 3;
    auto next = Clock::now() + interval;
    std::unique_lock lk(mu);
    while (!stop) {
      cv.wait_until(lk, next, [&] { return stop; });
      if (stop) break;
      lk.unlock();
      const auto sent = Clock::now();
      next = sent + interval;
      const int r = lock(LIBRADOS_LOCK_FLAG_MUST_RENEW);
      if (r == 0) {
        if (sent.time_since_epoch().count() < fence->valid_until.load()) {
          fence->valid_until.store((sent + lease).time_since_epoch().count());
        } else {
          fence->mark_lost("its lease ran out before it was renewed (another writer may have taken over)");
        }
      } else if (r == -ENOENT || r == -EBUSY || r == -ESHUTDOWN) {
        fence->mark_lost(r == -ESHUTDOWN ? "this client is blocklisted (a newer writer took over)"
                                         : "renewing the lock found it held by another writer or gone");
      }  // Other errors (time-outs): retry; the lease check decides.
      lk.lock();
    }
  }

  void stop_renewing() {
    {
      std::lock_guard lk(mu);
      stop = true;
    }
    cv.notify_all();
    if (renewer.joinable()) renewer.join();
  }
};

RadosWriterLock::RadosWriterLock(std::unique_ptr<State> state) : s_(std::move(state)) {}

RadosWriterLock::~RadosWriterLock() {
  if (s_ && s_->born.inherited()) {
    // A child of fork(): the lock is the parent's (releasing it would unlock
    // the parent's cookie), and so is the renewer thread, which is not here.
    (void)s_.release();
    return;
  }
  try {
    release();
  } catch (...) {
  }
}

std::unique_ptr<RadosWriterLock> RadosWriterLock::acquire(RadosSnapshotStore& store, std::string_view name,
                                                          const RadosLockOptions& options) {
  check_name(name);
  if (options.lease < std::chrono::seconds(2) || options.lease > std::chrono::hours(24)) {
    throw PersistError::argument("RadosLockOptions::lease = " + std::to_string(options.lease.count()) +
                                 " s is outside 2 s .. 1 day");
  }
  if (options.blocklist_expiry < std::chrono::seconds(1) || options.blocklist_expiry > std::chrono::hours(24 * 365)) {
    throw PersistError::argument("RadosLockOptions::blocklist_expiry is outside 1 s .. 1 year");
  }
  auto s = std::make_unique<State>();
  s->store = &store;
  s->h = handles_of(store);
  s->name = std::string(name);
  s->head = RadosSnapshotStore::head_object(name);
  s->where = fs::path("rados://" + store.pool() + "/" + s->head);
  s->lease = options.lease;
  s->fence->refuse_locally = options.refuse_locally;
  {
    std::random_device rd;
    char buf[40];
    // At most 8 + 8 + 1 + 11 bytes and the NUL: always fits; the length is not needed.
    (void)std::snprintf(buf, sizeof buf, "%08x%08x-%d", rd(), rd(), static_cast<int>(::getpid()));
    s->cookie = buf;
  }
  const auto fail = [&](std::string_view op, int r) -> void {
    if (r == -ESHUTDOWN) {
      throw PersistError::at(ErrorKind::Fenced, s->where,
                             std::string(op) + " failed: this client is blocklisted (a newer writer took over)");
    }
    throw PersistError::io(s->where, op, -r);
  };

  // The head must exist to carry the lock and the epoch.
  {
    rados_write_op_t op = rados_create_write_op();
    rados_write_op_create(op, LIBRADOS_CREATE_EXCLUSIVE, nullptr);
    const std::string zero = encode_generation(0), one = encode_generation(1);
    rados_write_op_setxattr(op, kGenAttr, zero.data(), zero.size());
    rados_write_op_setxattr(op, kNextAttr, one.data(), one.size());
    // Epoch 0 from the start, so that the first raise below compares too: of
    // two writers that both read 0 (one paused past the other's takeover),
    // only one gets epoch 1.
    rados_write_op_setxattr(op, kEpochAttr, zero.data(), zero.size());
    const int r = rados_write_op_operate(op, s->h.io, s->head.c_str(), nullptr, 0);
    rados_release_write_op(op);
    if (r < 0 && r != -EEXIST) fail("making sure the head exists (an exclusive create)", r);
  }

  const auto wait = options.wait_timeout.count() > 0 ? options.wait_timeout : 2 * options.lease + std::chrono::seconds(30);
  const auto deadline = Clock::now() + wait;
  Clock::time_point sent;
  for (;;) {
    sent = Clock::now();
    const int r = s->lock(0);
    if (r == 0) break;
    if (r != -EBUSY) {
      refuse_undecodable_lock(s->h.io, s->head, s->where, r);
      fail("taking the writer lock", r);
    }
    std::string holder = "another writer";
    try {
      holder = describe(list_lockers(s->h.io, s->head, s->where));
    } catch (const PersistError&) {
    }
    if (!options.take_over) {
      throw PersistError::at(ErrorKind::Locked, s->where,
                             "the writer lock of '" + s->name + "' is held by " + holder +
                                 " (acquire with take_over to wait for its lease to run out)");
    }
    if (Clock::now() >= deadline) {
      throw PersistError::at(ErrorKind::Locked, s->where,
                             "the writer lock of '" + s->name + "' is still held by " + holder + " after " +
                                 std::to_string(wait.count()) + " s (it keeps renewing its lease)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  s->fence->valid_until.store((sent + options.lease).time_since_epoch().count());

  // Held. Everything below unlocks on failure.
  try {
    for (const auto& l : list_lockers(s->h.io, s->head, s->where)) {
      if (l.cookie == s->cookie) s->address = l.address;
    }
    if (s->address.empty() || s->address.size() > kMaxAddress || !printable(s->address)) {
      throw PersistError::at(ErrorKind::InvalidHeader, s->where,
                             "the writer lock does not list this writer (or its address is malformed)");
    }
    // The previous writer: its epoch, and its address if it did not release.
    std::map<std::string, std::string> attrs;
    {
      ReadOp op;
      Xattrs xattrs;
      xattrs.add_to(op);
      const int r = rados_read_op_operate(op.op, s->h.io, s->head.c_str(), 0);
      if (r < 0) fail("reading the head's attributes", r);
      attrs = xattrs.values();
    }
    std::optional<std::uint64_t> epoch = std::uint64_t{0};
    const auto e = attrs.find(kEpochAttr);
    if (e != attrs.end()) epoch = decode_generation(e->second);
    if (!epoch || *epoch == UINT64_MAX) {
      throw PersistError::at(ErrorKind::InvalidHeader, s->where, "the head's fencing epoch attribute is malformed");
    }
    const auto w = attrs.find(kWriterAttr);
    if (w != attrs.end() && !w->second.empty() && w->second != s->address) {
      if (w->second.size() > kMaxAddress || !printable(w->second)) {
        throw PersistError::at(ErrorKind::InvalidHeader, s->where, "the head's writer address attribute is malformed");
      }
      if (!one_client_address(w->second)) {
        throw PersistError::at(ErrorKind::InvalidHeader, s->where,
                               "the head's writer address attribute '" + w->second +
                                   "' is not one client's address (IP:PORT/NONCE, the nonce not 0): blocklisting "
                                   "it could fence other clients");
      }
      if (options.blocklist_previous) {
        std::vector<char> addr(w->second.begin(), w->second.end());
        addr.push_back('\0');
        const int r = rados_blocklist_add(s->h.cluster, addr.data(),
                                          static_cast<std::uint32_t>(options.blocklist_expiry.count()));
        if (r < 0) fail("blocklisting the previous writer " + w->second, r);
        // Our next operation then carries an OSD map with the blocklist in
        // it: the OSD applies that map before it, and refuses the old
        // writer from then on.
        const int m = rados_wait_for_latest_osdmap(s->h.cluster);
        if (m < 0) fail("waiting for the OSD map with the blocklist", m);
        s->fenced = w->second;
      }
    }
    // Raise the epoch: from now on publishes carrying an older one fail.
    s->fence->epoch = *epoch + 1;
    {
      // Compared with what was read: a head without the attribute (made
      // before heads were created with epoch 0) compares with the empty
      // value, which is what RADOS compares a missing attribute as (test
      // RadosWriterLockTest.MissingAttributeComparesAsEmpty), so two writers
      // that both read it missing cannot both raise it.
      WriteOp op;
      cmp_xattr(op, kEpochAttr, e != attrs.end() ? encode_generation(*epoch) : std::string());
      set_xattr(op, kEpochAttr, encode_generation(s->fence->epoch));
      set_xattr(op, kWriterAttr, s->address);
      const int r = rados_write_op_operate(op.op, s->h.io, s->head.c_str(), nullptr, 0);
      if (r == -ECANCELED) {
        throw PersistError::at(ErrorKind::Locked, s->where, "the fencing epoch changed while taking the lock");
      }
      if (r < 0) fail("raising the fencing epoch", r);
    }
  } catch (...) {
    (void)rados_unlock(s->h.io, s->head.c_str(), kLockName, s->cookie.c_str());
    throw;
  }
  State* raw = s.get();
  std::unique_ptr<RadosWriterLock> lock;
  try {
    lock.reset(new RadosWriterLock(std::move(s)));  // (s keeps the state when the allocation fails)
  } catch (...) {
    (void)rados_unlock(raw->h.io, raw->head.c_str(), kLockName, raw->cookie.c_str());
    throw;
  }
  // From here the lock's destructor gives back what was taken (release():
  // the fence, our address, the lock), also when these fail (out of
  // memory, no thread to be had).
  attach_fence(store, raw->name, raw->fence);
  try {
    raw->renewer = std::thread([raw] { raw->renew_loop(); });
  } catch (const std::system_error& e) {
    throw detail::thread_error(raw->where, "the writer lock's renewal thread", e);  // (the destructor releases)
  }
  return lock;
}

void RadosWriterLock::release() {
  if (s_->released || s_->born.inherited()) return;
  s_->released = true;
  s_->stop_renewing();
  detach_fence(*s_->store, s_->name, s_->fence.get());
  s_->fence->mark_lost("the lock was released");
  // Clear our address (only under our epoch), then unlock (only our
  // cookie's lock). Also when the lock was marked lost: by our own lease
  // check (no newer writer may exist, and the next one should not wait for
  // the lease or blocklist us), or by a takeover (then both fail, harmlessly:
  // the epoch differs and the lock has another cookie; a blocklisted client
  // is refused at once).
  rados_write_op_t op = rados_create_write_op();
  const std::string mine = encode_generation(s_->fence->epoch);
  rados_write_op_cmpxattr(op, kEpochAttr, LIBRADOS_CMPXATTR_OP_EQ, mine.data(), mine.size());
  rados_write_op_rmxattr(op, kWriterAttr);
  (void)rados_write_op_operate(op, s_->h.io, s_->head.c_str(), nullptr, 0);
  rados_release_write_op(op);
  (void)rados_unlock(s_->h.io, s_->head.c_str(), kLockName, s_->cookie.c_str());
}

std::shared_ptr<Fence> rados_detail::fence_of(const RadosWriterLock& lock) { return lock.state().fence; }

std::uint64_t RadosWriterLock::epoch() const noexcept { return s_->fence->epoch; }
const std::string& RadosWriterLock::address() const noexcept { return s_->address; }
const std::string& RadosWriterLock::fenced_writer() const noexcept { return s_->fenced; }
bool RadosWriterLock::held() const noexcept {
  return !s_->born.inherited() && !s_->fence->lost.load() &&
         Clock::now().time_since_epoch().count() < s_->fence->valid_until.load();
}
void RadosWriterLock::check() const {
  s_->born.refuse_if_inherited(s_->where, "writing under the lock");
  s_->fence->enforce(s_->where);
}

}  // namespace iqdb::persist
