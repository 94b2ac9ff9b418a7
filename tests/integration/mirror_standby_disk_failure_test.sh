#!/usr/bin/env bash
# mirror_standby_disk_failure_test: a standby whose disk fails a datasync leaves the mirror. The
# primary drops it and goes on serving (degraded); the standby refuses every new handshake
# until its daemon is restarted (a failed datasync is never retried into a success); restarted
# on a healthy disk it is resynced, and the copies end identical.
#
# How: 16 MiB volumes on loopback; standby B started with `--fault datasync` (every datasync on
# its volume fails), primary A in mode sync with --skip-initial-sync (the pair starts in sync,
# no datasync yet). A client writes 1 MiB of random data through A (nbdcopy): B's datasync
# fails, B answers with an error, A drops the link and completes the writes degraded, so
# nbdcopy succeeds. Then: B's status says disk Failed; B logs its refusal of A's next dial
# ("disk failed a datasync"); A's last_peer_error says so too and A never counts B connected.
# B is stopped (its exit status is logged, not checked: its final datasync fails too) and
# started again without the fault: A resyncs it, and after clean stops both files are equal
# and hold the data.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require cmp jq nbdcopy

a=$NM_TMP/a.img
b=$NM_TMP/b.img
nm_make_volume "$a" 16M
nm_make_volume "$b" 16M
head -c $((1 << 20)) /dev/urandom >"$NM_TMP/data.bin"
nm_make_secret "$NM_TMP/secret"
read -r port_a port_b <<<"$(nm_free_ports 2)"

start_b() {  # start_b [EXTRA ARGS...]
  NM_DAEMON_LABEL=standby nm_start_secondary "$b" --node b --listen "127.0.0.1:$port_b" \
    --peer "a=127.0.0.1:$port_a" --secret-file "$NM_TMP/secret" "$@"
  standby=$NM_PID
  standby_log=$NM_LOG
}

start_b --fault datasync
NM_DAEMON_LABEL=primary nm_start_primary "$a" "$NM_TMP/a.sock" --node a --mode sync \
  --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:$port_b" --secret-file "$NM_TMP/secret" \
  --skip-initial-sync
primary=$NM_PID
nm_wait_for 20 "A and B in sync" nm_peer_up_to_date "$a"

nbdcopy -- "$NM_TMP/data.bin" "$(nm_uri "$NM_TMP/a.sock")" ||
  nm_fail "nbdcopy into A failed: the standby's disk failure reached the client"
nm_wait_status 20 "$b" disk Failed
nm_wait_for 20 "B refusing A's next dial" grep -q "disk failed a datasync" "$standby_log"
refused() { [[ $(nm_status_field "$a" last_peer_error) == *"disk failed a datasync"* ]]; }
nm_wait_for 20 "A reporting the refusal" refused
nm_log "A's last_peer_error: $(nm_status_field "$a" last_peer_error)"
[[ $(nm_status_field "$a" connection) != connected ]] || nm_fail "A counts B as connected"
nm_status_ge "$a" degraded_writes 1 || nm_fail "no write was degraded"
nm_wait_for 10 "a second refusal" \
  bash -c "(( \$(grep -c 'disk failed a datasync' '$standby_log') >= 2 ))"
[[ $(nm_status_field "$a" connection) != connected ]] || nm_fail "A counts B as connected"
nm_log "B's failed disk keeps A out: $(grep -c 'disk failed a datasync' "$standby_log") refusals"

rc=0
nm_stop "$standby" || rc=$?
nm_log "standby with the failed disk stopped (exit status ${rc})"
start_b
nm_wait_for 30 "A resyncing B" nm_peer_up_to_date "$a"
nm_wait_status 10 "$b" disk UpToDate
nm_stop_clean "$primary" "primary"
nm_stop_clean "$standby" "standby"
cmp -- "$a" "$b" || nm_fail "A and B differ after the resync and clean stops"
cmp -n $((1 << 20)) -- "$NM_TMP/data.bin" "$a" || nm_fail "A lacks the client's data"
nm_log "B restarted on a healthy disk, resynced; files identical"
nm_log "PASS"
