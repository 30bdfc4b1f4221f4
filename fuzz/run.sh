#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) if needed, replays the
# minimized regressions, then fuzzes each target for a bounded time with the
# memory caps. Exits non-zero on any finding (crash, sanitizer report, failed
# oracle, leak, timeout, out-of-memory or an allocation above the limit).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     default: 10 s, every target
#   fuzz/run.sh 600                                  the longer campaign (10 min a target)
#
# Targets: header snapshot wal_scan wal_replay flat_payload flat_crc head_record, and the
# adapters' faiss_crc and hnswlib_crc when FAISS / hnswlib are installed.
# The adapters' targets are built in the same build (the adapters are on
# there when their libraries are found), with the same ASan + UBSan:
# libfaiss, its OpenMP runtime (libgomp) and BLAS are not
# instrumented, which AddressSanitizer tolerates (it intercepts malloc/free;
# it does not see accesses inside them). LeakSanitizer is off for faiss_crc
# only: FAISS 1.7.3's reader leaks what it had built when a read fails
# midway (faiss/impl/index_read.cpp, documented in docs/ADAPTERS.md).
# New corpus entries go to build-fuzz/fuzz-corpus/<target> (the committed
# seeds in fuzz/corpus/<target> are read, never written); findings are saved
# as build-fuzz/fuzz-artifacts/<target>/crash-* (or leak-, timeout-, oom-).
# Reproduce one:  build-fuzz/fuzz/fuzz_<target> <artifact>
# Environment: IQDB_FUZZ_BUILD (build dir, default build-fuzz),
#   IQDB_FUZZ_MALLOC_MB (default 64), IQDB_FUZZ_RSS_MB (default 2048).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-10}
shift || true
targets=("$@")
build=${IQDB_FUZZ_BUILD:-build-fuzz}
sanitize="-fsanitize=address,undefined -fno-sanitize-recover=all -fsanitize=fuzzer-no-link -fno-omit-frame-pointer"
if [ ${#targets[@]} -eq 0 ]; then
  targets=(header snapshot wal_scan wal_replay flat_payload flat_crc head_record)
  # The adapters' targets when their library is installed (checked again below).
  if [ -f /usr/include/faiss/Index.h ] || [ -f /usr/local/include/faiss/Index.h ]; then targets+=(faiss_crc); fi
  if [ -f /usr/include/hnswlib/hnswalg.h ] || [ -f /usr/local/include/hnswlib/hnswalg.h ]; then targets+=(hnswlib_crc); fi
fi
adapter_targets=()
for t in "${targets[@]}"; do
  case "$t" in faiss_crc | hnswlib_crc) adapter_targets+=("fuzz_$t") ;; esac
done
malloc_mb=${IQDB_FUZZ_MALLOC_MB:-64}
rss_mb=${IQDB_FUZZ_RSS_MB:-2048}

# Configured every time (quick when it was before), so that a build made
# with other options gets these.
cmake -S . -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DIQDB_PERSIST_BUILD_FUZZERS=ON -DIQDB_PERSIST_BUILD_TESTS=OFF -DIQDB_PERSIST_BUILD_TOOLS=OFF \
  -DIQDB_PERSIST_BUILD_BENCH=OFF -DIQDB_PERSIST_BUILD_EXAMPLES=OFF -DIQDB_PERSIST_INSTALL=OFF \
  -DIQDB_PERSIST_WITH_PYTHON=OFF -DIQDB_PERSIST_WITH_FAISS=AUTO -DIQDB_PERSIST_WITH_HNSWLIB=AUTO \
  -DCMAKE_CXX_FLAGS="$sanitize" >/dev/null
# CMake builds an adapter's target only when it finds the adapter's library.
if [ ${#adapter_targets[@]} -gt 0 ]; then
  known=$(cmake --build "$build" --target help)
  for exe in "${adapter_targets[@]}"; do
    if ! grep -qw "$exe" <<<"$known"; then
      echo "$exe: its adapter's library was not found by CMake (see $build/CMakeCache.txt)" >&2
      exit 1
    fi
  done
fi
cmake --build "$build" -j"$(nproc)" --target iqdb_fuzzers "${adapter_targets[@]}" >/dev/null

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
common=(-rss_limit_mb="$rss_mb" -malloc_limit_mb="$malloc_mb" -timeout=10
        -dict=fuzz/iqdb.dict -print_final_stats=1)

failed=()
for t in "${targets[@]}"; do
  bin="$build/fuzz/fuzz_$t"
  max_len=4096
  asan=$ASAN_OPTIONS
  case "$t" in
    snapshot | flat_payload)
      max_len=8192 ;;  # the library's payloads align their vectors at 4096 (docs/FORMAT.md)
    faiss_crc)
      max_len=16384  # an HNSW graph's generator state is ~6.5 KiB of text
      asan="${ASAN_OPTIONS/detect_leaks=1/detect_leaks=0}" ;;
  esac
  work="$build/fuzz-corpus/$t"
  artifacts="$build/fuzz-artifacts/$t"
  log="$build/fuzz-logs/$t.log"
  mkdir -p "$work" "$artifacts" "$(dirname "$log")"
  status=0
  if [ -d "fuzz/regressions/$t" ]; then
    ASAN_OPTIONS=$asan "$bin" "${common[@]}" -max_len="$max_len" -runs=0 "fuzz/regressions/$t" >"$log" 2>&1 ||
      status=$?
  fi
  if [ "$status" -eq 0 ]; then
    ASAN_OPTIONS=$asan "$bin" "${common[@]}" -max_len="$max_len" -max_total_time="$secs" \
      -artifact_prefix="$artifacts/" "$work" "fuzz/corpus/$t" >>"$log" 2>&1 || status=$?
  fi
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  if [ "$status" -eq 0 ]; then
    printf '%-13s ok      %s executions in %ss\n' "$t" "${execs:-?}" "$secs"
  else
    printf '%-13s FAILED  (exit %s) see %s\n' "$t" "$status" "$log"
    grep -E '^(==[0-9]+== ?ERROR|SUMMARY|==== iqdb fuzz finding|  check:|  detail:|terminate called|  what\(\))' "$log" | head -8 | sed 's/^/    /'
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found problems in: ${failed[*]}"
  exit 1
fi
