#!/usr/bin/env bash
# faults_test: a failing disk reaches the client as EIO, only for the requests it touches, and
# a failed datasync is never turned into a success later.
#
# How, part 1: the daemon runs with `--fault read:1048576:4096 --fault write:2097152:4096` on a
# volume full of random data. A raw-socket client (tests/lib/nbd_client.py) with two
# connections open at once checks: READs touching 1 MiB+4 KiB fail with EIO (as structured
# error chunks) while READs elsewhere, on both connections, return the file's bytes; WRITE,
# WRITE_ZEROES and TRIM touching 2 MiB+4 KiB fail with EIO and leave the bytes as they were;
# writes elsewhere succeed and read back on the other connection; pipelined good and bad
# requests get the right answer each. qemu-io (a real client) sees "Input/output error" for the
# same ranges. The daemon stays up, logs exactly one "injected fault" error per failed request,
# and exits 0 on SIGTERM (its final datasync is fine).
#
# How, part 2: a second daemon with `--fault datasync`: FLUSH with nothing written succeeds
# (nothing to sync); after a WRITE (which succeeds) FLUSH fails with EIO, and every later FLUSH
# and FUA write fails too, on new connections as well; the log says the disk is marked Failed.
# On SIGTERM the final datasync cannot succeed either, so the daemon exits with status 1 and
# logs "final datasync failed" (what it does today, and the sane thing: it must not claim a
# clean shutdown it did not have).

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require python3 qemu-io nbdinfo

lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)
volume=$NM_TMP/volume.img
head -c $((64 << 20)) /dev/urandom >"$volume"

# ---- part 1: read and write faults --------------------------------------------------------
sock=$NM_TMP/faulty.sock
nm_start_primary "$volume" "$sock" --fault read:1048576:4096 --fault write:2097152:4096
daemon=$NM_PID
log=$NM_LOG
grep -q "fault injection is on" "$log" || nm_fail "the daemon does not say fault injection is on"

cat >"$NM_TMP/faults_client.py" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import nbd_client as nbd

sock, volume = sys.argv[2], sys.argv[3]
EIO, MIB = nbd.EIO, 1 << 20
failed_requests = 0

def file_bytes(offset, length):
    with open(volume, "rb") as f:
        f.seek(offset)
        return f.read(length)

def fail(msg):
    print("  " + msg, file=sys.stderr)
    sys.exit(1)

def expect(reply, error, what):
    global failed_requests
    if reply.error != error:
        fail(f"{what}: error {reply.error}, expected {error}")
    if error:
        failed_requests += 1

def expect_data(reply, offset, length, what):
    expect(reply, 0, what)
    if reply.data != file_bytes(offset, length):
        fail(f"{what}: data differs from the backing file")

a = nbd.Connection(unix_path=sock)
a.connect()
b = nbd.Connection(unix_path=sock)
b.connect()

# Reads touching the faulty range fail, as structured error chunks; others succeed.
r = a.read(MIB, 4096)
expect(r, EIO, "READ of the faulty range")
if r.simple:
    fail("READ error sent as a simple reply although structured replies were negotiated")
expect(a.read(MIB - 512, 1024), EIO, "READ overlapping the start of the faulty range")
expect(a.read(MIB + 4095, 1), EIO, "READ of the last faulty byte")
expect_data(b.read(0, 65536), 0, 65536, "READ elsewhere on the second connection")
expect_data(a.read(MIB + 4096, 4096), MIB + 4096, 4096, "READ right after the faulty range")
expect_data(a.read(MIB - 4096, 4096), MIB - 4096, 4096, "READ right before the faulty range")

# Writes touching the write-faulty range fail and change nothing; others land.
before = file_bytes(2 * MIB - 4096, 12288)
expect(a.write(2 * MIB, b"\xab" * 4096), EIO, "WRITE of the faulty range")
expect(a.write(2 * MIB - 512, b"\xab" * 1024), EIO, "WRITE overlapping the faulty range")
expect(a.command(nbd.CMD_WRITE_ZEROES, 2 * MIB, 4096), EIO, "WRITE_ZEROES of the faulty range")
expect(a.command(nbd.CMD_TRIM, 2 * MIB, 4096), EIO, "TRIM of the faulty range")
r = b.read(2 * MIB - 4096, 12288)
expect(r, 0, "READ around the write-faulty range")
if r.data != before:
    fail("a failed WRITE changed the data")
data = bytes(range(256)) * 16
expect(a.write(5 * MIB, data), 0, "WRITE elsewhere")
r = b.read(5 * MIB, 4096)
expect(r, 0, "READ back on the other connection")
if r.data != data:
    fail("a successful WRITE did not read back on the other connection")
expect(a.write(2 * MIB + 4096, data, flags=nbd.CMD_FLAG_FUA), 0, "FUA WRITE next to the fault")
expect(a.flush(), 0, "FLUSH")

# Pipelined: good and bad requests interleaved, each gets its own answer.
want = {}
for i in range(16):
    offset = MIB if i % 2 else 8 * MIB + i * 4096
    cookie = a.send_request(nbd.CMD_READ, offset, 4096)
    want[cookie] = (offset, EIO if i % 2 else 0)
for _ in range(16):
    r = a.read_reply()
    offset, error = want.pop(r.cookie)
    expect(r, error, f"pipelined READ at {offset}")
    if not error and r.data != file_bytes(offset, 4096):
        fail(f"pipelined READ at {offset} returned wrong data")

