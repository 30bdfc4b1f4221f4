// Adapter benchmark (docs/ADAPTERS.md, "Performance"): saving and loading a
// FAISS index and an hnswlib graph through iqdb-persist against the
// libraries' own persistence, in the same run.
//
//   FAISS (IndexFlatL2, then IndexIDMap2(IndexFlatL2), 1M x 128 by default)
//     save  PersistedIndex<FaissIndex>::save (checksum, temp file, fsync,
//           rename, directory fsync)  vs  faiss::write_index(path) + fsync
//     load  PersistedIndex<FaissIndex>::load (checksum verified)
//           vs  faiss::read_index(path)
//   hnswlib (HierarchicalNSW<float>, L2, 200k x 128, M 16 by default)
//     save  PersistedIndex<HnswlibIndex>::save  vs  saveIndex(path) + fsync
//     load  PersistedIndex<HnswlibIndex>::load  vs  HierarchicalNSW(space, path) (loadIndex)
//   Context, as in the issue: one write() + fsync() of the library's file
//   size, and one read() of its file into a fresh buffer.
//
// Targets (issue): save and load ratios <= 1.0. Each figure is the median of
// --reps repetitions; the two sides alternate which goes first. Before every
// timed operation the previous file of that side is removed and sync()ed, and
// memory is touched and freed (see bench/bench_util.hpp and
// docs/PERFORMANCE.md: this VM hands free memory back to its host, which
// makes first touches cost up to 10x; --cold-memory skips this).
//
//   adapter_bench --dir build/bench-data [--faiss-vectors N] [--hnsw-vectors N]
//                 [--dim D] [--reps R] [--only faiss,hnswlib] [--strict]
#include <fcntl.h>
#include <malloc.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iqdb/persist.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(IQDB_BENCH_HAVE_FAISS)
#include <faiss/IndexFlat.h>
#include <faiss/IndexIDMap.h>
#include <faiss/index_io.h>

#include <iqdb/persist/adapters/faiss.hpp>
#endif
#if defined(IQDB_BENCH_HAVE_HNSWLIB)
#include <hnswlib/hnswlib.h>  // hnswlib's own API, beside the adapter's
#include <iqdb/persist/adapters/hnswlib.hpp>
#endif

#include "bench_util.hpp"

namespace {

using namespace iqdb::persist;
using namespace iqdb::persist::bench;  // the timing harness (bench_util.hpp)
namespace fs = std::filesystem;

void fsync_path(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) die_errno("open " + p.string());
  if (::fsync(fd) != 0) die_errno("fsync " + p.string());
  if (::close(fd) != 0) die_errno("close " + p.string());
}

// Read the whole file once (into the page cache).
void read_once(const fs::path& p) { (void)time_read_fresh(p); }

struct Options {
  std::string dir;
  std::uint64_t faiss_vectors = 1'000'000;
  std::uint64_t hnsw_vectors = 200'000;
  std::uint64_t dim = 128;
  std::size_t hnsw_m = 16;
  std::size_t hnsw_ef_construction = 40;  // build time only: save and load do not depend on it
  int reps = 5;
  std::string only = "faiss,hnswlib";
  bool cold_memory = false;
  bool strict = false;
};

struct Figure {
  std::string name;
  double ours;
  double theirs;
  std::string theirs_name;
  bool target;  // ratio <= 1.0 is a target of the issue
};

bool report(const std::string& section, const std::vector<Figure>& figures) {
  bool all_met = true;
  std::printf("\n%s\n", section.c_str());
  std::printf("  %-44s %12s %12s %7s  %s\n", "figure", "iqdb ms", "peer ms", "ratio", "");
  for (const Figure& f : figures) {
    const double ratio = f.ours / f.theirs;
    const char* verdict = "";
    if (f.target) {
      verdict = ratio <= 1.0 ? "PASS (<= 1.0)" : "FAIL (> 1.0)";
      all_met = all_met && ratio <= 1.0;
    }
    std::printf("  %-44s %12.1f %12.1f %7.2f  %s   [peer: %s]\n", f.name.c_str(), f.ours * 1e3, f.theirs * 1e3, ratio,
                verdict, f.theirs_name.c_str());
  }
  return all_met;
}

std::vector<char> bytes_of(const fs::path& p) {
  std::vector<char> b(static_cast<std::size_t>(fs::file_size(p)));
  std::ifstream in(p, std::ios::binary);
  in.read(b.data(), static_cast<std::streamsize>(b.size()));
  return b;
}

