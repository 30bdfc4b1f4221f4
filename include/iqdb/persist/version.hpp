// iqdb-persist version.
#pragma once

#include <string_view>

namespace iqdb::persist {

// The library's version, "MAJOR.MINOR.PATCH".
inline constexpr std::string_view VERSION = "0.1.0";

}  // namespace iqdb::persist
