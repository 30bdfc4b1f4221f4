// ReadReplica: a read-only copy of an index that follows its writer.
//
//   using namespace iqdb::persist;
//   auto replica = ReadReplica<FlatIndex>::open(cfg);     // snapshot + log; never the writer lock
//   replica.catch_up();                                    // records the writer logged since
//   replica.start_following(std::chrono::milliseconds(20));  // or in the background
//   replica.start_following();                             // RADOS: woken by the writer (FollowOptions)
//   auto hits = replica.read([&](const FlatIndex& ix) { return ix.search(q, 10); });
//   ReplicaLag lag = replica.lag();                        // LSNs and time behind
//   PersistedIndex<FlatIndex> writer = std::move(replica).promote();  // failover
//
// Any number of replicas, in any processes, on the local files or on RADOS
// (the same PersistConfig as the writer's). docs/DISTRIBUTED.md, "Read
// replicas", says what is guaranteed and what it costs.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>

#include "iqdb/persist/detail/exception_text.hpp"
#include "iqdb/persist/detail/log_follower.hpp"
#include "iqdb/persist/detail/process_bound.hpp"
#include "iqdb/persist/detail/read_scope.hpp"
#include "iqdb/persist/detail/resource_error.hpp"
#include "iqdb/persist/persisted_index.hpp"

namespace iqdb::persist {

// How far a replica is behind its writer.
struct ReplicaLag {
  std::uint64_t applied_lsn = 0;    // the LSN the replica's index covers
  // The last LSN of the log the replica follows when lag() read it. Once
  // the writer checkpointed past that log, records of the log that
  // replaced it are not counted (they are read at the next catch-up): a
  // lower bound then, and records_behind with it.
  std::uint64_t available_lsn = 0;
  std::uint64_t records_behind = 0;  // available_lsn - applied_lsn
  // Every record acknowledged before fresh_as_of is in the replica's index:
  // the instant the last catch-up began reading (steady clock).
  std::chrono::steady_clock::time_point fresh_as_of;
  std::chrono::nanoseconds time_behind{0};  // now - fresh_as_of
};

// What a replica did since it was opened.
struct ReplicaStats {
  std::uint64_t catch_ups = 0;        // catch_up() calls and background rounds that succeeded
  std::uint64_t records_applied = 0;  // after the first load
  std::uint64_t reloads = 0;          // loads anew (the records it needed were gone, a save without the WAL)
  wal::WalStats load;                 // what the first load replayed
  // The background follower's wake-ups (FollowOptions::watch; RADOS only):
  std::uint64_t notifications = 0;  // the writer's notifications received
  std::uint64_t watches = 0;        // watches registered (more than 1: re-registered after a break)
  std::uint64_t watch_breaks = 0;   // watches found broken (then: polling every watch_retry until re-registered)
};

// How the background follower runs (start_following).
struct FollowOptions {
  // The longest time between two catch-ups. Zero: the storage's default,
  // 10 s where the follower is woken by the writer (RADOS, watch set), else
  // 20 ms. Longer than a day (and min_gap's too): a day.
  std::chrono::milliseconds interval{0};
  // Where the storage has them (RADOS: a watch on NAME.notify), catch up as
  // soon as the writer notifies that it committed or published; polling
  // every `interval` stays as the fallback (a notification can be lost).
  bool watch = true;
  // While the watch is not registered (it broke: an OSD dropped it, the
  // object was removed; or it could not be made yet), catch up and try to
  // register it again this often (at most `interval`).
  std::chrono::milliseconds watch_retry{1000};
  // The least time from the start of one catch-up to the start of the next
  // one a notification brings. 0: at once. A busy writer notifies about
  // once per commit round trip, and each notification is a catch-up (three
  // RADOS reads or so): a gap of, say, 5 ms bounds a replica's reads while
  // the writer commits to those of a 5 ms poll, and keeps none while it
  // does not.
  std::chrono::milliseconds min_gap{0};
};

// Thread safety: read() runs alongside catch_up() and the background
// follower (a batch becomes visible whole); catch_up(), lag(), last_lsn(),
// stats(), start_following() and stop_following() may be called from any
// thread (two stops at once: both return once it stopped). promote(), moving and
// destroying need every other call to have returned. index() is
// unsynchronised. In a child of fork(), read(), index(), last_lsn() and
// config() serve the index as it was at the fork; catch_up(),
// start_following(), lag(), stats() and promote() throw Forked (stop the
// background follower before forking: a child may otherwise inherit its
// lock held; docs/API.md, "fork()").
template <Persistable I>
class ReadReplica {
 public:
  // Load the snapshot at config.path and replay its log, as load() without
  // the WAL does; the log is then followed. config.wal_enabled is ignored.
  static ReadReplica open(PersistConfig config) {
    detail::validate_config(config);
    auto s = std::make_unique<State>(std::move(config));
    s->load();
    s->stats.load = s->follower->load_stats();
    return ReadReplica(std::move(s));
  }

