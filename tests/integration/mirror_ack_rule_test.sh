#!/usr/bin/env bash
# mirror_ack_rule_test: the primary never answers a WRITE (or, in mode flush, a FLUSH) before
# the standby has confirmed it, or before the standby has been declared lost and that recorded;
# under --on-peer-loss block, not even then.
#
# How: each case runs a fresh pair of daemons on loopback (64 MiB volumes; standby node b,
# primary node a exporting NBD on a Unix socket) and waits for the initial resync. A small
# client (ack_probe.py) keeps one NBD connection open and sends one request at a time, on
# command, printing the moment its reply arrives. The standby is frozen with SIGSTOP (its
# kernel still accepts the bytes; it just never answers), or, in the proxy case, a TCP proxy
# between the two daemons (withhold_proxy.py) holds back every byte the standby sends.
#   A (sync, flush), --peer-timeout-ms 10000: standby stopped, a 64 KiB WRITE gets no reply
#     for 2 s, while it is in the primary's own file; after SIGCONT the reply comes within
#     5 s with no error, the data is in the standby's file, and nothing was degraded. The same
#     for a FLUSH in mode flush; in mode sync the FLUSH is answered while the standby is still
#     stopped (the write it covers was durable on both before its reply, so it asks the peer
#     nothing).
#   B (sync, flush), primary --peer-timeout-ms 2000 (degrade): standby stopped, a WRITE gets
#     no reply for 1.4 s (the link cannot be declared lost sooner: the standby, with a 1 s
#     timeout of its own, sends heartbeats every 250 ms), then an OK reply once the peer is
#     lost: the primary's status shows connection not connected, peer_disk Outdated,
#     degraded_writes >= 1. After SIGCONT the standby reconnects and is resynced (peer_disk
#     UpToDate again) and holds the degraded write.
#   block (sync), --peer-timeout-ms 2000 --on-peer-loss block: standby stopped, a WRITE still
#     has no reply 2 s after the peer was declared lost (held, held_writes >= 1); after SIGCONT
#     the standby reconnects and the reply comes within 20 s with no error, with the standby
#     connected and holding the data; the resync then completes (peer_disk UpToDate).
#   block-stop: the same, but SIGTERM the primary while the write is held: it must exit
#     within 15 s, the write must not get an OK reply (an error, or the connection closes), and
#     the log must say the standby is not in sync.
#   proxy (sync), --peer-timeout-ms 10000: the proxy withholds standby->primary bytes; a WRITE
#     reaches the standby's file but gets no reply for 2 s; once the proxy releases the bytes,
#     the reply comes within 5 s.
#   ack-timeout (sync), --peer-timeout-ms 1000, primary --peer-ack-timeout-ms 2000 (500 is
#     refused at start, exit 2, nothing created): the proxy
#     withholds only the standby's Acks; its heartbeats still come, as from a standby whose disk
#     hangs. A WRITE gets no reply for 1.9 s, then an OK reply (at least 2 s after it was sent)
#     once the primary has declared the peer lost for acknowledging nothing (logged; degraded);
#     once the proxy lets Acks through again the standby is resynced and holds the write.
# Every case ends with clean stops (primary, then standby, both exit 0) and byte-identical
# backing files, and checks the written data is in both.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require python3 cmp mkfifo
nm_python_with socket

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
secret=$NM_TMP/secret
nm_make_secret "$secret"
PROBE_SEQ=0

# ---- helpers --------------------------------------------------------------------------------

