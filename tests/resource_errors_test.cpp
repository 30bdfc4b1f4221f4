// Running out of memory or threads is not damage, and it never costs the
// caller what it passed in:
//  - a load that cannot get memory or a thread while decoding a good
//    snapshot, or while replaying its log, fails with Io (ENOMEM, EAGAIN)
//    naming the file, never InvalidPayload or a std::bad_alloc, and the
//    same load succeeds once the shortage is over;
//  - where a thread would only speed a load up (FlatIndex's id table, the
//    log's read-ahead), the load goes on without it;
//  - open_with / load whose flusher or checkpointer thread cannot be
//    started throw Io (EAGAIN), and open_with hands its index back;
//    start_following likewise leaves the replica as it was.
// The shortages are injected deterministically: an index type whose
// load_from or insert throws std::bad_alloc or std::system_error (EAGAIN)
// when armed, and this program's own pthread_create
// (support/no_threads.hpp), which refuses every thread, as a process at its
// pids limit sees, while a NoThreads lives. Each index loaded is compared
// with a model of what was written (test::Model).
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iqdb/persist.hpp>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "support/no_threads.hpp"
#include "support/test_util.hpp"
#include "support/wal_test_util.hpp"

namespace iqdb::persist {
namespace {

namespace fs = std::filesystem;
using test::Entry;
using test::Model;

using test::NoThreads;

// Memory, Thread: a resource runs short. Refusal, Foreign: an index type of
// a user's throws its own std::exception, or something that is not one.
enum class Shortage { None, Memory, Thread, Refusal, Foreign };

const char* name_of(Shortage s) { return s == Shortage::Memory ? "out of memory" : "no thread"; }
int errno_of(Shortage s) { return s == Shortage::Memory ? ENOMEM : EAGAIN; }

void fall_short(Shortage s) {
  if (s == Shortage::Refusal) throw std::invalid_argument("this index refuses it");
  if (s == Shortage::Foreign) throw 42;
  if (s == Shortage::Memory) throw std::bad_alloc();
  if (s == Shortage::Thread) {
    throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again), "std::thread");
  }
}

// A FlatIndex that runs short where a test says: at the start of
// load_from (nothing of the payload read), at its end (all of it read),
// or at the insert of one id (replay).
struct ShortIndex : FlatIndex {
  explicit ShortIndex(FlatIndex f) : FlatIndex(std::move(f)) {}
  static ShortIndex load_from(PayloadReader& r) {
    fall_short(at_load_start);
    FlatIndex f = FlatIndex::load_from(r);
    fall_short(at_load_end);
    return ShortIndex(std::move(f));
  }
  void insert(const VectorId& id, std::span<const float> v, std::optional<Metadata> m = {}) {
    if (insert_id != 0 && id == VectorId(insert_id)) fall_short(at_insert);
    FlatIndex::insert(id, v, std::move(m));
  }
  static inline Shortage at_load_start = Shortage::None;
  static inline Shortage at_load_end = Shortage::None;
  static inline Shortage at_insert = Shortage::None;
  static inline std::uint64_t insert_id = 0;
  // Disarms all when destroyed.
  struct Arm {
    Arm() = default;
    Arm(const Arm&) = delete;
    Arm& operator=(const Arm&) = delete;
    ~Arm() {
      at_load_start = at_load_end = at_insert = Shortage::None;
      insert_id = 0;
    }
  };
};
static_assert(Persistable<ShortIndex>);

std::vector<float> vec_of(std::uint64_t i, std::size_t dim = 4) {
  std::vector<float> v(dim);
  for (std::size_t k = 0; k < dim; ++k) v[k] = static_cast<float>(i) + static_cast<float>(k) * 0.25f;
  return v;
}

// Writes ids 1..n (every third with metadata) into `db` and the model.
template <class Db>
void fill(Db& db, Model& model, std::uint64_t from, std::uint64_t to, std::size_t dim = 4) {
  for (std::uint64_t i = from; i <= to; ++i) {
    std::optional<Metadata> meta;
    if (i % 3 == 0) meta = Metadata{{"n", Value(static_cast<std::int64_t>(i))}};
    db.insert(i, vec_of(i, dim), meta);
    model[VectorId(i)] = Entry{vec_of(i, dim), meta};
  }
}

