#!/usr/bin/env bash
# tcp_shutdown_test: a daemon told to stop (SIGTERM) while a TCP client keeps pipelining requests
# and reads its replies late still delivers every reply it sent, and the client sees a clean end
# of stream, not a reset. Linux resets a TCP connection that is closed with input unread (here:
# the requests sent after the reader stopped), and the reset throws away the replies the client
# has not acknowledged yet; unix sockets do not do this, so the other shutdown tests, all on unix
# sockets, could not see it.
#
# How: a standalone primary serving TCP on loopback (a 64 MiB volume). A raw-socket client
# (tests/lib/nbd_client.py) sends 64 KiB READs from a thread without reading any reply; once 64 are
# out the test sends SIGTERM, and the thread goes on to 3,000 requests in all (or until the
# server stops taking them). Then the client reads: every reply must be a success with 64 KiB of
# data, there must be at least one, and the stream must end with EOF at a reply boundary within
# 30 s, with no reset. The daemon must exit 0.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require python3
lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)

volume=$NM_TMP/volume.img
nm_make_volume "$volume" 64M
port=$(nm_free_port)
nm_start_primary "$volume" "127.0.0.1:${port}"
daemon=$NM_PID

cat >"$NM_TMP/client.py" <<'PY'
import sys, threading
sys.path.insert(0, sys.argv[1])
import nbd_client as nbd

port, ready = int(sys.argv[2]), sys.argv[3]
KIB64, TOTAL = 64 << 10, 3000

def fail(msg):
    print("  " + msg, file=sys.stderr)
    sys.exit(1)

c = nbd.Connection(tcp=("127.0.0.1", port), timeout=30)
c.connect()
sent = 0
def sender():
    global sent
    try:
        for i in range(TOTAL):
            c.send_request(nbd.CMD_READ, (i % 1000) * KIB64, KIB64)
            sent += 1
            if sent == 64:
                open(ready, "w").close()
    except OSError:
        pass  # The server stopped taking requests; the replies are what matters.
t = threading.Thread(target=sender)
t.start()
t.join()
replies = 0
while True:
    try:
        r = c.read_reply()
    except nbd.Closed as e:
        if str(e).startswith("EOF with 4 of 4"):
            break  # A clean end of stream between replies.
        fail(f"after {replies} replies (of {sent} requests sent): {e}")
    if r.error != 0 or len(r.data) != KIB64:
        fail(f"reply {replies}: error {r.error}, {len(r.data)} bytes")
    replies += 1
if replies == 0:
    fail("no reply at all")
print(f"{replies} replies to {sent} requests, then a clean EOF", flush=True)
PY

python3 "$NM_TMP/client.py" "$lib_dir" "$port" "$NM_TMP/ready" >"$NM_TMP/client.out" 2>&1 &
client=$!
nm_track_pid "$client"
nm_wait_for 20 "64 requests sent" test -e "$NM_TMP/ready"
kill -TERM "$daemon"
rc=0
nm_wait_exit "$client" 60 || rc=$?
((rc == 0)) || nm_fail "the client lost replies or saw a reset: $(cat "$NM_TMP/client.out")"
nm_log "client: $(cat "$NM_TMP/client.out")"
rc=0
nm_wait_exit "$daemon" || rc=$?
((rc == 0)) || nm_fail "the daemon exited with status $rc"
nm_log "PASS: every reply delivered over TCP through the shutdown, and a clean close"
