// iqdb_persist_bench: the performance targets, each figure printed
// beside its limit measured in the same run.
//
//   iqdb_persist_bench --dir build/bench-data            # full size (1M x 128)
//   iqdb_persist_bench --dir build/bench-data --vectors 100000 --reps 3   # quick
//
// Sections (select with --only):
//   crc       CRC-32 of a 256 MiB buffer vs memcpy of it (zlib for context)
//   save      PersistedIndex::save (FsyncPolicy::always, no compression) vs
//             one write() + fsync() of the same byte count to a fresh file
//   load      PersistedIndex::load vs read() of the same file into a fresh
//             malloc'd buffer; both with the file in the page cache
//   rss       peak RSS of child processes (build / build+save / load)
//   map       the mapped load (PersistConfig::map_snapshot) of the same file
//             vs read() into fresh memory and vs the copying load, from the
//             page cache; its parts (mapping, CRC) for context; the PSS of
//             two processes that map the file vs one; and from a cold page
//             cache (posix_fadvise DONTNEED) vs a cold read()
//   compress  zstd 1, zstd 3, lz4 on Gaussian and 8-bit-quantized vectors
//   meta      a metadata-heavy index (--meta-vectors x --dim, three fields per
//             vector: a 30-byte string, an integer, a bool), saved and loaded
//             with each compression (none, lz4, zstd 3) against write()+fsync()
//             and read() of the same file; "save, no disk" (context) is the
//             same save into a file system that discards the bytes
//
// Each pair is timed --reps times, interleaved, and the medians compared.
// Not a test: it is never registered with CTest.
#include <fcntl.h>
#include <sys/mman.h>
#include <malloc.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "iqdb/persist.hpp"
#include "synthetic_index.hpp"

namespace fs = std::filesystem;
using namespace iqdb::persist;
using namespace iqdb::persist::bench;  // the timing harness (bench_util.hpp), Dataset

