#!/usr/bin/env bash
# bench/run.sh: benchmark nbdmirror against nbdkit and the raw file, in one command.
#
# For every job in bench/fio/ and every repetition, the same fio job runs against each target,
# one after the other:
#   nbdmirror       `nbdmirror run --primary` on backing file A, over a unix socket (O_DIRECT)
#   nbdkit          nbdkit's file plugin on backing file B, default settings (page cache)
#   nbdkit-nocache  nbdkit's file plugin on file B with cache=none, if the plugin has it
#   raw             no server: fio's io_uring engine with direct=1 on file C (the disk's limit)
# and, only when named in BENCH_TARGETS, two references for what any NBD server can reach here:
#   nbdkit-null     nbdkit's null plugin: no I/O at all, so its figures are fio's nbd engine and
#                   the protocol's round trips alone
#   raw-dsync       as raw, but every write is O_DSYNC (fio --sync=dsync): a durable write in one
#                   request, what a server that writes through pays the disk per write
# The order of the targets rotates with the repetition so none always runs first.
#
# Every server is started fresh for each measurement and stopped with SIGTERM right after it.
# That gives each run the same cold state, makes VmHWM the peak of that one job, and keeps a
# crash in one run from spoiling the next. The page cache is synced and dropped before every
# run, so dirty pages from the previous run are not written back during this one.
#
# Results go to bench/out/<timestamp>/: runs.jsonl (one line per run), raw/ (fio JSON and
# server logs), meta.json, and from bench/report.py results.json, results.md and chart.png.
#
# Settings (environment):
#   BENCH_RUNTIME=15   seconds measured per run (plus 2 s ramp)
#   BENCH_REPS=3       repetitions; the report takes medians
#   BENCH_SIZE=2G      size of each backing file (IEC suffixes; a multiple of 1 MiB)
#   BENCH_JOBS="..."   subset of job names (default: all six, in the order of bench/README.md)
#   BENCH_TARGETS="..."  targets (default: nbdmirror nbdkit nbdkit-nocache raw; nbdkit-null and
#                        raw-dsync only when named)
#   BENCH_TMPDIR=/var/tmp  where the backing files go; must be on the disk you mean to measure
#   BENCH_OUT=bench/out    parent of the timestamped output directory
#   NBDMIRROR_BIN=build/nbdmirror  the binary under test (copied before the run starts)
#   BENCH_PYTHON=python3   a Python with matplotlib (default: the first of python3, /usr/bin/python3)
#   BENCH_SERVER_CPUS=""   CPU list for both servers alike: nbdmirror gets `--cpu-affinity LIST`,
#                          nbdkit runs under `taskset -c LIST`; fio is left alone. For a disk whose
#                          completions arrive on one CPU (see README, "CPU placement")
#
# Needs root (drop_caches), fio with the nbd and io_uring engines, nbdkit, nbdinfo, jq, python3
# with matplotlib. Uses unix sockets only. Kills what it started, by PID, on exit or Ctrl-C.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
runtime_s=${BENCH_RUNTIME:-15}
reps=${BENCH_REPS:-3}
size=${BENCH_SIZE:-2G}
read -r -a job_names <<<"${BENCH_JOBS:-w4k_qd1_flush w4k_qd32 r4k_qd1 r4k_qd32 seqw1m_qd8 seqr1m_qd8}"
read -r -a target_names <<<"${BENCH_TARGETS:-nbdmirror nbdkit nbdkit-nocache raw}"
nbdmirror_src=${NBDMIRROR_BIN:-$here/../build/nbdmirror}
tmp_parent=${BENCH_TMPDIR:-/var/tmp}
out_parent=${BENCH_OUT:-$here/out}
server_cpus=${BENCH_SERVER_CPUS:-}

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- processes we started, so cleanup can end exactly those --------------------------------
declare -A live=()  # pid -> what it is
tmp=""

