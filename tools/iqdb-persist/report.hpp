// Output helpers shared by the subcommands (internal to iqdb_persist_cli).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>

#include "iqdb/persist/error.hpp"
#include "iqdb/persist/format.hpp"
#include "iqdb/persist/snapshot.hpp"
#include "iqdb/persist/wal.hpp"

namespace iqdb::persist::cli {

// "none", "zstd" or "lz4" (the LZ4 block and frame encodings both print as "lz4").
std::string_view compression_name(CompressionScheme scheme) noexcept;

// The header as aligned "name  value" lines, each starting with `indent`:
// format_version, index_type, dim, metric, n_vectors, crc32, compression,
// uncompressed_len, file_size, and last_lsn for format version 3.
void print_header(std::ostream& out, const SnapshotSummary& summary, std::string_view indent = "");

// The header as one JSON object with exactly the keys format_version,
// index_type, dim, metric, n_vectors, crc32 (a number), compression,
// uncompressed_len and file_size. No trailing newline.
std::string header_json(const SnapshotSummary& summary);

// `s` with control characters shown as \xNN (index-type tags are UTF-8
// but may hold them; keep them from reaching the terminal).
std::string printable(std::string_view s);

// "512 B", "1.5 KiB", "49.2 MiB", "3.0 GiB".
std::string human_bytes(std::uint64_t bytes);

// "0x0a1b2c3d".
std::string hex32(std::uint32_t value);

// `e` as one line that starts with its kind's name ("checksum_mismatch: ...").
std::string describe(const PersistError& e);

// What `wal repair` would drop from a log whose scan is `s`: the valid
// prefix, the damaged frame and the intact frames after it, the bytes cut.
void describe_log_drop(std::ostream& out, const wal::ScanResult& s);

// The exit code for `e`: kExitUsage for ErrorKind::Io (the file cannot be
// opened or read) and ErrorKind::InvalidArgument (what the command line
// asks for is refused: the same location twice, a destination that is a
// directory, an index at DST without --force), kExitFailed for every other
// kind (the file is damaged or unsupported, it is locked, a check failed).
int exit_code_for(const PersistError& e);

// Print `e` to `err` ("error: ...") and return exit_code_for(e).
int report_error(std::ostream& err, const PersistError& e);

}  // namespace iqdb::persist::cli
