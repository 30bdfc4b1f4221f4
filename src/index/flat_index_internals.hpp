// What tests look at inside a FlatIndex, kept out of its public API.
#pragma once

#include <cstdint>

#include "iqdb/persist/flat_index.hpp"

namespace iqdb::persist::detail {

struct FlatIndexInternals {
  // The slots the id table's lookups of every stored id pass, in all: about
  // 1.5 an id (the table is at most half full and its hash keyed), so a
  // file's ids cannot make a load quadratic.
  static std::uint64_t id_table_probes(const FlatIndex& ix) noexcept;
};

}  // namespace iqdb::persist::detail
