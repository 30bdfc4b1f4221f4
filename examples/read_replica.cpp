// Read replicas and failover: a replica follows a writer's log (through a
// checkpoint), answers searches, and becomes the writer when the writer is
// gone.
//   example_read_replica [FILE]
// Each run adds 101 vectors to the index at FILE (created on the first run)
// and checks that the replica saw every one. On RADOS the same code runs
// with cfg = rados_persist_config(...) (docs/DISTRIBUTED.md); the writer and
// the replicas are then usually on different machines.
#include <iqdb/persist.hpp>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  using namespace iqdb::persist;
  PersistConfig cfg(argc > 1 ? argv[1] : "replica-example.iqdb");
  cfg.wal_enabled = true;  // the writer logs; replicas read that log

  try {
    auto writer = default_file_system().exists(cfg.path)
                      ? PersistedIndex<FlatIndex>::load(cfg)
                      : PersistedIndex<FlatIndex>::open_with(FlatIndex(3, DistanceMetric::Euclidean), cfg);
    const std::size_t before = writer.index().size();
    auto replica = ReadReplica<FlatIndex>::open(cfg);  // takes no lock: any number of them

    const std::uint64_t first = writer.last_lsn() + 1;
    for (std::uint64_t id = first; id < first + 100; ++id) {
      const float f = static_cast<float>(id);
      writer.insert(id, std::vector<float>{f, f, f});
      if (id == first + 49) writer.checkpoint();  // the replica follows it to the new log
    }
    replica.catch_up();  // or replica.start_following(interval) in the background
    const ReplicaLag lag = replica.lag();
    const auto hits = replica.read([](const FlatIndex& ix) { return ix.search(std::vector<float>{7, 7, 7}, 1); });
    std::printf("replica at LSN %llu (%llu records behind), %zu vectors\n",
                static_cast<unsigned long long>(lag.applied_lsn), static_cast<unsigned long long>(lag.records_behind),
                replica.index().size());
    if (replica.index().size() != writer.index().size() || hits.empty()) return 1;

    writer.close();  // the writer goes away (a crash would do the same)
    auto promoted = std::move(replica).promote();
    promoted.insert(promoted.last_lsn() + 1000000, std::vector<float>{0, 0, 0});
    promoted.close();
    const std::size_t after = PersistedIndex<FlatIndex>::load(cfg).index().size();
    std::printf("promoted replica took a write: %zu vectors\n", after);
    return after == before + 101 ? 0 : 1;
  } catch (const PersistError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
