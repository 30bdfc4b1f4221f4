#include "wal/record_codec.hpp"

#include "util/coding.hpp"
#include "wal/log_format.hpp"

namespace iqdb::persist::wal {

namespace {

using coding::put;

void encode_id(std::vector<std::byte>& out, const VectorId& id) {
  if (id.is_u64()) {
    put<std::uint8_t>(out, format::kIdU64);
    put<std::uint64_t>(out, id.as_u64());
  } else {
    put<std::uint8_t>(out, format::kIdBytes);
    put<std::uint64_t>(out, id.as_bytes().size());
    coding::put_bytes(out, id.as_bytes().data(), id.as_bytes().size());
  }
}

void encode_value(std::vector<std::byte>& out, const Value& v) {
  put<std::uint8_t>(out, static_cast<std::uint8_t>(v.kind()));
  switch (v.kind()) {
    case Value::Kind::String:
      put<std::uint32_t>(out, static_cast<std::uint32_t>(v.as_string().size()));
      coding::put_bytes(out, v.as_string().data(), v.as_string().size());
      break;
    case Value::Kind::Int: put<std::int64_t>(out, v.as_int()); break;
    case Value::Kind::Float: put<double>(out, v.as_float()); break;
    case Value::Kind::Bool: put<std::uint8_t>(out, v.as_bool() ? 1 : 0); break;
    case Value::Kind::Null: break;
  }
}

bool decode_id(coding::ByteCursor& in, VectorId& id, std::string& why) {
  std::uint8_t kind = 0;
  if (!in.read(kind)) return why = "truncated id", false;
  if (kind == format::kIdU64) {
    std::uint64_t v = 0;
    if (!in.read(v)) return why = "truncated u64 id", false;
    id = VectorId(v);
    return true;
  }
  if (kind != format::kIdBytes) return why = "unknown id kind " + std::to_string(kind), false;
  std::uint64_t len = 0;
  if (!in.read(len)) return why = "truncated byte id length", false;
  if (len == 0 || len > in.remaining() || len > kMaxIdBytes) {
    return why = "byte id length " + std::to_string(len) + " is out of range", false;
  }
  std::span<const std::byte> b;
  in.read_bytes(static_cast<std::size_t>(len), b);
  id = VectorId::bytes(std::string(reinterpret_cast<const char*>(b.data()), b.size()));
  return true;
}

bool decode_string(coding::ByteCursor& in, std::string& s, const char* what, std::string& why) {
  std::uint32_t len = 0;
  if (!in.read(len)) return why = std::string("truncated ") + what + " length", false;
  std::span<const std::byte> b;
  if (!in.read_bytes(len, b)) return why = std::string(what) + " length " + std::to_string(len) + " is out of range", false;
  s.assign(reinterpret_cast<const char*>(b.data()), b.size());
  if (!coding::is_valid_utf8(s)) return why = std::string(what) + " is not valid UTF-8", false;
  return true;
}

bool decode_value(coding::ByteCursor& in, Value& v, std::string& why) {
  std::uint8_t tag = 0;
  if (!in.read(tag)) return why = "truncated value", false;
  switch (tag) {
    case 0: {
      std::string s;
      if (!decode_string(in, s, "string value", why)) return false;
      v = Value(std::move(s));
      return true;
    }
    case 1: {
      std::int64_t i = 0;
      if (!in.read(i)) return why = "truncated int value", false;
      v = Value(i);
      return true;
    }
    case 2: {
      double d = 0;
      if (!in.read(d)) return why = "truncated float value", false;
      v = Value(d);
      return true;
    }
    case 3: {
      std::uint8_t b = 0;
      if (!in.read(b)) return why = "truncated bool value", false;
      if (b > 1) return why = "bool value " + std::to_string(b) + " is not 0 or 1", false;
      v = Value(b == 1);
      return true;
    }
    case 4: v = Value(); return true;
    default: return why = "unknown value tag " + std::to_string(tag), false;
  }
}

}  // namespace

void encode_insert(std::vector<std::byte>& out, const VectorId& id, std::span<const float> vec, const Metadata* meta) {
  put<std::uint8_t>(out, static_cast<std::uint8_t>(Op::Insert));
  encode_id(out, id);
  put<std::uint32_t>(out, static_cast<std::uint32_t>(vec.size()));
  coding::put_bytes(out, vec.data(), vec.size_bytes());
  put<std::uint8_t>(out, meta != nullptr ? 1 : 0);
  if (meta != nullptr) {
    put<std::uint32_t>(out, static_cast<std::uint32_t>(meta->size()));
    for (const auto& [key, value] : *meta) {  // std::map: ascending key order
      put<std::uint32_t>(out, static_cast<std::uint32_t>(key.size()));
      coding::put_bytes(out, key.data(), key.size());
      encode_value(out, value);
    }
  }
}

void encode_erase(std::vector<std::byte>& out, const VectorId& id) {
  put<std::uint8_t>(out, static_cast<std::uint8_t>(Op::Erase));
  encode_id(out, id);
}

bool decode_op(coding::ByteCursor& in, DecodedOp& out, std::string& why) {
  std::uint8_t op = 0;
  if (!in.read(op)) return why = "truncated op", false;
  if (op == static_cast<std::uint8_t>(Op::Erase)) {
    out.op = Op::Erase;
    out.vector.clear();
    out.metadata.reset();
    return decode_id(in, out.id, why);
  }
  if (op != static_cast<std::uint8_t>(Op::Insert)) return why = "unknown op " + std::to_string(op), false;
  out.op = Op::Insert;
  if (!decode_id(in, out.id, why)) return false;
  std::uint32_t n = 0;
  if (!in.read(n)) return why = "truncated vector length", false;
  if (n > in.remaining() / sizeof(float)) return why = "vector length " + std::to_string(n) + " is out of range", false;
  out.vector.resize(n);
  std::span<const std::byte> b;
  in.read_bytes(n * sizeof(float), b);
  if (n > 0) std::memcpy(out.vector.data(), b.data(), b.size());
  std::uint8_t has_meta = 0;
  if (!in.read(has_meta)) return why = "truncated metadata flag", false;
  if (has_meta > 1) return why = "metadata flag " + std::to_string(has_meta) + " is not 0 or 1", false;
  if (has_meta == 0) {
    out.metadata.reset();
    return true;
  }
  std::uint32_t entries = 0;
  if (!in.read(entries)) return why = "truncated metadata count", false;
  // An entry takes at least 5 bytes (key length + value tag).
  if (entries > in.remaining() / 5) return why = "metadata count " + std::to_string(entries) + " is out of range", false;
  Metadata m;
  for (std::uint32_t i = 0; i < entries; ++i) {
    std::string key;
    if (!decode_string(in, key, "metadata key", why)) return false;
    if (!m.empty() && !(m.rbegin()->first < key)) return why = "metadata keys are not in strictly ascending order", false;
    Value v;
    if (!decode_value(in, v, why)) return false;
    m.emplace_hint(m.end(), std::move(key), std::move(v));
  }
  out.metadata = std::move(m);
  return true;
}

}  // namespace iqdb::persist::wal