// The PersistError f() throws; fails the test when it returns or throws
// anything else.
template <class F>
PersistError error_from(F&& f) {
  try {
    f();
  } catch (const PersistError& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a PersistError: " << e.what();
    return PersistError(ErrorKind::Unsupported, "(not a PersistError)");
  } catch (...) {
    ADD_FAILURE() << "not a std::exception";
    return PersistError(ErrorKind::Unsupported, "(not a std::exception)");
  }
  ADD_FAILURE() << "did not throw";
  return PersistError(ErrorKind::Unsupported, "(did not throw)");
}

// The seam itself: while NoThreads lives, std::thread and std::async throw
// std::system_error (EAGAIN), as at a pids limit.
TEST(ResourceErrors, ThreadsAreRefusedWhileNoThreadsLives) {
  {
    NoThreads none;
    try {
      std::thread t([] {});
      t.join();
      FAIL() << "a thread started: pthread_create is not this program's";
    } catch (const std::system_error& e) {
      EXPECT_EQ(e.code().value(), EAGAIN);
    }
    EXPECT_EQ(none.refused(), 1);
  }
  std::thread t([] {});
  t.join();
}

// A snapshot of 100 vectors at `path`, saved without the WAL; `model`
// receives them.
void save_hundred(const fs::path& path, Model& model) {
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), PersistConfig(path));
  fill(db, model, 1, 100);
  db.save();
}

// `e` reports shortage `s` of `file`: Io with its errno, naming the file
// and saying it is not damage.
void expect_not_damage(const PersistError& e, Shortage s, const fs::path& file) {
  EXPECT_EQ(to_string(e.kind()), "io") << e.what();
  EXPECT_EQ(e.sys_errno(), errno_of(s)) << e.what();
  EXPECT_EQ(e.path(), file);
  EXPECT_NE(std::string(e.what()).find(file.string()), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("not damage"), std::string::npos) << e.what();
}

// Out of memory, or no thread, while decoding a snapshot whose bytes are
// intact: Io with ENOMEM / EAGAIN naming the file, never InvalidPayload
// ("decoding the payload failed: std::bad_alloc" before the fix); with
// nothing of the payload read yet and with all of it read. Once memory is
// there again the same file loads.
TEST(ResourceErrors, AShortageDecodingAGoodSnapshotIsNotDamage) {
  test::TempDir dir;
  const fs::path path = dir / "db.iqdb";
  Model model;
  save_hundred(path, model);
  for (const Shortage s : {Shortage::Memory, Shortage::Thread}) {
    for (const bool at_start : {true, false}) {
      for (const bool map : {false, true}) {
        SCOPED_TRACE(std::string(name_of(s)) + (at_start ? ", before the payload" : ", after the payload") +
                     (map ? ", mapped" : ""));
        PersistConfig cfg(path);
        cfg.map_snapshot = map;
        const ShortIndex::Arm arm;
        (at_start ? ShortIndex::at_load_start : ShortIndex::at_load_end) = s;
        expect_not_damage(error_from([&] { (void)PersistedIndex<ShortIndex>::load(cfg); }), s, path);
      }
    }
  }
  const auto db = PersistedIndex<ShortIndex>::load(PersistConfig(path));
  EXPECT_EQ(test::diff(db.index(), model), "");
}

// A damaged payload is still reported as damage when the index runs out of
// memory on it: the checksum takes precedence.
TEST(ResourceErrors, DamageTakesPrecedenceOverAShortage) {
  test::TempDir dir;
  const fs::path path = dir / "db.iqdb";
  Model model;
  save_hundred(path, model);
  std::vector<std::byte> bytes = test::read_file(path);
  bytes[bytes.size() - 9] ^= std::byte{0x40};  // a vector component near the payload's end
  test::write_file(path, bytes);
  EXPECT_EQ(test::error_of([&] { (void)PersistedIndex<FlatIndex>::load(PersistConfig(path)); }),
            ErrorKind::ChecksumMismatch);
  for (const Shortage s : {Shortage::Memory, Shortage::Thread}) {
    SCOPED_TRACE(name_of(s));
    const ShortIndex::Arm arm;
    ShortIndex::at_load_start = s;
    const PersistError e = error_from([&] { (void)PersistedIndex<ShortIndex>::load(PersistConfig(path)); });
    EXPECT_EQ(to_string(e.kind()), "checksum_mismatch") << e.what();
  }
}

