#!/usr/bin/env bash
# Runs the whole test suite, as CI does:
#   1. installs dependencies (skip with NBDMIRROR_SKIP_DEPS=1)
#   2. release build (RelWithDebInfo, CHECKs on): unit, integration and e2e tests
#   3. AddressSanitizer + UndefinedBehaviorSanitizer build: unit tests and the protocol torture
#      and client interop tests, so bad input is checked for memory errors too
#   4. clang libFuzzer build: each fuzzer for NBDMIRROR_FUZZ_SECONDS (default 45)
# Ends with one line "N passed, N failed, N skipped". Exit status is non-zero if anything failed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [[ ${NBDMIRROR_SKIP_DEPS:-0} != 1 ]]; then
  "$root/scripts/install-deps.sh"
fi

results=$(mktemp -d /tmp/nbdmirror-results.XXXXXX)
trap 'rm -rf "$results"' EXIT
status=0
run_ctest() {  # run_ctest NAME BUILD_DIR CTEST_ARGS...
  local name=$1 dir=$2
  shift 2
  echo "=== ctest $name: $*"
  if ! ctest --test-dir "$dir" --output-on-failure --output-junit "$results/$name.xml" "$@"; then
    status=1
  fi
}

echo "=== release build"
"$root/scripts/build.sh" "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNBDMIRROR_SANITIZE= \
  -DNBDMIRROR_BUILD_TESTS=ON
run_ctest unit build -L unit -j "$(nproc)"
run_ctest sim build -L sim
run_ctest integration build -L 'integration|e2e'

echo "=== sanitizer build (address,undefined)"
"$root/scripts/build.sh" "$root/build-asan" -DCMAKE_BUILD_TYPE=Debug \
  -DNBDMIRROR_SANITIZE=address,undefined -DNBDMIRROR_BUILD_TESTS=ON
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1
run_ctest asan-unit build-asan -L unit -j "$(nproc)"
run_ctest asan-sim build-asan -L sim
run_ctest asan-integration build-asan -R 'integration\.(protocol|nbdcopy|qemu|faults|shutdown|mirror_basic|mirror_bad_peer|mirror_resync|mirror_verify|metrics|stalled_client|mirror_fast_zero|mirror_standby_disk_failure|mirror_empty_requests|mirror_shutdown_handshake|mirror_metadata_failure|tcp_shutdown)_test'
unset ASAN_OPTIONS UBSAN_OPTIONS

echo "=== fuzzers (clang libFuzzer)"
CXX=clang++ cmake -S "$root" -B "$root/build-fuzz" -G Ninja -DNBDMIRROR_BUILD_TESTS=OFF \
  -DNBDMIRROR_BUILD_FUZZERS=ON -DNBDMIRROR_FUZZ_SECONDS="${NBDMIRROR_FUZZ_SECONDS:-45}" >/dev/null
ninja -C "$root/build-fuzz" fuzz_handshake fuzz_requests fuzz_peer
run_ctest fuzz build-fuzz -L fuzz -j 2

python3 - "$results" <<'PY'
import glob, sys, xml.etree.ElementTree as ET
passed = failed = skipped = 0
for path in sorted(glob.glob(sys.argv[1] + "/*.xml")):
    for case in ET.parse(path).getroot().iter("testcase"):
        status = case.get("status", "")
        if case.find("failure") is not None or status == "fail":
            failed += 1
        elif case.find("skipped") is not None or status in ("notrun", "disabled"):
            skipped += 1
        else:
            passed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
PY
exit $status
