// Fuzz target "head_record": the record of a RADOS index's NAME.head object
// (rados_detail::decode_head) and the 16-hex-digit generation attributes
// beside it (decode_generation), on arbitrary bytes: what a reader gets from
// RADOS is hostile (docs/DISTRIBUTED.md, "Objects"). No cluster and
// no librados: src/rados/head_record.cpp is compiled into the target.
//
// Input: flags u8, then the record.
//   bit 0     recompute the record's CRC first (its last 4 bytes), so that
//             mutations reach the flags, generation and geometry checks
//   bit 1     also decode the first 16 bytes of the record as a generation
//             attribute's text
// Oracles: only PersistError escapes, naming the object; an accepted record
// has generation >= 1 above previous_generation, a geometry check_geometry
// accepts and one stripe CRC per stripe, and encode_head gives the input
// back byte for byte (the reserved field, which readers ignore, taken as
// zero); an accepted generation text is what encode_generation writes for
// its value.
#include "fuzz_support.hpp"
#include "rados/head_record.hpp"

namespace iqdb::persist::fuzz {
namespace head_record_target {

namespace rd = rados_detail;

const fs::path kObject = "rados://pool/index.head";

void check_accepted(const rd::HeadRecord& r, const Bytes& in) {
  const RadosHead& h = r.head;
  IQDB_FUZZ_CHECK(h.generation >= 1 && r.previous_generation < h.generation,
                  std::to_string(r.previous_generation) + " -> " + std::to_string(h.generation));
  IQDB_FUZZ_CHECK(h.stripe_crcs.size() == h.stripe_count, "one stripe CRC per stripe");
  try {
    rd::check_geometry(h.total_size, h.stripe_size, h.stripe_count, kObject);
  } catch (const PersistError& e) {
    report_finding(__FILE__, __LINE__, "check_geometry(accepted record)", e.what());
  }
  // The reserved field (bytes 20..24) is not checked on read: compare with
  // it zeroed and the CRC recomputed.
  Bytes expect = in;
  std::fill(expect.begin() + 20, expect.begin() + 24, std::byte{0});
  store_le<std::uint32_t>(expect, expect.size() - 4, checksum::compute(expect.data(), expect.size() - 4));
  const Bytes again = rd::encode_head(r);
  IQDB_FUZZ_CHECK(again == expect, "encode_head(decode_head(x)) != x");
}

void run(std::span<const std::uint8_t> input) {
  if (input.empty()) return;
  const std::uint8_t flags = input[0];
  Bytes rec = to_bytes(input.subspan(1));
  if ((flags & 1) != 0 && rec.size() >= 4) {
    store_le<std::uint32_t>(rec, rec.size() - 4, checksum::compute(rec.data(), rec.size() - 4));
  }
  try {
    check_accepted(rd::decode_head(rec, kObject), rec);
  } catch (const PersistError& e) {
    IQDB_FUZZ_CHECK(e.path() == kObject, "error names " + e.path().string());
  }
  if ((flags & 2) != 0) {
    const std::string text(reinterpret_cast<const char*>(rec.data()), std::min<std::size_t>(rec.size(), 16));
    if (const std::optional<std::uint64_t> g = rd::decode_generation(text)) {
      IQDB_FUZZ_CHECK(rd::encode_generation(*g) == text, "encode_generation(decode_generation(x)) != x: " + text);
    }
  }
}

}  // namespace head_record_target

inline void run_head_record(std::span<const std::uint8_t> in) { head_record_target::run(in); }

}  // namespace iqdb::persist::fuzz

IQDB_FUZZ_ENTRY(iqdb::persist::fuzz::run_head_record)
