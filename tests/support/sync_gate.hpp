// SyncGateFs: a file system whose files' datasync() can be held at a gate,
// so that a test decides when a sync ends (for example: a group-commit
// leader's sync is held while other writers queue behind it).
//
//   test::SyncGateFs gate(default_file_system());
//   cfg.file_system = &gate;
//   gate.close();                          // syncs from now on wait
//   std::thread t([&] { db.insert(...); });
//   ASSERT_TRUE(gate.wait_for_a_waiter()); // a sync is held
//   ...
//   gate.open();                           // it, and every later one, goes on
//
// close(SyncGateFs::Hold::Next) holds the next sync only: later ones pass
// while it waits. The sync is held before the target's datasync() by
// default, after it (the data already durable) with When::AfterSync.
// Files opened with create_exclusive() and open_append() are gated.
//
// Open the gate on every exit path of a test (an ASSERT's included) before
// joining the threads that sync through it: a sync held at a closed gate
// never returns.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>

#include "iqdb/persist/file_system.hpp"

namespace iqdb::persist::test {

class SyncGateFs : public FileSystemWrapper {
 public:
  enum class When { BeforeSync, AfterSync };
  enum class Hold { Every, Next };

  explicit SyncGateFs(FileSystem& target, When when = When::BeforeSync) : FileSystemWrapper(target), when_(when) {}

  std::unique_ptr<WritableFile> create_exclusive(const std::filesystem::path& p) override {
    return std::make_unique<File>(target().create_exclusive(p), *this);
  }
  std::unique_ptr<WritableFile> open_append(const std::filesystem::path& p) override {
    return std::make_unique<File>(target().open_append(p), *this);
  }

  // Syncs from now on wait at the gate (Hold::Next: only the next one).
  void close(Hold hold = Hold::Every) {
    std::lock_guard lk(mu_);
    closed_ = true;
    only_next_ = hold == Hold::Next;
  }
  // Lets every held sync and every later one through.
  void open() {
    {
      std::lock_guard lk(mu_);
      closed_ = false;
      ++opened_;
    }
    cv_.notify_all();
  }
  // Until a sync waits at the gate; false after `timeout`.
  bool wait_for_a_waiter(std::chrono::seconds timeout = std::chrono::seconds(60)) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, timeout, [this] { return waiting_ > 0; });
  }

 private:
  class File : public WritableFileWrapper {
   public:
    File(std::unique_ptr<WritableFile> f, SyncGateFs& gate) : WritableFileWrapper(std::move(f)), gate_(gate) {}
    void datasync() override {
      if (gate_.when_ == When::BeforeSync) gate_.pass();
      target().datasync();
      if (gate_.when_ == When::AfterSync) gate_.pass();
    }

   private:
    SyncGateFs& gate_;
  };

  // Waits while the gate is closed (until the next open()).
  void pass() {
    std::unique_lock lk(mu_);
    if (!closed_) return;
    if (only_next_) closed_ = false;
    const std::uint64_t seen = opened_;
    ++waiting_;
    cv_.notify_all();
    cv_.wait(lk, [&] { return opened_ != seen; });
    --waiting_;
  }

  const When when_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool closed_ = false;
  bool only_next_ = false;
  std::uint64_t opened_ = 0;  // open() calls: a held sync waits for the next
  int waiting_ = 0;
};

}  // namespace iqdb::persist::test
