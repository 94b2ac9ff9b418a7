#!/usr/bin/env bash
# bench/mirror.sh: what mirroring costs, in one command.
#
# Part 1, fio (jobs from bench/fio/, over NBD with fio's nbd engine, one connection) against
#   standalone    `nbdmirror run --primary` without a peer (mode flush, a plain disk)      file S
#   mirror-flush  standby + primary on loopback, `--mode flush`                          files A, B
#   mirror-sync   standby + primary on loopback, `--mode sync`                           files A, B
# For every job and repetition the three targets run one after another, in an order that rotates
# with the repetition. Every run starts its daemons fresh and stops them with SIGTERM after fio.
# Just before the client starts, each daemon's peak resident set so far (start-up, initial sync)
# and CPU time are recorded and the peak is reset (/proc/PID/clear_refs), so VmHWM and CPU of
# the primary and of the standby are those of the measurement; the earlier peak is kept apart.
# A mirrored run measures only once `nbdmirror status` shows the peer connected, UpToDate and
# nothing out of sync. Each mirrored run starts both daemons from new metadata, a first pairing:
# by default with the full initial sync (the state a standby is in after its first pairing; it
# then reports itself UpToDate), or with BENCH_INITIAL_SYNC=skip, --skip-initial-sync, which is
# used only while the previous mirrored run ended with the primary logging "in sync" (a clean
# shutdown of a synchronised pair leaves the two copies identical). A and B start as
# byte-identical copies and are compared byte for byte at the end.
#
# Part 2, pgbench (PGBENCH_SCALE, PGBENCH_CLIENTS, PGBENCH_SECONDS) with the data directory on
#   standalone    ext4 on the standalone export (scripts/nbd-attach.sh: nbd-client or nbdfuse+loop)
#   mirror-sync   ext4 on the mirrored export, --mode sync
#   mirror-flush  the same with --mode flush (not run by default; PostgreSQL fsyncs its commits,
#                 so both modes give it the same guarantee)
#   streaming     plain directories on the local disk: a primary PostgreSQL with
#                 synchronous_standby_names = the standby's application_name, synchronous_commit
#                 = on, and a standby made by pg_basebackup -R, verified as sync_state = 'sync'
#                 in pg_stat_replication before (and after) the measurement
#   local         (reference, no replication) a plain directory on the local disk
# Every case gets a fresh volume (or directory), initdb --data-checksums, the same settings
# (bench/mirror.sh writes them to postgresql.bench.conf in the output), pgbench -i, CHECKPOINT,
# sync and a dropped page cache, then the measured pgbench run.
#
# Results go to bench/out/<timestamp>-mirror/: runs.jsonl (one line per run), raw/ (fio JSON,
# pgbench output, daemon logs, status JSON), meta.json, loadavg.log (sampled every 5 s), and
# from bench/mirror_report.py results.json, results.md and chart.png.
#
# Settings (environment):
#   BENCH_RUNTIME=15        seconds measured per fio run (plus 2 s ramp)
#   BENCH_REPS=3            fio repetitions; the report takes medians
#   BENCH_SIZE=2G           size of each fio backing file (S, A, B; fully written)
#   BENCH_JOBS="..."        fio jobs (default: w4k_qd1_flush w4k_qd32 seqw1m_qd8; "" skips part 1)
#   BENCH_TARGETS="..."     subset of: standalone mirror-flush mirror-sync
#   PGBENCH_SCALE=20 PGBENCH_CLIENTS=8 PGBENCH_THREADS=2 PGBENCH_SECONDS=60 PGBENCH_REPS=1
#   PGBENCH_CASES="..."     subset of: standalone mirror-flush mirror-sync streaming local ("" skips part 2)
#   PG_VOLUME_SIZE=4G       size of the volumes under ext4 for PostgreSQL
#   PG_VOLUME_ALLOC=sparse  sparse (truncate) or fallocate: how those volume files are created
#   BENCH_DAEMON_NICE=      --nice for every nbdmirror daemon (e.g. -10); default: not given
#   BENCH_PRIMARY_CPUS=     --cpu-affinity for the primary (and the standalone export), e.g. the
#   BENCH_STANDBY_CPUS=     CPU taking the disk's interrupts (README, "CPU placement"); for the
#                           standby; default: not given
#   PG_STANDBY_DIR=         where the pgbench cases keep the standby's copy (the mirrored cases'
#                           standby volume, the streaming case's standby data directory); default
#                           beside the primary's. Other storage (e.g. /dev/shm) stands in for a
#                           standby host's own disk: one disk then serves the primary alone.
#   BENCH_STANDBY_DIR=      where the fio part keeps the standby's copy (B); default beside A. As
#                           PG_STANDBY_DIR for pgbench: other storage stands in for the standby
#                           host's disk, so the measured disk serves the primary alone.
#   BENCH_INITIAL_SYNC=full full: every mirrored run waits for the initial full sync; skip: use
#                           --skip-initial-sync (copies are identical), see above
#   BENCH_MEM_LIMIT_MIB=64  the memory goal: each daemon's VmHWM must stay below this
#   BENCH_VERIFY=1          compare primary and standby copies after the mirrored runs
#   BENCH_TMPDIR=/var/tmp   where everything goes; must be on the disk you mean to measure
#   BENCH_OUT=bench/out     parent of the output directory
#   NBDMIRROR_BIN=build/nbdmirror  binary under test (copied before the run starts)
#   BENCH_PYTHON            a Python with matplotlib (default: first of python3, /usr/bin/python3)
#
# Needs root. Only loopback TCP (the peer link, on ports picked free at start) and unix sockets
# are used. Stops everything it started (by PID), unmounts, detaches loop devices and FUSE
# mounts and removes its scratch directory, on exit or Ctrl-C.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
runtime_s=${BENCH_RUNTIME:-15}
reps=${BENCH_REPS:-3}
size=${BENCH_SIZE:-2G}
read -r -a job_names <<<"${BENCH_JOBS-w4k_qd1_flush w4k_qd32 seqw1m_qd8}"
read -r -a target_names <<<"${BENCH_TARGETS:-standalone mirror-flush mirror-sync}"
pg_scale=${PGBENCH_SCALE:-20}
pg_clients=${PGBENCH_CLIENTS:-8}
pg_threads=${PGBENCH_THREADS:-2}
pg_seconds=${PGBENCH_SECONDS:-60}
pg_reps=${PGBENCH_REPS:-1}
read -r -a pg_cases <<<"${PGBENCH_CASES-standalone mirror-sync streaming local}"
pg_volume_size=${PG_VOLUME_SIZE:-4G}
mem_limit_mib=${BENCH_MEM_LIMIT_MIB:-64}
verify=${BENCH_VERIFY:-1}
initial_sync=${BENCH_INITIAL_SYNC:-full}
nbdmirror_src=${NBDMIRROR_BIN:-$root/build/nbdmirror}
tmp_parent=${BENCH_TMPDIR:-/var/tmp}
out_parent=${BENCH_OUT:-$here/out}
pgbin=/usr/lib/postgresql/15/bin
standby_app_name=bench_standby

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---- what we started, so cleanup undoes exactly that ---------------------------------------
declare -A live=()        # pid -> what it is (daemons, fio, pgbench, the load sampler)
declare -A pg_running=()  # data directory -> 1 while a PostgreSQL we started may run there
declare -a mounts=()      # mount points, in the order they were mounted
declare -a attachments=() # nbd-attach.sh state directories
tmp=""

