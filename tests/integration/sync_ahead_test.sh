#!/usr/bin/env bash
# sync_ahead_test: both hosts make the write before a FLUSH they can expect (the client
# flushed after each write so far) durable by itself, as a write-through, so the FLUSH finds
# nothing to sync; and a client that never flushes never triggers that (nor a datasync ahead).
#
# How: a pair in mode flush on loopback (64 MiB sparse volumes, --skip-initial-sync). fio's nbd
# engine first writes 2000 random 4 KiB blocks 16 deep with no FLUSH: neither daemon may report
# a `sync_ahead_datasyncs` or a `write_through_writes`, and the primary no `datasyncs` at all.
# Then 400 random 4 KiB writes one at a time, each followed by a FLUSH (fsync=1), with verify:
# on each host most of those writes must have been written through (`write_through_writes` at
# least half the FLUSHes: each is alone in flight, and the one FLUSH pattern predicts the next),
# and the datasyncs must not outnumber the FLUSHes. The standby writes through the writes the
# primary wrote through (they come to it as durable), so most FLUSHes need not ask it
# (`flushes_without_peer` at least half the FLUSHes; the standby's `apply_flush_done` counts
# the others). Then both stop cleanly and the files are compared.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require fio cmp jq
fio --enghelp=nbd >/dev/null 2>&1 || nm_skip "this fio has no nbd engine"

a=$NM_TMP/a.img
b=$NM_TMP/b.img
nm_make_volume "$a" 64M
nm_make_volume "$b" 64M
nm_make_secret "$NM_TMP/secret"
read -r port_a port_b <<<"$(nm_free_ports 2)"

NM_DAEMON_LABEL=standby nm_start_secondary "$b" --node b --listen "127.0.0.1:$port_b" \
  --peer "a=127.0.0.1:$port_a" --secret-file "$NM_TMP/secret"
standby=$NM_PID
NM_DAEMON_LABEL=primary nm_start_primary "$a" "$NM_TMP/a.sock" --node a \
  --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:$port_b" --secret-file "$NM_TMP/secret" \
  --mode flush --skip-initial-sync
primary=$NM_PID
uri=$NM_URI
nm_wait_for 20 "the pair in sync" nm_peer_up_to_date "$a"

field() { nm_status_field "$1" "$2"; }

# run_fio NAME FIO-ARGS...: fio must exit 0.
run_fio() {
  local name=$1 rc=0
  shift
  (cd "$NM_TMP" && fio --name="$name" --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k \
    --size=32M "$@" >"$NM_TMP/$name.out" 2>&1) || rc=$?
  ((rc == 0)) || { cat "$NM_TMP/$name.out" >&2; nm_fail "fio $name exited $rc"; }
}

# ---- a client that never flushes ---------------------------------------------------------------
run_fio noflush --iodepth=16 --number_ios=2000
for side in "$a" "$b"; do
  for key in sync_ahead_datasyncs write_through_writes; do
    [[ $(field "$side" $key) == 0 ]] ||
      nm_fail "$(basename "$side"): ${key} $(field "$side" $key) with no FLUSH sent"
  done
done
[[ $(field "$a" flushes) == 0 && $(field "$a" datasyncs) == 0 ]] ||
  nm_fail "the primary counts $(field "$a" flushes) FLUSHes, $(field "$a" datasyncs) datasyncs without a FLUSH"
nm_log "2000 writes without FLUSH: no write-through, no datasync ahead on either host"

# ---- a write, a FLUSH, a write, a FLUSH, ... ---------------------------------------------------
flushes_a0=$(field "$a" flushes)
flushes_b0=$(field "$b" apply_flush_done)
without_peer_a0=$(field "$a" flushes_without_peer)
syncs_a0=$(field "$a" datasyncs)
syncs_b0=$(field "$b" datasyncs)
run_fio fsync --iodepth=1 --fsync=1 --number_ios=400 --offset=32M --verify=crc32c \
  --verify_fatal=1 --verify_state_save=0
flushes=$(($(field "$a" flushes) - flushes_a0))
# fio sends a FLUSH after every write but may skip the one after its last.
((flushes >= 399)) || nm_fail "only ${flushes} FLUSHes reached the primary"
for side in "$a" "$b"; do
  name=$(basename "$side")
  ahead=$(field "$side" sync_ahead_datasyncs)
  through=$(field "$side" write_through_writes)
  if [[ $side == "$a" ]]; then syncs0=$syncs_a0; else syncs0=$syncs_b0; fi
  syncs=$(($(field "$side" datasyncs) - syncs0))
  ((through * 2 >= flushes)) ||
    nm_fail "${name}: ${through} writes written through for ${flushes} FLUSHes after single writes"
  # Each FLUSH needs at most one datasync (none after a write-through); a few more are clean
  # cycles' (primary).
  ((syncs <= flushes + 5)) ||
    nm_fail "${name}: ${syncs} datasyncs for ${flushes} FLUSHes"
  nm_log "${name}: ${flushes} FLUSHes after single writes: ${through} writes written through, ${syncs} datasyncs (${ahead} started ahead)"
done
# A written-through write goes to the standby as durable, so the FLUSH after it has nothing to
# ask the standby: most FLUSHes must be answered without a round trip to it. Those that did ask
# it are what the standby received.
without_peer=$(($(field "$a" flushes_without_peer) - without_peer_a0))
((without_peer * 2 >= flushes)) ||
  nm_fail "only ${without_peer} of ${flushes} FLUSHes were answered without asking the standby"
asked=$(($(field "$b" apply_flush_done) - flushes_b0))
# (Plus, at most, a bitmap clean cycle's Flush, should one end between fio's end and the reads.)
((asked >= flushes - without_peer && asked <= flushes - without_peer + 1)) ||
  nm_fail "the standby got ${asked} Flushes; the primary asked it for $((flushes - without_peer))"
nm_log "${without_peer} of ${flushes} FLUSHes answered without a round trip to the standby; it got ${asked}"

nm_stop_clean "$primary" "the primary"
nm_stop_clean "$standby" "the standby"
cmp "$a" "$b" || nm_fail "the two backing files differ after a clean stop"
nm_log "files identical"
