#!/usr/bin/env bash
# protocol_test: the server follows the NBD protocol where clients are strict, and survives
# clients that are not: malformed handshakes, out-of-range, wrapping, oversized and unknown
# requests, 200 pipelined requests, 4 GiB of READ replies nobody reads, clients that vanish in
# the middle of a WRITE payload, DISC with writes in flight.
#
# How: nbd_torture.py (a raw-socket client, Python stdlib only) runs each case on fresh
# connections and probes the server's health after each; it prints PASS/FAIL per case. The
# 128 MiB volume starts full of random data; the torture writes only to its middle half, so
# the first and last 32 MiB of the backing file must hash the same before the daemon starts and
# after it stopped (nothing outside the written ranges changed, out-of-range writes included).
# Finally the daemon must still serve nbdinfo and exit 0 on SIGTERM.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require python3 nbdinfo sha256sum

mib=$((1 << 20))
volume=$NM_TMP/volume.img
head -c $((128 * mib)) /dev/urandom >"$volume"

# hash_outside: sha256 of the first and last quarter, the parts the torture never writes.
hash_outside() {
  {
    dd if="$volume" bs=1M count=32 status=none
    dd if="$volume" bs=1M skip=96 count=32 status=none
  } | sha256sum | cut -d' ' -f1
}
before=$(hash_outside)

sock=$NM_TMP/nbd.sock
nm_start_primary "$volume" "$sock"
daemon=$NM_PID

torture_rc=0
timeout 300 python3 "$(dirname "${BASH_SOURCE[0]}")/nbd_torture.py" \
  --socket "$sock" --volume "$volume" --log "$NM_LOG" --pid "$daemon" || torture_rc=$?

nm_assert_alive "$daemon" "nbdmirror after the torture"
size=$(nbdinfo --size "$NM_URI") || nm_fail "nbdinfo cannot talk to the daemon after the torture"
((size == 128 * mib)) || nm_fail "nbdinfo reports size ${size} after the torture"

rc=0
nm_stop "$daemon" 30 || rc=$?
((rc == 0)) || nm_fail "nbdmirror exited with status ${rc} after SIGTERM, expected 0"
grep -q "drained and synced; exiting" "$NM_LOG" || nm_fail "the daemon did not log a clean drain"

after=$(hash_outside)
[[ $before == "$after" ]] ||
  nm_fail "bytes outside the torture's scratch area changed (sha256 ${before} -> ${after})"
nm_log "first and last 32 MiB unchanged; daemon alive to the end and stopped cleanly"

((torture_rc == 0)) ||
  nm_fail "nbd_torture.py reported failing cases (status ${torture_rc}); see its FAIL lines above"
echo "PASS: protocol_test"
