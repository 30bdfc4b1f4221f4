// iqdb-persist demo: build a random index, save it with every compression,
// load each file back and check that nothing changed. Shows what the library
// does and how fast, on this machine.
#include <stdlib.h>  // mkdtemp

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include "iqdb-persist/command.hpp"
#include "iqdb-persist/report.hpp"
#include "iqdb/persist/config.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/file_system.hpp"
#include "iqdb/persist/flat_index.hpp"
#include "iqdb/persist/persisted_index.hpp"
#include "iqdb/persist/snapshot.hpp"

// The FAISS adapter, when this build has it (tools/CMakeLists.txt).
#if defined(IQDB_PERSIST_CLI_HAVE_FAISS)
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>

#include "iqdb/persist/adapters/faiss.hpp"
#endif

namespace iqdb::persist::cli {
namespace {

namespace fs = std::filesystem;

constexpr std::uint64_t kSeed = 20240611;  // same data on every run
constexpr std::size_t kQueries = 10;
constexpr std::size_t kTopK = 10;
constexpr DistanceMetric kMetric = DistanceMetric::Euclidean;

struct DemoOptions {
  std::string dir;
  std::uint64_t vectors = 100000;
  std::uint64_t dim = 128;
  bool faiss = false;              // --faiss: a FAISS index through the FAISS adapter
  std::string faiss_index = "flat";  // --faiss-index: flat, hnsw or ivf
};

struct Variant {
  std::string name;   // file name part: demo-<name>.iqdb
  std::string label;  // for people
  Compression compression;
};

// What one compression did, for the summary table.
struct Result {
  std::string label;
  bool saved = false;
  bool loaded = false;
  std::uint64_t file_size = 0;
  std::uint64_t payload_bytes = 0;
  double save_ms = 0;
  double load_ms = 0;
};

class Stopwatch {
 public:
  double ms() const {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

std::string format(const char* fmt, auto... args) {
  std::array<char, 256> buf{};
  std::snprintf(buf.data(), buf.size(), fmt, args...);
  return buf.data();
}

// Decimal megabytes per second, as disks and benchmarks quote them.
double mb_per_s(std::uint64_t bytes, double ms) {
  return ms > 0 ? static_cast<double>(bytes) / 1e6 / (ms / 1e3) : 0.0;
}

std::string timing(double ms, std::uint64_t bytes) {
  return format("%.1f ms (%.1f MB/s", ms, mb_per_s(bytes, ms));
}

fs::path prepare_dir(const std::string& dir) {
  if (!dir.empty()) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw PersistError::io(dir, "creating the directory", ec.value());
    return dir;
  }
  std::error_code ec;
  fs::path base = fs::temp_directory_path(ec);
  if (ec) base = "/tmp";
  std::string tmpl = (base / "iqdb-persist-demo-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) throw PersistError::io(tmpl, "mkdtemp", errno);
  return tmpl;
}

std::vector<float> gaussian_vector(std::mt19937_64& rng, std::uint64_t dim) {
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(dim));
  for (float& x : v) x = gauss(rng);
  return v;
}

// N Gaussian vectors with ids 0..N-1; every (N/8)th carries metadata.
FlatIndex build_index(const DemoOptions& opts, std::mt19937_64& rng, std::uint64_t& with_metadata) {
  FlatIndex index(opts.dim, kMetric);
  const std::uint64_t metadata_every = std::max<std::uint64_t>(1, opts.vectors / 8);
  with_metadata = 0;
  for (std::uint64_t i = 0; i < opts.vectors; ++i) {
    const std::vector<float> v = gaussian_vector(rng, opts.dim);
    std::optional<Metadata> meta;
    if (i % metadata_every == 0) {
      double norm = 0;
      for (const float x : v) norm += static_cast<double>(x) * static_cast<double>(x);
      meta = Metadata{{"label", Value("vector-" + std::to_string(i))},
                      {"bucket", Value(static_cast<std::int64_t>(i % 10))},
                      {"norm", Value(std::sqrt(norm))},
                      {"pinned", Value(i % 2 == 0)}};
      ++with_metadata;
    }
    index.insert(i, v, std::move(meta));
  }
  return index;
}

class Checks {
 public:
  explicit Checks(std::ostream& out) : out_(out) {}