namespace {

constexpr double kMiB = 1024.0 * 1024.0;

struct Options {
  std::uint64_t vectors = 1'000'000;
  std::uint64_t dim = 128;
  int reps = 5;
  int compress_reps = 3;
  std::uint64_t compress_vectors = 0;  // 0 = --vectors
  std::uint64_t meta_vectors = 500'000;
  std::uint64_t crc_mib = 256;
  std::uint64_t seed = 42;
  std::string dir;
  std::vector<std::string> only;
  std::string json;
  bool strict = false;
  bool keep = false;
  bool cold_memory = false;
  std::string child;  // internal: child-process mode for the RSS section
};

// ---------------------------------------------------------------- helpers (the timing harness: bench_util.hpp)

std::string fmt(const char* f, double a) {
  char buf[128];
  std::snprintf(buf, sizeof buf, f, a);
  return buf;
}
std::string fmt(const char* f, double a, double b) {
  char buf[128];
  std::snprintf(buf, sizeof buf, f, a, b);
  return buf;
}

std::string ms_and_rate(double secs, std::uint64_t bytes) {
  return fmt("%.1f ms (%.2f GB/s)", secs * 1e3, static_cast<double>(bytes) / secs / 1e9);
}

std::uint64_t bytes_of_file(const fs::path& p) { return static_cast<std::uint64_t>(fs::file_size(p)); }

PersistConfig make_config(const fs::path& path, Compression c = Compression::none()) {
  PersistConfig cfg(path);
  cfg.fsync_policy = FsyncPolicy::always();
  cfg.compression = c;
  return cfg;
}

// ---------------------------------------------------------------- baselines

// First touch of `n` bytes of fresh anonymous memory (mmap + memset), with
// 4 KiB pages or advised for transparent huge pages. Context for the load
// figures: the loader's destination and the read() baseline's buffer are
// both fresh memory.
double time_touch_fresh(std::size_t n, bool huge) {
  void* p = nullptr;
  const double t = seconds([&] {
    p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die_errno("mmap");
    (void)::madvise(p, n, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    std::memset(p, 1, n);
  });
  ::munmap(p, n);
  return t;
}

// ---------------------------------------------------------------- report

struct Row {
  std::string section;
  std::string figure;
  std::string measured;
  std::string limit;
  std::optional<double> ratio;
  std::string target;
  std::optional<bool> pass;  // nullopt: context only
};

class Report {
 public:
  void add(Row r) {
    std::printf("  %-44s %s\n", r.figure.c_str(), r.measured.c_str());
    if (!r.limit.empty()) std::printf("  %-44s %s\n", "  limit / context", r.limit.c_str());
    const char* verdict = r.pass ? (*r.pass ? "PASS" : "FAIL") : "";
    if (r.ratio) {
      const std::string target = r.target.empty() ? "" : "  (target " + r.target + ") ";
      std::printf("  %-44s %.3f%s%s\n", "  ratio", *r.ratio, target.c_str(), verdict);
    } else if (r.pass) {
      std::printf("  %-44s target %s: %s\n", "", r.target.c_str(), verdict);
    }
    std::fflush(stdout);
    rows_.push_back(std::move(r));
  }
  void info(const std::string& section, const std::string& key, nlohmann::json v) { info_[section][key] = std::move(v); }

  bool all_pass() const {
    return std::all_of(rows_.begin(), rows_.end(), [](const Row& r) { return !r.pass || *r.pass; });
  }

  void print_summary() const {
    std::printf("\n%-10s %-44s %-32s %-32s %8s %-9s %s\n", "section", "figure", "measured", "limit / context", "ratio",
                "target", "verdict");
    std::printf("%s\n", std::string(150, '-').c_str());
    for (const Row& r : rows_) {
      std::printf("%-10s %-44s %-32s %-32s %8s %-9s %s\n", r.section.c_str(), r.figure.c_str(), r.measured.c_str(),
                  r.limit.c_str(), r.ratio ? fmt("%.3f", *r.ratio).c_str() : "", r.target.c_str(),
                  r.pass ? (*r.pass ? "PASS" : "FAIL") : "");
    }
  }

  void write_json(const std::string& path, const Options& o) const {
    nlohmann::json j;
    j["vectors"] = o.vectors;
    j["dim"] = o.dim;
    j["reps"] = o.reps;
    j["dir"] = o.dir;
    for (const Row& r : rows_) {
      nlohmann::json row{{"section", r.section}, {"figure", r.figure}, {"measured", r.measured},
                         {"limit", r.limit},     {"target", r.target}};
      row["ratio"] = r.ratio ? nlohmann::json(*r.ratio) : nlohmann::json(nullptr);
      row["pass"] = r.pass ? nlohmann::json(*r.pass) : nlohmann::json(nullptr);
      j["rows"].push_back(row);
    }
    j["details"] = info_;
    std::ofstream(path) << j.dump(2) << "\n";
  }

 private:
  std::vector<Row> rows_;
  nlohmann::json info_ = nlohmann::json::object();
};

void heading(const std::string& s) {
  std::printf("\n== %s\n", s.c_str());
  std::fflush(stdout);
}

// ---------------------------------------------------------------- crc

void bench_crc(const Options& o, Report& rep) {
  const std::size_t n = static_cast<std::size_t>(o.crc_mib) << 20;
  heading("CRC-32 vs memcpy, " + std::to_string(o.crc_mib) + " MiB buffer (pre-touched, random bytes)");
  std::vector<std::uint64_t> src_words(n / 8);
  std::mt19937_64 rng(o.seed);
  for (auto& w : src_words) w = rng();
  std::vector<std::uint64_t> dst_words(n / 8, 1);  // touched
  const auto* src = reinterpret_cast<const unsigned char*>(src_words.data());
  auto* dst = reinterpret_cast<unsigned char*>(dst_words.data());

  std::vector<double> t_copy, t_crc, t_zlib;
  std::uint32_t ours = 0, theirs = 0;
  for (int r = 0; r <= o.reps; ++r) {  // rep 0 is a warm-up
    const double c = seconds([&] { std::memcpy(dst, src, n); });
    const double k = seconds([&] { ours = checksum::compute(src, n); });
    const double z = seconds([&] { theirs = static_cast<std::uint32_t>(crc32_z(0, src, n)); });
    if (r == 0) continue;
    t_copy.push_back(c);
    t_crc.push_back(k);
    t_zlib.push_back(z);
  }
  if (ours != theirs || dst[n / 2] != src[n / 2]) die("CRC mismatch between iqdb and zlib");
  const double gb = static_cast<double>(n) / 1e9;
  const double copy = gb / median(t_copy), crc = gb / median(t_crc), zl = gb / median(t_zlib);
  rep.add({"crc", "CRC-32 (checksum::compute, ISA-L)", fmt("%.2f GB/s", crc), fmt("memcpy %.2f GB/s", copy),
           crc / copy, ">= 1.5", crc / copy >= 1.5});
  rep.add({"crc", "zlib crc32_z (context)", fmt("%.2f GB/s", zl), fmt("memcpy %.2f GB/s", copy), zl / copy, "", {}});
}

// ---------------------------------------------------------------- save / load

struct Saved {
  fs::path path;
  std::uint64_t bytes = 0;
};

Saved bench_save(const Options& o, PersistedIndex<FlatIndex>& db, Report& rep) {
  const fs::path target = db.config().path;
  const fs::path raw = fs::path(o.dir) / "baseline-write.bin";
  heading("save: PersistedIndex::save (FsyncPolicy::always, no compression) vs write()+fsync()");
  remove_and_settle(target);
  db.save();  // warm-up; also gives the byte count
  const std::uint64_t bytes = bytes_of_file(target);
  std::vector<std::byte> data(static_cast<std::size_t>(bytes), std::byte{0x5a});  // pre-touched
  remove_and_settle(raw);
  (void)time_write_fsync(raw, data.data(), data.size());

  std::vector<double> t_save, t_raw, t_over;
  for (int r = 0; r < o.reps; ++r) {
    // Alternate the order so slow drift does not favour either side.
    for (int k = 0; k < 2; ++k) {
      if ((k == 0) == (r % 2 == 0)) {
        remove_and_settle(target);
        prepare_memory();
        t_save.push_back(seconds([&] { db.save(); }));
      } else {
        remove_and_settle(raw);
        prepare_memory();
        t_raw.push_back(time_write_fsync(raw, data.data(), data.size()));
      }
    }
    std::fprintf(stderr, "  rep %d: save %.1f ms, write+fsync %.1f ms\n", r + 1, t_save.back() * 1e3,
                 t_raw.back() * 1e3);
  }
  remove_and_settle(raw);
  // Replacing an existing snapshot (the usual case): the old file's blocks
  // are freed by the rename. Context only.
  for (int r = 0; r < o.reps; ++r) {
    ::sync();
    prepare_memory();
    t_over.push_back(seconds([&] { db.save(); }));
  }
  const double s = median(t_save), w = median(t_raw);
  rep.add({"save", "save, fresh target (median of " + std::to_string(o.reps) + ")", ms_and_rate(s, bytes),
           "write+fsync " + ms_and_rate(w, bytes), s / w, "<= 1.08", s / w <= 1.08});
  const double sb = *std::min_element(t_save.begin(), t_save.end());
  const double wb = *std::min_element(t_raw.begin(), t_raw.end());
  rep.add({"save", "save, best of " + std::to_string(o.reps) + " (context)", ms_and_rate(sb, bytes),
           "write+fsync " + ms_and_rate(wb, bytes), sb / wb, "", {}});
  const double ov = median(t_over);
  rep.add({"save", "save over an existing snapshot (context)", ms_and_rate(ov, bytes),
           "write+fsync " + ms_and_rate(w, bytes), ov / w, "", {}});
  rep.info("save", "file_bytes", bytes);
  rep.info("save", "save_s", t_save);
  rep.info("save", "write_fsync_s", t_raw);
  rep.info("save", "save_overwrite_s", t_over);
  return Saved{target, bytes};
}

void bench_load(const Options& o, const Saved& saved, Report& rep) {
  heading("load: PersistedIndex<FlatIndex>::load vs read() into a fresh malloc'd buffer (file in page cache)");
  // Warm the page cache for both (the file was just written and fsynced, so
  // its pages are clean and cached; one read makes sure).
  (void)time_read_fresh(saved.path);
  const PersistConfig cfg = make_config(saved.path);
  std::uint64_t loaded_n = 0;
  std::vector<double> t_load, t_read;
  for (int r = 0; r < o.reps; ++r) {
    for (int k = 0; k < 2; ++k) {
      if ((k == 0) == (r % 2 == 0)) {
        std::optional<PersistedIndex<FlatIndex>> db;
        prepare_memory();
        t_load.push_back(seconds([&] { db.emplace(PersistedIndex<FlatIndex>::load(cfg)); }));
        loaded_n = db->index().size();
      } else {
        prepare_memory();
        t_read.push_back(time_read_fresh(saved.path));
      }
    }
    std::fprintf(stderr, "  rep %d: load %.1f ms, read %.1f ms\n", r + 1, t_load.back() * 1e3, t_read.back() * 1e3);
  }
  if (loaded_n != o.vectors) die("loaded index has the wrong size");
  const double l = median(t_load), rd = median(t_read);
  rep.add({"load", "load, warm page cache (median of " + std::to_string(o.reps) + ")", ms_and_rate(l, saved.bytes),
           "read " + ms_and_rate(rd, saved.bytes), l / rd, "<= 1.10", l / rd <= 1.10});
  const double lb = *std::min_element(t_load.begin(), t_load.end());
  const double rb = *std::min_element(t_read.begin(), t_read.end());
  rep.add({"load", "load, best of " + std::to_string(o.reps) + " (context)", ms_and_rate(lb, saved.bytes),
           "read " + ms_and_rate(rb, saved.bytes), lb / rb, "", {}});
  std::vector<double> t_4k, t_thp;
  for (int r = 0; r < o.reps; ++r) {
    prepare_memory();
    t_4k.push_back(time_touch_fresh(static_cast<std::size_t>(saved.bytes), false));
    prepare_memory();
    t_thp.push_back(time_touch_fresh(static_cast<std::size_t>(saved.bytes), true));
  }
  rep.add({"load", "touch fresh memory, THP (context)", ms_and_rate(median(t_thp), saved.bytes),
           "4 KiB pages " + ms_and_rate(median(t_4k), saved.bytes), median(t_thp) / median(t_4k), "", {}});
  rep.info("load", "touch_4k_s", t_4k);
  rep.info("load", "touch_thp_s", t_thp);
  rep.info("load", "load_s", t_load);
  rep.info("load", "read_s", t_read);
}

// ---------------------------------------------------------------- mapped load

PersistedIndex<FlatIndex> load_mapped(const fs::path& path) {
  PersistConfig cfg = make_config(path);
  cfg.map_snapshot = true;
  auto db = PersistedIndex<FlatIndex>::load(cfg);
  if (!db.index().mapped()) die("the mapped load copied: is the file mappable?");
  return db;
}

// Drop the file's clean pages from the page cache (a cold start).
void drop_from_page_cache(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) die_errno("open " + p.string());
  (void)::fdatasync(fd);
  if (::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0) die("posix_fadvise DONTNEED failed");
  ::close(fd);
}

// The parts of a mapped load, for context: mmap + populate of the file's
// bytes alone, and the CRC over them once mapped; then a second CRC over the
// same mapping, which shows what the first CPU access to each page of a new
// mapping costs beyond reading its bytes (docs/PERFORMANCE.md).
void bench_map_parts(const Saved& saved, const Options& o, Report& rep) {
  std::vector<double> t_map, t_crc, t_crc2;
  for (int r = 0; r < o.reps; ++r) {
    const int fd = ::open(saved.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) die_errno("open");
    const auto n = static_cast<std::size_t>(saved.bytes);
    void* p = MAP_FAILED;
    t_map.push_back(seconds([&] {
      p = ::mmap(nullptr, n, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) die_errno("mmap");
      (void)::madvise(p, n, MADV_POPULATE_READ);
    }));
    std::uint32_t crc = 0;
    t_crc.push_back(seconds([&] { crc = checksum::compute(p, n); }));
    std::uint32_t again = 0;
    t_crc2.push_back(seconds([&] { again = checksum::compute(p, n); }));
    if (again != crc) die("the second CRC over the same mapping differs from the first");
    if (crc == 0) std::fprintf(stderr, "  (crc 0)\n");
    ::munmap(p, n);
    ::close(fd);
  }
  rep.add({"map", "mmap + MADV_POPULATE_READ alone (context)", ms_and_rate(median(t_map), saved.bytes), "", {},
           "", {}});
  rep.add({"map", "CRC of the mapped bytes alone (context)", ms_and_rate(median(t_crc), saved.bytes), "", {}, "",
           {}});
  rep.add({"map", "same CRC again, same mapping (context)", ms_and_rate(median(t_crc2), saved.bytes), "", {}, "",
           {}});
}

// A child that maps the snapshot, says "loaded", waits for a byte on its
// stdin, then prints its proportional set size (KiB) and exits.
struct PssChild {
  pid_t pid = -1;
  int to = -1;    // its stdin
  int from = -1;  // its stdout
};

// This program again, with `args` after its name; its stdin and stdout are
// in_fd and out_fd (-1: this process's own).
pid_t spawn_self(std::vector<std::string> args, int in_fd, int out_fd) {
  const std::string exe = fs::read_symlink("/proc/self/exe").string();
  args.insert(args.begin(), exe);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) die_errno("fork");
  if (pid == 0) {
    if (in_fd >= 0) ::dup2(in_fd, STDIN_FILENO);
    if (out_fd >= 0) ::dup2(out_fd, STDOUT_FILENO);
    ::execv(exe.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

PssChild spawn_pss_child(const Options& o) {
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) die_errno("pipe");
  const pid_t pid = spawn_self({"--child", "map-pss", "--dir", o.dir}, in[0], out[1]);
  ::close(in[0]);
  ::close(out[1]);
  return PssChild{pid, in[1], out[0]};
}

std::string read_line(int fd) {
  std::string line;
  char c = 0;
  while (::read(fd, &c, 1) == 1 && c != '\n') line += c;
  return line;
}

// Start `count` children, let them all load, then collect their PSS.
std::vector<std::uint64_t> pss_of_children(const Options& o, int count) {
  std::vector<PssChild> kids;
  for (int i = 0; i < count; ++i) kids.push_back(spawn_pss_child(o));
  for (const PssChild& k : kids) {
    if (read_line(k.from) != "loaded") die("a map-pss child failed to load");
  }
  std::vector<std::uint64_t> pss;
  for (const PssChild& k : kids) {
    if (::write(k.to, "x", 1) != 1) die_errno("write");
    const std::string line = read_line(k.from);
    if (line.rfind("pss=", 0) != 0) die("a map-pss child said '" + line + "'");
    pss.push_back(std::stoull(line.substr(4)));
  }
  for (const PssChild& k : kids) {
    ::close(k.to);
    ::close(k.from);
    int status = 0;
    (void)::waitpid(k.pid, &status, 0);
  }
  return pss;
}

std::uint64_t smaps_rollup_kib(const char* field) {
  std::ifstream in("/proc/self/smaps_rollup");
  std::string key;
  std::uint64_t v = 0;
  std::string unit;
  while (in >> key) {
    if (key == std::string(field) + ":") {
      in >> v;
      return v;
    }
  }
  return 0;
}

int map_pss_child(const Options& o) {
  const auto db = load_mapped(fs::path(o.dir) / "map.iqdb");
  std::printf("loaded\n");
  std::fflush(stdout);
  char c = 0;
  if (::read(STDIN_FILENO, &c, 1) != 1) return 1;
  std::printf("pss=%llu\n", static_cast<unsigned long long>(smaps_rollup_kib("Pss")));
  std::fflush(stdout);
  // Keep the mapping until every child has measured (the parent closes the
  // pipe then): a child that exited at once would leave the next one alone
  // with the file's pages, and its PSS would count them whole.
  while (::read(STDIN_FILENO, &c, 1) > 0) {
  }
  return 0;
}

void bench_map_pss(const Options& o, const Saved& saved, Report& rep) {
  const fs::path link = fs::path(o.dir) / "map.iqdb";
  remove_if_exists(link);
  fs::copy_file(saved.path, link);
  (void)time_read_fresh(link);  // in the page cache
  const std::vector<std::uint64_t> one = pss_of_children(o, 1);
  const std::vector<std::uint64_t> two = pss_of_children(o, 2);
  remove_if_exists(link);
  const double a = static_cast<double>(one[0]) / 1024.0;
  const double b = static_cast<double>(two[0] + two[1]) / 1024.0;
  rep.add({"map", "PSS of two processes mapping the file", fmt("%.1f MiB", b), fmt("one process %.1f MiB", a), b / a,
           "<= 1.1", b / a <= 1.1});
  rep.info("map", "pss_one_kib", one);
  rep.info("map", "pss_two_kib", two);
}

void bench_map_cold(const Options& o, const Saved& saved, Report& rep) {
  std::vector<double> t_map, t_read;
  for (int r = 0; r < o.reps; ++r) {
    for (int k = 0; k < 2; ++k) {
      drop_from_page_cache(saved.path);
      prepare_memory();
      if ((k == 0) == (r % 2 == 0)) {
        std::optional<PersistedIndex<FlatIndex>> db;
        t_map.push_back(seconds([&] { db.emplace(load_mapped(saved.path)); }));
      } else {
        t_read.push_back(time_read_fresh(saved.path));
      }
    }
    std::fprintf(stderr, "  cold rep %d: mapped load %.1f ms, read %.1f ms\n", r + 1, t_map.back() * 1e3,
                 t_read.back() * 1e3);
  }
  const double m = median(t_map), rd = median(t_read);
  rep.add({"map", "mapped load, cold page cache", ms_and_rate(m, saved.bytes), "cold read " + ms_and_rate(rd, saved.bytes),
           m / rd, "<= 1.0", m / rd <= 1.0});
  rep.info("map", "cold_mapped_load_s", t_map);
  rep.info("map", "cold_read_s", t_read);
}

// What a user's code does: PersistedIndex<FlatIndex>::load with
// map_snapshot, against read() of the file into fresh memory and against
// the copying load, interleaved, the file in the page cache.
void bench_map(const Options& o, const Saved& saved, Report& rep) {
  heading("mapped load: load(map_snapshot) vs read() into fresh memory and vs the copying load (page cache)");
  (void)time_read_fresh(saved.path);
  std::vector<double> t_map, t_read, t_copy;
  std::uint64_t pmd_kib = 0;  // of the file's pages, mapped by 2 MiB entries (the most over the loads)
  for (int r = 0; r < o.reps; ++r) {
    for (int k = 0; k < 3; ++k) {
      prepare_memory();
      std::optional<PersistedIndex<FlatIndex>> db;  // destroyed after the timing, as read()'s buffer
      switch ((k + r) % 3) {
        case 0:
          t_map.push_back(seconds([&] { db.emplace(load_mapped(saved.path)); }));
          pmd_kib = std::max(pmd_kib, smaps_rollup_kib("FilePmdMapped"));
          break;
        case 1: t_read.push_back(time_read_fresh(saved.path)); break;
        default:
          t_copy.push_back(seconds([&] { db.emplace(PersistedIndex<FlatIndex>::load(make_config(saved.path))); }));
      }
    }
    std::fprintf(stderr, "  rep %d: mapped load %.1f ms, read %.1f ms, copying load %.1f ms\n", r + 1,
                 t_map.back() * 1e3, t_read.back() * 1e3, t_copy.back() * 1e3);
  }
  const double m = median(t_map), rd = median(t_read), c = median(t_copy);
  rep.add({"map", "mapped load vs read() (median of " + std::to_string(o.reps) + ")", ms_and_rate(m, saved.bytes),
           "read " + ms_and_rate(rd, saved.bytes), m / rd, "<= 0.1", m / rd <= 0.1});
  rep.add({"map", "mapped load vs copying load", ms_and_rate(m, saved.bytes), "copying " + ms_and_rate(c, saved.bytes),
           m / c, "<= 0.4", m / c <= 0.4});
  // Whether the kernel mapped the vectors by 2 MiB entries (page cache in
  // 2 MiB folios, file offset and address congruent): about 40 % of the
  // mapped load's time on this VM when it does not (docs/PERFORMANCE.md).
  rep.add({"map", "vectors mapped by 2 MiB entries (context)", fmt("%.1f MiB", static_cast<double>(pmd_kib) / 1024.0),
           fmt("of %.1f MiB", static_cast<double>(saved.bytes) / (1024.0 * 1024.0)), {}, "", {}});
  rep.info("map", "mapped_load_s", t_map);
  rep.info("map", "read_s", t_read);
  rep.info("map", "copying_load_s", t_copy);
  bench_map_parts(saved, o, rep);
  bench_map_pss(o, saved, rep);
  bench_map_cold(o, saved, rep);
}

// ---------------------------------------------------------------- compression

void bench_compress(const Options& o, Report& rep) {
  const std::uint64_t n = o.compress_vectors != 0 ? o.compress_vectors : o.vectors;
  struct Codec {
    const char* name;
    Compression c;
  };
  const Codec codecs[] = {{"none", Compression::none()},
                          {"zstd-1", Compression::zstd(1)},
                          {"zstd-3", Compression::zstd(3)},
                          {"lz4", Compression::lz4()}};
  for (Dataset ds : {Dataset::Gaussian, Dataset::Quantized}) {
    heading("compression: " + std::string(bench::to_string(ds)) + " vectors, " + std::to_string(n) + " x " +
            std::to_string(o.dim) + ", median of " + std::to_string(o.compress_reps));
    const fs::path path = fs::path(o.dir) / "compress.iqdb";
    FlatIndex index = bench::make_index(n, o.dim, ds, o.seed + 1);
    for (const Codec& codec : codecs) {
      const PersistConfig cfg = make_config(path, codec.c);
      std::vector<double> t_save, t_load;
      FileHeader h;
      {
        auto db = PersistedIndex<FlatIndex>::open_with(std::move(index), cfg);
        for (int r = 0; r < o.compress_reps; ++r) {
          remove_and_settle(path);
          prepare_memory();
          t_save.push_back(seconds([&] { h = db.save(); }));
        }
        index = std::move(db.index_mut());
      }
      (void)time_read_fresh(path);  // page cache warm, as for the uncompressed load
      for (int r = 0; r < o.compress_reps; ++r) {
        std::optional<PersistedIndex<FlatIndex>> loaded;
        prepare_memory();
        t_load.push_back(seconds([&] { loaded.emplace(PersistedIndex<FlatIndex>::load(cfg)); }));
        if (loaded->index().size() != n) die("compressed round trip lost vectors");
      }
      const double mb = static_cast<double>(h.uncompressed_len) / 1e6;
      const double ratio = static_cast<double>(h.uncompressed_len) / static_cast<double>(h.stored_len);
      const std::string label = std::string(bench::to_string(ds)) + " " + codec.name;
      rep.add({"compress", label,
               fmt("save %.0f MB/s, load %.0f MB/s", mb / median(t_save), mb / median(t_load)),
               fmt("%.1f MB -> %.1f MB", mb, static_cast<double>(h.stored_len) / 1e6), ratio, "", {}});
      rep.info("compress", label, {{"save_s", t_save}, {"load_s", t_load}, {"stored_bytes", h.stored_len},
                                   {"payload_bytes", h.uncompressed_len}});
    }
    remove_and_settle(path);
  }
}

// ---------------------------------------------------------------- metadata-heavy

// The metadata of row i: a 30-byte string, an integer and a bool (issue 14).
Metadata row_metadata(std::uint64_t i) {
  char title[31];
  std::snprintf(title, sizeof title, "document-title-%015llu", static_cast<unsigned long long>(i));
  return Metadata{{"title", Value(std::string_view(title, 30))},
                  {"year", Value(static_cast<std::int64_t>(1900 + i % 125))},
                  {"flag", Value(i % 3 == 0)}};
}

FlatIndex make_meta_index(std::uint64_t n, std::uint64_t dim, std::uint64_t seed) {
  FlatIndex index(dim, DistanceMetric::Euclidean);
  index.reserve(n);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(dim));
  for (std::uint64_t i = 0; i < n; ++i) {
    for (float& x : v) x = normal(rng);
    index.insert(i, v, row_metadata(i));
  }
  return index;
}

// A file system whose new files discard what is written (everything else
// goes to the real one): a save through it costs what the library and the
// compressor spend on the CPU, without the disk.
class DiscardFs final : public FileSystemWrapper {
 public:
  DiscardFs() : FileSystemWrapper(default_file_system()) {}
  std::unique_ptr<WritableFile> create_exclusive(const fs::path& p) override { return std::make_unique<File>(p); }
  void rename(const fs::path&, const fs::path&) override {}
  void remove(const fs::path&) override {}
  void sync_dir(const fs::path&) override {}

