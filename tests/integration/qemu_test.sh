#!/usr/bin/env bash
# qemu_test: qemu's NBD client (qemu-img, qemu-io) reads back exactly what it wrote, with every
# command it uses: READ, WRITE, WRITE with FUA, WRITE_ZEROES (with and without NO_HOLE, with
# FUA, with FAST_ZERO), TRIM, FLUSH, and asynchronous writes in flight together.
#
# How: the 160 MiB export is first filled with junk. `qemu-img convert -n` then writes a 96 MiB
# raw image into it, with random data, a 16 MiB hole (which convert must zero, since the target
# holds junk) and sub-block runs; `qemu-img compare` must call them identical. qemu-io then
# writes known byte patterns beyond 96 MiB with each command and verifies them with
# `read -P` in the same session and again from a second session (a new connection); any
# "Pattern verification failed" or failed command makes qemu-io exit non-zero, and the test
# also greps for it. After a clean SIGTERM (exit 0) the same pattern checks and the compare run
# against the backing file itself.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require qemu-img qemu-io nbdinfo python3

mib=$((1 << 20))
volume=$NM_TMP/volume.img
head -c $((160 * mib)) /dev/urandom >"$volume"   # junk everywhere

# The source image: random data, a hole in the middle, and small runs of zeroes and data.
src=$NM_TMP/src.raw
nm_make_volume "$src" 96M
head -c $((40 * mib)) /dev/urandom | dd of="$src" conv=notrunc status=none
head -c $((40 * mib)) /dev/urandom | dd of="$src" bs=1M seek=56 conv=notrunc status=none
python3 - "$src" <<'EOF'
import os, sys
# A few unaligned islands of data inside the hole at 40-56 MiB.
with open(sys.argv[1], "r+b") as f:
    for off in (41 << 20) + 1, (47 << 20) + 4095, (52 << 20) + 100000:
        f.seek(off)
        f.write(os.urandom(777))
EOF

nm_start_primary "$volume" "$NM_TMP/nbd.sock"
daemon=$NM_PID
uri=$NM_URI

# qio TARGET_DESCRIPTION IMAGE COMMAND...: runs qemu-io with one -c per command; fails the test
# on a non-zero exit or on any failure message in its output.
qio() {
  local what=$1 image=$2
  shift 2
  local args=() c
  for c in "$@"; do
    args+=(-c "$c")
  done
  local out=$NM_TMP/qemu-io.out rc=0
  # Writeback mode: plain writes go out without FUA, so FUA (-f), flush and aio_flush matter.
  qemu-io -t writeback -f raw "${args[@]}" "$image" >"$out" 2>&1 || rc=$?
  if ((rc != 0)) || grep -qiE "failed|error" "$out"; then
    cat "$out" >&2
    nm_fail "qemu-io (${what}) exited ${rc} or reported a failure"
  fi
}

qemu-img convert -n -f raw -O raw "$src" "$uri" 2>"$NM_TMP/convert.err" ||
  nm_fail "qemu-img convert into the export failed: $(cat "$NM_TMP/convert.err")"
# The export is larger than the image; compare treats the extra tail as "must be zero" unless
# told otherwise, and our tail is junk, so compare the image-sized prefix through a raw slice.
nbd_json="{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"$NM_TMP/nbd.sock\"}}"
compare_prefix() {  # compare_prefix IMAGE_JSON
  local json="{\"driver\":\"raw\",\"size\":$((96 * mib)),\"file\":$1}"
  qemu-img compare -f raw "$src" "json:${json}" >"$NM_TMP/compare.out" 2>&1
}
compare_prefix "$nbd_json" ||
  nm_fail "qemu-img compare: the export differs from the image: $(cat "$NM_TMP/compare.out")"
grep -q "Images are identical" "$NM_TMP/compare.out" ||
  nm_fail "qemu-img compare did not say identical: $(cat "$NM_TMP/compare.out")"
nm_log "qemu-img convert + compare: identical (the 16 MiB hole was zeroed over junk)"