  void expect(bool ok, const std::string& scope, const std::string& what) {
    ++total_;
    out_ << "  " << (ok ? "[ok]   " : "[FAIL] ") << what << '\n';
    if (!ok) failures_.push_back(scope + ": " + what);
  }
  void fail(const std::string& scope, const std::string& what) { expect(false, scope, what); }

  std::size_t total() const noexcept { return total_; }
  const std::vector<std::string>& failures() const noexcept { return failures_; }

 private:
  std::ostream& out_;
  std::size_t total_ = 0;
  std::vector<std::string> failures_;
};

// Save `index` to cfg.path (timed; the index is moved in for the save and
// handed back after it: without a WAL the PersistedIndex writes nothing of
// its own), show the file's header, and load it back (timed).
template <class I>
PersistedIndex<I> save_show_load(I& index, const PersistConfig& cfg, Result& r, std::ostream& out) {
  {
    auto db = PersistedIndex<I>::open_with(std::move(index), cfg);
    const Stopwatch sw;
    db.save();
    r.save_ms = sw.ms();
    index = std::move(db.index_mut());
  }
  const SnapshotSummary summary = inspect_snapshot(default_file_system(), cfg.path);
  r.saved = true;
  r.file_size = summary.file_size;
  r.payload_bytes = summary.header.uncompressed_len;
  out << "  save   " << timing(r.save_ms, r.payload_bytes) << ", fsync included)\n"
      << "  file   " << human_bytes(r.file_size) << " on disk; its header:\n";
  print_header(out, summary, "           ");
  const Stopwatch sw;
  auto loaded = PersistedIndex<I>::load(cfg);
  r.load_ms = sw.ms();
  r.loaded = true;
  out << "  load   " << timing(r.load_ms, r.payload_bytes) << ", checksum verified)\n";
  return loaded;
}

// The loaded copy answers every query exactly as the original did.
template <class I, class Hit>
void check_queries(const I& loaded, const std::vector<std::vector<float>>& queries,
                   const std::vector<std::vector<Hit>>& expected, const std::string& scope, Checks& checks) {
  std::size_t same = 0;
  for (std::size_t q = 0; q < queries.size(); ++q) {
    if (loaded.search(queries[q], kTopK) == expected[q]) ++same;
  }
  checks.expect(same == queries.size(), scope,
                std::to_string(same) + " of " + std::to_string(queries.size()) + " queries: top-" +
                    std::to_string(kTopK) + " ids and distances identical to the original's");
}

// Save `original` with one compression, show the header, load it back, compare.
Result try_variant(const Variant& v, const fs::path& path, const FlatIndex& original,
                   const std::vector<std::vector<float>>& queries,
                   const std::vector<std::vector<SearchHit>>& expected, const Console& console, Checks& checks) {
  std::ostream& out = console.out;
  Result r;
  r.label = v.label;
  PersistConfig cfg(path);
  cfg.compression = v.compression;
  try {
    FlatIndex saved = original;
    const auto loaded = save_show_load(saved, cfg, r, out);

    checks.expect(loaded.index() == original, v.name, "loaded index == original (ids, vectors, metadata, order)");
    check_queries(loaded.index(), queries, expected, v.name, checks);
  } catch (const PersistError& e) {
    checks.fail(v.name, std::string(r.saved ? "load" : "save") + " failed: " + describe(e));
  }
  out << '\n';
  return r;
}

// kQueries random queries and `index`'s answers, to compare every loaded copy with.
template <class I, class Hit>
void ask_queries(const I& index, std::uint64_t dim, std::mt19937_64& rng, std::vector<std::vector<float>>& queries,
                 std::vector<std::vector<Hit>>& expected, std::ostream& out) {
  for (std::size_t q = 0; q < kQueries; ++q) {
    queries.push_back(gaussian_vector(rng, dim));
    expected.push_back(index.search(queries.back(), kTopK));
  }
  out << "Ran " << kQueries << " random queries (top " << kTopK << ") on it, to compare with every loaded copy\n\n"
      << std::flush;
}

std::vector<Variant> demo_variants() {
  return {
      {"none", "none", Compression::none()},
      {"zstd", "zstd (level 3)", Compression::zstd(3)},
      {"lz4", "lz4", Compression::lz4()},
  };
}

// The demo's last line and exit code.
int report_checks(const Checks& checks, const Console& console) {
  std::ostream& out = console.out;
  if (checks.failures().empty()) {
    out << "demo: all checks passed (" << checks.total() << " of " << checks.total() << ")\n";
    return kExitOk;
  }
  for (const std::string& f : checks.failures()) console.err << "demo: FAILED " << f << '\n';
  out << "demo: " << checks.failures().size() << " of " << checks.total() << " checks FAILED\n";
  return kExitFailed;
}

void print_summary(std::ostream& out, const std::vector<Result>& results) {
  out << "Summary (MB/s of index payload, 1 MB = 10^6 bytes)\n"
      << format("  %-16s %10s %6s %10s %10s %10s %10s\n", "compression", "file size", "ratio", "save ms", "save MB/s",
                "load ms", "load MB/s");
  for (const Result& r : results) {
    out << format("  %-16s ", r.label.c_str());
    if (!r.saved) {
      out << "(save failed)\n";
      continue;
    }
    const double ratio = static_cast<double>(r.payload_bytes) / static_cast<double>(std::max<std::uint64_t>(r.file_size, 1));
    out << format("%10s %5.2fx %10.1f %10.1f ", human_bytes(r.file_size).c_str(), ratio, r.save_ms,
                  mb_per_s(r.payload_bytes, r.save_ms));
    if (r.loaded) {
      out << format("%10.1f %10.1f\n", r.load_ms, mb_per_s(r.payload_bytes, r.load_ms));
    } else {
      out << "(load failed)\n";
    }
  }
  out << '\n';
}

// Save and load the index once per compression (run(variant, path, checks)
// returns the timings), then print the summary and the checks' verdict.
template <class Run>
int run_variants(const fs::path& dir, const std::string& prefix, const std::string& try_command,
                 const Console& console, Run run) {
  std::ostream& out = console.out;
  const std::vector<Variant> variants = demo_variants();
  Checks checks(out);
  std::vector<Result> results;
  for (std::size_t i = 0; i < variants.size(); ++i) {
    const Variant& v = variants[i];
    const fs::path path = dir / (prefix + v.name + ".iqdb");
    out << "[" << i + 1 << "/" << variants.size() << "] " << v.label << "  ->  " << path.filename().string()
        << '\n'
        << std::flush;
    results.push_back(run(v, path, checks));
    out << std::flush;
  }
  print_summary(out, results);
  out << "Files kept in " << dir.string() << "; try: " << try_command << (dir / (prefix + "zstd.iqdb")).string()
      << "\n\n";
  return report_checks(checks, console);
}

// Largest index the demo builds (floats), so a typo cannot exhaust memory.
constexpr std::uint64_t kMaxDemoFloats = std::uint64_t{1} << 32;  // 16 GiB

#if defined(IQDB_PERSIST_CLI_HAVE_FAISS)
int demo_faiss(const DemoOptions& opts, const Console& console);
#endif

int demo(const DemoOptions& opts, const Console& console) {
  std::ostream& out = console.out;
  if (opts.faiss) {
#if defined(IQDB_PERSIST_CLI_HAVE_FAISS)
    return demo_faiss(opts, console);
#else
    console.err << "demo: this build has no FAISS adapter (install libfaiss-dev and rebuild)\n";
    return kExitUsage;
#endif
  }
  if (opts.vectors > kMaxDemoFloats / opts.dim) {
    console.err << "demo: --vectors x --dim is limited to " << kMaxDemoFloats << " floats ("
                << human_bytes(kMaxDemoFloats * sizeof(float)) << ")\n";
    return kExitUsage;
  }
  const fs::path dir = prepare_dir(opts.dir);
  out << "iqdb-persist demo: " << opts.vectors << " random Gaussian vectors x " << opts.dim << " dims, "
      << to_string(kMetric) << " metric, seed " << kSeed << "\n"
      << "directory: " << dir.string() << "\n\n"
      << std::flush;

  std::mt19937_64 rng(kSeed);
  std::uint64_t with_metadata = 0;
  const Stopwatch build_sw;
  const FlatIndex original = build_index(opts, rng, with_metadata);
  const double build_ms = build_sw.ms();
  out << "Built a flat index of " << original.size() << " vectors (" << with_metadata << " with metadata, "
      << human_bytes(original.size() * original.dim() * sizeof(float)) << " of floats) in "
      << format("%.1f", build_ms) << " ms\n";

  std::vector<std::vector<float>> queries;
  std::vector<std::vector<SearchHit>> expected;
  ask_queries(original, opts.dim, rng, queries, expected, out);

  const auto run = [&](const Variant& v, const fs::path& path, Checks& checks) {
    return try_variant(v, path, original, queries, expected, console, checks);
  };
  return run_variants(dir, "demo-", "iqdb-persist verify ", console, run);
}


#if defined(IQDB_PERSIST_CLI_HAVE_FAISS)

// --faiss: the same tour with a FAISS index (docs/ADAPTERS.md).
//   flat  IndexIDMap2(IndexFlatL2)            exact; ids of our choosing; erase supported
//   hnsw  IndexIDMap2(IndexHNSWFlat, M = 16)  approximate
//   ivf   IndexIVFFlat (nlist ~ sqrt(N), nprobe 8), its own ids
std::unique_ptr<faiss::Index> make_faiss_index(const std::string& kind, int dim, std::uint64_t n,
                                               const std::vector<float>& data) {
  if (kind == "ivf") {
    const auto nlist = static_cast<std::size_t>(std::max(1.0, std::floor(std::sqrt(static_cast<double>(n)))));
    auto quantizer = std::make_unique<faiss::IndexFlatL2>(dim);
    auto ivf = std::make_unique<faiss::IndexIVFFlat>(quantizer.release(), dim, nlist);
    ivf->own_fields = true;
    // FAISS wants about 39 training points per list.
    const std::uint64_t train = std::min<std::uint64_t>(n, 39 * nlist);
    ivf->train(static_cast<std::int64_t>(train), data.data());
    ivf->nprobe = std::min<std::size_t>(8, nlist);
    return ivf;
  }
  std::unique_ptr<faiss::Index> inner;
  if (kind == "hnsw") {
    inner = std::make_unique<faiss::IndexHNSWFlat>(dim, 16);
  } else {
    inner = std::make_unique<faiss::IndexFlatL2>(dim);
  }
  auto map = std::make_unique<faiss::IndexIDMap2>(inner.get());
  map->own_fields = true;
  inner.release();
  return map;
}

std::vector<std::uint8_t> faiss_serialization(const FaissIndex& index) {
  faiss::VectorIOWriter w;
  faiss::write_index(&index.faiss_index(), &w);
  return w.data;
}

int demo_faiss(const DemoOptions& opts, const Console& console) {
  std::ostream& out = console.out;
  if (opts.faiss_index != "flat" && opts.faiss_index != "hnsw" && opts.faiss_index != "ivf") {
    console.err << "demo: --faiss-index must be flat, hnsw or ivf\n";
    return kExitUsage;
  }
  if (opts.vectors > kMaxDemoFloats / opts.dim) {
    console.err << "demo: --vectors x --dim is limited to " << kMaxDemoFloats << " floats\n";
    return kExitUsage;
  }
  const fs::path dir = prepare_dir(opts.dir);
  const int dim = static_cast<int>(opts.dim);
  out << "iqdb-persist demo on a FAISS index (" << opts.faiss_index << "): " << opts.vectors
      << " random Gaussian vectors x " << opts.dim << " dims, L2, seed " << kSeed << "\n"
      << "directory: " << dir.string() << "\n\n"
      << std::flush;

  std::mt19937_64 rng(kSeed);
  std::vector<float> data;
  data.reserve(static_cast<std::size_t>(opts.vectors * opts.dim));
  for (std::uint64_t i = 0; i < opts.vectors; ++i) {
    const std::vector<float> v = gaussian_vector(rng, opts.dim);
    data.insert(data.end(), v.begin(), v.end());
  }
  const Stopwatch build_sw;
  FaissIndex current(make_faiss_index(opts.faiss_index, dim, opts.vectors, data));
  const std::uint64_t metadata_every = std::max<std::uint64_t>(1, opts.vectors / 8);
  std::uint64_t with_metadata = 0;
  for (std::uint64_t i = 0; i < opts.vectors; ++i) {
    std::optional<Metadata> meta;
    if (i % metadata_every == 0) {
      meta = Metadata{{"label", Value("vector-" + std::to_string(i))}, {"bucket", Value(static_cast<std::int64_t>(i % 10))}};
      ++with_metadata;
    }
    const std::span<const float> v(data.data() + i * opts.dim, static_cast<std::size_t>(opts.dim));
    current.insert(i, v, std::move(meta));
  }
  out << "Built a FAISS index of " << current.size() << " vectors (" << with_metadata
      << " with metadata in the adapter's side table) in " << format("%.1f", build_sw.ms()) << " ms\n";

  const std::vector<std::uint8_t> original_bytes = faiss_serialization(current);
  std::vector<std::vector<float>> queries;
  std::vector<std::vector<FaissIndex::Hit>> expected;
  ask_queries(current, opts.dim, rng, queries, expected, out);

  const auto run = [&](const Variant& v, const fs::path& path, Checks& checks) {
    Result r;
    r.label = v.label;
    PersistConfig cfg(path);
    cfg.compression = v.compression;
    try {
      const auto loaded = save_show_load(current, cfg, r, out);
      checks.expect(faiss_serialization(loaded.index()) == original_bytes, v.name,
                    "loaded FAISS index serializes to the same bytes as the original");
      checks.expect(loaded.index().metadata_table() == current.metadata_table(), v.name,
                    "metadata side table identical");
      check_queries(loaded.index(), queries, expected, v.name, checks);
    } catch (const PersistError& e) {
      checks.fail(v.name, std::string(r.saved ? "load" : "save") + " failed: " + describe(e));
    }
    out << '\n';
    return r;
  };
  return run_variants(dir, "demo-faiss-", "iqdb-persist inspect ", console, run);
}

#endif  // IQDB_PERSIST_CLI_HAVE_FAISS

}  // namespace

void register_demo(CommandSet& commands) {
  auto opts = std::make_shared<DemoOptions>();
  CLI::App& cmd = commands.add(
      "demo",
      "Save a random flat index with each compression (none, zstd, lz4), load every file back, check that "
      "searches agree, and time it",
      [opts](const Console& console) { return demo(*opts, console); });
  cmd.add_option("--dir", opts->dir, "Directory for demo-none/zstd/lz4.iqdb (default: a new temporary directory)")
      ->type_name("DIR");
  cmd.add_option("--vectors", opts->vectors, "Number of vectors")
      ->type_name("N")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{100'000'000}))
      ->capture_default_str();
  cmd.add_option("--dim", opts->dim, "Dimensions per vector")
      ->type_name("D")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{65536}))
      ->capture_default_str();
  CLI::Option* faiss = cmd.add_flag(
      "--faiss", opts->faiss,
      "Run on a FAISS index through the FAISS adapter (files demo-faiss-*.iqdb); needs a build with FAISS");
  cmd.add_option("--faiss-index", opts->faiss_index, "The FAISS index for --faiss: flat, hnsw or ivf")
      ->needs(faiss)
      ->type_name("KIND")
      ->check(CLI::IsMember({"flat", "hnsw", "ivf"}))
      ->capture_default_str();
}

}  // namespace iqdb::persist::cli
