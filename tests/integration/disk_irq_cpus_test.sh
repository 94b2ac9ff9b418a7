#!/usr/bin/env bash
# disk_irq_cpus_test: scripts/disk-irq-cpus.sh names the CPUs that really take the completion
# interrupts of the disk under a path, its answer is accepted by `--cpu-affinity`, and it
# refuses, with a message, a path it cannot answer for.
#
# How: the script is asked about the test's temp directory (skipped if that is on storage it
# cannot answer for, e.g. tmpfs). Independently of it, the test writes 2000 O_DIRECT+O_DSYNC
# 4 KiB blocks to a file there (each waits for its completion interrupt) and reads
# /proc/interrupts before and after: every CPU on which some numbered interrupt line grew by at
# least 1000 must be in the script's answer. A primary then starts with `--cpu-affinity` set to
# that answer and serves nbdinfo. /dev/shm (tmpfs, no block device) must be refused (exit 1).

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require dd findmnt lsblk awk nbdinfo
script=$NM_SOURCE_DIR/scripts/disk-irq-cpus.sh

rc=0
answer=$("$script" "$NM_TMP" 2>"$NM_TMP/why") || rc=$?
((rc == 0)) || nm_skip "disk-irq-cpus.sh cannot answer for ${NM_TMP}: $(cat "$NM_TMP/why")"
[[ $answer =~ ^[0-9]+(,[0-9]+)*$ ]] || nm_fail "answer '${answer}' is not a CPU list"
nm_log "disk-irq-cpus.sh ${NM_TMP}: ${answer}"

# per_cpu_counts: "irq cpu count" for every numbered interrupt line.
per_cpu_counts() {
  awk 'NR == 1 { n = NF; next } $1 ~ /^[0-9]+:$/ { for (i = 2; i <= n + 1; i++) print $1, i - 2, $i }' /proc/interrupts
}
per_cpu_counts >"$NM_TMP/irq.before"
dd if=/dev/zero of="$NM_TMP/probe.img" bs=4k count=2000 oflag=direct,dsync status=none ||
  nm_fail "dd with O_DIRECT|O_DSYNC failed in ${NM_TMP}"
per_cpu_counts >"$NM_TMP/irq.after"
busy=$(awk 'NR == FNR { before[$1 " " $2] = $3; next } $3 - before[$1 " " $2] >= 1000 { print $2 }' \
  "$NM_TMP/irq.before" "$NM_TMP/irq.after" | sort -un | paste -sd, -)
[[ -n $busy ]] || nm_fail "no interrupt line grew by 1000 during 2000 synchronous writes"
IFS=, read -r -a busy_cpus <<<"$busy"
for cpu in "${busy_cpus[@]}"; do
  [[ ,$answer, == *",$cpu,"* ]] ||
    nm_fail "CPU ${cpu} took the writes' interrupts but the script answered '${answer}'"
done
nm_log "the 2000 writes' interrupts arrived on CPU(s) ${busy}: all in the answer"

nm_make_volume "$NM_TMP/a.img" 16M
nm_start_primary "$NM_TMP/a.img" "$NM_TMP/a.sock" --node a --cpu-affinity "$answer"
grep -q "CPU affinity: " "$NM_LOG" || nm_fail "the daemon did not log its CPU affinity"
nm_stop_clean "$NM_PID" "the primary"

rc=0
"$script" /dev/shm >/dev/null 2>"$NM_TMP/why" || rc=$?
((rc == 1)) || nm_fail "disk-irq-cpus.sh /dev/shm: exit ${rc}, expected 1"
grep -q "without a block device" "$NM_TMP/why" || nm_fail "no reason given for /dev/shm: $(cat "$NM_TMP/why")"
nm_log "/dev/shm refused: $(cat "$NM_TMP/why")"