 private:
  class File final : public WritableFile {
   public:
    explicit File(fs::path p) : path_(std::move(p)) {}
    void append(std::span<const std::byte>) override {}
    void write_at(std::uint64_t, std::span<const std::byte>) override {}
    void sync() override {}
    void datasync() override {}
    void truncate(std::uint64_t) override {}
    void start_writeback(std::uint64_t, std::uint64_t) override {}
    void close() override {}
    const fs::path& path() const noexcept override { return path_; }

   private:
    fs::path path_;
  };
};

// Save and load of a metadata-heavy index under each compression, each
// against the raw limit for the same file in the same run: save vs
// write()+fsync() of the file's byte count, load vs read() of the file.
// What is timed is what a user's code does: PersistedIndex::save() and
// PersistedIndex<FlatIndex>::load(cfg).
void bench_meta(const Options& o, Report& rep) {
  const std::uint64_t n = o.meta_vectors;
  heading("metadata-heavy: " + std::to_string(n) + " x " + std::to_string(o.dim) +
          ", 3 fields per vector (30-byte string, int, bool), median of " + std::to_string(o.reps));
  const fs::path path = fs::path(o.dir) / "meta.iqdb";
  const fs::path raw = fs::path(o.dir) / "meta-baseline-write.bin";
  FlatIndex index = make_meta_index(n, o.dim, o.seed + 2);
  struct Codec {
    const char* name;
    Compression c;
  };
  // zstd-3 x2: the opt-in of zstd's own worker threads (Compression::zstd(level, threads)).
  const Codec codecs[] = {{"none", Compression::none()},
                          {"lz4", Compression::lz4()},
                          {"zstd-3", Compression::zstd(3)},
                          {"zstd-3 x2", Compression::zstd(3, 2)}};
  for (const Codec& codec : codecs) {
    const PersistConfig cfg = make_config(path, codec.c);
    std::vector<double> t_save, t_write, t_load, t_read, t_cpu;
    std::uint64_t bytes = 0;
    {
      auto db = PersistedIndex<FlatIndex>::open_with(std::move(index), cfg);
      remove_and_settle(path);
      db.save();  // warm-up; gives the byte count
      bytes = bytes_of_file(path);
      std::vector<std::byte> data(static_cast<std::size_t>(bytes), std::byte{0x5a});  // pre-touched
      DiscardFs discard;
      const SnapshotInfo info{FlatIndex::index_type, o.dim, DistanceMetric::Euclidean, n, 0};
      for (int r = 0; r < o.reps; ++r) {
        for (int k = 0; k < 2; ++k) {
          if ((k == 0) == (r % 2 == 0)) {
            remove_and_settle(path);
            prepare_memory();
            t_save.push_back(seconds([&] { db.save(); }));
          } else {
            remove_and_settle(raw);
            prepare_memory();
            t_write.push_back(time_write_fsync(raw, data.data(), data.size()));
          }
        }
        // Context: the same save with the file's bytes discarded.
        t_cpu.push_back(seconds([&] {
          write_snapshot(discard, path, info, codec.c, true, [&](PayloadWriter& w) { db.index().save_to(w); });
        }));
      }
      remove_and_settle(raw);
      index = std::move(db.index_mut());
    }
    // The file was just written and fsynced: its pages are in the page cache
    // for both sides, as for a user who loads what was saved.
    for (int r = 0; r < o.reps; ++r) {
      for (int k = 0; k < 2; ++k) {
        if ((k == 0) == (r % 2 == 0)) {
          std::optional<PersistedIndex<FlatIndex>> loaded;
          prepare_memory();
          t_load.push_back(seconds([&] { loaded.emplace(PersistedIndex<FlatIndex>::load(cfg)); }));
          if (loaded->index().size() != n) die("metadata round trip lost vectors");
          const Metadata* m = loaded->index().metadata(VectorId(n - 1));
          if (m == nullptr || *m != row_metadata(n - 1)) die("metadata round trip changed the metadata");
        } else {
          prepare_memory();
          t_read.push_back(time_read_fresh(path));
        }
      }
      const auto i = static_cast<std::size_t>(r);
      std::fprintf(stderr, "  %s rep %d: save %.1f ms, write+fsync %.1f ms, save no disk %.1f ms, load %.1f ms, read %.1f ms\n",
                   codec.name, r + 1, t_save[i] * 1e3, t_write[i] * 1e3, t_cpu[i] * 1e3, t_load.back() * 1e3,
                   t_read.back() * 1e3);
    }
    const double s = median(t_save), w = median(t_write), l = median(t_load), rd = median(t_read);
    const std::string label = std::string("metadata ") + codec.name;
    rep.add({"meta", label + " save", ms_and_rate(s, bytes), "write+fsync " + ms_and_rate(w, bytes), s / w, "<= 3",
             s / w <= 3.0});
    const double c = median(t_cpu);
    rep.add({"meta", label + " save, no disk (context)", ms_and_rate(c, bytes), "write+fsync " + ms_and_rate(w, bytes),
             c / w, "", {}});
    rep.add({"meta", label + " load", ms_and_rate(l, bytes), "read " + ms_and_rate(rd, bytes), l / rd, "<= 3",
             l / rd <= 3.0});
    rep.info("meta", label, {{"file_bytes", bytes}, {"save_s", t_save}, {"write_fsync_s", t_write},
                             {"save_no_disk_s", t_cpu}, {"load_s", t_load}, {"read_s", t_read}});
  }
  remove_and_settle(path);
}

// ---------------------------------------------------------------- rss

struct ChildResult {
  std::uint64_t maxrss_kib = 0;  // ru_maxrss of the child (wait4)
  std::map<std::string, std::uint64_t> values;
};

ChildResult run_child(const Options& o, const std::string& mode) {
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) die_errno("pipe");
  const pid_t pid = spawn_self({"--child", mode, "--dir", o.dir, "--vectors", std::to_string(o.vectors), "--dim",
                               std::to_string(o.dim), "--seed", std::to_string(o.seed)},
                              -1, pipefd[1]);
  ::close(pipefd[1]);
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t r = ::read(pipefd[0], buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    out.append(buf, static_cast<std::size_t>(r));
  }
  ::close(pipefd[0]);
  int status = 0;
  struct rusage ru {};
  if (::wait4(pid, &status, 0, &ru) != pid) die_errno("wait4");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) die("child '" + mode + "' failed:\n" + out);
  ChildResult res;
  res.maxrss_kib = static_cast<std::uint64_t>(ru.ru_maxrss);
  std::istringstream lines(out);
  std::string line;
  while (std::getline(lines, line)) {
    const auto eq = line.find('=');
    if (eq != std::string::npos) res.values[line.substr(0, eq)] = std::stoull(line.substr(eq + 1));
  }
  return res;
}

