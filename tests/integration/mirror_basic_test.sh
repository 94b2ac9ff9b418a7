#!/usr/bin/env bash
# mirror_basic_test: with a standby connected, every write a client had acknowledged is on both
# copies, and after a clean stop the two backing files are byte-identical. Checked in both
# durability modes (--mode sync and --mode flush).
#
# How, per mode: two daemons on loopback, each with its own 128 MiB sparse volume and the same
# shared secret: a standby (node b, secondary) and a primary (node a) that dials it and exports
# NBD on a Unix socket. Once the primary reports peer_disk UpToDate (the initial full resync is
# done), the status JSON of both must say what a mirror in sync says (role, connection
# connected, disk and peer_disk UpToDate, the mode, nothing out of sync). Then, through the
# export: fio's nbd engine with verify=crc32c, 2 jobs x 32 in flight, 4 KiB random writes, then
# mixed sizes (512 B to 1 MiB, 64 KiB and 1 MiB included) with a verify backlog; nbdcopy of 32
# MiB of random data into the export, read back and compared. No write may have been
# acknowledged without the peer (degraded_writes stays 0, the link never drops) and the standby
# must have applied writes. Then SIGTERM the primary (exit 0, "in sync" at shutdown), then the
# standby (exit 0), and cmp the two backing files.
# The flush-mode pair runs with --nice -5: every thread of both daemons (io_uring workers
# included) must run at that priority, and an unprivileged --nice -5 must be refused at start.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require fio nbdcopy nbdinfo python3 cmp
fio --enghelp=nbd >/dev/null 2>&1 || nm_skip "this fio has no nbd engine"
nm_python_with json

volume_mib=128
region_bytes=$((24 << 20))
secret=$NM_TMP/secret
nm_make_secret "$secret"
head -c 32M /dev/urandom >"$NM_TMP/random.bin"

