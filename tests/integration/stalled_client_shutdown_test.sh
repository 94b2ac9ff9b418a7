#!/usr/bin/env bash
# stalled_client_shutdown_test: one client that stops reading its replies, without closing its
# socket, must not make the daemon unstoppable.
#
# How: a raw-socket client negotiates, pipelines 100 READs of 1 MiB (far more than the socket
# buffers hold, so the server's reply writer blocks) and then just sleeps with the socket open.
# The daemon gets SIGTERM and must exit, with any status, within 20 s: waiting for replies that
# can never be delivered has to end in a bounded time (a drain timeout that closes such
# connections). Nothing it already acknowledged is at stake here; only the shutdown is.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require python3 nbdinfo

lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)
volume=$NM_TMP/volume.img
nm_make_volume "$volume" 128M
sock=$NM_TMP/nbd.sock
nm_start_primary "$volume" "$sock"
daemon=$NM_PID

cat >"$NM_TMP/stalled_client.py" <<'EOF'
import sys, time
sys.path.insert(0, sys.argv[1])
import nbd_client as nbd

sock, ready = sys.argv[2], sys.argv[3]
c = nbd.Connection(unix_path=sock, timeout=30)
c.connect()
for _ in range(100):
    c.send_request(nbd.CMD_READ, 0, 1 << 20)
open(ready, "w").close()
time.sleep(120)  # Never reads. The test's cleanup ends this process.
EOF
python3 "$NM_TMP/stalled_client.py" "$lib_dir" "$sock" "$NM_TMP/ready" &
client_pid=$!
nm_track_pid "$client_pid"
nm_wait_for 20 "the stalled client to send its requests" test -e "$NM_TMP/ready"

kill -TERM "$daemon"
deadline=$(($(nm_now_ms) + 20000))
while nm_alive "$daemon" && (($(nm_now_ms) < deadline)); do
  sleep 0.05
done
if nm_alive "$daemon"; then
  nm_fail "20 s after SIGTERM the daemon is still draining a client that stopped reading its" \
    "replies (socket open, 100 x 1 MiB READ replies unread): shutdown does not end"
fi
rc=0
nm_wait_exit "$daemon" 1 || rc=$?
nm_log "the daemon exited (status ${rc}) despite the stalled client"
[[ ! -e $sock ]] || nm_fail "the Unix socket was left behind"
echo "PASS: stalled_client_shutdown_test"
