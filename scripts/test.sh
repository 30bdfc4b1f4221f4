#!/usr/bin/env bash
# Builds iqdb-persist and runs every test: deps.sh's message without apt-get,
# the normal build (warnings are errors) with every example, the README's
# first command (the demo), the RADOS tests against a throw-away Ceph
# cluster, the whole suite again under AddressSanitizer + UndefinedBehavior-
# Sanitizer, the concurrent tests under ThreadSanitizer, each libFuzzer target
# for a few seconds (after replaying its regressions), static analysis
# (clang-tidy, cppcheck), and the installed CMake package consumed through
# find_package and add_subdirectory, the Debian packages, and the Python
# package (installed as the README says, pytest, the RADOS tests against a
# cluster; again under ASan + UBSan).
# Installs the Debian packages it needs first. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=$(nproc)

# Each stage's start, for the table of durations printed at the end (and
# the elapsed time in each heading): where a slow run spent its time.
stage_names=() stage_starts=()
stage() {
  stage_names+=("$*") stage_starts+=("$SECONDS")
  printf '\n==== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"
}

# Work that needs no test's result (a build, the static analysis) runs in
# the background, at the lowest CPU priority, while a stage that leaves
# CPU idle runs in front (the RADOS tests mostly wait on paused OSDs and
# leases; libFuzzer and pytest use one core); a later stage waits for it
# and shows its output. One at a time; stopped if the script stops first.
bg_pid="" bg_log="" bg_what=""
background() {
  bg_what="$*" bg_log=$(mktemp)
  printf '(in the background: %s)\n' "$bg_what"
  # A session of its own (setsid), so that stopping it stops every process it started.
  setsid nice -n 19 "$@" >"$bg_log" 2>&1 &
  bg_pid=$!
}
background_build() { background cmake --build "$@" -j"$jobs"; }
# Waits for the background work, then shows its last $1 lines of output (all: every line).
wait_background() {
  local status=0 started=$SECONDS
  wait "$bg_pid" || status=$?
  printf '(background: %s; waited %ds for it; its output%s:)\n' "$bg_what" $((SECONDS - started)) \
    "$([ "$1" = all ] || echo ", last $1 lines")"
  if [ "$1" = all ]; then cat "$bg_log"; else tail -"$1" "$bg_log"; fi
  if [ "$status" -ne 0 ]; then
    [ "$1" = all ] || grep -E 'error|Error' "$bg_log" | head -40 || true
    echo "the background work failed (exit $status): $bg_what" >&2
    exit 1
  fi
  rm -f "$bg_log"
  bg_pid="" bg_log=""
}
# Every exit path: the background work, and the temporary directories.
cleanup=()
on_exit() {
  local status=$?  # the script's, kept whatever the lines below return
  if [ -n "$bg_pid" ]; then kill -- -"$bg_pid" 2>/dev/null || true; wait "$bg_pid" 2>/dev/null || true; fi
  if [ -n "$bg_log" ]; then rm -f "$bg_log"; fi
  if [ ${#cleanup[@]} -gt 0 ]; then rm -rf "${cleanup[@]}"; fi
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT TERM HUP

stage "the Debian packages the tests need (scripts/deps.sh test)"
scripts/deps.sh test

stage "deps.sh on a system without apt-get: names the packages and the way to skip the step"
if no_apt=$(env -u IQDB_SKIP_DEPS PATH=/nonexistent /bin/bash scripts/deps.sh test 2>&1); then
  echo "deps.sh succeeded without apt-get" >&2; exit 1
fi
for word in IQDB_SKIP_DEPS=1 libzstd-dev libgtest-dev librados-dev; do
  case "$no_apt" in *"$word"*) ;; *) echo "deps.sh without apt-get does not mention $word:" >&2; echo "$no_apt" >&2; exit 1 ;; esac
done

# The builds below keep line tables only (-g1): a failure's backtrace still
# names files and lines, and compiling takes a quarter to a third less
# (most of this script's time is compiling on CI's two cores).
stage "build (RelWithDebInfo with -g1, -Werror)"
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" \
  -DIQDB_PERSIST_WERROR=ON >/dev/null
cmake --build build/release -j"$jobs"

stage "tests (with every program in examples/, run twice in a new directory and checking its own result)"
ctest --test-dir build/release -j"$jobs" --output-on-failure --timeout 900

stage "the README's first command (the demo), exactly as the README writes it, then with options"
# The first command of the README's first sh block: what a new user runs first.
readme_demo=$(awk '/^```sh/{inblock=1; next} inblock && /^```/{exit} inblock{print; exit}' README.md)
readme_demo=${readme_demo%%#*}
case "$readme_demo" in
  *scripts/demo.sh*) ;;
  *) echo "README.md's first command is '$readme_demo', expected scripts/demo.sh" >&2; exit 1 ;;
