// Writes the seed corpora of the "<index>_crc" fuzz targets (flat_crc,
// faiss_crc, hnswlib_crc) into <dir>/<target>/: small valid version-3
// snapshots the library writes, one per index shape the loaders accept, each
// under 4 KiB (faiss_crc: 16 KiB). Deterministic (fixed vectors and seeds).
//
//   fuzz_make_adapter_seeds fuzz/corpus
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVFFlat.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <iqdb/persist/adapters/faiss.hpp>
#include <iqdb/persist/adapters/hnswlib.hpp>
#include <stdexcept>

#include "fuzz_support.hpp"

namespace iqdb::persist::fuzz {
namespace {

fs::path g_out;

template <class I>
Bytes snapshot_of(const I& ix) {
  MemFileSystem mfs;
  const SnapshotInfo info{I::index_type, ix.dim(), ix.metric(), ix.size(), 0};
  write_snapshot(mfs, "/s", info, Compression::none(), false, [&](PayloadWriter& w) { ix.save_to(w); });
  return mfs.get("/s");
}

// faiss_crc inputs may be up to 16 KiB (fuzz/run.sh): the text of an HNSW
// graph's std::mt19937 state alone is about 6.5 KiB.
void emit(const std::string& target, const std::string& name, const Bytes& b) {
  if (b.size() >= (target == "faiss_crc" ? 16384u : 4096u)) throw std::runtime_error(target + "/" + name + " is " + std::to_string(b.size()) + " bytes");
  const fs::path dir = g_out / target;
  fs::create_directories(dir);
  std::ofstream f(dir / name, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  if (!f) throw std::runtime_error("cannot write " + (dir / name).string());
}

// Deterministic vectors: coordinate j of vector i.
std::vector<float> vec(std::size_t i, std::size_t dim) {
  std::vector<float> v(dim);
  for (std::size_t j = 0; j < dim; ++j) v[j] = static_cast<float>((i * 7 + j * 3) % 11) - 5.0f + 0.25f * static_cast<float>(j);
  return v;
}
std::vector<float> block(std::size_t n, std::size_t dim) {
  std::vector<float> x;
  for (std::size_t i = 0; i < n; ++i) {
    const auto v = vec(i, dim);
    x.insert(x.end(), v.begin(), v.end());
  }
  return x;
}

void flat_seeds() {
  FlatIndex a(3, DistanceMetric::Euclidean);
  for (std::uint64_t i = 0; i < 4; ++i) a.insert(i * 10, vec(i, 3), i == 1 ? std::optional<Metadata>(Metadata{{"k", Value("v")}}) : std::nullopt);
  emit("flat_crc", "euclidean-4", snapshot_of(a));
  FlatIndex b(2, DistanceMetric::Cosine);
  b.insert(VectorId::bytes("alpha"), vec(1, 2));
  b.insert(7, vec(2, 2), Metadata{{"n", Value(std::int64_t{3})}, {"f", Value(1.5)}, {"b", Value(true)}});
  emit("flat_crc", "cosine-byte-ids", snapshot_of(b));
  emit("flat_crc", "empty-hamming", snapshot_of(FlatIndex(8, DistanceMetric::Hamming)));
  Bytes bad_crc = snapshot_of(a);
  bad_crc[bad_crc.size() - 1] ^= std::byte{0x5a};  // the harness fixes the CRC
  emit("flat_crc", "euclidean-4-stale-crc", bad_crc);
}

template <class T>
std::unique_ptr<faiss::Index> owned_map(faiss::Index* sub) {
  auto m = std::make_unique<T>(sub);
  m->own_fields = true;
  return m;
}

std::unique_ptr<faiss::IndexIVFFlat> trained_ivf(faiss::Index* quantizer, faiss::MetricType metric) {
  auto ivf = std::make_unique<faiss::IndexIVFFlat>(quantizer, 2, 2, metric);
  ivf->own_fields = true;
  const std::vector<float> train = block(8, 2);
  ivf->cp.min_points_per_centroid = 1;
  ivf->train(8, train.data());
  ivf->nprobe = 2;
  return ivf;
}

void add(FaissIndex& ix, std::size_t n, std::uint64_t first, bool positional) {
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t id = positional ? i : first + i * 3;
    ix.insert(id, vec(i, ix.dim()), i == 0 ? std::optional<Metadata>(Metadata{{"i", Value(std::int64_t{1})}}) : std::nullopt);
  }
}

void faiss_seeds() {
  {
    FaissIndex ix(std::make_unique<faiss::IndexFlatL2>(2));
    add(ix, 3, 0, true);
    emit("faiss_crc", "flat-l2", snapshot_of(ix));
  }
  {
    FaissIndex ix(owned_map<faiss::IndexIDMap2>(new faiss::IndexFlatIP(3)), FaissOptions{true});
    add(ix, 3, 100, false);
    emit("faiss_crc", "idmap2-flat-ip-cosine", snapshot_of(ix));
  }
  {
    FaissIndex ix(owned_map<faiss::IndexIDMap>(new faiss::IndexFlat(2, faiss::METRIC_L1)));
    add(ix, 2, 5, false);
    emit("faiss_crc", "idmap-flat-l1", snapshot_of(ix));
  }
  {
    FaissIndex ix(std::make_unique<faiss::IndexHNSWFlat>(2, 4));
    add(ix, 6, 0, true);
    emit("faiss_crc", "hnsw-l2", snapshot_of(ix));
  }
  emit("faiss_crc", "hnsw-empty", snapshot_of(FaissIndex(std::make_unique<faiss::IndexHNSWFlat>(2, 2))));
  {
    FaissIndex ix(owned_map<faiss::IndexIDMap2>(new faiss::IndexHNSWFlat(2, 3, faiss::METRIC_INNER_PRODUCT)));
    add(ix, 5, 40, false);
    emit("faiss_crc", "idmap2-hnsw-ip", snapshot_of(ix));
  }
  {
    FaissIndex ix(trained_ivf(new faiss::IndexFlatL2(2), faiss::METRIC_L2));
    add(ix, 5, 9, false);
    emit("faiss_crc", "ivf-l2", snapshot_of(ix));
  }
  {
    auto ivf = trained_ivf(new faiss::IndexFlatIP(2), faiss::METRIC_INNER_PRODUCT);
    ivf->set_direct_map_type(faiss::DirectMap::Hashtable);
    FaissIndex ix(std::move(ivf));
    add(ix, 4, 1000, false);
    emit("faiss_crc", "ivf-ip-hashtable", snapshot_of(ix));
  }
  {
    FaissIndex ix(trained_ivf(new faiss::IndexHNSWFlat(2, 2), faiss::METRIC_L2));
    add(ix, 4, 3, false);
    emit("faiss_crc", "ivf-hnsw-quantizer", snapshot_of(ix));
  }
  {
    FaissIndex ix(owned_map<faiss::IndexIDMap2>(trained_ivf(new faiss::IndexFlatL2(2), faiss::METRIC_L2).release()));
    add(ix, 3, 77, false);
    emit("faiss_crc", "idmap2-ivf-l2", snapshot_of(ix));
  }
}

void hnswlib_seeds() {
  {
    HnswlibIndex ix(2, DistanceMetric::Euclidean, HnswlibParams{.M = 2, .ef_construction = 8, .ef = 4});
    for (std::uint64_t i = 0; i < 8; ++i) ix.insert(i * 5, vec(i, 2), i == 2 ? std::optional<Metadata>(Metadata{{"x", Value()}}) : std::nullopt);
    ix.erase(10);
    emit("hnswlib_crc", "l2-erased", snapshot_of(ix));
  }
  {
    HnswlibIndex ix(3, DistanceMetric::Cosine, HnswlibParams{.M = 3, .ef_construction = 6, .ef = 2});
    for (std::uint64_t i = 0; i < 5; ++i) ix.insert(100 + i, vec(i, 3));
    emit("hnswlib_crc", "cosine", snapshot_of(ix));
  }
  emit("hnswlib_crc", "dot-empty", snapshot_of(HnswlibIndex(2, DistanceMetric::DotProduct, HnswlibParams{.M = 2})));
}

}  // namespace
}  // namespace iqdb::persist::fuzz

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  iqdb::persist::fuzz::g_out = argv[1];
  iqdb::persist::fuzz::flat_seeds();
  iqdb::persist::fuzz::faiss_seeds();
  iqdb::persist::fuzz::hnswlib_seeds();
  return 0;
}
