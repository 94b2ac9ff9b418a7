#!/usr/bin/env bash
# mirror_fast_zero_test: on a mirrored volume, a WRITE_ZEROES with FAST_ZERO that the primary's
# store cannot do quickly is refused with ENOTSUP at once and changes neither copy, as the NBD
# spec asks ("MUST fail quickly with NBD_ENOTSUP ... SHOULD NOT alter the contents"); one it can
# do reaches the standby too. Clients probe with FAST_ZERO routinely (qemu-img convert and
# nbdcopy do), so a refusal must not cost the pair its redundancy either: no resync, the peer
# stays UpToDate.
#
# How: the primary's copy on tmpfs (/dev/shm), which punches holes but has no ZERO_RANGE, so a
# FAST_ZERO with NO_HOLE cannot be fast there; the standby's on the test's temp dir. 16 MiB of
# random data in both, --skip-initial-sync, mode flush, --peer-timeout-ms 60000. The standby is
# frozen with SIGSTOP; a raw-socket client (tests/lib/nbd_client.py, 10 s socket timeout) sends
# FAST_ZERO|NO_HOLE over 64 KiB at 1 MiB and must get ENOTSUP while the standby is still
# frozen (the peer was never asked; had it been, the reply would wait for it), then reads the
# range back unchanged. After SIGCONT: FAST_ZERO without NO_HOLE over 64 KiB at 2 MiB (a hole
# punch, fast on tmpfs) must succeed and read back as zeroes. The standby must have applied
# exactly one more operation than before, the primary report no errors, no resync
# (`resynced_bytes_total` 0) and its peer UpToDate; after a clean stop the two files are
# identical, with the first range still holding the random data.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require python3 cmp jq
lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)
[[ -d /dev/shm && -w /dev/shm ]] || nm_skip "no writable /dev/shm"

shm=$(mktemp -d /dev/shm/nbdmirror-fast-zero.XXXXXX)
remove_shm() { rm -rf -- "$shm"; }
nm_add_exit_hook remove_shm
a=$shm/a.img
b=$NM_TMP/b.img
head -c $((16 << 20)) /dev/urandom >"$a"
cp -- "$a" "$b"
cp -- "$a" "$NM_TMP/original.img"
probe=$shm/probe
truncate -s 1M "$probe"
if fallocate -z -o 0 -l 4096 "$probe" 2>/dev/null; then
  nm_skip "this tmpfs zeroes ranges quickly (ZERO_RANGE works): no store here refuses FAST_ZERO"
fi
rm -f -- "$probe"

nm_make_secret "$NM_TMP/secret"
read -r port_a port_b <<<"$(nm_free_ports 2)"
NM_DAEMON_LABEL=standby nm_start_secondary "$b" --node b --listen "127.0.0.1:$port_b" \
  --peer "a=127.0.0.1:$port_a" --secret-file "$NM_TMP/secret"
standby=$NM_PID
NM_DAEMON_LABEL=primary nm_start_primary "$a" "$NM_TMP/a.sock" --node a \
  --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:$port_b" --secret-file "$NM_TMP/secret" \
  --mode flush --skip-initial-sync --peer-timeout-ms 60000
primary=$NM_PID
nm_wait_for 20 "the pair in sync" nm_peer_up_to_date "$a"
applied_before=$(nm_status_field "$b" apply_done)

# Thaws the standby whatever happens, so the cleanup can stop it.
thaw() { kill -CONT "$standby" 2>/dev/null || true; }
nm_add_cleanup_hook thaw

cat >"$NM_TMP/fast_zero_client.py" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import nbd_client as nbd

sock, original, step = sys.argv[2], sys.argv[3], sys.argv[4]
MIB, KIB64 = 1 << 20, 1 << 16

def fail(msg):
    print("  " + msg, file=sys.stderr)
    sys.exit(1)

def original_bytes(offset, length):
    with open(original, "rb") as f:
        f.seek(offset)
        return f.read(length)

c = nbd.Connection(unix_path=sock)
c.connect()
if not c.tx_flags & nbd.TX_SEND_FAST_ZERO:
    fail("FAST_ZERO not advertised")
if step == "refused":
    try:
        r = c.command(nbd.CMD_WRITE_ZEROES, MIB, KIB64,
                      flags=nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)
    except TimeoutError:
        fail("no reply to a FAST_ZERO the primary cannot do quickly while the standby is "
             "frozen: the refusal waited for the peer")
    if r.error != nbd.ENOTSUP:
        fail(f"FAST_ZERO|NO_HOLE on tmpfs: error {r.error}, expected ENOTSUP ({nbd.ENOTSUP})")
    r = c.read(MIB, KIB64)
    if r.error != 0 or r.data != original_bytes(MIB, KIB64):
        fail("a refused FAST_ZERO changed the primary's data")
else:
    r = c.command(nbd.CMD_WRITE_ZEROES, 2 * MIB, KIB64, flags=nbd.CMD_FLAG_FAST_ZERO)
    if r.error != 0:
        fail(f"FAST_ZERO that may punch a hole on tmpfs: error {r.error}, expected success")
    r = c.read(2 * MIB, KIB64)
    if r.error != 0 or r.data != bytes(KIB64):
        fail("a successful FAST_ZERO does not read back as zeroes")
c.disconnect()
PY

kill -STOP "$standby"
nm_log "standby frozen; sending FAST_ZERO|NO_HOLE"
python3 "$NM_TMP/fast_zero_client.py" "$lib_dir" "$NM_TMP/a.sock" "$NM_TMP/original.img" refused ||
  nm_fail "the refused FAST_ZERO misbehaved (above)"
thaw
nm_log "standby thawed; sending a FAST_ZERO that tmpfs can do"
python3 "$NM_TMP/fast_zero_client.py" "$lib_dir" "$NM_TMP/a.sock" "$NM_TMP/original.img" done ||
  nm_fail "the successful FAST_ZERO misbehaved (above)"

applied_after=$(nm_status_field "$b" apply_done)
((applied_after == applied_before + 1)) ||
  nm_fail "the standby applied $((applied_after - applied_before)) operations, expected 1 (the successful FAST_ZERO only)"
[[ $(nm_status_field "$a" errors) == 0 ]] || nm_fail "the primary counts $(nm_status_field "$a" errors) errors"
[[ $(nm_status_field "$a" resynced_bytes_total) == 0 ]] ||
  nm_fail "a resync ran ($(nm_status_field "$a" resynced_bytes_total) bytes): the refusal cost the pair its sync"
nm_peer_up_to_date "$a" || nm_fail "peer_disk is $(nm_status_field "$a" peer_disk), expected UpToDate"

nm_stop_clean "$primary" primary
nm_stop_clean "$standby" standby
cmp -- "$a" "$b" || nm_fail "the two copies differ"
cmp -n $((64 << 10)) -i $((1 << 20)) -- "$b" "$NM_TMP/original.img" ||
  nm_fail "the refused range changed on the standby"
cmp -n $((64 << 10)) -i $((2 << 20)):0 -- "$b" /dev/zero ||
  nm_fail "the zeroed range is not zero on the standby"
nm_log "PASS: refused FAST_ZERO quick and harmless, successful one mirrored"
