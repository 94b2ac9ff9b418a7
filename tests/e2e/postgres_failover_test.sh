#!/usr/bin/env bash
# postgres_failover_test: when the primary dies mid-load, the standby's copy alone holds every
# transaction PostgreSQL acknowledged, and it is a healthy database: ext4 recovers its journal,
# PostgreSQL recovers from its WAL, amcheck and the data checksums find nothing wrong.
#
# How: two daemons on loopback mirror 1 GiB volumes A (primary, exported over NBD) and B
# (standby) in sync mode, after the initial full resync. The export is attached through nbdfuse
# and a loop device; ext4 on it holds a PostgreSQL 15 cluster made with --data-checksums. While
# pgbench (scale 10, 4 clients) runs, a recorder client (ack_recorder.py) commits ids 1, 2, 3,
# ... into acked(id), one transaction each, and writes each id to a file outside the volume only
# after psql reported its COMMIT. Once a few hundred ids are recorded, the primary daemon is
# SIGKILLed. The primary side is then torn down by force (PostgreSQL killed by its postmaster's
# process group, the ext4 lazily unmounted, loop device and FUSE detached) and the standby is
# stopped with SIGTERM, which must exit 0. Then B.img alone, through a fresh loop device:
# e2fsck -fy (a journal replay is expected; any repair beyond it, save the superblock's free
# counts that ext4 never keeps current, is a failure), mount, pg_ctl start (crash recovery must
# reach "database system is ready"), pg_amcheck over every database (heap and btree, with
# heapallindexed), pgbench's four balance totals equal (its transactions stayed atomic), every
# recorded id in acked (missing ones fail the test; an extra one, committed but its
# acknowledgement lost with the primary, is reported and allowed), then a clean stop and
# pg_checksums --check (no bad blocks). Skipped (77) without root, /dev/fuse, loop devices,
# PostgreSQL 15 or the tools.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require nbdfuse fusermount3 losetup mkfs.ext4 e2fsck mount umount nbdinfo python3 stdbuf \
  runuser
[[ $(id -u) == 0 ]] || nm_skip "mounting, loop devices and runuser need root"
[[ -c /dev/fuse ]] || nm_skip "/dev/fuse is not available"
losetup -f >/dev/null 2>&1 || nm_skip "no free loop device (losetup -f failed)"
pgbin=/usr/lib/postgresql/15/bin
for tool in initdb pg_ctl postgres psql pgbench pg_amcheck pg_checksums; do
  [[ -x $pgbin/$tool ]] || nm_skip "PostgreSQL 15 is not installed ($pgbin/$tool missing)"
done
id postgres >/dev/null 2>&1 || nm_skip "there is no postgres user"

# How many acknowledged ids to collect before the primary is killed, and for how long at most.
min_acked_ids=${PG_FAILOVER_MIN_IDS:-300}
min_load_s=${PG_FAILOVER_MIN_LOAD_S:-5}
collect_timeout_s=${PG_FAILOVER_COLLECT_TIMEOUT:-90}

test_start_ms=$(nm_now_ms)
# phase NAME: logs the time since the start of the test, so the CTest output shows where it goes.
phase() {
  local ms=$(($(nm_now_ms) - test_start_ms))
  nm_log "$(printf '[+%d.%01ds] ' $((ms / 1000)) $((ms % 1000 / 100)))$*"
}

# PostgreSQL runs as postgres and must reach the mount, its socket and its log in the temp dir.
chmod 755 "$NM_TMP"
vol_a=$NM_TMP/A.img
vol_b=$NM_TMP/B.img
secret=$NM_TMP/secret
sock=$NM_TMP/nbd.sock
fuse_dir=$NM_TMP/fuse
mnt=$NM_TMP/mnt
pgdata=$mnt/pgdata
pglog_dir=$NM_TMP/pglog
acked_file=$NM_TMP/acked.ids
mkdir -p "$pglog_dir"
chown postgres:postgres "$pglog_dir"

