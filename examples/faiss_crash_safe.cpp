// A FAISS index that survives a crash: write-ahead logging through the
// FAISS adapter (docs/ADAPTERS.md).
//   example_faiss_crash_safe [FILE]
// The first run builds an IndexIDMap2(IndexFlatL2), inserts vectors with ids
// and metadata (each insert logged and fsynced before it is applied), erases
// one, and then "crashes" (exits without saving or closing). Run it again:
// the snapshot is loaded and the log replayed onto the FAISS index, and the
// searches give what they gave before the crash.
#include <faiss/IndexFlat.h>
#include <faiss/IndexIDMap.h>

#include <cstdio>
#include <cstdlib>
#include <iqdb/persist.hpp>
#include <iqdb/persist/adapters/faiss.hpp>
#include <memory>
#include <vector>

namespace {

constexpr int kDim = 4;

std::vector<float> vector_for(std::uint64_t id) {
  const auto f = static_cast<float>(id);
  return {f, f * 0.5f, -f, 1.0f};
}

}  // namespace

int main(int argc, char** argv) {
  using namespace iqdb::persist;
  PersistConfig cfg(argc > 1 ? argv[1] : "faiss-example.iqdb");
  cfg.wal_enabled = true;
  cfg.fsync_policy = FsyncPolicy::always();  // durable when insert() returns

  try {
    if (!default_file_system().exists(cfg.path)) {
      auto flat = std::make_unique<faiss::IndexFlatL2>(kDim);
      auto index = std::make_unique<faiss::IndexIDMap2>(flat.get());
      index->own_fields = true;
      flat.release();
      auto db = PersistedIndex<FaissIndex>::open_with(FaissIndex(std::move(index)), cfg);
      for (std::uint64_t id = 100; id < 200; ++id) {
        db.insert(id, vector_for(id), Metadata{{"name", Value("item-" + std::to_string(id))}});
      }
      db.erase(150);  // IndexIDMap2 over IndexFlat: FAISS's remove_ids
      try {
        db.insert(VectorId::bytes("doc-1"), vector_for(1));
      } catch (const PersistError& e) {
        std::printf("refused, as FAISS ids are integers: %s\n", e.what());
      }
      std::printf("logged %llu mutations; exiting without save (run me again)\n",
                  static_cast<unsigned long long>(db.last_lsn()));
      std::fflush(stdout);
      std::_Exit(0);  // a crash: no destructors, no checkpoint
    }

    auto db = PersistedIndex<FaissIndex>::load(cfg);  // snapshot + log replay
    const auto hits = db.read([](const FaissIndex& ix) { return ix.search(vector_for(150), 3); });
    std::printf("recovered %llu vectors up to LSN %llu; nearest to the erased 150:",
                static_cast<unsigned long long>(db.index().size()), static_cast<unsigned long long>(db.last_lsn()));
    for (const auto& h : hits) std::printf(" %llu (%.1f)", static_cast<unsigned long long>(h.id), h.distance);
    std::printf("\n");
    const Metadata* m = db.index().metadata(151);
    std::printf("metadata of 151: name = %s\n", m != nullptr ? m->at("name").as_string().c_str() : "(none)");
    db.checkpoint();  // fold the log into a new snapshot
    const bool ok = db.index().size() == 99 && !db.index().contains(150) && hits.size() == 3 &&
                    (hits[0].id == 149 || hits[0].id == 151) && m != nullptr;
    return ok ? 0 : 1;
  } catch (const PersistError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
