// The crash simulator's file system, disk model and state builder. The model
// it implements is specified in docs/reliability/crash-simulation.md.
#include "support/crash_sim.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "iqdb/persist/error.hpp"

namespace iqdb::persist::test::crash {

namespace fs = std::filesystem;

namespace {

std::uint64_t mix(std::uint64_t h, std::uint64_t v) noexcept {
  // boost::hash_combine, widened.
  return h ^ (v + 0x9e3779b97f4a7c15ULL + (h << 12) + (h >> 4));
}

std::uint64_t splitmix64(std::uint64_t& state) noexcept {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::string file_name(const fs::path& p) { return p.filename().string(); }

}  // namespace

// ---------------------------------------------------------------- Content

std::vector<std::byte>& Content::mutable_data() {
  hash_.reset();
  if (!data_) {
    data_ = std::make_shared<std::vector<std::byte>>();
  } else if (data_.use_count() > 1) {
    data_ = std::make_shared<std::vector<std::byte>>(*data_);
  }
  return *data_;
}

void Content::write(std::uint64_t offset, std::span<const std::byte> data) {
  if (data.empty()) return;  // pwrite of nothing does not grow the file
  const std::uint64_t end = offset + data.size();
  const std::size_t stored = data_ ? data_->size() : 0;
  // Zeros that land at or past the stored end are implied by size_.
  std::size_t n = data.size();
  while (n > 0 && data[n - 1] == std::byte{0} && offset + n > stored) --n;
  if (n > 0) {
    std::vector<std::byte>& d = mutable_data();
    const auto off = static_cast<std::size_t>(offset);
    if (off + n > d.size()) d.resize(off + n);
    std::memcpy(d.data() + off, data.data(), n);
    while (!d.empty() && d.back() == std::byte{0}) d.pop_back();
  }
  hash_.reset();
  if (end > size_) size_ = end;
}

void Content::truncate(std::uint64_t size) {
  if (data_ && data_->size() > size) {
    std::vector<std::byte>& d = mutable_data();
    d.resize(static_cast<std::size_t>(size));
    while (!d.empty() && d.back() == std::byte{0}) d.pop_back();
  }
  hash_.reset();
  size_ = size;
}

std::size_t Content::read(std::uint64_t offset, std::span<std::byte> dst) const {
  if (offset >= size_) return 0;
  const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(dst.size(), size_ - offset));
  const std::size_t stored = data_ ? data_->size() : 0;
  std::size_t copied = 0;
  if (offset < stored) {
    copied = std::min(n, stored - static_cast<std::size_t>(offset));
    std::memcpy(dst.data(), data_->data() + offset, copied);
  }
  std::fill(dst.begin() + static_cast<std::ptrdiff_t>(copied), dst.begin() + static_cast<std::ptrdiff_t>(n),
            std::byte{0});
  return n;
}

std::vector<std::byte> Content::bytes() const {
  std::vector<std::byte> out(static_cast<std::size_t>(size_));
  if (data_) std::copy(data_->begin(), data_->end(), out.begin());
  return out;
}

std::uint64_t Content::hash() const {
  if (!hash_) {
    std::uint64_t h = std::hash<std::uint64_t>{}(size_);
    if (data_ && !data_->empty()) {
      const std::string_view v(reinterpret_cast<const char*>(data_->data()), data_->size());
      h = mix(h, std::hash<std::string_view>{}(v));
    }
    hash_ = h;
  }
  return *hash_;
}

bool operator==(const Content& a, const Content& b) {
  if (a.size_ != b.size_) return false;
  if (a.data_ == b.data_) return true;
  const std::size_t na = a.data_ ? a.data_->size() : 0;
  const std::size_t nb = b.data_ ? b.data_->size() : 0;
  if (na != nb) return false;
  return na == 0 || std::memcmp(a.data_->data(), b.data_->data(), na) == 0;
}

std::uint64_t image_hash(const Image& image) {
  std::uint64_t h = image.size();
  for (const auto& [path, content] : image) {
    h = mix(h, std::hash<std::string>{}(path.native()));
    h = mix(h, content.hash());
  }
  return h;
}

std::string describe(const Image& image) {
  if (image.empty()) return "(no files)";
  std::string out;
  for (const auto& [path, content] : image) {
    if (!out.empty()) out += ", ";
    out += file_name(path) + " (" + std::to_string(content.size()) + " bytes)";
  }
  return out;
}

// ---------------------------------------------------------------- Op

std::string_view to_string(OpKind kind) noexcept {
  switch (kind) {
    case OpKind::Create: return "create";
    case OpKind::OpenAppend: return "open_append";
    case OpKind::OpenRead: return "open_read";
    case OpKind::Write: return "write";
    case OpKind::Sync: return "fsync";
    case OpKind::DataSync: return "fdatasync";
    case OpKind::Truncate: return "truncate";
    case OpKind::StartWriteback: return "start_writeback";
    case OpKind::Close: return "close";
    case OpKind::Rename: return "rename";
    case OpKind::Remove: return "remove";
    case OpKind::SyncDir: return "fsync_dir";
    case OpKind::Lock: return "lock";
    case OpKind::Exists: return "exists";
    case OpKind::ListDir: return "list_dir";
  }
  return "?";
}

bool Op::changes_disk() const noexcept {
  switch (kind) {
    case OpKind::Create:
    case OpKind::Write:
    case OpKind::Truncate:
    case OpKind::Sync:
    case OpKind::DataSync:
    case OpKind::Rename:
    case OpKind::SyncDir:
      return true;
    case OpKind::Remove:
      return ino != 0;
    default:
      return false;
  }
}

std::string Op::describe() const {
  std::string s(to_string(kind));
  s += ' ';
  s += kind == OpKind::SyncDir || kind == OpKind::ListDir ? path.string() : file_name(path);
  switch (kind) {
    case OpKind::Rename: s += " -> " + file_name(path2); break;
    case OpKind::Write: s += " @" + std::to_string(offset) + " +" + std::to_string(length()); break;
    case OpKind::Truncate: s += " to " + std::to_string(offset); break;
    default: break;
  }
  return s;
}

// ---------------------------------------------------------------- DiskModel

DiskModel::DiskModel(std::set<fs::path> dirs) : dir_names_(std::move(dirs)) {
  for (const fs::path& d : dir_names_) dirs_[d];
}

DiskModel::DiskModel(std::set<fs::path> dirs, const Image& image) : DiskModel(std::move(dirs)) {
  for (const auto& [path, content] : image) {
    Dir& d = dir_of(path);
    const std::uint64_t ino = next_ino_++;
    d.live[file_name(path)] = ino;
    d.durable[file_name(path)] = ino;
    inodes_[ino] = Inode{content, content, {}};
  }
}

DiskModel::Dir& DiskModel::dir_of(const fs::path& p) {
  const auto it = dirs_.find(p.parent_path());
  if (it == dirs_.end()) throw std::invalid_argument("crash sim: no directory " + p.parent_path().string());
  return it->second;
}

void DiskModel::apply(const Op& op) {
  const std::size_t seq = seq_++;
  switch (op.kind) {
    case OpKind::Create: {
      Dir& d = dir_of(op.path);
      d.live[file_name(op.path)] = op.ino;
      inodes_[op.ino];
      next_ino_ = std::max(next_ino_, op.ino + 1);
      d.pending.push_back({seq, op});
      break;
    }
    case OpKind::Write: {
      Inode& i = inodes_.at(op.ino);
      i.live.write(op.offset, *op.data);
      i.pending.push_back({seq, op});
      break;
    }
    case OpKind::Truncate: {
      Inode& i = inodes_.at(op.ino);
      i.live.truncate(op.offset);
      i.pending.push_back({seq, op});
      break;
    }
    case OpKind::Sync:
    case OpKind::DataSync: {
      Inode& i = inodes_.at(op.ino);
      i.durable = i.live;
      i.pending.clear();
      break;
    }
    case OpKind::Rename: {
      Dir& d = dir_of(op.path);
      d.live.erase(file_name(op.path));
      d.live[file_name(op.path2)] = op.ino;
      d.pending.push_back({seq, op});
      break;
    }
    case OpKind::Remove: {
      if (op.ino == 0) break;
      Dir& d = dir_of(op.path);
      d.live.erase(file_name(op.path));
      d.pending.push_back({seq, op});
      break;
    }
    case OpKind::SyncDir: {
      Dir& d = dirs_.at(op.path);
      d.durable = d.live;
      d.pending.clear();
      break;
    }
    default:
      break;
  }
}

std::optional<std::uint64_t> DiskModel::lookup(const fs::path& path) const {
  const auto d = dirs_.find(path.parent_path());
  if (d == dirs_.end()) return std::nullopt;
  const auto e = d->second.live.find(file_name(path));
  if (e == d->second.live.end()) return std::nullopt;
  return e->second;
}

const Content& DiskModel::content(std::uint64_t ino) const { return inodes_.at(ino).live; }

std::vector<std::string> DiskModel::list(const fs::path& dir) const {
  std::vector<std::string> names;
  for (const auto& [name, ino] : dirs_.at(dir).live) names.push_back(name);
  // Subdirectories are entries too.
  for (const fs::path& d : dir_names_) {
    if (d.parent_path() == dir && d != dir) names.push_back(file_name(d));
  }
  return names;
}

Image DiskModel::live_image() const {
  Image img;
  for (const auto& [dir, d] : dirs_) {
    for (const auto& [name, ino] : d.live) img[dir / name] = inodes_.at(ino).live;
  }
  return img;
}

Image DiskModel::durable_image() const {
  Image img;
  for (const auto& [dir, d] : dirs_) {
    for (const auto& [name, ino] : d.durable) img[dir / name] = inodes_.at(ino).durable;
  }
  return img;
}

std::size_t DiskModel::pending_ops() const {
  std::size_t n = 0;
  for (const auto& [dir, d] : dirs_) n += d.pending.size();
  for (const auto& [ino, i] : inodes_) n += i.pending.size();
  return n;
}

// One pending op, and what a crash state does with it.
struct DiskModel::Unit {
  std::size_t seq;
  const Op* op;
  bool ns;            // a directory op (create / rename / remove)
  std::size_t comp;   // its file or directory
};

struct DiskModel::Choice {
  enum Kind : std::uint8_t {
    Skip,            // lost
    Apply,           // persisted
    Torn,            // a write: its first `keep` bytes persisted
    ZeroExtend,      // a write: the file grew to its end, the data did not land (zeros)
    TornZeroExtend,  // both: the first `keep` bytes, the rest of the growth zeros
  };
  Kind kind = Skip;
  std::uint64_t keep = 0;
};

Image DiskModel::build(const std::vector<Unit>& units, const std::vector<Choice>& choices,
                       std::uint64_t sector) const {
  // Directory entries: the durable ones, then the persisted directory ops in
  // order. An op that is lost blocks every later op on a name it touches
  // (an entry cannot be renamed before it is created).
  std::map<fs::path, std::uint64_t> names;
  for (const auto& [dir, d] : dirs_) {
    for (const auto& [name, ino] : d.durable) names[dir / name] = ino;
  }
  std::set<fs::path> blocked;
  for (std::size_t i = 0; i < units.size(); ++i) {
    if (!units[i].ns) continue;
    const Op& op = *units[i].op;
    const bool lost = choices[i].kind == Choice::Skip || blocked.count(op.path) != 0 ||
                      (op.kind == OpKind::Rename && blocked.count(op.path2) != 0);
    if (lost) {
      blocked.insert(op.path);
      if (op.kind == OpKind::Rename) blocked.insert(op.path2);
      continue;
    }
    switch (op.kind) {
      case OpKind::Create: names[op.path] = op.ino; break;
      case OpKind::Remove: names.erase(op.path); break;
      case OpKind::Rename:
        names.erase(op.path);
        names[op.path2] = op.ino;
        break;
      default: break;
    }
  }
  // File contents, sector by sector. A sector the pending ops touched holds
  // the file's content as of the last persisted op that touched it (the page
  // cache writes whole sectors back, so a sector never holds a later write's
  // bytes without an earlier write's bytes in it); the other sectors hold
  // the durable content. The size is the one the last persisted op left (a
  // torn append: up to its persisted part; a zero extension: its end).
  std::map<std::uint64_t, Content> contents;
  for (const auto& [path, ino] : names) contents.emplace(ino, inodes_.at(ino).durable);
  std::map<std::uint64_t, std::vector<std::size_t>> by_ino;
  for (std::size_t i = 0; i < units.size(); ++i) {
    if (!units[i].ns) by_ino[units[i].op->ino].push_back(i);
  }
  const auto down = [sector](std::uint64_t x) { return x / sector * sector; };
  const auto up = [sector](std::uint64_t x) { return (x + sector - 1) / sector * sector; };
  std::vector<std::byte> buf;
  for (const auto& [ino, idx] : by_ino) {
    const auto it = contents.find(ino);
    if (it == contents.end()) continue;
    Content& result = it->second;  // starts durable
    Content live = result;         // the file after each pending op in turn
    std::uint64_t size = result.size();
    bool touched = false;
    for (const std::size_t i : idx) {
      const Op& op = *units[i].op;
      const Choice& ch = choices[i];
      std::uint64_t lo = 0;  // the bytes the op changed: [lo, hi)
      std::uint64_t hi = 0;
      if (op.kind == OpKind::Truncate) {
        live.truncate(op.offset);
        lo = std::min(op.old_size, op.offset);
        hi = std::max(op.old_size, op.offset);
      } else {
        live.write(op.offset, *op.data);
        lo = op.offset;
        hi = op.offset + op.length();
      }
      if (ch.kind == Choice::Skip) continue;
      touched = true;
      std::uint64_t landed = hi;  // end of the part whose sectors persisted
      switch (ch.kind) {
        case Choice::Apply: size = live.size(); break;
        case Choice::Torn:
          landed = op.offset + ch.keep;
          size = std::max(size, std::min(live.size(), landed));
          break;
        case Choice::ZeroExtend:
          landed = lo;
          size = std::max(size, hi);
          break;
        case Choice::TornZeroExtend:
          landed = op.offset + ch.keep;
          size = std::max(size, hi);
          break;
        case Choice::Skip: break;
      }
      if (landed > lo) {
        const std::uint64_t from = down(lo);
        buf.assign(static_cast<std::size_t>(up(landed) - from), std::byte{0});
        live.read(from, buf);
        result.write(from, buf);
      }
    }
    if (touched) result.truncate(size);
  }
  Image img;
  for (const auto& [path, ino] : names) img.emplace(path, contents.at(ino));
  return img;
}

std::vector<CrashState> DiskModel::crash_states(const StateOptions& o) const {
  // Inodes a crash state can show: named now, durably, or by a pending op.
  std::set<std::uint64_t> reachable;
  std::vector<std::string> comp_names;
  std::vector<Unit> units;
  for (const auto& [dir, d] : dirs_) {
    for (const auto& [name, ino] : d.live) reachable.insert(ino);
    for (const auto& [name, ino] : d.durable) reachable.insert(ino);
    if (d.pending.empty()) continue;
    const std::size_t comp = comp_names.size();
    comp_names.push_back("directory " + dir.string());
    for (const Pending& p : d.pending) {
      reachable.insert(p.op.ino);
      units.push_back({p.seq, &p.op, true, comp});
    }
  }
  for (const auto& [ino, i] : inodes_) {
    if (i.pending.empty() || reachable.count(ino) == 0) continue;
    const std::size_t comp = comp_names.size();
    comp_names.push_back(file_name(i.pending.front().op.path));
    for (const Pending& p : i.pending) units.push_back({p.seq, &p.op, false, comp});
  }
  std::sort(units.begin(), units.end(), [](const Unit& a, const Unit& b) { return a.seq < b.seq; });
  const std::size_t n = units.size();

  const auto name = [&](std::size_t i) { return "#" + std::to_string(units[i].seq) + " (" + units[i].op->describe() + ")"; };

  // Partial versions of a pending write.
  const auto partials = [&](std::size_t i) {
    std::vector<std::pair<std::string, Choice>> out;
    const Op& op = *units[i].op;
    if (op.kind != OpKind::Write || op.length() == 0) return out;
    const std::uint64_t begin = op.offset;
    const std::uint64_t end = op.offset + op.length();
    const std::uint64_t first = (begin / o.sector + 1) * o.sector;
    const std::uint64_t last = (end - 1) / o.sector * o.sector;
    std::vector<std::uint64_t> cuts;
    if (first < end && o.torn_cuts > 0) {
      const std::uint64_t span_sectors = (last - first) / o.sector;
      cuts.push_back(first);
      if (o.torn_cuts >= 2 && last != first) cuts.push_back(last);
      for (std::size_t k = 1; k + 1 < o.torn_cuts && span_sectors > 1; ++k) {
        const std::uint64_t c = first + span_sectors * k / (o.torn_cuts - 1) * o.sector;
        if (c > first && c < last) cuts.push_back(c);
      }
    }
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    for (const std::uint64_t c : cuts) {
      out.push_back({name(i) + " torn after " + std::to_string(c - begin) + " bytes", {Choice::Torn, c - begin}});
    }
    if (o.zero_extension && end > op.old_size) {
      out.push_back({name(i) + " as zeros (size grew, data lost)", {Choice::ZeroExtend, 0}});
      if (!cuts.empty()) {
        const std::uint64_t c = cuts.front();
        out.push_back({name(i) + " torn after " + std::to_string(c - begin) + " bytes, the rest zeros",
                       {Choice::TornZeroExtend, c - begin}});
      }
    }
    return out;
  };

  std::vector<std::pair<std::string, std::vector<Choice>>> sels;
  const std::vector<Choice> none(n);
  const std::vector<Choice> all(n, Choice{Choice::Apply, 0});
  sels.emplace_back("none of " + std::to_string(n) + " pending ops persisted", none);
  sels.emplace_back("all " + std::to_string(n) + " pending ops persisted", all);

  // Global prefixes (an ordered journal), each with the next write torn.
  for (std::size_t j = 0; j < n; ++j) {
    std::vector<Choice> c = none;
    std::fill(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(j), Choice{Choice::Apply, 0});
    const std::string head = "first " + std::to_string(j) + " of " + std::to_string(n) + " pending ops";
    if (j > 0) sels.emplace_back(head, c);
    for (auto& [how, choice] : partials(j)) {
      std::vector<Choice> t = c;
      t[j] = choice;
      sels.emplace_back(head + ", then " + how, std::move(t));
    }
  }
  // Each op lost alone.
  if (o.single_drops && n > 1) {
    for (std::size_t i = 0; i < n; ++i) {
      std::vector<Choice> c = all;
      c[i] = Choice{};
      sels.emplace_back("all pending ops but " + name(i), std::move(c));
    }
  }
  // Per file / directory, the others all lost or all persisted.
  if (o.per_component && comp_names.size() > 1) {
    for (std::size_t comp = 0; comp < comp_names.size(); ++comp) {
      std::vector<std::size_t> idx;
      for (std::size_t i = 0; i < n; ++i) {
        if (units[i].comp == comp) idx.push_back(i);
      }
      for (const bool others_persisted : {false, true}) {
        const std::vector<Choice>& base = others_persisted ? all : none;
        const std::string others = others_persisted ? "; other files' pending ops persisted"
                                                    : "; other files' pending ops lost";
        for (std::size_t k = 0; k <= idx.size(); ++k) {
          std::vector<Choice> c = base;
          for (std::size_t t = 0; t < idx.size(); ++t) c[idx[t]] = t < k ? Choice{Choice::Apply, 0} : Choice{};
          const std::string head = comp_names[comp] + ": first " + std::to_string(k) + " of " +
                                   std::to_string(idx.size()) + " pending ops";
          sels.emplace_back(head + others, c);
          if (k < idx.size()) {
            for (auto& [how, choice] : partials(idx[k])) {
              std::vector<Choice> t = c;
              t[idx[k]] = choice;
              sels.emplace_back(head + ", then " + how + others, std::move(t));
            }
          }
        }
        if (o.single_drops && idx.size() > 1) {
          for (const std::size_t i : idx) {
            std::vector<Choice> c = base;
            for (const std::size_t t : idx) c[t] = Choice{Choice::Apply, 0};
            c[i] = Choice{};
            sels.emplace_back(comp_names[comp] + ": all pending ops but " + name(i) + others, std::move(c));
          }
        }
      }
    }
  }

  std::vector<CrashState> out;
  std::unordered_map<std::uint64_t, std::vector<std::size_t>> seen;
  for (auto& [how, choices] : sels) {
    Image img = build(units, choices, o.sector);
    std::vector<std::size_t>& same_hash = seen[image_hash(img)];
    if (std::any_of(same_hash.begin(), same_hash.end(), [&](std::size_t k) { return out[k].image == img; })) {
      continue;
    }
    same_hash.push_back(out.size());
    out.push_back({std::move(how), std::move(img)});
  }
  return out;
}

// ---------------------------------------------------------------- SimFs

class SimFs::File final : public WritableFile {
 public:
  File(SimFs& fs, fs::path p, std::uint64_t ino, std::uint64_t pos) : fs_(fs), path_(std::move(p)), ino_(ino), pos_(pos) {}