# expect_nice PID VALUE: every thread of PID runs at nice VALUE (field 19 of its stat; fields
# are counted after the ")" that ends the command name, which may hold spaces).
expect_nice() {
  local stat task nice threads=0
  for stat in /proc/"$1"/task/*/stat; do
    task=$(<"$stat") || continue
    nice=$(awk '{ print $17 }' <<<"${task##*) }")
    [[ $nice == "$2" ]] || nm_fail "thread ${stat%/stat} of pid $1 runs at nice '${nice}', expected $2"
    threads=$((threads + 1))
  done
  ((threads > 0)) || nm_fail "no threads found for pid $1"
  nm_log "pid $1: all ${threads} threads at nice $2"
}

# expect_status VOLUME KEY VALUE: one status field must have this value now.
expect_status() {
  local got
  got=$(nm_status_field "$1" "$2")
  [[ $got == "$3" ]] || nm_fail "$(basename "$1") status: $2 is '${got}', expected '$3'"
}

# run_fio MODE NAME URI OFFSET FIO-ARGS...: one verified job pair (disjoint regions from
# OFFSET); fio must exit 0 and its JSON must show every byte written and verified.
run_fio() {
  local mode=$1 name=$2 uri=$3 offset=$4
  shift 4
  local json=$NM_TMP/fio-$mode-$name.json rc=0
  (cd "$NM_TMP" && fio --name="$name" --ioengine=nbd --uri="$uri" \
    --numjobs=2 --size="$region_bytes" --offset="$offset" --offset_increment="$region_bytes" \
    --iodepth=32 --verify=crc32c --verify_fatal=1 --verify_dump=0 --verify_state_save=0 \
    --group_reporting=0 --output-format=json --output="$json" "$@") \
    2>"$NM_TMP/fio-$mode-$name.err" || rc=$?
  if ((rc != 0)); then
    cat "$NM_TMP/fio-$mode-$name.err" "$json" >&2 2>/dev/null || true
    nm_fail "fio job '${name}' (mode ${mode}) exited with status ${rc}"
  fi
  "$NM_PYTHON" - "$json" "$region_bytes" <<'EOF' || nm_fail "fio job '${name}' (mode ${mode}) reported errors"
import json, sys
jobs = json.load(open(sys.argv[1]))["jobs"]
region = int(sys.argv[2])
errors = [] if len(jobs) == 2 else [f"expected 2 jobs, got {len(jobs)}"]
for i, job in enumerate(jobs):
    written, verified = job["write"]["io_bytes"], job["read"]["io_bytes"]
    if job["error"] != 0:
        errors.append(f"job {i}: error {job['error']}")
    if written != region or verified != written:
        errors.append(f"job {i}: wrote {written}, verified {verified}, expected {region}")
    print(f"  job {i}: wrote {written >> 20} MiB, verified {verified >> 20} MiB, "
          f"{job['write']['total_ios']} writes", file=sys.stderr)
for e in errors:
    print("  " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
}

run_mode() {  # run_mode MODE [DAEMON_FLAGS...]
  local mode=$1
  shift
  local a=$NM_TMP/$mode-a.img b=$NM_TMP/$mode-b.img sock=$NM_TMP/$mode.sock
  local ports port_a port_b
  ports=$(nm_free_ports 2)
  read -r port_a port_b <<<"$ports"
  nm_make_volume "$a" "${volume_mib}M"
  nm_make_volume "$b" "${volume_mib}M"

  NM_DAEMON_LABEL=standby-$mode nm_start_secondary "$b" --node b \
    --listen "127.0.0.1:$port_b" --peer "a=127.0.0.1:$port_a" --secret-file "$secret" "$@"
  local standby=$NM_PID
  NM_DAEMON_LABEL=primary-$mode nm_start_primary "$a" "$sock" --node a --mode "$mode" \
    --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:$port_b" --secret-file "$secret" "$@"
  local primary=$NM_PID primary_log=$NM_LOG uri=$NM_URI

  nm_wait_status 30 "$a" peer_disk UpToDate
  nm_wait_status 10 "$b" disk UpToDate
  expect_status "$a" role primary
  expect_status "$a" connection connected
  expect_status "$a" disk UpToDate
  expect_status "$a" peer_disk UpToDate
  expect_status "$a" mode "$mode"
  expect_status "$a" out_of_sync_bytes 0
  expect_status "$a" resync_total_bytes $((volume_mib << 20))
  expect_status "$a" resync_done_bytes $((volume_mib << 20))
  expect_status "$b" role secondary
  expect_status "$b" connection connected
  expect_status "$b" disk UpToDate
  expect_status "$b" peer_disk UpToDate
  nm_log "mode ${mode}: initial resync done; both report a connected mirror, UpToDate"

  run_fio "$mode" randwrite-4k "$uri" 0 --rw=randwrite --bs=4k
  nm_log "mode ${mode}: 4 KiB random writes, 2 jobs x 32 deep: all verified"
  run_fio "$mode" randwrite-mixed "$uri" $((2 * region_bytes)) --rw=randwrite \
    --bssplit=512/10:4k/25:16k/15:64k/25:256k/15:1m/10 --blockalign=512 --verify_backlog=256
  nm_log "mode ${mode}: mixed sizes (64 KiB and 1 MiB included) with verify backlog: all verified"

  nbdcopy --flush "$NM_TMP/random.bin" "$uri" ||
    nm_fail "nbdcopy into the export failed (mode ${mode})"
  nbdcopy "$uri" "$NM_TMP/readback.bin" || nm_fail "nbdcopy out of the export failed (mode ${mode})"
  cmp -n $((32 << 20)) "$NM_TMP/random.bin" "$NM_TMP/readback.bin" ||
    nm_fail "the random data does not read back from the export (mode ${mode})"
  rm -f "$NM_TMP/readback.bin"
  nm_log "mode ${mode}: 32 MiB of random data copied in with nbdcopy and read back"

  nm_assert_alive "$primary" "primary"
  nm_assert_alive "$standby" "standby"
  if [[ ${1:-} == --nice ]]; then
    expect_nice "$primary" "$2"
    expect_nice "$standby" "$2"
  fi
  expect_status "$a" connection connected
  expect_status "$a" peer_disk UpToDate
  expect_status "$a" degraded_writes 0
  expect_status "$a" errors 0
  expect_status "$b" connection connected
  expect_status "$b" disk UpToDate
  nm_status_ge "$b" applied_writes 1000 ||
    nm_fail "the standby applied only '$(nm_status_field "$b" applied_writes)' writes"
  # The latency counters: with no degraded write and no error, the peer confirmed every
  # modifying request, and each part of a write's time fits inside the whole.
  local n_done peer_done total peer_us local_us flushes
  n_done=$(nm_status_field "$a" modify_done)
  peer_done=$(nm_status_field "$a" modify_peer_done)
  total=$(nm_status_field "$a" modify_us)
  peer_us=$(nm_status_field "$a" modify_peer_us)
  local_us=$(nm_status_field "$a" modify_local_us)
  flushes=$(nm_status_field "$a" flush_done)
  ((n_done >= 1000 && peer_done == n_done)) ||
    nm_fail "modify_done ${n_done}, modify_peer_done ${peer_done}: every write should be confirmed"
  ((total > 0 && peer_us <= total && local_us <= total)) ||
    nm_fail "modify_us ${total} should cover modify_peer_us ${peer_us} and modify_local_us ${local_us}"
  ((flushes >= 1)) || nm_fail "no FLUSH counted in flush_done (nbdcopy --flush sends one)"
  # The standby's side: it applied (at least) every write the primary saw confirmed, and every
  # confirmed flush (it also applied the initial sync's blocks and clean cycles' flushes).
  local applied applied_us applied_flushes peer_flushes
  applied=$(nm_status_field "$b" apply_done)
  applied_us=$(nm_status_field "$b" apply_us)
  applied_flushes=$(nm_status_field "$b" apply_flush_done)
  peer_flushes=$(nm_status_field "$a" flush_peer_done)
  ((applied >= peer_done && applied_us > 0)) ||
    nm_fail "standby apply_done ${applied} (apply_us ${applied_us}) < primary modify_peer_done ${peer_done}"
  ((applied_flushes >= peer_flushes)) ||
    nm_fail "standby apply_flush_done ${applied_flushes} < primary flush_peer_done ${peer_flushes}"
  # Mode flush sends each FLUSH to the peer; mode sync none (its writes were durable on both).
  if [[ $mode == flush ]]; then
    ((peer_flushes >= 1)) || nm_fail "mode flush: no FLUSH confirmed by the peer"
  else
    ((peer_flushes == 0)) || nm_fail "mode sync: ${peer_flushes} FLUSHes went to the peer"
  fi
  nm_log "mode ${mode}: ${n_done} writes, mean $((total / n_done)) us of which the peer's part" \
    "$((peer_us / peer_done)) us, local $((local_us / n_done)) us (latency counters)"
  [[ $(nm_count_in_log "$primary_log" "peer b lost") == 0 ]] ||
    nm_fail "the link to the standby dropped during the writes (mode ${mode})"

  nm_stop_clean "$primary" "primary (mode ${mode})"
  grep -q "peer b at shutdown: in sync" "$primary_log" ||
    nm_fail "the primary did not record the standby in sync at shutdown (mode ${mode})"
  nm_stop_clean "$standby" "standby (mode ${mode})"
  cmp "$a" "$b" || nm_fail "mode ${mode}: the two backing files differ after a clean stop"
  cmp -n $((32 << 20)) "$NM_TMP/random.bin" "$b" ||
    nm_fail "mode ${mode}: the standby's file does not hold the nbdcopy data"
  nm_log "mode ${mode}: both stopped cleanly; the backing files are byte-identical"
  rm -f "$a" "$b"
}

run_mode sync
run_mode flush --nice -5

# A priority the daemon may not take is refused at start, with the reason, before it serves.
if command -v setpriv >/dev/null && [[ $(id -u) == 0 ]]; then
  rc=0
  setpriv --reuid=65534 --regid=65534 --clear-groups "$NM_BIN" run \
    --volume "$NM_TMP/never-opened.img" --nice -5 >"$NM_TMP/nice.out" 2>&1 || rc=$?
  ((rc == 2)) || nm_fail "an unprivileged --nice -5 exited ${rc}, expected 2"
  grep -q "cannot set the CPU priority" "$NM_TMP/nice.out" ||
    nm_fail "the refusal does not say why: $(cat "$NM_TMP/nice.out")"
  nm_log "an unprivileged --nice -5 is refused: $(tail -1 "$NM_TMP/nice.out")"
else
  nm_log "not root: the unprivileged --nice refusal is not checked here"
fi
nm_log "PASS"
