// Garbage: random files, and random headers glued to random payloads (with
// their checksums right, so the bytes reach the decoders), fed to every
// entry point that reads a file: the snapshot loader, read_snapshot,
// inspect_snapshot, verify_snapshot, wal::scan_log (both modes) and a
// WAL-mode load. Each must end in a typed PersistError or (rarely) a valid
// result; never a crash, another exception, or an allocation beyond
// test::alloc_bound of the input. Seeded std::mt19937_64 with fixed seeds, so
// a failure names the seed and iteration that reproduce it.
// docs/reliability/corruption.md.
#include <gtest/gtest.h>
#include <zstd.h>

#include <cstring>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "iqdb/persist.hpp"
#include "support/alloc_guard.hpp"
#include "support/corruption_util.hpp"
#include "support/format_builders.hpp"
#include "support/mem_fs.hpp"
#include "support/test_util.hpp"

IQDB_TEST_COUNT_OPERATOR_NEW();

namespace iqdb::persist {
namespace {

namespace fsx = std::filesystem;
// Buf, Bytes, the reference encoders (format_builders.hpp), in-memory files,
// outcome_of (corruption_util.hpp).
using namespace test;
using Rng = std::mt19937_64;

// ------------------------------------------------------------------ random pieces

std::uint64_t below(Rng& r, std::uint64_t n) { return n == 0 ? 0 : r() % n; }
bool coin(Rng& r, int percent = 50) { return below(r, 100) < static_cast<std::uint64_t>(percent); }

Buf random_bytes(Rng& r, std::size_t n) {
  Buf b(n);
  for (auto& x : b) x = static_cast<std::byte>(r() & 0xFF);
  return b;
}

// A count or length that is sometimes plausible, sometimes hostile.
std::uint64_t random_count(Rng& r, std::uint64_t plausible) {
  switch (below(r, 6)) {
    case 0: return below(r, plausible + 1);
    case 1: return plausible;
    case 2: return plausible + 1;
    case 3: return ~std::uint64_t{0} >> below(r, 64);  // 2^k - 1
    case 4: return std::uint64_t{1} << below(r, 64);
    default: return r();
  }
}

Buf zstd_compress(const Buf& in) {
  Buf out(ZSTD_compressBound(in.size()));
  const std::size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), 1);
  if (ZSTD_isError(n)) return {};
  out.resize(n);
  return out;
}

// A flat payload (docs/FORMAT.md). About half are exactly valid (so that
// some files load and the result is checked); in the others each count,
// length and tag is hostile with some probability: reaches every check in
// FlatIndex::load_from.
struct FlatGarbage {
  Buf payload;
  std::uint64_t dim = 0;
  std::uint64_t n = 0;
};

void random_value(Rng& r, Bytes& p, bool exact) {
  const std::uint8_t tag = static_cast<std::uint8_t>(exact || coin(r, 90) ? below(r, 5) : r());
  p.u8(tag);
  switch (exact ? tag : 99) {
    case 0: p.u32(3).str("xyz"); break;
    case 1: p.i64(static_cast<std::int64_t>(r())); break;
    case 2: p.f64(static_cast<double>(below(r, 1000)) / 7.0); break;
    case 3: p.u8(static_cast<std::uint8_t>(below(r, 2))); break;
    case 4: break;
    default:
      if (tag == 0) {
        p.u32(static_cast<std::uint32_t>(random_count(r, 3))).str("xyz");
      } else {
        p.append(random_bytes(r, static_cast<std::size_t>(below(r, 9))));
      }
  }
}

