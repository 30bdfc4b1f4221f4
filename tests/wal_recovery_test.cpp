// Write-ahead log recovery: a model-based property (random mutations, batches
// and checkpoints, then a crash that cuts the log at a random byte) and one
// small test per failure mode (torn tail then more writes, corruption in the
// middle of the log, frames of an older log generation, a snapshot older than
// its log).
//
// Frame boundaries are computed here from the encoding spec (docs: the v2 log
// grammar; op bodies as in the reference's WAL v1), never read back through
// the library's scanner: 8-byte frame header + 20-byte body prefix + each op.
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iqdb/persist.hpp>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "support/test_util.hpp"
#include "support/wal_test_util.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------- model

using test::diff;
using test::Entry;
using test::Model;

// ---------------------------------------------------------------- encoding sizes (from the spec)

constexpr std::uint64_t kLogHeader = 40;     // v2 log header
constexpr std::uint64_t kFrameOverhead = 28;  // length u32 + crc u32 + first_lsn u64 + count u32 + synced_lsn u64

std::uint64_t id_size(const VectorId& id) { return id.is_u64() ? 1 + 8 : 1 + 8 + id.as_bytes().size(); }

std::uint64_t value_size(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::String: return 1 + 4 + v.as_string().size();
    case Value::Kind::Int: return 1 + 8;
    case Value::Kind::Float: return 1 + 8;
    case Value::Kind::Bool: return 1 + 1;
    case Value::Kind::Null: return 1;
  }
  return 0;
}

std::uint64_t insert_size(const VectorId& id, std::size_t dim, const std::optional<Metadata>& meta) {
  std::uint64_t n = 1 + id_size(id) + 4 + 4 * dim + 1;
  if (meta) {
    n += 4;
    for (const auto& [k, v] : *meta) n += 4 + k.size() + value_size(v);
  }
  return n;
}

std::uint64_t erase_size(const VectorId& id) { return 1 + id_size(id); }

// ---------------------------------------------------------------- little helpers

std::uint32_t le32(const std::vector<std::byte>& b, std::uint64_t at) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<std::uint32_t>(b[at + static_cast<std::uint64_t>(i)]);
  return v;
}

std::uint64_t le64(const std::vector<std::byte>& b, std::uint64_t at) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint64_t>(b[at + static_cast<std::uint64_t>(i)]);
  return v;
}

bool all_zero_from(const std::vector<std::byte>& b, std::uint64_t from) {
  return std::all_of(b.begin() + static_cast<std::ptrdiff_t>(std::min<std::uint64_t>(from, b.size())), b.end(),
                     [](std::byte x) { return x == std::byte{0}; });
}

PersistConfig wal_config(const fs::path& p, FsyncPolicy policy = FsyncPolicy::always()) {
  PersistConfig cfg(p);
  cfg.wal_enabled = true;
  cfg.fsync_policy = policy;
  return cfg;
}

fs::path log_of(const PersistConfig& cfg) { return wal::log_path_for(cfg.path); }

using test::error_of;

std::vector<float> vec_of(std::uint64_t i, std::size_t dim = 4) {
  std::vector<float> v(dim);
  for (std::size_t d = 0; d < dim; ++d) v[d] = static_cast<float>(i) * 10.0f + static_cast<float>(d);
  return v;
}

// ---------------------------------------------------------------- the property

const std::vector<std::string>& byte_id_pool() {
  static const std::vector<std::string> pool = {
      "a", "bb", std::string("\0", 1), "\xff\xfe", "id-5", "a-rather-long-byte-id-0123456789", "z", "\x01\x02\x03"};
  return pool;
}

VectorId gen_id() {
  const auto k = *rc::gen::inRange<std::size_t>(0, 12 + byte_id_pool().size());
  if (k < 12) return VectorId(static_cast<std::uint64_t>(k));
  return VectorId::bytes(byte_id_pool()[k - 12]);
}