// Runs `a` and `b` reps times (plus a warm-up), alternating which goes first;
// returns the medians.
std::pair<double, double> paired(int reps, const std::function<double()>& a, const std::function<double()>& b) {
  std::vector<double> ta, tb;
  for (int r = 0; r <= reps; ++r) {
    double x, y;
    if (r % 2 == 0) {
      x = a();
      y = b();
    } else {
      y = b();
      x = a();
    }
    if (r > 0) {  // rep 0 is a warm-up
      ta.push_back(x);
      tb.push_back(y);
    }
  }
  return {median(ta), median(tb)};
}

#if defined(IQDB_BENCH_HAVE_FAISS)
// `idmap2`: IndexIDMap2(IndexFlatL2) with ids 0..n-1 instead of a bare IndexFlatL2.
bool bench_faiss(const Options& o, bool idmap2) {
  const fs::path dir = fs::path(o.dir);
  const int d = static_cast<int>(o.dim);
  const std::string type = idmap2 ? "IndexIDMap2(IndexFlatL2)" : "IndexFlatL2";
  std::printf("\n== FAISS %s, %llu x %llu (building...)\n", type.c_str(),
              static_cast<unsigned long long>(o.faiss_vectors), static_cast<unsigned long long>(o.dim));
  std::fflush(stdout);
  std::unique_ptr<faiss::Index> index = std::make_unique<faiss::IndexFlatL2>(d);
  if (idmap2) {
    auto map = std::make_unique<faiss::IndexIDMap2>(index.get());
    map->own_fields = true;
    (void)index.release();
    index = std::move(map);
  }
  {
    std::mt19937_64 rng(42);
    std::normal_distribution<float> g;
    constexpr std::uint64_t kChunk = 65536;
    std::vector<float> chunk;
    std::vector<std::int64_t> ids;
    for (std::uint64_t i = 0; i < o.faiss_vectors; i += kChunk) {
      const std::uint64_t n = std::min(kChunk, o.faiss_vectors - i);
      chunk.resize(static_cast<std::size_t>(n * o.dim));
      for (float& x : chunk) x = g(rng);
      if (idmap2) {
        ids.resize(static_cast<std::size_t>(n));
        for (std::uint64_t j = 0; j < n; ++j) ids[j] = static_cast<std::int64_t>(i + j);
        index->add_with_ids(static_cast<std::int64_t>(n), chunk.data(), ids.data());
      } else {
        index->add(static_cast<std::int64_t>(n), chunk.data());
      }
    }
  }
  PersistConfig cfg(dir / "faiss-iqdb.iqdb");
  cfg.fsync_policy = FsyncPolicy::always();
  auto db = PersistedIndex<FaissIndex>::open_with(FaissIndex(std::move(index)), cfg);
  const faiss::Index& raw = db.index().faiss_index();
  const fs::path native = dir / "faiss-native.index";
  const fs::path plain = dir / "faiss-write.bin";

  const auto ours_save = [&] {
    remove_and_settle(cfg.path);
    prepare_memory();
    return seconds([&] { db.save(); });
  };
  const auto their_save = [&] {
    remove_and_settle(native);
    prepare_memory();
    return seconds([&] {
      faiss::write_index(&raw, native.c_str());
      fsync_path(native);
    });
  };
  const auto [save_ours, save_theirs] = paired(o.reps, ours_save, their_save);

  // The raw limits for the same bytes (FAISS's file).
  const std::vector<char> file = bytes_of(native);
  const auto write_limit = [&] {
    remove_and_settle(plain);
    prepare_memory();
    return time_write_fsync(plain, file.data(), file.size());
  };
  const auto [write_limit_s, write_limit2] = paired(o.reps, write_limit, write_limit);
  (void)write_limit2;

  read_once(cfg.path);
  read_once(native);
  const auto ours_load = [&] {
    prepare_memory();
    std::optional<PersistedIndex<FaissIndex>> loaded;
    const double t = seconds([&] { loaded.emplace(PersistedIndex<FaissIndex>::load(cfg)); });
    if (loaded->index().size() != o.faiss_vectors) die("loaded the wrong index");
    return t;
  };
  const auto their_load = [&] {
    prepare_memory();
    faiss::Index* loaded = nullptr;
    const double t = seconds([&] { loaded = faiss::read_index(native.c_str()); });
    if (loaded->ntotal != static_cast<std::int64_t>(o.faiss_vectors)) die("FAISS loaded the wrong index");
    delete loaded;
    return t;
  };
  const auto [load_ours, load_theirs] = paired(o.reps, ours_load, their_load);
  const auto read_limit = [&] {
    prepare_memory();
    return time_read_fresh(native);
  };
  const auto [read_limit_s, read_limit2] = paired(o.reps, read_limit, read_limit);
  (void)read_limit2;

  // Peak memory of a load beyond the index it builds: no whole-payload buffer.
  std::uint64_t peak_over = 0;
  {
    prepare_memory();
    if (reset_peak_rss()) {
      const std::uint64_t before = status_kib("VmRSS");
      auto loaded = PersistedIndex<FaissIndex>::load(cfg);
      const std::uint64_t after = status_kib("VmRSS");
      const std::uint64_t hwm = status_kib("VmHWM");
      peak_over = hwm > after ? hwm - after : 0;
      std::printf("  load memory: RSS %llu -> %llu MiB (the index), peak %llu MiB: %.1f MiB above the loaded index\n",
                  static_cast<unsigned long long>(before / 1024), static_cast<unsigned long long>(after / 1024),
                  static_cast<unsigned long long>(hwm / 1024), static_cast<double>(peak_over) / 1024.0);
    }
  }
  const std::uint64_t snapshot_bytes = fs::file_size(cfg.path);
  std::printf("  files: iqdb snapshot %llu bytes, FAISS file %llu bytes\n",
              static_cast<unsigned long long>(snapshot_bytes), static_cast<unsigned long long>(file.size()));
  const bool ok =
      report("FAISS " + type,
             {
                 {"save (fsync, atomic replace, CRC)", save_ours, save_theirs, "write_index + fsync", true},
                 {"load (CRC verified)", load_ours, load_theirs, "read_index", true},
                 {"context: write_index + fsync vs write()+fsync", save_theirs, write_limit_s,
                  "write()+fsync of the same bytes", false},
                 {"context: read_index vs read()", load_theirs, read_limit_s, "read() into a fresh buffer", false},
                 {"context: iqdb save vs write()+fsync", save_ours, write_limit_s, "write()+fsync", false},
                 {"context: iqdb load vs read()", load_ours, read_limit_s, "read()", false},
             });
  for (const fs::path& p : {cfg.path, native, plain}) remove_and_settle(p);
  return ok && peak_over < 64 * 1024;
}
#endif