FlatGarbage random_flat_payload(Rng& r) {
  const bool exact = coin(r, 50);
  const auto field = [&](std::uint64_t valid, std::uint64_t plausible) {
    return exact || coin(r, 85) ? valid : random_count(r, plausible);
  };
  FlatGarbage g;
  g.dim = field(1 + below(r, 4), 4);
  g.n = field(below(r, 5), 5);
  Bytes p;
  p.u32(static_cast<std::uint32_t>(field(1, 1))).u64(g.dim).u8(static_cast<std::uint8_t>(field(below(r, 5), 5)));
  p.u64(g.n).u8(static_cast<std::uint8_t>(field(1, 1)));
  const std::uint64_t ids = std::min<std::uint64_t>(g.n, 6);
  for (std::uint64_t i = 0; i < ids; ++i) {
    if (coin(r)) {
      p.u8(0).u64(exact ? i * 7 : below(r, 4));  // inexact: duplicates happen
    } else {
      const std::string id = "id" + std::to_string(i);
      const std::uint64_t len = field(id.size(), id.size());
      p.u8(static_cast<std::uint8_t>(field(1, 1))).u64(len).str(id);
    }
  }
  std::vector<std::uint64_t> rows;
  for (std::uint64_t i = 0; i < ids; ++i) {
    if (coin(r, 40)) rows.push_back(i);
  }
  const std::uint64_t m = field(rows.size(), ids);
  p.u64(m);
  for (std::uint64_t i = 0; i < std::min<std::uint64_t>(m, rows.size()); ++i) {
    p.u64(field(rows[i], ids));
    const std::uint32_t entries = static_cast<std::uint32_t>(field(below(r, 4), 3));
    p.u32(entries);
    for (std::uint32_t e = 0; e < std::min<std::uint32_t>(entries, 4); ++e) {
      p.u32(static_cast<std::uint32_t>(field(1, 1))).u8(static_cast<std::uint8_t>('a' + e));
      random_value(r, p, exact);
    }
  }
  const std::uint64_t floats = std::min<std::uint64_t>(g.n * g.dim, 64);
  for (std::uint64_t i = 0; i < floats; ++i) p.f32(static_cast<float>(below(r, 100)) / 4.0f);
  if (!exact) p.append(random_bytes(r, static_cast<std::size_t>(below(r, 8))));
  g.payload = p.data();
  return g;
}

// ------------------------------------------------------------------ random snapshots

struct SnapshotGarbage {
  Buf file;
  std::uint64_t decoded_bound = 0;  // bytes a load may legitimately decode (alloc bound input)
};

std::string random_tag(Rng& r) {
  switch (below(r, 4)) {
    case 0:
    case 1:
    case 2: return "flat";
    default: {
      std::string t;
      for (std::uint64_t i = below(r, 8); i > 0; --i) t += static_cast<char>(r() & 0xFF);
      return t;
    }
  }
}

