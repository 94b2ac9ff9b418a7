#!/usr/bin/env bash
# cpu_affinity_test: `--cpu-affinity` restricts the daemon and every thread it starts (the
# io_uring workers that run its datasyncs included) to the CPUs given, and a list that cannot be
# honoured stops the start with exit 2, a message naming the fault, and the volume untouched.
#
# How: the test picks the highest CPU this process may use (needs at least two, or a
# restriction could not be told from the inherited set: skipped otherwise) and starts a
# standalone primary on a 64 MiB sparse volume with `--cpu-affinity` set to it. fio's nbd engine
# writes with a FLUSH after each write (each FLUSH is a datasync on an io_uring worker thread)
# and verify; while it runs, once the daemon has a worker thread, every thread's
# Cpus_allowed_list must be that one CPU. fio must pass. Then, on a fresh volume: a CPU the
# process may not use, a backwards range and an empty list must each exit 2 before anything
# is created beside the volume.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require fio python3
fio --enghelp=nbd >/dev/null 2>&1 || nm_skip "this fio has no nbd engine"

read -r cpu count max_plus_one <<<"$(python3 -c 'import os; c = sorted(os.sched_getaffinity(0)); print(c[-1], len(c), c[-1] + 1)')"
((count >= 2)) || nm_skip "only ${count} CPU available: a restriction cannot be told from the inherited set"

volume=$NM_TMP/a.img
nm_make_volume "$volume" 64M
nm_start_primary "$volume" "$NM_TMP/a.sock" --node a --cpu-affinity "$cpu"
pid=$NM_PID
grep -q "CPU affinity: ${cpu}\$" "$NM_LOG" || nm_fail "no 'CPU affinity: ${cpu}' in the daemon's log"

# thread_cpus PID: "name cpus" per thread.
thread_cpus() {
  local task
  for task in /proc/"$1"/task/*; do
    echo "$(<"$task/comm") $(awk '$1 == "Cpus_allowed_list:" { print $2 }' "$task/status")"
  done 2>/dev/null
}
has_worker() { thread_cpus "$pid" | grep -q '^iou-wrk'; }

(cd "$NM_TMP" && fio --name=flushes --ioengine=nbd --uri="$NM_URI" --rw=randwrite --bs=4k \
  --size=32M --iodepth=1 --fsync=1 --number_ios=4000 --verify=crc32c --verify_fatal=1 \
  --verify_state_save=0 >"$NM_TMP/fio.out" 2>&1) &
fio_pid=$!
nm_track_pid "$fio_pid"
nm_wait_for 30 "an io_uring worker thread in the daemon" has_worker
threads=$(thread_cpus "$pid")
nm_log "threads of the daemon: $(tr '\n' ';' <<<"$threads")"
while read -r name cpus; do
  [[ $cpus == "$cpu" ]] || nm_fail "thread ${name} may run on CPUs '${cpus}', expected ${cpu}"
done <<<"$threads"
rc=0
wait "$fio_pid" || rc=$?
nm_untrack_pid "$fio_pid"
((rc == 0)) || { cat "$NM_TMP/fio.out" >&2; nm_fail "fio exited ${rc}"; }
nm_log "every thread (an io_uring worker among them) on CPU ${cpu}; 4000 verified writes, each flushed"
nm_stop_clean "$pid" "the primary"

# refused LIST MESSAGE: the start must fail with exit 2 and MESSAGE, creating nothing.
refused() {
  local list=$1 message=$2 fresh=$NM_TMP/fresh.img rc=0
  nm_make_volume "$fresh" 64M
  timeout 20 "$NM_BIN" run --volume "$fresh" --primary --node a --nbd "unix:$NM_TMP/fresh.sock" \
    --cpu-affinity "$list" >"$NM_TMP/refused.log" 2>&1 || rc=$?
  ((rc == 2)) || { cat "$NM_TMP/refused.log" >&2; nm_fail "--cpu-affinity '${list}': exit ${rc}, expected 2"; }
  grep -q -- "$message" "$NM_TMP/refused.log" ||
    { cat "$NM_TMP/refused.log" >&2; nm_fail "--cpu-affinity '${list}': no '${message}' in the output"; }
  local left
  left=$(find "$NM_TMP" -maxdepth 1 \( -name 'fresh.img?*' -o -name fresh.sock \))
  [[ -z $left ]] || nm_fail "--cpu-affinity '${list}' was refused but left ${left}"
  nm_log "--cpu-affinity '${list}' refused: $(grep -o -- "--cpu-affinity.*" "$NM_TMP/refused.log" | head -1)"
}
refused "$max_plus_one" "CPU ${max_plus_one} is not available to this process"
refused "1-0" "range 1-0 runs backwards"
refused "" "expected a CPU number"