# Waits up to $2 tenths of a second for pid $1 to go away.
wait_gone() {
  local pid=$1 tenths=$2 i
  for ((i = 0; i < tenths; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  ! kill -0 "$pid" 2>/dev/null
}

# Stops the PostgreSQL in data directory $1 (fast shutdown), or kills its postmaster by the PID
# in postmaster.pid if pg_ctl cannot.
pg_stop() {
  local data=$1 pm_pid
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$data" -m fast -t 60 -w stop >/dev/null 2>&1 || true
  if [[ -f $data/postmaster.pid ]]; then
    pm_pid=$(head -1 "$data/postmaster.pid" 2>/dev/null || true)
    if [[ $pm_pid =~ ^[0-9]+$ ]] && kill -0 "$pm_pid" 2>/dev/null; then
      log "PostgreSQL in $data did not stop; killing postmaster $pm_pid"
      kill -KILL "$pm_pid" 2>/dev/null || true
    fi
  fi
  unset "pg_running[$data]"
}

# Undoes one nbd-attach.sh attachment; also ends its nbdfuse (by the PID it recorded).
detach() {
  local state=$1 pid
  "$root/scripts/nbd-attach.sh" detach "$state" >/dev/null 2>&1 || true
  if [[ -f $state/nbdfuse.pid ]]; then
    pid=$(cat "$state/nbdfuse.pid")
    if [[ $pid =~ ^[0-9]+$ ]] && ! wait_gone "$pid" 50; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f -- "$state/nbdfuse.pid"
  fi
}

# Removes $1 from the mounts array.
forget_mount() {
  local -a kept=()
  local m
  for m in "${mounts[@]}"; do
    [[ $m == "$1" ]] || kept+=("$m")
  done
  mounts=("${kept[@]}")
}

forget_attachment() {
  local -a kept=()
  local a
  for a in "${attachments[@]}"; do
    [[ $a == "$1" ]] || kept+=("$a")
  done
  attachments=("${kept[@]}")
}

cleanup() {
  local rc=$? pid data i
  trap - EXIT INT TERM
  set +e
  # Clients first (fio, pgbench), then PostgreSQL, the file systems and attachments, and the
  # daemons last: nbdfuse asserts if its server vanishes under it, and a primary drains to its
  # standby on SIGTERM, so primaries go before standbys.
  for pid in "${!live[@]}"; do
    case ${live[$pid]} in
      fio* | pgbench*) kill -TERM "$pid" 2>/dev/null ;;
    esac
  done
  for data in "${!pg_running[@]}"; do
    log "stopping PostgreSQL in $data"
    pg_stop "$data"
  done
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    log "unmounting ${mounts[i]}"
    umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" 2>/dev/null
  done
  for ((i = ${#attachments[@]} - 1; i >= 0; i--)); do
    log "detaching ${attachments[i]}"
    detach "${attachments[i]}"
  done
  local name
  for name in fio pgbench status-sampler primary standby loadavg-sampler; do
    for pid in "${!live[@]}"; do
      [[ ${live[$pid]} == "$name" ]] || continue
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null
      if ! wait_gone "$pid" 150; then
        log "$name (pid $pid) ignored SIGTERM for 15 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null
      fi
      unset "live[$pid]"
    done
  done
  cd /
  if [[ -n ${standby_tmp:-} && $standby_tmp != "$tmp" && -d $standby_tmp ]]; then
    rm -rf -- "$standby_tmp"
  fi
  if [[ -n ${fio_standby_dir:-} && $fio_standby_dir != "${fio_dir:-}" && -d $fio_standby_dir ]]; then
    rm -rf -- "$fio_standby_dir"
  fi
  if [[ -n $tmp && -d $tmp ]]; then
    # Never delete through a mount that would not go away.
    if findmnt -rn -o TARGET | grep -q "^$tmp/"; then
      log "something is still mounted under $tmp; leaving it in place"
    else
      rm -rf -- "$tmp"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---- checks -----------------------------------------------------------------------------
[[ $(id -u) == 0 ]] || die "run as root: page cache drops, mounts, loop devices, runuser"
for tool in fio nbdinfo jq numfmt setpriv findmnt runuser mkfs.ext4 losetup; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
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
for n in "$runtime_s" "$reps" "$pg_scale" "$pg_clients" "$pg_threads" "$pg_seconds" "$pg_reps" \
  "$mem_limit_mib"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "numeric settings must be positive integers (got '$n')"
done
size_bytes=$(numfmt --from=iec "$size") || die "BENCH_SIZE=$size is not a size"
((size_bytes >= 64 << 20 && size_bytes % (1 << 20) == 0)) ||
  die "BENCH_SIZE must be a multiple of 1 MiB and at least 64 MiB"
pg_volume_bytes=$(numfmt --from=iec "$pg_volume_size") || die "PG_VOLUME_SIZE is not a size"
((pg_volume_bytes >= 1 << 30 && pg_volume_bytes % (1 << 20) == 0)) ||
  die "PG_VOLUME_SIZE must be a multiple of 1 MiB and at least 1 GiB"
pg_volume_alloc=${PG_VOLUME_ALLOC:-sparse}
[[ $pg_volume_alloc == sparse || $pg_volume_alloc == fallocate ]] ||
  die "PG_VOLUME_ALLOC must be sparse or fallocate"
# new_pg_volume FILE: a new volume of zeroes. Sparse: every first write into a block allocates
# it, and io_uring hands such O_DIRECT writes to its worker threads, one at a time per file.
new_pg_volume() {
  truncate -s "$pg_volume_bytes" "$1"
  if [[ $pg_volume_alloc == fallocate ]]; then
    fallocate -l "$pg_volume_bytes" "$1"
  fi
}
fio --enghelp=nbd >/dev/null 2>&1 || die "fio lacks the nbd engine"
[[ $initial_sync == full || $initial_sync == skip ]] ||
  die "BENCH_INITIAL_SYNC must be full or skip"
[[ -x $nbdmirror_src ]] || die "no nbdmirror binary at $nbdmirror_src (set NBDMIRROR_BIN)"
for target in "${target_names[@]}"; do
  case $target in
    standalone | mirror-flush | mirror-sync) ;;
    *) die "unknown target $target (standalone, mirror-flush, mirror-sync)" ;;
  esac
done
for job in "${job_names[@]}"; do
  [[ -f $here/fio/$job.fio ]] || die "no job file $here/fio/$job.fio"
done
for pg_case in "${pg_cases[@]}"; do
  case $pg_case in
    standalone | mirror-flush | mirror-sync | streaming | local) ;;
    *) die "unknown pgbench case $pg_case (standalone, mirror-flush, mirror-sync, streaming, local)" ;;
  esac
done
if ((${#pg_cases[@]})); then
  for tool in initdb pg_ctl postgres psql pgbench pg_basebackup; do
    [[ -x $pgbin/$tool ]] || die "PostgreSQL 15 is not installed ($pgbin/$tool missing)"
  done
  id postgres >/dev/null 2>&1 || die "there is no postgres user"
  [[ -c /dev/fuse ]] || [[ -b /dev/nbd0 ]] || die "neither /dev/fuse nor /dev/nbd0 is available"
fi
mkdir -p "$tmp_parent"
[[ $(stat -f -c %T "$tmp_parent") != tmpfs ]] || die "BENCH_TMPDIR=$tmp_parent is tmpfs"
avail_bytes=$(df --output=avail -B1 "$tmp_parent" | tail -1)
((avail_bytes > 3 * size_bytes + 3 * pg_volume_bytes)) || die "not enough space in $tmp_parent"

# ---- output and scratch directories -------------------------------------------------------
stamp=$(date +%Y%m%d-%H%M%S)
out=$out_parent/$stamp-mirror
mkdir -p "$out/raw"
tmp=$(mktemp -d "$tmp_parent/nbdmirror-mirror.XXXXXX")
# PostgreSQL runs as postgres and must reach its directories, sockets and logs in here.
chmod 755 "$tmp"
standby_tmp=$tmp
if [[ -n ${PG_STANDBY_DIR:-} ]]; then
  standby_tmp=$(mktemp -d "$PG_STANDBY_DIR/nbdmirror-mirror-standby.XXXXXX")
  chmod 755 "$standby_tmp"
fi
cd "$tmp"
nbdmirror_bin=$tmp/nbdmirror
cp -- "$nbdmirror_src" "$nbdmirror_bin"
secret=$tmp/secret
head -c 32 /dev/urandom | base64 >"$secret"
chmod 600 "$secret"

# ---- machine load during the run --------------------------------------------------------
# Other work may share this machine: sample the load average every 5 s for the whole run.
(
  sleeper=""
  trap '[[ -n $sleeper ]] && kill "$sleeper" 2>/dev/null; exit 0' TERM
  while :; do
    printf '%s %s\n' "$(date +%s)" "$(cat /proc/loadavg)"
    sleep 5 &
    sleeper=$!
    wait "$sleeper"
  done
) >"$out/loadavg.log" 2>/dev/null &
live[$!]=loadavg-sampler
ps -eo pid,user,pcpu,etime,comm --sort=-pcpu | head -15 >"$out/ps-start.txt"

# ---- metadata -----------------------------------------------------------------------------
dev=$(df --output=source "$tmp_parent" | tail -1)
devname=$(basename "$dev")
parent=$(lsblk -no PKNAME "$dev" 2>/dev/null | head -1 || true)
queue=/sys/class/block/${parent:-$devname}/queue
read_sys() { cat "$1" 2>/dev/null || echo unknown; }
disk_stat=/sys/class/block/${parent:-$devname}/stat
[[ -r $disk_stat ]] || die "cannot read $disk_stat"
command_line=""
for var in NBDMIRROR_BIN BENCH_RUNTIME BENCH_REPS BENCH_SIZE BENCH_JOBS BENCH_TARGETS \
  PGBENCH_SCALE PGBENCH_CLIENTS PGBENCH_THREADS PGBENCH_SECONDS PGBENCH_REPS PGBENCH_CASES \
  PG_VOLUME_SIZE PG_VOLUME_ALLOC BENCH_INITIAL_SYNC BENCH_MEM_LIMIT_MIB BENCH_VERIFY BENCH_TMPDIR \
  BENCH_OUT BENCH_PYTHON BENCH_DAEMON_NICE BENCH_PRIMARY_CPUS BENCH_STANDBY_CPUS PG_STANDBY_DIR \
  BENCH_STANDBY_DIR; do
  if [[ -n ${!var+set} ]]; then
    command_line+="$var=$(printf '%q' "${!var}") "
  fi
done
command_line+=$(printf '%q' "$0")

# The PostgreSQL settings every case gets, appended to postgresql.conf after initdb. The
# streaming primary adds only synchronous_standby_names; the port and socket directory are
# given on the command line.
pg_conf=$out/postgresql.bench.conf
cat >"$pg_conf" <<EOF
# bench/mirror.sh: the same settings for every pgbench case
listen_addresses = ''
max_connections = 50
shared_buffers = 256MB
max_wal_size = 2GB
min_wal_size = 80MB
checkpoint_timeout = 5min
checkpoint_completion_target = 0.9
synchronous_commit = on
fsync = on
full_page_writes = on
wal_sync_method = fdatasync
wal_level = replica
max_wal_senders = 4
log_checkpoints = on
EOF

jq -n \
  --arg date "$(date -Iseconds)" \
  --arg command "$command_line" \
  --arg runtime_s "$runtime_s" --arg reps "$reps" --arg size "$size" \
  --arg size_bytes "$size_bytes" \
  --arg jobs "${job_names[*]}" --arg targets "${target_names[*]}" \
  --arg pg_scale "$pg_scale" --arg pg_clients "$pg_clients" --arg pg_threads "$pg_threads" \
  --arg pg_seconds "$pg_seconds" --arg pg_reps "$pg_reps" --arg pg_cases "${pg_cases[*]}" \
  --arg pg_volume_size "$pg_volume_size" --arg pg_volume_alloc "$pg_volume_alloc" \
  --arg pg_conf "$(cat "$pg_conf")" \
  --arg mem_limit_mib "$mem_limit_mib" --arg initial_sync "$initial_sync" \
  --arg git_commit "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  --arg git_dirty "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null |
    wc -l)" \
  --arg nbdmirror_bin "$(realpath "$nbdmirror_src")" \
  --arg nbdmirror_sha256 "$(sha256sum "$nbdmirror_bin" | cut -d' ' -f1)" \
  --arg nbdmirror_mtime "$(date -r "$nbdmirror_src" -Iseconds)" \
  --arg fio_version "$(fio --version)" \
  --arg pg_version "$("$pgbin/postgres" --version)" \
  --arg kernel "$(uname -r)" \
  --arg nproc "$(nproc)" \
  --arg cpu "$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
  --arg mem "$(grep MemTotal /proc/meminfo | tr -s ' ')" \
  --arg tmpdir "$tmp_parent" \
  --arg pg_standby_dir "${PG_STANDBY_DIR:-}" \
  --arg fio_standby_dir "${BENCH_STANDBY_DIR:-}" \
  --arg daemon_nice "${BENCH_DAEMON_NICE:-}" \
  --arg primary_cpus "${BENCH_PRIMARY_CPUS:-}" \
  --arg standby_cpus "${BENCH_STANDBY_CPUS:-}" \
  --arg fs "$(findmnt -no FSTYPE -T "$tmp_parent" 2>/dev/null || stat -f -c %T "$tmp_parent")" \
  --arg device "$dev" \
  --arg lsblk "$(lsblk -o NAME,SIZE,ROTA,TYPE,MOUNTPOINTS 2>/dev/null || lsblk)" \
  --arg scheduler "$(read_sys "$queue/scheduler" | sed 's/ *$//')" \
  --arg write_cache "$(read_sys "$queue/write_cache")" \
  --arg rotational "$(read_sys "$queue/rotational")" \
  --arg loadavg_start "$(cat /proc/loadavg)" \
  '$ARGS.named' >"$out/meta.json"

# ---- helpers ------------------------------------------------------------------------------
drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}
vm_hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo null; }
cpu_s() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat" \
    2>/dev/null || echo null
}
loadavg1() { cut -d' ' -f1 /proc/loadavg; }
# Busy and total jiffies of all CPUs, for the machine's CPU use over a run (everyone's).
cpu_jiffies() {
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat
}
busy_pct() { # busy_pct "BEFORE" "AFTER"
  local -a a b
  read -r -a a <<<"$1"
  read -r -a b <<<"$2"
  awk -v bb="$((b[0] - a[0]))" -v tt="$((b[1] - a[1]))" \
    'BEGIN { if (tt > 0) printf "%.1f", 100 * bb / tt; else print "null" }'
}
free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}
now_s() { date +%s.%N; }
elapsed_s() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.3f", b - a }'; }