  ReadReplica(ReadReplica&&) noexcept = default;
  ReadReplica& operator=(ReadReplica&& o) noexcept {
    if (this != &o) {
      abandon_if_inherited();
      s_ = std::move(o.s_);
    }
    return *this;
  }
  // Stops the background follower. In a child of fork(), abandons the
  // replica instead (detail/process_bound.hpp).
  ~ReadReplica() { abandon_if_inherited(); }

  // Apply the records the writer logged since the last catch-up, following
  // checkpoints; loads anew when the records it needs are gone, or a save
  // without the WAL replaced the snapshot it loaded. Returns the
  // records applied (after a load anew: how far the LSN moved). Throws
  // PersistError (I/O, damage); the replica stays as it was and the call
  // can be repeated.
  std::uint64_t catch_up() {
    detail::ReadScope::refuse(s_.get(), "catch_up()");
    s_->refuse_if_inherited("catch_up()");
    return s_->catch_up();
  }

  // Follow in the background: a catch-up every `interval` (the longest time
  // between two), and on RADOS also as soon as the writer notifies (see
  // FollowOptions), until stop_following(), promote() or destruction.
  // Errors are kept in failure(). No effect while already following. Io
  // (EAGAIN) when its thread cannot be started: the replica is as before.
  void start_following(std::chrono::milliseconds interval) {
    FollowOptions o;
    o.interval = interval;
    start_following(o);
  }
  void start_following(const FollowOptions& options = {}) {
    s_->refuse_if_inherited("start_following()");
    // It waits for a stop_following() of another thread, which waits for
    // the follower, which waits for a read's lock: inside read(f), f's own
    // (a deadlock found by an outside hunt).
    detail::ReadScope::refuse(s_.get(), "start_following()");
    s_->start(options);
  }
  // (In a child of fork() nothing follows: a no-op.)
  void stop_following() {
    detail::ReadScope::refuse(s_.get(), "stop_following()");
    if (!s_->born.inherited()) s_->stop();
  }
  // Whether the background follower is woken by the writer now (its last
  // round found a watch standing); false when it polls only.
  bool watching() const {
    if (s_->born.inherited()) return false;
    std::lock_guard lk(s_->bg_mu);
    return s_->watching;
  }
  // The last background catch-up's error; nullopt after one succeeded.
  // In a child of fork(): why catch-ups are refused there.
  std::optional<std::string> failure() const {
    if (s_->born.inherited()) return detail::forked_reason("following");
    std::lock_guard lk(s_->bg_mu);
    return s_->failure;
  }

