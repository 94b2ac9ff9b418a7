#!/usr/bin/env bash
# mirror_resync_test: after an outage, a crash or a failover, the copies come back in sync by
# copying only the regions the write-intent bitmap marks; an interrupted resync resumes; split
# brain is refused on both sides until the operator discards one side's changes.
#
# How: two daemons on loopback with 256 MiB sparse volumes and 64 KiB bitmap regions, the
# first primary with --resync-rate 2M so a resync lasts long enough to interrupt (a resync clears
# bits, and counts progress, as each batch of blocks becomes durable on both sides). Each phase writes
# with fio's nbd engine (verify=crc32c) into its own 16 MiB window, so the marked regions can
# be at most 16 MiB per window; the resynced byte counts come from `nbdmirror status`.
#   1. initial pairing: a full resync (status sync_decision full).
#   2. standby SIGKILLed; 16 MiB window written (degraded); a new generation is minted; the
#      standby restarts and is SIGKILLed again mid-resync; restarted, the resync resumes (less
#      left than before) and ends UpToDate. Bytes resynced in total: at most the window plus
#      the blocks in flight at the interruption, far below the volume size. Files identical.
#   3. primary SIGKILLed under fio load, restarted: the same generation, so exactly the
#      regions marked at the crash are resynced before the standby is UpToDate. Files identical.
#   4. failover: primary SIGKILLed under load; the standby restarted as primary writes its own
#      window; the old primary rejoins as secondary: incremental (its crash marks plus the new
#      primary's writes), then identical.
#   5. split brain: each side writes while the other is down; when they meet both refuse,
#      status shows split_brain and the reason, and the secondary's file is not touched; after
#      `nbdmirror discard-changes` on it, it rejoins incrementally and the files are identical.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require fio cmp jq
fio --enghelp=nbd >/dev/null 2>&1 || nm_skip "this fio has no nbd engine"

mib=$((1 << 20))
volume_mib=256
window=$((16 * mib))
rate=$((2 * mib))
secret=$NM_TMP/secret
nm_make_secret "$secret"
a=$NM_TMP/a.img
b=$NM_TMP/b.img
sock_a=$NM_TMP/a.sock
sock_b=$NM_TMP/b.sock
nm_make_volume "$a" "${volume_mib}M"
nm_make_volume "$b" "${volume_mib}M"
read -r port_a port_b <<<"$(nm_free_ports 2)"

field() { nm_status_field "$1" "$2"; }

# fio_window URI OFFSET [ARGS...]: verified 4 KiB random writes over one 16 MiB window.
fio_window() {
  local uri=$1 offset=$2 rc=0
  shift 2
  (cd "$NM_TMP" && fio --name=window --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k \
    --offset="$offset" --size="$window" --iodepth=16 --verify=crc32c --verify_fatal=1 \
    --verify_dump=0 --verify_state_save=0 "$@" >"$NM_TMP/fio.out" 2>&1) || rc=$?
  ((rc == 0)) || { cat "$NM_TMP/fio.out" >&2; nm_fail "fio over ${offset}+16M exited ${rc}"; }
}

# fio_load_start VOLUME URI OFFSET: unverified writes that run until killed (the load a crash
# hits); returns once the daemon serving VOLUME has taken 2000 of them.
fio_load_start() {
  local volume=$1
  shift
  local before
  before=$(field "$volume" writes)
  (cd "$NM_TMP" && exec fio --name=load --ioengine=nbd --uri="$1" --rw=randwrite --bs=4k \
    --offset="$2" --size="$window" --iodepth=16 --time_based --runtime=60 \
    >"$NM_TMP/load.out" 2>&1) &
  FIO_PID=$!
  nm_track_pid "$FIO_PID"
  nm_wait_for 20 "writes under way" nm_status_ge "$volume" writes $((before + 2000))
}