# Everything below writes at 100 MiB and above, away from the converted image.
k=1024
write_cmds=(
  # WRITE with FUA, then plain READ of it.
  "write -f -P 0xab 100M 64k"
  "read -P 0xab 100M 64k"
  # WRITE_ZEROES with NO_HOLE (qemu's default) inside written data.
  "write -P 0xcd 101M 1M"
  "write -z 101M 256k"
  "read -P 0 101M 256k"
  "read -P 0xcd $((101 * mib + 256 * k)) 768k"
  # WRITE_ZEROES that may punch a hole (-u), and one with FUA.
  "write -P 0xce 102M 1M"
  "write -z -u 102M 512k"
  "write -z -f $((102 * mib + 512 * k)) 128k"
  "read -P 0 102M 640k"
  "read -P 0xce $((102 * mib + 640 * k)) 384k"
  # WRITE_ZEROES with FAST_ZERO (-n: no slow fallback); our store zeroes with fallocate.
  "write -P 0x99 111M 256k"
  "write -z -n 111M 128k"
  "read -P 0 111M 128k"
  "read -P 0x99 $((111 * mib + 128 * k)) 128k"
  # TRIM of aligned blocks: our store punches a hole, so the range reads back as zeroes.
  "write -P 0xef 103M 1M"
  "discard 103M 512k"
  "read -P 0 103M 512k"
  "read -P 0xef $((103 * mib + 512 * k)) 512k"
  # Many writes in flight at once (one of the maximum payload, 32 MiB), then one flush.
  "aio_write -P 0x11 104M 128k"
  "aio_write -P 0x22 105M 1M"
  "aio_write -P 0x33 106M 4k 4k 8k"
  "aio_write -f -P 0x44 107M 2M"
  "aio_write -P 0x55 112M 32M"
  "aio_flush"
  "flush"
  # Sub-block and unaligned writes (qemu does the read-modify-write itself) over zeroes.
  "write -z 109M 8k"
  "write -P 0x66 109M 512"
  "write -P 0x77 $((109 * mib + 5000)) 1000"
  "read -P 0x66 109M 512"
  "read -P 0 $((109 * mib + 512)) $((5000 - 512))"
  "read -P 0x77 $((109 * mib + 5000)) 1000"
)
verify_cmds=(
  "read -P 0xab 100M 64k"
  "read -P 0 111M 128k"
  "read -P 0x99 $((111 * mib + 128 * k)) 128k"
  "read -P 0 101M 256k"
  "read -P 0xcd $((101 * mib + 256 * k)) 768k"
  "read -P 0 102M 640k"
  "read -P 0xce $((102 * mib + 640 * k)) 384k"
  "read -P 0 103M 512k"
  "read -P 0xef $((103 * mib + 512 * k)) 512k"
  "read -P 0x11 104M 128k"
  "read -P 0x22 105M 1M"
  "read -P 0x33 106M 16k"
  "read -P 0x44 107M 2M"
  "read -P 0x66 109M 512"
  "read -P 0 $((109 * mib + 512)) $((5000 - 512))"
  "read -P 0x77 $((109 * mib + 5000)) 1000"
  "read -P 0x55 112M 32M"
)
qio "write session" "$uri" "${write_cmds[@]}"
nm_log "qemu-io write session: every command succeeded and read back"
qio "verify session" "$uri" "${verify_cmds[@]}"
nm_log "qemu-io second session (new connection): all patterns intact"

# The converted image is still intact after all that.
compare_prefix "$nbd_json" ||
  nm_fail "the converted image changed: $(cat "$NM_TMP/compare.out")"

nm_assert_alive "$daemon" "nbdmirror"
rc=0
nm_stop "$daemon" || rc=$?
((rc == 0)) || nm_fail "nbdmirror exited with status ${rc} after SIGTERM, expected 0"

# The backing file itself, read without the server.
qio "backing file" "$volume" "${verify_cmds[@]}"
compare_prefix "{\"driver\":\"file\",\"filename\":\"$volume\"}" ||
  nm_fail "the backing file differs from the converted image: $(cat "$NM_TMP/compare.out")"
nm_log "backing file holds every pattern and the converted image"
echo "PASS: qemu_test"