SnapshotGarbage random_snapshot(Rng& r) {
  SnapshotGarbage g;
  const std::uint64_t kind = below(r, 6);
  if (kind == 0) {  // pure noise
    g.file = random_bytes(r, static_cast<std::size_t>(below(r, 600)));
  } else if (kind == 1) {  // the magic, then noise
    Bytes b;
    b.str("IQDBPRST").u32(static_cast<std::uint32_t>(coin(r, 80) ? 1 + below(r, 3) : r()));
    b.append(random_bytes(r, static_cast<std::size_t>(below(r, 600))));
    g.file = b.data();
  } else {
    // A header with random fields and a correct CRC, glued to a payload that
    // is random bytes, a structured random flat payload, or a compressed one.
    FlatGarbage flat;
    const bool structured = coin(r, 75);
    if (structured) flat = random_flat_payload(r);
    const Buf payload = structured ? flat.payload : random_bytes(r, static_cast<std::size_t>(below(r, 400)));
    // The header agrees with the payload (dim, n, metric) most of the time.
    const std::uint64_t dim = structured && coin(r, 80) ? flat.dim : random_count(r, 4);
    const std::uint64_t n = structured && coin(r, 80) ? flat.n : random_count(r, 5);
    const std::uint8_t metric = static_cast<std::uint8_t>(
        structured && coin(r, 80) ? static_cast<std::uint8_t>(payload.size() > 12 ? payload[12] : std::byte{0})
                                  : (coin(r, 90) ? below(r, 5) : r()));
    const std::string tag = random_tag(r);
    const std::uint32_t version = static_cast<std::uint32_t>(kind == 2 ? 1 : kind == 3 ? 2 : 3);
    const std::uint8_t scheme = static_cast<std::uint8_t>(coin(r, 90) ? below(r, version == 3 ? 4 : 3) : r());
    Buf stored = payload;
    if (scheme == 1 && coin(r, 80)) stored = zstd_compress(payload);  // else: noise that claims to be zstd
    const std::uint64_t ulen = coin(r, 70) ? payload.size() : random_count(r, payload.size());
    // Decoded bytes a reader may accept: the declared length, within the
    // expansion guard, when compressed; the stored bytes otherwise.
    g.decoded_bound = scheme == 0 ? 0 : std::min<std::uint64_t>(ulen, 4096 * stored.size());
    if (version == 1) {
      g.file = test::v12_header(1, {tag, dim, metric, n},
                                coin(r, 80) ? zcrc(payload) : static_cast<std::uint32_t>(r()));
      g.file.insert(g.file.end(), payload.begin(), payload.end());
      g.decoded_bound = 0;
    } else if (version == 2) {
      const Buf region = test::v2_region(scheme, ulen, stored);
      g.file = test::v12_header(2, {tag, dim, metric, n}, coin(r, 80) ? zcrc(region) : static_cast<std::uint32_t>(r()));
      g.file.insert(g.file.end(), region.begin(), region.end());
    } else {
      // Fields drawn in header order (the seeds' files depend on it).
      test::V3Fields h;
      h.f = {tag.empty() ? "flat" : tag, dim, metric, n};
      h.compression = scheme;
      h.header_len = coin(r, 90) ? static_cast<std::uint32_t>(78 + h.f.tag.size())
                                 : static_cast<std::uint32_t>(random_count(r, 82));
      h.required = coin(r, 90) ? 0 : static_cast<std::uint32_t>(r());
      h.optional = static_cast<std::uint32_t>(r());
      h.tag_len =
          coin(r, 90) ? static_cast<std::uint32_t>(h.f.tag.size()) : static_cast<std::uint32_t>(random_count(r, 4));
      h.last_lsn = r();
      h.ulen = ulen;
      h.stored_len = coin(r, 90) ? stored.size() : random_count(r, stored.size());
      h.payload_crc = coin(r, 90) ? zcrc(stored) : static_cast<std::uint32_t>(r());
      if (!coin(r, 90)) h.header_crc = static_cast<std::uint32_t>(r());
      g.file = test::v3_header(h);
      g.file.insert(g.file.end(), stored.begin(), stored.end());
    }
    if (coin(r, 10)) g.file.resize(static_cast<std::size_t>(below(r, g.file.size() + 1)));  // and cut
  }
  return g;
}

// ------------------------------------------------------------------ reading from memory

// Serves one file from memory; everything else goes to the real file system.
using MemFs = test::SingleFileMemFs;
const fsx::path kMemPath = "/nonexistent-iqdb-garbage/g.iqdb";

constexpr std::uint64_t kSnapshotSeed = 0x1D0C0FFEE;
constexpr int kSnapshotIterations = 4000;