// Mostly an id that is present (so that erases succeed), sometimes any id.
VectorId gen_erase_id(const Model& model) {
  if (!model.empty() && *rc::gen::inRange(0, 10) < 7) {
    auto it = model.begin();
    std::advance(it, *rc::gen::inRange<std::size_t>(0, model.size()));
    return it->first;
  }
  return gen_id();
}

std::string gen_text() {
  return *rc::gen::container<std::string>(rc::gen::inRange<char>('a', 'z' + 1));
}

Value gen_value() {
  switch (*rc::gen::inRange(0, 5)) {
    case 0: return Value(gen_text());
    case 1: return Value(*rc::gen::arbitrary<std::int64_t>());
    case 2: return Value(*rc::gen::arbitrary<double>());
    case 3: return Value(*rc::gen::arbitrary<bool>());
    default: return Value();
  }
}

std::optional<Metadata> gen_meta() {
  if (*rc::gen::arbitrary<bool>()) return std::nullopt;
  Metadata m;
  const int n = *rc::gen::inRange(0, 4);
  for (int i = 0; i < n; ++i) m[*rc::gen::element<std::string>("k", "key", "b", "zz", "label", "n0")] = gen_value();
  return m;
}

std::vector<float> gen_vec(std::size_t dim) {
  return *rc::gen::container<std::vector<float>>(dim, rc::gen::arbitrary<float>());
}

// A mutation as the model sees it.
struct Mut {
  wal::Op op;
  VectorId id;
  std::vector<float> vec;
  std::optional<Metadata> meta;
};

// Applies `m` to `model`; returns the error the library must raise, if any.
std::optional<ErrorKind> apply_to_model(Model& model, std::size_t dim, const Mut& m) {
  if (m.op == wal::Op::Insert) {
    if (m.vec.size() != dim) return ErrorKind::InvalidArgument;
    if (model.count(m.id) != 0) return ErrorKind::DuplicateId;
    model[m.id] = Entry{m.vec, m.meta};
  } else {
    if (model.count(m.id) == 0) return ErrorKind::IdNotFound;
    model.erase(m.id);
  }
  return std::nullopt;
}

std::uint64_t op_size(const Mut& m, std::size_t dim) {
  return m.op == wal::Op::Insert ? insert_size(m.id, dim, m.meta) : erase_size(m.id);
}

// A frame of the current log generation, as computed from the spec.
struct Frame {
  std::uint64_t start;
  std::uint64_t end;
  std::uint64_t first_lsn;
  std::uint32_t count;
  Model after;  // the model once this frame is applied
};

