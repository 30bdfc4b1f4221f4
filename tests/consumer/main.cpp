// Saves and loads a small index through the installed or embedded library.
#include <iqdb/persist.hpp>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  using namespace iqdb::persist;
  if (argc != 2) return 2;
  PersistConfig cfg(argv[1]);
  cfg.compression = Compression::zstd(3);
  FlatIndex index(3, DistanceMetric::Cosine);
  index.insert(1, std::vector<float>{1, 0, 0});
  index.insert(2, std::vector<float>{0, 1, 0});
  PersistedIndex<FlatIndex>::open_with(std::move(index), cfg).save();
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  const auto hits = db.index().search(std::vector<float>{0.1f, 1, 0}, 1);
  const bool ok = db.index().size() == 2 && hits.size() == 1 && hits[0].id == VectorId(2);
  std::printf("consumer: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
