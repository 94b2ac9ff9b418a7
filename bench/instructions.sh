#!/usr/bin/env bash
# instructions.sh: user-space instructions per write of nbdmirror builds, counted by callgrind.
# A count, not a timing: it does not move with the machine's load, so two builds compare on one
# run each where IOPS and CPU time need many alternating runs on a shared VM. It sees only what
# the daemons execute in user space (their code, libc, protobuf, ISA-L); system calls and the
# kernel's work are not in it, so it measures a change to the daemon's own code, not the whole
# cost of a write.
#
#   bench/instructions.sh MODE BIN...
#     MODE: standalone | mirror-flush | mirror-sync
#   INSN_JOB=w (fio rw=randwrite, 4 KiB, QD32), INSN_IODEPTH=32, INSN_BS=4k,
#   INSN_FEW=5000 INSN_MANY=25000 (writes per run), INSN_TMPDIR=/var/tmp
#
# Each binary serves INSN_FEW and then INSN_MANY random writes from fio's nbd engine, each run
# with fresh daemons under `valgrind --tool=callgrind`; the difference of the two runs' totals,
# divided by the difference in writes, is the cost of one write in the steady state (start-up,
# the handshake and shutdown cancel out). Mirrored runs skip the initial sync and check that no
# write was degraded. Prints one line per binary: Ir per write on the primary (and the standby).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mode=$1
shift
bins=("$@")
few=${INSN_FEW:-5000}
many=${INSN_MANY:-25000}
iodepth=${INSN_IODEPTH:-32}
bs=${INSN_BS:-4k}
command -v valgrind >/dev/null || { echo "instructions.sh: needs valgrind (scripts/install-deps.sh)" >&2; exit 2; }
case $mode in standalone | mirror-flush | mirror-sync) ;; *) echo "unknown MODE $mode" >&2; exit 2 ;; esac
tmp=$(mktemp -d "${INSN_TMPDIR:-/var/tmp}/insn.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
head -c 32 /dev/urandom | base64 >"$tmp/secret"
chmod 600 "$tmp/secret"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
total_ir() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}'; }

# count BIN WRITES: runs the daemons under callgrind; prints "PRIMARY_IR STANDBY_IR" (0 standalone)
count() {
  local bin=$1 writes=$2 sock=$tmp/nbd.sock vol=$tmp/A
  rm -f "$tmp"/A "$tmp"/B "$tmp"/*.nbdmirror-meta "$tmp"/*.ctl "$sock" "$tmp"/cg.*
  fallocate -l 256M "$tmp/A"
  local grind=(valgrind --tool=callgrind)
  if [[ $mode == standalone ]]; then
    "${grind[@]}" "--callgrind-out-file=$tmp/cg.p" "$bin" run --volume "$vol" --node a --primary \
      --nbd "unix:$sock" >"$tmp/p.log" 2>&1 &
    pids=($!)
  else
    fallocate -l 256M "$tmp/B"
    local pa pb
    pa=$(free_port)
    pb=$(free_port)
    "${grind[@]}" "--callgrind-out-file=$tmp/cg.s" "$bin" run --volume "$tmp/B" --node b \
      --listen "127.0.0.1:$pb" --peer "a=127.0.0.1:$pa" --secret-file "$tmp/secret" >"$tmp/s.log" 2>&1 &
    pids=($!)
    "${grind[@]}" "--callgrind-out-file=$tmp/cg.p" "$bin" run --volume "$vol" --node a --primary \
      --listen "127.0.0.1:$pa" --peer "b=127.0.0.1:$pb" --secret-file "$tmp/secret" \
      --nbd "unix:$sock" --mode "${mode#mirror-}" --skip-initial-sync >"$tmp/p.log" 2>&1 &
    pids=($! "${pids[@]}")
  fi
  local i state
  for ((i = 0; i < 600; i++)); do
    if [[ $mode == standalone ]]; then
      [[ -S $sock ]] && nbdinfo --size "nbd+unix:///?socket=$sock" >/dev/null 2>&1 && break
    else
      state=$("$bin" status --volume "$vol" --json 2>/dev/null | jq -r .connection 2>/dev/null || true)
      [[ $state == connected ]] && break
    fi
    sleep 0.1
  done
  ((i < 600)) || { cat "$tmp"/*.log >&2; echo "instructions.sh: daemons did not come up" >&2; exit 1; }
  fio --name=w --ioengine=nbd "--uri=nbd+unix:///?socket=$sock" --rw=randwrite "--bs=$bs" \
    "--iodepth=$iodepth" --size=256M "--number_ios=$writes" --randrepeat=1 --norandommap=1 \
    >"$tmp/fio.out" 2>&1 || { cat "$tmp/fio.out" >&2; exit 1; }
  local status
  status=$("$bin" status --volume "$vol" --json)
  [[ $(jq .writes <<<"$status") == "$writes" ]] ||
    { echo "instructions.sh: the daemon counted $(jq .writes <<<"$status") writes, not $writes" >&2; exit 1; }
  if [[ $mode != standalone && $(jq .degraded_writes <<<"$status") != 0 ]]; then
    echo "instructions.sh: writes were degraded (the standby fell behind under valgrind)" >&2
    exit 1
  fi
  for p in "${pids[@]}"; do
    kill -TERM "$p"
    wait "$p" || { echo "instructions.sh: a daemon exited with $?" >&2; exit 1; }
  done
  pids=()
  echo "$(total_ir "$tmp/cg.p") $([[ -f $tmp/cg.s ]] && total_ir "$tmp/cg.s" || echo 0)"
}

echo "mode=$mode job=randwrite bs=$bs iodepth=$iodepth writes=$few,$many"
for bin in "${bins[@]}"; do
  read -r p1 s1 < <(count "$bin" "$few")
  read -r p2 s2 < <(count "$bin" "$many")
  line="$(basename "$bin") ($(sha256sum "$bin" | cut -c1-12)): primary $(((p2 - p1) / (many - few))) Ir/write"
  [[ $mode == standalone ]] || line+=", standby $(((s2 - s1) / (many - few))) Ir/write"
  echo "$line"
done