RC_GTEST_PROP(WalRecoveryProperty, CrashAtAnyByteRecoversExactlyTheCompleteFrames, ()) {
  const auto dim = *rc::gen::inRange<std::size_t>(4, 9);
  const bool always = *rc::gen::arbitrary<bool>();
  const FsyncPolicy policy = always ? FsyncPolicy::always() : FsyncPolicy::never();
  test::TempDir dir;
  const PersistConfig cfg = wal_config(dir / "db.iqdb", policy);

  Model model;
  Model base = model;        // what the snapshot holds
  std::uint64_t lsn = 0;     // last LSN acknowledged
  std::uint64_t base_lsn = 0;  // last LSN folded into the snapshot
  std::vector<Frame> frames;
  std::uint64_t log_end = kLogHeader;

  const auto logged = [&](std::uint64_t bytes, std::uint32_t count) {
    frames.push_back(Frame{log_end, log_end + bytes, lsn + 1, count, model});
    log_end += bytes;
    lsn += count;
  };

  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(dim, DistanceMetric::Euclidean), cfg);
    const int n_ops = *rc::gen::inRange(1, 30);
    for (int step = 0; step < n_ops; ++step) {
      const int kind = *rc::gen::inRange(0, 100);
      if (kind < 35 || (kind >= 85 && kind < 90)) {  // insert; 85..89: of the wrong dimension
        Mut m{wal::Op::Insert, gen_id(), {}, gen_meta()};
        m.vec = kind < 35 ? gen_vec(dim) : gen_vec(*rc::gen::element<std::size_t>(0, dim - 1, dim + 1));
        const auto expect = apply_to_model(model, dim, m);
        const auto got = error_of([&] { db.insert(m.id, m.vec, m.meta); });
        RC_ASSERT(got == expect);
        if (!expect) logged(kFrameOverhead + op_size(m, dim), 1);
      } else if (kind < 55) {  // erase
        const Mut m{wal::Op::Erase, gen_erase_id(model), {}, std::nullopt};
        const auto expect = apply_to_model(model, dim, m);
        const auto got = error_of([&] { db.erase(m.id); });
        RC_ASSERT(got == expect);
        if (!expect) logged(kFrameOverhead + op_size(m, dim), 1);
      } else if (kind < 85) {  // a batch, valid as a whole or refused as a whole
        const int n = *rc::gen::inRange(1, 6);
        WriteBatch batch;
        Model after = model;
        std::optional<ErrorKind> expect;
        std::uint64_t bytes = kFrameOverhead;
        for (int i = 0; i < n; ++i) {
          const bool insert = *rc::gen::arbitrary<bool>();
          const Mut m = insert ? Mut{wal::Op::Insert, gen_id(),
                                     gen_vec(*rc::gen::inRange(0, 20) == 0 ? dim + 1 : dim), gen_meta()}
                               : Mut{wal::Op::Erase, gen_erase_id(after), {}, std::nullopt};
          if (insert) {
            batch.insert(m.id, m.vec, m.meta);
          } else {
            batch.erase(m.id);
          }
          const auto e = apply_to_model(after, dim, m);
          if (e && !expect) expect = e;
          bytes += op_size(m, dim);
        }
        const auto got = error_of([&] { db.write(batch); });
        RC_ASSERT(got == expect);
        if (!expect) {
          model = std::move(after);
          logged(bytes, static_cast<std::uint32_t>(n));
        }
      } else {  // checkpoint
        const FileHeader h = db.checkpoint();
        RC_ASSERT(h.last_lsn == lsn);
        base = model;
        base_lsn = lsn;
        frames.clear();
        log_end = kLogHeader;
      }
      RC_ASSERT(db.last_lsn() == lsn);
    }
    db.close();
  }

  // The log is laid out exactly as computed: header, then our frames back to
  // back, then nothing but zero padding (space grown ahead of the frames).
  const std::vector<std::byte> log = test::read_file(log_of(cfg));
  RC_ASSERT(log.size() >= log_end);
  RC_ASSERT(all_zero_from(log, log_end));
  RC_ASSERT(le32(log, 8) == 2u);
  RC_ASSERT(le64(log, 24) == base_lsn + 1);
  for (const Frame& f : frames) {
    RC_ASSERT(le32(log, f.start) == f.end - f.start - 8);
    RC_ASSERT(le64(log, f.start + 8) == f.first_lsn);
    RC_ASSERT(le32(log, f.start + 16) == f.count);
  }

  // Crash: the log cut at a random byte at or after its header.
  std::uint64_t cut;
  const std::uint64_t top = std::min<std::uint64_t>(log_end + 8, log.size());
  if (!frames.empty() && *rc::gen::inRange(0, 3) == 0) {
    const std::uint64_t any_end = frames[*rc::gen::inRange<std::size_t>(0, frames.size())].end;
    const std::uint64_t b = *rc::gen::element(kLogHeader, frames.back().end, any_end);
    const int delta = *rc::gen::inRange(-1, 2);
    cut = std::clamp<std::uint64_t>(b + static_cast<std::uint64_t>(static_cast<std::int64_t>(delta)), kLogHeader, top);
  } else {
    cut = *rc::gen::inRange<std::uint64_t>(kLogHeader, top + 1);
  }
  Model expect = base;
  std::uint64_t expect_lsn = base_lsn;
  std::uint64_t expect_end = kLogHeader;
  for (const Frame& f : frames) {
    if (f.end > cut) break;
    expect = f.after;
    expect_lsn = f.first_lsn + f.count - 1;
    expect_end = f.end;
  }
  RC_TAG(cut >= log_end ? "whole log" : cut == expect_end ? "cut at a frame boundary" : "cut inside a frame");

  test::TempDir crash;
  const PersistConfig ccfg = wal_config(crash / "db.iqdb", policy);
  test::write_file(ccfg.path, test::read_file(cfg.path));
  test::write_file(log_of(ccfg), std::vector<std::byte>(log.begin(), log.begin() + static_cast<std::ptrdiff_t>(cut)));
  const VectorId fresh(1000);
  {
    auto db = PersistedIndex<FlatIndex>::load(ccfg);
    RC_ASSERT(diff(db.index(), expect) == "");
    RC_ASSERT(db.last_lsn() == expect_lsn);
    // The torn bytes are gone before anything new is appended.
    const std::vector<std::byte> cut_log = test::read_file(log_of(ccfg));
    RC_ASSERT(cut_log.size() >= expect_end);
    RC_ASSERT(all_zero_from(cut_log, expect_end));
    // A write after recovery survives the next recovery.
    db.insert(fresh, std::vector<float>(dim, 0.5f));
    db.close();
  }
  expect[fresh] = Entry{std::vector<float>(dim, 0.5f), std::nullopt};
  auto db = PersistedIndex<FlatIndex>::load(ccfg);
  RC_ASSERT(diff(db.index(), expect) == "");
  RC_ASSERT(db.last_lsn() == expect_lsn + 1);
}