  // How far behind the writer: reads the log's end (applies nothing).
  // Throws PersistError as catch_up() does (I/O; CorruptLog for damage
  // that stays when read again).
  ReplicaLag lag() {
    detail::ReadScope::refuse(s_.get(), "lag()");
    s_->refuse_if_inherited("lag()");
    std::lock_guard lk(s_->poll_mu);
    ReplicaLag out;
    out.applied_lsn = s_->follower->last_lsn();
    out.available_lsn = s_->follower->probe();
    out.records_behind = out.available_lsn - out.applied_lsn;
    out.fresh_as_of = s_->fresh_as_of;
    out.time_behind = std::chrono::steady_clock::now() - s_->fresh_as_of;
    return out;
  }

  // The LSN the replica's index covers (as of the last catch-up; does not
  // wait for one that is running).
  std::uint64_t last_lsn() const { return s_->applied.load(std::memory_order_acquire); }
  ReplicaStats stats() const {
    detail::ReadScope::refuse(s_.get(), "stats()");
    s_->refuse_if_inherited("stats()");
    ReplicaStats out;
    {
      std::lock_guard lk(s_->poll_mu);
      out = s_->stats;
    }
    std::lock_guard lk(s_->bg_mu);
    detail::ChangeWatch::Counts c = s_->watched;
    if (s_->watch) State::add(c, s_->watch->counts());
    out.notifications = c.wakeups;
    out.watches = c.registrations;
    out.watch_breaks = c.breaks;
    return out;
  }

  // Run f(const I&) under the read lock; returns what f returns. Inside f,
  // calls back into this replica that could wait for f's own lock throw
  // InvalidArgument (catch_up, start_following, stop_following, lag, stats,
  // promote); a nested read runs its f at once.
  template <class F>
  decltype(auto) read(F&& f) const {
    if (detail::ReadScope::active(s_.get())) return std::forward<F>(f)(std::as_const(*s_->index));
    std::shared_lock lk(s_->mu);
    const detail::ReadScope scope(s_.get());
    return std::forward<F>(f)(std::as_const(*s_->index));
  }
  // Unsynchronised (no catch-up may run meanwhile).
  const I& index() const noexcept { return *s_->index; }
  const PersistConfig& config() const noexcept { return s_->config; }
  // False once promote() consumed the replica (also a promote() that failed
  // after taking the lock) or it was moved from: no other call is valid then.
  bool valid() const noexcept { return s_ != nullptr; }

  // Failover: become the writer. Takes the writer lock as load() with the
  // WAL does (with the config's lock options: on RADOS, waiting for a dead
  // writer's lease and fencing it), catches up on every record the log
  // holds, and returns the writable index (config.wal_enabled set). The
  // replica's state is reused when it is as new as the snapshot and the log
  // it followed still holds every frame it applied (re-read from the log's
  // start to check); else the snapshot and its log are loaded (a snapshot
  // the replica has not seen, a log cut back after a failed fsync under it).
  // The replica is consumed; if the lock cannot be taken (Locked: the
  // writer is alive), it stays a replica (not following: start_following
  // again), and after a later failure it is gone (open it anew).
  PersistedIndex<I> promote() && {
    detail::ReadScope::refuse(s_.get(), "promote()");
    s_->refuse_if_inherited("promote()");
    s_->stop();
    std::unique_ptr<State> s = std::move(s_);
    std::lock_guard lk(s->poll_mu);
    PersistConfig cfg = s->config;
    cfg.wal_enabled = true;
    const std::uint64_t covered = s->follower->last_lsn();
    std::optional<I>& loaded = s->index;
    bool touched = false;  // the lock is held and the state is being changed
    const auto load_snapshot = [&]() -> FileHeader {
      touched = true;
      FileSystem& fs = detail::fs_of(cfg);
      const FileHeader current = inspect_snapshot(fs, cfg.path).header;
      // Loaded anew unless the replica is as new as the snapshot and every
      // frame it applied is still in the log as it read it (under the lock,
      // nothing changes the log now): frames of a failed fsync, cut back
      // after it read them, are not in its state then. A snapshot saved
      // without the WAL may hold another state at the same LSN
      // (docs/FORMAT.md, "Saves without the WAL"): loaded anew too.
      const bool saved_without_wal = (current.optional_flags & format::OPTIONAL_FLAG_SAVED_WITHOUT_WAL) != 0;
      if (current.last_lsn > covered || saved_without_wal || !s->follower->intact()) {
        return detail::Loader<I>{cfg, loaded}.load_snapshot()();
      }
      // The replica's own state stands for the snapshot: it covers `covered`.
      FileHeader h = current;
      h.last_lsn = covered;
      h.n_vectors = loaded->size();
      return h;
    };
    try {
      return PersistedIndex<I>::open_log(cfg, loaded, load_snapshot);
    } catch (...) {
      if (!touched) s_ = std::move(s);
      throw;
    }
  }