TEST(Garbage, SnapshotReaders) {
  ASSERT_TRUE(test::operator_new_is_counted());
  MemFs fs(kMemPath);
  Rng rng(kSnapshotSeed);
  std::map<std::string, int> tally;
  for (int it = 0; it < kSnapshotIterations; ++it) {
    const SnapshotGarbage g = random_snapshot(rng);
    fs.set(g.file);
    const std::size_t bound = test::alloc_bound(static_cast<std::size_t>(g.file.size() + g.decoded_bound));
    const std::string where = "seed " + std::to_string(kSnapshotSeed) + " iteration " + std::to_string(it) + " (" +
                              std::to_string(g.file.size()) + " bytes)";
    PersistConfig cfg(fs.path());
    cfg.file_system = &fs;
    const auto check = [&](const char* what, const std::function<void()>& f) {
      test::AllocGuard guard;
      const std::string o = outcome_of(f);
      const test::AllocStats s = guard.stats();
      EXPECT_EQ(o.find("FOREIGN"), std::string::npos) << where << ": " << what << ": " << o;
      EXPECT_LE(s.peak_bytes, bound) << where << ": " << what;
      EXPECT_LE(s.largest, bound) << where << ": " << what;
      ++tally[std::string(what) + " " + o];
      return o;
    };
    const std::string loaded = check("load", [&] {
      auto db = PersistedIndex<FlatIndex>::load(cfg);
      // A "valid result": the loaded index agrees with its own header.
      const SnapshotSummary s = inspect_snapshot(fs, fs.path());
      EXPECT_EQ(db.index().dim(), s.header.dim) << where;
      EXPECT_EQ(db.index().size(), s.header.n_vectors) << where;
    });
    check("read_snapshot", [&] {
      read_snapshot(fs, fs.path(), {}, ReadLimits{}, [](PayloadReader& r, const FileHeader&) {
        std::byte buf[64];
        while (r.remaining() > 0) r.read(buf, static_cast<std::size_t>(std::min<std::uint64_t>(r.remaining(), 64)));
      });
    });
    check("inspect", [&] { inspect_snapshot(fs, fs.path()); });
    const std::string verified = check("verify", [&] { verify_snapshot(fs, fs.path(), ReadLimits{}); });
    // What loads, verifies: verify checks a subset of what a load checks.
    if (loaded == "ok") {
      EXPECT_EQ(verified, "ok") << where;
    }
  }
  for (const auto& [k, n] : tally) std::cout << "[tally] " << k << ": " << n << "\n";
}

// ------------------------------------------------------------------ random logs

constexpr std::uint64_t kSalt = 0x0DDBA11CAFEF00DULL;

// A random op: plausible structure, random lengths.
void random_op(Rng& r, Bytes& b, std::uint64_t dim) {
  const std::uint8_t op = static_cast<std::uint8_t>(coin(r, 90) ? 1 + below(r, 2) : r());
  b.u8(op);
  if (coin(r, 70)) {
    b.u8(0).u64(below(r, 6));
  } else {
    const std::uint64_t len = coin(r, 80) ? 1 + below(r, 4) : random_count(r, 4);
    b.u8(1).u64(len).append(random_bytes(r, static_cast<std::size_t>(std::min<std::uint64_t>(len, 6))));
  }
  if (op != 1) return;
  const std::uint32_t n = coin(r, 80) ? static_cast<std::uint32_t>(dim) : static_cast<std::uint32_t>(random_count(r, dim));
  b.u32(n);
  for (std::uint32_t i = 0; i < std::min<std::uint32_t>(n, 8); ++i) b.f32(static_cast<float>(below(r, 100)));
  const std::uint8_t has_meta = static_cast<std::uint8_t>(coin(r, 90) ? below(r, 2) : r());
  b.u8(has_meta);
  if (has_meta != 1) return;
  const std::uint32_t entries = coin(r, 80) ? static_cast<std::uint32_t>(below(r, 3))
                                            : static_cast<std::uint32_t>(random_count(r, 3));
  b.u32(entries);
  for (std::uint32_t e = 0; e < std::min<std::uint32_t>(entries, 3); ++e) {
    b.u32(coin(r, 80) ? 1 : static_cast<std::uint32_t>(random_count(r, 1))).u8(static_cast<std::uint8_t>('a' + e));
    const std::uint8_t tag = static_cast<std::uint8_t>(coin(r, 90) ? below(r, 5) : r());
    b.u8(tag);
    if (tag == 0) {
      b.u32(static_cast<std::uint32_t>(random_count(r, 2))).str("xy");
    } else {
      b.append(random_bytes(r, static_cast<std::size_t>(below(r, 9))));
    }
  }
}

