#!/usr/bin/env bash
# mirror_bad_peer_test: a peer that lies, corrupts or does not know the secret is refused or
# dropped with a clear log line, never writes a byte into the standby's volume, and never
# takes a daemon down; a primary refuses anyone who would mirror into it, and refuses to mirror
# into a peer that says it is primary too, while it keeps serving its NBD clients.
#
# How: fake_peer.py speaks the real protocol (framing and CRC32C as transport/frame.h says,
# HMAC-SHA256 authentication as transport/peer_auth.h says, messages from protobuf classes that
# protoc generates from transport/peer.proto into the temp dir) and then does one thing wrong.
#   1. A real standby (node b, 64 MiB) is paired once with a real primary (node a): full resync,
#      8 MiB of random data through nbdcopy, then the primary stops cleanly. The standby keeps
#      running, UpToDate, with the volume's identity.
#   2. Positive control: the fake, as primary a, does a correct handshake and writes 64 KiB
#      that the standby acknowledges and that land in its file: the fake's frames are right, so
#      what follows tests the daemon, not the fake.
#   3. Against the standby, each must be refused or dropped, with its log line: a wrong secret;
#      garbage instead of a frame; an oversized header during the handshake; a Hello from
#      another node id, with role secondary, with another size, with another volume identity;
#      and after a correct handshake: a Write with a bad CRC, an oversized message length, a
#      payload on a Flush, an unknown frame type, a Write past the end of the volume, a Write
#      whose payload is longer than it declares, an empty Write and an empty Zero (which must
#      not reach the disk, where they would come back as I/O errors). After each, the standby is alive, no longer
#      attached, and its backing file hashes as before. Last, the positive control again: it
#      still accepts a real primary.
#   4. A real primary (node a again): the fake dials its peer port and claims to be b, as
#      secondary and as primary: refused ("is primary"). A fake standby answers the primary's
#      dial with a Hello whose role is PRIMARY: the primary refuses to mirror (log: split
#      brain), stays unconnected, and keeps serving NBD: 4 MiB written and read back, counted
#      as degraded writes. Then both daemons must still be alive and stop cleanly (exit 0).

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require protoc nbdcopy nbdinfo cmp sha256sum
nm_python_with google.protobuf

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pb_dir=$NM_TMP/pb
mkdir -p "$pb_dir"
protoc --python_out="$pb_dir" -I "$NM_SOURCE_DIR/transport" "$NM_SOURCE_DIR/transport/peer.proto" ||
  nm_fail "protoc could not generate the Python classes for peer.proto"
"$NM_PYTHON" "$here/fake_peer.py" --pb-dir "$pb_dir" selftest >&2 ||
  nm_fail "fake_peer.py's CRC32C or framing is wrong"

a=$NM_TMP/a.img
b=$NM_TMP/b.img
secret=$NM_TMP/secret
nm_make_secret "$secret"
nm_make_volume "$a" 64M
nm_make_volume "$b" 64M
ports=$(nm_free_ports 3)
read -r port_a port_b fake_port <<<"$ports"

# ---- 1. pair once --------------------------------------------------------------------------
NM_DAEMON_LABEL=standby nm_start_secondary "$b" --node b --listen "127.0.0.1:$port_b" \
  --peer "a=127.0.0.1:$port_a" --secret-file "$secret"
standby=$NM_PID
standby_log=$NM_LOG
NM_DAEMON_LABEL=primary nm_start_primary "$a" "$NM_TMP/nbd.sock" --node a \
  --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:$port_b" --secret-file "$secret"
primary=$NM_PID
nm_wait_status 30 "$a" peer_disk UpToDate
head -c 8M /dev/urandom >"$NM_TMP/random.bin"
nbdcopy "$NM_TMP/random.bin" "$NM_URI" || nm_fail "nbdcopy into the export failed"
nm_stop_clean "$primary" "the first primary"
nm_wait_status 10 "$b" connection connecting
nm_status_is "$b" disk UpToDate || nm_fail "the standby is not UpToDate after pairing"
cmp -n $((8 << 20)) "$NM_TMP/random.bin" "$b" || nm_fail "the standby lacks the paired data"
uuid=$(nm_status_field "$b" volume_uuid)
size=$(nm_status_field "$b" size_bytes)
gen=$(nm_status_field "$b" current_gen)
[[ -n $uuid && $size == $((64 << 20)) ]] || nm_fail "standby status: uuid '${uuid}', size '${size}'"
nm_log "paired once: the standby is UpToDate with volume ${uuid}; the primary has stopped"

