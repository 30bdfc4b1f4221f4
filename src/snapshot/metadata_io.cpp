// The metadata codec shared by the flat payload and the adapters' side table
// (include/iqdb/persist/io.hpp).
#include <string>
#include <utility>

#include "iqdb/persist/io.hpp"

namespace iqdb::persist {

namespace {

void write_value(PayloadWriter& w, const Value& v) {
  w.write_u8(static_cast<std::uint8_t>(v.kind()));
  switch (v.kind()) {
    case Value::Kind::String:
      w.write_u32(static_cast<std::uint32_t>(v.as_string().size()));
      w.write(v.as_string().data(), v.as_string().size());
      break;
    case Value::Kind::Int: w.write_i64(v.as_int()); break;
    case Value::Kind::Float: w.write_f64(v.as_float()); break;
    case Value::Kind::Bool: w.write_u8(v.as_bool() ? 1 : 0); break;
    case Value::Kind::Null: break;
  }
}

// Keys and string values are written as UTF-8 (docs/FORMAT.md; every
// insert checks it), but read as any bytes: an index used directly could
// store others before its insert checked, and its snapshots must load.
std::string read_u32_string(PayloadReader& r, std::uint64_t max, const char* what) {
  const std::uint32_t n = r.read_u32();
  if (n > r.remaining() || n > max) r.fail(std::string(what) + " length " + std::to_string(n) + " is out of range");
  std::string s(n, '\0');
  r.read(s.data(), n);
  return s;
}

Value read_value(PayloadReader& r) {
  const std::uint8_t tag = r.read_u8();
  switch (tag) {
    case 0: return Value(read_u32_string(r, ~std::uint64_t{0}, "string value"));
    case 1: return Value(r.read_i64());
    case 2: return Value(r.read_f64());
    case 3: {
      const std::uint8_t b = r.read_u8();
      if (b > 1) r.fail("bool value " + std::to_string(b) + " is not 0 or 1");
      return Value(b == 1);
    }
    case 4: return Value();
    default: break;
  }
  r.fail("unknown metadata value tag " + std::to_string(tag));
}

}  // namespace

void write_metadata(PayloadWriter& w, const Metadata& meta) {
  w.write_u32(static_cast<std::uint32_t>(meta.size()));
  for (const auto& [key, value] : meta) {
    w.write_u32(static_cast<std::uint32_t>(key.size()));
    w.write(key.data(), key.size());
    write_value(w, value);
  }
}

Metadata read_metadata(PayloadReader& r) {
  const std::uint32_t entries = r.read_u32();
  // An entry is at least 5 bytes: key length u32 + value tag.
  r.check_count(entries, 5, "metadata entry");
  Metadata meta;
  for (std::uint32_t e = 0; e < entries; ++e) {
    std::string key = read_u32_string(r, kMaxMetadataKeyBytes, "metadata key");
    if (!meta.empty() && !(meta.rbegin()->first < key)) r.fail("metadata keys are not in strictly ascending order");
    Value v = read_value(r);
    meta.emplace_hint(meta.end(), std::move(key), std::move(v));
  }
  return meta;
}

}  // namespace iqdb::persist