// ---------------------------------------------------------------- torn tail

// Five single inserts, then the offsets of their frames (computed).
struct FiveFrames {
  std::vector<std::uint64_t> start;  // start[i]: offset of frame i (0-based)
  std::uint64_t end = 0;
  Model model;
};

FiveFrames write_five(const PersistConfig& cfg) {
  FiveFrames out;
  std::uint64_t at = kLogHeader;
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
  for (std::uint64_t i = 1; i <= 5; ++i) {
    std::optional<Metadata> meta;
    if (i % 2 == 0) meta = Metadata{{"i", Value(static_cast<std::int64_t>(i))}, {"s", Value("x")}};
    db.insert(i, vec_of(i), meta);
    out.model[VectorId(i)] = Entry{vec_of(i), meta};
    out.start.push_back(at);
    at += kFrameOverhead + insert_size(VectorId(i), 4, meta);
  }
  out.end = at;
  db.close();
  return out;
}

struct TornCase {
  const char* name;
  FsyncPolicy policy;
  // Damage frame 5 (whose bytes are [start, end)) in the log bytes.
  void (*damage)(std::vector<std::byte>& log, std::uint64_t start, std::uint64_t end);
};

class WalTornTail : public ::testing::TestWithParam<TornCase> {};

TEST_P(WalTornTail, CutBeforeNewAppendsSoLaterWritesSurvive) {
  test::TempDir dir;
  const PersistConfig cfg = wal_config(dir / "db.iqdb", GetParam().policy);
  FiveFrames w = write_five(cfg);
  std::vector<std::byte> log = test::read_file(log_of(cfg));
  ASSERT_GE(log.size(), w.end);
  GetParam().damage(log, w.start[4], w.end);
  test::write_file(log_of(cfg), log);

  Model model = w.model;
  model.erase(VectorId(5));
  {
    auto db = PersistedIndex<FlatIndex>::load(cfg);
    EXPECT_EQ(diff(db.index(), model), "");
    EXPECT_EQ(db.last_lsn(), 4u);
    // Reopen cut the damaged bytes off: the file ends at the last good frame.
    EXPECT_EQ(fs::file_size(log_of(cfg)), w.start[4]);
    for (std::uint64_t i = 10; i < 13; ++i) {
      db.insert(i, vec_of(i));
      model[VectorId(i)] = Entry{vec_of(i), std::nullopt};
    }
    db.close();
  }
  // No damaged bytes between frames: a strict scan sees 7 intact frames, the
  // new ones right where the torn frame began.
  std::vector<std::uint64_t> offsets;
  const auto scan = wal::scan_log(default_file_system(), log_of(cfg),
                                  [&](const wal::RecordView& r) { offsets.push_back(r.frame_offset); });
  EXPECT_EQ(scan.torn_tail_bytes, 0u);
  ASSERT_EQ(offsets.size(), 7u);
  EXPECT_EQ(offsets[4], w.start[4]);
  EXPECT_EQ(offsets[5], w.start[4] + kFrameOverhead + insert_size(VectorId(10), 4, std::nullopt));

  auto db = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(diff(db.index(), model), "");
  EXPECT_EQ(db.last_lsn(), 7u);
}