// The child side: prints key=value lines (KiB) on stdout.
int child_main(const Options& o) {
  const fs::path path = fs::path(o.dir) / "rss.iqdb";
  const auto say = [](const char* k, std::uint64_t v) { std::printf("%s=%llu\n", k, static_cast<unsigned long long>(v)); };
  if (o.child == "load") {
    say("rss_before", status_kib("VmRSS"));
    auto db = PersistedIndex<FlatIndex>::load(make_config(path));
    say("rss_after", status_kib("VmRSS"));
    say("hwm", status_kib("VmHWM"));
    say("n", db.index().size());
    return 0;
  }
  auto db = PersistedIndex<FlatIndex>::open_with(bench::make_index(o.vectors, o.dim, Dataset::Gaussian, o.seed),
                                                 make_config(path));
  say("rss_built", status_kib("VmRSS"));
  say("hwm_built", status_kib("VmHWM"));
  if (o.child == "build") return 0;
  if (o.child == "save-peak") {
    // Peak of the save alone: reset the high-water mark to the current RSS.
    if (!reset_peak_rss()) die("cannot reset the peak RSS (/proc/self/clear_refs)");
    say("hwm_reset", status_kib("VmHWM"));
  }
  remove_if_exists(path);
  db.save();
  say("rss_saved", status_kib("VmRSS"));
  say("hwm_saved", status_kib("VmHWM"));
  return 0;
}

