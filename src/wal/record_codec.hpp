// Encoding and decoding of logged mutations (internal).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "iqdb/persist/types.hpp"
#include "iqdb/persist/wal.hpp"
#include "util/coding.hpp"

namespace iqdb::persist::wal {

// Append one op (op byte onwards) to `out`.
void encode_insert(std::vector<std::byte>& out, const VectorId& id, std::span<const float> vec, const Metadata* meta);
void encode_erase(std::vector<std::byte>& out, const VectorId& id);

// A decoded op. Storage is reused from one decode to the next.
struct DecodedOp {
  Op op = Op::Insert;
  VectorId id{0};
  std::vector<float> vector;
  std::optional<Metadata> metadata;
};

// Decode one op at the cursor. Every length is checked against the bytes
// that remain before anything is allocated. Returns false with `why` set when
// the bytes are not a well-formed op.
bool decode_op(coding::ByteCursor& in, DecodedOp& out, std::string& why);

}  // namespace iqdb::persist::wal