esac
echo "+ $readme_demo"
bash -c "$readme_demo"
demo_dir=$(mktemp -d)
cleanup+=("$demo_dir")
scripts/demo.sh --dir "$demo_dir" --vectors 3000 --dim 16

stage "RADOS tests against a throw-away Ceph cluster (3 memstore OSDs on 127.0.0.1, stopped on every exit path)"
# These tests mostly wait (paused OSDs, leases running out): the next
# stage's sanitizer build runs meanwhile, in the background (below).
# (The FAISS / hnswlib adapters run in the normal stage; FAISS's OpenMP/BLAS
# runtime is not built with the sanitizers.)
cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DIQDB_PERSIST_BUILD_BENCH=OFF -DIQDB_PERSIST_BUILD_EXAMPLES=OFF \
  -DIQDB_PERSIST_WITH_FAISS=OFF -DIQDB_PERSIST_WITH_HNSWLIB=OFF -DIQDB_PERSIST_WITH_PYTHON=OFF -DCMAKE_CXX_FLAGS_DEBUG=-g1 \
  -DCMAKE_CXX_FLAGS="-O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" >/dev/null
background_build build/asan
scripts/ceph-cluster.sh run --osds 3 -- \
  ctest --test-dir build/release -L rados --output-on-failure --timeout 600

stage "tests under AddressSanitizer + UndefinedBehaviorSanitizer"
wait_background 3
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build/asan -j"$jobs" --output-on-failure --timeout 1800
# The RADOS log, fencing, kill, damage and replica tests, and the snapshot
# store's (striped writes, in-place reads of damaged or foreign objects),
# skipped above (no cluster), under the same sanitizers, against a
# throw-away cluster; the next stage's build meanwhile, in the background.
cmake -S . -B build/tsan -DCMAKE_BUILD_TYPE=Debug -DIQDB_PERSIST_BUILD_BENCH=OFF -DIQDB_PERSIST_BUILD_EXAMPLES=OFF \
  -DIQDB_PERSIST_WITH_FAISS=OFF -DIQDB_PERSIST_WITH_HNSWLIB=OFF \
  -DIQDB_PERSIST_BUILD_TOOLS=OFF -DCMAKE_CXX_FLAGS_DEBUG=-g1 -DCMAKE_CXX_FLAGS="-O1 -fsanitize=thread -fno-omit-frame-pointer" >/dev/null
background_build build/tsan --target wal_concurrency_test replica_test group_commit_test float_buffer_test \
  auto_checkpoint_test log_writer_test wake_word_test snapshot_writer_test fork_test
scripts/ceph-cluster.sh run --osds 3 -- env ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build/asan -L rados -R 'RadosWal|ReplicaWatch|RadosSnapshot' --output-on-failure --timeout 900

stage "concurrent tests under ThreadSanitizer"
wait_background 3
TSAN_OPTIONS=halt_on_error=1 ctest --test-dir build/tsan -R 'Concurren|AutoCheckpoint|Replica|FloatBuffer|LogWriterGrowth|LogWriterCache|EngineGrowth|GrowthFailure|NoRoom|WakeWord|SnapshotWriter|Fork' --output-on-failure --timeout 1800