// A log: noise, or a header followed by frames whose CRCs are mostly right
// and whose bodies are random ops (so the decoder sees them), with damage,
// noise and zero padding mixed in.
Buf random_log(Rng& r, std::uint64_t dim) {
  const std::uint64_t kind = below(r, 5);
  if (kind == 0) return random_bytes(r, static_cast<std::size_t>(below(r, 300)));
  const std::uint32_t version = kind == 1 ? 1 : 2;
  Bytes log;
  if (version == 1) {
    log.append(test::v1_log_header());
  } else {
    log.append(test::v2_log_header(kSalt, coin(r, 90) ? 1 : below(r, 4)));
  }
  std::uint64_t lsn = 1;
  for (std::uint64_t f = below(r, 6); f > 0; --f) {
    Bytes body;
    std::uint32_t count = 1;
    if (version == 2) {
      count = static_cast<std::uint32_t>(coin(r, 80) ? 1 + below(r, 3) : random_count(r, 3));
      body.u64(coin(r, 90) ? lsn : r()).u32(count);
      // Half the frames carry 8 more prefix bytes (a synced LSN, 0: newer
      // frame bodies have it), so that either body layout reaches the ops.
      if (coin(r)) body.u64(0);
    }
    for (std::uint32_t i = 0; i < std::min<std::uint32_t>(count, 4); ++i) random_op(r, body, dim);
    lsn += count;
    const std::uint32_t len = coin(r, 90) ? static_cast<std::uint32_t>(body.size())
                                          : static_cast<std::uint32_t>(random_count(r, body.size()));
    std::uint32_t crc = 0;
    if (version == 1) {
      crc = zcrc(body.data());
    } else {
      Bytes in;
      in.u64(kSalt).u32(len).append(body.data());
      crc = zcrc(in.data());
    }
    if (coin(r, 10)) crc = static_cast<std::uint32_t>(r());
    log.u32(len).u32(crc).append(body.data());
  }
  Buf out = log.data();
  if (coin(r, 20)) out.resize(out.size() + static_cast<std::size_t>(below(r, 64)), std::byte{0});  // padding
  if (coin(r, 20) && !out.empty()) out[static_cast<std::size_t>(below(r, out.size()))] ^= std::byte{0x10};
  if (coin(r, 10)) out.resize(static_cast<std::size_t>(below(r, out.size() + 1)));
  if (coin(r, 10)) {
    const Buf noise = random_bytes(r, static_cast<std::size_t>(below(r, 40)));
    out.insert(out.end(), noise.begin(), noise.end());
  }
  return out;
}

constexpr std::uint64_t kScanSeed = 0x5CA11ED;
constexpr int kScanIterations = 4000;

TEST(Garbage, LogScan) {
  ASSERT_TRUE(test::operator_new_is_counted());
  MemFs fs(kMemPath);
  Rng rng(kScanSeed);
  std::map<std::string, int> tally;
  for (int it = 0; it < kScanIterations; ++it) {
    const Buf log = random_log(rng, 2);
    fs.set(log);
    const std::string where = "seed " + std::to_string(kScanSeed) + " iteration " + std::to_string(it);
    for (wal::ScanMode mode : {wal::ScanMode::Strict, wal::ScanMode::Report}) {
      test::AllocGuard guard;
      std::uint64_t delivered = 0;
      std::optional<wal::ScanResult> result;
      const std::string o = outcome_of([&] {
        result = wal::scan_log(fs, fs.path(), [&](const wal::RecordView& rv) {
          ++delivered;
          EXPECT_NE(rv.id, nullptr);
          EXPECT_LT(rv.index_in_frame, rv.frame_records);
        }, mode);
      });
      EXPECT_EQ(o.find("FOREIGN"), std::string::npos) << where << ": " << o;
      EXPECT_LE(guard.stats().peak_bytes, test::alloc_bound(log.size())) << where;
      EXPECT_LE(guard.stats().largest, test::alloc_bound(log.size())) << where;
      ++tally[std::string(mode == wal::ScanMode::Strict ? "strict " : "report ") + o];
      if (!result) continue;
      // A consistent report: what was delivered is what is counted, and the
      // valid prefix and the damage after it lie within the file.
      EXPECT_EQ(delivered, result->records) << where;
      EXPECT_EQ(result->file_size, log.size()) << where;
      EXPECT_LE(result->valid_bytes, log.size()) << where;
      EXPECT_LE(result->torn_tail_bytes, log.size() - result->valid_bytes) << where;
      if (result->version == 2) {
        EXPECT_LE(result->frames, result->records) << where;
      } else {
        EXPECT_EQ(result->frames, result->records) << where;
      }
      if (result->corrupt_offset) {
        EXPECT_EQ(mode, wal::ScanMode::Report) << where;
        EXPECT_EQ(*result->corrupt_offset, result->valid_bytes) << where;
        // Damage in the middle: a damaged frame with intact frames after
        // it, or a frame whose checksum holds and whose contents do not
        // decode, which the strict scan refuses there as malformed.
        if (result->frames_after_corruption == 0) {
          try {
            (void)wal::scan_log(fs, fs.path(), {}, wal::ScanMode::Strict);
            ADD_FAILURE() << where << ": a report of damage the strict scan accepts";
          } catch (const PersistError& e) {
            EXPECT_EQ(e.offset(), result->corrupt_offset) << where;
            EXPECT_NE(std::string(e.what()).find("malformed"), std::string::npos) << where << ": " << e.what();
          }
        }
      }
    }
  }
  for (const auto& [k, n] : tally) std::cout << "[tally] " << k << ": " << n << "\n";
}