# start_pair NAME MODE [PRIMARY AND STANDBY ARGS...]: fresh volumes, a standby and a primary
# (PRIMARY_ARGS and STANDBY_ARGS, if set, are words for one of them only),
# and waits for the initial resync. PRIMARY_PORT and STANDBY_PORT (if set) are their --listen
# ports, and PEER_PORT (if set) where the primary dials instead of the standby (the proxy). Sets A B PRIMARY STANDBY
# PRIMARY_LOG SOCK PORT_B.
start_pair() {
  local name=$1 mode=$2
  shift 2
  A=$NM_TMP/$name-a.img
  B=$NM_TMP/$name-b.img
  SOCK=$NM_TMP/$name.sock
  nm_make_volume "$A" 64M
  nm_make_volume "$B" 64M
  local ports port_a
  ports=$(nm_free_ports 2)
  read -r port_a PORT_B <<<"$ports"
  port_a=${PRIMARY_PORT:-$port_a}
  PORT_B=${STANDBY_PORT:-$PORT_B}
  # shellcheck disable=SC2086  # PRIMARY_ARGS and STANDBY_ARGS are word lists
  NM_DAEMON_LABEL=$name-standby nm_start_secondary "$B" --node b --listen "127.0.0.1:$PORT_B" \
    --peer "a=127.0.0.1:$port_a" --secret-file "$secret" "$@" ${STANDBY_ARGS:-}
  STANDBY=$NM_PID
  # shellcheck disable=SC2086
  NM_DAEMON_LABEL=$name-primary nm_start_primary "$A" "$SOCK" --node a --mode "$mode" \
    --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:${PEER_PORT:-$PORT_B}" \
    --secret-file "$secret" "$@" ${PRIMARY_ARGS:-}
  PRIMARY=$NM_PID
  PRIMARY_LOG=$NM_LOG
  nm_wait_status 30 "$A" peer_disk UpToDate
  nm_wait_status 10 "$B" disk UpToDate
  nm_log "${name}: pair up (mode ${mode}; both: $*; primary: ${PRIMARY_ARGS:-}; standby: ${STANDBY_ARGS:-})"
}

# stop_pair_and_compare NAME: clean stops, then the two files must be identical.
stop_pair_and_compare() {
  nm_stop_clean "$PRIMARY" "$1 primary"
  nm_stop_clean "$STANDBY" "$1 standby"
  cmp "$A" "$B" || nm_fail "$1: the two backing files differ after clean stops"
  rm -f "$A" "$B"
}

# start_probe: an ack_probe.py connection to $SOCK, fed through a FIFO on fd $PROBE_FD; its
# events go to $PROBE_OUT.
start_probe() {
  PROBE_SEQ=$((PROBE_SEQ + 1))
  local fifo=$NM_TMP/probe-$PROBE_SEQ.in
  PROBE_OUT=$NM_TMP/probe-$PROBE_SEQ.out
  mkfifo "$fifo"
  "$NM_PYTHON" "$here/ack_probe.py" "$SOCK" <"$fifo" >"$PROBE_OUT" 2>&1 &
  PROBE_PID=$!
  nm_track_pid "$PROBE_PID"
  exec {PROBE_FD}>"$fifo"
  nm_wait_for 20 "the probe to connect" grep -q '^ready' "$PROBE_OUT"
}

probe_send() { echo "$*" >&"$PROBE_FD"; }

stop_probe() {
  probe_send quit
  local rc=0
  nm_wait_exit "$PROBE_PID" 10 || rc=$?
  exec {PROBE_FD}>&-
  ((rc == 0)) || { cat "$PROBE_OUT" >&2; nm_fail "the probe exited with status ${rc}"; }
}

has_reply() { grep -qE "^(reply|closed|timeout) $1( |$)" "$PROBE_OUT"; }

# expect_no_reply N MS WHAT: request N must stay unanswered for MS milliseconds from now.
expect_no_reply() {
  local deadline=$(($(nm_now_ms) + $2))
  while (($(nm_now_ms) < deadline)); do
    if has_reply "$1"; then
      cat "$PROBE_OUT" >&2
      nm_fail "$3: request $1 was answered while the standby could not have confirmed it"
    fi
    sleep 0.02
  done
}

# expect_reply N TIMEOUT_S WHAT: request N must be answered OK within TIMEOUT_S; prints its
# latency in ms. On a timeout the failure shows the primary's status.
expect_reply() {
  local deadline=$(($(nm_now_ms) + $2 * 1000))
  until has_reply "$1"; do
    (($(nm_now_ms) < deadline)) ||
      nm_fail "$3: no reply to request $1 within $2 s; primary status: $(nm_status_json "$A")"
    sleep 0.05
  done
  local line
  line=$(grep -E "^(reply|closed|timeout) $1( |$)" "$PROBE_OUT")
  [[ $line == "reply $1 error=0 "* ]] || nm_fail "$3: request $1 ended with '${line}'"
  echo "${line##*ms=}"
}