start_standby() {  # VOLUME NODE PORT PEER PEER_PORT
  NM_DAEMON_LABEL=secondary-$2 nm_start_secondary "$1" --node "$2" --listen "127.0.0.1:$3" \
    --peer "$4=127.0.0.1:$5" --secret-file "$secret" --peer-timeout-ms 2000
}
start_primary() {  # VOLUME SOCKET NODE PORT PEER PEER_PORT [RESYNC_RATE]
  NM_DAEMON_LABEL=primary-$3 nm_start_primary "$1" "$2" --node "$3" --listen "127.0.0.1:$4" \
    --peer "$5=127.0.0.1:$6" --secret-file "$secret" --peer-timeout-ms 2000 \
    --resync-rate "${7:-0}"
}
kill9() {
  kill -KILL "$1"
  nm_wait_exit "$1" 10 || true
}
in_sync() {  # PRIMARY_VOLUME
  nm_status_is "$1" connection connected && nm_status_is "$1" peer_disk UpToDate
}
same_files() {
  cmp "$a" "$b" || nm_fail "$1: the backing files differ"
}

# ---- 1. initial pairing: full -----------------------------------------------------------------
start_standby "$b" b "$port_b" a "$port_a"
standby=$NM_PID
start_primary "$a" "$sock_a" a "$port_a" b "$port_b" "$rate"
primary=$NM_PID
uri_a=$NM_URI
nm_wait_for 60 "initial sync" in_sync "$a"
[[ $(field "$a" sync_decision) == full ]] || nm_fail "first pairing: decision $(field "$a" sync_decision)"
nm_wait_status 10 "$b" disk UpToDate
[[ $(field "$a" current_gen) == "$(field "$b" current_gen)" ]] ||
  nm_fail "after the initial sync the generations differ"
nm_log "1. initial full resync done; both at generation $(field "$a" current_gen)"

# ---- 2. standby outage, interrupted resync, resume ---------------------------------------------
gen_before=$(field "$a" current_gen)
kill9 "$standby"
fio_window "$uri_a" $((32 * mib))
nm_wait_status 10 "$a" peer_disk Outdated
gen_after=$(field "$a" current_gen)
[[ $gen_after != "$gen_before" ]] || nm_fail "no new generation after writing without the peer"
marked=$(field "$a" marked_bytes)
((marked > 0 && marked <= window)) || nm_fail "marked ${marked} bytes after a ${window}-byte window"
nm_log "2. standby down: ${marked} bytes marked; generation ${gen_before} -> ${gen_after}"

resynced0=$(field "$a" resynced_bytes_total)
start_standby "$b" b "$port_b" a "$port_a"
standby=$NM_PID
nm_wait_for 20 "the resync to start" nm_status_is "$a" connection connected
[[ $(field "$a" sync_decision) == incremental ]] || nm_fail "after the outage: $(field "$a" sync_decision)"
nm_wait_for 30 "4 MiB resynced" nm_status_ge "$a" resync_done_bytes $((4 * mib))
first_total=$(field "$a" resync_total_bytes)
kill9 "$standby"
nm_wait_for 10 "the primary to see the standby gone" nm_status_is_not "$a" connection connected
left=$(field "$a" marked_bytes)
((left < first_total)) || nm_fail "interrupted resync: ${left} bytes still marked of ${first_total}"
nm_log "   resync interrupted with ${left} of ${first_total} bytes left"
start_standby "$b" b "$port_b" a "$port_a"
standby=$NM_PID
nm_wait_for 60 "the resumed resync" in_sync "$a"
second_total=$(field "$a" resync_total_bytes)
((second_total < first_total)) || nm_fail "the resync restarted (${second_total} >= ${first_total})"
resynced=$(($(field "$a" resynced_bytes_total) - resynced0))
((resynced <= window + 4 * mib)) ||
  nm_fail "resynced ${resynced} bytes for a ${window}-byte outage window"
rate_seen=$(field "$a" resync_rate_bytes_per_s)
((rate_seen <= rate * 3 / 2)) || nm_fail "resync ran at ${rate_seen} B/s with --resync-rate ${rate}"
nm_wait_status 10 "$b" disk UpToDate
same_files "after the outage"
nm_log "   resumed: ${resynced} bytes resynced in all (volume: $((volume_mib * mib))), at most" \
  "${rate_seen} B/s; files identical"

