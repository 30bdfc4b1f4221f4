// Helpers shared by the RADOS tests (label `rados`): where the cluster is
// (CEPH_CONF, IQDB_RADOS_POOL, set by scripts/ceph-cluster.sh run), child
// processes of the test binary standing in for other machines, the OSDs of
// the script's cluster, and raw librados access to damage objects.
#pragma once

#include <poll.h>
#include <rados/librados.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <cstring>
#include <initializer_list>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "iqdb/persist/error.hpp"
#include "iqdb/persist/flat_index.hpp"

extern char** environ;

namespace iqdb::persist::rados_test {

namespace fs = std::filesystem;

// What a test expects an index to hold: id -> vector.
using Model = std::map<std::uint64_t, std::vector<float>>;

// Whether `index` holds exactly the model's ids, each with its vector.
inline ::testing::AssertionResult equals(const FlatIndex& index, const Model& m) {
  if (index.size() != m.size()) {
    return ::testing::AssertionFailure() << "size " << index.size() << ", model " << m.size();
  }
  for (const auto& [id, v] : m) {
    const std::span<const float> got = index.get(id);
    if (got.size() != v.size() || std::memcmp(got.data(), v.data(), v.size() * sizeof(float)) != 0) {
      return ::testing::AssertionFailure() << "id " << id << " missing or different";
    }
  }
  return ::testing::AssertionSuccess();
}
using Clock = std::chrono::steady_clock;

template <class F>
std::optional<PersistError> error_of(F&& f) {
  try {
    f();
  } catch (const PersistError& e) {
    return e;
  }
  return std::nullopt;
}

struct ClusterEnv {
  std::string conf;
  std::string pool;
};

inline std::optional<ClusterEnv> cluster_env() {
  const char* conf = std::getenv("CEPH_CONF");
  const char* pool = std::getenv("IQDB_RADOS_POOL");
  if (conf == nullptr || pool == nullptr || *conf == '\0' || *pool == '\0') return std::nullopt;
  return ClusterEnv{conf, pool};
}

inline std::string unique_name(const std::string& what) {
  std::random_device rd;
  return "t-" + what + "-" + std::to_string(rd() % 1000000000u);
}

inline double secs(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Waits until `done()` or `limit`; how long it took, or nullopt.
template <class F>
std::optional<double> within(std::chrono::milliseconds limit, F done) {
  const auto t0 = Clock::now();
  while (!done()) {
    if (Clock::now() - t0 > limit) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return secs(Clock::now() - t0);
}

// The OSDs of a scripts/ceph-cluster.sh cluster (its pid files beside CEPH_CONF).
inline std::vector<pid_t> osd_pids(const ClusterEnv& env) {
  std::vector<pid_t> osds;
  const fs::path pids = fs::path(env.conf).parent_path() / "pids";
  if (!fs::is_directory(pids)) return osds;
  for (const auto& e : fs::directory_iterator(pids)) {
    if (e.path().filename().string().rfind("osd.", 0) != 0) continue;
    std::ifstream in(e.path());
    long pid = 0;
    if (in >> pid && pid > 0) osds.push_back(static_cast<pid_t>(pid));
  }
  return osds;
}

// `load()` once it stops failing after paused OSDs were resumed: a
// PersistError of one of the `retry` kinds (Io while the OSDs come back;
// Locked while a closed writer's lease runs out) is retried every second
// for up to two minutes, then rethrown, as is any other error. Prints how
// long it took, as `what`.
template <class Load>
auto when_back(Load load, std::initializer_list<ErrorKind> retry, const char* what) -> decltype(load()) {
  const auto resumed = Clock::now();
  for (;;) {
    try {
      auto r = load();
      std::cout << "[ MEASURED ] " << what << " after the OSDs resumed: "
                << std::chrono::duration<double>(Clock::now() - resumed).count() << " s\n";
      return r;
    } catch (const PersistError& e) {
      if (std::find(retry.begin(), retry.end(), e.kind()) == retry.end()) throw;
      if (Clock::now() - resumed > std::chrono::seconds(120)) throw;
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  }
}

// SIGCONT to each of `pids` when destroyed: a test that paused OSDs (or a
// child) resumes them on every way out.
struct ResumeOnExit {
  std::vector<pid_t> pids;
  ~ResumeOnExit() {
    for (const pid_t p : pids) ::kill(p, SIGCONT);
  }
};

// This test binary run as another process with `args`, driven by lines on
// its stdin; it answers lines on its stdout. SIGKILLed when destroyed.
class ChildProcess {
 public:
  explicit ChildProcess(std::vector<std::string> args) {
    int in[2], out[2];
    if (::pipe(in) != 0 || ::pipe(out) != 0) throw std::runtime_error("pipe");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_addclose(&fa, in[1]);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    const std::string exe = fs::read_symlink("/proc/self/exe").string();
    args.insert(args.begin(), exe);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int r = ::posix_spawn(&pid_, exe.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(in[0]);
    ::close(out[1]);
    to_ = in[1];
    from_ = out[0];
    if (r != 0) throw std::runtime_error("posix_spawn failed");
  }
  ~ChildProcess() {
    kill();
    ::close(to_);
    ::close(from_);
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  bool send(const std::string& line) {
    const std::string l = line + "\n";
    return ::write(to_, l.data(), l.size()) == static_cast<ssize_t>(l.size());
  }
  // The next line, or "" after `timeout` or at the end of its output.
  std::string read_line(std::chrono::milliseconds timeout = std::chrono::seconds(120)) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      const auto nl = buf_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return "";
      pollfd p{from_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      char c[4096];
      const ssize_t n = ::read(from_, c, sizeof c);
      if (n <= 0) return "";
      buf_.append(c, static_cast<std::size_t>(n));
    }
  }
  pid_t pid() const { return pid_; }
  // SIGKILL (resumed first if paused) and reap.
  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGCONT);
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = 0;
  }

 private:
  pid_t pid_ = 0;
  int to_ = -1, from_ = -1;
  std::string buf_;
};

// Raw librados access (the C API) to read, damage or remove objects as a
// hostile or buggy peer could.
class RawPool {
 public:
  explicit RawPool(const ClusterEnv& env) {
    if (rados_create2(&cluster_, "ceph", "client.admin", 0) != 0 ||
        rados_conf_read_file(cluster_, env.conf.c_str()) != 0 || rados_connect(cluster_) != 0 ||
        rados_ioctx_create(cluster_, env.pool.c_str(), &io_) != 0) {
      throw std::runtime_error("cannot connect with librados");
    }
  }
  ~RawPool() {
    if (io_ != nullptr) rados_ioctx_destroy(io_);
    rados_shutdown(cluster_);
  }
  RawPool(const RawPool&) = delete;
  RawPool& operator=(const RawPool&) = delete;

  bool exists(const std::string& oid) {
    std::uint64_t size = 0;
    std::time_t mtime = 0;
    return rados_stat(io_, oid.c_str(), &size, &mtime) == 0;
  }
  std::vector<char> read(const std::string& oid) {
    std::uint64_t size = 0;
    std::time_t mtime = 0;
    if (rados_stat(io_, oid.c_str(), &size, &mtime) != 0) return {};
    std::vector<char> b(static_cast<std::size_t>(size));
    const int r = rados_read(io_, oid.c_str(), b.data(), b.size(), 0);
    b.resize(r < 0 ? 0 : static_cast<std::size_t>(r));
    return b;
  }
  // Changes the data only (the attributes stay).
  int write_at(const std::string& oid, const std::vector<char>& bytes, std::uint64_t offset) {
    return rados_write(io_, oid.c_str(), bytes.data(), bytes.size(), offset);
  }
  // Replaces the data (the attributes stay).
  int write_full(const std::string& oid, std::span<const std::byte> bytes) {
    return rados_write_full(io_, oid.c_str(), reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  int append(const std::string& oid, std::string_view bytes) {
    return rados_append(io_, oid.c_str(), bytes.data(), bytes.size());
  }
  int set_xattr(const std::string& oid, const char* name, std::string_view value) {
    return rados_setxattr(io_, oid.c_str(), name, value.data(), value.size());
  }
  int truncate(const std::string& oid, std::uint64_t size) { return rados_trunc(io_, oid.c_str(), size); }
  int remove(const std::string& oid) { return rados_remove(io_, oid.c_str()); }
  // The names of every object in the pool's default namespace.
  std::vector<std::string> list() {
    rados_list_ctx_t ctx = nullptr;
    if (rados_nobjects_list_open(io_, &ctx) != 0) throw std::runtime_error("cannot list the pool");
    std::vector<std::string> out;
    const char* entry = nullptr;
    while (rados_nobjects_list_next(ctx, &entry, nullptr, nullptr) == 0) out.emplace_back(entry);
    rados_nobjects_list_close(ctx);
    return out;
  }
  rados_ioctx_t io() const { return io_; }

 private:
  rados_t cluster_ = nullptr;
  rados_ioctx_t io_ = nullptr;
};

}  // namespace iqdb::persist::rados_test
