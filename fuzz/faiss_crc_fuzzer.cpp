// Fuzz target "faiss_crc": FaissIndex snapshots with their checksums fixed
// up before loading (harness and oracles: index_snapshot_fuzz.hpp), so that
// mutated FAISS serializations reach the stream guard and the adapter's
// parameter and structure checks. Built when the FAISS adapter is.
#include <iqdb/persist/adapters/faiss.hpp>

#include "index_snapshot_fuzz.hpp"

namespace iqdb::persist::fuzz {
inline void run_faiss_crc(std::span<const std::uint8_t> in) { index_snapshot::run<FaissIndex>(in); }
}  // namespace iqdb::persist::fuzz

IQDB_FUZZ_ENTRY(iqdb::persist::fuzz::run_faiss_crc)
