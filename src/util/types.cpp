#include <algorithm>
#include <bit>
#include <cctype>
#include <cstring>

#include "iqdb/persist/error.hpp"
#include "iqdb/persist/index.hpp"
#include "iqdb/persist/io.hpp"
#include "iqdb/persist/types.hpp"
#include "util/coding.hpp"

namespace iqdb::persist {

namespace {
constexpr std::string_view kMetricNames[] = {"Cosine", "DotProduct", "Euclidean", "Manhattan", "Hamming"};
}

std::string_view to_string(DistanceMetric metric) noexcept {
  const auto i = static_cast<std::size_t>(metric);
  return i <= kMaxMetricTag ? kMetricNames[i] : std::string_view("Unknown");
}

std::optional<DistanceMetric> metric_from_tag(std::uint8_t tag) noexcept {
  if (tag > kMaxMetricTag) return std::nullopt;
  return static_cast<DistanceMetric>(tag);
}

std::optional<DistanceMetric> metric_from_name(std::string_view name) noexcept {
  for (std::uint8_t t = 0; t <= kMaxMetricTag; ++t) {
    const std::string_view n = kMetricNames[t];
    if (n.size() == name.size() &&
        std::equal(n.begin(), n.end(), name.begin(), [](char a, char b) {
          return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
        })) {
      return static_cast<DistanceMetric>(t);
    }
  }
  return std::nullopt;
}

VectorId VectorId::bytes(std::string b) {
  if (b.empty()) throw PersistError::argument("a byte-string VectorId must not be empty");
  if (b.size() > kMaxIdBytes) {
    throw PersistError::argument("a byte-string VectorId of " + std::to_string(b.size()) + " bytes; at most " +
                                 std::to_string(kMaxIdBytes) + " are allowed");
  }
  return VectorId(std::move(b));
}

std::size_t VectorId::hash() const noexcept {
  if (is_u64()) {
    // splitmix64 finaliser: spreads sequential ids over the table.
    std::uint64_t x = as_u64() + 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return static_cast<std::size_t>(x ^ (x >> 31));
  }
  return std::hash<std::string>{}(as_bytes()) ^ 0x5bd1e995u;
}

std::string VectorId::to_string() const {
  if (is_u64()) return std::to_string(as_u64());
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s = "0x";
  for (unsigned char c : as_bytes()) {
    s += kHex[c >> 4];
    s += kHex[c & 15];
  }
  return s;
}

bool operator==(const Value& a, const Value& b) noexcept {
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Value::Kind::String: return a.as_string() == b.as_string();
    case Value::Kind::Int: return a.as_int() == b.as_int();
    case Value::Kind::Float:
      return std::bit_cast<std::uint64_t>(a.as_float()) == std::bit_cast<std::uint64_t>(b.as_float());
    case Value::Kind::Bool: return a.as_bool() == b.as_bool();
    case Value::Kind::Null: return true;
  }
  return false;
}

namespace detail {
namespace {

void check_metadata_lengths(const Metadata& meta) {
  for (const auto& [key, value] : meta) {
    // What a snapshot's reader accepts (read_metadata): a longer key would
    // be logged and saved, then refuse to load.
    if (key.size() > kMaxMetadataKeyBytes) {
      throw PersistError::argument("metadata key of " + std::to_string(key.size()) + " bytes; at most " +
                                   std::to_string(kMaxMetadataKeyBytes) + " are allowed");
    }
    if (value.kind() == Value::Kind::String && value.as_string().size() > UINT32_MAX) {
      throw PersistError::argument("metadata value of key '" + key.substr(0, 64) + "' is longer than 4 GiB");
    }
  }
}

}  // namespace

void check_metadata(const Metadata& meta) {
  check_metadata_lengths(meta);
  for (const auto& [key, value] : meta) {
    if (!coding::is_valid_utf8(key)) throw PersistError::argument("metadata key is not valid UTF-8");
    if (value.kind() == Value::Kind::String && !coding::is_valid_utf8(value.as_string())) {
      throw PersistError::argument("metadata value of key '" + key + "' is not valid UTF-8");
    }
  }
}

}  // namespace detail
}  // namespace iqdb::persist
