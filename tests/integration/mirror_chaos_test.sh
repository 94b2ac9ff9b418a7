#!/usr/bin/env bash
# mirror_chaos_test: process-level faults at random moments under verified fio load. After each
# one the pair recovers by itself (or once the killed process is restarted), fio's verify
# passes, the backing files are byte-identical, and the bytes resynced are bounded by what fio
# could write in that round, not by the volume size.
#
# How: the standby (node b) runs in its own network namespace behind a veth pair (unique names,
# a private /30 from 10.213.0.0/16, as in mirror_netns_test.sh). The primary (node a) dials it
# through corrupt_proxy.py, which runs in the root namespace for the whole test and can invert
# one byte of the next Write frame's payload. The primary clears idle bitmap regions after 1 s
# (--bitmap-clean-ms 1000, so rounds need not wait 5 s for a clean bitmap). Both daemons use
# --peer-timeout-ms 1000 and
# 64 KiB bitmap regions on 256 MiB sparse volumes. After the initial (full) sync, each round:
#   - picks a fault (the rounds deal the six faults from a seeded shuffled deck, so every
#     fault comes up every six rounds in a random order), a 16 MiB window of the volume for
#     fio (one of its 16 slots), the moment (after K of the window's 4096 writes)
#     and the outage length (M further writes without the peer);
#   - runs fio's nbd engine over the window (randwrite 4k, iodepth 16, 1500 IOPS, verify=crc32c)
#     and injects the fault once the primary has taken K of its writes:
#       kill-standby   SIGKILL the standby; M writes later restart it with the same flags;
#       kill-primary   SIGKILL the primary (fio loses its connection and fails); restart it
#                      with the same flags; it must keep its generation and resync the regions
#                      marked at the crash (incremental); then a fresh verified fio pass over
#                      the window must pass;
#       stop-standby   SIGSTOP the standby until the primary has declared it lost (heartbeat
#                      timeout) and taken M writes without it, then SIGCONT;
#       stop-primary   SIGSTOP the primary until the standby has declared it lost, a little
#                      longer, then SIGCONT;
#       link-down      `ip link set VETH down` until the primary has declared the standby lost
#                      and taken M writes without it, then up;
#       corrupt-frame  the proxy inverts one payload byte of the next Write frame; the standby
#                      must drop the link and log a CRC32C failure (its log: status has no
#                      field for it); while the proxy keeps the primary out, the corrupted
#                      block must not be in the standby's file; M writes later the proxy lets
#                      the primary back in;
#   - waits for the primary to dial again (a new connection through the proxy), then for
#     connection connected and peer_disk UpToDate, requires fio's exit 0 (its verify phase read
#     the whole window back), compares the backing files (cmp; no client writes are in flight
#     then and both daemons write with O_DIRECT), and checks from `nbdmirror status --json`:
#       sync_decision: incremental whenever the primary acknowledged writes without the peer
#         (degraded_writes grew) and after a primary restart; otherwise incremental or none;
#         never full or a refusal;
#       resynced_bytes_total grew by at most the window (each round starts with nothing marked:
#         the previous round waits for marked_bytes 0), and resync_total_bytes too; it is
#         non-zero when the decision was incremental. (fio's random 4 KiB writes touch nearly
#         every 64 KiB region of the window within a clean interval, so an outage of a few
#         MiB of writes typically resyncs the whole 16 MiB window: the same order as what was
#         written, 1/16 of the volume);
#       current_gen: unchanged after kill-primary, new whenever writes were degraded, and the
#         standby's equal to the primary's once in sync;
#     and, during the outages the primary can report on (all but kill-primary and
#     stop-primary), that it shows the peer's disk Outdated and 0 < marked_bytes <= window.
#   Every round prints its seed, fault, moment, outage, bytes written without the peer, bytes
#   resynced and the window. CHAOS_SEED=N replays a run's choices (timing still varies);
#   CHAOS_ROUNDS sets the number of rounds (default 12, about 2 minutes on 2 cores);
#   CHAOS_FAULTS="kill-standby corrupt-frame" restricts the deck.
# The first half of the rounds runs in mode sync (the default), the second half in mode flush:
# the primary is stopped cleanly and started again with --mode flush in between (decision
# none, same generation, files identical), so every fault of the deck meets both modes.
# At the end both daemons stop cleanly and the files are compared once more. Skipped (77)
# where `ip netns add` is not allowed or fio has no nbd engine.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require ip fio cmp jq python3 dd
fio --enghelp=nbd >/dev/null 2>&1 || nm_skip "this fio has no nbd engine"
nm_python_with socket