  void append(std::span<const std::byte> data) override { write_at(pos_, data); }

  void write_at(std::uint64_t offset, std::span<const std::byte> data) override {
    std::lock_guard lk(fs_.mu_);
    fs_.check_alive(path_, "write");
    check_open("write");
    Op op = make(OpKind::Write);
    op.offset = offset;
    op.old_size = fs_.disk_.content(ino_).size();
    op.data = std::make_shared<const std::vector<std::byte>>(data.begin(), data.end());
    fs_.record(std::move(op));
    pos_ = std::max(pos_, offset + data.size());
  }
  void sync() override { simple(OpKind::Sync, "fsync"); }
  void datasync() override { simple(OpKind::DataSync, "fdatasync"); }
  void truncate(std::uint64_t size) override {
    std::lock_guard lk(fs_.mu_);
    fs_.check_alive(path_, "ftruncate");
    check_open("ftruncate");
    Op op = make(OpKind::Truncate);
    op.offset = size;
    op.old_size = fs_.disk_.content(ino_).size();
    fs_.record(std::move(op));
    pos_ = std::min(pos_, size);
  }
  void start_writeback(std::uint64_t, std::uint64_t) override { simple(OpKind::StartWriteback, "sync_file_range"); }
  void close() override {
    std::lock_guard lk(fs_.mu_);
    fs_.check_alive(path_, "close");
    if (closed_) return;  // as PosixWritableFile: a second close does nothing
    closed_ = true;
    fs_.record(make(OpKind::Close));
  }
  const fs::path& path() const noexcept override { return path_; }