# fake CASE [ARGS...]: runs fake_peer.py against the standby as node a; fails the test unless
# it exits 0 (the daemon did what it must). Prints its RESULT line to the log.
fake() {
  local case=$1
  shift
  local out=$NM_TMP/fake-$case.out rc=0
  "$NM_PYTHON" "$here/fake_peer.py" --pb-dir "$pb_dir" --secret-file "$secret" \
    --connect "$port_b" --uuid "$uuid" --size "$size" --gen "$gen" "$@" "$case" >"$out" 2>&1 ||
    rc=$?
  if ((rc != 0)); then
    cat "$out" >&2
    nm_fail "fake peer case '${case}': exit ${rc}: $(grep RESULT "$out" || true)"
  fi
  nm_log "  $(grep RESULT "$out" | cut -c1-200)"
}

# ---- 2. positive control -----------------------------------------------------------------
head -c 65536 /dev/urandom >"$NM_TMP/control1.bin"
fake good-write --offset $((16 << 20)) --data "$NM_TMP/control1.bin"
cmp -n 65536 -i "0:$((16 << 20))" "$NM_TMP/control1.bin" "$b" ||
  nm_fail "the positive control's write was acknowledged but is not in the standby's file"
nm_wait_status 10 "$b" connection connecting
hash=$(nm_sha256 "$b")
nm_log "positive control: the fake's correct Write landed; the standby's file is now ${hash:0:16}..."

# ---- 3. against the standby ----------------------------------------------------------------
# refused CASE LOG_REGEX [ARGS...]: the case must end as fake_peer.py expects, the standby's
# log must get a new line matching LOG_REGEX, and nothing may change.
refused() {
  local case=$1 regex=$2
  shift 2
  local before
  before=$(nm_count_in_log "$standby_log" "$regex")
  fake "$case" "$@"
  nm_wait_for 10 "the standby to log /${regex}/ for case ${case}" \
    test_more_in_log "$standby_log" "$regex" "$before"
  nm_assert_alive "$standby" "the standby after case ${case}"
  nm_wait_status 10 "$b" connection connecting
  nm_status_is "$b" disk UpToDate || nm_fail "case ${case}: the standby is no longer UpToDate"
  [[ $(nm_sha256 "$b") == "$hash" ]] || nm_fail "case ${case}: the standby's backing file changed"
}
test_more_in_log() { (($(nm_count_in_log "$1" "$2") > $3)); }

refused wrong-secret 'refused: .*authentication'
refused garbage 'refused: .*without the NBMR magic'
refused oversized-handshake 'refused: .*claims a 65537-byte message'
refused wrong-node "refused: node 'mallory' is not the configured peer 'a'"
refused not-primary 'refused: .*only a primary may connect'
refused wrong-size 'refused: .*size mismatch'
refused wrong-uuid 'refused: .*volume identity mismatch'
refused bad-crc 'primary a disconnected: .*Write frame failed its CRC32C check'
refused oversized 'primary a disconnected: .*claims a 65537-byte message'
refused payload-on-flush 'primary a disconnected: .*Flush frame claims a 16-byte payload'
refused unknown-type 'primary a disconnected: .*unknown type 99'
refused past-end 'invalid operation: Write at [0-9]+\+8192 is past the end of the volume'
refused length-mismatch 'invalid operation: Write declares 4096 bytes but carries 8192' \
  --offset $((20 << 20))
refused empty-write 'invalid operation: Write of 0 bytes at [0-9]+' --offset $((20 << 20))
refused empty-zero 'invalid operation: Zero of 0 bytes at [0-9]+' --offset $((20 << 20))
nm_log "every bad peer was refused or dropped with its log line; the standby's file is unchanged"

