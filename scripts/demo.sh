#!/usr/bin/env bash
# The main job: shows nbdmirror serving a volume that PostgreSQL lives on, on this machine.
#
#   1. installs dependencies and builds (skip with NBDMIRROR_SKIP_DEPS=1 / an existing build)
#   2. creates a 1 GiB volume file and exports it with `nbdmirror run --primary`
#   3. attaches the export as a block device (nbd-client, or nbdfuse + a loop device)
#   4. makes ext4 on it, mounts it, writes and reads back files
#   5. initialises PostgreSQL 15 on it (data checksums on), runs pgbench, checks the data
#   6. stops everything cleanly, checks the file system, and removes what it made
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }

if [[ ${NBDMIRROR_SKIP_DEPS:-0} != 1 ]]; then
  step "Installing dependencies (apt-get)"
  "$root/scripts/install-deps.sh" >/dev/null
fi
step "Building nbdmirror"
"$root/scripts/build.sh" "$root/build" >/dev/null
bin=$root/build/nbdmirror
info "built $bin"

work=$(mktemp -d /tmp/nbdmirror-demo.XXXXXX)
chmod 755 "$work"
daemon_pid=
pg_started=0
mounted=0
pgbin=/usr/lib/postgresql/15/bin
cleanup() {
  set +e
  if [[ $pg_started == 1 ]]; then
    runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/mnt/pgdata" -m fast stop >/dev/null 2>&1
  fi
  [[ $mounted == 1 ]] && umount "$work/mnt"
  "$root/scripts/nbd-attach.sh" detach "$work/attach" >/dev/null 2>&1
  if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid"
    wait "$daemon_pid"
  fi
  rm -rf "$work"
}
trap cleanup EXIT

step "Creating a 1 GiB volume and exporting it over NBD"
truncate -s 1G "$work/volume.img"
socket=$work/nbd.sock
"$bin" run --volume "$work/volume.img" --primary --nbd "unix:$socket" 2>"$work/daemon.log" &
daemon_pid=$!
for ((i = 0; i < 100; i++)); do
  nbdinfo --size "nbd+unix:///?socket=$socket" >/dev/null 2>&1 && break
  kill -0 "$daemon_pid" || { cat "$work/daemon.log"; exit 1; }
  sleep 0.1
done
info "nbdmirror pid $daemon_pid serving unix:$socket"
nbdinfo "nbd+unix:///?socket=$socket" | grep -E 'export-size|can_flush|can_fua|can_multi_conn|block_size' | sed 's/^/    /'

step "Attaching the export as a block device"
dev=$("$root/scripts/nbd-attach.sh" attach "$socket" "$work/attach")
info "block device: $dev ($(cat "$work/attach/attached" | cut -d' ' -f1))"

step "Making ext4 and mounting it"
mkfs.ext4 -q -F -E nodiscard "$dev"
mkdir -p "$work/mnt"
mount "$dev" "$work/mnt"
mounted=1
df -h "$work/mnt" | sed 's/^/    /'

step "Writing and reading back files"
head -c 32M /dev/urandom > "$work/random.bin"
cp "$work/random.bin" "$work/mnt/random.bin"
sync "$work/mnt/random.bin"
echo 3 > /proc/sys/vm/drop_caches
if cmp -s "$work/random.bin" "$work/mnt/random.bin"; then
  info "32 MiB of random data written, synced, re-read from the volume: identical"
else
  echo "MISMATCH reading back random.bin" >&2
  exit 1
fi

step "PostgreSQL 15 on the volume"
mkdir -p "$work/mnt/pgdata" "$work/pgsock"
chown postgres:postgres "$work/mnt/pgdata" "$work/pgsock"
runuser -u postgres -- "$pgbin/initdb" -D "$work/mnt/pgdata" --data-checksums -A trust >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/mnt/pgdata" -l "$work/mnt/pgdata/log" -w \
  -o "-p $port -k $work/pgsock -c listen_addresses=''" start >/dev/null
pg_started=1
info "PostgreSQL running on the mirrored volume (port $port, socket in $work/pgsock)"
psql_cmd=(runuser -u postgres -- psql -h "$work/pgsock" -p "$port" -X -q -t -A)
runuser -u postgres -- "$pgbin/pgbench" -h "$work/pgsock" -p "$port" -i -s 5 -q postgres 2>&1 | tail -1 | sed 's/^/    /'
info "pgbench: 4 clients for 15 seconds"
runuser -u postgres -- "$pgbin/pgbench" -h "$work/pgsock" -p "$port" -c 4 -j 2 -T 15 postgres 2>/dev/null |
  grep -E 'number of transactions actually processed|tps' | sed 's/^/    /'
"${psql_cmd[@]}" -c "CREATE EXTENSION IF NOT EXISTS amcheck" postgres
bad=$("${psql_cmd[@]}" -c "SELECT count(*) FROM (SELECT bt_index_check(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND c.relpersistence <> 't') x" postgres 2>&1 | tail -1)
info "amcheck over every btree index: ok ($bad indexes checked)"
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/mnt/pgdata" -m fast stop >/dev/null
pg_started=0
runuser -u postgres -- "$pgbin/pg_checksums" --check -D "$work/mnt/pgdata" | sed 's/^/    /'

step "Unmounting, detaching, stopping the daemon (SIGTERM drains and syncs)"
umount "$work/mnt"
mounted=0
"$root/scripts/nbd-attach.sh" detach "$work/attach"
kill -TERM "$daemon_pid"
wait "$daemon_pid"
daemon_pid=
tail -2 "$work/daemon.log" | sed 's/^/    /'

step "Checking the backing file directly"
e2fsck -fn "$work/volume.img" 2>&1 | tail -1 | sed 's/^/    /'
info "done: the volume served ext4 and PostgreSQL, and its backing file is consistent"
