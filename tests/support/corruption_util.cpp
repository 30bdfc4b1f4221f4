#include "support/corruption_util.hpp"

#include <iostream>
#include <set>
#include <sstream>

namespace iqdb::persist::test {

std::vector<std::uint8_t> changed_values(std::uint8_t orig) {
  std::set<std::uint8_t> s;
  for (int bit = 0; bit < 8; ++bit) s.insert(static_cast<std::uint8_t>(orig ^ (1u << bit)));
  s.insert(0x00);
  s.insert(0xFF);
  s.insert(static_cast<std::uint8_t>(orig + 1));
  s.erase(orig);
  return {s.begin(), s.end()};
}

Bytes& pad(Bytes& b, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) b.u8(0xA5);
  return b;
}

void print_summary(const std::string& title, const Summary& s) {
  std::ostringstream out;
  out << "[summary] " << title << "\n";
  for (const auto& [region, kinds] : s) {
    out << "  " << region << ":";
    for (const auto& [k, n] : kinds) out << " " << k << "=" << n;
    out << "\n";
  }
  std::cout << out.str() << std::flush;
}

}  // namespace iqdb::persist::test
