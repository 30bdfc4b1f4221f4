// Saves and loads a small index in a RADOS pool through the installed RADOS
// component. Usage: rados_consumer rados://POOL/NAME. Without a cluster
// ($CEPH_CONF unset) it only checks that the component links and parses the
// location, and says so.
#include <iqdb/persist.hpp>
#include <iqdb/persist/rados.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  using namespace iqdb::persist;
  if (argc != 2) return 2;
  const RadosLocation loc = RadosLocation::parse(argv[1]);
  if (loc.url() != argv[1]) {
    std::printf("rados consumer: FAILED (%s parsed as %s)\n", argv[1], loc.url().c_str());
    return 1;
  }
  const char* conf = std::getenv("CEPH_CONF");
  if (conf == nullptr || *conf == '\0') {
    std::printf("rados consumer: linked, %s parsed (no cluster: CEPH_CONF is not set)\n", argv[1]);
    return 0;
  }
  FlatIndex index(3, DistanceMetric::Euclidean);
  index.insert(1, std::vector<float>{1, 0, 0});
  index.insert(2, std::vector<float>{0, 1, 0});
  auto store = RadosSnapshotStore::open(loc);
  save_to_rados(*store, loc.name, index);
  const FlatIndex again = load_from_rados<FlatIndex>(*store, loc.name);
  const auto hits = again.search(std::vector<float>{0.1f, 1, 0}, 1);
  const bool ok = again.size() == 2 && hits.size() == 1 && hits[0].id == VectorId(2);
  store->remove(store->path_of(loc.name));
  std::printf("rados consumer: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