# wait_dead PID TIMEOUT_S: true once the process has gone, false if it is still there in time.
wait_dead() {
  local deadline=$(($(nm_now_ms) + $2 * 1000))
  while nm_alive "$1"; do
    (($(nm_now_ms) < deadline)) || return 1
    sleep 0.1
  done
}

# wait_reaped PID TIMEOUT_S: true once PID is gone from /proc altogether (zombie reaped).
wait_reaped() {
  local deadline=$(($(nm_now_ms) + $2 * 1000))
  while [[ -e /proc/$1 ]]; do
    (($(nm_now_ms) < deadline)) || return 1
    sleep 0.1
  done
}

# ---- PostgreSQL helpers -------------------------------------------------------------------

pg_servers=() # "POSTMASTER_PID SHMID" of each server started and not yet stopped, for the cleanup.

# pg_start DATADIR PORT SOCKDIR LOG: starts PostgreSQL as postgres (pg_ctl -w) and sets pg_pmpid
# and pg_shmid (its System V segment) from postmaster.pid. Returns pg_ctl's status.
pg_start() {
  local datadir=$1 port=$2 sockdir=$3 log=$4
  mkdir -p "$sockdir"
  chown postgres:postgres "$sockdir"
  chmod 700 "$sockdir"
  local rc=0
  # dynamic_shared_memory_type=mmap: the segments live in the data directory, not in /dev/shm,
  # where a server killed with SIGKILL would leave them behind after the test.
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$datadir" -l "$log" -w -t 90 \
    -o "-p $port -k $sockdir -c listen_addresses='' -c max_wal_size=256MB -c dynamic_shared_memory_type=mmap" start \
    >"$NM_TMP/pg_ctl.out" 2>&1 || rc=$?
  pg_pmpid=
  pg_shmid=
  if [[ -s $datadir/postmaster.pid ]]; then
    # Line 1 is the postmaster's PID, line 7 "KEY SHMID" of its System V segment.
    { read -r pg_pmpid && for _ in 2 3 4 5 6; do read -r _; done && read -r _ pg_shmid; } \
      <"$datadir/postmaster.pid" || true
    pg_servers+=("${pg_pmpid} ${pg_shmid:-none}")
  fi
  return "$rc"
}

