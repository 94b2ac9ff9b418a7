#!/usr/bin/env bash
# mirror_metadata_failure_test: a primary that loses its peer while its metadata cannot be
# written must not acknowledge writes without the peer. Acknowledging one is only safe once the
# metadata durably says that the peer is out of date (a new generation, peer Outdated): after a
# crash that record is what makes a restart resync the peer, or refuse it as split brain.
# Before the fix the failed record was only logged and the write was acknowledged anyway.
#
# How: a pair in mode flush with the default --on-peer-loss degrade, copies in the test's temp dir
# (ext4 here; the test skips where `chattr +i` does not stop writes to an open file). A raw-socket
# client writes 4 KiB at 1 MiB while the pair is connected, so the region is marked and later
# writes into it need no bitmap write. Then the primary's metadata file is made immutable (its
# writes fail with EPERM, as on a failed metadata disk) and the standby is killed. A second write
# into the same region must fail with EIO, and the primary count no degraded write. Once the file
# is writable again, a third write must succeed, degraded, and the metadata must then record the
# peer Outdated. The primary must stop cleanly.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require python3 chattr
lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)

probe=$NM_TMP/immutable-probe
head -c 8192 /dev/zero >"$probe"
if ! python3 - "$probe" <<'PY' 2>/dev/null; then
import os, subprocess, sys
fd = os.open(sys.argv[1], os.O_RDWR)
subprocess.run(["chattr", "+i", sys.argv[1]], check=True)
try:
    os.pwrite(fd, b"x", 0)
    ok = False
except PermissionError:
    ok = True
finally:
    subprocess.run(["chattr", "-i", sys.argv[1]], check=True)
sys.exit(0 if ok else 1)
PY
  chattr -i "$probe" 2>/dev/null || true
  nm_skip "chattr +i does not stop writes to an open file in $NM_TMP"
fi
rm -f -- "$probe"

a=$NM_TMP/a.img
b=$NM_TMP/b.img
nm_make_volume "$a" 16M
nm_make_volume "$b" 16M
meta=$a.nbdmirror-meta
make_writable() { chattr -i "$meta" 2>/dev/null || true; }
nm_add_cleanup_hook make_writable
nm_make_secret "$NM_TMP/secret"
read -r port_a port_b <<<"$(nm_free_ports 2)"
NM_DAEMON_LABEL=standby nm_start_secondary "$b" --node b --listen "127.0.0.1:$port_b" \
  --peer "a=127.0.0.1:$port_a" --secret-file "$NM_TMP/secret"
standby=$NM_PID
NM_DAEMON_LABEL=primary nm_start_primary "$a" "$NM_TMP/a.sock" --node a \
  --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:$port_b" --secret-file "$NM_TMP/secret" \
  --mode flush --skip-initial-sync
primary=$NM_PID
nm_wait_for 20 "the pair in sync" nm_peer_up_to_date "$a"

cat >"$NM_TMP/write.py" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import nbd_client as nbd
c = nbd.Connection(unix_path=sys.argv[2])
c.connect()
r = c.write(int(sys.argv[3]), bytes([int(sys.argv[4])]) * 4096)
c.disconnect()
print(r.error)
PY
write() { python3 "$NM_TMP/write.py" "$lib_dir" "$NM_TMP/a.sock" "$1" "$2"; }

[[ $(write $((1 << 20)) 1) == 0 ]] || nm_fail "the first write failed"
nm_status_ge "$a" marked_regions 1 || nm_fail "the first write's region is not marked"

chattr +i "$meta"
kill -KILL "$standby"
wait "$standby" 2>/dev/null || true
nm_untrack_pid "$standby"
nm_wait_for 20 "the primary to lose its peer" nm_status_is "$a" connection connecting

got=$(write $((1 << 20)) 2)
[[ $got == 5 ]] ||
  nm_fail "a write without the peer, with the peer's loss unrecorded, got error $got, expected EIO (5)"
[[ $(nm_status_field "$a" degraded_writes) == 0 ]] ||
  nm_fail "the primary counts $(nm_status_field "$a" degraded_writes) degraded writes"
nm_log "a write the peer did not get failed with EIO while its loss could not be recorded"

make_writable
got=$(write $((1 << 20)) 3)
[[ $got == 0 ]] || nm_fail "once the metadata was writable again a write got error $got"
[[ $(nm_status_field "$a" degraded_writes) == 1 ]] ||
  nm_fail "the primary counts $(nm_status_field "$a" degraded_writes) degraded writes, expected 1"
[[ $(nm_status_field "$a" peer_disk) == Outdated ]] ||
  nm_fail "peer_disk is $(nm_status_field "$a" peer_disk), expected Outdated"
nm_stop_clean "$primary" primary
grep -q -F "the peer's state is recorded again" "$NM_LOG" ||
  nm_fail "the primary did not log that the record succeeded again"
nm_log "PASS: no write acknowledged without the peer while its loss was unrecorded"
