// iqdb-persist: inspect, verify and demonstrate iQDB snapshot files.
// Everything but argv handling lives in cli.cpp and the cmd_*.cpp files.
#include <iostream>
#include <string>
#include <vector>

#include "iqdb-persist/cli.hpp"

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + (argc > 0 ? 1 : 0), argv + argc);
  return iqdb::persist::cli::run(args, std::cout, std::cerr);
}