INSTANTIATE_TEST_SUITE_P(
    Damage, WalTornTail,
    ::testing::Values(
        // The file ends half way through the frame (Never: no preallocation).
        TornCase{"TruncatedMidFrame", FsyncPolicy::never(),
                 [](std::vector<std::byte>& log, std::uint64_t start, std::uint64_t end) {
                   log.resize(start + (end - start) / 2);
                 }},
        // Only the frame header reached the file.
        TornCase{"OnlyFrameHeader", FsyncPolicy::never(),
                 [](std::vector<std::byte>& log, std::uint64_t start, std::uint64_t) { log.resize(start + 8); }},
        // The second half of the frame never reached the preallocated file:
        // zeros follow, the file size does not tell.
        TornCase{"PartialWriteIntoPreallocation", FsyncPolicy::always(),
                 [](std::vector<std::byte>& log, std::uint64_t start, std::uint64_t end) {
                   std::fill(log.begin() + static_cast<std::ptrdiff_t>(start + (end - start) / 2),
                             log.begin() + static_cast<std::ptrdiff_t>(end), std::byte{0});
                 }}),
    [](const ::testing::TestParamInfo<TornCase>& i) { return std::string(i.param.name); });

// ---------------------------------------------------------------- mid-log corruption

// Under Never no frame is ever known durable: a damaged frame followed by
// intact ones is what a power loss that persisted writes out of order leaves,
// so it is a torn tail (dropped, and reported as such), not corruption.
TEST(WalUnsyncedHole, UnderNeverADamagedFrameBeforeIntactOnesIsATornTail) {
  test::TempDir dir;
  const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::never());
  std::uint64_t frame2 = 0;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
    for (std::uint64_t i = 1; i <= 5; ++i) db.insert(i, std::vector<float>{1, 2, 3, static_cast<float>(i)});
  }
  std::vector<std::byte> log = test::read_file(log_of(cfg));
  frame2 = 40 + le32(log, 40) + 8;  // after the header and frame 1
  std::fill(log.begin() + static_cast<std::ptrdiff_t>(frame2), log.begin() + static_cast<std::ptrdiff_t>(frame2 + 20),
            std::byte{0});  // frame 2's head never reached the disk
  test::write_file(log_of(cfg), log);
  const auto report = wal::scan_log(default_file_system(), log_of(cfg), {}, wal::ScanMode::Strict);
  EXPECT_EQ(report.records, 1u);
  EXPECT_EQ(report.unsynced_frames_dropped, 3u);
  EXPECT_FALSE(report.corrupt_offset.has_value());
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  EXPECT_EQ(db.index().size(), 1u);
  EXPECT_TRUE(db.index().contains(1));
}

class WalMidLogCorruption : public ::testing::TestWithParam<std::uint64_t> {};

