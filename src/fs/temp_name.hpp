// The names of replace_file_atomically's temporary files, in one place: the
// writer makes them, a writer's open removes stale ones (local_storage.cpp).
// ".NAME.tmp-" and 16 lower-case hex digits, hidden beside NAME.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace iqdb::persist::detail {

inline constexpr std::string_view kTempMarker = ".tmp-";
inline constexpr std::size_t kTempDigits = 16;

inline std::string temp_name(std::string_view target_name, std::uint64_t random) {
  char digits[kTempDigits + 1];
  std::snprintf(digits, sizeof digits, "%016llx", static_cast<unsigned long long>(random));
  std::string name = ".";
  name += target_name;
  name += kTempMarker;
  name += digits;
  return name;
}

// True when `entry` is exactly such a name for target_name: a longer name
// may be another index's (".a.tmp-x.iqdb.tmp-..." starts with a's prefix),
// whose writer holds its own lock.
inline bool is_temp_name(std::string_view entry, std::string_view target_name) {
  if (entry.size() != 1 + target_name.size() + kTempMarker.size() + kTempDigits || entry.front() != '.') return false;
  entry.remove_prefix(1);
  if (!entry.starts_with(target_name)) return false;
  entry.remove_prefix(target_name.size());
  if (!entry.starts_with(kTempMarker)) return false;
  entry.remove_prefix(kTempMarker.size());
  return entry.find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

}  // namespace iqdb::persist::detail