# same_content FILE1 FILE2: true if both hold the same bytes. Reads only the ranges where at
# least one of them has data (SEEK_DATA/SEEK_HOLE), so sparse volumes compare quickly.
same_content() {
  "$python" - "$1" "$2" <<'EOF'
import os, sys

def data_ranges(fd, size):
    ranges, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        ranges.append((start, end))
        pos = end
    return ranges

fds = [os.open(path, os.O_RDONLY) for path in sys.argv[1:3]]
sizes = [os.fstat(fd).st_size for fd in fds]
if sizes[0] != sizes[1]:
    sys.exit(1)
ranges = sorted(data_ranges(fds[0], sizes[0]) + data_ranges(fds[1], sizes[1]))
merged = []
for start, end in ranges:
    if merged and start <= merged[-1][1]:
        merged[-1][1] = max(merged[-1][1], end)
    else:
        merged.append([start, end])
chunk = 8 << 20
for start, end in merged:
    pos = start
    while pos < end:
        n = min(chunk, end - pos)
        if os.pread(fds[0], n, pos) != os.pread(fds[1], n, pos):
            sys.exit(1)
        pos += n
EOF
}

# ---- nbdmirror daemons --------------------------------------------------------------------
# start_daemon NAME LOG CMD...: starts a daemon, sets daemon_pid. It gets SIGTERM if we die.
start_daemon() {
  local name=$1 daemon_log=$2
  shift 2
  setpriv --pdeathsig TERM -- "$@" >"$daemon_log" 2>&1 &
  daemon_pid=$!
  live[$daemon_pid]=$name
}

