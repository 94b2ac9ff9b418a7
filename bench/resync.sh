#!/usr/bin/env bash
# bench/resync.sh: what recovery costs, in one command (issue: dirty tracking and incremental
# resync). Three parts, each with its baseline measured in the same run:
#
#   resync     full resync throughput of a RESYNC_SIZE volume filled with random data (primary and
#              standby on loopback, --resync-rate 0) against the raw sequential write speed of the
#              same disk (fio, io_uring engine, O_DIRECT, 1 MiB, QD8, the same size), and against
#              a raw copy on that disk (reading the source while writing a new file). Then an
#              incremental resync after RESYNC_DIRTY_WRITES random 4 KiB writes made while the
#              standby was down: bytes marked, bytes resynced, time, throughput.
#   tracking   the cost of dirty tracking: 4 KiB random writes at QD32 over TRACK_SIZE (fio nbd
#              engine, one connection, TRACK_RUNTIME s) on two mirrored pairs running side by
#              side (--mode flush, the bitmap's clean cycles running), one with the write-intent
#              bitmap and one with --no-write-intent-bitmap, TRACK_REPS repetitions; each pair
#              gets a cold pass (just paired: first writes into each region wait for its mark),
#              then TRACK_WARM_PASSES warm passes back to back (steady state); which pair goes
#              first alternates; medians, ratios, metadata writes per 1000 writes.
#   outage     a mirrored pair (--mode sync) under a steady load (fio, 4 KiB random writes at
#              OUTAGE_IOPS): the standby is SIGKILLed, stays down OUTAGE_S seconds, restarts; the
#              time from its restart to UpToDate (load still running), bytes marked and resynced.
#
# Settings (environment): RESYNC_SIZE=2G RESYNC_REPS=3 RESYNC_DIRTY_WRITES=20000
#   TRACK_SIZE=1G TRACK_RUNTIME=10 TRACK_REPS=3 TRACK_WARM_PASSES=4 OUTAGE_S=60 OUTAGE_IOPS=1000
#   BENCH_PARTS="resync tracking outage" BENCH_TMPDIR=/var/tmp BENCH_OUT=bench/out
#   RESYNC_STANDBY_DIR= RESYNC_PRIMARY_DIR= (the resync part's standby or primary copy elsewhere,
#   e.g. /dev/shm; see below)
#   NBDMIRROR_BIN=build/nbdmirror (copied before the run)
# Output: bench/out/<timestamp>-resync/ with results.jsonl, raw fio/daemon output, meta.txt and
# results.md (printed at the end). Needs root (drop_caches). Loopback and unix sockets only;
# stops what it started by PID and removes its scratch files on exit.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
RESYNC_SIZE=${RESYNC_SIZE:-2G}
RESYNC_REPS=${RESYNC_REPS:-3}
RESYNC_DIRTY_WRITES=${RESYNC_DIRTY_WRITES:-20000}
TRACK_SIZE=${TRACK_SIZE:-1G}
TRACK_RUNTIME=${TRACK_RUNTIME:-10}
TRACK_REPS=${TRACK_REPS:-3}
TRACK_WARM_PASSES=${TRACK_WARM_PASSES:-4}
OUTAGE_S=${OUTAGE_S:-60}
OUTAGE_IOPS=${OUTAGE_IOPS:-1000}
BENCH_PARTS=${BENCH_PARTS:-resync tracking outage}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
out=${BENCH_OUT:-$root/bench/out}/$(date +%Y%m%d-%H%M%S)-resync
mkdir -p "$out/raw"
scratch=$(mktemp -d "$BENCH_TMPDIR/nbdmirror-resync.XXXXXX")
# Where the resync part's standby copy lives: by default beside the primary's (one disk does
# both the reads and the writes, which a two-host mirror never asks of one disk). Set it to a
# directory on other storage (e.g. /dev/shm as a stand-in for the standby host's own disk) to
# see the resync pipeline without that handicap.
# RESYNC_PRIMARY_DIR does the opposite: the primary's copy (the source) on other storage, the
# standby's on this disk, so the resync writes to the very disk whose raw write speed is the
# baseline and nothing else uses it, as on a standby host.
standby_scratch=$scratch
if [[ -n ${RESYNC_STANDBY_DIR:-} ]]; then
  standby_scratch=$(mktemp -d "$RESYNC_STANDBY_DIR/nbdmirror-resync-standby.XXXXXX")
