#!/usr/bin/env bash
# The main job: a mirrored volume with PostgreSQL on it, primary and standby on this machine.
#
#   1. installs dependencies and builds (NBDMIRROR_SKIP_DEPS=1 skips the apt-get step)
#   2. starts the standby daemon (node b) and the primary (node a) on loopback; the primary
#      fully synchronises the standby's empty volume, then mirrors every write in sync mode
#   3. attaches the primary's NBD export as a block device (nbd-client, or nbdfuse + loop)
#   4. makes ext4, initialises PostgreSQL 15 (data checksums) on it, runs pgbench while
#      showing `nbdmirror status`
#   5. checks the database (amcheck, pg_checksums), stops everything cleanly, and compares the
#      two backing files: the standby's copy must be byte-identical to the primary's
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
pids=()
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
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      wait "$pid"
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
status() {  # status VOLUME KEY...: prints the named fields of `nbdmirror status`
  local volume=$1
  shift
  "$bin" status --volume "$volume" --json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print("  ".join(f"{k}={d.get(k)}" for k in sys.argv[1:]))' "$@"
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "timed out waiting for $what" >&2
      tail -5 "$work"/*.log >&2
      exit 1
    fi
    sleep 0.1
  done
}

step "Creating two 1 GiB volumes: A (primary host) and B (standby host)"
truncate -s 1G "$work/A.img" "$work/B.img"
head -c 32 /dev/urandom | base64 > "$work/secret"
chmod 600 "$work/secret"
port_a=$(free_port)
port_b=$(free_port)
metrics_port=$(free_port)
socket=$work/nbd.sock
info "peer link authenticated with a shared secret (HMAC-SHA256); standby on 127.0.0.1:$port_b"

step "Starting the standby (node b) and the primary (node a)"
"$bin" run --volume "$work/B.img" --node b --listen "127.0.0.1:$port_b" \
  --peer "a=127.0.0.1:$port_a" --secret-file "$work/secret" 2>"$work/b.log" &
pids+=($!)
"$bin" run --volume "$work/A.img" --node a --primary --listen "127.0.0.1:$port_a" \
  --peer "b=127.0.0.1:$port_b" --secret-file "$work/secret" --nbd "unix:$socket" \
  --metrics "127.0.0.1:$metrics_port" 2>"$work/a.log" &
pids=($! "${pids[@]}")
in_sync() {  # connected, and the standby's copy UpToDate (not merely remembered as such)
  "$bin" status --volume "$work/A.img" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d["connection"] == "connected" and d["peer_disk"] == "UpToDate" else 1)'
}
wait_for 60 "the initial sync" in_sync
info "primary: $(status "$work/A.img" role connection disk peer_disk mode resync_done_bytes)"
info "standby: $(status "$work/B.img" role connection disk)"

step "Attaching the primary's export as a block device"
dev=$("$root/scripts/nbd-attach.sh" attach "$socket" "$work/attach")
info "block device: $dev (via $(cut -d' ' -f1 "$work/attach/attached"))"

step "ext4 and PostgreSQL 15 on the mirrored volume"
mkfs.ext4 -q -F -E nodiscard "$dev"
mkdir -p "$work/mnt"
mount "$dev" "$work/mnt"
mounted=1
mkdir -p "$work/mnt/pgdata" "$work/pgsock"
chown postgres:postgres "$work/mnt/pgdata" "$work/pgsock"
runuser -u postgres -- "$pgbin/initdb" -D "$work/mnt/pgdata" --data-checksums -A trust >/dev/null
port=$(free_port)
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/mnt/pgdata" -l "$work/mnt/pgdata/log" -w \
  -o "-p $port -k $work/pgsock -c listen_addresses=''" start >/dev/null
pg_started=1
info "PostgreSQL is running with its data directory (WAL and tables) on the mirror"
pg=(runuser -u postgres -- env PGHOST="$work/pgsock" PGPORT="$port")
"${pg[@]}" "$pgbin/pgbench" -i -s 5 -q postgres 2>&1 | tail -1 | sed 's/^/    /'

step "pgbench: 4 clients for 20 seconds; every commit is durable on both hosts"
"${pg[@]}" "$pgbin/pgbench" -c 4 -j 2 -T 20 postgres >"$work/pgbench.out" 2>&1 &
bench=$!
for t in 5 10 15; do
  sleep 5
  info "t=${t}s primary: $(status "$work/A.img" connection peer_disk writes flushes writes_in_flight degraded_writes)"
done
wait "$bench"
grep -E 'number of transactions actually processed|tps' "$work/pgbench.out" | sed 's/^/    /'
info "standby applied: $(status "$work/B.img" applied_writes applied_bytes)"
info "primary latency, last minute: $(status "$work/A.img" write_p50_us write_p99_us flush_p50_us flush_p99_us)"
info "Prometheus metrics at http://127.0.0.1:$metrics_port/metrics, among them:"
curl -sf "http://127.0.0.1:$metrics_port/metrics" |
  grep -E '^nbdmirror_(connection|peer_disk)\{.*\} 1$|^nbdmirror_(writes|flushes|degraded_writes)_total |^nbdmirror_write_duration_seconds_(count|sum) ' |
  sed 's/^/    /'

step "Checking the database"
"${pg[@]}" psql -X -q -c "CREATE EXTENSION IF NOT EXISTS amcheck" postgres
checked=$("${pg[@]}" psql -X -q -t -A -c "SELECT count(bt_index_check(c.oid)) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND c.relpersistence <> 't'" postgres)
info "amcheck: $checked btree indexes verified"
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/mnt/pgdata" -m fast stop >/dev/null
pg_started=0
runuser -u postgres -- "$pgbin/pg_checksums" --check -D "$work/mnt/pgdata" | grep -E 'Bad checksums|Blocks scanned' | sed 's/^/    /'

step "Stopping: unmount, detach, SIGTERM the primary (drains, flushes both), then the standby"
umount "$work/mnt"
mounted=0
"$root/scripts/nbd-attach.sh" detach "$work/attach"
kill -TERM "${pids[0]}"
wait "${pids[0]}"
grep -E 'at shutdown|drained' "$work/a.log" | sed 's/^/    /'
kill -TERM "${pids[1]}"
wait "${pids[1]}"
pids=()

step "Comparing the two copies"
if cmp "$work/A.img" "$work/B.img"; then
  info "A.img and B.img are byte-identical ($(sha256sum "$work/B.img" | cut -c1-16)...)"
else
  echo "the standby's copy differs from the primary's" >&2
  exit 1
fi
e2fsck -fn "$work/B.img" 2>&1 | tail -1 | sed 's/^/    standby copy: /'
info "done: PostgreSQL ran on a volume mirrored synchronously to a standby, and the standby"
info "holds exactly the same bytes; it could be mounted and started after a failover."