// Flip one byte of frame 2 of 5 (at the given offset within the frame).
// Under Always, frames 3..5 record frame 2 as durable (synced_lsn), so the
// damage cannot be a power loss: it is corruption.
TEST_P(WalMidLogCorruption, IsReportedAtTheFrameAndRepairKeepsThePrefix) {
  test::TempDir dir;
  const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::always());
  const FiveFrames w = write_five(cfg);
  std::vector<std::byte> log = test::read_file(log_of(cfg));
  const std::uint64_t frame2 = w.start[1];
  const std::uint64_t in_frame = std::min(GetParam(), w.start[2] - frame2 - 1);
  log[frame2 + in_frame] ^= std::byte{0x5a};
  test::write_file(log_of(cfg), log);

  try {
    PersistedIndex<FlatIndex>::load(cfg);
    FAIL() << "a log with a damaged frame in the middle loaded";
  } catch (const PersistError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::CorruptLog) << e.what();
    EXPECT_EQ(e.offset(), std::optional<std::uint64_t>(frame2)) << e.what();
  }

  const auto report = wal::scan_log(default_file_system(), log_of(cfg), {}, wal::ScanMode::Report);
  EXPECT_EQ(report.corrupt_offset, std::optional<std::uint64_t>(frame2));
  EXPECT_EQ(report.frames, 1u);
  EXPECT_EQ(report.frames_after_corruption, 3u);
  EXPECT_EQ(report.records_after_corruption, 3u);
  EXPECT_EQ(report.valid_bytes, frame2);

  const auto repaired = wal::repair_log(default_file_system(), log_of(cfg));
  EXPECT_EQ(repaired.corrupt_offset, std::optional<std::uint64_t>(frame2));
  EXPECT_EQ(fs::file_size(log_of(cfg)), frame2);

  auto db = PersistedIndex<FlatIndex>::load(cfg);
  Model first;
  first[VectorId(1)] = w.model.at(VectorId(1));
  EXPECT_EQ(diff(db.index(), first), "");
  EXPECT_EQ(db.last_lsn(), 1u);
}

// `wal repair` finds the writer's lock by the log's name (X.wal: X.lock);
// a log reached by another name (a hard link) would escape it. The log
// file's own lock, held shared by the writer, refuses such a repair, which
// before cut a live writer's log (a tail of garbage after its records)
// while the writer went on. Once the writer closed, the repair by that
// name goes ahead, and nothing acknowledged is lost.
TEST(WalRepair, ALiveWritersLogIsNotRepairedUnderAnotherName) {
  test::TempDir dir;
  const PersistConfig cfg = wal_config(dir / "db.iqdb", FsyncPolicy::always());
  Model model;
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
  for (std::uint64_t id = 1; id <= 5; ++id) {
    const std::vector<float> v{static_cast<float>(id), 0.5f, -1.0f, 2.0f};
    db.insert(id, v);
    model[VectorId(id)] = Entry{v, std::nullopt};
  }
  const fs::path other = dir / "other.wal";
  fs::create_hard_link(log_of(cfg), other);
  {
    // Garbage past the records: a torn tail to the repair.
    std::vector<std::byte> log = test::read_file(log_of(cfg));
    const std::size_t at =
        static_cast<std::size_t>(wal::scan_log(default_file_system(), other, {}, wal::ScanMode::Report).valid_bytes) +
        4096;
    ASSERT_LT(at + 8, log.size());
    for (std::size_t i = 0; i < 8; ++i) log[at + i] = std::byte{0xa5};
    std::ofstream(other, std::ios::binary | std::ios::in | std::ios::out)
        .seekp(static_cast<std::streamoff>(at))
        .write(reinterpret_cast<const char*>(log.data() + at), 8);
  }
  const std::vector<std::byte> before = test::read_file(log_of(cfg));
  const auto e = error_of([&] { (void)wal::repair_log(default_file_system(), other); });
  EXPECT_EQ(e, std::optional<ErrorKind>(ErrorKind::Locked)) << "a live writer's log was repaired through a hard link";
  EXPECT_TRUE(test::read_file(log_of(cfg)) == before) << "the log changed";
  for (std::uint64_t id = 6; id <= 7; ++id) {
    const std::vector<float> v{static_cast<float>(id), 1.5f, 1.0f, -2.0f};
    db.insert(id, v);
    model[VectorId(id)] = Entry{v, std::nullopt};
  }
  db.close();
  (void)wal::repair_log(default_file_system(), other);  // the writer is gone: allowed
  EXPECT_EQ(diff(PersistedIndex<FlatIndex>::load(cfg).index(), model), "");
}

// The length field, the CRC, the LSN, the record count, the op byte, the
// vector, the last byte of the frame.
INSTANTIATE_TEST_SUITE_P(ByteInFrame, WalMidLogCorruption, ::testing::Values(0u, 3u, 4u, 8u, 16u, 20u, 40u, 1000u));

