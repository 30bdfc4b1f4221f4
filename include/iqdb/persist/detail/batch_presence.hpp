// BatchPresence (not a public API: PersistedIndex's validation of a batch).
#pragma once

#include <cstddef>
#include <optional>
#include <vector>

#include "iqdb/persist/types.hpp"

namespace iqdb::persist::detail {

// The presence of ids as the mutations of one batch leave it: an
// open-addressing table sized for the batch up front (one allocation, none
// per id), keyed by pointers to the batch's own ids. A single mutation needs
// none: then nothing is allocated and set() does nothing.
class BatchPresence {
 public:
  explicit BatchPresence(std::size_t n) {
    if (n <= 1) return;
    std::size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    slots_.assign(cap, Slot{});
  }
  std::optional<bool> find(const VectorId& id) const noexcept {
    if (slots_.empty()) return std::nullopt;
    const std::size_t mask = slots_.size() - 1;
    for (std::size_t i = id.hash() & mask;; i = (i + 1) & mask) {
      if (slots_[i].id == nullptr) return std::nullopt;
      if (*slots_[i].id == id) return slots_[i].present;
    }
  }
  // Precondition: at most n distinct ids (the table never fills).
  void set(const VectorId& id, bool present) noexcept {
    if (slots_.empty()) return;
    const std::size_t mask = slots_.size() - 1;
    std::size_t i = id.hash() & mask;
    while (slots_[i].id != nullptr && !(*slots_[i].id == id)) i = (i + 1) & mask;
    slots_[i] = Slot{&id, present};
  }

 private:
  struct Slot {
    const VectorId* id = nullptr;
    bool present = false;
  };
  std::vector<Slot> slots_;
};

}  // namespace iqdb::persist::detail