# ---- The network namespace and the veth pair ----------------------------------------------------
nm_make_netns
ns=$NM_NS veth_root=$NM_VETH_ROOT addr_root=$NM_ADDR_ROOT addr_ns=$NM_ADDR_NS

# ---- Volumes, parameters, the randomness -------------------------------------------------------
mib=$((1 << 20))
volume_bytes=$((256 * mib))
window=$((16 * mib))
slot=$((16 * mib))
slots=$((volume_bytes / slot))
block=4096
blocks=$((window / block))
rate_iops=1500
rounds=${CHAOS_ROUNDS:-12}
all_faults=(kill-standby kill-primary stop-standby stop-primary link-down corrupt-frame)
read -r -a faults <<<"${CHAOS_FAULTS:-${all_faults[*]}}"
for f in "${faults[@]}"; do
  [[ " ${all_faults[*]} " == *" $f "* ]] || nm_fail "CHAOS_FAULTS: unknown fault '$f'"
done
seed=${CHAOS_SEED:-$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')}
[[ $seed =~ ^[0-9]+$ ]] || nm_fail "CHAOS_SEED must be a number (got '${seed}')"
# Every later $RANDOM comes from this seed. Only this shell draws from it (never a subshell,
# which would not advance the sequence), so a seed replays the same choices.
RANDOM=$seed
nm_log "seed ${seed}: ${rounds} rounds of ${faults[*]}; replay with CHAOS_SEED=${seed}"

# rand LO HI: sets REPLY to a number in [LO, HI].
rand() {
  REPLY=$(($1 + (RANDOM * 32768 + RANDOM) % ($2 - $1 + 1)))
}

secret=$NM_TMP/secret
nm_make_secret "$secret"
a=$NM_TMP/a.img
b=$NM_TMP/b.img
sock=$NM_TMP/nbd.sock
nm_make_volume "$a" "$volume_bytes"
nm_make_volume "$b" "$volume_bytes"
read -r port_b port_proxy <<<"$(nm_free_ports 2)"

field() { nm_status_field "$1" "$2"; }

# ---- The processes -----------------------------------------------------------------------------
start_standby() {
  NM_EXEC_PREFIX=(ip netns exec "$ns")
  NM_DAEMON_LABEL=standby nm_start_secondary "$b" --node b --listen "${addr_ns}:${port_b}" \
    --peer "a=${addr_root}:7790" --secret-file "$secret" --peer-timeout-ms 1000
  NM_EXEC_PREFIX=()
  standby=$NM_PID
  standby_log=$NM_LOG
}
mode=sync
start_primary() {
  NM_DAEMON_LABEL=primary nm_start_primary "$a" "$sock" --node a \
    --peer "b=127.0.0.1:${port_proxy}" --secret-file "$secret" --peer-timeout-ms 1000 \
    --bitmap-clean-ms 1000 --mode "$mode"
  primary=$NM_PID
  uri=$NM_URI
}

proxy_out=$NM_TMP/proxy.out
mkdir -p "$NM_TMP/corrupt"
"$NM_PYTHON" "$NM_SOURCE_DIR/tests/integration/corrupt_proxy.py" "127.0.0.1:${port_proxy}" \
  "${addr_ns}:${port_b}" "$NM_TMP/corrupt" >"$proxy_out" 2>&1 &
proxy=$!
nm_track_pid "$proxy"
nm_wait_for 10 "the proxy to listen" grep -q '^listening' "$proxy_out"
proxy_connections() { grep -c '^connected ' "$proxy_out" || true; }
proxy_has_more_connections() { (($(proxy_connections) > $1)); }

start_standby
[[ $(readlink "/proc/$standby/ns/net") != "$(readlink /proc/self/ns/net)" ]] ||
  nm_fail "the standby runs in the root network namespace"
start_primary

in_sync() {
  nm_status_is "$a" connection connected && nm_status_is "$a" peer_disk UpToDate
}
not_connected() { nm_status_is_not "$1" connection connected; }
same_files() {
  cmp "$a" "$b" || nm_fail "$1: the backing files differ"
}
kill9() {
  kill -KILL "$1"
  nm_wait_exit "$1" 10 || true
}

nm_wait_for 60 "the initial sync" in_sync "$a"
nm_wait_status 10 "$b" disk UpToDate
[[ $(field "$a" sync_decision) == full ]] ||
  nm_fail "first pairing: decision $(field "$a" sync_decision)"
nm_wait_for 20 "the bitmap to be cleaned after the initial sync" nm_status_is "$a" marked_bytes 0
same_files "after the initial sync"
nm_log "initial full sync: $(field "$a" resynced_bytes_total) bytes;" \
  "standby connected through the proxy"

# ---- One round ---------------------------------------------------------------------------------
# fio_start OFFSET NAME: the round's verified writes, in the background; sets FIO_PID.
fio_start() {
  # --thread: one process, so a signal to FIO_PID reaches the job too (no orphaned job process).
  (cd "$NM_TMP" && exec fio --thread --name="$2" --ioengine=nbd --uri="$uri" --rw=randwrite \
    --bs=$block --offset="$1" --size="$window" --iodepth=16 --rate_iops=$rate_iops --verify=crc32c \
    --verify_fatal=1 --verify_dump=0 --verify_state_save=0 >"$NM_TMP/$2.out" 2>&1) &
  FIO_PID=$!
  nm_track_pid "$FIO_PID"
}
# fio_wait NAME: waits for fio and requires exit 0 (every block written and verified).
fio_wait() {
  local rc=0
  nm_wait_exit "$FIO_PID" 120 || rc=$?
  ((rc == 0)) || { cat "$NM_TMP/$1.out" >&2; nm_fail "$1: fio exited ${rc}"; }
  # The verify phase read the whole window back.
  grep -qE "READ: .* io=$((window / mib))\.0MiB" "$NM_TMP/$1.out" ||
    { cat "$NM_TMP/$1.out" >&2; nm_fail "$1: fio did not read the window back to verify it"; }
}
# writes_reach N: the primary has taken at least N client writes.
writes_reach() { nm_status_ge "$a" writes "$1"; }
# writes_reach_or_fio_ended N: the same, or fio has exited (so a wait ends early, with fio's
# output, instead of timing out).
writes_reach_or_fio_ended() { nm_dead "$FIO_PID" || writes_reach "$1"; }
# hold_outage FIO_FIRST_WRITE M: the primary takes M more writes (without the peer), or fio's
# last write, whichever comes first.
hold_outage() {
  local now target
  now=$(field "$a" writes)
  target=$((now + $2))
  ((target <= $1 + blocks)) || target=$(($1 + blocks))
  # fio may finish right after its last write; fio_wait checks how it ended.
  nm_wait_for 60 "${2} writes during the outage" writes_reach_or_fio_ended "$target"
  # What the primary knows while the standby is away: the peer's copy is Outdated and the
  # bitmap marks some of the window, never more.
  outage_marked=$(field "$a" marked_bytes)
  nm_status_is "$a" peer_disk Outdated ||
    nm_fail "during the outage the primary shows peer_disk $(field "$a" peer_disk), not Outdated"
  ((outage_marked > 0 && outage_marked <= window)) ||
    nm_fail "during the outage ${outage_marked} bytes are marked (window ${window})"
  detail+="${outage_marked} bytes marked during the outage; "
}

deck=()
draw_fault() {
  if ((${#deck[@]} == 0)); then
    deck=("${faults[@]}")
    local i j t
    for ((i = ${#deck[@]} - 1; i > 0; i--)); do
      j=$((RANDOM % (i + 1)))
      t=${deck[i]}
      deck[i]=${deck[j]}
      deck[j]=$t
    done
  fi
  FAULT=${deck[0]}
  deck=("${deck[@]:1}")
}

summary=()
total_start_ms=$(nm_now_ms)
for ((round = 1; round <= rounds; round++)); do
  if ((rounds >= 2 && round == rounds / 2 + 1)); then
    # The second half runs in mode flush: a clean restart of the primary, which must find the
    # pair in sync (decision none) and keep its generation.
    gen_before=$(field "$a" current_gen)
    nm_stop_clean "$primary" "the primary (switching to mode flush)"
    mode=flush
    start_primary
    nm_wait_for 60 "the pair in sync in mode flush" in_sync "$a"
    [[ $(field "$a" sync_decision) == none ]] ||
      nm_fail "clean restart in mode flush: decision $(field "$a" sync_decision), expected none"
    [[ $(field "$a" current_gen) == "$gen_before" ]] ||
      nm_fail "clean restart in mode flush: the generation changed"
    same_files "after the switch to mode flush"
    nm_log "rounds ${round}-${rounds} in mode flush"
  fi
  round_start_ms=$(nm_now_ms)
  draw_fault
  fault=$FAULT
  rand 0 $((slots - 1))
  offset=$((REPLY * slot))
  rand $((blocks / 20)) $((blocks / 2))
  moment=$REPLY
  rand $((blocks / 10)) $((blocks / 4))
  outage=$REPLY
  rand 200 1000
  pause_ms=$REPLY
  name=round$round
  nm_log "round ${round}/${rounds} (seed ${seed}): ${fault} after ${moment} of ${blocks} writes" \
    "into ${offset}+${window}"

  nm_assert_alive "$primary" "the primary"
  nm_assert_alive "$standby" "the standby"
  writes0=$(field "$a" writes)
  degraded0=$(field "$a" degraded_writes)
  resynced0=$(field "$a" resynced_bytes_total)
  gen0=$(field "$a" current_gen)
  conns0=$(proxy_connections)
  crc_failures0=$(nm_count_in_log "$standby_log" "failed its CRC32C check")
  restarted_primary=0
  detail=

  fio_start "$offset" "$name"
  fio_start_ms=$(nm_now_ms)
  nm_wait_for 60 "${moment} writes into the window" writes_reach_or_fio_ended $((writes0 + moment))
  nm_alive "$FIO_PID" || { cat "$NM_TMP/$name.out" >&2; nm_fail "fio ended before the fault"; }
  fault_start_ms=$(nm_now_ms)
  fault_at_ms=$((fault_start_ms - fio_start_ms))

  case $fault in
    kill-standby)
      kill9 "$standby"
      nm_wait_for 10 "the primary to see the standby gone" not_connected "$a"
      hold_outage "$writes0" "$outage"
      start_standby
      ;;
    kill-primary)
      kill9 "$primary"
      # fio must fail now. In one CI run it did not exit: its job process was found stuck in the
      # kernel (state D, an ext4 discard on a file eviction the virtual disk never completed);
      # no signal ends that, and it is neither fio's nor the daemon's doing. After 30 s such a
      # fio is sent SIGKILL, left to the kernel and counted as the failure it would have been.
      rc=0
      for ((i = 0; i < 600; i++)); do
        nm_alive "$FIO_PID" || break
        sleep 0.05
      done
      if nm_alive "$FIO_PID"; then
        nm_log "fio (pid ${FIO_PID}) did not exit within 30 s of the primary's death" \
          "(state $(awk '/^State:/ { print $2 }' "/proc/${FIO_PID}/status" 2>/dev/null)); SIGKILL"
        kill -KILL "$FIO_PID" 2>/dev/null || true
        nm_untrack_pid "$FIO_PID"
        rc=137
      else
        nm_wait_exit "$FIO_PID" 10 || rc=$?
      fi
      ((rc != 0)) || nm_fail "fio exited 0 although the primary was killed under it"
      detail="fio exited ${rc} with the primary; "
      nm_wait_for 10 "the standby to see the primary gone" not_connected "$b"
      start_primary
      restarted_primary=1
      degraded0=0
      resynced0=0
      ;;
    stop-standby)
      kill -STOP "$standby"
      nm_wait_for 10 "the primary to declare the stopped standby lost" not_connected "$a"
      hold_outage "$writes0" "$outage"
      kill -CONT "$standby"
      ;;
    stop-primary)
      kill -STOP "$primary"
      # The primary's status cannot answer while it is stopped; the standby's can.
      nm_wait_for 10 "the standby to declare the stopped primary lost" not_connected "$b"
      # Not synchronisation: how much longer than the heartbeat timeout the fault lasts.
      sleep "$((pause_ms / 1000)).$(printf %03d $((pause_ms % 1000)))"
      kill -CONT "$primary"
      detail="stopped ${pause_ms} ms past the standby's timeout; "
      ;;
    link-down)
      ip link set "$veth_root" down
      nm_wait_for 10 "the primary to declare the standby lost over the cut link" not_connected "$a"
      hold_outage "$writes0" "$outage"
      ip link set "$veth_root" up
      nm_wait_for 10 "the veth pair to be up again" nm_veth_up
      ;;
    corrupt-frame)
      corrupted=$(($(grep -c '^corrupted ' "$proxy_out" || true) + 1))
      kill -USR1 "$proxy"
      nm_wait_for 10 "the proxy to corrupt a Write frame" \
        grep -q "^corrupted ${corrupted} " "$proxy_out"
      line=$(grep "^corrupted ${corrupted} " "$proxy_out")
      nm_wait_for 10 "the standby to drop the corrupted link" not_connected "$b"
      nm_wait_for 10 "the primary to lose the link" not_connected "$a"
      crc_failures=$(nm_count_in_log "$standby_log" "failed its CRC32C check")
      ((crc_failures > crc_failures0)) ||
        nm_fail "the standby dropped the link without a CRC failure"
      [[ $line =~ offset_bytes=([0-9]+)\ length_bytes=([0-9]+)\ flipped_at=([0-9]+) ]] ||
        nm_fail "cannot parse the proxy's report: ${line}"
      bad_offset=${BASH_REMATCH[1]}
      bad_length=${BASH_REMATCH[2]}
      # The primary cannot reconnect while the proxy holds, so nothing has overwritten it yet:
      # the block in the standby's file must not be the corrupted payload.
      dd if="$b" of="$NM_TMP/landed.bin" bs=$block skip=$((bad_offset / block)) \
        count=$((bad_length / block)) status=none
      if cmp -s "$NM_TMP/landed.bin" "$NM_TMP/corrupt/corrupt.${corrupted}.bin"; then
        nm_fail "the corrupted Write (${line}) landed in the standby's file"
      fi
      hold_outage "$writes0" "$outage"
      kill -USR2 "$proxy"
      detail="${line#corrupted * }, not applied; "
      ;;
  esac
  fault_ms=$(($(nm_now_ms) - fault_start_ms))

  nm_wait_for 30 "the primary to dial the standby again" proxy_has_more_connections "$conns0"
  nm_wait_for 60 "the pair to be in sync again" in_sync "$a"
  nm_wait_status 20 "$b" disk UpToDate
  if ((restarted_primary)); then
    fio_start "$offset" "${name}-verify"
    fio_wait "${name}-verify"
    detail+="fresh verified fio pass ok; "
  else
    fio_wait "$name"
  fi
  nm_assert_alive "$primary" "the primary"
  nm_assert_alive "$standby" "the standby"
  in_sync "$a" || nm_fail "round ${round}: the pair fell out of sync after fio finished"
  same_files "round ${round} (${fault})"

  decision=$(field "$a" sync_decision)
  degraded=$(($(field "$a" degraded_writes) - degraded0))
  resynced=$(($(field "$a" resynced_bytes_total) - resynced0))
  resync_total=$(field "$a" resync_total_bytes)
  case $decision in
    incremental | none) ;;
    *) nm_fail "round ${round} (${fault}): decision '${decision}', expected incremental or none" ;;
  esac
  if ((degraded > 0 || restarted_primary)) && [[ $decision != incremental ]]; then
    nm_fail "round ${round} (${fault}): ${degraded} writes degraded" \
      "(primary restarted: ${restarted_primary}) but the decision was ${decision}"
  fi
  gen=$(field "$a" current_gen)
  if ((restarted_primary)); then
    [[ $gen == "$gen0" ]] ||
      nm_fail "round ${round}: the restarted primary changed generation ${gen0} -> ${gen}"
  elif ((degraded > 0)); then
    [[ $gen != "$gen0" ]] ||
      nm_fail "round ${round} (${fault}): ${degraded} writes without the peer but no new generation"
  fi
  [[ $(field "$b" current_gen) == "$gen" ]] ||
    nm_fail "round ${round} (${fault}): in sync but the standby is at generation" \
      "$(field "$b" current_gen), the primary at ${gen}"
  ((resynced <= window)) ||
    nm_fail "round ${round} (${fault}): resynced ${resynced} bytes, more than the" \
      "${window}-byte window"
  if [[ $decision == incremental ]]; then
    ((resync_total > 0 && resync_total <= window)) ||
      nm_fail "round ${round} (${fault}): incremental resync planned ${resync_total} bytes" \
        "(window ${window})"
    ((resynced > 0)) ||
      nm_fail "round ${round} (${fault}): incremental decision but nothing resynced"
  fi
  # The next round starts with nothing marked, so what it resyncs is its own.
  nm_wait_for 20 "the bitmap to be cleaned" nm_status_is "$a" marked_bytes 0

  round_s=$((($(nm_now_ms) - round_start_ms) / 1000))
  msg="round ${round} (mode ${mode}): seed ${seed} fault ${fault} at write ${moment}/${blocks}, ${fault_at_ms} ms"
  msg+=" into fio; fault held ${fault_ms} ms; ${detail}"
  msg+="$((degraded * block / 1024)) KiB written without the peer (${degraded} writes);"
  msg+=" decision ${decision};"
  msg+=" resynced ${resynced} bytes ($((resynced / 1024)) KiB) of a ${window}-byte window"
  msg+=" (volume ${volume_bytes}); files identical; ${round_s}s"
  nm_log "$msg"
  summary+=("$(printf '%3d %-13s moment %5d/%d  without-peer %6d KiB  %-11s resynced %6d KiB%s' \
    "$round" "$fault" "$moment" "$blocks" $((degraded * block / 1024)) "$decision" \
    $((resynced / 1024)) " / window $((window / 1024)) KiB")")
done

nm_stop_clean "$primary" "the primary"
nm_stop_clean "$standby" "the standby"
same_files "after clean stops"
nm_log "summary (seed ${seed}, $((($(nm_now_ms) - total_start_ms) / 1000))s for ${rounds} rounds):"
for line in "${summary[@]}"; do
  echo "  $line" >&2
done
nm_log "PASS"