# stop_daemon PID: SIGTERM (a primary drains and syncs both hosts), sets daemon_rc.
stop_daemon() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" 600; then
    log "${live[$pid]} did not exit within 60 s of SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  daemon_rc=0
  wait "$pid" || daemon_rc=$?
  unset "live[$pid]"
}

# wait_nbd SOCKET EXPECTED_BYTES PID: until the export answers with the expected size.
wait_nbd() {
  local sock=$1 expected=$2 pid=$3 i got
  for ((i = 0; i < 400; i++)); do
    kill -0 "$pid" 2>/dev/null || die "the primary (pid $pid) exited during start-up"
    if [[ -S $sock ]] && got=$(nbdinfo --size "nbd+unix:///?socket=$sock" 2>/dev/null); then
      [[ $got == "$expected" ]] || die "export is $got bytes, expected $expected"
      return 0
    fi
    sleep 0.05
  done
  die "no NBD answer on $sock within 20 s"
}

# wait_in_sync VOLUME TIMEOUT_S: until the primary's status shows the peer connected, UpToDate
# and nothing out of sync. peer_disk alone is not enough: a restarted primary reports the
# peer's last recorded state before it has reconnected.
wait_in_sync() {
  local volume=$1 timeout_s=$2 deadline=$((SECONDS + $2)) state
  while :; do
    state=$("$nbdmirror_bin" status --volume "$volume" --json 2>/dev/null |
      jq -r '"\(.connection) \(.peer_disk) \(.out_of_sync_bytes)"' 2>/dev/null || true)
    [[ $state == "connected UpToDate 0" ]] && return 0
    ((SECONDS < deadline)) || die "peer not in sync after ${timeout_s} s (status: $state)"
    sleep 0.1
  done
}