stage "fuzzing: regressions, then each target for 5 s (clang, ASan + UBSan, memory caps)"
# The static analysis meanwhile, in the background: libFuzzer uses one core.
background env IQDB_ANALYZE_BUILD=build/analyze scripts/analyze.sh
IQDB_FUZZ_BUILD=build/fuzz fuzz/run.sh 5

stage "static analysis (clang-tidy, cppcheck)"
wait_background all

stage "CMake package: install, then find_package and add_subdirectory consumers"
rm -rf build/prefix build/consumer-find build/consumer-sub
cmake --install build/release --prefix "$root/build/prefix" >/dev/null
cmake -S tests/consumer -B build/consumer-find -DCMAKE_PREFIX_PATH="$root/build/prefix" >/dev/null
cmake --build build/consumer-find -j"$jobs" >/dev/null
build/consumer-find/consumer "$root/build/consumer-find/c.iqdb"
cmake -S tests/consumer -B build/consumer-sub -DIQDB_PERSIST_SOURCE_DIR="$root" >/dev/null
# The consumer and what it links, not every target of the project it includes.
cmake --build build/consumer-sub -j"$jobs" --target consumer >/dev/null
build/consumer-sub/consumer "$root/build/consumer-sub/c.iqdb"
PKG_CONFIG_PATH="$root/build/prefix/lib/pkgconfig" pkg-config --exists iqdb_persist

