#include "iqdb-persist/report.hpp"

#include <array>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "iqdb-persist/cli.hpp"

namespace iqdb::persist::cli {
namespace {

std::string with_human(std::uint64_t bytes) {
  std::string s = std::to_string(bytes);
  if (bytes >= 1024) s += " (" + human_bytes(bytes) + ")";
  return s;
}

}  // namespace

std::string printable(std::string_view s) {
  std::string out;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      std::array<char, 8> buf{};
      std::snprintf(buf.data(), buf.size(), "\\x%02x", u);
      out += buf.data();
    } else {
      out += c;
    }
  }
  return out;
}

std::string_view compression_name(CompressionScheme scheme) noexcept {
  switch (scheme) {
    case CompressionScheme::None: return "none";
    case CompressionScheme::Zstd: return "zstd";
    case CompressionScheme::Lz4Block:
    case CompressionScheme::Lz4Frame: return "lz4";
  }
  return "unknown";
}

namespace {
bool saved_without_wal(const FileHeader& h) {
  return (h.optional_flags & format::OPTIONAL_FLAG_SAVED_WITHOUT_WAL) != 0;
}
}  // namespace

void print_header(std::ostream& out, const SnapshotSummary& summary, std::string_view indent) {
  const FileHeader& h = summary.header;
  const auto line = [&](std::string_view name, const std::string& value) {
    out << indent << name << std::string(18 - name.size(), ' ') << value << '\n';
  };
  line("format_version", std::to_string(h.format_version));
  line("index_type", printable(h.index_type));
  line("dim", std::to_string(h.dim));
  line("metric", std::string(to_string(h.metric)));
  line("n_vectors", std::to_string(h.n_vectors));
  line("crc32", hex32(h.payload_crc));
  line("compression", std::string(compression_name(h.compression)));
  line("uncompressed_len", with_human(h.uncompressed_len));
  line("file_size", with_human(summary.file_size));
  if (h.format_version >= 3) line("last_lsn", std::to_string(h.last_lsn));
  line("mappable", is_mappable(h) ? "yes (a mapped load uses the vectors in place)"
                                  : "no (loads by copying: needs version 3, uncompressed, aligned vectors)");
  if (h.format_version >= 3) {
    line("saved_without_wal", saved_without_wal(h) ? "yes (a writer with the WAL writes it again one LSN higher on open)"
                                                   : "no");
  }
}

std::string header_json(const SnapshotSummary& summary) {
  const FileHeader& h = summary.header;
  const nlohmann::ordered_json j = {
      {"format_version", h.format_version},
      {"index_type", h.index_type},
      {"dim", h.dim},
      {"metric", std::string(to_string(h.metric))},
      {"n_vectors", h.n_vectors},
      {"crc32", h.payload_crc},
      {"compression", std::string(compression_name(h.compression))},
      {"uncompressed_len", h.uncompressed_len},
      {"file_size", summary.file_size},
      // Versions 1 and 2 have no LSN field: null, never a made-up 0.
      {"last_lsn", h.format_version >= 3 ? nlohmann::ordered_json(h.last_lsn) : nlohmann::ordered_json(nullptr)},
      // Whether PersistConfig::map_snapshot can use the vectors in place.
      {"mappable", is_mappable(h)},
      // docs/FORMAT.md, "Saves without the WAL" (null before version 3).
      {"saved_without_wal",
       h.format_version >= 3 ? nlohmann::ordered_json(saved_without_wal(h)) : nlohmann::ordered_json(nullptr)},
  };
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

std::string human_bytes(std::uint64_t bytes) {
  static constexpr std::array<const char*, 5> kUnits = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = static_cast<double>(bytes) / 1024.0;
  std::size_t unit = 0;
  while (v >= 1024.0 && unit + 1 < kUnits.size()) {
    v /= 1024.0;
    ++unit;
  }
  std::array<char, 32> buf{};
  std::snprintf(buf.data(), buf.size(), "%.1f %s", v, kUnits[unit]);
  return buf.data();
}

std::string hex32(std::uint32_t value) {
  std::array<char, 16> buf{};
  std::snprintf(buf.data(), buf.size(), "0x%08x", static_cast<unsigned>(value));
  return buf.data();
}

std::string describe(const PersistError& e) {
  const std::string kind(to_string(e.kind()));
  const std::string what = e.what();
  // what() normally starts with the kind already; never print it twice.
  if (what.compare(0, kind.size() + 2, kind + ": ") == 0) return what;
  return kind + ": " + what;
}

int exit_code_for(const PersistError& e) {
  return e.kind() == ErrorKind::Io || e.kind() == ErrorKind::InvalidArgument ? kExitUsage : kExitFailed;
}

int report_error(std::ostream& err, const PersistError& e) {
  err << "error: " << describe(e) << '\n';
  return exit_code_for(e);
}

void describe_log_drop(std::ostream& out, const wal::ScanResult& s) {
  out << "valid prefix: " << s.records << " records in " << s.frames << " frames (" << s.valid_bytes << " bytes)\n";
  if (s.corrupt_offset) {
    out << "damaged frame at offset " << *s.corrupt_offset << ", followed by " << s.frames_after_corruption
        << " intact frames holding " << s.records_after_corruption << " records\n";
  }
  if (s.unsynced_frames_dropped > 0) {
    out << "in the torn tail: " << s.unsynced_frames_dropped
        << " intact frames written after a frame no fsync made durable (never acknowledged as durable; a load "
           "drops them too)\n";
  }
  out << "to drop: " << s.file_size - s.valid_bytes << " bytes from offset " << s.valid_bytes << " ("
      << s.torn_tail_bytes << " of them up to the last byte that is not zero padding)";
  if (s.corrupt_offset) out << ", the damaged frame and the " << s.records_after_corruption << " intact records after it";
  if (s.unsynced_frames_dropped > 0) out << ", " << s.unsynced_frames_dropped << " intact unsynced frames";
  out << "\n";
}

}  // namespace iqdb::persist::cli
