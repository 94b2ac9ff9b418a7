#!/usr/bin/env bash
# Attaches an NBD export as a local block device and prints the device path.
#
#   scripts/nbd-attach.sh attach SOCKET STATE_DIR   -> prints /dev/nbdN or /dev/loopN
#   scripts/nbd-attach.sh detach STATE_DIR
#
# With the kernel's nbd module (modprobe nbd works and /dev/nbd0 exists) it uses nbd-client.
# Without it (containers, CI, this project's test machines) it uses nbdfuse to expose the
# export as a file inside STATE_DIR/fuse and losetup to make a block device of that file.
# STATE_DIR records what was attached so detach undoes exactly that.
set -euo pipefail

attach() {
  local socket=$1 state=$2
  mkdir -p "$state"
  if [[ ${NBDMIRROR_ATTACH:-auto} != fuse ]] && command -v nbd-client >/dev/null &&
     modprobe nbd 2>/dev/null && [[ -b /dev/nbd0 ]]; then
    local dev
    for dev in /dev/nbd{0..15}; do
      if [[ ! -e /sys/block/${dev#/dev/}/pid ]] && nbd-client -unix "$socket" "$dev" -b 4096 >/dev/null 2>&1; then
        echo "nbd-client $dev" > "$state/attached"
        echo "$dev"
        return 0
      fi
    done
    echo "no free /dev/nbdN" >&2
    return 1
  fi
  mkdir -p "$state/fuse"
  nbdfuse "$state/fuse/disk" --unix "$socket" >"$state/nbdfuse.log" 2>&1 &
  local fuse_pid=$!
  echo "$fuse_pid" > "$state/nbdfuse.pid"
  local i
  for ((i = 0; i < 200; i++)); do
    [[ -e "$state/fuse/disk" ]] && break
    if ! kill -0 "$fuse_pid" 2>/dev/null; then
      echo "nbdfuse exited: $(cat "$state/nbdfuse.log")" >&2
      return 1
    fi
    sleep 0.05
  done
  [[ -e "$state/fuse/disk" ]] || { echo "nbdfuse did not come up" >&2; return 1; }
  local loop
  loop=$(losetup -f --show "$state/fuse/disk")
  echo "fuse $loop" > "$state/attached"
  echo "$loop"
}

detach() {
  local state=$1
  [[ -f "$state/attached" ]] || return 0
  read -r kind dev < "$state/attached"
  if [[ $kind == nbd-client ]]; then
    nbd-client -d "$dev" >/dev/null 2>&1 || true
  else
    losetup -d "$dev" 2>/dev/null || true
    fusermount3 -u "$state/fuse" 2>/dev/null || umount -l "$state/fuse" 2>/dev/null || true
    if [[ -f "$state/nbdfuse.pid" ]]; then
      local pid
      pid=$(cat "$state/nbdfuse.pid")
      # nbdfuse exits once unmounted; wait for it so the export's connection is closed.
      for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
      done
      kill "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$state/attached"
}

case ${1:-} in
  attach) attach "$2" "$3" ;;
  detach) detach "$2" ;;
  *) echo "usage: $0 attach SOCKET STATE_DIR | detach STATE_DIR" >&2; exit 2 ;;
esac
