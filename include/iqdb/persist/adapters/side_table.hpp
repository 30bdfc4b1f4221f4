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
  static constexpr std::uint32_t kMaxKeyBytes = kMaxMetadataKeyBytes;

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
      write_metadata(w, meta);
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
      t.m_.emplace_hint(t.m_.end(), id, read_metadata(r));
    }
    return t;
  }

 private:
  std::map<std::uint64_t, Metadata> m_;
};

}  // namespace iqdb::persist::adapters
