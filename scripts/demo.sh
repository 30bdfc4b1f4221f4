#!/usr/bin/env bash
# Builds the iqdb-persist command-line tool and runs its demo: a flat index of
# random vectors saved under each compression, inspected, loaded back and
# checked. Installs the Debian packages it needs first.
# Usage: scripts/demo.sh [demo options, e.g. --vectors 200000 --dim 128]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh build
cmake -S . -B build/demo -DCMAKE_BUILD_TYPE=Release -DIQDB_PERSIST_BUILD_TESTS=OFF \
  -DIQDB_PERSIST_BUILD_BENCH=OFF -DIQDB_PERSIST_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build/demo -j"$(nproc)" --target iqdb-persist
exec build/demo/tools/iqdb-persist demo "$@"