 private:
  Op make(OpKind k) const {
    Op op;
    op.kind = k;
    op.path = path_;
    op.ino = ino_;
    return op;
  }
  void check_open(const char* what) const {
    if (closed_) throw PersistError::io(path_, std::string(what) + " after close", EBADF);
  }
  void simple(OpKind k, const char* what) {
    std::lock_guard lk(fs_.mu_);
    fs_.check_alive(path_, what);
    check_open(what);
    fs_.record(make(k));
  }

  SimFs& fs_;
  fs::path path_;
  std::uint64_t ino_;
  std::uint64_t pos_;
  bool closed_ = false;
};

class SimFs::Reader final : public ReadableFile {
 public:
  Reader(const SimFs& fs, fs::path p, std::uint64_t ino, std::uint64_t size)
      : fs_(fs), path_(std::move(p)), ino_(ino), size_(size) {}
  std::size_t read_at(std::uint64_t offset, std::span<std::byte> dst) const override {
    std::lock_guard lk(fs_.mu_);
    if (fs_.crashed_) throw PersistError::io(path_, "read (simulated crash)", EIO);
    return fs_.disk_.content(ino_).read(offset, dst);
  }
  std::uint64_t size() const noexcept override { return size_; }
  const fs::path& path() const noexcept override { return path_; }

