// The metadata side table of the adapters (FAISS, hnswlib).
//
// FAISS and hnswlib hold vectors and ids, not metadata. An adapter keeps the
// metadata of its vectors here, keyed by the u64 id, and persists the table
// in the same snapshot payload as the index (and, in WAL mode, metadata
// travels in the same log record as the vector: the library logs the whole
// insert). Layout (docs/ADAPTERS.md, "metadata side table"), the same records
// as the flat payload's metadata with the id in place of the row:
//
//   m u64                              records that follow
//   m x { id u64                       strictly ascending
//         n_entries u32
//         n_entries x { key_len u32, key bytes, value } }   keys strictly ascending
//   value: tag u8; 0 String (len u32 + bytes), 1 Int (i64), 2 Float (f64 bits),
//          3 Bool (u8, 0 or 1), 4 Null.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>

#include "iqdb/persist/io.hpp"
#include "iqdb/persist/types.hpp"

namespace iqdb::persist::adapters {

class MetadataTable {
 public:
  // Longest key accepted on load (the flat payload's limit).
  static constexpr std::uint32_t kMaxKeyBytes = 1u << 16;

  // The metadata of `id`, or nullptr.
  const Metadata* find(std::uint64_t id) const noexcept {
    const auto it = m_.find(id);
    return it == m_.end() ? nullptr : &it->second;
  }
  // Set the metadata of `id`, replacing any. Strong guarantee.
  void put(std::uint64_t id, Metadata meta) { m_.insert_or_assign(id, std::move(meta)); }
  // Remove the metadata of `id` (if any).
  void erase(std::uint64_t id) noexcept { m_.erase(id); }
  std::size_t size() const noexcept { return m_.size(); }
  bool empty() const noexcept { return m_.empty(); }
  const std::map<std::uint64_t, Metadata>& entries() const noexcept { return m_; }
  friend bool operator==(const MetadataTable&, const MetadataTable&) = default;

  void save_to(PayloadWriter& w) const {
    w.write_u64(m_.size());
    for (const auto& [id, meta] : m_) {
      w.write_u64(id);
      w.write_u32(static_cast<std::uint32_t>(meta.size()));
      for (const auto& [key, value] : meta) {
        w.write_u32(static_cast<std::uint32_t>(key.size()));
        w.write(key.data(), key.size());
        write_value(w, value);
      }
    }
  }

  // Every count is checked against the bytes that remain before anything is
  // allocated for it; ids and keys out of order are refused (a map would
  // silently merge duplicates).
  static MetadataTable load_from(PayloadReader& r) {
    MetadataTable t;
    // A record is at least 12 bytes: id u64 + entry count u32.
    const std::uint64_t m = r.read_count(12, "metadata record");
    for (std::uint64_t i = 0; i < m; ++i) {
      const std::uint64_t id = r.read_u64();
      if (!t.m_.empty() && !(t.m_.rbegin()->first < id)) {
        r.fail("metadata side table: id " + std::to_string(id) + " is out of order");
      }
      const std::uint32_t entries = r.read_u32();
      // An entry is at least 5 bytes: key length u32 + value tag.
      r.check_count(entries, 5, "metadata entry");
      Metadata meta;
      for (std::uint32_t e = 0; e < entries; ++e) {
        std::string key = read_u32_string(r, kMaxKeyBytes, "metadata key");
        if (!meta.empty() && !(meta.rbegin()->first < key)) r.fail("metadata keys are not in strictly ascending order");
        Value v = read_value(r);
        meta.emplace_hint(meta.end(), std::move(key), std::move(v));
      }
      t.m_.emplace_hint(t.m_.end(), id, std::move(meta));
    }
    return t;
  }

 private:
  static void write_value(PayloadWriter& w, const Value& v) {
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

  static std::string read_u32_string(PayloadReader& r, std::uint64_t max, const char* what) {
    const std::uint32_t n = r.read_u32();
    if (n > r.remaining() || n > max) r.fail(std::string(what) + " length " + std::to_string(n) + " is out of range");
    std::string s(n, '\0');
    r.read(s.data(), n);
    return s;
  }

  static Value read_value(PayloadReader& r) {
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

  std::map<std::uint64_t, Metadata> m_;
};

}  // namespace iqdb::persist::adapters