stop_standby_process() {
  kill -STOP "$STANDBY"
  nm_wait_for 5 "the standby to be stopped" is_stopped "$STANDBY"
}
is_stopped() { [[ $(awk '{print $3}' "/proc/$1/stat") == T ]]; }

# has_data FILE OFFSET DATA: FILE holds DATA at OFFSET.
has_data() { cmp -s -n "$(stat -c %s "$3")" -i "0:$2" "$3" "$1"; }

make_data() { head -c "$2" /dev/urandom >"$1"; }

# ---- A: no reply while the standby is stopped, well within the peer timeout ------------------
case_a() {
  local mode=$1 name=a-$1 ms
  start_pair "$name" "$mode" --peer-timeout-ms 10000
  start_probe
  make_data "$NM_TMP/$name.data" 65536
  local offset=$((1 << 20))

  stop_standby_process
  probe_send write "$offset" "$NM_TMP/$name.data"
  nm_wait_for 5 "the probe to send the write" grep -q '^sent 1' "$PROBE_OUT"
  expect_no_reply 1 2000 "$name write"
  nm_wait_for 10 "the write in the primary's own file" has_data "$A" "$offset" "$NM_TMP/$name.data"
  has_reply 1 && nm_fail "${name}: the write was answered while the standby was stopped"
  nm_status_is "$A" connection connected ||
    nm_fail "${name}: the primary gave up on the standby within 2 s of a 10 s timeout"
  nm_status_ge "$A" writes_in_flight 1 || nm_fail "${name}: the write is not in flight"
  kill -CONT "$STANDBY"
  ms=$(expect_reply 1 5 "$name write")
  has_data "$B" "$offset" "$NM_TMP/$name.data" ||
    nm_fail "${name}: the write was acknowledged but is not in the standby's file"
  nm_log "${name}: WRITE unanswered for 2 s with the standby stopped; answered ${ms} ms after it was sent, after SIGCONT"

  stop_standby_process
  probe_send flush
  nm_wait_for 5 "the probe to send the flush" grep -q '^sent 2' "$PROBE_OUT"
  if [[ $mode == sync ]]; then
    # The write it covers was durable on both before its reply: nothing is left for the peer.
    ms=$(expect_reply 2 5 "$name flush")
    kill -CONT "$STANDBY"
    nm_log "${name}: FLUSH answered with the standby stopped (${ms} ms): mode sync asks the peer nothing more"
  else
    expect_no_reply 2 2000 "$name flush"
    kill -CONT "$STANDBY"
    ms=$(expect_reply 2 5 "$name flush")
    nm_log "${name}: FLUSH unanswered for 2 s with the standby stopped; answered after SIGCONT (${ms} ms)"
  fi

  nm_status_is "$A" degraded_writes 0 || nm_fail "${name}: a write was degraded"
  nm_status_is "$A" connection connected || nm_fail "${name}: the link dropped"
  stop_probe
  stop_pair_and_compare "$name"
  nm_log "${name}: files identical"
}