// WAL-mode loads run on real files (the loader writes: torn tails are cut,
// version-1 logs migrated), without fsync for speed; fewer iterations.
class NoSyncFile final : public WritableFileWrapper {
 public:
  using WritableFileWrapper::WritableFileWrapper;
  void sync() override {}
  void datasync() override {}
};
class NoSyncFs final : public FileSystemWrapper {
 public:
  NoSyncFs() : FileSystemWrapper(default_file_system()) {}
  std::unique_ptr<WritableFile> create_exclusive(const fsx::path& p) override {
    return std::make_unique<NoSyncFile>(target().create_exclusive(p));
  }
  std::unique_ptr<WritableFile> open_append(const fsx::path& p) override {
    return std::make_unique<NoSyncFile>(target().open_append(p));
  }
  void sync_dir(const fsx::path&) override {}
};

constexpr std::uint64_t kLoadSeed = 0x10ADED;
constexpr int kLoadIterations = 500;

TEST(Garbage, WalModeLoad) {
  NoSyncFs fs;
  // The snapshot beside every log: an index of dim 2 holding ids 1 and 2.
  Buf snapshot;
  {
    test::TempDir dir;
    PersistConfig cfg(dir / "s.iqdb");
    cfg.fsync_policy = FsyncPolicy::never();
    FlatIndex index(2, DistanceMetric::Cosine);
    index.insert(1, std::vector<float>{1.f, 0.f});
    index.insert(2, std::vector<float>{0.f, 1.f}, Metadata{{"a", Value(1)}});
    auto db = PersistedIndex<FlatIndex>::open_with(std::move(index), cfg);
    db.save();
    snapshot = test::read_file(cfg.path);
  }
  Rng rng(kLoadSeed);
  std::map<std::string, int> tally;
  test::TempDir root;
  for (int it = 0; it < kLoadIterations; ++it) {
    const Buf log = random_log(rng, 2);
    const fsx::path dir = root / std::to_string(it);
    fsx::create_directory(dir);
    PersistConfig cfg(dir / "db.iqdb");
    cfg.wal_enabled = true;
    cfg.fsync_policy = FsyncPolicy::never();
    cfg.file_system = &fs;
    test::write_file(cfg.path, snapshot);
    test::write_file(wal::log_path_for(cfg.path), log);
    const std::string where = "seed " + std::to_string(kLoadSeed) + " iteration " + std::to_string(it);
    test::AllocGuard guard;
    const std::string o = outcome_of([&] {
      auto db = PersistedIndex<FlatIndex>::load(cfg);
      EXPECT_EQ(db.index().dim(), 2u) << where;
      db.close();
    });
    const test::AllocStats s = guard.stats();
    EXPECT_EQ(o.find("FOREIGN"), std::string::npos) << where << ": " << o;
    EXPECT_LE(s.peak_bytes, test::alloc_bound(snapshot.size() + log.size())) << where;
    EXPECT_LE(s.largest, test::alloc_bound(snapshot.size() + log.size())) << where;
    ++tally[o];
    fsx::remove_all(dir);
  }
  for (const auto& [k, n] : tally) std::cout << "[tally] wal-mode load " << k << ": " << n << "\n";
}

}  // namespace
}  // namespace iqdb::persist
