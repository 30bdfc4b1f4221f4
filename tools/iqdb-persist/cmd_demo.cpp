// iqdb-persist demo: build a random index, save it with every compression,
// load each file back and check that nothing changed. Shows what the library
// does and how fast, on this machine. With --rados rados://POOL/NAME the
// snapshots go to a pool instead (NAME-demo-none, ...), through the same
// PersistedIndex calls (rados_persist_config).
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
#include <span>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "iqdb-persist/command.hpp"
#include "iqdb-persist/location.hpp"
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
  std::string rados;                 // --rados rados://POOL/NAME: snapshots in a pool instead of a directory
  RadosArgs rados_args;
};

// Where the demo's snapshots go: files in a directory, or objects in a pool.
struct Target {
  std::string base;  // the directory, or rados://POOL/NAME
  bool rados = false;
  // The location of the snapshot called `name` (e.g. demo-zstd).
  std::string of(const std::string& name) const {
    return rados ? base + "-" + name : (fs::path(base) / (name + ".iqdb")).string();
  }
  // How the saves' timing is described, and where the bytes are.
  const char* durable() const { return rados ? "acknowledged by every replica" : "fsync included"; }
  const char* stored() const { return rados ? "in the pool" : "on disk"; }
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

// Every (N/8)th vector carries metadata: its label and bucket (and, when
// `full`, its norm and a flag).
std::optional<Metadata> demo_metadata(std::uint64_t i, std::uint64_t n, std::span<const float> v, bool full) {
  if (i % std::max<std::uint64_t>(1, n / 8) != 0) return std::nullopt;
  Metadata meta{{"label", Value("vector-" + std::to_string(i))}, {"bucket", Value(static_cast<std::int64_t>(i % 10))}};
  if (full) {
    double norm = 0;
    for (const float x : v) norm += static_cast<double>(x) * static_cast<double>(x);
    meta.emplace("norm", Value(std::sqrt(norm)));
    meta.emplace("pinned", Value(i % 2 == 0));
  }
  return meta;
}

// A built index and how long building it took.
template <class I>
struct Built {
  explicit Built(I i) : index(std::move(i)) {}
  I index;
  std::uint64_t with_metadata = 0;
  double ms = 0;
};

class Checks {
 public:
  explicit Checks(std::ostream& out) : out_(out) {}

  void expect(bool ok, const std::string& scope, const std::string& what) {
    ++total_;
    out_ << "  " << (ok ? "[ok]   " : "[FAIL] ") << what << '\n';
    if (!ok) failures_.push_back(scope + ": " + what);
  }
  void fail(const std::string& scope, const std::string& what) { expect(false, scope, what); }
  // A failure to read or write the files (ErrorKind::Io): exit 2, as for
  // every command, instead of 1 (a failed check).
  void note_io() noexcept { io_ = true; }
  bool io() const noexcept { return io_; }

  std::size_t total() const noexcept { return total_; }
  const std::vector<std::string>& failures() const noexcept { return failures_; }

