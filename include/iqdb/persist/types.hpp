// The iQDB vocabulary: distance metrics, vector ids, metadata values.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>

namespace iqdb::persist {

// Distance metrics. The numeric values are the on-disk tags of iQDB files:
// fixed forever, never renumber.
enum class DistanceMetric : std::uint8_t {
  Cosine = 0,
  DotProduct = 1,
  Euclidean = 2,
  Manhattan = 3,
  Hamming = 4,
};

inline constexpr std::uint8_t kMaxMetricTag = 4;

// "Cosine", "DotProduct", "Euclidean", "Manhattan", "Hamming".
std::string_view to_string(DistanceMetric metric) noexcept;
// The metric for an on-disk tag, or nullopt for an unknown tag.
std::optional<DistanceMetric> metric_from_tag(std::uint8_t tag) noexcept;
// Case-insensitive parse of a metric name (as printed by to_string).
std::optional<DistanceMetric> metric_from_name(std::string_view name) noexcept;

// The longest byte-string id (1 MiB): what the snapshot and log readers
// accept (docs/FORMAT.md).
inline constexpr std::size_t kMaxIdBytes = std::size_t{1} << 20;

// A vector's identity: an unsigned 64-bit integer, or a non-empty byte
// string of at most kMaxIdBytes.
class VectorId {
 public:
  VectorId(std::uint64_t id) noexcept : v_(id) {}  // NOLINT: implicit by design
  VectorId(const VectorId&) = default;
  VectorId& operator=(const VectorId&) = default;
  // A moved-from id is the u64 id 0 (never an empty byte string, which
  // every reader refuses).
  VectorId(VectorId&& o) noexcept : v_(std::move(o.v_)) { o.v_ = std::uint64_t{0}; }
  VectorId& operator=(VectorId&& o) noexcept {
    if (this != &o) {
      v_ = std::move(o.v_);
      o.v_ = std::uint64_t{0};
    }
    return *this;
  }
  ~VectorId() = default;
  // Throws PersistError(InvalidArgument) for an empty byte string or one
  // longer than kMaxIdBytes (it would be logged and saved, then refuse to
  // load).
  static VectorId bytes(std::string bytes);

  bool is_u64() const noexcept { return v_.index() == 0; }
  bool is_bytes() const noexcept { return v_.index() == 1; }
  // Precondition: is_u64().
  std::uint64_t as_u64() const { return std::get<0>(v_); }
  // Precondition: is_bytes().
  const std::string& as_bytes() const { return std::get<1>(v_); }

  // u64 ids order before byte ids; within a kind, by value.
  friend auto operator<=>(const VectorId&, const VectorId&) = default;
  friend bool operator==(const VectorId&, const VectorId&) = default;

  std::size_t hash() const noexcept;
  // "42" for a u64 id, "0x6869" (hex) for a byte id.
  std::string to_string() const;

 private:
  explicit VectorId(std::string b) : v_(std::move(b)) {}
  std::variant<std::uint64_t, std::string> v_;
};

// A metadata value. The alternative index equals the on-disk tag:
// 0 String, 1 Int, 2 Float, 3 Bool, 4 Null (fixed forever).
class Value {
 public:
  enum class Kind : std::uint8_t { String = 0, Int = 1, Float = 2, Bool = 3, Null = 4 };

  Value() noexcept : v_(std::monostate{}) {}  // Null
  Value(std::nullptr_t) noexcept : v_(std::monostate{}) {}
  Value(std::string s) : v_(std::move(s)) {}
  Value(const char* s) : v_(std::string(s)) {}
  Value(std::string_view s) : v_(std::string(s)) {}
  Value(bool b) noexcept : v_(b) {}
  Value(double d) noexcept : v_(d) {}
  template <class T>
    requires(std::is_integral_v<T> && !std::is_same_v<T, bool>)
  Value(T i) noexcept : v_(static_cast<std::int64_t>(i)) {}

  Kind kind() const noexcept { return static_cast<Kind>(v_.index()); }
  bool is_null() const noexcept { return kind() == Kind::Null; }
  const std::string& as_string() const { return std::get<0>(v_); }
  std::int64_t as_int() const { return std::get<1>(v_); }
  double as_float() const { return std::get<2>(v_); }
  bool as_bool() const { return std::get<3>(v_); }

  // Floats compare by bit pattern, so NaN == NaN and a round trip is exact.
  friend bool operator==(const Value& a, const Value& b) noexcept;

 private:
  std::variant<std::string, std::int64_t, double, bool, std::monostate> v_;
};

// Metadata: an ordered map from key to value (keys are UTF-8).
using Metadata = std::map<std::string, Value>;

}  // namespace iqdb::persist

template <>
struct std::hash<iqdb::persist::VectorId> {
  std::size_t operator()(const iqdb::persist::VectorId& id) const noexcept { return id.hash(); }
};