# ---- B: degrade — the reply waits for the peer to be declared lost -------------------------
case_b() {
  local mode=$1 name=b-$1 ms
  # The standby's heartbeats every 250 ms (a quarter of its own 1 s timeout, still twice the
  # primary's 500 ms heartbeat interval) mean its last frame before SIGSTOP is recent, so the
  # primary cannot declare it lost much sooner than 2 s after the stop.
  PRIMARY_ARGS="--peer-timeout-ms 2000" STANDBY_ARGS="--peer-timeout-ms 1000" \
    start_pair "$name" "$mode"
  start_probe
  make_data "$NM_TMP/$name.data" 65536
  local offset=$((2 << 20))

  stop_standby_process
  probe_send write "$offset" "$NM_TMP/$name.data"
  nm_wait_for 5 "the probe to send the write" grep -q '^sent 1' "$PROBE_OUT"
  expect_no_reply 1 1400 "$name write"
  ms=$(expect_reply 1 10 "$name write")
  ((ms >= 1400)) || nm_fail "${name}: the write was answered ${ms} ms after it was sent"
  nm_status_is_not "$A" connection connected ||
    nm_fail "${name}: a write was answered while the primary still counts the standby connected"
  nm_status_is "$A" peer_disk Outdated ||
    nm_fail "${name}: peer_disk is '$(nm_status_field "$A" peer_disk)', expected Outdated"
  nm_status_ge "$A" degraded_writes 1 || nm_fail "${name}: degraded_writes is not >= 1"
  grep -q "peer b lost" "$PRIMARY_LOG" || nm_fail "${name}: the primary did not log the peer lost"
  nm_log "${name}: WRITE answered ${ms} ms after it was sent, only once the standby was declared lost (Outdated, degraded)"

  kill -CONT "$STANDBY"
  nm_wait_status 30 "$A" connection connected
  nm_wait_status 30 "$A" peer_disk UpToDate
  nm_wait_status 10 "$B" disk UpToDate
  has_data "$B" "$offset" "$NM_TMP/$name.data" ||
    nm_fail "${name}: after the resync the standby lacks the degraded write"
  nm_log "${name}: standby back and resynced"
  stop_probe
  stop_pair_and_compare "$name"
  nm_log "${name}: files identical"
}

# ---- block: the reply waits for the standby to come back, even past the timeout -------------
case_block() {
  local name=block ms
  start_pair "$name" sync --peer-timeout-ms 2000 --on-peer-loss block
  start_probe
  make_data "$NM_TMP/$name.data" 65536
  local offset=$((3 << 20))

  stop_standby_process
  probe_send write "$offset" "$NM_TMP/$name.data"
  nm_wait_for 5 "the probe to send the write" grep -q '^sent 1' "$PROBE_OUT"
  local sent_at
  sent_at=$(nm_now_ms)
  nm_wait_for 10 "the primary to declare the standby lost" nm_status_is_not "$A" connection connected
  expect_no_reply 1 2000 "$name write"
  nm_log "${name}: WRITE still unanswered $(($(nm_now_ms) - sent_at)) ms after it was sent, standby lost"
  nm_status_ge "$A" held_writes 1 || nm_fail "${name}: held_writes is not >= 1"
  nm_status_is "$A" degraded_writes 0 || nm_fail "${name}: a write was degraded under block"

  kill -CONT "$STANDBY"
  ms=$(expect_reply 1 20 "$name write after SIGCONT, reconnect and resync")
  # The reply may come once the standby has this write (re-sent on reconnect) or once the
  # resync has copied it; either way the standby must be back and must hold the data.
  nm_status_is "$A" connection connected ||
    nm_fail "${name}: the held write was answered while the standby was not connected"
  has_data "$B" "$offset" "$NM_TMP/$name.data" ||
    nm_fail "${name}: the held write was answered but is not in the standby's file"
  nm_wait_status 30 "$A" peer_disk UpToDate
  nm_status_is "$A" degraded_writes 0 || nm_fail "${name}: a write was degraded under block"
  nm_log "${name}: answered ${ms} ms after it was sent, once the standby was back with the data; resync done"
  stop_probe
  stop_pair_and_compare "$name"
  nm_log "${name}: files identical"
}