 private:
  struct State {
    explicit State(PersistConfig c) : config(std::move(c)) {}
    State(const State&) = delete;
    State& operator=(const State&) = delete;
    ~State() { stop(); }

    // A replica inherited from the parent of this process (fork()) keeps
    // serving reads of its index; its follower is its parent's.
    void refuse_if_inherited(std::string_view what) const { born.refuse_if_inherited(config.path, what); }

    // Load (first, or anew) into a fresh index, then take it.
    void load() {
      std::optional<I> fresh;
      const detail::Loader<I> l{config, fresh};
      const auto t = std::chrono::steady_clock::now();
      auto f = detail::LogFollower::open(config, l.load_snapshot(), l.replay(), l.reserve());
      std::unique_lock lk(mu);
      index = std::move(fresh);
      follower = std::move(f);
      fresh_as_of = t;
      applied.store(follower->last_lsn(), std::memory_order_release);
    }

    std::uint64_t catch_up() {
      std::lock_guard lk(poll_mu);
      const auto t = std::chrono::steady_clock::now();
      const std::uint64_t before = follower->last_lsn();
      // A frame's records are applied under one hold of the write lock, so
      // that readers see a batch whole.
      std::unique_lock<detail::RwLock> frame(mu, std::defer_lock);
      // (Locked on the first record applied, not on a frame's first record:
      // a poll after one that failed mid-frame resumes inside the frame.)
      const auto apply = [&](const wal::RecordView& r) {
        if (!frame.owns_lock()) frame.lock();
        detail::Loader<I>::apply_record(*index, r);
        if (r.index_in_frame + 1 == r.frame_records) frame.unlock();
      };
      detail::LogFollower::Poll p;
      {
        // last_lsn() learns what was applied however the poll ends (also
        // when it throws after applying some frames), before a load anew.
        struct Publish {
          State& s;
          ~Publish() { s.applied.store(s.follower->last_lsn(), std::memory_order_release); }
        } const publish{*this};
        p = follower->poll(apply);
        if (frame.owns_lock()) frame.unlock();
      }
      if (p.reload) {
        load();
        ++stats.reloads;
      }
      fresh_as_of = t;
      const std::uint64_t after = follower->last_lsn();
      const std::uint64_t moved = after > before ? after - before : 0;
      stats.records_applied += moved;
      ++stats.catch_ups;
      return moved;
    }

    void start(const FollowOptions& o) {
      const std::lock_guard run_lk(run_mu);
      std::lock_guard lk(bg_mu);
      if (thread.joinable()) return;
      stopping = false;
      try {
        thread = std::thread([this, o] { follow(o); });
      } catch (const std::system_error& e) {
        throw detail::thread_error(config.path, "the replica's background follower thread", e);
      }
    }

    void stop() {
      const std::lock_guard run_lk(run_mu);
      {
        std::lock_guard lk(bg_mu);
        stopping = true;
      }
      bg_cv.notify_all();
      if (thread.joinable()) thread.join();
    }