void bench_rss(const Options& o, Report& rep) {
  heading("peak RSS (child processes; ru_maxrss from wait4)");
  const ChildResult build = run_child(o, "build");
  const ChildResult save = run_child(o, "build-save");
  const ChildResult save_peak = run_child(o, "save-peak");
  const ChildResult load = run_child(o, "load");
  remove_if_exists(fs::path(o.dir) / "rss.iqdb");

  const auto mib = [](std::uint64_t kib) { return static_cast<double>(kib) / 1024.0; };
  const auto smib = [](double v) { return fmt("%.1f MiB", v); };
  const double d_save = mib(save.maxrss_kib) - mib(build.maxrss_kib);
  rep.add({"rss", "peak(build+save) - peak(build)", smib(d_save),
           "peaks " + smib(mib(save.maxrss_kib)) + " / " + smib(mib(build.maxrss_kib)), std::nullopt, "<= 64 MiB",
           d_save <= 64.0});
  const double d_save_only = mib(save_peak.values.at("hwm_saved")) - mib(save_peak.values.at("rss_built"));
  rep.add({"rss", "peak during save - RSS before save (context)", smib(d_save_only), "", std::nullopt, "", {}});

  const double index_mem = mib(load.values.at("rss_after")) - mib(load.values.at("rss_before"));
  const double over = mib(load.maxrss_kib) - mib(load.values.at("rss_after"));
  rep.add({"rss", "load: peak - RSS with the index loaded", smib(over),
           "peak " + smib(mib(load.maxrss_kib)) + ", index " + smib(index_mem), std::nullopt, "<= 64 MiB",
           over <= 64.0});
  rep.info("rss", "build", {{"maxrss_kib", build.maxrss_kib}, {"values", build.values}});
  rep.info("rss", "build-save", {{"maxrss_kib", save.maxrss_kib}, {"values", save.values}});
  rep.info("rss", "save-peak", {{"maxrss_kib", save_peak.maxrss_kib}, {"values", save_peak.values}});
  rep.info("rss", "load", {{"maxrss_kib", load.maxrss_kib}, {"values", load.values}});
}

