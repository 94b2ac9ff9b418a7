#!/usr/bin/env bash
# shutdown_test: SIGTERM under load drains what is in flight, syncs and exits 0, promptly, and
# every write acknowledged on the way is in the backing file afterwards.
#
# How, part 1: fio's nbd engine runs random 64 KiB writes, 2 jobs x 32 in flight, for up to a
# minute. Once the backing file's allocated size shows writes landing, the daemon gets SIGTERM:
# it must exit 0 within 15 s, log that it drained N >= 1 connections and "drained and synced",
# and remove its Unix socket file. fio must then notice and end by itself.
# How, part 2: a raw-socket client pipelines 48 WRITEs of 1 MiB (distinct data each), sends
# SIGTERM to the daemon the moment the last payload byte is out, and reads whatever replies
# come before the connection closes. Each reply must be OK or ESHUTDOWN, and after the daemon
# exited 0 every write that was answered OK must be in the backing file.
# How, part 3: idle clients, one stopped in the middle of the handshake and one in
# transmission, must not delay shutdown: the daemon closes both and exits 0 within 15 s.
# (A client that stops reading without closing is stalled_client_shutdown_test.sh.)

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require fio python3 nbdinfo stat
fio --enghelp=nbd >/dev/null 2>&1 || nm_skip "this fio has no nbd engine"

lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)
volume=$NM_TMP/volume.img
nm_make_volume "$volume" 256M
sock=$NM_TMP/nbd.sock

# ---- part 1: SIGTERM while fio writes -----------------------------------------------------
nm_start_primary "$volume" "$sock"
daemon=$NM_PID
log=$NM_LOG

(cd "$NM_TMP" && exec fio --name=load --ioengine=nbd --uri="$NM_URI" --rw=randwrite --bs=64k \
  --iodepth=32 --numjobs=2 --size=64M --offset_increment=64M --time_based --runtime=60 \
  --output="$NM_TMP/fio.out") >"$NM_TMP/fio.err" 2>&1 &
fio_pid=$!
nm_track_pid "$fio_pid"

allocated_kib() { echo $(($(stat -c '%b * %B' "$volume") / 1024)); }
writes_landing() { (($(allocated_kib) >= 16384)); }
nm_wait_for 30 "fio's writes to reach the backing file" writes_landing
nm_assert_alive "$fio_pid" "fio"
nm_log "fio is writing ($(allocated_kib) KiB allocated); sending SIGTERM"

started=$(nm_now_ms)
rc=0
nm_stop "$daemon" 15 || rc=$?
elapsed_ms=$(($(nm_now_ms) - started))
((rc == 0)) || nm_fail "nbdmirror exited with status ${rc} after SIGTERM under load, expected 0"
nm_log "daemon exited 0 after ${elapsed_ms} ms"

draining=$(grep -oE 'signal 15: draining [0-9]+ connection' "$log" | grep -oE '[0-9]+ connection' |
  cut -d' ' -f1 || true)
[[ -n $draining ]] || nm_fail "the log does not say the daemon started draining"
((draining >= 1)) || nm_fail "the daemon drained ${draining} connections while fio was running"
grep -q "drained and synced; exiting" "$log" || nm_fail "the log does not say it drained and synced"
[[ ! -e $sock ]] || nm_fail "the Unix socket ${sock} was left behind"
nm_log "log: drained ${draining} connection(s), synced; socket removed"

fio_rc=0
nm_wait_exit "$fio_pid" 30 || fio_rc=$?
nm_log "fio ended by itself (status ${fio_rc}: its connections were closed under it)"

# ---- part 2: acknowledged writes survive a SIGTERM in the middle of them ------------------
nm_make_volume "$volume" 256M
nm_start_primary "$volume" "$sock"
daemon=$NM_PID
log=$NM_LOG

cat >"$NM_TMP/drain_client.py" <<'EOF'
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import nbd_client as nbd

sock, pid, acked_path = sys.argv[2], int(sys.argv[3]), sys.argv[4]
MIB = 1 << 20
c = nbd.Connection(unix_path=sock, timeout=30)
c.connect()
offsets = {}
for i in range(48):
    payload = bytes([i + 1]) * MIB
    cookie = c.send_request(nbd.CMD_WRITE, 64 * MIB + i * MIB, MIB, payload=payload)
    offsets[cookie] = i
os.kill(pid, signal.SIGTERM)
acked, shutdown = [], 0
try:
    while c.pending:
        r = c.read_reply()
        if r.error == 0:
            acked.append(offsets[r.cookie])
        elif r.error == nbd.ESHUTDOWN:
            shutdown += 1
        else:
            sys.exit(f"  WRITE {offsets[r.cookie]} during shutdown failed with {r.error}")
except nbd.Closed:
    pass
with open(acked_path, "w") as f:
    f.write("\n".join(str(i) for i in sorted(acked)) + "\n")
print(f"  {len(acked)} writes acknowledged, {shutdown} refused with ESHUTDOWN, "
      f"{len(c.pending)} unanswered", file=sys.stderr)
EOF
python3 "$NM_TMP/drain_client.py" "$lib_dir" "$sock" "$daemon" "$NM_TMP/acked" ||
  nm_fail "the drain client saw a bad reply"
rc=0
nm_wait_exit "$daemon" 15 || rc=$?
((rc == 0)) || nm_fail "nbdmirror exited with status ${rc} after SIGTERM mid-write, expected 0"

python3 - "$volume" "$NM_TMP/acked" <<'EOF' ||
  nm_fail "an acknowledged write is not in the backing file"
import sys
MIB = 1 << 20
acked = [int(x) for x in open(sys.argv[2]).read().split()]
with open(sys.argv[1], "rb") as f:
    for i in acked:
        f.seek(64 * MIB + i * MIB)
        if f.read(MIB) != bytes([i + 1]) * MIB:
            sys.exit(f"  write {i} was acknowledged but is not in the file")
EOF
nm_log "every write acknowledged before the shutdown is in the backing file"

# ---- part 3: idle clients ---------------------------------------------------------------
cat >"$NM_TMP/idle_client.py" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import nbd_client as nbd

sock, ready = sys.argv[2], sys.argv[3]
a = nbd.Connection(unix_path=sock, timeout=30)
a.read_greeting()                       # stopped in the handshake
b = nbd.Connection(unix_path=sock, timeout=30)
b.connect()                             # idle in transmission
open(ready, "w").close()
for name, c in (("handshake", a), ("transmission", b)):
    closed, _ = c.expect_closed(30)
    if not closed:
        sys.exit(f"  the idle {name} connection was not closed by the server")
EOF

nm_start_primary "$volume" "$sock"
daemon=$NM_PID
python3 "$NM_TMP/idle_client.py" "$lib_dir" "$sock" "$NM_TMP/ready" &
hold_pid=$!
nm_track_pid "$hold_pid"
nm_wait_for 20 "the idle clients to connect" test -e "$NM_TMP/ready"
rc=0
nm_stop "$daemon" 15 || rc=$?
((rc == 0)) || nm_fail "with idle clients connected the daemon exited ${rc}, expected 0"
nm_wait_exit "$hold_pid" 30 || nm_fail "the idle client saw a connection left open"
nm_log "idle clients (handshake and transmission) were closed; exit 0"

echo "PASS: shutdown_test"
