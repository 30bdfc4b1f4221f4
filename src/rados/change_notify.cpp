// Watch/notify between a writer and its read replicas (change_notify.hpp).
#include "rados/change_notify.hpp"

#include <atomic>
#include <cerrno>

#include "rados/rados_ops.hpp"

namespace iqdb::persist::rados_detail {

std::string notify_object(std::string_view name) { return std::string(name) + ".notify"; }

// ------------------------------------------------------------ the writer

ChangeNotifier::ChangeNotifier(rados_ioctx_t io, std::string oid, std::chrono::seconds timeout,
                               std::chrono::milliseconds gap)
    : io_(io), oid_(std::move(oid)), timeout_ms_(static_cast<std::uint64_t>(timeout.count()) * 1000), gap_(gap) {}

ChangeNotifier::~ChangeNotifier() { shutdown(); }

void ChangeNotifier::changed() noexcept {
  bool wake = false;
  {
    std::lock_guard lk(mu_);
    if (stopped_ || pending_) return;
    pending_ = true;
    wake = idle_;
    if (!thread_.joinable()) {
      try {
        thread_ = std::thread([this] { run(); });
      } catch (...) {
        // No thread: no notifications (replicas still poll).
        stopped_ = true;
        return;
      }
    }
  }
  if (wake) cv_.notify_one();
}

void ChangeNotifier::shutdown() noexcept {
  {
    std::lock_guard lk(mu_);
    stopped_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void ChangeNotifier::run() {
  using Clock = std::chrono::steady_clock;
  std::unique_lock lk(mu_);
  Clock::time_point quiet_until{};
  for (;;) {
    idle_ = true;
    cv_.wait(lk, [&] { return stopped_ || pending_; });
    idle_ = false;
    if (stopped_) return;
    if (Clock::now() < quiet_until) {
      cv_.wait_until(lk, quiet_until, [&] { return stopped_; });
      if (stopped_) return;
    }
    pending_ = false;  // what changes from here on needs the next notify
    lk.unlock();
    const auto sent = Clock::now();
    const int reached = notify_once();
    lk.lock();
    quiet_until = reached > 0 ? sent + gap_ : Clock::now() + kQuietPeriod;
  }
}

int ChangeNotifier::notify_once() {
  for (int attempt = 0;; ++attempt) {
    char* reply = nullptr;
    std::size_t reply_len = 0;
    const int r = rados_notify2(io_, oid_.c_str(), "", 0, timeout_ms_, &reply, &reply_len);
    int reached = -1;
    if (reply != nullptr) {
      notify_ack_t* acks = nullptr;
      notify_timeout_t* timeouts = nullptr;
      std::size_t n_acks = 0;
      std::size_t n_timeouts = 0;
      if (rados_decode_notify_response(reply, reply_len, &acks, &n_acks, &timeouts, &n_timeouts) == 0) {
        reached = static_cast<int>(n_acks + n_timeouts);
        rados_free_notify_response(acks, n_acks, timeouts);
      }
      rados_buffer_free(reply);
    }
    if (r == -ENOENT && attempt == 0) {
      // The first notification of this index: the object is made (empty;
      // an idempotent create), then notified.
      WriteOp op;
      rados_write_op_create(op.op, LIBRADOS_CREATE_IDEMPOTENT, nullptr);
      if (rados_write_op_operate(op.op, io_, oid_.c_str(), nullptr, 0) < 0) return -1;
      continue;
    }
    return r < 0 && r != -ETIMEDOUT ? -1 : reached;
  }
}

// ------------------------------------------------------------ the replica

namespace {

class RadosChangeWatch final : public detail::ChangeWatch {
 public:
  RadosChangeWatch(rados_t cluster, rados_ioctx_t io, std::string oid, std::function<void()> wake)
      : cluster_(cluster), io_(io), oid_(std::move(oid)), wake_(std::move(wake)) {}
  ~RadosChangeWatch() override {
    drop();
    // Callbacks already queued run before this returns (they use `this`).
    rados_watch_flush(cluster_);
  }
  RadosChangeWatch(const RadosChangeWatch&) = delete;
  RadosChangeWatch& operator=(const RadosChangeWatch&) = delete;

  bool ensure() override {
    const std::uint64_t h = handle_.load();
    if (h != 0) {
      if (!broken_.load() && rados_watch_check(io_, h) >= 0) return true;
      breaks_.fetch_add(1);
      drop();
    }
    broken_.store(false);
    std::uint64_t fresh = 0;
    if (rados_watch2(io_, oid_.c_str(), &fresh, &on_notify, &on_error, this) < 0) return false;
    handle_.store(fresh);
    registrations_.fetch_add(1);
    return true;
  }

  Counts counts() const noexcept override { return {wakeups_.load(), registrations_.load(), breaks_.load()}; }

 private:
  // The payload is not looked at: a notification only wakes.
  static void on_notify(void* arg, std::uint64_t notify_id, std::uint64_t handle, std::uint64_t, void*, std::size_t) {
    auto* self = static_cast<RadosChangeWatch*>(arg);
    self->wakeups_.fetch_add(1);
    self->wake_();
    (void)rados_notify_ack(self->io_, self->oid_.c_str(), notify_id, handle, nullptr, 0);
  }

  // The watch is gone (an OSD dropped it, the object was removed, the
  // client was cut off): the follower registers it anew and catches up.
  static void on_error(void* arg, std::uint64_t handle, int) {
    auto* self = static_cast<RadosChangeWatch*>(arg);
    if (handle != self->handle_.load()) return;  // a watch already dropped
    self->broken_.store(true);
    self->wake_();
  }

  void drop() {
    const std::uint64_t h = handle_.exchange(0);
    if (h != 0) (void)rados_unwatch2(io_, h);
  }

  rados_t cluster_;
  rados_ioctx_t io_;
  std::string oid_;
  std::function<void()> wake_;
  std::atomic<std::uint64_t> handle_{0};  // 0: none registered
  std::atomic<bool> broken_{false};
  std::atomic<std::uint64_t> wakeups_{0};
  std::atomic<std::uint64_t> registrations_{0};
  std::atomic<std::uint64_t> breaks_{0};
};

}  // namespace

std::unique_ptr<detail::ChangeWatch> make_change_watch(rados_t cluster, rados_ioctx_t io, std::string oid,
                                                       std::function<void()> wake) {
  return std::make_unique<RadosChangeWatch>(cluster, io, std::move(oid), std::move(wake));
}

}  // namespace iqdb::persist::rados_detail