a.disconnect()
b.disconnect()
print(failed_requests)
EOF
expected_failures=$(python3 "$NM_TMP/faults_client.py" "$lib_dir" "$sock" "$volume") ||
  nm_fail "the fault-injection client found a problem"
nm_log "raw client: ${expected_failures} requests failed with EIO exactly where the faults are"

# A real client: qemu-io reports EIO for the faulty ranges and succeeds elsewhere.
qemu_fails=0
for cmd in "read 1M 4k" "write -P 0x11 2M 4k"; do
  if qemu-io -f raw -c "$cmd" "$NM_URI" >"$NM_TMP/qemu-io.out" 2>&1; then
    nm_fail "qemu-io '${cmd}' succeeded on a faulty range: $(cat "$NM_TMP/qemu-io.out")"
  fi
  grep -q "Input/output error" "$NM_TMP/qemu-io.out" ||
    nm_fail "qemu-io '${cmd}' failed without EIO: $(cat "$NM_TMP/qemu-io.out")"
  qemu_fails=$((qemu_fails + 1))
done
qemu-io -f raw -c "read 3M 64k" -c "write -P 0x22 4M 64k" -c "read -P 0x22 4M 64k" "$NM_URI" \
  >"$NM_TMP/qemu-io.out" 2>&1 ||
  nm_fail "qemu-io away from the faults failed: $(cat "$NM_TMP/qemu-io.out")"
nm_log "qemu-io: EIO on the faulty ranges, success elsewhere"

nm_assert_alive "$daemon" "nbdmirror with injected faults"
logged=$(nm_count_in_log "$log" ' error .* failed: injected fault')
want=$((expected_failures + qemu_fails))
((logged == want)) ||
  nm_fail "the log names ${logged} injected faults, expected one per failed request (${want})"
rc=0
nm_stop "$daemon" || rc=$?
((rc == 0)) || nm_fail "with only read/write faults the daemon should exit 0, got ${rc}"
nm_log "log names each of the ${want} failed requests once; clean exit"

# ---- part 2: datasync fault ---------------------------------------------------------------
sock=$NM_TMP/datasync.sock
nm_start_primary "$volume" "$sock" --fault datasync
daemon=$NM_PID
log=$NM_LOG

cat >"$NM_TMP/datasync_client.py" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import nbd_client as nbd

sock = sys.argv[2]

def fail(msg):
    print("  " + msg, file=sys.stderr)
    sys.exit(1)

def expect(reply, error, what):
    if reply.error != error:
        fail(f"{what}: error {reply.error}, expected {error}")

c = nbd.Connection(unix_path=sock)
c.connect()
expect(c.flush(), 0, "FLUSH with nothing written (nothing to sync)")
expect(c.write(0, b"\x42" * 4096), 0, "WRITE without FUA")
expect(c.flush(), nbd.EIO, "FLUSH after a WRITE, datasync failing")
expect(c.flush(), nbd.EIO, "second FLUSH (a failed datasync must not turn into success)")
expect(c.write(8192, b"\x43" * 4096, flags=nbd.CMD_FLAG_FUA), nbd.EIO, "FUA WRITE")
c.disconnect()

d = nbd.Connection(unix_path=sock)
d.connect()
expect(d.flush(), nbd.EIO, "FLUSH on a new connection")
r = d.read(0, 4096)
expect(r, 0, "READ still works")
if r.data != b"\x42" * 4096:
    fail("the written (not durable) data does not read back")
d.disconnect()
EOF
python3 "$NM_TMP/datasync_client.py" "$lib_dir" "$sock" ||
  nm_fail "the datasync-fault client found a problem"
nm_log "datasync fault: FLUSH and FUA fail with EIO, and keep failing"

# qemu-io in writeback mode: the WRITE itself succeeds, its FLUSH fails and qemu-io says so
# with its exit status (it prints nothing for a failed flush; the daemon log shows them).
flush_failures=$(nm_count_in_log "$log" 'FLUSH at 0\+0 failed')
qemu-io -t writeback -f raw -c "write -P 0x33 64k 4k" -c "flush" "$NM_URI" \
  >"$NM_TMP/qemu-io.out" 2>&1 &&
  nm_fail "qemu-io flush succeeded although datasync fails: $(cat "$NM_TMP/qemu-io.out")"
grep -q "wrote 4096/4096 bytes at offset 65536" "$NM_TMP/qemu-io.out" ||
  nm_fail "qemu-io's writeback WRITE failed: $(cat "$NM_TMP/qemu-io.out")"
(($(nm_count_in_log "$log" 'FLUSH at 0\+0 failed') > flush_failures)) ||
  nm_fail "qemu-io's flush did not reach the daemon as a failed FLUSH"

grep -q "datasync failed; the local disk is marked Failed" "$log" ||
  nm_fail "the log does not say the disk was marked Failed"
nm_assert_alive "$daemon" "nbdmirror with a failing datasync"
rc=0
nm_stop "$daemon" || rc=$?
((rc == 1)) || nm_fail "a daemon whose final datasync fails must exit 1, got ${rc}"
grep -q "final datasync failed" "$log" || nm_fail "the log does not explain the failed exit"
if grep -q "drained and synced; exiting" "$log"; then
  nm_fail "the daemon claimed a clean, synced shutdown although datasync fails"
fi
nm_log "SIGTERM: exit 1 with 'final datasync failed', no false 'synced' claim"
echo "PASS: faults_test"
