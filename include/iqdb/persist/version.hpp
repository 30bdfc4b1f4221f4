// iqdb-persist version.
#pragma once

#include <string_view>

namespace iqdb::persist {

// The library's version, "MAJOR.MINOR.PATCH" (the top CMakeLists.txt checks
// that it equals the project's VERSION). The formats it writes and reads are
// format::CURRENT_VERSION / MIN_READ_VERSION (snapshots, format.hpp) and
// wal::CURRENT_VERSION / MIN_READ_VERSION (logs, wal.hpp).
inline constexpr std::string_view VERSION = "0.1.0";

}  // namespace iqdb::persist
