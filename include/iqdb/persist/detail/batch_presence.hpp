// BatchPresence (not a public API: PersistedIndex's validation of a batch).
#pragma once

#include <cstddef>
#include <vector>

#include "iqdb/persist/types.hpp"

namespace iqdb::persist::detail {

// The presence of ids as the mutations of one batch leave it: an
// open-addressing table sized for the batch up front (one allocation, none
// per id), keyed by pointers to the batch's own ids. A single mutation needs
// none: then nothing is allocated and slot() returns null.
class BatchPresence {
 public:
  explicit BatchPresence(std::size_t n) {
    if (n <= 1) return;
    std::size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    slots_.assign(cap, Slot{});
  }
  // The entry of `id` (one hash, one probe sequence): `known` says whether
  // an earlier mutation of the batch set it; the caller stores the presence
  // the current mutation leaves through the returned pointer, which stays
  // valid until the next call. `id` must outlive the table.
  // Precondition: at most n distinct ids (the table never fills).
  bool* slot(const VectorId& id, bool& known) noexcept {
    known = false;
    if (slots_.empty()) return nullptr;
    const std::size_t mask = slots_.size() - 1;
    std::size_t i = id.hash() & mask;
    while (slots_[i].id != nullptr && !(*slots_[i].id == id)) i = (i + 1) & mask;
    known = slots_[i].id != nullptr;
    slots_[i].id = &id;
    return &slots_[i].present;
  }

 private:
  struct Slot {
    const VectorId* id = nullptr;
    bool present = false;
  };
  std::vector<Slot> slots_;
};

}  // namespace iqdb::persist::detail
