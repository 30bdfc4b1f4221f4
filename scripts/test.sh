#!/usr/bin/env bash
# Builds iqdb-persist and runs every test: the normal build (warnings are
# errors), the whole suite again under AddressSanitizer + UndefinedBehavior-
# Sanitizer, the concurrent tests under ThreadSanitizer, each libFuzzer target
# for a few seconds (after replaying its regressions), static analysis
# (clang-tidy, cppcheck), and the installed CMake package consumed through
# find_package and add_subdirectory.
# Installs the Debian packages it needs first. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=$(nproc)

scripts/deps.sh test

stage() { printf '\n==== %s\n' "$*"; }

stage "build (RelWithDebInfo, -Werror)"
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo -DIQDB_PERSIST_WERROR=ON >/dev/null
cmake --build build/release -j"$jobs"

stage "tests"
ctest --test-dir build/release -j"$jobs" --output-on-failure --timeout 900

stage "tests under AddressSanitizer + UndefinedBehaviorSanitizer"
# (The FAISS / hnswlib adapters run in the normal stage; FAISS's OpenMP/BLAS
# runtime is not built with the sanitizers.)
cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DIQDB_PERSIST_BUILD_BENCH=OFF -DIQDB_PERSIST_BUILD_EXAMPLES=OFF \
  -DIQDB_PERSIST_WITH_FAISS=OFF -DIQDB_PERSIST_WITH_HNSWLIB=OFF \
  -DCMAKE_CXX_FLAGS="-O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" >/dev/null
cmake --build build/asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build/asan -j"$jobs" --output-on-failure --timeout 1800

stage "concurrent tests under ThreadSanitizer"
cmake -S . -B build/tsan -DCMAKE_BUILD_TYPE=Debug -DIQDB_PERSIST_BUILD_BENCH=OFF -DIQDB_PERSIST_BUILD_EXAMPLES=OFF \
  -DIQDB_PERSIST_WITH_FAISS=OFF -DIQDB_PERSIST_WITH_HNSWLIB=OFF \
  -DIQDB_PERSIST_BUILD_TOOLS=OFF -DCMAKE_CXX_FLAGS="-O1 -fsanitize=thread -fno-omit-frame-pointer" >/dev/null
cmake --build build/tsan -j"$jobs" --target wal_concurrency_test
TSAN_OPTIONS=halt_on_error=1 ctest --test-dir build/tsan -R 'Concurren' --output-on-failure --timeout 1800

stage "fuzzing: regressions, then each target for 5 s (clang, ASan + UBSan, memory caps)"
IQDB_FUZZ_BUILD=build/fuzz fuzz/run.sh 5

stage "static analysis (clang-tidy, cppcheck)"
IQDB_ANALYZE_BUILD=build/analyze scripts/analyze.sh

stage "CMake package: install, then find_package and add_subdirectory consumers"
rm -rf build/prefix build/consumer-find build/consumer-sub
cmake --install build/release --prefix "$root/build/prefix" >/dev/null
cmake -S tests/consumer -B build/consumer-find -DCMAKE_PREFIX_PATH="$root/build/prefix" >/dev/null
cmake --build build/consumer-find -j"$jobs" >/dev/null
build/consumer-find/consumer "$root/build/consumer-find/c.iqdb"
cmake -S tests/consumer -B build/consumer-sub -DIQDB_PERSIST_SOURCE_DIR="$root" >/dev/null
cmake --build build/consumer-sub -j"$jobs" >/dev/null
build/consumer-sub/consumer "$root/build/consumer-sub/c.iqdb"
PKG_CONFIG_PATH="$root/build/prefix/lib/pkgconfig" pkg-config --exists iqdb_persist

stage "all stages passed"
