#!/usr/bin/env bash
# Installs the Debian 12 packages iqdb-persist needs, when any are missing.
# Usage: scripts/deps.sh [build|test|bench|rados|list GROUP]
#   build  the library and the command-line tool
#   test   build + everything scripts/test.sh runs (tests, sanitizers, fuzzers,
#          static analysis, adapters, Debian packages)
#   bench  build + the benchmarks
#   rados  build + the RADOS component and a throw-away Ceph cluster
#          (scripts/demo.sh --rados, scripts/ceph-cluster.sh)
#   list GROUP   print the package names of GROUP, one per line, and exit
#
# IQDB_SKIP_DEPS=1 skips this step (for machines whose packages are managed
# otherwise): nothing is checked or installed, and the build says what is
# missing if anything is.
# As root it runs apt-get itself; as another user, through sudo.
set -euo pipefail

# Each list was checked against a bare Debian 12 (debootstrap
# --variant=minbase bookworm): nothing in it is there to begin with, and
# nothing else is needed.
# python3-dev, pybind11-dev: the Python module (python/, docs/PYTHON.md; built when found).
build_pkgs=(g++ make cmake pkg-config libzstd-dev liblz4-dev libisal-dev zlib1g-dev libcli11-dev nlohmann-json3-dev
            python3-dev pybind11-dev)
# clang-tidy parses FAISS's headers, which include <omp.h>: clang 14 finds it
# in libomp-14-dev (g++ has its own). dpkg-dev: dpkg-shlibdeps for the
# Debian packages that `cpack -G DEB` makes. xfsprogs: python/tests/test_xfs_log.py
# makes a loop XFS (mkfs.xfs, xfs_io).
test_pkgs=(libgtest-dev libgmock-dev librapidcheck-dev libbenchmark-dev clang libclang-rt-14-dev
           libomp-14-dev clang-tidy cppcheck python3 libfaiss-dev libhnswlib-dev dpkg-dev file xfsprogs
           librados-dev ceph-mon ceph-osd ceph-mgr ceph-common
           python3-numpy python3-pytest python3-venv python3-pip python3-setuptools python3-wheel python3-faiss)
# python/bench/bench_python.py: numpy, and FAISS's and hnswlib's own Python packages beside it.
bench_pkgs=(libbenchmark-dev librocksdb-dev python3-numpy python3-faiss python3-hnswlib)
rados_pkgs=(librados-dev ceph-mon ceph-osd ceph-mgr ceph-common)

group=${1:-build}
want=("${build_pkgs[@]}")
case "$group" in
  build) ;;
  test) want+=("${test_pkgs[@]}") ;;
  bench) want+=("${bench_pkgs[@]}") ;;
  rados) want+=("${rados_pkgs[@]}") ;;
  list)
    case "${2:-build}" in
      build) ;;
      test) want+=("${test_pkgs[@]}") ;;
      bench) want+=("${bench_pkgs[@]}") ;;
      rados) want+=("${rados_pkgs[@]}") ;;
      *) echo "usage: $0 list [build|test|bench|rados]" >&2; exit 2 ;;
    esac
    printf '%s\n' "${want[@]}"
    exit 0 ;;
  *) echo "usage: $0 [build|test|bench|rados|list GROUP]" >&2; exit 2 ;;
esac

if [ "${IQDB_SKIP_DEPS:-0}" = 1 ]; then
  echo "deps.sh: IQDB_SKIP_DEPS=1: not checking or installing packages" >&2
  exit 0
fi

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  {
    echo "deps.sh: this system has no apt-get / dpkg, so the packages cannot be checked or installed here."
    echo "iqdb-persist's '$group' step needs these Debian 12 packages (or your system's equivalents):"
    echo "  ${want[*]}"
    echo "Install them with your package manager, then run again with IQDB_SKIP_DEPS=1 to skip this step."
  } >&2
  exit 1
fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps.sh: installing: ${missing[*]}" >&2
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "deps.sh: not root and no sudo: install these packages as root, then run again (or set IQDB_SKIP_DEPS=1):" >&2
    echo "  apt-get install ${missing[*]}" >&2
    exit 1
  fi
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