# start_volume TARGET VOLUME STANDBY_VOLUME SOCKET LOGPREFIX SKIP(0|1): starts the standby (for
# mirror-*) and the primary, waits for the export and the sync. Sets primary_pid, standby_pid
# and sync_wait_s.
start_volume() {
  local target=$1 volume=$2 standby_volume=$3 sock=$4 prefix=$5 skip=$6
  local -a primary_cmd nice_args=() primary_cpu_args=() standby_cpu_args=()
  [[ -n ${BENCH_DAEMON_NICE:-} ]] && nice_args=(--nice "$BENCH_DAEMON_NICE")
  [[ -n ${BENCH_PRIMARY_CPUS:-} ]] && primary_cpu_args=(--cpu-affinity "$BENCH_PRIMARY_CPUS")
  [[ -n ${BENCH_STANDBY_CPUS:-} ]] && standby_cpu_args=(--cpu-affinity "$BENCH_STANDBY_CPUS")
  primary_pid="" standby_pid="" sync_wait_s=null
  rm -f -- "$sock"
  case $target in
    standalone)
      primary_cmd=("$nbdmirror_bin" run --volume "$volume" --node a --primary --nbd "unix:$sock"
        "${nice_args[@]}" "${primary_cpu_args[@]}")
      ;;
    mirror-flush | mirror-sync)
      local port_a port_b
      port_a=$(free_port)
      port_b=$(free_port)
      # New metadata on both sides: a first pairing, with or without the full initial sync.
      rm -f -- "$volume.nbdmirror-meta" "$standby_volume.nbdmirror-meta"
      start_daemon standby "$prefix.standby.log" "$nbdmirror_bin" run --volume "$standby_volume" \
        --node b --listen "127.0.0.1:$port_b" --peer "a=127.0.0.1:$port_a" --secret-file "$secret" \
        "${nice_args[@]}" "${standby_cpu_args[@]}"
      standby_pid=$daemon_pid
      primary_cmd=("$nbdmirror_bin" run --volume "$volume" --node a --primary
        --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:$port_b" --secret-file "$secret"
        --nbd "unix:$sock" --mode "${target#mirror-}" "${nice_args[@]}" "${primary_cpu_args[@]}")
      ((skip)) && primary_cmd+=(--skip-initial-sync)
      ;;
  esac
  start_daemon primary "$prefix.primary.log" "${primary_cmd[@]}"
  primary_pid=$daemon_pid
  last_primary_cmd="${primary_cmd[*]}"
  local started
  started=$(now_s)
  wait_nbd "$sock" "$(stat -c %s "$volume")" "$primary_pid"
  if [[ -n $standby_pid ]]; then
    wait_in_sync "$volume" 1800
    sync_wait_s=$(elapsed_s "$started")
  fi
}

# stop_volume PREFIX: primary first (it drains to the standby), then the standby. Sets
# primary_rc, standby_rc and pair_ended_in_sync (true if the primary logged "in sync").
stop_volume() {
  local prefix=$1
  primary_rc=null standby_rc=null pair_ended_in_sync=false
  stop_daemon "$primary_pid"
  primary_rc=$daemon_rc
  if [[ -n $standby_pid ]]; then
    stop_daemon "$standby_pid"
    standby_rc=$daemon_rc
    if ((primary_rc == 0 && standby_rc == 0)) &&
      grep -q 'at shutdown: in sync' "$prefix.primary.log"; then
      pair_ended_in_sync=true
    fi
  fi
}

# mark_daemons: called just before the measured client starts. Keeps each daemon's peak
# resident set so far (start-up, initial sync, mkfs and pgbench -i: primary_hwm_setup_kib, ...)
# and its CPU time so far, then resets the peak (clear_refs 5), so that daemon_figures reports
# the peak and the CPU of the measurement alone.
mark_daemons() {
  local side pid
  primary_hwm_setup_kib=null standby_hwm_setup_kib=null
  # shellcheck disable=SC2034 # read indirectly by daemon_figures
  primary_cpu_mark=0 standby_cpu_mark=0
  for side in primary standby; do
    pid=${side}_pid
    pid=${!pid}
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || continue
    printf -v "${side}_hwm_setup_kib" '%s' "$(vm_hwm_kib "$pid")"
    printf -v "${side}_cpu_mark" '%s' "$(cpu_s "$pid")"
    echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
  done
}

# daemon_figures: VmHWM since mark_daemons and CPU seconds used since then, of each daemon.
daemon_figures() {
  local side pid mark
  primary_hwm_kib=null primary_cpu_s=null standby_hwm_kib=null standby_cpu_s=null
  for side in primary standby; do
    pid=${side}_pid
    pid=${!pid}
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || continue
    mark=${side}_cpu_mark
    printf -v "${side}_hwm_kib" '%s' "$(vm_hwm_kib "$pid")"
    printf -v "${side}_cpu_s" '%s' "$(awk -v a="$(cpu_s "$pid")" -v b="${!mark:-0}" \
      'BEGIN { printf "%.2f", a - b }')"
  done
}

# save_status VOLUME FILE: the daemon's status JSON, or {} if it cannot be read.
save_status() {
  "$nbdmirror_bin" status --volume "$1" --json >"$2" 2>/dev/null || echo '{}' >"$2"
}

# start_status_sampler PRIMARY_VOLUME STANDBY_VOLUME FILE: once a second, one line with the
# in-flight counters of both daemons, to see where writes wait (queued in the primary, on the
# link, or applied by the standby). Sets sampler_pid. One status query a second costs the
# daemons' loops next to nothing.
start_status_sampler() {
  local primary_volume=$1 standby_volume=$2 file=$3
  (
    sleeper=""
    trap '[[ -n $sleeper ]] && kill "$sleeper" 2>/dev/null; exit 0' TERM
    while :; do
      p=$("$nbdmirror_bin" status --volume "$primary_volume" --json 2>/dev/null || echo '{}')
      s=$("$nbdmirror_bin" status --volume "$standby_volume" --json 2>/dev/null || echo '{}')
      jq -cn --argjson p "$p" --argjson s "$s" --arg t "$(date +%s.%N)" \
        '{t: ($t | tonumber), writes_in_flight: $p.writes_in_flight,
          bytes_in_flight: $p.bytes_in_flight, peer_ops_in_flight: $p.peer_ops_in_flight,
          writes: $p.writes, datasyncs: $p.datasyncs, standby_ops_in_flight: $s.ops_in_flight,
          standby_applied_writes: $s.applied_writes}' 2>/dev/null || true
      sleep 1 &
      sleeper=$!
      wait "$sleeper"
    done
  ) >"$file" 2>/dev/null &
  sampler_pid=$!
  live[$sampler_pid]=status-sampler
}

stop_status_sampler() {
  [[ -n ${sampler_pid:-} ]] || return 0
  kill -TERM "$sampler_pid" 2>/dev/null || true
  wait "$sampler_pid" 2>/dev/null || true
  unset "live[$sampler_pid]"
  sampler_pid=""
}

# ---- part 1: fio ------------------------------------------------------------------------
fio_dir=$tmp/fio
mkdir -p "$fio_dir"
fio_standby_dir=$fio_dir
if [[ -n ${BENCH_STANDBY_DIR:-} ]]; then
  fio_standby_dir=$(mktemp -d "$BENCH_STANDBY_DIR/nbdmirror-mirror-fio-standby.XXXXXX")
fi
fio_b=$fio_standby_dir/B.img
fio_sock=$fio_dir/nbd.sock
pair_in_sync=true # A and B are created identical