# pg_group_pids PMPID: the processes still in the postmaster's process group. pg_ctl makes the
# postmaster a session leader (setsid), so its group is exactly the server's processes.
pg_group_pids() {
  local stat_file stat pid pgrp
  for stat_file in /proc/[0-9]*/stat; do
    { read -r stat <"$stat_file"; } 2>/dev/null || continue
    pid=${stat%% *}
    stat=${stat##*) }
    # Fields after the command: state ppid pgrp ...
    read -r _ _ pgrp _ <<<"$stat"
    [[ $pgrp == "$1" && ${stat:0:1} != Z ]] && echo "$pid"
  done
  return 0
}

# pg_kill PMPID TIMEOUT_S: SIGKILLs every process of that server and waits until they are gone.
# The group is signalled only while its leader is a postmaster serving a data directory under
# this test's temp dir, so a reused PID is never hit.
pg_kill() {
  local pmpid=$1 timeout_s=$2 cmdline=
  cmdline=$(tr '\0' ' ' <"/proc/$pmpid/cmdline" 2>/dev/null || true)
  if [[ $cmdline == */postgres\ -D\ "$NM_TMP"/* ]]; then
    kill -KILL -- "-$pmpid" 2>/dev/null || true
  fi
  local deadline=$(($(nm_now_ms) + timeout_s * 1000)) pids
  while true; do
    pids=$(pg_group_pids "$pmpid")
    [[ -z $pids ]] && return 0
    # Anything forked before the group kill landed gets it now.
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    (($(nm_now_ms) < deadline)) || {
      echo "postgres processes of postmaster ${pmpid} still present: ${pids//$'\n'/ }" >&2
      return 1
    }
    sleep 0.1
  done
}

# pg_remove_shm PMPID SHMID: a killed server leaves its small System V segment behind; remove it
# if that postmaster created it and nothing is attached.
pg_remove_shm() {
  local shmid cpid nattch
  # Columns: key shmid perms size cpid lpid nattch ...
  while read -r _ shmid _ _ cpid _ nattch _; do
    if [[ $shmid == "$2" && $cpid == "$1" && $nattch == 0 ]]; then
      ipcrm -m "$shmid" 2>/dev/null || true
    fi
  done </proc/sysvipc/shm
  return 0
}

# pg_forget PMPID: that server has stopped; the cleanup need not look for it.
pg_forget() {
  local keep=() server
  for server in "${pg_servers[@]}"; do
    [[ ${server%% *} == "$1" ]] || keep+=("$server")
  done
  pg_servers=("${keep[@]}")
}

# pg_kill_server PMPID SHMID TIMEOUT_S: pg_kill, pg_remove_shm, pg_forget.
pg_kill_server() {
  pg_kill "$1" "$3" || return 1
  pg_remove_shm "$1" "$2"
  pg_forget "$1"
}

# The cleanup hook: any server still running is killed before its filesystem is unmounted.
pg_cleanup() {
  local server
  for server in "${pg_servers[@]}"; do
    # shellcheck disable=SC2086
    pg_kill_server $server 20
  done
}
nm_add_cleanup_hook pg_cleanup

# psql_at SOCKDIR PORT ARGS...: psql as the postgres role, unaligned, tuples only, stop on error.
psql_at() {
  local sockdir=$1 port=$2
  shift 2
  "$pgbin/psql" -X -h "$sockdir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA "$@"
}

# ---- 1. Two mirrored volumes, in sync ------------------------------------------------------

nm_make_volume "$vol_a" 1G
nm_make_volume "$vol_b" 1G
nm_make_secret "$secret"
port_a=$(nm_free_port)
port_b=$(nm_free_port)
while [[ $port_b == "$port_a" ]]; do port_b=$(nm_free_port); done
nm_start_secondary "$vol_b" --node b --listen "127.0.0.1:$port_b" --peer "a=127.0.0.1:$port_a" \
  --secret-file "$secret"
standby_pid=$NM_PID
standby_log=$NM_LOG
nm_start_primary "$vol_a" "$sock" --node a --listen "127.0.0.1:$port_a" \
  --peer "b=127.0.0.1:$port_b" --secret-file "$secret"
primary_pid=$NM_PID
phase "both daemons up; waiting for the initial full resync"
nm_wait_for 60 "the initial full resync (peer_disk UpToDate)" nm_peer_up_to_date "$vol_a"
mode=$(nm_status_field "$vol_a" mode)
[[ $mode == sync ]] || nm_fail "primary runs in mode '${mode}', expected sync"
phase "mirror in sync: primary pid ${primary_pid} (A.img), standby pid ${standby_pid} (B.img)"

# ---- 2. ext4 and PostgreSQL on the primary's export ----------------------------------------

nm_start_nbdfuse "$fuse_dir/disk" "$NM_URI"
fuse_pid=$NM_FUSE_PID
nm_losetup "$fuse_dir/disk"
loop_a=$NM_LOOP
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0,nodiscard "$loop_a" ||
  nm_fail "mkfs.ext4 on the export failed"
nm_mount "$loop_a" "$mnt"
mkdir -p "$pgdata"
chown postgres:postgres "$pgdata"
# initdb's own fsync of each of its ~1000 files costs a mirrored flush each; one syncfs of the
# whole filesystem makes the same data durable on both hosts at once.
runuser -u postgres -- "$pgbin/initdb" -D "$pgdata" --data-checksums -A trust -U postgres \
  --no-sync >"$NM_TMP/initdb.out" 2>&1 || nm_fail "initdb failed: $(tail -20 "$NM_TMP/initdb.out")"
sync -f "$pgdata"
pg_port=$(nm_free_port)
pg_sock=$NM_TMP/pgsock
pg_start "$pgdata" "$pg_port" "$pg_sock" "$pglog_dir/primary.log" ||
  nm_fail "PostgreSQL did not start on the export: $(tail -20 "$pglog_dir/primary.log")"
pg_primary_pmpid=$pg_pmpid
pg_primary_shmid=$pg_shmid
phase "PostgreSQL 15 on ${loop_a} (nbdfuse pid ${fuse_pid}), postmaster ${pg_primary_pmpid}," \
  "port ${pg_port}"
"$pgbin/pgbench" -h "$pg_sock" -p "$pg_port" -U postgres -i -s 10 -q postgres \
  >"$NM_TMP/pgbench-init.out" 2>&1 ||
  nm_fail "pgbench -i failed: $(tail -20 "$NM_TMP/pgbench-init.out")"
psql_at "$pg_sock" "$pg_port" -c "CREATE TABLE acked (id bigint PRIMARY KEY)" ||
  nm_fail "could not create table acked"
phase "pgbench -i -s 10 done: $(tail -1 "$NM_TMP/pgbench-init.out")"

# ---- 3. Load, recorded acknowledgements, and the primary's death ----------------------------

"$pgbin/pgbench" -h "$pg_sock" -p "$pg_port" -U postgres -c 4 -j 2 -T 120 -n postgres \
  </dev/null >"$NM_TMP/pgbench.out" 2>&1 &
pgbench_pid=$!
nm_track_pid "$pgbench_pid"
python3 "$NM_SOURCE_DIR/tests/e2e/ack_recorder.py" "$acked_file" \
  "$pgbin/psql" -X -h "$pg_sock" -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
  </dev/null >"$NM_TMP/recorder.out" 2>&1 &
recorder_pid=$!
nm_track_pid "$recorder_pid"

acked_count() { if [[ -f $acked_file ]]; then wc -l <"$acked_file"; else echo 0; fi; }
load_start_ms=$(nm_now_ms)
deadline=$((load_start_ms + collect_timeout_s * 1000))
while (($(acked_count) < min_acked_ids || $(nm_now_ms) - load_start_ms < min_load_s * 1000)); do
  nm_alive "$recorder_pid" || nm_fail "the recorder stopped early: $(cat "$NM_TMP/recorder.out")"
  nm_alive "$pgbench_pid" || nm_fail "pgbench stopped early: $(tail -20 "$NM_TMP/pgbench.out")"
  (($(nm_now_ms) < deadline)) ||
    nm_fail "only $(acked_count) ids acknowledged in ${collect_timeout_s}s (want ${min_acked_ids})"
  sleep 0.1
done
nm_assert_alive "$pgbench_pid" "pgbench"
nm_assert_alive "$recorder_pid" "the recorder"
nm_assert_alive "$primary_pid" "the primary nbdmirror"
load_s=$((($(nm_now_ms) - load_start_ms) / 1000))
# The claim holds only for a mirror that was connected and in sync up to the kill: a primary
# that had lost its peer keeps serving (on-peer-loss degrade) and B lacks those writes.
status_fields=(connection peer_disk writes flushes degraded_writes errors)
read -r connection peer_disk primary_writes primary_flushes degraded_writes primary_errors \
  <<<"$("$NM_BIN" status --volume "$vol_a" --json | python3 -c 'import json, sys
s = json.load(sys.stdin)
print(" ".join(str(s.get(k, "?")) for k in sys.argv[1:]))' "${status_fields[@]}")"
acked_before_kill=$(acked_count)
kill -KILL "$primary_pid"
acked_at_kill=$(acked_count)
phase "SIGKILLed the primary nbdmirror after ${load_s}s of load: ${acked_before_kill} ids" \
  "acknowledged (${acked_at_kill} right after the signal); primary had served" \
  "${primary_writes} writes, ${primary_flushes} flushes; peer ${connection}, ${peer_disk}," \
  "${degraded_writes} degraded writes, ${primary_errors} errors"
[[ $connection == connected && $peer_disk == UpToDate && $degraded_writes == 0 ]] ||
  nm_fail "the mirror was not in sync when the primary was killed (peer ${connection}," \
    "${peer_disk}, ${degraded_writes} writes acknowledged without the peer)"
((primary_errors == 0)) || nm_fail "the primary reported ${primary_errors} errors before the kill"
rc=0
nm_wait_exit "$primary_pid" 10 || rc=$?
((rc == 137)) || nm_fail "the primary exited with status ${rc}, expected 137 (SIGKILL)"

# ---- 4. Tear down the primary side ----------------------------------------------------------

# The recorder's in-flight commit can no longer be acknowledged. PostgreSQL PANICs on the failed
# fsync and its postmaster usually dies too when it cannot restart; give it a few seconds to say
# so in its log, then kill whatever is left of it.
wait_dead "$recorder_pid" 15 || true
wait_dead "$pg_primary_pmpid" 3 || true
pg_kill_server "$pg_primary_pmpid" "$pg_primary_shmid" 20 || {
  nm_log "PostgreSQL is stuck; killing nbdfuse to fail its pending I/O"
  kill -KILL "$fuse_pid" 2>/dev/null || true
  pg_kill_server "$pg_primary_pmpid" "$pg_primary_shmid" 20 ||
    nm_fail "PostgreSQL on the dead export could not be killed"
}
rc=0
nm_wait_exit "$recorder_pid" 15 || rc=$?
((rc == 0)) || nm_fail "the recorder exited with status ${rc}: $(cat "$NM_TMP/recorder.out")"
acked_final=$(acked_count)
rc=0
nm_wait_exit "$pgbench_pid" 15 || rc=$?
phase "primary PostgreSQL killed; pgbench exited with ${rc}; recorder:" \
  "$(tail -1 "$NM_TMP/recorder.out")"
nm_log "PostgreSQL's last words on the primary: $(grep -E 'PANIC|FATAL|ERROR' \
  "$pglog_dir/primary.log" | head -3 | tr '\n' '|')"
nm_umount_lazy "$mnt" || nm_fail "umount -l of the primary's ext4 failed"
# The lazily unmounted ext4 may still hold the loop device: detaching then only marks it for
# autoclear, which is what we want.
nm_losetup_detach "$loop_a"
nm_fuse_unmount "$fuse_dir"
wait_dead "$fuse_pid" 15 || kill -KILL "$fuse_pid"
rc=0
wait "$fuse_pid" || rc=$?
nm_untrack_pid "$fuse_pid"
fuse_note=
((rc != 134)) || fuse_note=" (SIGABRT: nbdfuse asserts when its server vanishes)"
nm_log "nbdfuse exited with status ${rc}${fuse_note}"
standby_applied=$(nm_status_field "$vol_b" applied_writes)
rc=0
nm_stop "$standby_pid" || rc=$?
((rc == 0)) || nm_fail "the standby exited with status ${rc} after SIGTERM, expected 0"
phase "primary side torn down; standby (${standby_applied} writes applied) stopped with 0:" \
  "$(tail -1 "$standby_log")"

# ---- 5. Failover: B.img alone ---------------------------------------------------------------

# A failed check on B is recorded and the others still run, so one run reports everything that
# is wrong with the standby's copy; the test fails at the end if anything was.
failures=()
check_failed() {
  echo "CHECK FAILED: $*" >&2
  failures+=("$*")
}

nm_losetup "$vol_b"
loop_b=$NM_LOOP
fsck_rc=0
e2fsck -fy "$loop_b" >"$NM_TMP/e2fsck.out" 2>&1 || fsck_rc=$?
nm_log "e2fsck -fy on B.img (${loop_b}) exited ${fsck_rc}:"
sed 's/^/    /' "$NM_TMP/e2fsck.out" >&2
((fsck_rc < 4)) ||
  check_failed "e2fsck left errors uncorrected on the standby's copy (status ${fsck_rc})"
# A crash-consistent ext4 needs nothing beyond the journal replay (and orphan processing, which
# is part of it). A repair in passes 1-5 means writes were lost or reordered on the way to B,
# with one exception: the superblock's free block and inode totals, which ext4 does not keep
# current while mounted (the group descriptors, which it journals, are the truth). e2fsck -p
# fixes those silently; with -y it says "Free blocks count wrong (X, counted=Y)". A wrong count
# "for group #N" is a real error and is not excused.
repairs=$(sed -n '/^Pass 1/,$p' "$NM_TMP/e2fsck.out" |
  grep -vE '^(Pass [1-5]: .*|Fix\? yes|[^ ]+: [0-9]+/[0-9]+ files .*|)$' |
  grep -vE '^Free (blocks|inodes) count wrong \([0-9]+, counted=[0-9]+\)\.$' |
  grep -vE '^[^ ]+: \*+ FILE SYSTEM WAS MODIFIED \*+$' || true)
[[ -z $repairs ]] ||
  check_failed "e2fsck had to repair the standby's copy beyond journal replay:"$'\n'"${repairs}"
journal=$(grep -q 'recovering journal' "$NM_TMP/e2fsck.out" && echo "replayed the journal" ||
  echo "found no journal to replay")
nm_log "e2fsck ${journal}; repairs beyond it: ${repairs:-none}"
rc=0
e2fsck -fn "$loop_b" >"$NM_TMP/e2fsck2.out" 2>&1 || rc=$?
((rc == 0)) || nm_fail "a second e2fsck -fn is not clean (${rc}): $(cat "$NM_TMP/e2fsck2.out")"
nm_mount "$loop_b" "$mnt"
pg2_port=$(nm_free_port)
pg2_sock=$NM_TMP/pgsock2
# postmaster.pid on B names the dead primary's postmaster. On a real standby host that PID means
# nothing; here it is the same host, and PostgreSQL refuses to start while a process with that
# PID exists, even a zombie. The killed postmaster's parent is PID 1, which reaps it in a second
# or two; should it not within the bound, the lock file is stale (we killed that server and
# saw its processes go) and is removed, as an operator would on failover.
if ! wait_reaped "$pg_primary_pmpid" 30; then
  nm_log "postmaster ${pg_primary_pmpid} not reaped yet; removing the stale postmaster.pid on B"
  rm -f "$pgdata/postmaster.pid"
fi
rc=0
pg_start "$pgdata" "$pg2_port" "$pg2_sock" "$pglog_dir/standby.log" || rc=$?
nm_log "crash recovery on B.img (pg_ctl -w start exited ${rc}):"
grep -E 'database system|redo|recover|checkpoint|PANIC|FATAL|ERROR' "$pglog_dir/standby.log" |
  sed 's/^/    /' >&2
((rc == 0)) || nm_fail "PostgreSQL did not start on the standby's copy: $(cat "$NM_TMP/pg_ctl.out")"
grep -q 'database system was interrupted' "$pglog_dir/standby.log" ||
  nm_fail "PostgreSQL did not go through crash recovery"
grep -q 'database system is ready to accept connections' "$pglog_dir/standby.log" ||
  nm_fail "PostgreSQL never said it is ready"
phase "PostgreSQL recovered on B.img: postmaster ${pg_pmpid}, port ${pg2_port}"

rc=0
"$pgbin/pg_amcheck" -h "$pg2_sock" -p "$pg2_port" -U postgres --all --install-missing \
  --heapallindexed >"$NM_TMP/amcheck.out" 2>&1 || rc=$?
indexes=$(psql_at "$pg2_sock" "$pg2_port" -c "SELECT count(*) FROM pg_class c JOIN pg_am a \
  ON a.oid = c.relam WHERE c.relkind = 'i' AND a.amname = 'btree'")
if ((rc == 0)); then
  phase "pg_amcheck --all --heapallindexed: clean (${indexes} btree indexes in postgres)"
else
  check_failed "pg_amcheck found problems (status ${rc}): $(head -40 "$NM_TMP/amcheck.out")"
fi

# Which recorded ids made it. \copy reads the list on the client side (psql runs as root).
counts=$(psql_at "$pg2_sock" "$pg2_port" -F ' ' <<SQL
CREATE TEMP TABLE recorded (id bigint);
\copy recorded FROM '$acked_file'
SELECT (SELECT count(*) FROM recorded),
       (SELECT count(DISTINCT id) FROM recorded),
       (SELECT count(*) FROM recorded r WHERE EXISTS (SELECT 1 FROM acked a WHERE a.id = r.id)),
       (SELECT count(*) FROM acked a WHERE NOT EXISTS (SELECT 1 FROM recorded r WHERE r.id = a.id)),
       (SELECT count(*) FROM acked),
       coalesce((SELECT max(id) FROM acked), 0);
SELECT 'missing', string_agg(id::text, ' ' ORDER BY id) FROM
  (SELECT id FROM recorded EXCEPT SELECT id FROM acked) m HAVING count(*) > 0;
SELECT 'extra', string_agg(id::text, ' ' ORDER BY id) FROM
  (SELECT id FROM acked EXCEPT SELECT id FROM recorded) e HAVING count(*) > 0;
SQL
) || nm_fail "could not compare the recorded ids with table acked"
read -r recorded distinct found extra in_table max_id <<<"$(head -1 <<<"$counts")"
missing_list=$(sed -n 's/^missing //p' <<<"$counts")
extra_list=$(sed -n 's/^extra //p' <<<"$counts")
tx_count=$(psql_at "$pg2_sock" "$pg2_port" -c "SELECT count(*) FROM pgbench_history")
# Each pgbench transaction adds the same delta to one account, teller and branch and logs it in
# pgbench_history, atomically: after recovery the four totals must still agree.
sums=$(psql_at "$pg2_sock" "$pg2_port" -F ' ' -c "SELECT
  (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers),
  (SELECT sum(bbalance) FROM pgbench_branches),
  (SELECT coalesce(sum(delta), 0) FROM pgbench_history)")
read -r sum_accounts sum_tellers sum_branches sum_history <<<"$sums"
phase "ids: ${recorded} recorded (${acked_before_kill} before the kill), ${found} found in" \
  "acked, $((recorded - found)) missing (${missing_list:-none}), ${extra} extra" \
  "(${extra_list:-none}); acked holds ${in_table} rows up to ${max_id}"
((recorded == acked_final)) ||
  nm_fail "the database read ${recorded} ids, the file has ${acked_final}"
((distinct == recorded)) || nm_fail "the recorded ids are not distinct (${distinct} of ${recorded})"
((recorded >= min_acked_ids)) || nm_fail "only ${recorded} ids were recorded"
((found == recorded)) ||
  check_failed "$((recorded - found)) acknowledged ids are missing on the standby: ${missing_list}"
if [[ $sum_accounts == "$sum_history" && $sum_tellers == "$sum_history" &&
      $sum_branches == "$sum_history" ]]; then
  nm_log "pgbench_history holds ${tx_count} transactions; all four pgbench totals agree" \
    "(${sum_history})"
else
  check_failed "pgbench totals disagree after recovery (accounts tellers branches history):" \
    "${sums}"
fi

rc=0
runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdata" -m fast -w -t 60 stop \
  >"$NM_TMP/pg_stop.out" 2>&1 || rc=$?
((rc == 0)) || nm_fail "pg_ctl stop failed: $(cat "$NM_TMP/pg_stop.out")"
pg_forget "$pg_pmpid"
rc=0
runuser -u postgres -- "$pgbin/pg_checksums" --check -D "$pgdata" >"$NM_TMP/checksums.out" 2>&1 ||
  rc=$?
nm_log "pg_checksums --check exited ${rc}:"
sed 's/^/    /' "$NM_TMP/checksums.out" >&2
if ((rc != 0)) || ! grep -qE '^Bad checksums: +0$' "$NM_TMP/checksums.out"; then
  check_failed "pg_checksums --check failed (status ${rc}): $(grep -v '^ *$' \
    "$NM_TMP/checksums.out" | head -20)"
fi
nm_umount "$mnt"
nm_losetup_detach "$loop_b"
if ((${#failures[@]} > 0)); then
  nm_fail "the standby's copy failed ${#failures[@]} check(s):"$'\n'"$(printf '  - %s\n' \
    "${failures[@]}")"
fi
phase "every check on B.img passed"
echo "PASS: postgres_failover_test"
