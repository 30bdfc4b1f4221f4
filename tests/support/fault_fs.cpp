#include "support/fault_fs.hpp"

#include <algorithm>

#include "iqdb/persist/error.hpp"

namespace iqdb::persist::test {

std::string_view to_string(OpKind kind) noexcept {
  switch (kind) {
    case OpKind::Create:
      return "create";
    case OpKind::OpenAppend:
      return "open_append";
    case OpKind::OpenRead:
      return "open_read";
    case OpKind::Append:
      return "append";
    case OpKind::WriteAt:
      return "write_at";
    case OpKind::Sync:
      return "sync";
    case OpKind::DataSync:
      return "datasync";
    case OpKind::Truncate:
      return "truncate";
    case OpKind::StartWriteback:
      return "start_writeback";
    case OpKind::Close:
      return "close";
    case OpKind::Rename:
      return "rename";
    case OpKind::Remove:
      return "remove";
    case OpKind::SyncDir:
      return "sync_dir";
    case OpKind::Lock:
      return "lock";
  }
  return "unknown";
}

bool OpMatch::matches(const FsOp& op) const {
  if (kind && *kind != op.kind) return false;
  if (path_contains.empty()) return true;
  return op.path.string().find(path_contains) != std::string::npos ||
         (op.kind == OpKind::Rename && op.path2.string().find(path_contains) != std::string::npos);
}

// ---------------------------------------------------------------- files

// Records the calls on a file and applies the verdicts; tracks the append
// position so that Append records carry the offset they write at.
class FaultFs::File final : public WritableFileWrapper {
 public:
  File(FaultFs& fs, std::unique_ptr<WritableFile> target, std::uint64_t pos)
      : WritableFileWrapper(std::move(target)), fs_(fs), pos_(pos) {}

  void append(std::span<const std::byte> d) override {
    const Verdict v = fs_.record_or_throw(op(OpKind::Append, pos_, d.size()), "append");
    if (v.fail) {
      const auto part = d.first(*v.keep);
      target().append(part);
      pos_ += part.size();
      fs_.run_hook(op(OpKind::Append, pos_ - part.size(), d.size()));
      throw PersistError::io(path(), "append (injected short write)", v.err);
    }
    target().append(d);
    pos_ += d.size();
  }

  void write_at(std::uint64_t o, std::span<const std::byte> d) override {
    const Verdict v = fs_.record_or_throw(op(OpKind::WriteAt, o, d.size()), "write_at");
    const auto part = v.fail ? d.first(*v.keep) : d;
    target().write_at(o, part);
    pos_ = std::max(pos_, o + part.size());
    if (v.fail) {
      fs_.run_hook(op(OpKind::WriteAt, o, d.size()));
      throw PersistError::io(path(), "write_at (injected short write)", v.err);
    }
  }

  void sync() override {
    fs_.record_or_throw(op(OpKind::Sync, 0, 0), "sync");
    target().sync();
  }
  void datasync() override {
    fs_.record_or_throw(op(OpKind::DataSync, 0, 0), "datasync");
    target().datasync();
  }
  void truncate(std::uint64_t s) override {
    fs_.record_or_throw(op(OpKind::Truncate, s, 0), "truncate");
    target().truncate(s);
    pos_ = std::min(pos_, s);
  }
  void start_writeback(std::uint64_t o, std::uint64_t l) override {
    fs_.record_or_throw(op(OpKind::StartWriteback, o, l), "start_writeback");
    target().start_writeback(o, l);
  }
  void close() override {
    const Verdict v = fs_.record(op(OpKind::Close, 0, 0));
    target().close();
    if (v.fail) throw PersistError::io(path(), "close (injected)", v.err);
  }

 private:
  FsOp op(OpKind kind, std::uint64_t offset, std::uint64_t length) const {
    FsOp o;
    o.kind = kind;
    o.path = path();
    o.offset = offset;
    o.length = length;
    return o;
  }

