#!/usr/bin/env bash
# mirror_empty_requests_test: on a mirrored volume, zero-length requests from a client (READ,
# WRITE, TRIM, WRITE_ZEROES with each flag, CACHE, with and without FUA) all succeed and cost the
# pair nothing: none reaches the standby, the link stays up, no write is degraded, no generation
# is minted and no resync runs. The NBD spec allows any result for an empty request but says the
# server SHOULD NOT disconnect; the standby, for its part, refuses an empty operation from its
# peer as malformed and drops the link, so an empty TRIM forwarded by the primary would make any
# client able to break the mirror at will (and, with --on-peer-loss block, to hang it).
#
# How: 4 MiB of random data in both copies, --skip-initial-sync, mode flush, the default
# --on-peer-loss degrade. A raw-socket client (tests/lib/nbd_client.py) sends the empty requests,
# then one real 4 KiB write and a FLUSH. The standby must have applied exactly that write (plus
# the FLUSH), the primary's generation, degraded and resynced counters must be unchanged, and
# after a clean stop the copies are identical. With --on-peer-loss block the same requests must
# all be answered within the client's 10 s timeout.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require python3 cmp
lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)

cat >"$NM_TMP/empty_client.py" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import nbd_client as nbd

c = nbd.Connection(unix_path=sys.argv[2])
c.connect()
fua = nbd.CMD_FLAG_FUA
requests = [
    ("READ", nbd.CMD_READ, 4096, 0),
    ("WRITE", nbd.CMD_WRITE, 4096, 0),
    ("WRITE with FUA", nbd.CMD_WRITE, 4096, fua),
    ("TRIM", nbd.CMD_TRIM, 8192, 0),
    ("TRIM with FUA", nbd.CMD_TRIM, 8192, fua),
    ("WRITE_ZEROES", nbd.CMD_WRITE_ZEROES, 12288, 0),
    ("WRITE_ZEROES with NO_HOLE and FUA", nbd.CMD_WRITE_ZEROES, 12288, nbd.CMD_FLAG_NO_HOLE | fua),
    ("WRITE_ZEROES with FAST_ZERO", nbd.CMD_WRITE_ZEROES, 16384, nbd.CMD_FLAG_FAST_ZERO),
    ("CACHE", nbd.CMD_CACHE, 0, 0),
]
failed = False
for name, command, offset, flags in requests:
    try:
        r = c.command(command, offset, 0, flags=flags)
    except TimeoutError:
        print(f"  empty {name}: no reply within the timeout", file=sys.stderr)
        sys.exit(1)
    if r.error != 0:
        print(f"  empty {name}: error {r.error}, expected success", file=sys.stderr)
        failed = True
if sys.argv[3] == "write":
    data = bytes(range(256)) * 16
    r = c.write(1 << 20, data)
    if r.error != 0:
        print(f"  the real write after them: error {r.error}", file=sys.stderr)
        failed = True
    r = c.command(nbd.CMD_FLUSH)
    if r.error != 0:
        print(f"  FLUSH: error {r.error}", file=sys.stderr)
        failed = True
c.disconnect()
sys.exit(1 if failed else 0)
PY

run_pair() {  # run_pair ON_PEER_LOSS
  local policy=$1 a=$NM_TMP/$1-a.img b=$NM_TMP/$1-b.img port_a port_b
  head -c $((4 << 20)) /dev/urandom >"$a"
  cp -- "$a" "$b"
  read -r port_a port_b <<<"$(nm_free_ports 2)"
  NM_DAEMON_LABEL=standby-$policy nm_start_secondary "$b" --node b --listen "127.0.0.1:$port_b" \
    --peer "a=127.0.0.1:$port_a" --secret-file "$NM_TMP/secret"
  standby=$NM_PID
  NM_DAEMON_LABEL=primary-$policy nm_start_primary "$a" "$NM_TMP/$policy.sock" --node a \
    --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:$port_b" --secret-file "$NM_TMP/secret" \
    --mode flush --skip-initial-sync --on-peer-loss "$policy"
  primary=$NM_PID
  nm_wait_for 20 "the pair in sync" nm_peer_up_to_date "$a"
  local gen_before applied_before
  gen_before=$(nm_status_field "$a" current_gen)
  applied_before=$(nm_status_field "$b" apply_done)
  python3 "$NM_TMP/empty_client.py" "$lib_dir" "$NM_TMP/$policy.sock" write ||
    nm_fail "--on-peer-loss $policy: empty requests misbehaved (above)"
  local applied=$(($(nm_status_field "$b" apply_done) - applied_before))
  ((applied == 1)) ||
    nm_fail "--on-peer-loss $policy: the standby applied $applied operations, expected 1 (the real write)"
  [[ $(nm_status_field "$a" degraded_writes) == 0 ]] ||
    nm_fail "--on-peer-loss $policy: $(nm_status_field "$a" degraded_writes) writes degraded: the link dropped"
  [[ $(nm_status_field "$a" current_gen) == "$gen_before" ]] ||
    nm_fail "--on-peer-loss $policy: a new generation was minted: the peer was lost"
  [[ $(nm_status_field "$a" resynced_bytes_total) == 0 ]] ||
    nm_fail "--on-peer-loss $policy: a resync ran"
  [[ $(nm_status_field "$a" connection) == connected ]] && nm_peer_up_to_date "$a" ||
    nm_fail "--on-peer-loss $policy: connection $(nm_status_field "$a" connection), peer $(nm_status_field "$a" peer_disk)"
  # The standby's words when it refuses an empty operation ("... is empty, too long or past the
  # end of the volume").
  ! grep -q -F 'is empty' "$NM_TMP"/standby-"$policy".*.log ||
    nm_fail "--on-peer-loss $policy: the standby refused an operation: $(grep -F 'is empty' "$NM_TMP"/standby-"$policy".*.log | head -2)"
  nm_stop_clean "$primary" "primary-$policy"
  nm_stop_clean "$standby" "standby-$policy"
  cmp -- "$a" "$b" || nm_fail "--on-peer-loss $policy: the two copies differ"
  nm_log "--on-peer-loss $policy: empty requests answered, the mirror untouched"
}

nm_make_secret "$NM_TMP/secret"
run_pair degrade
run_pair block
nm_log "PASS: empty requests cost a mirrored pair nothing"
