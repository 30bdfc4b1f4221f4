// Fuzz target "flat_crc": FlatIndex snapshots with their checksums fixed up
// before loading (harness and oracles: index_snapshot_fuzz.hpp).
#include "index_snapshot_fuzz.hpp"

namespace iqdb::persist::fuzz {
inline void run_flat_crc(std::span<const std::uint8_t> in) { index_snapshot::run<FlatIndex>(in); }
}  // namespace iqdb::persist::fuzz

IQDB_FUZZ_ENTRY(iqdb::persist::fuzz::run_flat_crc)
