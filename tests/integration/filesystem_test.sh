#!/usr/bin/env bash
# filesystem_test: a real filesystem on the export survives unmount, a daemon restart and a
# remount, byte for byte, and fsck finds it clean.
#
# How: nbdfuse (4 connections: the server advertises multi-conn, and nbdfuse sends each
# fsync's FLUSH on whichever connection it likes) turns the export into a file; a loop device
# on that file carries a fresh ext4. We write a tree of files (random data, a few MiB, some
# with fsync, some small, some sparse), record their sha256sums outside the mount, unmount,
# detach, unmount FUSE and stop the daemon (exit 0). A new daemon on the same backing file is
# then mounted the same way: `e2fsck -fn` must find the filesystem clean and every checksum
# must match. A final e2fsck runs on the backing file itself once everything is stopped.
# Skipped (77) without /dev/fuse, loop devices or the tools.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require nbdfuse fusermount3 losetup mkfs.ext4 e2fsck mount umount sha256sum nbdinfo
[[ -c /dev/fuse ]] || nm_skip "/dev/fuse is not available"
[[ $(id -u) == 0 ]] || nm_skip "mounting and loop devices need root"
losetup -f >/dev/null 2>&1 || nm_skip "no free loop device (losetup -f failed)"

volume=$NM_TMP/volume.img
nm_make_volume "$volume" 256M
sock=$NM_TMP/nbd.sock
fuse_dir=$NM_TMP/fuse
mnt=$NM_TMP/mnt
sums=$NM_TMP/sha256sums

# attach: daemon -> nbdfuse -> loop device. Sets daemon, loop.
attach() {
  nm_start_primary "$volume" "$sock"
  daemon=$NM_PID
  nm_start_nbdfuse "$fuse_dir/disk" "$NM_URI"
  fuse_pid=$NM_FUSE_PID
  nm_losetup "$fuse_dir/disk"
  loop=$NM_LOOP
  nm_log "daemon ${daemon}, nbdfuse ${fuse_pid}, ${loop}"
}

# detach: the reverse, checking that each layer lets go cleanly and the daemon exits 0.
detach() {
  nm_losetup_detach "$loop"
  nm_fuse_unmount "$fuse_dir"
  nm_wait_for 20 "nbdfuse to exit after unmount" nm_dead "$fuse_pid"
  wait "$fuse_pid" || nm_fail "nbdfuse exited with status $?"
  nm_untrack_pid "$fuse_pid"
  local rc=0
  nm_stop "$daemon" || rc=$?
  ((rc == 0)) || nm_fail "nbdmirror exited with status ${rc} after SIGTERM, expected 0"
}

attach
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$loop" ||
  nm_fail "mkfs.ext4 on the export failed"
nm_mount "$loop" "$mnt"

mkdir -p "$mnt/dir/sub"
head -c $((3 << 20)) /dev/urandom >"$mnt/big.bin"
dd if=/dev/urandom of="$mnt/dir/fsynced.bin" bs=64k count=24 conv=fsync status=none
for i in $(seq 1 50); do
  head -c $((i * 997)) /dev/urandom >"$mnt/dir/sub/small-$i"
done
# Sparse file: data at both ends of a 8 MiB hole.
head -c 4096 /dev/urandom | dd of="$mnt/sparse.bin" bs=4096 conv=notrunc status=none
head -c 4096 /dev/urandom | dd of="$mnt/sparse.bin" bs=4096 seek=2048 conv=notrunc status=none
# Overwrite part of an existing file in place.
head -c 100000 /dev/urandom | dd of="$mnt/big.bin" bs=1 seek=123457 conv=notrunc,fsync status=none
sync -f "$mnt"
(cd "$mnt" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$sums"
file_count=$(wc -l <"$sums")
((file_count == 53)) || nm_fail "expected 53 files, checksummed ${file_count}"
nm_log "wrote and checksummed ${file_count} files ($(du -sh "$mnt" | cut -f1))"

nm_umount "$mnt"
detach
nm_log "unmounted, detached, daemon stopped cleanly"

attach
e2fsck -fn "$loop" >"$NM_TMP/fsck1.out" 2>&1 ||
  nm_fail "e2fsck -fn through the restarted daemon is not clean: $(cat "$NM_TMP/fsck1.out")"
nm_mount "$loop" "$mnt" -o ro
(cd "$mnt" && sha256sum --quiet -c "$sums") >"$NM_TMP/sha.out" 2>&1 ||
  nm_fail "checksums differ after restart: $(cat "$NM_TMP/sha.out")"
nm_log "after restart: fsck clean, all ${file_count} checksums match"
nm_umount "$mnt"
detach

e2fsck -fn "$volume" >"$NM_TMP/fsck2.out" 2>&1 ||
  nm_fail "e2fsck -fn on the backing file is not clean: $(cat "$NM_TMP/fsck2.out")"
nm_log "backing file: e2fsck clean"
echo "PASS: filesystem_test"