// ---------------------------------------------------------------- main

bool wants(const Options& o, const std::string& s) {
  return o.only.empty() || std::find(o.only.begin(), o.only.end(), s) != o.only.end();
}

std::string first_line_of(const char* file, const char* prefix) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) == 0) {
      const auto colon = line.find(':');
      std::string v = colon == std::string::npos ? line : line.substr(colon + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  }
  return "?";
}

// "device fstype options" of the mount holding `dir` (longest mount-point prefix).
std::string mount_of(const std::string& dir) {
  std::ifstream in("/proc/mounts");
  std::string dev, mnt, type, opts, best = "?";
  std::size_t best_len = 0;
  std::string rest;
  while (in >> dev >> mnt >> type >> opts && std::getline(in, rest)) {
    const bool prefix = dir.compare(0, mnt.size(), mnt) == 0 &&
                        (mnt == "/" || dir.size() == mnt.size() || dir[mnt.size()] == '/');
    if (prefix && mnt.size() >= best_len) {
      best_len = mnt.size();
      best = dev + " on " + mnt + " type " + type + " (" + opts + ")";
    }
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"iqdb-persist snapshot benchmarks: each figure beside its limit measured in the same run"};
  app.add_option("--dir", o.dir, "Directory for the bench files (on the file system to measure; not tmpfs)")
      ->required();
  app.add_option("--vectors", o.vectors, "Vectors in the index")->capture_default_str()->check(CLI::Range(1, 1 << 30));
  app.add_option("--dim", o.dim, "Vector dimension")->capture_default_str()->check(CLI::Range(1, 1 << 16));
  app.add_option("--reps", o.reps, "Repetitions of each timed pair (median reported)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  app.add_option("--compress-reps", o.compress_reps, "Repetitions for the compression section")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  app.add_option("--compress-vectors", o.compress_vectors, "Vectors for the compression section (default --vectors)");
  app.add_option("--meta-vectors", o.meta_vectors, "Vectors for the metadata-heavy section")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 30));
  app.add_option("--crc-mib", o.crc_mib, "Buffer size of the CRC section, MiB")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--seed", o.seed, "Random seed")->capture_default_str();
  app.add_option("--only", o.only, "Sections to run (comma separated)")
      ->delimiter(',')
      ->check(CLI::IsMember({"crc", "save", "load", "rss", "compress", "meta", "map"}));
  app.add_option("--json", o.json, "Also write the results as JSON to this file");
  app.add_flag("--strict", o.strict, "Exit with status 1 when a target is missed");
  app.add_flag("--keep", o.keep, "Keep the snapshot file in --dir");
  app.add_flag("--cold-memory", o.cold_memory,
               "Do not touch and free memory before each timed operation (see docs/PERFORMANCE.md)");
  app.add_option("--child", o.child, "internal")->group("")->check(CLI::IsMember({"build", "build-save", "save-peak", "load", "map-pss"}));
  CLI11_PARSE(app, argc, argv);
  bench::set_program_name("iqdb_persist_bench");

  // Every allocation of 1 MiB or more is a fresh mmap (glibc would otherwise
  // raise its threshold after the first free and hand back touched heap
  // memory, which would flatter the read() baseline at small sizes).
  (void)::mallopt(M_MMAP_THRESHOLD, 1 << 20);

  if (o.child == "map-pss") return map_pss_child(o);
  if (!o.child.empty()) return child_main(o);

  std::error_code ec;
  fs::create_directories(o.dir, ec);
  if (ec) die("cannot create " + o.dir + ": " + ec.message());
  o.dir = fs::canonical(o.dir).string();

  // Enough for the loaded index (vectors, ids, id table) with room to spare.
  // The metadata-heavy section's index also holds ~400 bytes of maps and
  // strings per vector.
  const std::uint64_t warm = std::max(o.vectors * (o.dim * 4 + 80), o.meta_vectors * (o.dim * 4 + 80 + 400));
  bench::set_warm_bytes(o.cold_memory ? 0 : static_cast<std::size_t>(warm + (std::uint64_t{64} << 20)));
  std::printf("iqdb_persist_bench: %llu x %llu vectors, %d reps, dir %s\n",
              static_cast<unsigned long long>(o.vectors), static_cast<unsigned long long>(o.dim), o.reps,
              o.dir.c_str());
  std::printf("cpu: %s x %ld, memory %s, kernel %s\n", first_line_of("/proc/cpuinfo", "model name").c_str(),
              ::sysconf(_SC_NPROCESSORS_ONLN), first_line_of("/proc/meminfo", "MemTotal").c_str(),
              first_line_of("/proc/sys/kernel/osrelease", "").c_str());

  std::printf("bench dir file system: %s\n", mount_of(o.dir).c_str());
  std::printf("memory before each timed operation: %s\n",
              o.cold_memory ? "as left (--cold-memory)" : fmt("%.0f MiB touched and freed", static_cast<double>(bench::warm_bytes()) / kMiB).c_str());
  std::printf("load average at start: %s\n", first_line_of("/proc/loadavg", "").c_str());
  Report rep;
  if (wants(o, "crc")) bench_crc(o, rep);
  if (wants(o, "save") || wants(o, "load") || wants(o, "map")) {
    const fs::path path = fs::path(o.dir) / "bench.iqdb";
    heading("building " + std::to_string(o.vectors) + " x " + std::to_string(o.dim) + " Gaussian FlatIndex");
    std::optional<PersistedIndex<FlatIndex>> db;
    const double t = seconds([&] {
      db.emplace(PersistedIndex<FlatIndex>::open_with(
          bench::make_index(o.vectors, o.dim, Dataset::Gaussian, o.seed), make_config(path)));
    });
    std::printf("  built in %.1f s\n", t);
    Saved saved;
    if (wants(o, "save")) {
      saved = bench_save(o, *db, rep);
    } else {  // load alone still needs the file
      remove_and_settle(path);
      db->save();
      saved = Saved{path, bytes_of_file(path)};
    }
    db.reset();
    if (wants(o, "load")) bench_load(o, saved, rep);
    if (wants(o, "map")) bench_map(o, saved, rep);
    if (!o.keep) remove_if_exists(path);
  }
  if (wants(o, "compress")) bench_compress(o, rep);
  if (wants(o, "meta")) bench_meta(o, rep);
  if (wants(o, "rss")) bench_rss(o, rep);

  rep.print_summary();
  std::printf("load average at end: %s\n", first_line_of("/proc/loadavg", "").c_str());
  if (!o.json.empty()) rep.write_json(o.json, o);
  return o.strict && !rep.all_pass() ? 1 : 0;
}