head -c 65536 /dev/urandom >"$NM_TMP/control2.bin"
fake good-write --offset $((24 << 20)) --data "$NM_TMP/control2.bin"
cmp -n 65536 -i "0:$((24 << 20))" "$NM_TMP/control2.bin" "$b" ||
  nm_fail "the second positive control's write is not in the standby's file"
nm_assert_alive "$standby" "the standby"
nm_log "positive control again: the standby still takes a correct primary's writes"

# ---- 4. against a primary --------------------------------------------------------------------
"$NM_PYTHON" "$here/fake_peer.py" --pb-dir "$pb_dir" --secret-file "$secret" \
  --listen "$fake_port" --node b --timeout 30 split-brain-standby >"$NM_TMP/fake-split.out" 2>&1 &
fake_standby=$!
nm_track_pid "$fake_standby"
nm_wait_for 20 "the fake standby to listen" grep -q '^listening' "$NM_TMP/fake-split.out"

NM_DAEMON_LABEL=primary nm_start_primary "$a" "$NM_TMP/nbd.sock" --node a \
  --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:$fake_port" --secret-file "$secret"
primary=$NM_PID
primary_log=$NM_LOG

for role in secondary primary; do
  out=$NM_TMP/fake-to-primary-$role.out
  rc=0
  "$NM_PYTHON" "$here/fake_peer.py" --pb-dir "$pb_dir" --secret-file "$secret" \
    --connect "$port_a" --node b --role "$role" --uuid "$uuid" --size "$size" \
    hello-to-primary >"$out" 2>&1 || rc=$?
  ((rc == 0)) || { cat "$out" >&2; nm_fail "hello-to-primary as ${role}: exit ${rc}"; }
  grep -q "RESULT ok: .*is primary" "$out" ||
    { cat "$out" >&2; nm_fail "hello-to-primary as ${role}: not refused as 'is primary'"; }
  nm_log "  $(grep RESULT "$out" | cut -c1-200)"
done
[[ $(nm_count_in_log "$primary_log" "refused: node 'a' is primary; 'b' may not mirror into it") -ge 2 ]] ||
  nm_fail "the primary did not log both refusals"

rc=0
nm_wait_exit "$fake_standby" 40 || rc=$?
((rc == 0)) || { cat "$NM_TMP/fake-split.out" >&2; nm_fail "split-brain-standby: exit ${rc}"; }
grep -q "RESULT ok: .*split brain" "$NM_TMP/fake-split.out" ||
  { cat "$NM_TMP/fake-split.out" >&2; nm_fail "the primary's Refuse does not say split brain"; }
nm_log "  $(grep RESULT "$NM_TMP/fake-split.out" | cut -c1-200)"
grep -qE "peer b .*is primary too; refusing to mirror \(split brain\?\)" "$primary_log" ||
  nm_fail "the primary's log does not mention the split brain"
nm_status_is_not "$a" connection connected || nm_fail "the primary reports a connected peer"

head -c 4M /dev/urandom >"$NM_TMP/degraded.bin"
nbdcopy "$NM_TMP/degraded.bin" "$NM_URI" || nm_fail "the primary stopped serving NBD writes"
nbdcopy "$NM_URI" "$NM_TMP/readback.bin" || nm_fail "the primary stopped serving NBD reads"
cmp -n $((4 << 20)) "$NM_TMP/degraded.bin" "$NM_TMP/readback.bin" ||
  nm_fail "what the primary served degraded does not read back"
nm_status_ge "$a" degraded_writes 1 || nm_fail "the writes were not counted degraded"
nm_status_is "$a" peer_disk Outdated ||
  nm_fail "peer_disk is '$(nm_status_field "$a" peer_disk)' after degraded writes, expected Outdated"
nm_log "the primary refused the split brain and kept serving NBD (degraded, peer Outdated)"

nm_assert_alive "$primary" "the primary"
nm_assert_alive "$standby" "the standby"
nm_stop_clean "$primary" "the primary"
nm_stop_clean "$standby" "the standby"
nm_log "PASS: both daemons survived every bad peer and stopped cleanly"
