#!/usr/bin/env bash
# quick_ab.sh: short A/B runs of one fio job against two (or more) nbdmirror binaries, in
# alternating order, standalone or mirrored (primary + standby on loopback), with an optional
# `strace -c` of each daemon during a separate window. For comparing builds in the same time
# window on a shared machine; bench/run.sh and bench/mirror.sh are the full, reported benchmarks.
#
#   bench/quick_ab.sh MODE JOB REPS BIN...
#     MODE: standalone | mirror-flush | mirror-sync
#     JOB:  a job name from bench/fio (w4k_qd32, w4k_qd1_flush, r4k_qd32, ...)
#   QUICK_RUNTIME=5 QUICK_SIZE=512M QUICK_STRACE=0|1 QUICK_TMPDIR=/var/tmp
#   QUICK_STANDBY_DIR=DIR puts the standby's copy there (e.g. /dev/shm: the disk then serves the
#   primary alone, as each host's disk does with two hosts)
#
# Prints one line per run: label, rep, IOPS, load average; then medians per label. With
# QUICK_STRACE=1 each binary also gets one run under `strace -f -c` of each daemon (4 s), and
# the system calls per completed I/O are printed (strace slows everything: only counts matter).
# With QUICK_MALLOCS=1 each binary gets one run with a uprobe on libc's malloc counted in each
# daemon (perf stat, 4 s): allocations per completed write, a count that does not depend on the
# machine's noise. The probe is added for the run and removed after it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mode=$1 job=$2 reps=$3
shift 3
bins=("$@")
runtime=${QUICK_RUNTIME:-5}
size=${QUICK_SIZE:-512M}
do_strace=${QUICK_STRACE:-0}
do_mallocs=${QUICK_MALLOCS:-0}
# Each daemon and fio run in a session of their own: with kernel.sched_autogroup_enabled=1 the
# scheduler shares CPU between sessions first, so three benchmark processes in one session would
# together get one tenant's share next to other sessions' compilers.
prio=(setsid)
tmp=$(mktemp -d "${QUICK_TMPDIR:-/var/tmp}/quick-ab.XXXXXX")
standby_dir=$tmp
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
  [[ $standby_dir == "$tmp" ]] || rm -rf "$standby_dir"
}
malloc_probe_added=0
cleanup_all() {
  cleanup
  if ((malloc_probe_added)); then perf probe -q -d probe_libc:malloc || true; fi
}
trap cleanup_all EXIT
head -c 32 /dev/urandom | base64 >"$tmp/secret"
chmod 600 "$tmp/secret"
if [[ -n ${QUICK_STANDBY_DIR:-} ]]; then
  standby_dir=$(mktemp -d "$QUICK_STANDBY_DIR/quick-ab-standby.XXXXXX")
