#!/usr/bin/env bash
# nbdinfo_test: the export is advertised as documented, over a Unix socket and over TCP.
#
# How: serve a fresh 256 MiB sparse file and read what libnbd's nbdinfo sees. `nbdinfo --json`
# must report the file's size, the block sizes 512/4096/32 MiB and every capability we
# advertise (multi-conn, flush, FUA, trim, zero, fast zero, cache, DF, base:allocation);
# `nbdinfo --list` must list the export; `nbdinfo --map` (base:allocation) must show the fresh
# file as one hole,zero extent and, after qemu-io writes 1 MiB at 4 MiB, data exactly there and
# holes around it. A second daemon serves a named export on a kernel-chosen TCP port: its size,
# its name in --list, and the refusal of an unknown export name are checked over nbd://.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require nbdinfo qemu-io python3 truncate

volume=$NM_TMP/volume.img
nm_make_volume "$volume" 256M
file_size=$(stat -c %s "$volume")

nm_start_primary "$volume" "$NM_TMP/nbd.sock"
uri=$NM_URI
daemon=$NM_PID

# --- nbdinfo --json: size, block sizes, capabilities -------------------------------------
nbdinfo --json "$uri" >"$NM_TMP/info.json" || nm_fail "nbdinfo --json failed"
python3 - "$NM_TMP/info.json" "$file_size" <<'EOF' ||
  nm_fail "nbdinfo --json does not match the documented export"
import json, sys
info = json.load(open(sys.argv[1]))
size = int(sys.argv[2])
errors = []
exports = info.get("exports", [])
if len(exports) != 1:
    errors.append(f"expected exactly one export, got {len(exports)}")
e = exports[0] if exports else {}
def expect(key, want):
    got = e.get(key)
    if got != want:
        errors.append(f"{key}: expected {want!r}, got {got!r}")
expect("export-size", size)
expect("block_size_minimum", 512)
expect("block_size_preferred", 4096)
expect("block_size_maximum", 32 * 1024 * 1024)
for flag in ("can_multi_conn", "can_flush", "can_fua", "can_trim", "can_zero",
             "can_fast_zero", "can_cache", "can_df"):
    expect(flag, True)
expect("is_read_only", False)
if "base:allocation" not in e.get("contexts", []):
    errors.append(f"base:allocation missing from contexts {e.get('contexts')!r}")
if info.get("protocol") != "newstyle-fixed":
    errors.append(f"protocol: {info.get('protocol')!r}")
if info.get("structured") is not True:
    errors.append("structured replies were not negotiated")
