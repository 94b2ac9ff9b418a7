#!/usr/bin/env bash
# metadata_corruption_test: the daemon never silently accepts damaged metadata at start.
#
# How: a standalone primary on a 16 MiB volume is started and stopped cleanly, which leaves
# both superblock slots of VOLUME.nbdmirror-meta written (the newer one says clean=true). Then:
#   1. one byte of the newer slot's volume_uuid is changed (its CRC32C no longer matches, as
#      after a torn write): the daemon must start on the older slot, say so in its log, and
#      report the original volume_uuid.
#   2. one byte in each slot is changed: `run` must refuse to start (exit 1, "no valid
#      superblock" in its log) and leave the metadata file and the volume byte for byte as
#      they were.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require python3 sha256sum jq

volume=$NM_TMP/volume.img
meta=$volume.nbdmirror-meta
sock=$NM_TMP/nbd.sock
head -c $((16 << 20)) /dev/urandom >"$volume"

nm_start_primary "$volume" "$sock"
uuid=$(nm_status_field "$volume" volume_uuid)
[[ -n $uuid ]] || nm_fail "no volume_uuid in status"
nm_stop_clean "$NM_PID" daemon

# damage SLOT...: changes the first hex digit of volume_uuid in each given slot (0 or 1, or
# "newer" for the slot with the higher seq). Prints the slots it damaged.
damage() {
  python3 - "$meta" "$@" <<'PY'
import re, sys
path, which = sys.argv[1], sys.argv[2:]
SLOT = 4096
data = bytearray(open(path, "rb").read())
seqs = []
for s in (0, 1):
    m = re.search(rb"\nseq=(\d+)\n", bytes(data[s * SLOT:(s + 1) * SLOT]))
    seqs.append(int(m.group(1)) if m else -1)
slots = [seqs.index(max(seqs)) if w == "newer" else int(w) for w in which]
for s in slots:
    i = bytes(data[s * SLOT:(s + 1) * SLOT]).index(b"volume_uuid=") + len(b"volume_uuid=")
    data[s * SLOT + i] = ord("0") if data[s * SLOT + i] != ord("0") else ord("1")
open(path, "wb").write(data)
print(" ".join(f"{s}(seq {seqs[s]})" for s in slots))
PY
}

# ---- 1: the newer slot damaged: start on the older one -------------------------------------
nm_log "damaged slot $(damage newer)"
nm_start_primary "$volume" "$sock"
log=$NM_LOG
[[ $(nm_count_in_log "$log" "the other slot is invalid") -ge 1 ]] ||
  nm_fail "no warning that a superblock slot was invalid"
[[ $(nm_status_field "$volume" volume_uuid) == "$uuid" ]] ||
  nm_fail "volume_uuid $(nm_status_field "$volume" volume_uuid) after recovery, expected $uuid"
nm_stop_clean "$NM_PID" daemon

# ---- 2: both slots damaged: refuse, touch nothing -------------------------------------------
nm_log "damaged slots $(damage 0 1)"
meta_hash=$(sha256sum <"$meta")
volume_hash=$(sha256sum <"$volume")
rc=0
timeout 30 "$NM_BIN" run --volume "$volume" --primary --nbd "unix:$sock" \
  >"$NM_TMP/refused.log" 2>&1 || rc=$?
((rc == 1)) || nm_fail "run with no valid superblock exited with status $rc, expected 1"
grep -q "no valid superblock" "$NM_TMP/refused.log" ||
  nm_fail "the refusal does not say why: $(cat "$NM_TMP/refused.log")"
[[ $(sha256sum <"$meta") == "$meta_hash" ]] || nm_fail "the refused start changed the metadata"
[[ $(sha256sum <"$volume") == "$volume_hash" ]] || nm_fail "the refused start changed the volume"
nm_log "PASS: $(grep -o 'no valid superblock.*' "$NM_TMP/refused.log" | head -c 160)"