# run_fio JOB TARGET REP: one measurement; appends a line to runs.jsonl.
run_fio() {
  local job=$1 target=$2 rep=$3
  local tag=fio.$job.$target.$rep
  local prefix=$out/raw/$tag fio_json=$out/raw/$tag.json
  local volume=$fio_dir/A.img standby_volume=$fio_b skip=0
  if [[ $target == standalone ]]; then
    volume=$fio_dir/S.img
    standby_volume=""
  elif [[ $initial_sync == skip ]] && $pair_in_sync; then
    skip=1
  fi

  drop_caches
  local load_before cpu_before disk_before started
  load_before=$(loadavg1)
  start_volume "$target" "$volume" "$standby_volume" "$fio_sock" "$prefix" "$skip"

  local fio_rc=0 fio_pid samples=""
  mark_daemons
  if [[ -n $standby_pid ]]; then
    samples=raw/$tag.status-samples.jsonl
    start_status_sampler "$volume" "$standby_volume" "$out/$samples"
  fi
  disk_before=$(cat "$disk_stat")
  cpu_before=$(cpu_jiffies)
  started=$(now_s)
  BENCH_RUNTIME=$runtime_s BENCH_FSYNC=1 BENCH_FDATASYNC=0 \
    setpriv --pdeathsig TERM -- fio --ioengine=nbd "--uri=nbd+unix:///?socket=$fio_sock" \
    --output-format=json "--output=$fio_json" "$here/fio/$job.fio" 2>"$prefix.fio.err" &
  fio_pid=$!
  live[$fio_pid]=fio
  wait "$fio_pid" || fio_rc=$?
  unset "live[$fio_pid]"
  local wall_s busy load_after
  wall_s=$(elapsed_s "$started")
  busy=$(busy_pct "$cpu_before" "$(cpu_jiffies)")
  load_after=$(loadavg1)
  local -a disk_before_f disk_after_f
  read -r -a disk_after_f <"$disk_stat"
  read -r -a disk_before_f <<<"$disk_before"
  stop_status_sampler

  daemon_figures
  save_status "$volume" "$prefix.status.json"
  if [[ -n $standby_pid ]]; then
    save_status "$standby_volume" "$prefix.standby-status.json"
  fi
  stop_volume "$prefix"
  if [[ -n $standby_pid ]]; then
    pair_in_sync=$pair_ended_in_sync
  fi

  jq -cn --arg kind fio --arg job "$job" --arg target "$target" --argjson rep "$rep" \
    --arg fio_json "raw/$tag.json" --argjson fio_rc "$fio_rc" \
    --arg status_json "raw/$tag.status.json" --arg status_samples "$samples" \
    --arg standby_status_json "$([[ -n $standby_pid ]] && echo "raw/$tag.standby-status.json")" \
    --argjson primary_rc "$primary_rc" --argjson standby_rc "$standby_rc" \
    --argjson primary_hwm_kib "$primary_hwm_kib" --argjson standby_hwm_kib "$standby_hwm_kib" \
    --argjson primary_hwm_setup_kib "$primary_hwm_setup_kib" \
    --argjson standby_hwm_setup_kib "$standby_hwm_setup_kib" \
    --argjson primary_cpu_s "$primary_cpu_s" --argjson standby_cpu_s "$standby_cpu_s" \
    --argjson skip_initial_sync "$skip" --argjson sync_wait_s "$sync_wait_s" \
    --argjson ended_in_sync "$pair_ended_in_sync" \
    --argjson loadavg_before "$load_before" --argjson loadavg_after "$load_after" \
    --argjson cpu_busy_pct "$busy" --argjson wall_s "$wall_s" \
    --argjson disk_read_bytes "$(((disk_after_f[2] - disk_before_f[2]) * 512))" \
    --argjson disk_write_bytes "$(((disk_after_f[6] - disk_before_f[6]) * 512))" \
    --arg command "$last_primary_cmd & fio --ioengine=nbd fio/$job.fio" \
    '$ARGS.named' >>"$out/runs.jsonl"

  local summary="fio failed (rc $fio_rc, see raw/$tag.fio.err)"
  if ((fio_rc == 0)); then
    summary=$(jq -r '.jobs[0].write |
      "\(.iops | floor) IOPS, lat mean \(.lat_ns.mean / 1000 | floor) µs"' \
      "$fio_json" 2>/dev/null || echo "unreadable fio output")
  fi
  [[ $primary_hwm_kib != null ]] && summary+=", primary VmHWM $((primary_hwm_kib / 1024)) MiB"
  [[ $standby_hwm_kib != null ]] && summary+=", standby VmHWM $((standby_hwm_kib / 1024)) MiB"
  [[ $primary_rc != 0 ]] && summary+=", primary exit status $primary_rc"
  [[ $standby_rc != null && $standby_rc != 0 ]] && summary+=", standby exit status $standby_rc"
  log "  $target: $summary (load $load_before)"
}

# ---- part 2: pgbench --------------------------------------------------------------------
pg_as() { runuser -u postgres -- "$@"; }
# psql_at SOCKDIR PORT SQL: one value.
psql_at() {
  pg_as "$pgbin/psql" -X -q -t -A -h "$1" -p "$2" -d postgres -c "$3"
}
# pg_init DATA: initdb plus the common settings.
pg_init() {
  local data=$1
  mkdir -p "$data"
  chown postgres:postgres "$data"
  chmod 700 "$data"
  pg_as "$pgbin/initdb" -D "$data" --data-checksums -A trust -U postgres >/dev/null
  cat "$pg_conf" >>"$data/postgresql.conf"
}
# pg_start DATA SOCKDIR PORT LOG
pg_start() {
  local data=$1 sockdir=$2 port=$3 pglog=$4
  mkdir -p "$sockdir"
  chown postgres:postgres "$sockdir"
  touch "$pglog"
  chown postgres:postgres "$pglog"
  pg_running[$data]=1
  pg_as "$pgbin/pg_ctl" -D "$data" -l "$pglog" -w -t 300 -o "-p $port -k $sockdir" start \
    >/dev/null || die "PostgreSQL did not start in $data; see $pglog"
}
# wait_sync_standby SOCKDIR PORT TIMEOUT_S: until pg_stat_replication shows our standby as sync.
wait_sync_standby() {
  local deadline=$((SECONDS + $3)) state
  while :; do
    state=$(psql_at "$1" "$2" "SELECT sync_state FROM pg_stat_replication
      WHERE application_name = '$standby_app_name' AND state = 'streaming'" 2>/dev/null || true)
    [[ $state == sync ]] && return 0
    ((SECONDS < deadline)) || die "standby not in sync_state 'sync' after $3 s (got '$state')"
    sleep 0.2
  done
}

# run_pg CASE REP: one pgbench measurement; appends a line to runs.jsonl.
run_pg() {
  local pg_case=$1 rep=$2
  local tag=pgbench.$pg_case.$rep prefix=$out/raw/pgbench.$pg_case.$rep
  local dir=$tmp/pg/$pg_case.$rep sdir=$standby_tmp/pg/$pg_case.$rep.standby
  local sockdir=$dir/sock port data mnt="" state=""
  local volume="" standby_volume="" nbd_sock=""
  mkdir -p "$dir" "$sdir"
  chmod 755 "$dir" "$sdir"
  port=$(free_port)
  primary_pid="" standby_pid="" sync_wait_s=null last_primary_cmd=""
  local setup_started
  setup_started=$(now_s)

  case $pg_case in
    standalone | mirror-flush | mirror-sync)
      volume=$dir/A.img standby_volume=$sdir/B.img nbd_sock=$dir/nbd.sock
      # Two new sparse files of zeroes are identical, so the pair may skip the initial sync; the
      # full one sends holes as zero ranges and is quick.
      new_pg_volume "$volume"
      if [[ $pg_case == standalone ]]; then
        standby_volume=""
      else
        new_pg_volume "$standby_volume"
      fi
      start_volume "$pg_case" "$volume" "$standby_volume" "$nbd_sock" "$prefix" \
        "$([[ $initial_sync == skip ]] && echo 1 || echo 0)"
      state=$dir/attach
      attachments+=("$state")
      local blockdev
      blockdev=$("$root/scripts/nbd-attach.sh" attach "$nbd_sock" "$state") ||
        die "could not attach $nbd_sock"
      echo "$(cut -d' ' -f1 "$state/attached") $blockdev" >"$prefix.attach.txt"
      # Initialise inode tables and journal now, so ext4's lazy init does not write during the
      # measurement; nodiscard because a discard of the whole volume is not what we measure.
      mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$blockdev"
      mnt=$dir/mnt
      mkdir -p "$mnt"
      mount "$blockdev" "$mnt"
      mounts+=("$mnt")
      data=$mnt/pgdata
      ;;
    streaming | local)
      data=$dir/primary
      ;;
  esac

  pg_init "$data"
  local standby_data="" standby_port="" standby_sockdir=$dir/standby-sock
  if [[ $pg_case == streaming ]]; then
    echo "synchronous_standby_names = '$standby_app_name'" >>"$data/postgresql.conf"
  fi
  pg_start "$data" "$sockdir" "$port" "$dir/postgres.log"
  if [[ $pg_case == streaming ]]; then
    standby_data=$sdir/standby
    standby_port=$(free_port)
    # pg_basebackup -R writes primary_conninfo (with our application_name) and standby.signal.
    install -d -o postgres -g postgres -m 700 "$standby_data"
    pg_as "$pgbin/pg_basebackup" -D "$standby_data" -R -X stream -c fast \
      -d "host=$sockdir port=$port user=postgres application_name=$standby_app_name" ||
      die "pg_basebackup failed"
    pg_start "$standby_data" "$standby_sockdir" "$standby_port" "$dir/standby.log"
    local sync_started
    sync_started=$(now_s)
    wait_sync_standby "$sockdir" "$port" 120
    sync_wait_s=$(elapsed_s "$sync_started")
  fi

  local -a pg_env=(env PGHOST="$sockdir" PGPORT="$port")
  local init_started init_s
  init_started=$(now_s)
  pg_as "${pg_env[@]}" "$pgbin/pgbench" -i -s "$pg_scale" -q postgres >"$prefix.init.txt" 2>&1 ||
    die "pgbench -i failed; see $prefix.init.txt"
  psql_at "$sockdir" "$port" "CHECKPOINT" >/dev/null
  init_s=$(elapsed_s "$init_started")
  local replication_before="" replication_after=""
  if [[ $pg_case == streaming ]]; then
    wait_sync_standby "$sockdir" "$port" 60
    replication_before=$(psql_at "$sockdir" "$port" "SELECT application_name || ' ' || state ||
      ' ' || sync_state FROM pg_stat_replication")
  fi
  local setup_s lsn_before
  setup_s=$(elapsed_s "$setup_started")
  lsn_before=$(psql_at "$sockdir" "$port" "SELECT pg_current_wal_lsn()")
  if [[ -n $primary_pid ]]; then
    save_status "$volume" "$prefix.status-before.json"
  fi

  drop_caches
  local load_before cpu_before disk_before started pgbench_rc=0 pgbench_pid samples=""
  mark_daemons
  if [[ -n $standby_pid ]]; then
    samples=raw/$tag.status-samples.jsonl
    start_status_sampler "$volume" "$standby_volume" "$out/$samples"
  fi
  load_before=$(loadavg1)
  disk_before=$(cat "$disk_stat")
  cpu_before=$(cpu_jiffies)
  started=$(now_s)
  setpriv --pdeathsig TERM -- runuser -u postgres -- "${pg_env[@]}" "$pgbin/pgbench" \
    -c "$pg_clients" -j "$pg_threads" -T "$pg_seconds" -P 10 postgres >"$prefix.txt" 2>&1 &
  pgbench_pid=$!
  live[$pgbench_pid]=pgbench
  wait "$pgbench_pid" || pgbench_rc=$?
  unset "live[$pgbench_pid]"
  stop_status_sampler
  local wall_s busy load_after
  wall_s=$(elapsed_s "$started")
  busy=$(busy_pct "$cpu_before" "$(cpu_jiffies)")
  load_after=$(loadavg1)
  local -a disk_before_f disk_after_f
  read -r -a disk_after_f <"$disk_stat"
  read -r -a disk_before_f <<<"$disk_before"
  if [[ $pg_case == streaming ]]; then
    replication_after=$(psql_at "$sockdir" "$port" "SELECT application_name || ' ' || state ||
      ' ' || sync_state FROM pg_stat_replication" 2>/dev/null || echo "query failed")
  fi
  daemon_figures
  if [[ -n $primary_pid ]]; then
    save_status "$volume" "$prefix.status.json"
  fi
  if [[ -n $standby_pid ]]; then
    save_status "$standby_volume" "$prefix.standby-status.json"
  fi
  # WAL written during the measured run (the LSN is read after pgbench's last commit).
  local wal_bytes
  wal_bytes=$(psql_at "$sockdir" "$port" \
    "SELECT (pg_current_wal_lsn() - '$lsn_before')::bigint" 2>/dev/null || echo null)
  [[ $wal_bytes =~ ^[0-9]+$ ]] || wal_bytes=null

  # Tear down in order: PostgreSQL, file system, attachment, primary, standby.
  [[ -n $standby_data ]] && pg_stop "$standby_data"
  pg_stop "$data"
  cp -- "$dir/postgres.log" "$prefix.postgres.log" 2>/dev/null || true
  [[ -n $standby_data ]] && cp -- "$dir/standby.log" "$prefix.standby-postgres.log"
  if [[ -n $mnt ]]; then
    umount "$mnt"
    forget_mount "$mnt"
    detach "$state"
    forget_attachment "$state"
  fi
  primary_rc=null standby_rc=null pair_ended_in_sync=null
  local copies_identical=null
  if [[ -n $primary_pid ]]; then
    stop_volume "$prefix"
    if [[ -n $standby_pid && $verify == 1 ]]; then
      copies_identical=false
      same_content "$volume" "$standby_volume" && copies_identical=true
    fi
  fi
  rm -rf -- "$dir" "$sdir"

  jq -cn --arg kind pgbench --arg case "$pg_case" --argjson rep "$rep" \
    --arg output "raw/$tag.txt" --argjson pgbench_rc "$pgbench_rc" --arg status_samples "$samples" \
    --arg status_json "$([[ -n $primary_pid ]] && echo "raw/$tag.status.json")" \
    --arg status_before_json "$([[ -n $primary_pid ]] && echo "raw/$tag.status-before.json")" \
    --arg standby_status_json "$([[ -n $standby_pid ]] && echo "raw/$tag.standby-status.json")" \
    --argjson scale "$pg_scale" --argjson clients "$pg_clients" --argjson threads "$pg_threads" \
    --argjson seconds "$pg_seconds" \
    --argjson primary_rc "$primary_rc" --argjson standby_rc "$standby_rc" \
    --argjson primary_hwm_kib "$primary_hwm_kib" --argjson standby_hwm_kib "$standby_hwm_kib" \
    --argjson primary_hwm_setup_kib "$primary_hwm_setup_kib" \
    --argjson standby_hwm_setup_kib "$standby_hwm_setup_kib" \
    --argjson primary_cpu_s "$primary_cpu_s" --argjson standby_cpu_s "$standby_cpu_s" \
    --argjson sync_wait_s "$sync_wait_s" --argjson ended_in_sync "$pair_ended_in_sync" \
    --argjson copies_identical "$copies_identical" \
    --arg replication_before "$replication_before" --arg replication_after "$replication_after" \
    --argjson setup_s "$setup_s" --argjson init_s "$init_s" --argjson wal_bytes "$wal_bytes" \
    --argjson loadavg_before "$load_before" --argjson loadavg_after "$load_after" \
    --argjson cpu_busy_pct "$busy" --argjson wall_s "$wall_s" \
    --argjson disk_read_bytes "$(((disk_after_f[2] - disk_before_f[2]) * 512))" \
    --argjson disk_write_bytes "$(((disk_after_f[6] - disk_before_f[6]) * 512))" \
    --arg daemon_command "$last_primary_cmd" \
    '$ARGS.named' >>"$out/runs.jsonl"

  local summary
  summary=$(awk '/^tps = / { tps = $3 } /^latency average = / { lat = $4 }
    END { if (tps != "") printf "%.0f TPS, latency average %s ms", tps, lat }' "$prefix.txt")
  [[ -n $summary ]] || summary="pgbench failed (rc $pgbench_rc, see raw/$tag.txt)"
  [[ $primary_hwm_kib != null ]] && summary+=", primary VmHWM $((primary_hwm_kib / 1024)) MiB"
  [[ $standby_hwm_kib != null ]] && summary+=", standby VmHWM $((standby_hwm_kib / 1024)) MiB"
  [[ $copies_identical == false ]] && summary+=", COPIES DIFFER"
  [[ -n $replication_after ]] && summary+=", after: $replication_after"
  log "  $pg_case: $summary (load $load_before)"
}

# ---- run ----------------------------------------------------------------------------------
fio_runs=$((${#job_names[@]} * reps * ${#target_names[@]}))
pg_runs=$((${#pg_cases[@]} * pg_reps))
# A run takes its runtime, the 2 s ramp, start-up and, for mirrored targets, the initial sync.
minutes=$(((fio_runs * (runtime_s + 12) + pg_runs * (pg_seconds + 60) + 59) / 60))
log "$fio_runs fio runs of ${runtime_s} s and $pg_runs pgbench runs of ${pg_seconds} s:" \
  "roughly $minutes minutes"
log "output: $out"

if ((fio_runs)); then
  log "writing $size of random data to S, A and B (in $fio_dir)"
  head -c "$size_bytes" /dev/urandom >"$fio_dir/S.img"
  cp --sparse=never --reflink=never -- "$fio_dir/S.img" "$fio_dir/A.img"
  cp --sparse=never --reflink=never -- "$fio_dir/S.img" "$fio_b"
  sync
  for f in "$fio_dir/S.img" "$fio_dir/A.img" "$fio_b"; do
    allocated=$(($(stat -c '%b * %B' "$f")))
    ((allocated >= size_bytes)) || die "$f is sparse"
  done
  for job in "${job_names[@]}"; do
    for ((rep = 1; rep <= reps; rep++)); do
      log "fio $job, repetition $rep of $reps"
      n=${#target_names[@]}
      for ((i = 0; i < n; i++)); do
        run_fio "$job" "${target_names[(i + rep - 1) % n]}" "$rep"
      done
    done
  done
  fio_copies_identical=null
  if [[ $verify == 1 ]] && [[ " ${target_names[*]} " == *" mirror-"* ]]; then
    log "comparing the primary's and the standby's copies (A.img, B.img)"
    fio_copies_identical=false
    same_content "$fio_dir/A.img" "$fio_b" && fio_copies_identical=true
    log "  identical: $fio_copies_identical"
  fi
  jq --argjson v "$fio_copies_identical" '. + {fio_copies_identical: $v}' "$out/meta.json" \
    >"$out/meta.json.new" && mv -- "$out/meta.json.new" "$out/meta.json"
  rm -f -- "$fio_dir"/*.img
fi

for ((rep = 1; rep <= pg_reps; rep++)); do
  n=${#pg_cases[@]}
  for ((i = 0; i < n; i++)); do
    pg_case=${pg_cases[(i + rep - 1) % n]}
    log "pgbench on $pg_case (scale $pg_scale, $pg_clients clients, $pg_seconds s)," \
      "repetition $rep of $pg_reps"
    run_pg "$pg_case" "$rep"
  done
done

ps -eo pid,user,pcpu,etime,comm --sort=-pcpu | head -15 >"$out/ps-end.txt"
jq --arg l "$(cat /proc/loadavg)" '. + {loadavg_end: $l}' "$out/meta.json" >"$out/meta.json.new"
mv -- "$out/meta.json.new" "$out/meta.json"
"$python" "$here/mirror_report.py" "$out"
log "results in $out"
