// Fuzz target "wal_replay": PersistedIndex<FlatIndex>::load in WAL mode, a
// fixed valid version-3 snapshot (fuzz_support.hpp: wal_base_index) beside
// a fuzzed log, on an in-memory file system; then a write, a close and
// reopening, as an application would after recovery.
//
// Input: flags u8, then the log file.
//   bit 0  recompute the v2 header CRC and every frame CRC (fix_log)
//   bit 1  the snapshot claims last_lsn 2 instead of 0 (records 1 and 2 of
//          the log are then already folded into it)
//   bits 2+5  both set: FsyncPolicy::always (group commit, and 1 MiB of log
//          preallocation, which makes a run ~50 times slower: hence two bits)
//          instead of never
//   bit 3  after recovery, insert a new vector whose metadata key and value
//          are the last bytes of the input
//   bit 4  checkpoint after the first reopen, then reopen once more
// Oracles: only PersistError escapes. A model replays the records that a
// Strict scan of the log delivers onto the snapshot's contents, by the
// format's rules (records after the snapshot's LSN, contiguous, each one
// applicable): load succeeds exactly when the model does, with the same
// vectors, metadata and last LSN. After a successful load the log holds no
// torn tail or corruption; an acknowledged insert survives close + reopen;
// every reopen (and a checkpoint) gives back the same contents.
#include "fuzz_support.hpp"