// ---------------------------------------------------------------- log generations

TEST(WalGenerations, FrameOfAnEarlierLogIsNeverReplayed) {
  for (const FsyncPolicy policy : {FsyncPolicy::never(), FsyncPolicy::always()}) {
    SCOPED_TRACE(policy == FsyncPolicy::never() ? "never" : "always");
    test::TempDir dir;
    const PersistConfig cfg = wal_config(dir / "db.iqdb", policy);
    // Old generation: insert 1, insert 2 (its frame is the one we splice
    // later), erase 2. Then a checkpoint, then insert 3 in the new generation.
    const std::uint64_t f1 = kLogHeader;
    const std::uint64_t f2 = f1 + kFrameOverhead + insert_size(VectorId(1), 4, std::nullopt);
    const std::uint64_t f2_end = f2 + kFrameOverhead + insert_size(VectorId(2), 4, std::nullopt);
    std::vector<std::byte> old_log;
    {
      auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
      db.insert(1, vec_of(1));
      db.insert(2, vec_of(2));
      db.erase(2);
      db.sync();
      old_log = test::read_file(log_of(cfg));
      db.checkpoint();
      db.insert(3, vec_of(3));
      db.close();
    }
    const std::uint64_t new_end = kLogHeader + kFrameOverhead + insert_size(VectorId(3), 4, std::nullopt);
    std::vector<std::byte> log = test::read_file(log_of(cfg));
    ASSERT_GE(log.size(), new_end);
    ASSERT_GE(old_log.size(), f2_end);
    // Splice: the old "insert 2" frame right after the new log's last frame.
    const std::vector<std::byte> old_frame(old_log.begin() + static_cast<std::ptrdiff_t>(f2),
                                           old_log.begin() + static_cast<std::ptrdiff_t>(f2_end));
    if (log.size() < new_end + old_frame.size()) log.resize(new_end + old_frame.size());
    std::copy(old_frame.begin(), old_frame.end(), log.begin() + static_cast<std::ptrdiff_t>(new_end));
    test::write_file(log_of(cfg), log);

    // The engine treats the foreign frame (wrong salt) as a torn tail: the
    // load succeeds, cuts it off, and nothing of the old generation appears.
    Model model;
    model[VectorId(1)] = Entry{vec_of(1), std::nullopt};
    model[VectorId(3)] = Entry{vec_of(3), std::nullopt};
    auto db = PersistedIndex<FlatIndex>::load(cfg);
    EXPECT_EQ(diff(db.index(), model), "");
    EXPECT_EQ(db.last_lsn(), 4u);
    const std::vector<std::byte> after = test::read_file(log_of(cfg));
    EXPECT_TRUE(all_zero_from(after, new_end));
  }
}

TEST(WalGenerations, SnapshotOlderThanTheLogIsRefused) {
  for (const bool more_writes : {false, true}) {
    SCOPED_TRACE(more_writes ? "records after the checkpoint" : "empty log");
    test::TempDir dir;
    const PersistConfig cfg = wal_config(dir / "db.iqdb");
    std::vector<std::byte> old_snapshot;
    {
      auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
      for (std::uint64_t i = 1; i <= 3; ++i) db.insert(i, vec_of(i));
      db.checkpoint();  // last LSN 3
      old_snapshot = test::read_file(cfg.path);
      for (std::uint64_t i = 4; i <= 6; ++i) db.insert(i, vec_of(i));
      db.checkpoint();  // last LSN 6; the log starts at 7
      if (more_writes) db.insert(7, vec_of(7));
      db.close();
    }
    test::write_file(cfg.path, old_snapshot);  // an operator restores a backup
    try {
      PersistedIndex<FlatIndex>::load(cfg);
      FAIL() << "a snapshot older than its log loaded";
    } catch (const PersistError& e) {
      EXPECT_EQ(e.kind(), ErrorKind::CorruptLog) << e.what();
    }
  }
}

}  // namespace
}  // namespace iqdb::persist
