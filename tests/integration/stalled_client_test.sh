#!/usr/bin/env bash
# stalled_client_test: clients that stop in the middle of the protocol cannot starve the others
# of the payload buffers every connection shares (--buffer-mib, 64 MiB here).
#
# How, with raw-socket clients (tests/lib/nbd_client.py) on a standalone export of 256 MiB
# (after checking that a stall timeout of 5 ms is refused with exit 2, creating nothing):
#   1. --client-stall-timeout-ms 0 (never drop anyone): a client pipelines 64 READs of 1 MiB and
#      never reads a reply. Its replies fill the socket and then wait in pool buffers; without a
#      per-connection share it would hold all 64 MiB and every other client would wait
#      forever. Once the server holds 32 MiB for it (`buffer_in_use_bytes` in status), a second
#      client must WRITE 4 KiB, READ it back and FLUSH (10 s socket timeout: no reply is a
#      failure), and the pool must hold no more than the stalled client's share plus those
#      4 KiB. Then the stalled client goes and the daemon stops cleanly.
#   2. --client-stall-timeout-ms 2000: a stalled reader as above plus two clients that each send
#      the header of a 32 MiB WRITE and no payload. Together they fill the pool (each within its
#      share), so only the stall timeout can serve a fourth client: its WRITE, READ and FLUSH
#      must complete within its 10 s timeout, the writers' sockets be closed by the server, the
#      log name both kinds of stall, and the pool be empty afterwards.
#   3. --client-stall-timeout-ms 1000: a slow but steady reader is not a stalled one. A client
#      pipelines 16 READs of 1 MiB and reads its replies at about 2 MiB/s (32 KiB at a time);
#      the server sends them in batches of several MiB, each taking seconds. Every reply must
#      arrive, whole and without error, and the log must name no stall. (The watch used to count
#      only whole batches sent, so such a reader was dropped halfway through one.)

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require python3 jq
lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)

volume=$NM_TMP/volume.img
nm_make_volume "$volume" 256M
sock=$NM_TMP/nbd.sock
MIB=$((1 << 20))

cat >"$NM_TMP/clients.py" <<'PY'
import struct, sys, time
sys.path.insert(0, sys.argv[1])
import nbd_client as nbd

sock, role = sys.argv[2], sys.argv[3]
MIB = 1 << 20

def fail(msg):
    print("  " + msg, file=sys.stderr)
    sys.exit(1)

if role == "stalled-reader":
    c = nbd.Connection(unix_path=sock, timeout=30)
    c.connect()
    for i in range(64):
        c.send_request(nbd.CMD_READ, i * MIB, MIB)
    open(sys.argv[4], "w").close()
    time.sleep(600)  # Never reads; the test stops this process.
elif role == "stalled-writer":
    c = nbd.Connection(unix_path=sock, timeout=30)
    c.connect()
    c.send_request(nbd.CMD_WRITE, 128 * MIB, 32 * MIB)  # The header only, no payload.
    open(sys.argv[4], "w").close()
    c.sock.settimeout(None)
    got = c.sock.recv(1)  # Returns b"" once the server drops this client.
    sys.exit(0 if got == b"" else 3)
elif role == "slow-reader":
    c = nbd.Connection(unix_path=sock, timeout=30)
    c.connect()
    fast_recv_exact = c.recv_exact
    def slow_recv_exact(n):  # At most 32 KiB per 15 ms: about 2 MiB/s.
        parts = []
        while n > 0:
            piece = fast_recv_exact(min(n, 32 << 10))
            parts.append(piece)
            n -= len(piece)
            time.sleep(0.015)
        return b"".join(parts)
    c.recv_exact = slow_recv_exact
    for i in range(16):
        c.send_request(nbd.CMD_READ, i * MIB, MIB)
    try:
        for i in range(16):
            r = c.read_reply()
            if r.error != 0 or len(r.data) != MIB:
                fail(f"READ reply {i}: error {r.error}, {len(r.data)} bytes")
    except (ConnectionError, nbd.ProtocolError, struct.error) as e:
        fail(f"the server dropped a slow but steady reader: {e!r}")
    c.disconnect()
else:  # "good": a normal client must be served.
    c = nbd.Connection(unix_path=sock, timeout=10)
    c.connect()
    data = bytes(range(256)) * 16
    try:
        r = c.write(200 * MIB, data)
        if r.error != 0:
            fail(f"WRITE: error {r.error}")
        r = c.read(200 * MIB, len(data))
        if r.error != 0 or r.data != data:
            fail("READ back: wrong data or error")
        r = c.flush()
        if r.error != 0:
            fail(f"FLUSH: error {r.error}")
    except TimeoutError:
        fail("no reply within 10 s: the other clients starved this one")
    c.disconnect()
