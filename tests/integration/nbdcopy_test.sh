#!/usr/bin/env bash
# nbdcopy_test: bulk data survives a round trip through the export and reaches the backing
# file, with nbdcopy's multi-connection mode.
#
# How: 100 MiB from /dev/urandom is copied into a 128 MiB export with `nbdcopy -C 4 -T 4
# --flush` (the server advertises CAN_MULTI_CONN, so nbdcopy opens four connections; the
# daemon's debug log proves it), then copied back out to a file and compared with cmp, the
# 28 MiB the copy did not touch included (must read as zeroes). The export is also copied to a
# second daemon's export (NBD to NBD: block status on the source, zeroing on the destination)
# and compared. Finally both daemons are stopped with SIGTERM: they must exit 0, and the
# backing files themselves must hold exactly the data.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require nbdcopy nbdinfo cmp truncate head

mib=$((1 << 20))
data_bytes=$((100 * mib))
volume_bytes=$((128 * mib))

data=$NM_TMP/random.bin
head -c "$data_bytes" /dev/urandom >"$data"
volume=$NM_TMP/volume.img
nm_make_volume "$volume" "$volume_bytes"

sock=$NM_TMP/nbd.sock
nm_start_primary "$volume" "$sock"
daemon=$NM_PID
uri=$NM_URI
log=$NM_LOG

connections_before=$(nm_count_in_log "$log" ': connected$')
nbdcopy --connections=4 --threads=4 --flush "$data" "$uri" 2>"$NM_TMP/nbdcopy-in.err" ||
  nm_fail "nbdcopy into the export failed: $(cat "$NM_TMP/nbdcopy-in.err")"
connections_after=$(nm_count_in_log "$log" ': connected$')
used=$((connections_after - connections_before))
((used >= 4)) || nm_fail "nbdcopy --connections=4 opened ${used} connection(s); multi-conn not used"
nm_log "copied 100 MiB in over ${used} connections"

out=$NM_TMP/out.img
nbdcopy --connections=4 --threads=4 "$uri" "$out" 2>"$NM_TMP/nbdcopy-out.err" ||
  nm_fail "nbdcopy out of the export failed: $(cat "$NM_TMP/nbdcopy-out.err")"
out_bytes=$(stat -c %s "$out")
((out_bytes == volume_bytes)) ||
  nm_fail "copied-out image has ${out_bytes} bytes, expected ${volume_bytes}"
cmp -n "$data_bytes" "$data" "$out" || nm_fail "data read back differs from data written"
cmp -n $((volume_bytes - data_bytes)) -i "${data_bytes}:0" "$out" /dev/zero ||
  nm_fail "the untouched tail of the export does not read as zeroes"
nm_log "copied back out; identical, tail reads as zeroes"

# NBD to NBD: the source is read with block status, holes become zeroing on the destination.
copy_volume=$NM_TMP/copy.img
nm_make_volume "$copy_volume" "$volume_bytes"
# Pre-fill the destination's tail, so that zeroing it is observable.
head -c $((volume_bytes - data_bytes)) /dev/urandom |
  dd of="$copy_volume" bs=1M seek=100 conv=notrunc status=none
nm_start_primary "$copy_volume" "$NM_TMP/copy.sock"
copy_daemon=$NM_PID
copy_uri=$NM_URI
nbdcopy --flush "$uri" "$copy_uri" 2>"$NM_TMP/nbdcopy-nbd.err" ||
  nm_fail "nbdcopy export to export failed: $(cat "$NM_TMP/nbdcopy-nbd.err")"
nbdcopy "$copy_uri" "$NM_TMP/copy-out.img" 2>"$NM_TMP/nbdcopy-out2.err" ||
  nm_fail "nbdcopy out of the second export failed: $(cat "$NM_TMP/nbdcopy-out2.err")"
cmp "$out" "$NM_TMP/copy-out.img" || nm_fail "export-to-export copy differs"
nm_log "export-to-export copy identical (holes zeroed on the destination)"

nm_assert_alive "$daemon" "the first daemon"
for pid in "$copy_daemon" "$daemon"; do
  rc=0
  nm_stop "$pid" || rc=$?
  ((rc == 0)) || nm_fail "nbdmirror pid ${pid} exited with status ${rc} after SIGTERM, expected 0"
done
grep -q "drained and synced; exiting" "$log" || nm_fail "the daemon did not log a clean drain"

cmp -n "$data_bytes" "$data" "$volume" || nm_fail "the backing file does not hold the data"
cmp -n $((volume_bytes - data_bytes)) -i "${data_bytes}:0" "$volume" /dev/zero ||
  nm_fail "the backing file's untouched tail is not zero"
((  $(stat -c %s "$volume") == volume_bytes )) || nm_fail "the backing file changed size"
cmp "$out" "$copy_volume" || nm_fail "the second backing file does not hold the copied data"
nm_log "backing files hold exactly the data after a clean stop"
echo "PASS: nbdcopy_test"
