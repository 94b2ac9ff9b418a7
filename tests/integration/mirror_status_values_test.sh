#!/usr/bin/env bash
# mirror_status_values_test: the dirty-tracking numbers in `status` say what happened, exactly.
#
# How: a pair on loopback (64 MiB sparse volumes, 64 KiB regions, --skip-initial-sync, mode
# flush, --peer-timeout-ms 2000); nothing is written while it is in sync. The standby is
# SIGKILLed and the primary declares it lost. A raw-socket client then writes 1 MiB at 8 MiB
# as 256 WRITEs of 4 KiB. While the peer is away marks are region-sized (no marking ahead), so:
#   - marked_bytes == out_of_sync_bytes == 1 MiB, marked_regions == 16;
#   - metadata_writes_per_1000_writes == metadata_writes * 1000 / writes (the README's formula);
# the same 256 writes again touch only marked regions: metadata_writes must not move and
# marked_bytes stays 1 MiB. The standby restarts: the resync is incremental and copies exactly
# the marked 1 MiB (resynced_bytes_total), the peer becomes UpToDate, out_of_sync_bytes 0, and
# after a clean stop the two files are identical.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require python3 cmp jq
lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)

a=$NM_TMP/a.img
b=$NM_TMP/b.img
nm_make_volume "$a" 64M
nm_make_volume "$b" 64M
nm_make_secret "$NM_TMP/secret"
read -r port_a port_b <<<"$(nm_free_ports 2)"
MIB=$((1 << 20))

start_standby() {
  NM_DAEMON_LABEL=standby nm_start_secondary "$b" --node b --listen "127.0.0.1:$port_b" \
    --peer "a=127.0.0.1:$port_a" --secret-file "$NM_TMP/secret"
  standby=$NM_PID
}
start_standby
NM_DAEMON_LABEL=primary nm_start_primary "$a" "$NM_TMP/a.sock" --node a \
  --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:$port_b" --secret-file "$NM_TMP/secret" \
  --mode flush --skip-initial-sync --peer-timeout-ms 2000 --bitmap-region-kib 64
primary=$NM_PID
nm_wait_for 20 "the pair in sync" nm_peer_up_to_date "$a"
f() { nm_status_field "$a" "$1"; }
[[ $(f marked_bytes) == 0 ]] || nm_fail "marked_bytes $(f marked_bytes) before any write"

kill -KILL "$standby"
rc=0
nm_wait_exit "$standby" 20 || rc=$?
not_connected() { [[ $(f connection) != connected ]]; }
nm_wait_for 20 "the primary declaring the standby lost" not_connected

cat >"$NM_TMP/writer.py" <<'PY'
import os, sys
sys.path.insert(0, sys.argv[1])
import nbd_client as nbd
c = nbd.Connection(unix_path=sys.argv[2])
c.connect()
MIB = 1 << 20
for i in range(256):
    r = c.write(8 * MIB + i * 4096, os.urandom(4096))
    if r.error:
        sys.exit(f"WRITE {i}: error {r.error}")
c.disconnect()
PY
python3 "$NM_TMP/writer.py" "$lib_dir" "$NM_TMP/a.sock" || nm_fail "the writes failed"

[[ $(f marked_bytes) == "$MIB" ]] || nm_fail "marked_bytes $(f marked_bytes), expected $MIB"
[[ $(f marked_regions) == 16 ]] || nm_fail "marked_regions $(f marked_regions), expected 16"
[[ $(f out_of_sync_bytes) == "$MIB" ]] ||
  nm_fail "out_of_sync_bytes $(f out_of_sync_bytes), expected $MIB (what the bitmap marks)"
writes=$(f writes)
meta=$(f metadata_writes)
((writes >= 256)) || nm_fail "writes $writes after 256 WRITEs"
((meta >= 1)) || nm_fail "metadata_writes $meta although 16 regions were marked"
[[ $(f metadata_writes_per_1000_writes) == $((meta * 1000 / writes)) ]] ||
  nm_fail "metadata_writes_per_1000_writes $(f metadata_writes_per_1000_writes), expected $((meta * 1000 / writes)) ($meta * 1000 / $writes)"
nm_log "after 256 writes: $meta metadata writes, $(f metadata_writes_per_1000_writes) per 1000"

python3 "$NM_TMP/writer.py" "$lib_dir" "$NM_TMP/a.sock" || nm_fail "the second writes failed"
[[ $(f metadata_writes) == "$meta" ]] ||
  nm_fail "metadata_writes went from $meta to $(f metadata_writes) for writes into marked regions"
[[ $(f marked_bytes) == "$MIB" ]] || nm_fail "marked_bytes $(f marked_bytes) after rewriting, expected $MIB"
[[ $(f writes) == $((writes + 256)) ]] || nm_fail "writes $(f writes), expected $((writes + 256))"

start_standby
nm_wait_for 30 "the standby resynced" nm_peer_up_to_date "$a"
[[ $(f sync_decision) == incremental ]] || nm_fail "sync_decision $(f sync_decision), expected incremental"
[[ $(f resynced_bytes_total) == "$MIB" ]] ||
  nm_fail "resynced_bytes_total $(f resynced_bytes_total), expected exactly the marked $MIB"
[[ $(f out_of_sync_bytes) == 0 ]] || nm_fail "out_of_sync_bytes $(f out_of_sync_bytes) with the peer UpToDate"
nm_stop_clean "$primary" primary
nm_stop_clean "$standby" standby
cmp -- "$a" "$b" || nm_fail "the copies differ"
nm_log "PASS"