// Ids 1..20 in the snapshot, 21..40 in the log only: the model.
Model checkpointed_twenty_logged_twenty(const PersistConfig& cfg) {
  Model model;
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
  fill(db, model, 1, 20);
  db.checkpoint();
  fill(db, model, 21, 40);
  db.close();
  return model;
}

// Out of memory (the index growing) or no thread while the log is
// replayed, with the WAL and without: Io naming the log, not a
// std::bad_alloc escaping load(); nothing is changed, and the next load
// recovers every record.
TEST(ResourceErrors, AShortageReplayingTheLogIsATypedError) {
  test::TempDir dir;
  const fs::path path = dir / "db.iqdb";
  const PersistConfig cfg = test::wal_config(path, FsyncPolicy::always());
  const Model model = checkpointed_twenty_logged_twenty(cfg);
  fs::path log_path = path;
  log_path += ".wal";
  for (const Shortage s : {Shortage::Memory, Shortage::Thread}) {
    for (const bool wal : {true, false}) {
      SCOPED_TRACE(std::string(name_of(s)) + (wal ? ", with the WAL" : ", without"));
      PersistConfig c = cfg;
      c.wal_enabled = wal;
      const ShortIndex::Arm arm;
      ShortIndex::insert_id = 30;
      ShortIndex::at_insert = s;
      expect_not_damage(error_from([&] { (void)PersistedIndex<ShortIndex>::load(c); }), s, log_path);
    }
  }
  auto db = PersistedIndex<ShortIndex>::load(cfg);  // (the lock was let go)
  EXPECT_EQ(test::diff(db.index(), model), "");
  EXPECT_EQ(db.wal_stats().recovered_records, 20u);
}

// An index type of a user's whose load_from or insert throws its own
// exception (a std::exception, or something else: an int) on intact files:
// a typed PersistError naming the file, InvalidPayload for the snapshot and
// CorruptLog for the log's record, not the bare exception (the int used to
// pass through load() untranslated, and so did a std::exception from a
// replayed record). The files are unchanged: the next load has it all.
TEST(ResourceErrors, AnIndexThrowingItsOwnExceptionIsATypedError) {
  test::TempDir dir;
  const fs::path path = dir / "db.iqdb";
  const PersistConfig cfg = test::wal_config(path, FsyncPolicy::always());
  const Model model = checkpointed_twenty_logged_twenty(cfg);
  const fs::path log_path = fs::path(path.string() + ".wal");
  for (const Shortage s : {Shortage::Refusal, Shortage::Foreign}) {
    for (const bool wal : {true, false}) {
      SCOPED_TRACE(std::string(s == Shortage::Refusal ? "std::invalid_argument" : "an int") +
                   (wal ? ", with the WAL" : ", without"));
      PersistConfig c = cfg;
      c.wal_enabled = wal;
      {
        const ShortIndex::Arm arm;
        ShortIndex::at_load_end = s;
        const PersistError e = error_from([&] { (void)PersistedIndex<ShortIndex>::load(c); });
        EXPECT_EQ(to_string(e.kind()), "invalid_payload") << e.what();
        EXPECT_EQ(e.path(), path);
      }
      {
        const ShortIndex::Arm arm;
        ShortIndex::insert_id = 30;
        ShortIndex::at_insert = s;
        const PersistError e = error_from([&] { (void)PersistedIndex<ShortIndex>::load(c); });
        EXPECT_EQ(to_string(e.kind()), "corrupt_log") << e.what();
        EXPECT_EQ(e.path(), log_path);
        EXPECT_NE(std::string(e.what()).find("LSN 30"), std::string::npos) << e.what();
      }
    }
  }
  auto db = PersistedIndex<ShortIndex>::load(cfg);
  EXPECT_EQ(test::diff(db.index(), model), "");
}