for err in errors:
    print("  " + err, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
nm_log "nbdinfo --json: size ${file_size}, block sizes and capabilities as documented"

size=$(nbdinfo --size "$uri")
[[ $size == "$file_size" ]] || nm_fail "nbdinfo --size says ${size}, the file has ${file_size}"

# --- nbdinfo --list ----------------------------------------------------------------------
nbdinfo --list --json "$uri" >"$NM_TMP/list.json" || nm_fail "nbdinfo --list failed"
python3 - "$NM_TMP/list.json" "$file_size" <<'EOF' ||
  nm_fail "nbdinfo --list does not show the export"
import json, sys
exports = json.load(open(sys.argv[1])).get("exports", [])
names = [e.get("export-name") for e in exports]
if names != [""]:
    sys.exit(f"  expected one export named '', got {names!r}")
if exports[0].get("export-size") != int(sys.argv[2]):
    sys.exit(f"  listed size {exports[0].get('export-size')!r}")
EOF
nm_log "nbdinfo --list: one export, the default one"

# --- nbdinfo --map: sparse, then data where we wrote --------------------------------------
check_map() {  # check_map JSON_FILE SIZE [DATA_OFFSET DATA_LENGTH]
  python3 - "$@" <<'EOF'
import json, sys
extents = json.load(open(sys.argv[1]))
size = int(sys.argv[2])
data = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else None
pos = 0
errors = []
for e in extents:
    if e["offset"] != pos:
        errors.append(f"gap or overlap at {pos}: next extent starts at {e['offset']}")
    start, end = e["offset"], e["offset"] + e["length"]
    in_data = data is not None and start >= data[0] and end <= data[0] + data[1]
    outside = data is None or end <= data[0] or start >= data[0] + data[1]
    if in_data and e["type"] != 0:
        errors.append(f"{start}+{e['length']} should be data, is {e['description']}")
    elif outside and e["type"] != 3:
        errors.append(f"{start}+{e['length']} should be hole,zero, is {e['description']}")
    elif not in_data and not outside:
        errors.append(f"{start}+{e['length']} straddles the written range")
    pos = end
if pos != size:
    errors.append(f"map covers {pos} bytes, export has {size}")
for err in errors:
    print("  " + err, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
}

nbdinfo --map --json "$uri" >"$NM_TMP/map0.json" || nm_fail "nbdinfo --map failed"
check_map "$NM_TMP/map0.json" "$file_size" ||
  nm_fail "a fresh sparse volume is not reported as hole,zero: $(cat "$NM_TMP/map0.json")"

qemu-io -f raw -c 'write -P 0x5a 4M 1M' "$uri" >"$NM_TMP/qemu-io.out" 2>&1 ||
  nm_fail "qemu-io write failed: $(cat "$NM_TMP/qemu-io.out")"
nbdinfo --map --json "$uri" >"$NM_TMP/map1.json" || nm_fail "nbdinfo --map failed"
check_map "$NM_TMP/map1.json" "$file_size" $((4 << 20)) $((1 << 20)) ||
  nm_fail "after writing 1 MiB at 4 MiB the map is wrong: $(cat "$NM_TMP/map1.json")"
# The data really is there, read back through a second client.
qemu-io -f raw -c 'read -P 0x5a 4M 1M' -c 'read -P 0 0 4M' -c 'read -P 0 5M 1M' "$uri" \
  >"$NM_TMP/qemu-io.out" 2>&1 || nm_fail "qemu-io read-back failed: $(cat "$NM_TMP/qemu-io.out")"
if grep -q "Pattern verification failed" "$NM_TMP/qemu-io.out"; then
  nm_fail "read-back mismatch: $(cat "$NM_TMP/qemu-io.out")"
fi
nm_log "nbdinfo --map: hole,zero when fresh; data at 4 MiB+1 MiB after the write"

# --- TCP, with a named export ------------------------------------------------------------
tcp_volume=$NM_TMP/tcp.img
nm_make_volume "$tcp_volume" 64M
port=$(nm_free_port)
nm_start_primary "$tcp_volume" "127.0.0.1:${port}" --export-name disk1
tcp_daemon=$NM_PID
tcp_size=$(nbdinfo --size "nbd://127.0.0.1:${port}/disk1") || nm_fail "nbdinfo over TCP failed"
[[ $tcp_size == $((64 << 20)) ]] || nm_fail "TCP export size ${tcp_size}, expected $((64 << 20))"
nbdinfo --list "nbd://127.0.0.1:${port}" >"$NM_TMP/tcp-list.txt" 2>&1 ||
  nm_fail "nbdinfo --list over TCP failed: $(cat "$NM_TMP/tcp-list.txt")"
grep -q '^export="disk1":' "$NM_TMP/tcp-list.txt" ||
  nm_fail "--list over TCP does not name disk1: $(cat "$NM_TMP/tcp-list.txt")"
if nbdinfo --size "nbd://127.0.0.1:${port}/no-such-export" >/dev/null 2>&1; then
  nm_fail "an unknown export name was accepted"
fi
nm_log "TCP: nbd://127.0.0.1:${port}/disk1 has the right size and name; unknown names are refused"

nm_assert_alive "$daemon" "the Unix-socket daemon"
for pid in "$tcp_daemon" "$daemon"; do
  rc=0
  nm_stop "$pid" || rc=$?
  ((rc == 0)) || nm_fail "nbdmirror pid ${pid} exited with ${rc} after SIGTERM"
done
[[ ! -e $NM_TMP/nbd.sock ]] || nm_fail "the Unix socket file was left behind"
echo "PASS: nbdinfo_test"