 private:
  const SimFs& fs_;
  fs::path path_;
  std::uint64_t ino_;
  std::uint64_t size_;
};

class SimFs::Lock final : public FileLock {
 public:
  Lock(SimFs& fs, std::uint64_t ino) : fs_(fs), ino_(ino) {}
  ~Lock() override {
    std::lock_guard lk(fs_.mu_);
    fs_.locked_.erase(ino_);
  }

 private:
  SimFs& fs_;
  std::uint64_t ino_;
};

SimFs::SimFs(std::set<fs::path> dirs) : SimFs(std::move(dirs), Options{}) {}

SimFs::SimFs(std::set<fs::path> dirs, Options options) : SimFs(std::move(dirs), Image{}, options) {}

SimFs::SimFs(std::set<fs::path> dirs, const Image& image, Options options)
    : dirs_(std::move(dirs)), options_(options), initial_(image), disk_(dirs_, image), rng_(options.seed) {}

SimFs::~SimFs() = default;

std::size_t SimFs::op_count() const {
  std::lock_guard lk(mu_);
  return ops_;
}

std::vector<Op> SimFs::trace() const {
  std::lock_guard lk(mu_);
  return trace_;
}

void SimFs::crash() {
  std::lock_guard lk(mu_);
  crashed_ = true;
}

void SimFs::crash_after(std::size_t n) {
  std::lock_guard lk(mu_);
  crash_at_ = n;
  if (ops_ >= n) crashed_ = true;
}

bool SimFs::crashed() const {
  std::lock_guard lk(mu_);
  return crashed_;
}

Image SimFs::live_image() const {
  std::lock_guard lk(mu_);
  return disk_.live_image();
}

Image SimFs::durable_image() const {
  std::lock_guard lk(mu_);
  return disk_.durable_image();
}

std::vector<CrashState> SimFs::crash_states(const StateOptions& options) const {
  std::lock_guard lk(mu_);
  return disk_.crash_states(options);
}

void SimFs::check_alive(const fs::path& p, const char* what) {
  if (crash_at_ && ops_ >= *crash_at_) crashed_ = true;
  if (crashed_) throw PersistError::io(p, std::string(what) + " (simulated crash)", EIO);
}

void SimFs::record(Op op) {
  disk_.apply(op);
  if (options_.record) trace_.push_back(std::move(op));
  ++ops_;
}

fs::path SimFs::normal(const fs::path& p) const {
  fs::path n = p.lexically_normal();
  if (!n.has_filename() && n.has_parent_path() && n != n.root_path()) n = n.parent_path();
  return n;
}

std::unique_ptr<WritableFile> SimFs::create_exclusive(const fs::path& path) {
  const fs::path p = normal(path);
  std::lock_guard lk(mu_);
  check_alive(p, "create");
  if (!disk_.has_dir(p.parent_path())) throw PersistError::io(p, "create", ENOENT);
  if (disk_.lookup(p) || disk_.has_dir(p)) throw PersistError::io(p, "create", EEXIST);
  Op op;
  op.kind = OpKind::Create;
  op.path = p;
  op.ino = disk_.allocate_ino();
  const std::uint64_t ino = op.ino;
  record(std::move(op));
  return std::make_unique<File>(*this, p, ino, 0);
}

std::unique_ptr<WritableFile> SimFs::open_append(const fs::path& path) {
  const fs::path p = normal(path);
  std::lock_guard lk(mu_);
  check_alive(p, "open");
  if (disk_.has_dir(p)) throw PersistError::io(p, "open", EISDIR);
  const auto ino = disk_.lookup(p);
  if (!ino) throw PersistError::io(p, "open", ENOENT);
  Op op;
  op.kind = OpKind::OpenAppend;
  op.path = p;
  op.ino = *ino;
  record(std::move(op));
  return std::make_unique<File>(*this, p, *ino, disk_.content(*ino).size());
}

std::unique_ptr<ReadableFile> SimFs::open_read(const fs::path& path) {
  const fs::path p = normal(path);
  std::lock_guard lk(mu_);
  check_alive(p, "open");
  if (disk_.has_dir(p)) throw PersistError::io(p, "open (not a regular file)", EISDIR);
  const auto ino = disk_.lookup(p);
  if (!ino) throw PersistError::io(p, "open", ENOENT);
  Op op;
  op.kind = OpKind::OpenRead;
  op.path = p;
  op.ino = *ino;
  record(std::move(op));
  return std::make_unique<Reader>(*this, p, *ino, disk_.content(*ino).size());
}

void SimFs::rename(const fs::path& from_path, const fs::path& to_path) {
  const fs::path from = normal(from_path);
  const fs::path to = normal(to_path);
  std::lock_guard lk(mu_);
  check_alive(to, "rename");
  const std::string what = "rename from " + from.string();
  const auto ino = disk_.lookup(from);
  if (!ino) throw PersistError::io(to, what, disk_.has_dir(from) ? EISDIR : ENOENT);
  if (disk_.has_dir(to)) throw PersistError::io(to, what, EISDIR);
  if (!disk_.has_dir(to.parent_path())) throw PersistError::io(to, what, ENOENT);
  // Renames across directories are not modelled (each directory's fsync
  // would have to be tracked for one op); the library never does them.
  if (from.parent_path() != to.parent_path()) throw PersistError::io(to, what + " (not modelled)", EXDEV);
  Op op;
  op.kind = OpKind::Rename;
  op.path = from;
  op.path2 = to;
  op.ino = *ino;
  record(std::move(op));
}

void SimFs::remove(const fs::path& path) {
  const fs::path p = normal(path);
  std::lock_guard lk(mu_);
  check_alive(p, "unlink");
  if (disk_.has_dir(p)) throw PersistError::io(p, "unlink", EISDIR);
  Op op;
  op.kind = OpKind::Remove;
  op.path = p;
  op.ino = disk_.lookup(p).value_or(0);
  record(std::move(op));
}

void SimFs::sync_dir(const fs::path& path) {
  const fs::path d = normal(path);
  std::lock_guard lk(mu_);
  check_alive(d, "fsync directory");
  if (!disk_.has_dir(d)) throw PersistError::io(d, "open directory", disk_.lookup(d) ? ENOTDIR : ENOENT);
  Op op;
  op.kind = OpKind::SyncDir;
  op.path = d;
  record(std::move(op));
}

bool SimFs::exists(const fs::path& path) {
  const fs::path p = normal(path);
  std::lock_guard lk(mu_);
  check_alive(p, "stat");
  Op op;
  op.kind = OpKind::Exists;
  op.path = p;
  record(std::move(op));
  return disk_.has_dir(p) || disk_.lookup(p).has_value();
}

std::vector<std::string> SimFs::list_dir(const fs::path& path) {
  const fs::path d = normal(path);
  std::lock_guard lk(mu_);
  check_alive(d, "read directory");
  if (!disk_.has_dir(d)) throw PersistError::io(d, "open directory", disk_.lookup(d) ? ENOTDIR : ENOENT);
  Op op;
  op.kind = OpKind::ListDir;
  op.path = d;
  record(std::move(op));
  return disk_.list(d);
}

std::unique_ptr<FileLock> SimFs::lock(const fs::path& path) {
  const fs::path p = normal(path);
  std::lock_guard lk(mu_);
  check_alive(p, "open lock file");
  if (disk_.has_dir(p)) throw PersistError::io(p, "open lock file", EISDIR);
  if (!disk_.has_dir(p.parent_path())) throw PersistError::io(p, "open lock file", ENOENT);
  auto ino = disk_.lookup(p);
  if (!ino) {
    // O_CREAT: the file is created even when the flock then fails.
    Op op;
    op.kind = OpKind::Create;
    op.path = p;
    op.ino = disk_.allocate_ino();
    ino = op.ino;
    record(std::move(op));
  }
  Op op;
  op.kind = OpKind::Lock;
  op.path = p;
  op.ino = *ino;
  record(std::move(op));
  // flock is per open file description: a second lock object conflicts even
  // in the same process.
  if (!locked_.insert(*ino).second) {
    throw PersistError::at(ErrorKind::Locked, p, "another writer holds the lock");
  }
  return std::make_unique<Lock>(*this, *ino);
}

std::uint64_t SimFs::random_u64() {
  std::lock_guard lk(mu_);
  return splitmix64(rng_);
}

// ---------------------------------------------------------------- replay

void replay(const std::set<fs::path>& dirs, const Image& initial, const std::vector<Op>& trace,
            const std::function<void(std::size_t, const DiskModel&)>& visit) {
  DiskModel disk(dirs, initial);
  visit(0, disk);
  for (std::size_t i = 0; i < trace.size(); ++i) {
    disk.apply(trace[i]);
    if (trace[i].changes_disk()) visit(i + 1, disk);
  }
}

}  // namespace iqdb::persist::test::crash