  FaultFs& fs_;
  std::uint64_t pos_;
};

// ---------------------------------------------------------------- FaultFs

void FaultFs::arm(Fault fault) {
  std::lock_guard<std::mutex> g(mu_);
  armed_.push_back(Armed{std::move(fault), 0});
}

void FaultFs::limit_size(std::string path_contains, std::uint64_t bytes, int err) {
  std::lock_guard<std::mutex> g(mu_);
  limit_ = Limit{std::move(path_contains), bytes, err};
}

void FaultFs::disarm() {
  std::lock_guard<std::mutex> g(mu_);
  armed_.clear();
  limit_.reset();
}

std::size_t FaultFs::fired() const {
  std::lock_guard<std::mutex> g(mu_);
  return fired_;
}

std::vector<FsOp> FaultFs::log() const {
  std::lock_guard<std::mutex> g(mu_);
  return log_;
}

std::size_t FaultFs::count(OpKind kind) const {
  std::lock_guard<std::mutex> g(mu_);
  return static_cast<std::size_t>(
      std::count_if(log_.begin(), log_.end(), [kind](const FsOp& op) { return op.kind == kind; }));
}

void FaultFs::clear() {
  std::lock_guard<std::mutex> g(mu_);
  log_.clear();
  fired_ = 0;
}

void FaultFs::on_injected(std::function<void(const FsOp&)> hook) {
  std::lock_guard<std::mutex> g(mu_);
  hook_ = std::move(hook);
}

FaultFs::Verdict FaultFs::record(FsOp op) {
  std::lock_guard<std::mutex> g(mu_);
  Verdict v;
  // Every armed fault counts the op, even when an earlier one already fails it.
  for (Armed& a : armed_) {
    if (!a.fault.match.matches(op)) continue;
    ++a.seen;
    const bool hit = a.seen == a.fault.nth || (a.fault.sticky && a.seen > a.fault.nth);
    if (hit && !v.fail) {
      v.fail = true;
      v.err = a.fault.err;
      if (a.fault.short_write && (op.kind == OpKind::Append || op.kind == OpKind::WriteAt)) {
        const auto len = static_cast<std::size_t>(op.length);
        v.keep = std::min(a.fault.short_keep.value_or(len / 2), len);
      }
    }
  }
  if (!v.fail && limit_ && (op.kind == OpKind::Append || op.kind == OpKind::WriteAt) &&
      op.path.string().find(limit_->path_contains) != std::string::npos && op.offset + op.length > limit_->bytes) {
    v.fail = true;
    v.err = limit_->err;
    v.keep = static_cast<std::size_t>(op.offset < limit_->bytes ? limit_->bytes - op.offset : 0);
  }
  if (v.fail) ++fired_;
  op.injected = v.fail;
  log_.push_back(std::move(op));
  return v;
}

FaultFs::Verdict FaultFs::record_or_throw(FsOp op, std::string_view what) {
  const FsOp seen = op;
  const Verdict v = record(std::move(op));
  if (v.fail && !v.keep) {
    run_hook(seen);
    throw PersistError::io(seen.path, std::string(what) + " (injected)", v.err);
  }
  return v;
}

void FaultFs::run_hook(const FsOp& op) {
  std::function<void(const FsOp&)> hook;
  {
    std::lock_guard<std::mutex> g(mu_);
    hook = hook_;
  }
  if (hook) hook(op);
}

namespace {
FsOp path_op(OpKind kind, const std::filesystem::path& p) {
  FsOp o;
  o.kind = kind;
  o.path = p;
  return o;
}
}  // namespace

std::unique_ptr<WritableFile> FaultFs::create_exclusive(const std::filesystem::path& p) {
  record_or_throw(path_op(OpKind::Create, p), "create");
  return std::make_unique<File>(*this, target().create_exclusive(p), 0);
}

std::unique_ptr<WritableFile> FaultFs::open_append(const std::filesystem::path& p) {
  record_or_throw(path_op(OpKind::OpenAppend, p), "open_append");
  auto file = target().open_append(p);
  // The append position starts at the file's end; ask the target for its size
  // (the WritableFile interface does not expose it).
  std::uint64_t size = 0;
  try {
    size = target().open_read(p)->size();
  } catch (const PersistError&) {
    // Unreadable (e.g. write-only permissions): offsets start at 0.
  }
  return std::make_unique<File>(*this, std::move(file), size);
}

std::unique_ptr<ReadableFile> FaultFs::open_read(const std::filesystem::path& p) {
  record_or_throw(path_op(OpKind::OpenRead, p), "open_read");
  return target().open_read(p);
}

void FaultFs::rename(const std::filesystem::path& from, const std::filesystem::path& to) {
  FsOp o = path_op(OpKind::Rename, from);
  o.path2 = to;
  record_or_throw(std::move(o), "rename");
  target().rename(from, to);
}

void FaultFs::remove(const std::filesystem::path& p) {
  record_or_throw(path_op(OpKind::Remove, p), "remove");
  target().remove(p);
}

void FaultFs::sync_dir(const std::filesystem::path& d) {
  record_or_throw(path_op(OpKind::SyncDir, d), "sync_dir");
  target().sync_dir(d);
}

std::unique_ptr<FileLock> FaultFs::lock(const std::filesystem::path& p) {
  record_or_throw(path_op(OpKind::Lock, p), "lock");
  return target().lock(p);
}

}  // namespace iqdb::persist::test
