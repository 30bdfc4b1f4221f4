// Helpers shared by the corruption and garbage tests (docs/reliability/corruption.md).
#pragma once

#include <cstdint>
#include <exception>
#include <map>
#include <string>
#include <vector>

#include "iqdb/persist/error.hpp"
#include "support/test_util.hpp"

namespace iqdb::persist::test {

// The values a byte is changed to in a single-byte sweep: the 8 single-bit
// flips, 0x00, 0xFF and +1, without repeats and without the original value.
std::vector<std::uint8_t> changed_values(std::uint8_t orig);

// Appends n filler bytes (0xA5, not themselves valid), to make the bytes
// that remain after a hostile count large where a case needs it.
Bytes& pad(Bytes& b, std::size_t n);

// Outcome counts per region, printed ("[summary] title", then a line a
// region) for docs/reliability/corruption.md.
using Summary = std::map<std::string, std::map<std::string, int>>;
void print_summary(const std::string& title, const Summary& s);

// Runs f: "ok", the PersistError's kind name, or "FOREIGN EXCEPTION: what"
// for any other exception (which the tests refuse).
template <class F>
std::string outcome_of(F&& f) {
  try {
    f();
    return "ok";
  } catch (const PersistError& e) {
    return std::string(to_string(e.kind()));
  } catch (const std::exception& e) {
    return std::string("FOREIGN EXCEPTION: ") + e.what();
  }
}

}  // namespace iqdb::persist::test