#if defined(IQDB_BENCH_HAVE_HNSWLIB)
bool bench_hnswlib(const Options& o) {
  const fs::path dir = fs::path(o.dir);
  std::printf(
      "\n== hnswlib HierarchicalNSW<float> L2, %llu x %llu, M %zu, ef_construction %zu (building on 2 threads...)\n",
      static_cast<unsigned long long>(o.hnsw_vectors), static_cast<unsigned long long>(o.dim), o.hnsw_m,
      o.hnsw_ef_construction);
  std::fflush(stdout);
  auto space = std::make_unique<hnswlib::L2Space>(static_cast<std::size_t>(o.dim));
  auto graph = std::make_unique<HnswlibIndex::Graph>(space.get(), static_cast<std::size_t>(o.hnsw_vectors), o.hnsw_m,
                                                     o.hnsw_ef_construction, 100);
  {
    std::vector<float> data(static_cast<std::size_t>(o.hnsw_vectors * o.dim));
    std::mt19937_64 rng(43);
    std::normal_distribution<float> g;
    for (float& x : data) x = g(rng);
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (std::size_t t = 0; t < 2; ++t) {
      threads.emplace_back([&, t] {
        for (std::size_t i = t; i < o.hnsw_vectors; i += 2) graph->addPoint(data.data() + i * o.dim, i);
      });
    }
    for (auto& th : threads) th.join();
    std::printf("  built in %.1f s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  PersistConfig cfg(dir / "hnsw-iqdb.iqdb");
  cfg.fsync_policy = FsyncPolicy::always();
  auto db = PersistedIndex<HnswlibIndex>::open_with(HnswlibIndex(std::move(space), std::move(graph)), cfg);
  auto& raw = const_cast<HnswlibIndex::Graph&>(db.index().graph());  // saveIndex is not const; it does not modify
  const fs::path native = dir / "hnsw-native.bin";
  const fs::path plain = dir / "hnsw-write.bin";

  const auto ours_save = [&] {
    remove_and_settle(cfg.path);
    prepare_memory();
    return seconds([&] { db.save(); });
  };
  const auto their_save = [&] {
    remove_and_settle(native);
    prepare_memory();
    return seconds([&] {
      raw.saveIndex(native.string());
      fsync_path(native);
    });
  };
  const auto [save_ours, save_theirs] = paired(o.reps, ours_save, their_save);
  const std::vector<char> file = bytes_of(native);
  const auto write_limit = [&] {
    remove_and_settle(plain);
    prepare_memory();
    return time_write_fsync(plain, file.data(), file.size());
  };
  const auto [write_limit_s, unused_w] = paired(o.reps, write_limit, write_limit);
  (void)unused_w;

  read_once(cfg.path);
  read_once(native);
  const auto ours_load = [&] {
    prepare_memory();
    std::optional<PersistedIndex<HnswlibIndex>> loaded;
    const double t = seconds([&] { loaded.emplace(PersistedIndex<HnswlibIndex>::load(cfg)); });
    if (loaded->index().size() != o.hnsw_vectors) die("loaded the wrong graph");
    return t;
  };
  hnswlib::L2Space their_space(static_cast<std::size_t>(o.dim));
  const auto their_load = [&] {
    prepare_memory();
    HnswlibIndex::Graph* loaded = nullptr;
    const double t = seconds([&] { loaded = new HnswlibIndex::Graph(&their_space, native.string()); });
    if (loaded->cur_element_count != o.hnsw_vectors) die("hnswlib loaded the wrong graph");
    delete loaded;
    return t;
  };
  const auto [load_ours, load_theirs] = paired(o.reps, ours_load, their_load);
  const auto read_limit = [&] {
    prepare_memory();
    return time_read_fresh(native);
  };
  const auto [read_limit_s, unused_r] = paired(o.reps, read_limit, read_limit);
  (void)unused_r;
  std::printf("  files: iqdb snapshot %llu bytes, hnswlib file %llu bytes\n",
              static_cast<unsigned long long>(fs::file_size(cfg.path)), static_cast<unsigned long long>(file.size()));
  const bool ok = report(
      "hnswlib", {
                     {"save (fsync, atomic replace, CRC)", save_ours, save_theirs, "saveIndex + fsync", true},
                     {"load (CRC verified, every link checked)", load_ours, load_theirs, "loadIndex", true},
                     {"context: saveIndex + fsync vs write()+fsync", save_theirs, write_limit_s,
                      "write()+fsync of the same bytes", false},
                     {"context: loadIndex vs read()", load_theirs, read_limit_s, "read() into a fresh buffer", false},
                     {"context: iqdb save vs write()+fsync", save_ours, write_limit_s, "write()+fsync", false},
                     {"context: iqdb load vs read()", load_ours, read_limit_s, "read()", false},
                 });
  for (const fs::path& p : {cfg.path, native, plain}) remove_and_settle(p);
  return ok;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app("iqdb-persist adapter benchmark: FAISS and hnswlib persistence vs the libraries' own");
  app.add_option("--dir", o.dir, "Directory for the files (not tmpfs)")->required();
  app.add_option("--faiss-vectors", o.faiss_vectors, "FAISS IndexFlatL2 size")->capture_default_str();
  app.add_option("--hnsw-vectors", o.hnsw_vectors, "hnswlib graph size")->capture_default_str();
  app.add_option("--dim", o.dim, "Dimensions")->capture_default_str();
  app.add_option("--hnsw-m", o.hnsw_m, "hnswlib M")->capture_default_str();
  app.add_option("--hnsw-ef-construction", o.hnsw_ef_construction, "hnswlib ef_construction")->capture_default_str();
  app.add_option("--reps", o.reps, "Repetitions (medians)")->capture_default_str()->check(CLI::Range(1, 100));
  app.add_option("--only", o.only,
                 "Sections: faiss (IndexFlatL2 and IndexIDMap2), faiss-flat (IndexFlatL2 only), hnswlib")
      ->capture_default_str();
  app.add_flag("--cold-memory", o.cold_memory, "Do not warm memory before timed operations");
  app.add_flag("--strict", o.strict, "Exit 1 when a target is missed");
  CLI11_PARSE(app, argc, argv);
  bench::set_program_name("adapter_bench");

  fs::create_directories(o.dir);
  // Every large malloc is a fresh mmap (as in bench/persist_bench.cpp).
  (void)::mallopt(M_MMAP_THRESHOLD, 1 << 20);
  const std::uint64_t biggest =
      std::max(o.faiss_vectors * (o.dim * 4 + 16), o.hnsw_vectors * (o.dim * 4 + 8 * o.hnsw_m + 80));
  bench::set_warm_bytes(o.cold_memory ? 0 : static_cast<std::size_t>(biggest + (std::uint64_t{64} << 20)));
  std::printf("adapter_bench: dir %s, %d repetitions (medians), memory before each timed step: %s\n", o.dir.c_str(),
              o.reps, o.cold_memory ? "as left" : "touched and freed");

  bool ok = true;
  bool ran = false;
#if defined(IQDB_BENCH_HAVE_FAISS)
  if (o.only.find("faiss") != std::string::npos) {
    ok = bench_faiss(o, false) && ok;
    if (o.only.find("faiss-flat") == std::string::npos) ok = bench_faiss(o, true) && ok;
    ran = true;
  }
#endif
#if defined(IQDB_BENCH_HAVE_HNSWLIB)
  if (o.only.find("hnswlib") != std::string::npos) {
    ok = bench_hnswlib(o) && ok;
    ran = true;
  }
#endif
  if (!ran) die("nothing to run (built without the selected adapters?)");
  std::printf("\n%s\n", ok ? "all targets met" : "some targets missed");
  return o.strict && !ok ? 1 : 0;
}