// A replica catching up meets the same refusals and shortages as a load
// replaying the log: an index type's own exception (a std::exception, or
// something that is not one) is CorruptLog naming the log and the record's
// LSN, out of memory is Io (ENOMEM, not damage); the exception itself passed
// through catch_up() before the fix. Twice each: the first catch-up meets
// it following the log, the second loading anew (the first applied records
// it cannot vouch for). Once the index takes the record each replica
// catches up to everything written.
TEST(ResourceErrors, AReplicaCatchingUpReportsTheIndexRefusingARecordTyped) {
  test::TempDir dir;
  const fs::path path = dir / "db.iqdb";
  const fs::path log_path = fs::path(path.string() + ".wal");
  const PersistConfig cfg = test::wal_config(path, FsyncPolicy::always());
  Model model;
  auto db = PersistedIndex<ShortIndex>::open_with(ShortIndex(FlatIndex(4, DistanceMetric::Euclidean)), cfg);
  fill(db, model, 1, 10);
  const std::vector<Shortage> shortages{Shortage::Refusal, Shortage::Foreign, Shortage::Memory};
  std::vector<ReadReplica<ShortIndex>> replicas;
  for (std::size_t i = 0; i < shortages.size(); ++i) replicas.push_back(ReadReplica<ShortIndex>::open(cfg));
  fill(db, model, 11, 20);
  for (std::size_t i = 0; i < shortages.size(); ++i) {
    const Shortage s = shortages[i];
    const ShortIndex::Arm arm;
    ShortIndex::insert_id = 15;
    ShortIndex::at_insert = s;
    for (const char* round : {"following the log", "loading anew"}) {
      SCOPED_TRACE(std::string(s == Shortage::Refusal   ? "std::invalid_argument"
                               : s == Shortage::Foreign ? "an int"
                                                        : "std::bad_alloc") +
                   ", " + round);
      const PersistError e = error_from([&] { (void)replicas[i].catch_up(); });
      if (s == Shortage::Memory) {
        expect_not_damage(e, s, log_path);
      } else {
        EXPECT_EQ(to_string(e.kind()), "corrupt_log") << e.what();
        EXPECT_EQ(e.path(), log_path);
      }
      EXPECT_NE(std::string(e.what()).find("LSN 15"), std::string::npos) << e.what();
    }
  }
  for (auto& replica : replicas) {
    (void)replica.catch_up();
    EXPECT_EQ(replica.last_lsn(), 20u);
    replica.read([&](const ShortIndex& ix) { EXPECT_EQ(test::diff(ix, model), ""); });
  }
}

// No thread to be had during a load: FlatIndex builds its id table on the
// loading thread (std::async threw std::system_error, reported as
// InvalidPayload, before the fix), and the log is replayed without its
// read-ahead. With and without the WAL (under Never: no flusher).
TEST(ResourceErrors, ALoadGoesOnWithoutThreads) {
  test::TempDir dir;
  constexpr std::size_t kDim = 256;  // a log of ~6 MB: more than one read-ahead window
  const PersistConfig cfg = test::wal_config(dir / "db.iqdb", FsyncPolicy::never());
  Model model;
  {
    auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(kDim, DistanceMetric::Cosine), cfg);
    fill(db, model, 1, 500, kDim);
    db.checkpoint();
    fill(db, model, 501, 6500, kDim);
    db.close();
  }
  for (const bool wal : {true, false}) {
    SCOPED_TRACE(wal ? "with the WAL" : "without");
    PersistConfig c = cfg;
    c.wal_enabled = wal;
    NoThreads none;
    auto db = PersistedIndex<FlatIndex>::load(c);
    EXPECT_GE(none.refused(), 2) << "the id table's thread and the log's read-ahead";
    EXPECT_EQ(test::diff(db.index(), model), "");
    EXPECT_EQ(db.wal_stats().recovered_records, 6000u);
    // And the index works: its id table holds every id.
    EXPECT_TRUE(db.index().contains(VectorId(1)));
    EXPECT_TRUE(db.index().contains(VectorId(6500)));
    EXPECT_THROW(db.insert(7, vec_of(7, kDim)), PersistError);  // a duplicate, found by the table
  }
}

struct ThreadCase {
  const char* name;
  FsyncPolicy policy;
  std::uint64_t checkpoint_log_bytes;
  const char* thread;  // in what()
};

std::vector<ThreadCase> thread_cases() {
  return {{"always, automatic checkpoints", FsyncPolicy::always(), 65536, "automatic checkpoint"},
          {"periodic", FsyncPolicy::periodic(std::chrono::milliseconds(10)), 0, "flusher"},
          {"periodic, automatic checkpoints", FsyncPolicy::periodic(std::chrono::milliseconds(10)), 65536,
           "flusher"}};
}

