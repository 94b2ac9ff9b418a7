#!/usr/bin/env bash
# fio_verify_test: under deep queues and several connections, every block reads back with the
# checksum it was written with.
#
# How: fio's nbd engine (libnbd, one connection per job, never DISC) runs two jobs on disjoint
# 96 MiB regions (offset_increment) of a 256 MiB export, 32 requests in flight each:
#   1. random 4 KiB writes with verify=crc32c (fio writes every block once, then reads each one
#      back and checks its embedded header and checksum);
#   2. random writes with mixed sizes from 512 B to 1 MiB (bssplit), same verification,
#      with verify_backlog so verification reads run while writes are still in flight.
# fio must exit 0 and its JSON must show, for every job, error 0, the bytes written and the same
# bytes read back by verification. A negative control (verifying a never-written region) must
# fail. The daemon must stay up throughout, log no errors and exit 0 on SIGTERM.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require fio nbdinfo python3
fio --enghelp=nbd >/dev/null 2>&1 || nm_skip "this fio has no nbd engine"

volume=$NM_TMP/volume.img
nm_make_volume "$volume" 256M
nm_start_primary "$volume" "$NM_TMP/nbd.sock"
daemon=$NM_PID
uri=$NM_URI

region_bytes=$((96 << 20))

# run_fio NAME FIO-ARGS...: runs one verified job pair and checks its JSON report.
run_fio() {
  local name=$1
  shift
  local json=$NM_TMP/fio-$name.json rc=0
  # fio may save verify state in its working directory: keep it in the temp dir.
  (cd "$NM_TMP" && fio --name="$name" --ioengine=nbd --uri="$uri" \
    --numjobs=2 --size="$region_bytes" --offset_increment="$region_bytes" \
    --iodepth=32 --verify=crc32c --verify_fatal=1 --verify_dump=0 \
    --verify_state_save=0 --group_reporting=0 \
    --output-format=json --output="$json" "$@") 2>"$NM_TMP/fio-$name.err" || rc=$?
  if ((rc != 0)); then
    cat "$NM_TMP/fio-$name.err" "$json" >&2 2>/dev/null || true
    nm_fail "fio job '${name}' exited with status ${rc}"
  fi
  python3 - "$json" "$region_bytes" <<'EOF' || nm_fail "fio job '${name}' reported errors"
import json, sys
report = json.load(open(sys.argv[1]))
region = int(sys.argv[2])
jobs = report["jobs"]
errors = []
if len(jobs) != 2:
    errors.append(f"expected 2 jobs, got {len(jobs)}")
for job in jobs:
    name = f"{job['jobname']}#{jobs.index(job)}"
    if job["error"] != 0:
        errors.append(f"{name}: error {job['error']}")
    written = job["write"]["io_bytes"]
    verified = job["read"]["io_bytes"]
    if written != region:
        errors.append(f"{name}: wrote {written} bytes, expected {region}")
    if verified != written:
        errors.append(f"{name}: verified {verified} of {written} written bytes")
    print(f"  {name}: wrote {written >> 20} MiB, verified {verified >> 20} MiB, "
          f"{job['write']['total_ios']} writes", file=sys.stderr)
for e in errors:
    print("  " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
  if grep -qiE "verify|bad magic|crc" "$NM_TMP/fio-$name.err"; then
    cat "$NM_TMP/fio-$name.err" >&2
    nm_fail "fio job '${name}' printed verification complaints"
  fi
  nm_assert_alive "$daemon" "nbdmirror after fio job ${name}"
}

run_fio randwrite-4k --rw=randwrite --bs=4k
nm_log "4 KiB random writes, 2 jobs x 32 deep: all verified"

run_fio randwrite-mixed --rw=randwrite \
  --bssplit=512/10:4k/30:16k/20:64k/20:256k/15:1m/5 --blockalign=512 \
  --verify_backlog=256
nm_log "mixed-size random writes with verification backlog: all verified"

# Negative control: verifying the 64 MiB nobody wrote (it reads as zeroes) must fail, which
# proves that fio's verification above really checked what it read.
rc=0
(cd "$NM_TMP" && fio --name=control --ioengine=nbd --uri="$uri" --offset=$((2 * region_bytes)) \
  --size=64M --rw=randwrite --bs=4k --iodepth=32 --verify=crc32c --verify_only \
  --verify_fatal=1 --verify_state_save=0 >"$NM_TMP/fio-control.out" 2>&1) || rc=$?
if ((rc == 0)) || ! grep -q "bad magic header" "$NM_TMP/fio-control.out"; then
  nm_fail "fio's verification did not notice a region that was never written (status ${rc})"
fi
nm_log "negative control: fio verification rejects unwritten blocks"

errors=$(nm_count_in_log "$NM_LOG" ' (error|critical) ')
((errors == 0)) || nm_fail "the daemon logged ${errors} error(s) during a clean fio run"

rc=0
nm_stop "$daemon" || rc=$?
((rc == 0)) || nm_fail "nbdmirror exited with status ${rc} after SIGTERM, expected 0"
echo "PASS: fio_verify_test"
