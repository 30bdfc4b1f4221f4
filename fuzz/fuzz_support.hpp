// Shared pieces of the fuzz targets (header-only, so that the regression test
// can compile every target into one executable).
//
//  - MemFileSystem: a complete in-memory FileSystem (files, renames, locks),
//    so a target never touches the disk and runs thousands of times a second.
//  - SpanPayloadReader / VectorPayloadWriter: payload streams over memory.
//  - Fix-ups that recompute the checksums of a (mutated) snapshot or log, so
//    that the fuzzer reaches the decoders behind the CRC checks.
//  - IQDB_FUZZ_CHECK: an oracle. A failed check prints what broke and aborts:
//    libFuzzer reports a crash, the regression test dies with the message.
//
// Rules every target follows: only PersistError is caught; any other
// exception escaping is a finding (std::terminate), as is a crash, a leak, a
// sanitizer report or a failed check.
#pragma once

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "iqdb/persist.hpp"

namespace iqdb::persist::fuzz {

namespace fs = std::filesystem;

// ---------------------------------------------------------------- oracles

[[noreturn]] inline void report_finding(const char* file, int line, const char* cond, const std::string& detail) {
  std::fprintf(stderr, "\n==== iqdb fuzz finding at %s:%d\n  check: %s\n  detail: %s\n", file, line, cond,
               detail.c_str());
  std::fflush(stderr);
  std::abort();
}

#define IQDB_FUZZ_CHECK(cond, detail)                                                               \
  do {                                                                                              \
    if (!(cond)) ::iqdb::persist::fuzz::report_finding(__FILE__, __LINE__, #cond, std::string(detail)); \
  } while (0)

// A known finding not yet fixed in src/ can be stepped over in a long
// campaign, so that the fuzzer explores past it: IQDB_FUZZ_SKIP=name[,name...]
// (names in docs/reliability/fuzzing.md). fuzz/run.sh and the regression
// test never set it.
inline bool skip_known(std::string_view name) {
  const char* env = std::getenv("IQDB_FUZZ_SKIP");
  if (env == nullptr) return false;
  std::string_view list(env);
  while (!list.empty()) {
    const std::size_t comma = list.find(',');
    if (list.substr(0, comma) == name) return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

// The libFuzzer entry point, defined only when the target is built as a
// fuzzer or replay executable (not when the regression test includes it).
#if defined(IQDB_FUZZ_DEFINE_ENTRY)
#define IQDB_FUZZ_ENTRY(fn)                                                     \
  extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) { \
    fn(std::span<const std::uint8_t>(data, size));                              \
    return 0;                                                                   \
  }
#else
#define IQDB_FUZZ_ENTRY(fn)
#endif

// PersistedIndex<I>::load(cfg), or nullopt with the PersistError's message
// in `why` (no other exception is caught).
template <class I>
std::optional<PersistedIndex<I>> try_load(const PersistConfig& cfg, std::string& why) {
  try {
    return PersistedIndex<I>::load(cfg);
  } catch (const PersistError& e) {
    why = e.what();
    return std::nullopt;
  }
}

// ---------------------------------------------------------------- bytes

using Bytes = std::vector<std::byte>;

inline Bytes to_bytes(std::span<const std::uint8_t> in) {
  Bytes b(in.size());
  if (!in.empty()) std::memcpy(b.data(), in.data(), in.size());
  return b;
}

template <class T>
T load_le(const Bytes& b, std::size_t at) {
  T v{};
  std::memcpy(&v, b.data() + at, sizeof v);
  return v;
}
template <class T>
void store_le(Bytes& b, std::size_t at, T v) {
  std::memcpy(b.data() + at, &v, sizeof v);
}
template <class T>
void put_le(Bytes& b, T v) {
  const auto* p = reinterpret_cast<const std::byte*>(&v);
  b.insert(b.end(), p, p + sizeof v);
}

// ---------------------------------------------------------------- in-memory file system

// Files are shared byte vectors: an open handle keeps its file's bytes across a
// rename or remove, as an open descriptor keeps its inode. Growing a file past
// kMaxFileBytes fails with ENOSPC, so no input can make a target hold more.
class MemFileSystem final : public FileSystem {
 public:
  static constexpr std::uint64_t kMaxFileBytes = std::uint64_t{64} << 20;
  using Data = std::shared_ptr<Bytes>;

  void put(const fs::path& p, Bytes bytes) {
    std::lock_guard g(mu_);
    files_[key(p)] = std::make_shared<Bytes>(std::move(bytes));
  }
  // The bytes of a file (empty when missing).
  Bytes get(const fs::path& p) const {
    std::lock_guard g(mu_);
    const auto it = files_.find(key(p));
    return it == files_.end() ? Bytes{} : *it->second;
  }
  bool has(const fs::path& p) const {
    std::lock_guard g(mu_);
    return files_.count(key(p)) != 0;
  }

  std::unique_ptr<WritableFile> create_exclusive(const fs::path& p) override {
    std::lock_guard g(mu_);
    if (files_.count(key(p)) != 0) throw PersistError::io(p, "open (O_EXCL)", EEXIST);
    Data d = std::make_shared<Bytes>();
    files_[key(p)] = d;
    return std::make_unique<File>(p, std::move(d), 0);
  }
  std::unique_ptr<WritableFile> open_append(const fs::path& p) override {
    std::lock_guard g(mu_);
    const auto it = files_.find(key(p));
    if (it == files_.end()) throw PersistError::io(p, "open", ENOENT);
    return std::make_unique<File>(p, it->second, it->second->size());
  }
  std::unique_ptr<ReadableFile> open_read(const fs::path& p) override {
    std::lock_guard g(mu_);
    const auto it = files_.find(key(p));
    if (it == files_.end()) throw PersistError::io(p, "open", ENOENT);
    return std::make_unique<Reader>(p, it->second);
  }
  void rename(const fs::path& from, const fs::path& to) override {
    std::lock_guard g(mu_);
    const auto it = files_.find(key(from));
    if (it == files_.end()) throw PersistError::io(from, "rename", ENOENT);
    Data d = it->second;
    files_.erase(it);
    files_[key(to)] = std::move(d);
  }
  void remove(const fs::path& p) override {
    std::lock_guard g(mu_);
    files_.erase(key(p));
  }
  void sync_dir(const fs::path&) override {}
  bool exists(const fs::path& p) override {
    std::lock_guard g(mu_);
    return files_.count(key(p)) != 0;
  }
  std::vector<std::string> list_dir(const fs::path& dir) override {
    std::lock_guard g(mu_);
    const std::string d = key(dir);
    std::vector<std::string> out;
    for (const auto& [name, data] : files_) {
      const fs::path p(name);
      if (p.parent_path().string() == d) out.push_back(p.filename().string());
    }
    return out;
  }
  std::unique_ptr<FileLock> lock(const fs::path& p) override {
    std::lock_guard g(mu_);
    const std::string k = key(p);
    if (files_.count(k) == 0) files_[k] = std::make_shared<Bytes>();
    if (!locks_.insert(k).second) throw PersistError::at(ErrorKind::Locked, p, "another writer holds the lock");
    return std::make_unique<Lock>(*this, k);
  }
  std::uint64_t random_u64() override {
    std::lock_guard g(mu_);
    // splitmix64: deterministic, so that every run of an input is the same.
    std::uint64_t z = (rng_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

 private:
  static std::string key(const fs::path& p) { return p.lexically_normal().string(); }

  class File final : public WritableFile {
   public:
    File(fs::path p, Data d, std::uint64_t pos) : path_(std::move(p)), data_(std::move(d)), pos_(pos) {}
    void append(std::span<const std::byte> d) override { write_at(pos_, d); }
    void write_at(std::uint64_t off, std::span<const std::byte> d) override {
      check_open("write");
      if (off > kMaxFileBytes || d.size() > kMaxFileBytes - off) throw PersistError::io(path_, "write", ENOSPC);
      const std::size_t end = static_cast<std::size_t>(off) + d.size();
      if (data_->size() < end) data_->resize(end);
      if (!d.empty()) std::memcpy(data_->data() + off, d.data(), d.size());
      if (end > pos_) pos_ = end;
    }
    void sync() override { check_open("fsync"); }
    void datasync() override { check_open("fdatasync"); }
    void truncate(std::uint64_t size) override {
      check_open("ftruncate");
      if (size > kMaxFileBytes) throw PersistError::io(path_, "ftruncate", ENOSPC);
      data_->resize(static_cast<std::size_t>(size));
      if (pos_ > size) pos_ = size;
    }
    void start_writeback(std::uint64_t, std::uint64_t) override { check_open("sync_file_range"); }
    void close() override {
      check_open("close");
      closed_ = true;
    }
    const fs::path& path() const noexcept override { return path_; }

   private:
    // A call after close() is a bug of the caller, not an I/O error.
    void check_open(const char* op) const {
      IQDB_FUZZ_CHECK(!closed_, std::string(op) + " on closed file " + path_.string());
    }
    fs::path path_;
    Data data_;
    std::uint64_t pos_;
    bool closed_ = false;
  };

  class Reader final : public ReadableFile {
   public:
    Reader(fs::path p, Data d) : path_(std::move(p)), data_(std::move(d)), size_(data_->size()) {}
    std::size_t read_at(std::uint64_t off, std::span<std::byte> dst) const override {
      const std::uint64_t have = data_->size();
      if (off >= have) return 0;
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(dst.size(), have - off));
      if (n > 0) std::memcpy(dst.data(), data_->data() + off, n);
      return n;
    }
    std::uint64_t size() const noexcept override { return size_; }
    const fs::path& path() const noexcept override { return path_; }

   private:
    fs::path path_;
    Data data_;
    std::uint64_t size_;
  };

  class Lock final : public FileLock {
   public:
    Lock(MemFileSystem& owner, std::string k) : owner_(owner), key_(std::move(k)) {}
    ~Lock() override {
      std::lock_guard g(owner_.mu_);
      owner_.locks_.erase(key_);
    }

   private:
    MemFileSystem& owner_;
    std::string key_;
  };

  mutable std::mutex mu_;
  std::map<std::string, Data> files_;
  std::set<std::string> locks_;
  std::uint64_t rng_ = 0;
};

// ---------------------------------------------------------------- payload streams

class SpanPayloadReader final : public PayloadReader {
 public:
  explicit SpanPayloadReader(std::span<const std::byte> data) : data_(data) {}
  void read(void* dst, std::size_t size) override {
    if (size > data_.size() - pos_) {
      throw PersistError(ErrorKind::TruncatedPayload, "payload needs " + std::to_string(size) + " more bytes, " +
                                                          std::to_string(data_.size() - pos_) + " remain");
    }
    if (size > 0) std::memcpy(dst, data_.data() + pos_, size);
    pos_ += size;
  }
  std::uint64_t remaining() const noexcept override { return data_.size() - pos_; }

 private:
  std::span<const std::byte> data_;
  std::size_t pos_ = 0;
};

class VectorPayloadWriter final : public PayloadWriter {
 public:
  void write(const void* data, std::size_t size) override {
    const auto* p = static_cast<const std::byte*>(data);
    out_.insert(out_.end(), p, p + size);
  }
  std::uint64_t bytes_written() const noexcept override { return out_.size(); }
  const Bytes& bytes() const noexcept { return out_; }

 private:
  Bytes out_;
};

// ---------------------------------------------------------------- fix-ups

// Recompute the checksums (and, when `lengths`, the v3 stored_len) of a
// snapshot, whatever its version, as far as its length fields allow.
inline void fix_snapshot(Bytes& f, bool crcs, bool lengths) {
  if (f.size() < 16 || std::memcmp(f.data(), format::MAGIC.data(), format::MAGIC.size()) != 0) return;
  const auto version = load_le<std::uint32_t>(f, 8);
  if (version == 3) {
    // magic 8, version 4, header_len 4, required 4, optional 4, tag_len 4, tag,
    // dim 8, metric 1, compression 1, n_vectors 8, last_lsn 8,
    // uncompressed_len 8, stored_len 8, payload_crc 4, [extensions], header_crc 4.
    if (f.size() < 28) return;
    const std::uint64_t hlen = load_le<std::uint32_t>(f, 12);
    const std::uint64_t tag_len = load_le<std::uint32_t>(f, 24);
    if (hlen > f.size() || 78 + tag_len > hlen) return;
    const auto h = static_cast<std::size_t>(hlen);
    const auto t = static_cast<std::size_t>(tag_len);
    if (lengths) store_le<std::uint64_t>(f, 62 + t, f.size() - hlen);
    if (crcs) {
      store_le<std::uint32_t>(f, 70 + t, checksum::compute(f.data() + h, f.size() - h));
      store_le<std::uint32_t>(f, h - 4, checksum::compute(f.data(), h - 4));
    }
  } else if (version == 1 || version == 2) {
    if (f.size() < 20) return;
    const auto tag_len = load_le<std::uint64_t>(f, 12);
    if (tag_len > format::MAX_TAG_LEN || 41 + tag_len > f.size()) return;
    const auto crc_at = static_cast<std::size_t>(37 + tag_len);
    if (crcs) store_le<std::uint32_t>(f, crc_at, checksum::compute(f.data() + crc_at + 4, f.size() - crc_at - 4));
  }
}

inline constexpr std::array<char, 8> kWalMagic = {'I', 'Q', 'D', 'B', 'W', 'A', 'L', '\0'};

// Recompute the header CRC (v2) and the CRC of every frame of a log, walking
// the frames by their length fields until one does not fit.
inline void fix_log(Bytes& f) {
  if (f.size() < 12 || std::memcmp(f.data(), kWalMagic.data(), kWalMagic.size()) != 0) return;
  const auto version = load_le<std::uint32_t>(f, 8);
  std::size_t pos = 12;
  std::uint64_t salt = 0;
  if (version == 2) {
    if (f.size() < 40) return;
    store_le<std::uint32_t>(f, 36, checksum::compute(f.data(), 36));
    salt = load_le<std::uint64_t>(f, 16);
    pos = 40;
  } else if (version != 1) {
    return;
  }
  while (f.size() - pos >= 8) {
    const auto len = load_le<std::uint32_t>(f, pos);
    if (len == 0 || len > f.size() - pos - 8) break;
    const std::byte* body = f.data() + pos + 8;
    std::uint32_t crc = 0;
    if (version == 2) {
      checksum::Crc32 c;
      c.update(&salt, sizeof salt);
      c.update(&len, sizeof len);
      c.update(body, len);
      crc = c.value();
    } else {
      crc = checksum::compute(body, len);
    }
    store_le<std::uint32_t>(f, pos + 4, crc);
    pos += 8 + static_cast<std::size_t>(len);
  }
}

// ---------------------------------------------------------------- the WAL-replay base snapshot

// The index every wal_replay input is replayed onto (and that make_seeds
// builds its logs against): dim 2, Euclidean, ids 1 and 2 (2 with metadata).
inline FlatIndex wal_base_index() {
  FlatIndex ix(2, DistanceMetric::Euclidean);
  const float a[2] = {1.0f, 2.0f};
  const float b[2] = {3.0f, 4.0f};
  ix.insert(1, a);
  ix.insert(2, b, Metadata{{"k", Value("v")}});
  return ix;
}

inline const fs::path kDbPath = "/db/index.iqdb";
inline const fs::path kLogPath = "/db/index.iqdb.wal";

// A version-3 snapshot of wal_base_index() claiming `last_lsn`.
inline Bytes wal_base_snapshot(std::uint64_t last_lsn) {
  MemFileSystem mfs;
  const FlatIndex ix = wal_base_index();
  const SnapshotInfo info{FlatIndex::index_type, ix.dim(), ix.metric(), ix.size(), last_lsn};
  write_snapshot(mfs, kDbPath, info, Compression::none(), false, [&](PayloadWriter& w) { ix.save_to(w); });
  return mfs.get(kDbPath);
}

}  // namespace iqdb::persist::fuzz
