#!/usr/bin/env bash
# Builds the iqdb-persist command-line tool and runs its demo: a flat index of
# random vectors saved under each compression, inspected, loaded back and
# checked. Installs the Debian packages it needs first.
# Usage: scripts/demo.sh [demo options, e.g. --vectors 200000 --dim 128]
#        scripts/demo.sh --rados [demo options]
#   --rados: the same demo against a throw-away Ceph cluster on this machine
#   (scripts/ceph-cluster.sh run: one monitor, manager and OSD on 127.0.0.1,
#   stopped and removed at the end); the snapshots go to
#   rados://iqdb-test/iqdb-demo-{none,zstd,lz4} (removed with the cluster). Installs the Ceph packages
#   (scripts/deps.sh rados) and builds in build/demo-rados.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" != "--rados" ]; then
  scripts/deps.sh build
  # The options set here are all the tool needs, whatever another configure
  # of build/demo left in its cache (scripts/test.sh builds the Python
  # module there too, on the same library objects).
  cmake -S . -B build/demo -DCMAKE_BUILD_TYPE=Release -DIQDB_PERSIST_BUILD_TESTS=OFF -DIQDB_PERSIST_BUILD_TOOLS=ON \
    -DIQDB_PERSIST_WITH_PYTHON=OFF -DIQDB_PERSIST_BUILD_BENCH=OFF -DIQDB_PERSIST_BUILD_EXAMPLES=OFF >/dev/null
  cmake --build build/demo -j"$(nproc)" --target iqdb-persist
  exec build/demo/tools/iqdb-persist demo "$@"
fi
shift
scripts/deps.sh rados
cmake -S . -B build/demo-rados -DCMAKE_BUILD_TYPE=Release -DIQDB_PERSIST_BUILD_TESTS=OFF -DIQDB_PERSIST_BUILD_TOOLS=ON \
  -DIQDB_PERSIST_WITH_PYTHON=OFF -DIQDB_PERSIST_BUILD_BENCH=OFF -DIQDB_PERSIST_BUILD_EXAMPLES=OFF \
  -DIQDB_PERSIST_WITH_RADOS=ON >/dev/null
cmake --build build/demo-rados -j"$(nproc)" --target iqdb-persist
# The cluster's pool is only known inside `run` ($IQDB_RADOS_POOL).
exec scripts/ceph-cluster.sh run -- bash -c \
  'exec build/demo-rados/tools/iqdb-persist demo --rados "rados://$IQDB_RADOS_POOL/iqdb" "$@"' demo "$@"