stage "Debian packages: cpack -G DEB, unpacked into a scratch root, a consumer built against that root"
rm -rf build/deb build/debroot build/consumer-deb build/consumer-deb-rados
(cd build/release && cpack -G DEB -B "$root/build/deb" >/dev/null)
ls build/deb/*.deb
for deb in build/deb/*.deb; do
  dpkg-deb --field "$deb" Package Version Depends
  dpkg-deb -x "$deb" build/debroot
done
# The tool's dependencies come from dpkg-shlibdeps: it needs libzstd, liblz4, ISA-L and zlib at run time.
tool_depends=$(dpkg-deb --field build/deb/iqdb-persist_*.deb Depends)
for lib in libzstd1 liblz4-1 libisal2 zlib1g; do
  case "$tool_depends" in *"$lib"*) ;; *) echo "iqdb-persist.deb does not depend on $lib: $tool_depends" >&2; exit 1 ;; esac
done
build/debroot/usr/bin/iqdb-persist --version
cmake -S tests/consumer -B build/consumer-deb -DCMAKE_PREFIX_PATH="$root/build/debroot/usr" >/dev/null
cmake --build build/consumer-deb -j"$jobs" >/dev/null
build/consumer-deb/consumer "$root/build/consumer-deb/c.iqdb"
build/debroot/usr/bin/iqdb-persist verify "$root/build/consumer-deb/c.iqdb"
# The RADOS component's package depends on librados-dev; a consumer finds it
# (find_package(iqdb_persist COMPONENTS rados)), links, and saves and loads
# through a throw-away cluster.
case "$(dpkg-deb --field build/deb/libiqdb-persist-rados-dev_*.deb Depends)" in
  *librados-dev*) ;; *) echo "libiqdb-persist-rados-dev does not depend on librados-dev" >&2; exit 1 ;;
esac
cmake -S tests/consumer -B build/consumer-deb-rados -DCMAKE_PREFIX_PATH="$root/build/debroot/usr" \
  -DIQDB_CONSUMER_RADOS=ON >/dev/null
cmake --build build/consumer-deb-rados -j"$jobs" >/dev/null
env -u CEPH_CONF build/consumer-deb-rados/rados_consumer rados://iqdb-test/consumer
scripts/ceph-cluster.sh run --osds 1 -- sh -c 'build/consumer-deb-rados/rados_consumer "rados://$IQDB_RADOS_POOL/consumer"'
PKG_CONFIG_PATH="$root/build/debroot/usr/lib/pkgconfig" pkg-config --exists iqdb_persist

stage "Python package: the README's install commands into a temporary virtual environment, then pytest"
# The commands of README.md's "Python" section (the lines with `venv` and
# `pip install`), run as written with `.venv` in a temporary directory and
# Debian's python3 (not another python3 earlier on PATH).
py_env=$(mktemp -d)
cleanup+=("$py_env")
py_install=$(grep -E '^python3 -m venv|^\.venv/bin/pip install' README.md)
[ "$(printf '%s\n' "$py_install" | wc -l)" -eq 2 ] || { echo "README.md's Python install commands not found" >&2; exit 1; }
printf '+ %s\n' "$py_install"
# Built in the demo's build directory (IQDB_PY_BUILD_DIR, setup.py): the
# library's objects there have the flags pip's build gives them (Release),
# so only the module compiles; the configure step runs as for anyone.
(PATH=/usr/bin:/bin; export IQDB_PY_BUILD_DIR="$root/build/demo"; eval "${py_install//.venv/$py_env/.venv}")
# The next stage's module (ASan + UBSan, in build/asan) builds in the
# background while pytest runs (single-threaded, then waiting on a cluster).
py_asan_rt=$(gcc -print-file-name=libasan.so)
py_asan=yes
if [ "$py_asan_rt" = libasan.so ] || ! /usr/bin/python3 -c 'import numpy, pytest' 2>/dev/null; then py_asan=no; fi
if [ "$py_asan" = yes ]; then
  cmake -S . -B build/asan -DIQDB_PERSIST_WITH_PYTHON=ON >/dev/null
  background_build build/asan --target iqdb_persist_python
fi
"$py_env/.venv/bin/python" -m pytest -q -p no:cacheprovider python/tests
# The RADOS tests (skipped above: no cluster) against a throw-away cluster of
# one OSD; the pip-installed module must have RADOS (librados-dev is in the
# test group of deps.sh), and IQDB_RADOS_REQUIRED=1 makes a skip a failure.
"$py_env/.venv/bin/python" -c 'import sys, iqdb_persist as iq; sys.exit(0 if iq.HAVE_RADOS else "pip built the module without RADOS (librados-dev missing?)")'
scripts/ceph-cluster.sh run --osds 1 -- env IQDB_RADOS_REQUIRED=1 \
  "$py_env/.venv/bin/python" -m pytest -q -p no:cacheprovider python/tests/test_rados.py

stage "Python package under AddressSanitizer + UndefinedBehaviorSanitizer (module in build/asan, ASan runtime preloaded)"
# docs/PYTHON.md, "Testing under the sanitizers": the library in build/asan
# is the ASan stage's (same flags), so only the module is built here; the
# interpreter is Debian's python3, not instrumented, hence the preload.
if [ "$py_asan" = no ]; then
  echo "SKIPPED: needs gcc's libasan.so and /usr/bin/python3 with numpy and pytest (scripts/deps.sh test)" >&2
else
  wait_background 3
  rm -rf build/asan/pypkg && mkdir build/asan/pypkg && cp -r python/iqdb_persist build/asan/pypkg/
  cp build/asan/python/_iqdb_persist*.so build/asan/pypkg/iqdb_persist/
  LD_PRELOAD="$py_asan_rt $(gcc -print-file-name=libstdc++.so)" PYTHONMALLOC=malloc PYTHONPATH=build/asan/pypkg \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions="$root/python/tests/ubsan.supp" \
    /usr/bin/python3 -m pytest -q -p no:cacheprovider python/tests
  # The RADOS tests against a cluster (the daemons not preloaded: env inside run).
  scripts/ceph-cluster.sh run --osds 1 -- env IQDB_RADOS_REQUIRED=1 \
    LD_PRELOAD="$py_asan_rt $(gcc -print-file-name=libstdc++.so)" PYTHONMALLOC=malloc PYTHONPATH=build/asan/pypkg \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions="$root/python/tests/ubsan.supp" \
    /usr/bin/python3 -m pytest -q -p no:cacheprovider python/tests/test_rados.py
fi

stage "all stages passed"
echo "time per stage:"
for ((i = 0; i + 1 < ${#stage_names[@]}; i++)); do  # each stage but this last one
  printf '  %4ds  %s\n' $((stage_starts[i + 1] - stage_starts[i])) "${stage_names[$i]:0:90}"
done
printf '  total %dm%02ds\n' $((SECONDS / 60)) $((SECONDS % 60))