namespace iqdb::persist::fuzz {
namespace wal_replay_target {

struct Entry {
  std::vector<float> vec;
  std::optional<Metadata> meta;
};
using Model = std::map<VectorId, Entry>;

Model model_of(const FlatIndex& ix) {
  Model m;
  for (std::size_t row = 0; row < ix.size(); ++row) {
    const auto v = ix.vector_at(row);
    const Metadata* md = ix.metadata_at(row);
    m[ix.id_at(row)] = Entry{{v.begin(), v.end()}, md ? std::optional<Metadata>(*md) : std::nullopt};
  }
  return m;
}

std::string diff(const Model& want, const Model& got) {
  if (want.size() != got.size()) return "size " + std::to_string(got.size()) + ", model " + std::to_string(want.size());
  for (const auto& [id, e] : want) {
    const auto it = got.find(id);
    if (it == got.end()) return "missing " + id.to_string();
    if (e.vec.size() != it->second.vec.size() ||
        (!e.vec.empty() && std::memcmp(e.vec.data(), it->second.vec.data(), e.vec.size() * sizeof(float)) != 0)) {
      return "vector of " + id.to_string() + " differs";
    }
    if (e.meta != it->second.meta) return "metadata of " + id.to_string() + " differs";
  }
  return {};
}

struct Rec {
  std::optional<std::uint64_t> lsn;
  wal::Op op;
  VectorId id;
  std::vector<float> vec;
  std::optional<Metadata> meta;
};

// What recovery must give: the snapshot plus the log's records after
// `folded`, in order, with no gap, each applicable. nullopt: recovery must fail.
std::optional<Model> expected_recovery(MemFileSystem& mfs, const Model& base, std::uint64_t folded,
                                       std::uint64_t dim, std::uint64_t& last_lsn) {
  std::vector<Rec> recs;
  wal::ScanResult scan;
  try {
    scan = wal::scan_log(
        mfs, kLogPath,
        [&](const wal::RecordView& r) {
          recs.push_back(Rec{r.lsn, r.op, *r.id, {r.vector.begin(), r.vector.end()},
                             r.metadata ? std::optional<Metadata>(*r.metadata) : std::nullopt});
        },
        wal::ScanMode::Strict);
  } catch (const PersistError&) {
    return std::nullopt;
  }
  Model m = base;
  std::uint64_t expect = folded + 1;
  std::uint64_t implicit = 0;
  for (Rec& r : recs) {
    const std::uint64_t lsn = r.lsn ? *r.lsn : ++implicit;
    if (lsn < expect) continue;
    if (lsn != expect) return std::nullopt;
    if (r.op == wal::Op::Insert) {
      if (r.vec.size() != dim || m.count(r.id) != 0) return std::nullopt;
      m[r.id] = Entry{std::move(r.vec), std::move(r.meta)};
    } else {
      if (m.erase(r.id) == 0) return std::nullopt;
    }
    ++expect;
  }
  if (scan.version == 2 && scan.base_lsn > folded + 1) return std::nullopt;
  last_lsn = expect - 1;
  return m;
}

void check_log_clean(MemFileSystem& mfs, const char* when) {
  const wal::ScanResult r = wal::scan_log(mfs, kLogPath, {}, wal::ScanMode::Report);
  IQDB_FUZZ_CHECK(r.torn_tail_bytes == 0 && !r.corrupt_offset, std::string("log left damaged ") + when);
}

void run(std::span<const std::uint8_t> in) {
  if (in.empty()) return;
  const std::uint8_t flags = in[0];
  Bytes log = to_bytes(in.subspan(1));
  if ((flags & 1) != 0) fix_log(log);
  const std::uint64_t folded = (flags & 2) != 0 ? 2 : 0;
  static const Bytes kSnap0 = wal_base_snapshot(0);
  static const Bytes kSnap2 = wal_base_snapshot(2);

  MemFileSystem mfs;
  mfs.put(kDbPath, folded == 0 ? kSnap0 : kSnap2);
  mfs.put(kLogPath, log);
  PersistConfig cfg(kDbPath);
  cfg.file_system = &mfs;
  cfg.wal_enabled = true;
  cfg.fsync_policy = (flags & 0x24) == 0x24 ? FsyncPolicy::always() : FsyncPolicy::never();

  const FlatIndex base = wal_base_index();
  std::uint64_t want_lsn = 0;
  std::optional<Model> want = expected_recovery(mfs, model_of(base), folded, base.dim(), want_lsn);

  std::optional<PersistedIndex<FlatIndex>> db;
  try {
    db.emplace(PersistedIndex<FlatIndex>::load(cfg));
  } catch (const PersistError&) {
  }
  IQDB_FUZZ_CHECK(db.has_value() == want.has_value(),
                  std::string("recovery ") + (db ? "succeeded" : "failed") + " where the model " +
                      (want ? "succeeds" : "fails"));
  if (!db) return;
  const std::string d = diff(*want, model_of(db->index()));
  IQDB_FUZZ_CHECK(d.empty(), "recovered index differs from the model: " + d);
  IQDB_FUZZ_CHECK(db->last_lsn() == want_lsn,
                  "last_lsn " + std::to_string(db->last_lsn()) + ", model " + std::to_string(want_lsn));
  check_log_clean(mfs, "after recovery");

  if ((flags & 8) != 0) {
    // A fresh id, a vector of the right dimension, metadata from the input.
    std::uint64_t raw = 0xF0F0F0F000000000ull;
    while (want->count(VectorId(raw)) != 0) ++raw;
    const std::size_t n = in.size();
    std::string key(reinterpret_cast<const char*>(in.data()) + (n > 4 ? n - 4 : 0), n > 4 ? 2 : 0);
    std::string val(reinterpret_cast<const char*>(in.data()) + (n > 2 ? n - 2 : 0), n > 2 ? 2 : 0);
    if (skip_known("wal-meta-utf8")) {
      // Finding wal-meta-utf8: keep the strings ASCII until it is fixed.
      for (std::string* s : {&key, &val}) {
        for (char& c : *s) c = static_cast<char>((static_cast<unsigned char>(c) & 0x3f) | 0x40);
      }
    }
    const float v[2] = {0.5f, -0.5f};
    const Metadata meta{{key, Value(val)}};
    bool acked = false;
    try {
      db->insert(raw, v, meta);
      acked = true;
    } catch (const PersistError&) {
      // Refused before logging: acceptable, as long as it is not recovered.
    }
    if (acked) {
      (*want)[VectorId(raw)] = Entry{{v[0], v[1]}, meta};
      ++want_lsn;
    }
  }
  db->close();
  db.reset();

  for (int round = 0; round < ((flags & 16) != 0 ? 2 : 1); ++round) {
    std::string why;
    std::optional<PersistedIndex<FlatIndex>> again = try_load<FlatIndex>(cfg, why);
    IQDB_FUZZ_CHECK(again.has_value(), "reopening after a successful recovery failed: " + why);
    const std::string d2 = diff(*want, model_of(again->index()));
    IQDB_FUZZ_CHECK(d2.empty(), "reopened index differs: " + d2);
    IQDB_FUZZ_CHECK(again->last_lsn() == want_lsn, "reopened last_lsn " + std::to_string(again->last_lsn()) +
                                                       ", expected " + std::to_string(want_lsn));
    check_log_clean(mfs, "after reopening");
    if (round == 0 && (flags & 16) != 0) again->checkpoint();
    again->close();
  }
}

}  // namespace wal_replay_target

inline void run_wal_replay(std::span<const std::uint8_t> in) { wal_replay_target::run(in); }

}  // namespace iqdb::persist::fuzz

IQDB_FUZZ_ENTRY(iqdb::persist::fuzz::run_wal_replay)
