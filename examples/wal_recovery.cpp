// Write-ahead logging: acknowledged mutations survive a crash without save().
//   example_wal_recovery [FILE]
// The first run inserts and then "crashes" (exits without saving); run it
// again and it recovers everything from the log.
#include <iqdb/persist.hpp>

#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  using namespace iqdb::persist;
  PersistConfig cfg(argc > 1 ? argv[1] : "wal-example.iqdb");
  cfg.wal_enabled = true;
  cfg.fsync_policy = FsyncPolicy::always();  // durable when insert() returns

  try {
    if (!default_file_system().exists(cfg.path)) {
      auto db = PersistedIndex<FlatIndex>::open_with(FlatIndex(3, DistanceMetric::Euclidean), cfg);
      for (std::uint64_t id = 1; id <= 100; ++id) {
        const float f = static_cast<float>(id);
        db.insert(id, std::vector<float>{f, f, f});
      }
      WriteBatch batch;  // all or nothing, one fsync
      batch.erase(1).erase(2).insert(1000, std::vector<float>{0, 0, 0});
      db.write(batch);
      std::printf("logged %llu mutations; exiting without save (run me again)\n",
                  static_cast<unsigned long long>(db.last_lsn()));
      std::fflush(stdout);
      std::_Exit(0);  // a crash: no destructors, no checkpoint
    }
    auto db = PersistedIndex<FlatIndex>::load(cfg);  // snapshot + log replay
    std::printf("recovered %llu vectors up to LSN %llu\n", static_cast<unsigned long long>(db.index().size()),
                static_cast<unsigned long long>(db.last_lsn()));
    db.checkpoint();  // fold the log into a new snapshot
    return db.index().size() == 99 ? 0 : 1;
  } catch (const PersistError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