 private:
  std::ostream& out_;
  bool io_ = false;
  std::size_t total_ = 0;
  std::vector<std::string> failures_;
};

// Save `index` to cfg.path (timed; the index is moved in for the save and
// handed back after it: without a WAL the PersistedIndex writes nothing of
// its own), show the file's header, and load it back (timed).
template <class I>
PersistedIndex<I> save_show_load(I& index, const PersistConfig& cfg, FileSystem& fs, const Target& target, Result& r,
                                 std::ostream& out) {
  {
    auto db = PersistedIndex<I>::open_with(std::move(index), cfg);
    const Stopwatch sw;
    try {
      db.save();
    } catch (...) {
      index = std::move(db.index_mut());
      throw;
    }
    r.save_ms = sw.ms();
    index = std::move(db.index_mut());
  }
  const SnapshotSummary summary = inspect_snapshot(fs, cfg.path);
  r.saved = true;
  r.file_size = summary.file_size;
  r.payload_bytes = summary.header.uncompressed_len;
  out << "  save   " << timing(r.save_ms, r.payload_bytes) << ", " << target.durable() << ")\n"
      << "  file   " << human_bytes(r.file_size) << " " << target.stored() << "; its header:\n";
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
  return checks.io() ? kExitUsage : kExitFailed;
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

// Largest index the demo builds (floats), so a typo cannot exhaust memory.
constexpr std::uint64_t kMaxDemoFloats = std::uint64_t{1} << 32;  // 16 GiB

// Save `original` with one compression, show the header, load it back, and
// check that the loaded copy equals it (tour.compare) and answers the
// queries as it did.
template <class Tour, class I, class Hit>
Result try_variant(const Tour& tour, const Variant& v, const Location& where, const Target& target, I& original,
                   const std::vector<std::vector<float>>& queries, const std::vector<std::vector<Hit>>& expected,
                   std::ostream& out, Checks& checks) {
  Result r;
  r.label = v.label;
  PersistConfig cfg = where.config();
  cfg.compression = v.compression;
  try {
    const auto loaded = save_show_load(original, cfg, where.fs(), target, r, out);
    tour.compare(original, loaded.index(), v.name, checks);
    check_queries(loaded.index(), queries, expected, v.name, checks);
  } catch (const PersistError& e) {
    checks.fail(v.name, std::string(r.saved ? "load" : "save") + " failed: " + describe(e));
    if (e.kind() == ErrorKind::Io) checks.note_io();
  }
  out << '\n';
  return r;
}

// The demo's tour, for any index type: build a random index (tour.build),
// save it with every compression, load each file back and check it, print
// the summary. A Tour has: subject and metric (for the first line), prefix
// (of the file names), try_command (suggested for the zstd file, or another saved one),
// build(opts, rng) -> Built<I>, describe(built) and
// compare(original, loaded, scope, checks).
template <class Tour>
int run_tour(Tour& tour, const DemoOptions& opts, const Console& console) {
  std::ostream& out = console.out;
  if (opts.vectors > kMaxDemoFloats / opts.dim) {
    console.err << "demo: --vectors x --dim is limited to " << kMaxDemoFloats << " floats ("
                << human_bytes(kMaxDemoFloats * sizeof(float)) << ")\n";
    return kExitUsage;
  }
  const Target target{opts.rados.empty() ? prepare_dir(opts.dir).string() : opts.rados, !opts.rados.empty()};
  out << "iqdb-persist demo" << tour.subject << ": " << opts.vectors << " random Gaussian vectors x " << opts.dim
      << " dims, " << tour.metric << ", seed " << kSeed << "\n"
      << (target.rados ? "pool: " + target.of(tour.prefix + "*") : "directory: " + target.base) << "\n\n"
      << std::flush;

  std::mt19937_64 rng(kSeed);
  auto built = tour.build(opts, rng);
  out << "Built a " << tour.describe(built) << " in " << format("%.1f", built.ms) << " ms\n";
  std::vector<std::vector<float>> queries;
  using Hits = decltype(built.index.search(std::declval<std::span<const float>>(), kTopK));
  std::vector<Hits> expected;
  ask_queries(built.index, opts.dim, rng, queries, expected, out);

  const std::vector<Variant> variants = demo_variants();
  Checks checks(out);
  std::vector<Result> results;
  for (std::size_t i = 0; i < variants.size(); ++i) {
    const Variant& v = variants[i];
    const std::string where = target.of(tour.prefix + v.name);
    out << "[" << i + 1 << "/" << variants.size() << "] " << v.label << "  ->  "
        << (target.rados ? where : fs::path(where).filename().string()) << '\n'
        << std::flush;
    const Location location = Location::open(where, opts.rados_args);
    results.push_back(try_variant(tour, v, location, target, built.index, queries, expected, out, checks));
    out << std::flush;
  }
  print_summary(out, results);
  // The command to try names a snapshot that was saved (zstd's, else the
  // first saved); when none was, there is nothing to try.
  std::optional<std::size_t> saved;
  for (std::size_t i = 0; i < variants.size(); ++i) {
    if (results[i].saved && (!saved || variants[i].name == "zstd")) saved = i;
  }
  if (saved) {
    out << (target.rados ? "Snapshots kept in " + target.of(tour.prefix + "*") : "Files kept in " + target.base)
        << "; try: " << tour.try_command << target.of(tour.prefix + variants[*saved].name) << "\n\n";
  } else {
    out << "No snapshot was saved in " << (target.rados ? target.of(tour.prefix + "*") : target.base) << "\n\n";
  }
  return report_checks(checks, console);
}

// The flat index: N Gaussian vectors with ids 0..N-1, every (N/8)th with
// metadata; a loaded copy must equal the original.
struct FlatTour {
  std::string subject;
  std::string metric = std::string(to_string(kMetric)) + " metric";
  std::string prefix = "demo-";
  std::string try_command = "iqdb-persist verify ";

  Built<FlatIndex> build(const DemoOptions& opts, std::mt19937_64& rng) const {
    const Stopwatch sw;
    Built<FlatIndex> b(FlatIndex(opts.dim, kMetric));
    for (std::uint64_t i = 0; i < opts.vectors; ++i) {
      const std::vector<float> v = gaussian_vector(rng, opts.dim);
      std::optional<Metadata> meta = demo_metadata(i, opts.vectors, v, true);
      if (meta) ++b.with_metadata;
      b.index.insert(i, v, std::move(meta));
    }
    b.ms = sw.ms();
    return b;
  }
  std::string describe(const Built<FlatIndex>& b) const {
    return "flat index of " + std::to_string(b.index.size()) + " vectors (" + std::to_string(b.with_metadata) +
           " with metadata, " + human_bytes(b.index.size() * b.index.dim() * sizeof(float)) + " of floats)";
  }
  void compare(const FlatIndex& original, const FlatIndex& loaded, const std::string& scope, Checks& checks) const {
    checks.expect(loaded == original, scope, "loaded index == original (ids, vectors, metadata, order)");
  }
};

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

// A FAISS index of `kind` (flat, hnsw, ivf) through the FAISS adapter; a
// loaded copy must serialize to the original's bytes and hold the same
// metadata side table.
struct FaissTour {
  explicit FaissTour(std::string kind_) : kind(std::move(kind_)), subject(" on a FAISS index (" + kind + ")") {}
  std::string kind;
  std::string subject;
  std::string metric = "L2";
  std::string prefix = "demo-faiss-";
  std::string try_command = "iqdb-persist inspect ";
  std::vector<std::uint8_t> original_bytes;  // the built index's serialization

  Built<FaissIndex> build(const DemoOptions& opts, std::mt19937_64& rng) {
    std::vector<float> data;
    data.reserve(static_cast<std::size_t>(opts.vectors * opts.dim));
    for (std::uint64_t i = 0; i < opts.vectors; ++i) {
      const std::vector<float> v = gaussian_vector(rng, opts.dim);
      data.insert(data.end(), v.begin(), v.end());
    }
    const Stopwatch sw;
    Built<FaissIndex> b(FaissIndex(make_faiss_index(kind, static_cast<int>(opts.dim), opts.vectors, data)));
    for (std::uint64_t i = 0; i < opts.vectors; ++i) {
      const std::span<const float> v(data.data() + i * opts.dim, static_cast<std::size_t>(opts.dim));
      std::optional<Metadata> meta = demo_metadata(i, opts.vectors, v, false);
      if (meta) ++b.with_metadata;
      b.index.insert(i, v, std::move(meta));
    }
    b.ms = sw.ms();
    original_bytes = faiss_serialization(b.index);
    return b;
  }
  std::string describe(const Built<FaissIndex>& b) const {
    return "FAISS index of " + std::to_string(b.index.size()) + " vectors (" + std::to_string(b.with_metadata) +
           " with metadata in the adapter's side table)";
  }
  void compare(const FaissIndex& original, const FaissIndex& loaded, const std::string& scope, Checks& checks) const {
    checks.expect(faiss_serialization(loaded) == original_bytes, scope,
                  "loaded FAISS index serializes to the same bytes as the original");
    checks.expect(loaded.metadata_table() == original.metadata_table(), scope, "metadata side table identical");
  }
};

#endif  // IQDB_PERSIST_CLI_HAVE_FAISS

int demo(const DemoOptions& opts, const Console& console) {
  if (!opts.rados.empty() && !is_rados(opts.rados)) {
    console.err << "demo: --rados takes rados://POOL/NAME\n";
    return kExitUsage;
  }
  if (!opts.faiss) {
    FlatTour tour;
    return run_tour(tour, opts, console);
  }
#if defined(IQDB_PERSIST_CLI_HAVE_FAISS)
  if (opts.faiss_index != "flat" && opts.faiss_index != "hnsw" && opts.faiss_index != "ivf") {
    console.err << "demo: --faiss-index must be flat, hnsw or ivf\n";
    return kExitUsage;
  }
  FaissTour tour(opts.faiss_index);
  return run_tour(tour, opts, console);
#else
  console.err << "demo: this build has no FAISS adapter (install libfaiss-dev and rebuild)\n";
  return kExitUsage;
#endif
}

}  // namespace

void register_demo(CommandSet& commands) {
  auto opts = std::make_shared<DemoOptions>();
  CLI::App& cmd = commands.add(
      "demo",
      "Save a random flat index with each compression (none, zstd, lz4), load every file back, check that "
      "searches agree, and time it",
      [opts](const Console& console) { return demo(*opts, console); });
  CLI::Option* dir =
      cmd.add_option("--dir", opts->dir, "Directory for demo-none/zstd/lz4.iqdb (default: a new temporary directory)")
          ->type_name("DIR");
  cmd.add_option("--rados", opts->rados,
                 "Save to a RADOS pool instead: rados://POOL/NAME-demo-none, -zstd, -lz4 (needs a build with RADOS)")
      ->type_name("rados://POOL/NAME")
      ->excludes(dir);
  add_rados_options(cmd, opts->rados_args);
  cmd.add_option("--vectors", opts->vectors, "Number of vectors")
      ->type_name("N")
      ->check(CLI::TypeValidator<std::uint64_t>(""))  // first: Range says "abc not in range 1 to ..."
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{100'000'000}))
      ->capture_default_str();
  cmd.add_option("--dim", opts->dim, "Dimensions per vector")
      ->type_name("D")
      ->check(CLI::TypeValidator<std::uint64_t>(""))
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