# ---- block-stop: SIGTERM while a write is held ends the daemon, not with an OK reply -------
case_block_stop() {
  local name=block-stop
  start_pair "$name" sync --peer-timeout-ms 2000 --on-peer-loss block
  start_probe
  make_data "$NM_TMP/$name.data" 65536
  stop_standby_process
  probe_send write $((5 << 20)) "$NM_TMP/$name.data"
  nm_wait_for 5 "the probe to send the write" grep -q '^sent 1' "$PROBE_OUT"
  nm_wait_for 10 "the primary to declare the standby lost" nm_status_is_not "$A" connection connected
  nm_wait_for 5 "the write to be held" nm_status_ge "$A" held_writes 1
  has_reply 1 && nm_fail "${name}: the held write was answered"
  local rc=0 deadline=$(($(nm_now_ms) + 15000))
  kill -TERM "$PRIMARY"
  while nm_alive "$PRIMARY"; do
    (($(nm_now_ms) < deadline)) ||
      nm_fail "${name}: the primary did not exit within 15 s of SIGTERM while a write was held"
    sleep 0.05
  done
  nm_wait_exit "$PRIMARY" 1 || rc=$?
  nm_wait_for 5 "the probe to see the end of its request" has_reply 1
  local line
  line=$(grep -E "^(reply|closed|timeout) 1( |$)" "$PROBE_OUT")
  [[ $line != "reply 1 error=0 "* ]] ||
    nm_fail "${name}: the held write was answered OK at shutdown, without the standby"
  grep -q "not in sync" "$PRIMARY_LOG" ||
    nm_fail "${name}: the primary did not record the standby out of sync at shutdown"
  nm_log "${name}: SIGTERM with a held write: the primary exited (status ${rc}); the write ended '${line}'"
  exec {PROBE_FD}>&-  # End of input: the probe exits.
  nm_wait_exit "$PROBE_PID" 10 || true
  kill -CONT "$STANDBY"
  nm_stop_clean "$STANDBY" "$name standby"
  rm -f "$A" "$B"
}

# ---- proxy: the standby has the write, but its acknowledgement is held back -----------------
# start_proxy OUT [--acks-only]: a withhold_proxy.py whose output goes to OUT. It dials the
# standby's port, so the ports are chosen here: PROXY_PORT (where the primary dials),
# PROXIED_STANDBY_PORT, PROXIED_PRIMARY_PORT, for start_pair. Sets PROXY (its pid).
start_proxy() {
  local out=$1 ports
  shift
  ports=$(nm_free_ports 3)
  read -r PROXY_PORT PROXIED_STANDBY_PORT PROXIED_PRIMARY_PORT <<<"$ports"
  "$NM_PYTHON" "$here/withhold_proxy.py" "$PROXY_PORT" "$PROXIED_STANDBY_PORT" "$@" >"$out" 2>&1 &
  PROXY=$!
  nm_track_pid "$PROXY"
  nm_wait_for 20 "the proxy to listen" grep -q '^listening' "$out"
}

# withhold_and_write PROXY OUT OFFSET DATA: the proxy starts withholding, the probe sends request
# 1 (WRITE DATA at OFFSET), and it reaches the standby's file. Sets SENT_AT (ms).
withhold_and_write() {
  kill -USR1 "$1"
  nm_wait_for 5 "the proxy to withhold" grep -q '^withholding' "$2"
  probe_send write "$3" "$4"
  nm_wait_for 5 "the probe to send the write" grep -q '^sent 1' "$PROBE_OUT"
  SENT_AT=$(nm_now_ms)
  nm_wait_for 5 "the write to reach the standby's file" has_data "$B" "$3" "$4"
}

case_proxy() {
  local name=proxy ms
  start_proxy "$NM_TMP/proxy.out"
  local proxy=$PROXY
  PEER_PORT=$PROXY_PORT STANDBY_PORT=$PROXIED_STANDBY_PORT PRIMARY_PORT=$PROXIED_PRIMARY_PORT \
    start_pair "$name" sync --peer-timeout-ms 10000
  start_probe
  make_data "$NM_TMP/$name.data" 65536
  local offset=$((4 << 20))

  withhold_and_write "$proxy" "$NM_TMP/proxy.out" "$offset" "$NM_TMP/$name.data"
  local sent_at=$SENT_AT
  has_reply 1 && nm_fail "${name}: the write was answered while its acknowledgement was withheld"
  expect_no_reply 1 $((2000 - ($(nm_now_ms) - sent_at))) "$name write"
  nm_status_is "$A" connection connected || nm_fail "${name}: the primary dropped the link"
  kill -USR2 "$proxy"
  ms=$(expect_reply 1 5 "$name write after the proxy released")
  nm_log "${name}: WRITE in the standby's file but unanswered for 2 s while its ack was withheld; answered after release (${ms} ms)"
  nm_status_is "$A" degraded_writes 0 || nm_fail "${name}: a write was degraded"
  stop_probe
  stop_pair_and_compare "$name"
  nm_stop "$proxy" 10 || true
  nm_log "${name}: files identical"
}

