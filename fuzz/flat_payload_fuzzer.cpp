// Fuzz target "flat_payload": FlatIndex::load_from on an in-memory
// PayloadReader over the input (the decoded payload of a snapshot, without
// the framing around it).
//
// Input: the payload bytes.
// Oracles: only PersistError escapes; a payload that loads is consistent
// (size, dimension, every id found at its row); saving it again and loading
// that gives an equal index; and when the input is payload version 2, used
// the id encoding that save_to picks (u64-only or tagged) and the padding
// save_to writes at file offset 0 (vectors at a multiple of 4096), save_to
// reproduces the input's bytes up to the bytes load_from consumed (the
// encoding is canonical; version 1 re-encodes as version 2).
#include "fuzz_support.hpp"

namespace iqdb::persist::fuzz {
namespace flat_payload_target {

constexpr std::size_t kIdEncodingAt = 4 + 8 + 1 + 8;  // version, dim, metric, count
constexpr std::size_t kVectorAlignment = 4096;        // docs/FORMAT.md, "The flat payload"

void run(std::span<const std::uint8_t> in) {
  const Bytes payload = to_bytes(in);
  SpanPayloadReader r(payload);
  std::optional<FlatIndex> ix;
  try {
    ix.emplace(FlatIndex::load_from(r));
  } catch (const PersistError&) {
    return;
  }
  const std::size_t consumed = payload.size() - static_cast<std::size_t>(r.remaining());
  IQDB_FUZZ_CHECK(ix->dim() >= 1, "dimension 0");
  for (std::size_t row = 0; row < ix->size(); ++row) {
    const VectorId& id = ix->id_at(row);
    IQDB_FUZZ_CHECK(ix->contains(id), "id of row " + std::to_string(row) + " not found");
    IQDB_FUZZ_CHECK(ix->get(id).data() == ix->vector_at(row).data(), "id maps to another row");
    IQDB_FUZZ_CHECK(ix->metadata(id) == ix->metadata_at(row), "metadata of another row");
  }

  VectorPayloadWriter w;
  ix->save_to(w);
  SpanPayloadReader r2(w.bytes());
  const FlatIndex again = FlatIndex::load_from(r2);
  IQDB_FUZZ_CHECK(r2.remaining() == 0, "save_to wrote bytes load_from does not read");
  IQDB_FUZZ_CHECK(again == *ix, "load(save(load(x))) != load(x)");

  bool all_u64 = true;
  for (std::size_t row = 0; row < ix->size(); ++row) all_u64 = all_u64 && ix->id_at(row).is_u64();
  const auto encoding = static_cast<std::uint8_t>(payload[kIdEncodingAt]);
  std::uint32_t version = 0;
  std::memcpy(&version, payload.data(), sizeof version);
  const std::size_t vectors_at = consumed - static_cast<std::size_t>(ix->size() * ix->dim()) * sizeof(float);
  const bool canonical_padding = version == 2 && vectors_at % kVectorAlignment == 0;
  if (encoding == (all_u64 ? 0 : 1) && canonical_padding) {
    IQDB_FUZZ_CHECK(w.bytes().size() == consumed && std::memcmp(w.bytes().data(), payload.data(), consumed) == 0,
                    "save_to(load_from(x)) != x although x uses the canonical id encoding");
  }
}

}  // namespace flat_payload_target

inline void run_flat_payload(std::span<const std::uint8_t> in) { flat_payload_target::run(in); }

}  // namespace iqdb::persist::fuzz

IQDB_FUZZ_ENTRY(iqdb::persist::fuzz::run_flat_payload)