# Waits up to $2 tenths of a second for pid $1 to go away; bash reaps its children, so a
# finished child does not linger as a zombie that kill -0 would still see.
wait_gone() {
  local pid=$1 tenths=$2 i
  for ((i = 0; i < tenths; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  ! kill -0 "$pid" 2>/dev/null
}

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${!live[@]}"; do
    log "stopping ${live[$pid]} (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${!live[@]}"; do
    if ! wait_gone "$pid" 100; then
      log "${live[$pid]} (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  if [[ -n $tmp && -d $tmp ]]; then
    rm -rf -- "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---- checks -----------------------------------------------------------------------------
[[ $(id -u) == 0 ]] || die "run as root: the page cache is dropped before every run"
for tool in fio nbdkit nbdinfo jq numfmt setpriv findmnt; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
# The first Python that has matplotlib (a pyenv python3 may not see the distribution's).
python=${BENCH_PYTHON:-}
if [[ -z $python ]]; then
  for candidate in python3 /usr/bin/python3; do
    if "$candidate" -c 'import matplotlib' 2>/dev/null; then
      python=$candidate
      break
    fi
  done
fi
[[ -n $python ]] || die "no python3 with matplotlib found (set BENCH_PYTHON)"
[[ $runtime_s =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNTIME must be a positive integer (seconds)"
[[ $reps =~ ^[1-9][0-9]*$ ]] || die "BENCH_REPS must be a positive integer"
size_bytes=$(numfmt --from=iec "$size") || die "BENCH_SIZE=$size is not a size"
((size_bytes >= 64 << 20 && size_bytes % (1 << 20) == 0)) ||
  die "BENCH_SIZE must be a multiple of 1 MiB and at least 64 MiB"
for engine in nbd io_uring; do
  fio --enghelp="$engine" >/dev/null 2>&1 || die "fio lacks the $engine engine"
done
[[ -x $nbdmirror_src ]] || die "no nbdmirror binary at $nbdmirror_src (set NBDMIRROR_BIN)"
nbdkit_has_cache_none=false
if nbdkit file --help 2>&1 | grep -q '^cache='; then
  nbdkit_has_cache_none=true
fi
for target in "${target_names[@]}"; do
  case $target in
    nbdmirror | nbdkit | raw | nbdkit-null | raw-dsync) ;;
    nbdkit-nocache) $nbdkit_has_cache_none || die "this nbdkit's file plugin has no cache=none" ;;
    *) die "unknown target $target" ;;
  esac
done
for job in "${job_names[@]}"; do
  [[ -f $here/fio/$job.fio ]] || die "no job file $here/fio/$job.fio"
done
mkdir -p "$tmp_parent"
[[ $(stat -f -c %T "$tmp_parent") != tmpfs ]] || die "BENCH_TMPDIR=$tmp_parent is tmpfs"
avail_bytes=$(df --output=avail -B1 "$tmp_parent" | tail -1)
((avail_bytes > 3 * size_bytes + (1 << 30))) || die "not enough space in $tmp_parent"

# ---- output and scratch directories -------------------------------------------------------
stamp=$(date +%Y%m%d-%H%M%S)
out=$out_parent/$stamp
mkdir -p "$out/raw"
tmp=$(mktemp -d "$tmp_parent/nbdmirror-bench.XXXXXX")
sock=$tmp/nbd.sock
uri="nbd+unix:///?socket=$sock"
# A private copy, so a rebuild of build/ during the run cannot change the binary under test.
nbdmirror_bin=$tmp/nbdmirror
cp -- "$nbdmirror_src" "$nbdmirror_bin"

# ---- metadata -----------------------------------------------------------------------------
dev=$(df --output=source "$tmp_parent" | tail -1)
devname=$(basename "$dev")
parent=$(lsblk -no PKNAME "$dev" 2>/dev/null | head -1 || true)
queue=/sys/class/block/${parent:-$devname}/queue
read_sys() { cat "$1" 2>/dev/null || echo unknown; }
# The whole disk's I/O counters: bytes that reached the device during a run tell O_DIRECT
# from the page cache (and are shared with anything else using the disk at the time).
disk_stat=/sys/class/block/${parent:-$devname}/stat
[[ -r $disk_stat ]] || die "cannot read $disk_stat"
git_dir=$here/..
# The command as it could be typed again: the settings that were given, then the script.
command_line=""
for var in NBDMIRROR_BIN BENCH_RUNTIME BENCH_REPS BENCH_SIZE BENCH_JOBS BENCH_TARGETS \
  BENCH_TMPDIR BENCH_OUT BENCH_PYTHON BENCH_SERVER_CPUS; do
  if [[ -n ${!var:-} ]]; then
    command_line+="$var=$(printf '%q' "${!var}") "
  fi
done
command_line+=$(printf '%q' "$0")
jq -n \
  --arg date "$(date -Iseconds)" \
  --arg command "$command_line" \
  --arg runtime_s "$runtime_s" --arg reps "$reps" --arg size "$size" \
  --arg size_bytes "$size_bytes" \
  --arg jobs "${job_names[*]}" --arg targets "${target_names[*]}" \
  --arg git_commit "$(git -C "$git_dir" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  --arg git_dirty "$(git -C "$git_dir" status --porcelain --untracked-files=no 2>/dev/null |
    wc -l)" \
  --arg nbdmirror_bin "$(realpath "$nbdmirror_src")" \
  --arg nbdmirror_sha256 "$(sha256sum "$nbdmirror_bin" | cut -d' ' -f1)" \
  --arg fio_version "$(fio --version)" \
  --arg nbdkit_version "$(nbdkit --version)" \
  --argjson nbdkit_has_cache_none "$nbdkit_has_cache_none" \
  --arg kernel "$(uname -r)" \
  --arg nproc "$(nproc)" \
  --arg cpu "$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
  --arg mem "$(grep MemTotal /proc/meminfo | tr -s ' ')" \
  --arg tmpdir "$tmp_parent" \
  --arg fs "$(findmnt -no FSTYPE -T "$tmp_parent" 2>/dev/null || stat -f -c %T "$tmp_parent")" \
  --arg df "$(df -h "$tmp_parent")" \
  --arg lsblk "$(lsblk -o NAME,SIZE,ROTA,TYPE,MOUNTPOINTS 2>/dev/null || lsblk)" \
  --arg device "$dev" \
  --arg scheduler "$(read_sys "$queue/scheduler" | sed 's/ *$//')" \
  --arg write_cache "$(read_sys "$queue/write_cache")" \
  --arg rotational "$(read_sys "$queue/rotational")" \
  --arg loadavg_start "$(cat /proc/loadavg)" \
  --arg server_cpus "${server_cpus:-inherited}" \
  '$ARGS.named' >"$out/meta.json"

# ---- backing files --------------------------------------------------------------------------
# Real data in every block: no holes, so neither server can answer a read from a hole, and
# no write allocates. cp --sparse=never --reflink=never makes independent, fully written copies.
log "writing $size of random data to A, copying it to B and C (in $tmp)"
head -c "$size_bytes" /dev/urandom >"$tmp/A"
cp --sparse=never --reflink=never -- "$tmp/A" "$tmp/B"
cp --sparse=never --reflink=never -- "$tmp/A" "$tmp/C"
sync
for f in A B C; do
  allocated=$(($(stat -c '%b * %B' "$tmp/$f")))
  ((allocated >= size_bytes)) || die "$f is sparse: $allocated of $size_bytes bytes allocated"
done

drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

# Prints VmHWM (peak resident set) of pid $1 in KiB.
vm_hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

# Prints the CPU seconds (user + system) pid $1 has used so far.
cpu_s() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}