# ---- ack-timeout: heartbeats come, acknowledgements do not (a standby whose disk hangs) ------
case_ack_timeout() {
  local name=ack-timeout ms rc=0
  # Looked at every half of it: a few hundred ms would drop a healthy standby in a busy moment.
  nm_make_volume "$NM_TMP/refused.img" 1M
  "$NM_BIN" run --volume "$NM_TMP/refused.img" --primary --nbd "unix:$NM_TMP/refused.sock" \
    --peer "b=127.0.0.1:1" --peer-ack-timeout-ms 500 >"$NM_TMP/refused.log" 2>&1 || rc=$?
  ((rc == 2)) || nm_fail "--peer-ack-timeout-ms 500: exit status $rc, expected 2"
  grep -q "0 (never) or at least 1000" "$NM_TMP/refused.log" ||
    nm_fail "--peer-ack-timeout-ms 500: no clear refusal: $(cat "$NM_TMP/refused.log")"
  [[ ! -e $NM_TMP/refused.img.nbdmirror-meta ]] || nm_fail "the refused start created metadata"
  start_proxy "$NM_TMP/ack-proxy.out" --acks-only
  local proxy=$PROXY
  PEER_PORT=$PROXY_PORT STANDBY_PORT=$PROXIED_STANDBY_PORT PRIMARY_PORT=$PROXIED_PRIMARY_PORT \
    PRIMARY_ARGS="--peer-ack-timeout-ms 2000" start_pair "$name" sync --peer-timeout-ms 1000
  start_probe
  make_data "$NM_TMP/$name.data" 65536
  local offset=$((6 << 20))

  withhold_and_write "$proxy" "$NM_TMP/ack-proxy.out" "$offset" "$NM_TMP/$name.data"
  local sent_at=$SENT_AT
  expect_no_reply 1 $((1900 - ($(nm_now_ms) - sent_at))) "$name write"
  ms=$(expect_reply 1 10 "$name write")
  ((ms >= 2000)) || nm_fail "${name}: the write was answered ${ms} ms after it was sent"
  grep -q "acknowledged nothing for 2000 ms" "$PRIMARY_LOG" ||
    nm_fail "${name}: the primary did not log why it dropped the standby"
  nm_status_ge "$A" degraded_writes 1 || nm_fail "${name}: degraded_writes is not >= 1"
  nm_log "${name}: heartbeats kept coming, Acks did not: WRITE answered ${ms} ms after it was sent, once the standby was declared lost (degraded)"

  kill -USR2 "$proxy"
  nm_wait_for 5 "the proxy to release" grep -q '^released' "$NM_TMP/ack-proxy.out"
  nm_wait_status 30 "$A" connection connected
  nm_wait_status 30 "$A" peer_disk UpToDate
  nm_wait_status 10 "$B" disk UpToDate
  has_data "$B" "$offset" "$NM_TMP/$name.data" ||
    nm_fail "${name}: after the resync the standby lacks the write"
  nm_log "${name}: Acks through again, standby resynced"
  stop_probe
  stop_pair_and_compare "$name"
  nm_stop "$proxy" 10 || true
  nm_log "${name}: files identical"
}

# MIRROR_ACK_CASES picks cases when debugging (default: all, in this order).
for c in ${MIRROR_ACK_CASES:-a-sync a-flush b-sync b-flush proxy ack-timeout block block-stop}; do
  case $c in
    a-*) case_a "${c#a-}" ;;
    b-*) case_b "${c#b-}" ;;
    proxy) case_proxy ;;
    ack-timeout) case_ack_timeout ;;
    block) case_block ;;
    block-stop) case_block_stop ;;
    *) nm_fail "unknown case ${c}" ;;
  esac
done
nm_log "PASS"
