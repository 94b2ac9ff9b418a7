#!/usr/bin/env bash
# disk-irq-cpus.sh PATH: prints the CPUs that take the completion interrupts of the disk that
# holds PATH (a file, a directory, or a block device), as a list for `nbdmirror run
# --cpu-affinity`. A disk with one interrupt queue answers on one CPU: put the daemon there
# (README, "CPU placement"). A multi-queue disk answering on every CPU prints all of them,
# which is the same as not setting --cpu-affinity.
#
# How: the filesystem's (or the device's) MAJ:MIN -> /sys/dev/block -> the whole disk (not the
# partition) -> up its device path to the first device with MSI interrupts -> those of its
# interrupts that carry its completions (those with at least 1% of the busiest one's count, so a
# configuration or admin vector is left out) ->
# /proc/irq/N/effective_affinity_list, merged. Exits 1 with a message when it cannot tell
# (a volume on device-mapper, md, a loop device, tmpfs, a network filesystem, or no MSI).
set -euo pipefail

die() { echo "disk-irq-cpus: $*" >&2; exit 1; }
(($# == 1)) || { echo "usage: $0 PATH" >&2; exit 2; }
path=$1
[[ -e $path ]] || die "$path does not exist"

if [[ -b $path ]]; then
  majmin=$(lsblk -dno MAJ:MIN "$path" | tr -d ' ')
else
  majmin=$(findmnt -no MAJ:MIN -T "$path" | tail -n 1 | tr -d ' ')
fi
[[ $majmin =~ ^[0-9]+:[0-9]+$ ]] || die "cannot find the device under $path (got '${majmin}')"
[[ ${majmin%%:*} != 0 ]] || die "$path is on a filesystem without a block device (${majmin})"
node=$(readlink -f "/sys/dev/block/$majmin") || die "no /sys/dev/block/$majmin"
[[ -e $node/partition ]] && node=$(dirname "$node")
name=$(basename "$node")
if [[ -n $(ls -A "$node/slaves" 2>/dev/null) ]]; then
  die "$name is built on other devices ($(ls "$node/slaves" | tr '\n' ' ')): ask for those"
fi
[[ -e $node/device ]] || die "$name has no underlying device (loop, ram, zram?)"

dir=$(readlink -f "$node/device")
while [[ $dir != / && ! -d $dir/msi_irqs ]]; do
  dir=$(dirname "$dir")
done
[[ -d $dir/msi_irqs ]] || die "no MSI interrupts found above $name's device"

# The interrupt's total count over all CPUs, from /proc/interrupts ("N: c0 c1 ... name").
irq_count() {
  awk -v irq="$1:" '$1 == irq { s = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; print s }' /proc/interrupts
}
declare -A counts=()
max=0
for irq_path in "$dir"/msi_irqs/*; do
  irq=$(basename "$irq_path")
  count=$(irq_count "$irq")
  [[ -n $count ]] || continue
  counts[$irq]=$count
  ((count > max)) && max=$count
done
# Vectors that carry completions; a configuration or admin vector fires rarely.
declare -A cpus=()
fired=0
for irq in "${!counts[@]}"; do
  ((max > 0 && counts[$irq] * 100 >= max)) || continue
  list=$(cat "/proc/irq/$irq/effective_affinity_list" 2>/dev/null) || continue
  fired=$((fired + 1))
  IFS=, read -r -a parts <<<"$list"
  for part in "${parts[@]}"; do
    if [[ $part == *-* ]]; then
      for ((c = ${part%-*}; c <= ${part#*-}; c++)); do cpus[$c]=1; done
    else
      cpus[$part]=1
    fi
  done
done
((fired > 0)) || die "none of $name's interrupts has fired yet: write to it and ask again"
printf '%s\n' "${!cpus[@]}" | sort -n | paste -sd, -
