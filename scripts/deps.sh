#!/usr/bin/env bash
# Installs the Debian 12 packages iqdb-persist needs, when any are missing.
# Usage: scripts/deps.sh [build|test|bench]   (test and bench include build)
set -euo pipefail

build_pkgs=(g++ make cmake pkg-config libzstd-dev liblz4-dev libisal-dev libcli11-dev nlohmann-json3-dev)
test_pkgs=(libgtest-dev libgmock-dev librapidcheck-dev libbenchmark-dev zlib1g-dev clang libclang-rt-14-dev
           clang-tidy cppcheck python3 libfaiss-dev libhnswlib-dev)
bench_pkgs=(libbenchmark-dev zlib1g-dev librocksdb-dev)

want=("${build_pkgs[@]}")
case "${1:-build}" in
  build) ;;
  test) want+=("${test_pkgs[@]}") ;;
  bench) want+=("${bench_pkgs[@]}") ;;
  *) echo "usage: $0 [build|test|bench]" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