fi
for f in "$tmp/S" "$tmp/A" "$standby_dir/B"; do
  fallocate -l "$size" "$f"
  # Fully written, so no write allocates blocks (tmpfs takes no O_DIRECT: plain writes there).
  dd if=/dev/zero of="$f" bs=1M count=$(($(numfmt --from=iec "$size") >> 20)) \
    conv=notrunc status=none $([[ $(stat -f -c %T "$f") == tmpfs ]] || echo oflag=direct)
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start BIN: sets primary_pid, standby_pid, sock
start() {
  local bin=$1
  sock=$tmp/nbd.sock
  rm -f "$sock" "$tmp"/*.nbdmirror-meta "$tmp"/*.ctl "$standby_dir"/*.nbdmirror-meta "$standby_dir"/*.ctl 2>/dev/null || true
  standby_pid=""
  if [[ $mode == standalone ]]; then
    "${prio[@]}" "$bin" run --volume "$tmp/S" --node a --primary --nbd "unix:$sock" >"$tmp/p.log" 2>&1 &
    primary_pid=$!
  else
    local pa pb
    pa=$(free_port)
    pb=$(free_port)
    "${prio[@]}" "$bin" run --volume "$standby_dir/B" --node b --listen "127.0.0.1:$pb" --peer "a=127.0.0.1:$pa" \
      --secret-file "$tmp/secret" >"$tmp/s.log" 2>&1 &
    standby_pid=$!
    "${prio[@]}" "$bin" run --volume "$tmp/A" --node a --primary --listen "127.0.0.1:$pa" \
      --peer "b=127.0.0.1:$pb" --secret-file "$tmp/secret" --nbd "unix:$sock" \
      --mode "${mode#mirror-}" --skip-initial-sync >"$tmp/p.log" 2>&1 &
    primary_pid=$!
  fi
  pids=("$primary_pid" $standby_pid)
  for ((i = 0; i < 400; i++)); do
    [[ -S $sock ]] && nbdinfo --size "nbd+unix:///?socket=$sock" >/dev/null 2>&1 && break
    sleep 0.05
  done
  if [[ -n $standby_pid ]]; then
    for ((i = 0; i < 400; i++)); do
      st=$("$bin" status --volume "$tmp/A" --json 2>/dev/null | jq -r .connection 2>/dev/null || true)
      [[ $st == connected ]] && break
      sleep 0.05
    done
  fi
}
stop() {
  kill -TERM "$primary_pid" 2>/dev/null || true
  wait "$primary_pid" || echo "primary exit $?" >&2
  if [[ -n $standby_pid ]]; then
    kill -TERM "$standby_pid" 2>/dev/null || true
    wait "$standby_pid" || echo "standby exit $?" >&2
  fi
  pids=()
}
run_fio() {  # run_fio RUNTIME -> prints IOPS (write+read)
  BENCH_RUNTIME=$1 BENCH_FSYNC=1 BENCH_FDATASYNC=0 "${prio[@]}" fio --ioengine=nbd \
    "--uri=nbd+unix:///?socket=$sock" --output-format=json "--output=$tmp/fio.json" \
    "$here/fio/$job.fio" >/dev/null 2>"$tmp/fio.err"
  jq '(.jobs[0].write.iops + .jobs[0].read.iops) | floor' "$tmp/fio.json"
}
load1() { cut -d' ' -f1 /proc/loadavg; }
cpu_ticks() { [[ -n $1 ]] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }

declare -A results
for ((r = 0; r < reps; r++)); do
  n=${#bins[@]}
  for ((k = 0; k < n; k++)); do
    bin=${bins[$(((k + r) % n))]}
    label=$(basename "$bin")
    start "$bin"
    l0=$(load1)
    c0p=$(cpu_ticks "$primary_pid") c0s=$(cpu_ticks "$standby_pid")
    iops=$(run_fio "$runtime")
    c1p=$(cpu_ticks "$primary_pid") c1s=$(cpu_ticks "$standby_pid")
    l1=$(load1)
    stop
    hz=$(getconf CLK_TCK)
    # CPU per I/O over the run including fio's 2 s ramp, so an overestimate of the steady state.
    cpu=$(echo "scale=1; p=($c1p-$c0p)*1000000/$hz/($iops*($runtime+2)); s=($c1s-$c0s)*1000000/$hz/($iops*($runtime+2)); print p, \" / \", s" | bc)
    echo "$label rep=$r iops=$iops load=$l0->$l1 cpu_us_per_io(primary/standby)=$cpu"
    results[$label]+="$iops "
  done
done
for label in "${!results[@]}"; do
  med=$(tr ' ' '\n' <<<"${results[$label]}" | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}')
  echo "MEDIAN $label $med  [${results[$label]}]"
done

# counted_run BIN TOOL: starts the daemons and a 9 s fio run; 3 s in, TOOL counts in each
# daemon for 4 s (strace: system calls, mallocs: a uprobe on libc's malloc); prints the counts
# per write completed meanwhile.
counted_run() {
  local bin=$1 tool=$2 label side p pids_counting=() writes w0 w1 fio_pid vol
  label=$(basename "$bin")
  start "$bin"
  BENCH_RUNTIME=9 BENCH_FSYNC=1 BENCH_FDATASYNC=0 "${prio[@]}" fio --ioengine=nbd \
    "--uri=nbd+unix:///?socket=$sock" --output-format=json "--output=$tmp/fio-$tool.json" \
    "$here/fio/$job.fio" >/dev/null 2>&1 &
  fio_pid=$!
  sleep 3
  vol=$tmp/S
  [[ -n $standby_pid ]] && vol=$tmp/A
  w0=$("$bin" status --volume "$vol" --json | jq .writes)
  for side in p s; do
    p=$primary_pid
    [[ $side == s ]] && p=$standby_pid
    [[ -n $p ]] || continue
    if [[ $tool == strace ]]; then
      strace -f -c -o "$tmp/count.$side" -p "$p" &
    else
      perf stat -x, -e probe_libc:malloc -o "$tmp/count.$side" -p "$p" -- sleep 4 &
    fi
    pids_counting+=($!)
  done
  if [[ $tool == strace ]]; then
    sleep 4
    kill -INT "${pids_counting[@]}" 2>/dev/null || true
  fi
  wait "${pids_counting[@]}" 2>/dev/null || true
  w1=$("$bin" status --volume "$vol" --json | jq .writes)
  writes=$((w1 - w0))
  wait "$fio_pid" || true
  for side in p s; do
    [[ -f $tmp/count.$side ]] || continue
    if [[ $tool == strace ]]; then
      calls=$(awk '$NF == "total" {print $4}' "$tmp/count.$side")
      echo "== strace $label $side: $writes writes, $calls calls, $(echo "scale=2; $calls / $writes" | bc) per write"
      awk -v w="$writes" 'NR > 2 && $NF != "total" && $1 !~ /^-/ { e = (NF == 6) ? $5 : 0; printf "   %-18s %8d  %.2f/write  (errors %d)\n", $NF, $4, $4 / w, e }' "$tmp/count.$side" | head -14
    else
      calls=$(awk -F, '$3 ~ /probe_libc:malloc/ {print $1}' "$tmp/count.$side")
      echo "== mallocs $label $side: $writes writes, $calls mallocs, $(echo "scale=2; $calls / $writes" | bc) per write"
    fi
    rm -f "$tmp/count.$side"
  done
  stop
}

if ((do_strace)); then
  for bin in "${bins[@]}"; do counted_run "$bin" strace; done
fi
if ((do_mallocs)); then
  libc=$(ldd "${bins[0]}" | awk '$1 ~ /^libc\.so/ {print $3}')
  if ! perf probe -l 2>/dev/null | grep -q 'probe_libc:malloc'; then
    perf probe -q -x "$libc" malloc
    malloc_probe_added=1
  fi
  for bin in "${bins[@]}"; do counted_run "$bin" mallocs; done
fi
