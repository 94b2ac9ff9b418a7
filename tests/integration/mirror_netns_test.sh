#!/usr/bin/env bash
# mirror_netns_test: the mirror works across a real network link, not only loopback: a standby
# on another "host" (a network namespace) gets every write, and both copies end identical.
#
# How: the test creates its own network namespace (unique name) and a veth pair, one end in the
# namespace and one in the root namespace, with the two addresses of a private /30 chosen from
# 10.213.0.0/16 (one not already on this machine); nothing else is routed or bridged, so the
# only traffic is between those two ends. The standby (node b) runs inside the namespace
# (`ip netns exec`) listening on its end's address; the primary (node a) runs in the root
# namespace, listens on its end's address and dials the standby over the veth. After the
# initial resync (peer_disk UpToDate), fio's nbd engine writes 2 x 16 MiB of random 4 KiB
# blocks with verify=crc32c (32 in flight) and nbdcopy writes 32 MiB of random data. Both
# daemons must log that the peer connected from the other end's address, the veth must have
# carried at least the 64 MiB written, nothing may be acknowledged degraded, and after clean
# stops (primary then standby, both exit 0) the backing files must be byte-identical. The
# cleanup deletes the namespace and the veth pair, also on failure. Skipped (77) where `ip netns
# add` is not allowed.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require ip fio nbdcopy nbdinfo cmp
fio --enghelp=nbd >/dev/null 2>&1 || nm_skip "this fio has no nbd engine"

nm_make_netns
ns=$NM_NS veth_root=$NM_VETH_ROOT addr_root=$NM_ADDR_ROOT addr_ns=$NM_ADDR_NS

a=$NM_TMP/a.img
b=$NM_TMP/b.img
sock=$NM_TMP/nbd.sock
secret=$NM_TMP/secret
nm_make_secret "$secret"
nm_make_volume "$a" 128M
nm_make_volume "$b" 128M
ports=$(nm_free_ports 2)
read -r port_a port_b <<<"$ports"

NM_EXEC_PREFIX=(ip netns exec "$ns")
NM_DAEMON_LABEL=standby nm_start_secondary "$b" --node b --listen "${addr_ns}:${port_b}" \
  --peer "a=${addr_root}:${port_a}" --secret-file "$secret"
standby=$NM_PID
standby_log=$NM_LOG
NM_EXEC_PREFIX=()
[[ $(readlink "/proc/$standby/ns/net") == "$(readlink "/proc/self/ns/net" 2>/dev/null || true)" ]] &&
  nm_fail "the standby runs in the root network namespace"

NM_DAEMON_LABEL=primary nm_start_primary "$a" "$sock" --node a --listen "${addr_root}:${port_a}" \
  --peer "b=${addr_ns}:${port_b}" --secret-file "$secret"
primary=$NM_PID
primary_log=$NM_LOG
uri=$NM_URI

nm_wait_status 30 "$a" peer_disk UpToDate
nm_wait_status 10 "$b" disk UpToDate
nm_status_is "$a" connection connected || nm_fail "the primary is not connected"
grep -qF "peer b connected from ${addr_ns}:" "$primary_log" ||
  nm_fail "the primary's log does not show the standby connected from ${addr_ns}"
grep -qF "primary a connected from ${addr_root}:" "$standby_log" ||
  nm_fail "the standby's log does not show the primary connected from ${addr_root}"
tx_before=$(cat "/sys/class/net/${veth_root}/statistics/tx_bytes")
nm_log "standby in sync over the veth pair"

(cd "$NM_TMP" && fio --name=veth --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k \
  --numjobs=2 --size=16M --offset_increment=16M --iodepth=32 --verify=crc32c --verify_fatal=1 \
  --verify_dump=0 --verify_state_save=0 --output="$NM_TMP/fio.out") 2>"$NM_TMP/fio.err" ||
  { cat "$NM_TMP/fio.err" "$NM_TMP/fio.out" >&2; nm_fail "fio failed"; }
grep -q "err= 0" "$NM_TMP/fio.out" || { cat "$NM_TMP/fio.out" >&2; nm_fail "fio reported errors"; }
nm_log "fio: 2 x 16 MiB of verified 4 KiB random writes"

head -c 32M /dev/urandom >"$NM_TMP/random.bin"
nbdcopy "$NM_TMP/random.bin" "$uri" || nm_fail "nbdcopy into the export failed"
nm_log "nbdcopy: 32 MiB of random data"

tx_after=$(cat "/sys/class/net/${veth_root}/statistics/tx_bytes")
carried=$((tx_after - tx_before))
((carried >= 64 << 20)) || nm_fail "the veth carried only ${carried} bytes for 64 MiB of writes"
nm_status_is "$a" connection connected || nm_fail "the primary lost the standby"
nm_status_is "$a" degraded_writes 0 ||
  nm_fail "$(nm_status_field "$a" degraded_writes) writes were acknowledged without the standby"
nm_log "the veth carried $((carried >> 20)) MiB; no write degraded"

nm_stop_clean "$primary" "primary"
grep -q "peer b at shutdown: in sync" "$primary_log" ||
  nm_fail "the primary did not record the standby in sync at shutdown"
nm_stop_clean "$standby" "standby"
cmp "$a" "$b" || nm_fail "the two backing files differ after a clean stop"
cmp -n $((32 << 20)) "$NM_TMP/random.bin" "$b" || nm_fail "the standby's file lacks the nbdcopy data"
nm_log "PASS: both stopped cleanly; the backing files are byte-identical"