# Starts a server ($1 = target name, $2 = log file, rest = command) and waits until it answers
# NBD on the socket. Sets server_pid. The server gets SIGTERM if this script dies.
start_server() {
  local name=$1 server_log=$2 i got
  shift 2
  rm -f -- "$sock"
  setpriv --pdeathsig TERM -- "$@" >"$server_log" 2>&1 &
  server_pid=$!
  live[$server_pid]=$name
  for ((i = 0; i < 200; i++)); do
    kill -0 "$server_pid" 2>/dev/null || die "$name exited during start-up; see $server_log"
    if [[ -S $sock ]] && got=$(nbdinfo --size "$uri" 2>/dev/null); then
      [[ $got == "$size_bytes" ]] || die "$name exports $got bytes, expected $size_bytes"
      return 0
    fi
    sleep 0.05
  done
  die "$name did not answer on $sock within 10 s; see $server_log"
}

# Stops the server with SIGTERM (nbdmirror drains and syncs) and sets server_rc to its status.
stop_server() {
  local pid=$server_pid
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" 600; then
    log "${live[$pid]} did not exit within 60 s of SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  server_rc=0
  wait "$pid" || server_rc=$?
  unset "live[$pid]"
}

# Runs one measurement: job $1 on target $2, repetition $3. Appends a line to runs.jsonl.
run_one() {
  local job=$1 target=$2 rep=$3
  local tag=$job.$target.$rep
  local fio_json=$out/raw/$tag.json server_log=$out/raw/$tag.server.log
  local -a server_cmd=() target_args=()
  local fsync=1 fdatasync=0
  case $target in
    nbdmirror) server_cmd=("$nbdmirror_bin" run --volume "$tmp/A" --primary --nbd "unix:$sock"
      ${server_cpus:+--cpu-affinity "$server_cpus"}) ;;
    nbdkit) server_cmd=(${server_cpus:+taskset -c "$server_cpus"} nbdkit --exit-with-parent -f
      -U "$sock" file "$tmp/B") ;;
    nbdkit-nocache) server_cmd=(${server_cpus:+taskset -c "$server_cpus"} nbdkit
      --exit-with-parent -f -U "$sock" file "$tmp/B" cache=none) ;;
    nbdkit-null) server_cmd=(${server_cpus:+taskset -c "$server_cpus"} nbdkit --exit-with-parent
      -f -U "$sock" null "size=$size_bytes") ;;
    raw | raw-dsync) ;;
  esac
  if ((${#server_cmd[@]})); then
    target_args=(--ioengine=nbd "--uri=$uri")
  else
    # NBD_CMD_FLUSH on a file is an fdatasync, so the raw baseline uses fdatasync too.
    target_args=(--ioengine=io_uring --direct=1 "--filename=$tmp/C")
    fsync=0
    fdatasync=1
    if [[ $target == raw-dsync ]]; then
      # The write carries its own flush (RWF_DSYNC), so no fdatasync after it.
      target_args+=(--sync=dsync)
      fdatasync=0
    fi
  fi

  drop_caches
  local load_before
  load_before=$(cut -d' ' -f1 /proc/loadavg)
  server_pid="" server_rc=null
  local hwm_kib=null server_cpu_s=null
  if ((${#server_cmd[@]})); then
    start_server "$target" "$server_log" "${server_cmd[@]}"
  fi

  local fio_rc=0 fio_pid disk_before started_s
  disk_before=$(cat "$disk_stat")
  started_s=$(date +%s.%N)
  BENCH_RUNTIME=$runtime_s BENCH_FSYNC=$fsync BENCH_FDATASYNC=$fdatasync \
    setpriv --pdeathsig TERM -- fio "${target_args[@]}" --output-format=json \
    "--output=$fio_json" "$here/fio/$job.fio" 2>"$out/raw/$tag.fio.err" &
  fio_pid=$!
  live[$fio_pid]=fio
  wait "$fio_pid" || fio_rc=$?
  unset "live[$fio_pid]"
  local -a disk_before_f disk_after_f
  read -r -a disk_after_f <"$disk_stat"
  read -r -a disk_before_f <<<"$disk_before"
  local wall_s disk_read_bytes disk_write_bytes
  wall_s=$(awk -v a="$started_s" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')
  # Fields 3 and 7 of the block stat file are sectors read and written, in 512-byte units.
  disk_read_bytes=$(((disk_after_f[2] - disk_before_f[2]) * 512))
  disk_write_bytes=$(((disk_after_f[6] - disk_before_f[6]) * 512))

  if [[ -n $server_pid ]]; then
    if kill -0 "$server_pid" 2>/dev/null; then
      hwm_kib=$(vm_hwm_kib "$server_pid")
      server_cpu_s=$(cpu_s "$server_pid")
    fi
    stop_server
  fi

  local command="fio ${target_args[*]} fio/$job.fio"
  if ((${#server_cmd[@]})); then
    command="${server_cmd[*]} & $command"
  fi
  jq -cn --arg job "$job" --arg target "$target" --argjson rep "$rep" \
    --arg fio_json "raw/$tag.json" --argjson fio_rc "$fio_rc" \
    --argjson server_rc "$server_rc" --argjson vm_hwm_kib "$hwm_kib" \
    --argjson server_cpu_s "$server_cpu_s" \
    --argjson loadavg_before "$load_before" \
    --argjson loadavg_after "$(cut -d' ' -f1 /proc/loadavg)" \
    --arg command "$command" \
    --argjson wall_s "$wall_s" \
    --argjson disk_read_bytes "$disk_read_bytes" --argjson disk_write_bytes "$disk_write_bytes" \
    '$ARGS.named' >>"$out/runs.jsonl"

  local summary="fio failed (rc $fio_rc, see raw/$tag.fio.err)"
  if ((fio_rc == 0)); then
    summary=$(jq -r '.jobs[0] | (if .write.io_bytes > 0 then .write else .read end)
      | "\(.iops | floor) IOPS, \(.bw_bytes / 1e6 | floor) MB/s"' "$fio_json")
  fi
  if [[ $hwm_kib != null ]]; then
    summary+=", VmHWM $((hwm_kib / 1024)) MiB"
  fi
  if [[ $server_rc != null && $server_rc != 0 ]]; then
    summary+=", server exit status $server_rc"
  fi
  log "  $target: $summary"
}

total=$((${#job_names[@]} * reps * ${#target_names[@]}))
minutes=$(((total * (runtime_s + 4) + 59) / 60))
log "$total runs of ${runtime_s} s (+2 s ramp) on $size files: about $minutes minutes"
log "output: $out"
for job in "${job_names[@]}"; do
  for ((rep = 1; rep <= reps; rep++)); do
    log "$job, repetition $rep of $reps"
    n=${#target_names[@]}
    for ((i = 0; i < n; i++)); do
      run_one "$job" "${target_names[(i + rep - 1) % n]}" "$rep"
    done
  done
done

jq --arg l "$(cat /proc/loadavg)" '. + {loadavg_end: $l}' "$out/meta.json" >"$out/meta.json.new"
mv -- "$out/meta.json.new" "$out/meta.json"
"$python" "$here/report.py" "$out"
log "results in $out"
