#!/usr/bin/env bash
# mirror_shutdown_handshake_test: a primary told to stop (SIGTERM) while it reconnects to its
# standby, between the sync decision and the first streamed frame, with a client write held by
# that handshake, loses nothing and leaves no difference unrecorded. The write must reach the
# standby once the handshake ends (or, had it failed, be recorded as one the standby lacks).
#
# Before the fix the shutdown completed held writes at once without the peer, then the handshake
# finished anyway: the link came up, the peer was marked UpToDate, the final FLUSH found it in
# sync and the write-intent bitmap was cleared, so the write was on the primary only and no
# restart would ever copy it (after a failover it was gone).
#
# How, for each --on-peer-loss policy: standby B; a withhold_proxy.py --ready-only between the
# primary and B; primary A in mode flush with --peer-timeout-ms 20000. Once in sync the proxy
# keeps the next handshake's Ready frame, and B is killed (SIGKILL) and restarted: the primary
# reconnects and waits for Ready. A raw-socket client writes 64 KiB of random data (held: the
# status shows held_writes 1); the primary gets SIGTERM and logs that it drains; then the proxy
# releases the Ready. The write must be answered without error, both daemons must exit 0, and
# the two files must be identical. Were they not, the pair is restarted without the proxy and
# given the chance to resync what its metadata records; the test fails if they still differ.
#
# On the old code the block case fails every time (the held write was answered ESHUTDOWN, then
# the final FLUSH, held by the handshake too, found the peer in sync once Ready came). The
# degrade case failed about one run in three: only when the Ready arrived before the final FLUSH
# had finished without the peer.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require python3 cmp
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lib_dir=$(cd "$here/../lib" && pwd)

cat >"$NM_TMP/write_client.py" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import nbd_client as nbd

c = nbd.Connection(unix_path=sys.argv[2])
c.connect()
c.sock.settimeout(60)
data = open(sys.argv[3], "rb").read()
r = c.write(1 << 20, data)
print(f"reply error {r.error}", flush=True)
sys.exit(0 if r.error == 0 else 1)
PY
nm_make_secret "$NM_TMP/secret"

run_case() {  # run_case ON_PEER_LOSS
  local policy=$1 port_a port_b port_proxy proxy client primary_log
  a=$NM_TMP/$policy-a.img
  b=$NM_TMP/$policy-b.img
  head -c $((8 << 20)) /dev/urandom >"$a"
  cp -- "$a" "$b"
  head -c $((64 << 10)) /dev/urandom >"$NM_TMP/w.bin"
  read -r port_a port_b port_proxy <<<"$(nm_free_ports 3)"
  python3 "$here/withhold_proxy.py" "$port_proxy" "$port_b" --ready-only \
    >"$NM_TMP/$policy-proxy.out" 2>&1 &
  proxy=$!
  nm_track_pid "$proxy"
  nm_wait_for 20 "the proxy to listen" grep -q '^listening' "$NM_TMP/$policy-proxy.out"

  start_standby() {
    NM_DAEMON_LABEL=standby-$policy nm_start_secondary "$b" --node b --listen "127.0.0.1:$port_b" \
      --peer "a=127.0.0.1:$port_a" --secret-file "$NM_TMP/secret"
    standby=$NM_PID
  }
  start_standby
  NM_DAEMON_LABEL=primary-$policy nm_start_primary "$a" "$NM_TMP/$policy.sock" --node a \
    --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:$port_proxy" \
    --secret-file "$NM_TMP/secret" --mode flush --skip-initial-sync --peer-timeout-ms 20000 \
    --on-peer-loss "$policy"
  primary=$NM_PID
  primary_log=$NM_LOG
  nm_wait_for 20 "the pair in sync" nm_peer_up_to_date "$a"

  kill -USR1 "$proxy"
  kill -KILL "$standby"
  wait "$standby" 2>/dev/null || true
  nm_untrack_pid "$standby"
  start_standby
  nm_wait_for 20 "the reconnect's handshake to wait for Ready" \
    grep -q '^kept Ready' "$NM_TMP/$policy-proxy.out"

  python3 "$NM_TMP/write_client.py" "$lib_dir" "$NM_TMP/$policy.sock" "$NM_TMP/w.bin" \
    >"$NM_TMP/$policy-client.out" 2>&1 &
  client=$!
  nm_track_pid "$client"
  nm_wait_status 10 "$a" held_writes 1
  nm_log "$policy: a write is held by the handshake; stopping the primary"

  kill -TERM "$primary"
  nm_wait_for 10 "the primary to start draining" grep -q 'signal 15: draining' "$primary_log"
  kill -USR2 "$proxy"
  nm_log "$policy: the proxy released the Ready"

  local client_rc=0 primary_rc=0
  wait "$client" || client_rc=$?
  nm_untrack_pid "$client"
  ((client_rc == 0)) ||
    nm_fail "$policy: the held write was not answered with success: $(cat "$NM_TMP/$policy-client.out")"
  nm_wait_exit "$primary" || primary_rc=$?
  ((primary_rc == 0)) || nm_fail "$policy: the primary exited with status $primary_rc"
  nm_stop_clean "$standby" standby
  kill -TERM "$proxy"
  wait "$proxy" 2>/dev/null || true
  nm_untrack_pid "$proxy"
  cmp -s -n $((64 << 10)) -i $((1 << 20)):0 -- "$a" "$NM_TMP/w.bin" ||
    nm_fail "$policy: the primary's copy lacks the acknowledged write"
  if ! cmp -s -- "$a" "$b"; then
    nm_log "$policy: the copies differ after the stop; restarting the pair to let it resync what it recorded"
    read -r port_a port_b <<<"$(nm_free_ports 2)"
    start_standby
    NM_DAEMON_LABEL=primary-$policy-again nm_start_primary "$a" "$NM_TMP/$policy-2.sock" \
      --node a --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:$port_b" \
      --secret-file "$NM_TMP/secret" --mode flush
    primary=$NM_PID
    nm_wait_for 60 "the pair in sync again" nm_peer_up_to_date "$a"
    nm_stop_clean "$primary" primary
    nm_stop_clean "$standby" standby
    cmp -- "$a" "$b" ||
      nm_fail "$policy: the standby lacks an acknowledged write and the metadata does not record it"
  fi
  nm_log "$policy: the held write is on both copies"
}

run_case degrade
run_case block
nm_log "PASS: a shutdown during a handshake kept the held write on both copies"