// open_with whose flusher or checkpointer thread cannot be started: Io
// (EAGAIN) naming the file, and the index passed in holds what it held
// (under Always with checkpoint_log_bytes it was destroyed, and the error
// was a std::system_error, before the fix). Once threads can be had, the
// same index opens there (the lock was let go).
TEST(ResourceErrors, OpenWithHandsTheIndexBackWhenNoThreadStarts) {
  for (const ThreadCase& t : thread_cases()) {
    SCOPED_TRACE(t.name);
    test::TempDir dir;
    PersistConfig cfg = test::wal_config(dir / "db.iqdb", t.policy);
    cfg.checkpoint_log_bytes = t.checkpoint_log_bytes;
    FlatIndex ix(4, DistanceMetric::Euclidean);
    Model model;
    fill(ix, model, 1, 100);
    {
      NoThreads none;
      const PersistError e = error_from([&] { (void)PersistedIndex<FlatIndex>::open_with(std::move(ix), cfg); });
      EXPECT_EQ(to_string(e.kind()), "io") << e.what();
      EXPECT_EQ(e.sys_errno(), EAGAIN) << e.what();
      EXPECT_NE(std::string(e.what()).find(t.thread), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(cfg.path.string()), std::string::npos) << e.what();
      EXPECT_GE(none.refused(), 1);
    }
    EXPECT_EQ(ix.size(), 100u);
    EXPECT_EQ(test::diff(ix, model), "");
    // The failed call got as far as its snapshot, which holds the index: a
    // second open_with would replace it, refused unless discard_log.
    EXPECT_EQ(test::diff(PersistedIndex<FlatIndex>::load(test::wal_config(cfg.path, FsyncPolicy::never())).index(),
                         model),
              "");
    EXPECT_EQ(to_string(error_from([&] { (void)PersistedIndex<FlatIndex>::open_with(ix, cfg); }).kind()),
              "would_lose_writes");
    cfg.discard_log = true;
    auto db = PersistedIndex<FlatIndex>::open_with(std::move(ix), cfg);
    fill(db, model, 101, 110);
    db.close();
    const auto again = PersistedIndex<FlatIndex>::load(cfg);
    EXPECT_EQ(test::diff(again.index(), model), "");
  }
}

// load (with the WAL) whose flusher or checkpointer thread cannot be
// started: Io (EAGAIN), not a std::system_error; the files are as they
// were, and the next load has every record.
TEST(ResourceErrors, ALoadWhoseThreadCannotStartIsATypedError) {
  for (const ThreadCase& t : thread_cases()) {
    SCOPED_TRACE(t.name);
    test::TempDir dir;
    PersistConfig cfg = test::wal_config(dir / "db.iqdb", t.policy);
    cfg.checkpoint_log_bytes = t.checkpoint_log_bytes;
    Model model;
    {
      auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
      fill(db, model, 1, 50);
      db.close();
    }
    {
      NoThreads none;
      const PersistError e = error_from([&] { (void)PersistedIndex<FlatIndex>::load(cfg); });
      EXPECT_EQ(to_string(e.kind()), "io") << e.what();
      EXPECT_EQ(e.sys_errno(), EAGAIN) << e.what();
      EXPECT_NE(std::string(e.what()).find(t.thread), std::string::npos) << e.what();
    }
    const auto db = PersistedIndex<FlatIndex>::load(cfg);
    EXPECT_EQ(test::diff(db.index(), model), "");
  }
}

// start_following without a thread: Io (EAGAIN); the replica still
// catches up when asked, and follows once a thread can be had.
TEST(ResourceErrors, StartFollowingWithoutAThreadIsATypedError) {
  test::TempDir dir;
  const PersistConfig cfg = test::wal_config(dir / "db.iqdb", FsyncPolicy::always());
  Model model;
  auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(4, DistanceMetric::Euclidean), cfg);
  fill(db, model, 1, 10);
  auto replica = ReadReplica<FlatIndex>::open(cfg);
  {
    NoThreads none;
    const PersistError e = error_from([&] { replica.start_following(std::chrono::milliseconds(5)); });
    EXPECT_EQ(to_string(e.kind()), "io") << e.what();
    EXPECT_EQ(e.sys_errno(), EAGAIN) << e.what();
    EXPECT_NE(std::string(e.what()).find("follower"), std::string::npos) << e.what();
  }
  fill(db, model, 11, 20);
  EXPECT_EQ(replica.catch_up(), 10u);
  replica.read([&](const FlatIndex& ix) { EXPECT_EQ(test::diff(ix, model), ""); });
  replica.start_following(std::chrono::milliseconds(5));
  replica.stop_following();
}

}  // namespace
}  // namespace iqdb::persist
