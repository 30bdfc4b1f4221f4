// Fuzz target "hnswlib_crc": HnswlibIndex snapshots with their checksums
// fixed up before loading (harness and oracles: index_snapshot_fuzz.hpp).
// Built when the hnswlib adapter is.
#include <iqdb/persist/adapters/hnswlib.hpp>

#include "index_snapshot_fuzz.hpp"

namespace iqdb::persist::fuzz {
inline void run_hnswlib_crc(std::span<const std::uint8_t> in) { index_snapshot::run<HnswlibIndex>(in); }
}  // namespace iqdb::persist::fuzz

IQDB_FUZZ_ENTRY(iqdb::persist::fuzz::run_hnswlib_crc)
