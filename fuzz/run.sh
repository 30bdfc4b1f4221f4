#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) if needed, replays the
# minimized regressions, then fuzzes each target for a bounded time with the
# memory caps. Exits non-zero on any finding (crash, sanitizer report, failed
# oracle, leak, timeout, out-of-memory or an allocation above the limit).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     default: 10 s, every target
#   fuzz/run.sh 600                                  the longer campaign (50 min)
#
# Targets: header snapshot wal_scan wal_replay flat_payload.
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
[ ${#targets[@]} -eq 0 ] && targets=(header snapshot wal_scan wal_replay flat_payload)
build=${IQDB_FUZZ_BUILD:-build-fuzz}
malloc_mb=${IQDB_FUZZ_MALLOC_MB:-64}
rss_mb=${IQDB_FUZZ_RSS_MB:-2048}

if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DIQDB_PERSIST_BUILD_FUZZERS=ON -DIQDB_PERSIST_BUILD_TESTS=OFF -DIQDB_PERSIST_BUILD_TOOLS=OFF \
    -DIQDB_PERSIST_BUILD_BENCH=OFF -DIQDB_PERSIST_BUILD_EXAMPLES=OFF -DIQDB_PERSIST_INSTALL=OFF \
    -DIQDB_PERSIST_WITH_FAISS=OFF -DIQDB_PERSIST_WITH_HNSWLIB=OFF \
    -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fsanitize=fuzzer-no-link -fno-omit-frame-pointer" \
    >/dev/null
fi
cmake --build "$build" -j"$(nproc)" --target iqdb_fuzzers >/dev/null

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
common=(-rss_limit_mb="$rss_mb" -malloc_limit_mb="$malloc_mb" -timeout=10 -max_len=4096
        -dict=fuzz/iqdb.dict -print_final_stats=1)

failed=()
for t in "${targets[@]}"; do
  bin="$build/fuzz/fuzz_$t"
  work="$build/fuzz-corpus/$t"
  artifacts="$build/fuzz-artifacts/$t"
  log="$build/fuzz-logs/$t.log"
  mkdir -p "$work" "$artifacts" "$(dirname "$log")"
  status=0
  if [ -d "fuzz/regressions/$t" ]; then
    "$bin" "${common[@]}" -runs=0 "fuzz/regressions/$t" >"$log" 2>&1 || status=$?
  fi
  if [ "$status" -eq 0 ]; then
    "$bin" "${common[@]}" -max_total_time="$secs" -artifact_prefix="$artifacts/" "$work" "fuzz/corpus/$t" \
      >>"$log" 2>&1 || status=$?
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