fi
primary_scratch=$scratch
if [[ -n ${RESYNC_PRIMARY_DIR:-} ]]; then
  primary_scratch=$(mktemp -d "$RESYNC_PRIMARY_DIR/nbdmirror-resync-primary.XXXXXX")
fi
layout=one-disk
[[ -n ${RESYNC_STANDBY_DIR:-} ]] && layout=standby-elsewhere
[[ -n ${RESYNC_PRIMARY_DIR:-} ]] && layout=primary-elsewhere
[[ -n ${RESYNC_STANDBY_DIR:-} && -n ${RESYNC_PRIMARY_DIR:-} ]] && layout=both-elsewhere
bin=$scratch/nbdmirror
cp "${NBDMIRROR_BIN:-$root/build/nbdmirror}" "$bin"
results=$out/results.jsonl
: >"$results"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
declare -A live=()
cleanup() {
  local pid
  for pid in "${!live[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true
  done
  for pid in "${!live[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf -- "$scratch" "$standby_scratch" "$primary_scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in fio jq nbdinfo python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed (scripts/install-deps.sh)"
done
secret=$scratch/secret
head -c 32 /dev/urandom | base64 >"$secret"
chmod 600 "$secret"
size_bytes=$(numfmt --from=iec "$RESYNC_SIZE")
track_bytes=$(numfmt --from=iec "$TRACK_SIZE")

{
  echo "date: $(date -u +%FT%TZ)"
  echo "command: $0 $*"
  echo "settings: RESYNC_SIZE=$RESYNC_SIZE RESYNC_REPS=$RESYNC_REPS RESYNC_DIRTY_WRITES=$RESYNC_DIRTY_WRITES TRACK_SIZE=$TRACK_SIZE TRACK_RUNTIME=$TRACK_RUNTIME TRACK_REPS=$TRACK_REPS TRACK_WARM_PASSES=$TRACK_WARM_PASSES OUTAGE_S=$OUTAGE_S OUTAGE_IOPS=$OUTAGE_IOPS RESYNC_STANDBY_DIR=${RESYNC_STANDBY_DIR:-} RESYNC_PRIMARY_DIR=${RESYNC_PRIMARY_DIR:-}"
  echo "git: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (dirty)')"
  echo "binary sha256: $(sha256sum "$bin" | cut -c1-16)"
  echo "cpus: $(nproc); kernel $(uname -r); disk of $BENCH_TMPDIR: $(df --output=source "$BENCH_TMPDIR" | tail -1)"
  echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/meta.txt"

record() { echo "$1" >>"$results"; }
now_s() { date +%s.%N; }
elapsed_s() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.3f", b - a }'; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
status() { "$bin" status --volume "$1" --json 2>/dev/null || true; }
field() { status "$1" | jq -r --arg k "$2" '.[$k] // empty | tostring'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

# start NAME VOLUME ARGS...: a daemon in the background (dies with us); sets pid.
start() {
  local name=$1 volume=$2
  shift 2
  setpriv --pdeathsig TERM -- "$bin" --log-level info run --volume "$volume" "$@" \
    >"$out/raw/$name.log" 2>&1 &
  pid=$!
  live[$pid]=$name
  local i
  for ((i = 0; i < 400; i++)); do
    [[ -n $(status "$volume") ]] && return 0
    kill -0 "$pid" 2>/dev/null || die "$name exited during start-up (see raw/$name.log)"
    sleep 0.05
  done
  die "$name did not answer status within 20 s"
}
stop() {  # PID [KILL]
  kill "-${2:-TERM}" "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  unset "live[$1]"
}
# wait_in_sync VOLUME TIMEOUT_S: until the primary reports the peer connected and UpToDate.
wait_in_sync() {
  local deadline=$((SECONDS + $2)) state
  while :; do
    state=$(status "$1" | jq -r '"\(.connection) \(.peer_disk)"' 2>/dev/null || true)
    [[ $state == "connected UpToDate" ]] && return 0
    ((SECONDS < deadline)) || die "peer not in sync after $2 s (status: $state)"
    sleep 0.05
  done
}
pair() {  # A B MODE EXTRA...: starts standby on B and primary on A; sets pa, pb, uri
  local a=$1 b=$2 mode=$3
  shift 3
  port_a=$(free_port)
  port_b=$(free_port)
  start "standby-$run_label" "$b" --node b --listen "127.0.0.1:$port_b" \
    --peer "a=127.0.0.1:$port_a" --secret-file "$secret" "$@"
  pb=$pid
  start "primary-$run_label" "$a" --node a --primary --nbd "unix:$a.sock" --mode "$mode" \
    --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:$port_b" --secret-file "$secret" "$@"
  pa=$pid
  uri="nbd+unix:///?socket=$a.sock"
}
restart_standby() {  # B EXTRA...
  local b=$1
  shift
  start "standby-$run_label-again" "$b" --node b --listen "127.0.0.1:$port_b" \
    --peer "a=127.0.0.1:$port_a" --secret-file "$secret" "$@"
  pb=$pid
}
fresh() { rm -f -- "$1" "$1.nbdmirror-meta" "$1.control"; truncate -s "$2" "$1"; }
# direct_ok DIR: whether files in DIR take O_DIRECT (tmpfs does not).
direct_ok() {
  dd if=/dev/zero of="$1/direct-probe" bs=4k count=1 oflag=direct status=none 2>/dev/null
  local rc=$?
  rm -f -- "$1/direct-probe"
  return $rc
}
# seq_write FILE BYTES [FIO_ARGS...]: writes FILE whole, as the raw baseline does (fio io_uring,
# O_DIRECT where FILE's file system takes it, 1 MiB, QD8, fsync at the end).
seq_write() {
  local direct=0
  direct_ok "$(dirname "$1")" && direct=1
  fio --name=seq-write --filename="$1" --size="$2" --rw=write --bs=1M --iodepth=8 \
    --ioengine=io_uring --direct=$direct --end_fsync=1 "${@:3}" >/dev/null
}

# ---- part 1: resync throughput ----------------------------------------------------------------
part_resync() {
  local rep a=$primary_scratch/a.img b=$standby_scratch/b.img raw=$scratch/raw.img
  local source_direct=0
  direct_ok "$primary_scratch" && source_direct=1
  for ((rep = 1; rep <= RESYNC_REPS; rep++)); do
    run_label=resync-$rep
    rm -f -- "$raw"
    drop_caches
    seq_write "$raw" "$size_bytes" --output-format=json --output="$out/raw/raw-$rep.json"
    local raw_bw
    raw_bw=$(jq '.jobs[0].write.bw_bytes' "$out/raw/raw-$rep.json")
    rm -f -- "$raw"
    record "{\"part\":\"resync\",\"case\":\"raw-seq-write\",\"rep\":$rep,\"bytes_per_s\":$raw_bw}"
    log "rep $rep: raw sequential write $((raw_bw >> 20)) MiB/s"

    # The source: random data in every byte (no holes), then a new standby.
    fresh "$a" "$size_bytes"
    fresh "$b" "$size_bytes"
    seq_write "$a" "$size_bytes" --refill_buffers
    # The ceiling of a copy on this one disk, where both copies live here: reading the source
    # while writing a new file, at once (1 MiB, QD8 each); rate = size / the slower job's time.
    # (With RESYNC_PRIMARY_DIR the source is read from that storage instead.)
    drop_caches
    fio --output-format=json --output="$out/raw/copy-$rep.json" \
      --name=read --filename="$a" --size="$size_bytes" --rw=read --bs=1M --iodepth=8 \
      --ioengine=io_uring --direct=$source_direct \
      --name=write --filename="$raw" --size="$size_bytes" --rw=write --bs=1M --iodepth=8 \
      --ioengine=io_uring --direct=1 --end_fsync=1 >/dev/null
    local copy_bw
    copy_bw=$(jq --argjson s "$size_bytes" '$s * 1000 / ([.jobs[].job_runtime] | max) | floor' \
      "$out/raw/copy-$rep.json")
    rm -f -- "$raw"
    record "{\"part\":\"resync\",\"case\":\"raw-copy\",\"rep\":$rep,\"layout\":\"$layout\",\"bytes_per_s\":$copy_bw}"
    log "rep $rep: raw copy ($layout) $((copy_bw >> 20)) MiB/s"
    drop_caches
    local t0 secs
    t0=$(now_s)
    pair "$a" "$b" sync
    wait_in_sync "$a" 600
    secs=$(elapsed_s "$t0")
    local internal
    internal=$(field "$a" resync_rate_bytes_per_s)
    # The daemon's own rate: bytes copied over the time from the resync's start to its last
    # block (the wall clock above also counts starting both daemons and this script's polling).
    record "{\"part\":\"resync\",\"case\":\"full\",\"rep\":$rep,\"bytes\":$size_bytes,\"wall_seconds\":$secs,\"bytes_per_s\":${internal:-0}}"
    log "rep $rep: full resync of $RESYNC_SIZE in ${secs}s (daemon's own rate ${internal} B/s)"

    # Incremental: scattered writes while the standby is down.
    stop "$pb" KILL
    fio --name=dirty --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=32 \
      --number_ios="$RESYNC_DIRTY_WRITES" --size="$size_bytes" --refill_buffers \
      --output-format=json --output="$out/raw/dirty-$rep.json" >/dev/null
    local marked
    marked=$(field "$a" marked_bytes)
    local before
    before=$(field "$a" resynced_bytes_total)
    t0=$(now_s)
    restart_standby "$b"
    wait_in_sync "$a" 600
    secs=$(elapsed_s "$t0")
    local resynced=$(($(field "$a" resynced_bytes_total) - before))
    internal=$(field "$a" resync_rate_bytes_per_s)
    record "{\"part\":\"resync\",\"case\":\"incremental\",\"rep\":$rep,\"writes\":$RESYNC_DIRTY_WRITES,\"marked\":$marked,\"bytes\":$resynced,\"wall_seconds\":$secs,\"bytes_per_s\":${internal:-0}}"
    log "rep $rep: incremental: $RESYNC_DIRTY_WRITES writes marked $((marked >> 20)) MiB, resynced $((resynced >> 20)) MiB in ${secs}s"
    stop "$pa"
    stop "$pb"
    cmp -s "$a" "$b" || die "rep $rep: the copies differ after the resyncs"
  done
  rm -f -- "$a" "$b"
}

# ---- part 2: cost of dirty tracking -------------------------------------------------------------
# Both variants run side by side: per repetition a pair with the bitmap and a pair without it are
# started on identical, fully written copies of one template. Their passes interleave: a cold pass
# of each (just paired: every first write into a region waits for its mark), a settle pass of
# each, then TRACK_WARM_PASSES warm passes of each, the order of the two alternating from one
# pass to the next (on off, off on, on off, ...; the other way round in even repetitions). Each
# on/off ratio so compares two passes run back to back: this virtual disk's speed drifts by 2x
# over minutes (a pair's first warm pass often runs twice as fast as its fourth), which running
# one pair's passes and then the other's charged to whichever went second. Both pairs run with
# a clean cycle (--bitmap-clean-ms) longer than the whole part: a pair idles for the other's
# pass between its own, and a 5 s cycle would find it idle, clear every region and make its next
# pass cold again; on a volume that is busy throughout, as here, no cycle clears anything
# whatever its length (see Replicator), so the warm passes measure that steady state.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }  # utime + stime of PID
track_pass() {  # VARIANT PASS REP VOLUME URI PRIMARY_PID STANDBY_PID
  local variant=$1 pass=$2 rep=$3 volume=$4 uri=$5 primary=$6 standby=$7 m0 m1 w0 w1 iops per1000
  local json=$out/raw/track-$variant-$pass-$rep.json c0 c1
  m0=$(field "$volume" metadata_writes)
  w0=$(field "$volume" writes)
  c0=$(($(cpu_ticks "$primary") + $(cpu_ticks "$standby")))
  fio --name=w4k_qd32 --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=32 \
    --size="$track_bytes" --time_based --runtime="$TRACK_RUNTIME" --ramp_time=2 \
    --output-format=json --output="$json" >/dev/null
  c1=$(($(cpu_ticks "$primary") + $(cpu_ticks "$standby")))
  m1=$(field "$volume" metadata_writes)
  w1=$(field "$volume" writes)
  iops=$(jq '.jobs[0].write.iops' "$json")
  per1000=$(((m1 - m0) * 1000 / (w1 - w0)))
  # CPU of both daemons per client write (ramp included), in µs: less noisy than IOPS.
  local cpu_us
  cpu_us=$(awk -v t=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v w=$((w1 - w0)) \
    'BEGIN { printf "%.2f", t / hz * 1e6 / w }')
  local kind=${pass%%-*}
  record "{\"part\":\"tracking\",\"case\":\"$variant-$kind\",\"rep\":$rep,\"pass\":\"$pass\",\"iops\":$iops,\"metadata_writes_per_1000\":$per1000,\"cpu_us_per_write\":$cpu_us}"
  log "rep $rep: bitmap $variant, $pass: $(printf '%.0f' "$iops") IOPS, ${per1000} metadata writes per 1000 writes, ${cpu_us} µs CPU per write"
}

part_tracking() {
  local rep template=$scratch/track-template.img
  local on_a=$scratch/ta-on.img on_b=$scratch/tb-on.img off_a=$scratch/ta-off.img
  local off_b=$scratch/tb-off.img
  # Fully written volumes: writes into holes would also allocate blocks, adding file-system work
  # and noise to what is measured.
  rm -f -- "$template"
  seq_write "$template" "$track_bytes"
  for ((rep = 1; rep <= TRACK_REPS; rep++)); do
    local f
    for f in "$on_a" "$on_b" "$off_a" "$off_b"; do
      fresh "$f" 0
      cp -- "$template" "$f"
    done
    run_label=track-on-$rep
    pair "$on_a" "$on_b" flush --skip-initial-sync --bitmap-clean-ms 3600000
    local on_pa=$pa on_pb=$pb on_uri=$uri
    run_label=track-off-$rep
    pair "$off_a" "$off_b" flush --skip-initial-sync --bitmap-clean-ms 3600000 \
      --no-write-intent-bitmap
    local off_pa=$pa off_pb=$pb off_uri=$uri
    wait_in_sync "$on_a" 60
    wait_in_sync "$off_a" 60
    drop_caches
    # The settle pass is not counted: it lets the disk settle after the cold pass's synchronous
    # metadata writes.
    local passes=(cold settle) pass variant i k=0 volume uri pids
    for ((i = 1; i <= TRACK_WARM_PASSES; i++)); do
      passes+=("warm-$i")
    done
    for pass in "${passes[@]}"; do
      local order=(on off)
      (((rep + k) % 2 == 0)) && order=(off on)
      k=$((k + 1))
      for variant in "${order[@]}"; do
        if [[ $variant == on ]]; then
          volume=$on_a uri=$on_uri pids=("$on_pa" "$on_pb")
        else
          volume=$off_a uri=$off_uri pids=("$off_pa" "$off_pb")
        fi
        track_pass "$variant" "$pass" "$rep" "$volume" "$uri" "${pids[@]}"
      done
    done
    status "$on_a" >"$out/raw/track-on-$rep.status.json"
    status "$off_a" >"$out/raw/track-off-$rep.status.json"
    stop "$on_pa"
    stop "$on_pb"
    stop "$off_pa"
    stop "$off_pb"
  done
  rm -f -- "$template" "$on_a" "$on_b" "$off_a" "$off_b"
}

# ---- part 3: recovery after an outage under load -----------------------------------------------
part_outage() {
  local a=$scratch/oa.img b=$scratch/ob.img
  run_label=outage
  fresh "$a" "$size_bytes"
  fresh "$b" "$size_bytes"
  pair "$a" "$b" sync --skip-initial-sync
  wait_in_sync "$a" 60
  fio --name=load --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=4 \
    --rate_iops="$OUTAGE_IOPS" --size="$size_bytes" --time_based \
    --runtime=$((OUTAGE_S + 600)) >"$out/raw/outage-fio.txt" 2>&1 &
  local fio_pid=$!
  live[$fio_pid]=fio
  sleep 5
  local writes0
  writes0=$(field "$a" writes)
  stop "$pb" KILL
  log "outage: standby killed; waiting ${OUTAGE_S}s under ${OUTAGE_IOPS} writes/s"
  sleep "$OUTAGE_S"
  local writes1 marked before t0 secs resynced
  writes1=$(field "$a" writes)
  marked=$(field "$a" marked_bytes)
  before=$(field "$a" resynced_bytes_total)
  t0=$(now_s)
  restart_standby "$b"
  wait_in_sync "$a" 1200
  secs=$(elapsed_s "$t0")
  resynced=$(($(field "$a" resynced_bytes_total) - before))
  stop "$fio_pid" TERM
  stop "$pa"
  stop "$pb"
  cmp -s "$a" "$b" || die "outage: the copies differ after recovery"
  record "{\"part\":\"outage\",\"case\":\"standby-down\",\"outage_s\":$OUTAGE_S,\"writes_during\":$((writes1 - writes0)),\"marked\":$marked,\"resynced\":$resynced,\"recovery_s\":$secs,\"volume\":$size_bytes}"
  log "outage: $((writes1 - writes0)) writes during ${OUTAGE_S}s marked $((marked >> 20)) MiB; recovered in ${secs}s resyncing $((resynced >> 20)) MiB"
  rm -f -- "$a" "$b"
}

for part in $BENCH_PARTS; do
  "part_$part"
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/meta.txt"
python3 "$here/resync_report.py" "$out" | tee "$out/results.md"
log "results in $out"