PY

in_use() { nm_status_field "$volume" buffer_in_use_bytes; }
in_use_at_least() { (($(in_use) >= $1)); }

# start_stalled ROLE NAME: starts a stalled client and waits until its requests are sent.
start_stalled() {
  python3 "$NM_TMP/clients.py" "$lib_dir" "$sock" "$1" "$NM_TMP/$2.ready" &
  STALLED_PID=$!
  nm_track_pid "$STALLED_PID"
  nm_wait_for 20 "$2's requests sent" test -e "$NM_TMP/$2.ready"
}

# ---- 0: a timeout of a few milliseconds is refused (the watch would spin) --------------------
rc=0
"$NM_BIN" run --volume "$volume" --primary --nbd "unix:$sock" --client-stall-timeout-ms 5 \
  >"$NM_TMP/refused.log" 2>&1 || rc=$?
((rc == 2)) || nm_fail "--client-stall-timeout-ms 5: exit status $rc, expected 2"
grep -q "0 (never) or at least 100" "$NM_TMP/refused.log" ||
  nm_fail "--client-stall-timeout-ms 5: no clear refusal: $(cat "$NM_TMP/refused.log")"
[[ ! -e $volume.nbdmirror-meta ]] || nm_fail "the refused start created metadata"

# ---- 1: no timeout; one client that stops reading its replies ------------------------------
nm_start_primary "$volume" "$sock" --buffer-mib 64 --client-stall-timeout-ms 0
daemon=$NM_PID
start_stalled stalled-reader reader1
reader=$STALLED_PID
nm_wait_for 20 "32 MiB held for the stalled reader" in_use_at_least $((32 * MIB))
python3 "$NM_TMP/clients.py" "$lib_dir" "$sock" good ||
  nm_fail "a client was not served next to one that stopped reading (above)"
held=$(in_use)
((held <= 32 * MIB + 4096)) ||
  nm_fail "$held bytes in use: the stalled reader holds more than its share (32 MiB)"
nm_log "part 1: served next to a stalled reader holding $((held / MIB)) MiB"
nm_kill_pid "$reader"
nm_untrack_pid "$reader"
nm_stop_clean "$daemon" daemon

# ---- 2: a 2 s stall timeout; a stalled reader and two unsent WRITE payloads -----------------
nm_start_primary "$volume" "$sock" --buffer-mib 64 --client-stall-timeout-ms 2000
daemon=$NM_PID
log=$NM_LOG
start_stalled stalled-reader reader2
writers=()
for w in 1 2; do
  start_stalled stalled-writer "writer$w"
  writers+=("$STALLED_PID")
done
nm_wait_for 20 "the pool full" in_use_at_least $((64 * MIB))
python3 "$NM_TMP/clients.py" "$lib_dir" "$sock" good ||
  nm_fail "a client was not served once the stalled clients should have been dropped (above)"
for pid in "${writers[@]}"; do
  rc=0
  nm_wait_exit "$pid" 20 || rc=$?
  ((rc == 0)) || nm_fail "stalled writer $pid: exit $rc (expected the server to close its socket)"
done
dropped=$(nm_count_in_log "$log" "a WRITE payload left unsent")
((dropped == 2)) || nm_fail "$dropped log lines about clients dropped for an unsent payload, expected 2"
replies=$(nm_count_in_log "$log" "its replies left unread")
((replies == 1)) || nm_fail "$replies log lines about a client dropped for unread replies, expected 1"
nm_wait_for 20 "the pool empty again" test "$(in_use)" = 0
nm_log "part 2: two stalled writers and a stalled reader dropped, a fourth client served, pool empty"
nm_stop_clean "$daemon" daemon

# ---- 3: a 1 s stall timeout; a reader that is slow but never stops --------------------------
nm_start_primary "$volume" "$sock" --buffer-mib 64 --client-stall-timeout-ms 1000
daemon=$NM_PID
log=$NM_LOG
python3 "$NM_TMP/clients.py" "$lib_dir" "$sock" slow-reader ||
  nm_fail "a slow but steady reader was not served to the end (above)"
stalls=$(nm_count_in_log "$log" "no progress for")
((stalls == 0)) || nm_fail "$stalls stalls logged for a client that kept reading"
nm_log "part 3: 16 MiB of replies read at about 2 MiB/s with a 1 s stall timeout, none dropped"
nm_stop_clean "$daemon" daemon
nm_log "PASS"
