#!/usr/bin/env bash
# mirror_verify_test: `nbdmirror verify` compares both copies online by block digests, finds
# blocks that differ, reports their ranges, marks them and resynchronises them; on identical
# copies it says so, also while a client is writing.
#
# How: a primary and a standby on loopback (64 MiB volumes), 32 MiB of random data written
# through the export with nbdcopy. verify must exit 0. Then two blocks of the standby's backing
# file are altered behind the daemon's back (4 KiB at 5 MiB + 100 and one byte at 40 MiB), as
# silent corruption would: verify must exit 1 naming exactly the two 1 MiB blocks around them,
# the primary resyncs them (status goes back to peer_disk UpToDate), the files become identical,
# and a second verify exits 0. A verify with fio's nbd engine writing (verify=crc32c) at the
# same time must exit 0 and fio must pass. verify on the secondary, and on a primary whose
# peer is down, must refuse with exit 2 and a reason.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require nbdcopy fio cmp jq dd
fio --enghelp=nbd >/dev/null 2>&1 || nm_skip "this fio has no nbd engine"

mib=$((1 << 20))
secret=$NM_TMP/secret
nm_make_secret "$secret"
a=$NM_TMP/a.img
b=$NM_TMP/b.img
nm_make_volume "$a" 64M
nm_make_volume "$b" 64M
read -r port_a port_b <<<"$(nm_free_ports 2)"
NM_DAEMON_LABEL=standby nm_start_secondary "$b" --node b --listen "127.0.0.1:$port_b" \
  --peer "a=127.0.0.1:$port_a" --secret-file "$secret"
standby=$NM_PID
NM_DAEMON_LABEL=primary nm_start_primary "$a" "$NM_TMP/a.sock" --node a \
  --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:$port_b" --secret-file "$secret"
primary=$NM_PID
uri=$NM_URI
nm_wait_status 30 "$a" peer_disk UpToDate
head -c 32M /dev/urandom >"$NM_TMP/random.bin"
nbdcopy "$NM_TMP/random.bin" "$uri" || nm_fail "nbdcopy into the export failed"

# verify_expect CODE: runs `nbdmirror verify` on the primary; its exit status must be CODE.
verify_expect() {
  local rc=0
  "$NM_BIN" verify --volume "$a" >"$NM_TMP/verify.out" 2>&1 || rc=$?
  cat "$NM_TMP/verify.out" >&2
  ((rc == $1)) || nm_fail "verify exited ${rc}, expected $1"
}

verify_expect 0
grep -q "identical" "$NM_TMP/verify.out" || nm_fail "verify did not say the copies are identical"
nm_log "identical copies: verify exit 0"

printf 'X' | dd of="$b" bs=1 seek=$((40 * mib)) conv=notrunc,fsync status=none
head -c 4096 /dev/urandom | dd of="$b" bs=1 seek=$((5 * mib + 100)) conv=notrunc,fsync status=none
cmp -s "$a" "$b" && nm_fail "the corruption did not change the standby's file"
verify_expect 1
grep -q "differing ranges (offset+length): $((5 * mib))+${mib},$((40 * mib))+${mib}\$" \
  "$NM_TMP/verify.out" || nm_fail "verify did not name exactly the two altered blocks"
nm_wait_for 30 "the resync of the differing blocks" nm_peer_up_to_date "$a"
nm_wait_status 10 "$a" out_of_sync_bytes 0
cmp "$a" "$b" || nm_fail "the files still differ after verify's resync"
verify_expect 0
nm_log "two altered blocks found, named, resynced; the files are identical again"

(cd "$NM_TMP" && exec fio --name=during --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k \
  --size=16M --offset=$((48 * mib)) --iodepth=8 --verify=crc32c --verify_fatal=1 --loops=4 \
  --verify_state_save=0 >"$NM_TMP/fio.out" 2>&1) &
fio_pid=$!
nm_track_pid "$fio_pid"
verify_expect 0
rc=0
nm_wait_exit "$fio_pid" 120 || rc=$?
((rc == 0)) || { cat "$NM_TMP/fio.out" >&2; nm_fail "fio during verify exited ${rc}"; }
nm_log "verify while fio writes: identical, and fio's own verify passed"

rc=0
"$NM_BIN" verify --volume "$b" >"$NM_TMP/verify.out" 2>&1 || rc=$?
((rc == 2)) && grep -q "primary" "$NM_TMP/verify.out" || nm_fail "verify on the secondary: ${rc}"
nm_stop_clean "$standby" "the standby"
nm_wait_for 20 "the primary to notice" nm_status_is_not "$a" connection connected
rc=0
"$NM_BIN" verify --volume "$a" >"$NM_TMP/verify.out" 2>&1 || rc=$?
((rc == 2)) && grep -q "connected" "$NM_TMP/verify.out" || nm_fail "verify without peer: ${rc}"
nm_log "verify refuses on a secondary and without the peer: $(cat "$NM_TMP/verify.out")"
nm_stop_clean "$primary" "the primary"
nm_log "PASS"