# ---- 3. primary crash under load ---------------------------------------------------------------
fio_load_start "$a" "$uri_a" $((64 * mib))
kill9 "$primary"
kill "$FIO_PID" 2>/dev/null || true
nm_wait_exit "$FIO_PID" 20 || true
gen_crash=$(field "$b" current_gen)
start_primary "$a" "$sock_a" a "$port_a" b "$port_b"
primary=$NM_PID
nm_wait_for 60 "the crash resync" in_sync "$a"
[[ $(field "$a" sync_decision) == incremental ]] || nm_fail "after the crash: $(field "$a" sync_decision)"
[[ $(field "$a" current_gen) == "$gen_crash" ]] || nm_fail "the restarted primary changed generation"
total=$(field "$a" resync_total_bytes)
((total > 0 && total <= window)) || nm_fail "crash resync of ${total} bytes for a 16 MiB window"
same_files "after the primary crash"
nm_log "3. primary crash: ${total} marked bytes resynced on restart; files identical"

# ---- 4. failover and rejoin ---------------------------------------------------------------------
fio_load_start "$a" "$uri_a" $((96 * mib))
kill9 "$primary"
kill "$FIO_PID" 2>/dev/null || true
nm_wait_exit "$FIO_PID" 20 || true
nm_stop_clean "$standby" "the standby before its promotion"
start_primary "$b" "$sock_b" b "$port_b" a "$port_a"
new_primary=$NM_PID
fio_window "$NM_URI" $((128 * mib))
start_standby "$a" a "$port_a" b "$port_b"
old_primary=$NM_PID
nm_wait_for 60 "the old primary's rejoin" in_sync "$b"
[[ $(field "$b" sync_decision) == incremental ]] || nm_fail "rejoin: $(field "$b" sync_decision)"
total=$(field "$b" resync_total_bytes)
((total > 0 && total <= 2 * window)) || nm_fail "rejoin resynced ${total} bytes"
nm_wait_status 10 "$a" disk UpToDate
same_files "after the failover and rejoin"
nm_log "4. failover: the old primary rejoined with ${total} bytes resynced; files identical"

# ---- 5. split brain ----------------------------------------------------------------------------
# b is primary, a secondary. Stop a; b writes alone; stop b; a becomes primary and writes alone.
nm_stop_clean "$old_primary" "a as secondary"
fio_window "$NM_URI" $((160 * mib))
nm_stop_clean "$new_primary" "b as primary"
start_primary "$a" "$sock_a" a "$port_a" b "$port_b"
primary=$NM_PID
primary_log=$NM_LOG
fio_window "$NM_URI" $((192 * mib))
hash_b=$(nm_sha256 "$b")
start_standby "$b" b "$port_b" a "$port_a"
standby=$NM_PID
standby_log=$NM_LOG
nm_wait_for 20 "the primary to refuse" nm_status_is "$a" split_brain true
nm_wait_for 20 "the standby to refuse" nm_status_is "$b" split_brain true
[[ -n $(field "$a" sync_refusal) && -n $(field "$b" sync_refusal) ]] ||
  nm_fail "split brain without a reason in status"
grep -q "refusing to sync with b: split brain" "$primary_log" || nm_fail "primary log: no split brain"
grep -q "refusing primary a: split brain" "$standby_log" || nm_fail "standby log: no split brain"
nm_status_is "$a" connection connected && nm_fail "the primary connected despite split brain"
[[ $(nm_sha256 "$b") == "$hash_b" ]] || nm_fail "the refused standby's file changed"
nm_log "5. split brain refused on both sides: $(field "$a" sync_refusal)"

nm_stop_clean "$standby" "the refused standby"
"$NM_BIN" discard-changes --volume "$b" >"$NM_TMP/discard.out" 2>&1 ||
  { cat "$NM_TMP/discard.out" >&2; nm_fail "discard-changes failed"; }
nm_log "   operator: $(cat "$NM_TMP/discard.out")"
start_standby "$b" b "$port_b" a "$port_a"
standby=$NM_PID
nm_wait_for 60 "the rejoin after discard" in_sync "$a"
[[ $(field "$a" sync_decision) == incremental ]] || nm_fail "after discard: $(field "$a" sync_decision)"
nm_stop_clean "$primary" "the primary"
nm_stop_clean "$standby" "the standby"
same_files "after discarding b's changes"
nm_log "   b's changes discarded and overwritten incrementally; files identical"
nm_log "PASS"
