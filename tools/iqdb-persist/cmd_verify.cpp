// iqdb-persist verify FILE: check a snapshot end to end (magic, version,
// header, checksum, and that the payload decodes to its declared length),
// then, for an index type this build knows (index_types.hpp), build the
// index from it as a load would: the payload must decode and agree with the
// header's dim, metric and count. FILE may be a RADOS location rados://POOL/NAME
// when the tool is built with the RADOS component (--ceph-conf PATH, else
// $CEPH_CONF; --client-id ID, default admin); each stripe's CRC is checked too.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <system_error>

#include "iqdb-persist/command.hpp"
#include "iqdb-persist/index_types.hpp"
#include "iqdb-persist/location.hpp"
#include "iqdb-persist/report.hpp"
#include "iqdb/persist/config.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/persisted_index.hpp"
#include "iqdb/persist/snapshot.hpp"

namespace iqdb::persist::cli {
namespace {

// Files smaller than this verify too quickly to need a progress indicator.
constexpr std::uint64_t kProgressMinFileSize = std::uint64_t{64} << 20;

struct VerifyOptions {
  std::string file;
  RadosArgs rados;
};

// "verifying FILE  42% (1.2 GiB of 2.9 GiB)" redrawn in place on a terminal;
// erased once done, whatever the outcome.
class ProgressLine {
 public:
  ProgressLine(std::ostream& err, std::string label) : err_(err), label_(std::move(label)) {}
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;
  ~ProgressLine() { clear(); }

  void update(std::uint64_t done, std::uint64_t total) {
    const int percent = total == 0 ? 100 : static_cast<int>(done * 100 / total);
    if (percent == percent_) return;
    percent_ = percent;
    std::string line = "verifying " + label_ + "  " + std::to_string(percent) + "% (" + human_bytes(done) +
                       " of " + human_bytes(total) + ")";
    width_ = std::max(width_, line.size());
    err_ << '\r' << line << std::flush;
  }

  void clear() {
    if (width_ == 0) return;
    err_ << '\r' << std::string(width_, ' ') << '\r' << std::flush;
    width_ = 0;
  }

 private:
  std::ostream& err_;
  std::string label_;
  int percent_ = -1;
  std::size_t width_ = 0;
};

bool wants_progress(const Console& console, const std::string& file) {
  if (!console.interactive || is_rados(file)) return false;
  std::error_code ec;
  const std::uintmax_t size = std::filesystem::file_size(file, ec);
  return !ec && size >= kProgressMinFileSize;
}

int verify(const VerifyOptions& opts, const Console& console) {
  std::unique_ptr<ProgressLine> progress;
  if (wants_progress(console, opts.file)) progress = std::make_unique<ProgressLine>(console.err, opts.file);
  const auto on_progress = [&](std::uint64_t done, std::uint64_t total) { progress->update(done, total); };

  // A RADOS location: connecting failures are Io (exit 2), as for a file
  // that cannot be opened.
  const Location where = Location::open(opts.file, opts.rados);

  SnapshotSummary summary;
  try {
    summary = verify_snapshot(where.fs(), where.path(), ReadLimits{},
                              progress ? std::function<void(std::uint64_t, std::uint64_t)>(on_progress) : nullptr);
  } catch (const PersistError& e) {
    if (progress) progress->clear();
    if (e.kind() == ErrorKind::Io) return report_error(console.err, e);
    console.err << "DAMAGED: " << opts.file << "\n  " << describe(e) << '\n';
    return kExitFailed;
  }
  if (progress) progress->clear();

  // The bytes are intact; whether they are an index is the index type's to
  // say (a header and payload written that way, their CRCs recomputed, pass
  // the checks above and fail to load).
  const FileHeader& h = summary.header;
  std::optional<bool> decoded;
  try {
    decoded = with_index_type(h.index_type, [&]<class I>() {
      std::optional<I> index;
      (void)detail::Loader<I>{where.config(), index}.load_snapshot()();
      return true;
    });
  } catch (const PersistError& e) {
    if (e.kind() == ErrorKind::Io) return report_error(console.err, e);
    console.err << "DAMAGED: " << opts.file << "\n  " << describe(e) << '\n';
    return kExitFailed;
  }
  console.out << "OK: " << opts.file << " (format " << h.format_version << ", " << printable(h.index_type) << ", "
              << h.n_vectors << " vectors x " << h.dim << " dims, " << compression_name(h.compression) << ", "
              << human_bytes(summary.file_size) << ", crc32 " << hex32(h.payload_crc) << ")\n";
  if (!decoded) {
    console.out << "  (the payload was not built into an index: this build knows " << known_index_types()
                << ", not '" << printable(h.index_type) << "')\n";
  }
  return kExitOk;
}

}  // namespace

void register_verify(CommandSet& commands) {
  auto opts = std::make_shared<VerifyOptions>();
  CLI::App& cmd = commands.add(
      "verify",
      "Check a snapshot end to end: header, checksum, payload length, and the index built from it (for the index "
      "types this build knows)",
      [opts](const Console& console) { return verify(*opts, console); });
  cmd.add_option("FILE", opts->file, "The snapshot file, or rados://POOL/NAME")->required()->type_name("PATH");
  add_rados_options(cmd, opts->rados);
}

}  // namespace iqdb::persist::cli