    // Called by the storage's watch (another thread): catch up now.
    void wake() {
      {
        std::lock_guard lk(bg_mu);
        woken = true;
      }
      bg_cv.notify_all();
    }

    void follow(const FollowOptions& o) {
      std::unique_ptr<detail::ChangeWatch> w;
      if (o.watch) {
        try {
          std::lock_guard lk(poll_mu);
          w = follower->watch_changes([this] { wake(); });
        } catch (...) {
          // No watch: polling only.
        }
      }
      using std::chrono::milliseconds;
      // Waits of more than a day are a day's (a deadline of now + years
      // would overflow the clock and never wait).
      constexpr milliseconds day(std::chrono::hours(24));
      const milliseconds interval = o.interval > milliseconds(0) ? std::min(o.interval, day)
                                    : w                           ? milliseconds(10000)
                                                                  : milliseconds(20);
      const milliseconds min_gap = std::min(o.min_gap, day);
      const milliseconds retry = std::clamp(o.watch_retry, milliseconds(1), interval);
      std::unique_lock lk(bg_mu);
      watch = w.get();
      while (!stopping) {
        // Cleared before the watch is checked and the catch-up reads: a
        // notification from then on brings another round at once.
        woken = false;
        const auto began = std::chrono::steady_clock::now();
        lk.unlock();
        bool stands = false;
        // (Whatever they throw: the index type and the FileSystem may be
        // the program's, and an exception leaving this thread would end
        // the process.)
        try {
          stands = w && w->ensure();
        } catch (...) {
        }
        std::optional<std::string> error;
        try {
          catch_up();
        } catch (...) {
          error = detail::exception_text(std::current_exception());
        }
        lk.lock();
        watching = stands;
        failure = std::move(error);
        bg_cv.wait_for(lk, w && !stands ? retry : interval, [this] { return stopping || woken; });
        if (woken && min_gap > milliseconds(0)) bg_cv.wait_until(lk, began + min_gap, [this] { return stopping; });
      }
      // Its counts are kept; it is destroyed without bg_mu (its destructor
      // waits for callbacks, which take bg_mu).
      if (w) add(watched, w->counts());
      watch = nullptr;
      watching = false;
      lk.unlock();
      w.reset();
    }

    static void add(detail::ChangeWatch::Counts& to, const detail::ChangeWatch::Counts& c) {
      to.wakeups += c.wakeups;
      to.registrations += c.registrations;
      to.breaks += c.breaks;
    }

    detail::ProcessBound born;
    PersistConfig config;
    mutable detail::RwLock mu;  // guards index against read() during catch-ups
    std::optional<I> index;
    mutable std::mutex poll_mu;  // one catch-up (or lag probe) at a time; guards what follows
    std::unique_ptr<detail::LogFollower> follower;
    std::atomic<std::uint64_t> applied{0};  // follower->last_lsn() as of the last catch-up (last_lsn())
    std::chrono::steady_clock::time_point fresh_as_of;
    ReplicaStats stats;
    mutable std::mutex bg_mu;  // the background follower
    std::condition_variable bg_cv;
    // Held by start() and stop() around `thread`: two stops at once would
    // both join it (the second never returns), a start beside a stop would
    // test it while it is joined. (Not bg_mu: the thread takes it.)
    std::mutex run_mu;
    std::thread thread;
    bool stopping = false;
    bool woken = false;                   // a notification came since the last round began
    bool watching = false;                // the last round found the watch standing
    detail::ChangeWatch* watch = nullptr;  // the follower thread's, while it runs
    detail::ChangeWatch::Counts watched;   // of the watches of earlier runs
    std::optional<std::string> failure;
  };

  explicit ReadReplica(std::unique_ptr<State> s) : s_(std::move(s)) {}

  void abandon_if_inherited() noexcept {
    if (s_ && s_->born.inherited()) (void)s_.release();
  }

  std::unique_ptr<State> s_;
};

}  // namespace iqdb::persist
