# shellcheck shell=bash
# common.sh: what every integration test sources first.
#
# It gives each test a private temp directory and a cleanup trap that runs on every exit,
# including a failed assertion or a signal: it unmounts what the test mounted, detaches the
# loop devices it attached, unmounts its FUSE mounts, stops only the processes it started (by
# PID, never by name) and removes the temp directory. On failure it prints the tail of every
# daemon log first, so the CTest output says why.
#
# Processes are started in the test's own shell (never inside $(...)) so that they are its
# children: `wait PID` then returns their exit code. That is why the start helpers set global
# variables (NM_PID, NM_LOG, NM_URI, NM_LOOP, ...) instead of printing their results.
#
# Synchronisation is always "poll a condition until a deadline" (nm_wait_for), never a fixed
# sleep.
#
# Exit codes: 0 pass, 1 fail, 77 skipped (a tool or kernel feature this machine lacks).

# Variables set here are read by the scripts that source this file.
# shellcheck disable=SC2034
set -euo pipefail

NM_BIN=${NBDMIRROR_BIN:-}
if [[ -z $NM_BIN || ! -x $NM_BIN ]]; then
  echo "FAIL: NBDMIRROR_BIN must name the nbdmirror binary (got '${NM_BIN}')" >&2
  exit 1
fi
NM_SOURCE_DIR=${NBDMIRROR_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
NM_TEST_NAME=$(basename "$0" .sh)
NM_TMP=$(mktemp -d "/tmp/nbdmirror-${NM_TEST_NAME}.XXXXXX")

# How long a daemon may take to answer after start, and to exit after SIGTERM (seconds).
NM_START_TIMEOUT=${NM_START_TIMEOUT:-20}
NM_STOP_TIMEOUT=${NM_STOP_TIMEOUT:-30}
# Global options given before `run` (the log level is a program option, not a `run` option).
NM_LOG_LEVEL=${NM_LOG_LEVEL:-debug}
# The Python helpers must not leave __pycache__ directories in the source tree.
export PYTHONDONTWRITEBYTECODE=1

NM_PIDS=()           # Every background process this test started, in start order.
NM_DAEMON_LOGS=()    # Every daemon log, for the failure report.
NM_MOUNTS=()         # Filesystems mounted with nm_mount.
NM_LOOPS=()          # Loop devices attached with nm_losetup.
NM_FUSE_MOUNTS=()    # FUSE mount points made with nm_start_nbdfuse.
NM_CLEANUP_HOOKS=()  # Commands the cleanup runs first (e.g. stopping PostgreSQL on a mount).
NM_EXIT_HOOKS=()     # Commands the cleanup runs last, after stopping processes (a netns).
NM_LOGS_SHOWN=0
NM_DAEMON_SEQ=0
# Set these around a start helper: NM_DAEMON_LABEL names its log (LABEL.N.log, default
# "daemon"); NM_EXEC_PREFIX runs the daemon through a command that execs it in place, so the PID
# is still the daemon's (e.g. `ip netns exec NAME`).
NM_DAEMON_LABEL=daemon
NM_EXEC_PREFIX=()

nm_log() {
  printf '[%s %s] %s\n' "$NM_TEST_NAME" "$(date +%H:%M:%S.%3N)" "$*" >&2
}

# Prints the last lines of every daemon log (once).
nm_show_logs() {
  local log
  ((NM_LOGS_SHOWN)) && return 0
  NM_LOGS_SHOWN=1
  for log in "${NM_DAEMON_LOGS[@]}"; do
    if [[ -f $log ]]; then
      echo "---- last 60 lines of $(basename "$log") ----" >&2
      tail -n 60 "$log" >&2 || true
      echo "---- end of $(basename "$log") ----" >&2
    fi
  done
}

# nm_fail MSG: reports a failed assertion with the daemon logs, and ends the test.
nm_fail() {
  echo "FAIL: ${NM_TEST_NAME}: $*" >&2
  nm_show_logs
  exit 1
}

# nm_skip MSG: this machine cannot run the test.
nm_skip() {
  echo "SKIP: ${NM_TEST_NAME}: $*" >&2
  exit 77
}

# nm_require CMD...: skips the test unless every command is installed.
nm_require() {
  local cmd
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null 2>&1 || nm_skip "'$cmd' is not installed"
  done
}

# nm_now_ms: wall clock in milliseconds.
nm_now_ms() {
  local t=${EPOCHREALTIME/[.,]/}
  echo $((t / 1000))
}

# nm_wait_for TIMEOUT_S DESCRIPTION CMD...: polls CMD until it succeeds; fails the test when
# the deadline passes first.
nm_wait_for() {
  local timeout_s=$1 what=$2
  shift 2
  local deadline=$(($(nm_now_ms) + timeout_s * 1000))
  until "$@" >/dev/null 2>&1; do
    (($(nm_now_ms) < deadline)) || nm_fail "timed out after ${timeout_s}s waiting for ${what}"
    sleep 0.05
  done
}

# nm_alive PID: true while the process exists and is not a zombie.
nm_alive() {
  local stat
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  stat=${stat##*) }
  [[ -n $stat && ${stat:0:1} != Z && ${stat:0:1} != X ]]
}

nm_dead() { ! nm_alive "$1"; }

# nm_track_pid PID: registers a background process for the cleanup trap.
nm_track_pid() { NM_PIDS+=("$1"); }

nm_untrack_pid() {
  local keep=() p
  for p in "${NM_PIDS[@]}"; do
    [[ $p == "$1" ]] || keep+=("$p")
  done
  NM_PIDS=("${keep[@]}")
}

# nm_kill_pid PID: SIGTERM, bounded wait, SIGKILL, reap. Used by the cleanup.
nm_kill_pid() {
  local pid=$1 i
  if nm_alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    # A test may have stopped it (SIGSTOP) and failed before resuming it.
    kill -CONT "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
      nm_alive "$pid" || break
      sleep 0.05
    done
    if nm_alive "$pid"; then
      echo "cleanup: pid $pid ignored SIGTERM for 10s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

# nm_add_exit_hook CMD: like nm_add_cleanup_hook, but the cleanup runs CMD last, once every
# process the test started has been stopped: for what those processes used that is not a file or
# a mount (a network namespace, a veth pair).
nm_add_exit_hook() { NM_EXIT_HOOKS+=("$*"); }

# nm_next_daemon_log: registers the next daemon log (shown on failure); sets NM_LOG.
nm_next_daemon_log() {
  NM_DAEMON_SEQ=$((NM_DAEMON_SEQ + 1))
  NM_LOG="${NM_TMP}/${NM_DAEMON_LABEL}.${NM_DAEMON_SEQ}.log"
  NM_DAEMON_LOGS+=("$NM_LOG")
}

# nm_uri SOCKET: the NBD URI of a Unix socket.
nm_uri() { echo "nbd+unix:///?socket=$1"; }

# nm_free_port: a TCP port on 127.0.0.1 that the kernel just reported free.
nm_free_port() {
  python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# nm_free_ports N: N distinct TCP ports on 127.0.0.1 that the kernel just reported free, on one
# line (all held open together while asking, so no two are the same).
nm_free_ports() {
  python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# nm_make_volume PATH SIZE: a fresh sparse file (SIZE as truncate takes it, e.g. 256M).
nm_make_volume() {
  rm -f "$1"
  truncate -s "$2" "$1"
}

nm_export_answers() { nbdinfo --size "$1" >/dev/null 2>&1; }

# nm_start_primary VOLUME ENDPOINT [EXTRA RUN ARGS...]
# ENDPOINT is a Unix socket path (anything containing '/') or HOST:PORT for TCP. Starts the
# daemon in the background, logging to the temp dir, and returns once the export answers
# nbdinfo. Sets NM_PID, NM_LOG and NM_URI.
nm_start_primary() {
  local volume=$1 endpoint=$2
  shift 2
  local nbd uri
  if [[ $endpoint == */* ]]; then
    nbd="unix:${endpoint}"
    uri=$(nm_uri "$endpoint")
  else
    nbd=$endpoint
    uri="nbd://${endpoint}"
  fi
  local log
  nm_next_daemon_log
  log=$NM_LOG
  "${NM_EXEC_PREFIX[@]}" "$NM_BIN" --log-level "$NM_LOG_LEVEL" run --volume "$volume" --primary \
    --nbd "$nbd" "$@" </dev/null >"$log" 2>&1 &
  local pid=$!
  nm_track_pid "$pid"
  nm_log "started nbdmirror pid ${pid} on ${nbd} (log $(basename "$log"))"
  local deadline=$(($(nm_now_ms) + NM_START_TIMEOUT * 1000))
  until nm_export_answers "$uri"; do
    if nm_dead "$pid"; then
      local rc=0
      wait "$pid" || rc=$?
      nm_untrack_pid "$pid"
      nm_fail "nbdmirror exited with status ${rc} during start-up"
    fi
    (($(nm_now_ms) < deadline)) ||
      nm_fail "nbdmirror did not answer on ${uri} within ${NM_START_TIMEOUT}s"
    sleep 0.05
  done
  NM_PID=$pid
  NM_LOG=$log
  NM_URI=$uri
}

# nm_stop PID [TIMEOUT_S]: SIGTERM, wait (bounded) and return the process's exit status.
# Call it as `rc=0; nm_stop "$pid" || rc=$?`.
nm_stop() {
  kill -TERM "$1" 2>/dev/null || true
  nm_wait_exit "$1" "${2:-$NM_STOP_TIMEOUT}"
}

# nm_wait_exit PID [TIMEOUT_S]: waits (bounded) for a process that was told to stop some other
# way, and returns its exit status. Call it as `rc=0; nm_wait_exit "$pid" || rc=$?`.
nm_wait_exit() {
  local pid=$1 timeout_s=${2:-$NM_STOP_TIMEOUT}
  local deadline=$(($(nm_now_ms) + timeout_s * 1000))
  while nm_alive "$pid"; do
    (($(nm_now_ms) < deadline)) || nm_fail "pid ${pid} still running after ${timeout_s}s"
    sleep 0.05
  done
  local rc=0
  wait "$pid" || rc=$?
  nm_untrack_pid "$pid"
  return "$rc"
}

# nm_assert_alive PID WHAT: fails unless the process is still running.
nm_assert_alive() {
  nm_alive "$1" || nm_fail "$2 (pid $1) is no longer running"
}

# nm_count_in_log LOG PATTERN: number of lines matching the extended regex.
nm_count_in_log() {
  grep -cE -- "$2" "$1" || true
}

# nm_mount DEVICE DIR [MOUNT ARGS...]: mounts and remembers it for the cleanup.
nm_mount() {
  local dev=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  mount "$@" "$dev" "$dir"
  NM_MOUNTS+=("$dir")
}

# nm_umount DIR: unmounts a filesystem mounted with nm_mount.
nm_umount() {
  umount "$1"
  local keep=() m
  for m in "${NM_MOUNTS[@]}"; do
    [[ $m == "$1" ]] || keep+=("$m")
  done
  NM_MOUNTS=("${keep[@]}")
}

# nm_losetup FILE: attaches a loop device; sets NM_LOOP.
nm_losetup() {
  NM_LOOP=$(losetup -f --show "$1")
  NM_LOOPS+=("$NM_LOOP")
}

# nm_losetup_detach DEVICE
nm_losetup_detach() {
  losetup -d "$1"
  local keep=() l
  for l in "${NM_LOOPS[@]}"; do
    [[ $l == "$1" ]] || keep+=("$l")
  done
  NM_LOOPS=("${keep[@]}")
}

nm_is_fuse_mounted() {
  grep -qsF " $1 fuse" /proc/self/mounts
}

# nm_start_nbdfuse FILE URI [NBDFUSE ARGS...]: serves the export as FILE (DIR/NAME; DIR is
# created) through nbdfuse in the background, and returns when FILE exists. Sets
# NM_FUSE_PID.
nm_start_nbdfuse() {
  local file=$1 uri=$2
  shift 2
  local dir
  dir=$(dirname "$file")
  mkdir -p "$dir"
  local pidfile="${NM_TMP}/nbdfuse.$$.$RANDOM.pid"
  nbdfuse -P "$pidfile" "$@" "$file" "$uri" </dev/null >"${NM_TMP}/nbdfuse.log" 2>&1 &
  local pid=$!
  nm_track_pid "$pid"
  NM_FUSE_MOUNTS+=("$dir")
  local deadline=$(($(nm_now_ms) + NM_START_TIMEOUT * 1000))
  until [[ -s $pidfile && -e $file ]]; do
    if nm_dead "$pid"; then
      cat "${NM_TMP}/nbdfuse.log" >&2 || true
      nm_fail "nbdfuse exited during start-up"
    fi
    (($(nm_now_ms) < deadline)) ||
      nm_fail "nbdfuse did not create ${file} within ${NM_START_TIMEOUT}s"
    sleep 0.05
  done
  NM_FUSE_PID=$pid
}

# nm_fuse_unmount DIR: unmounts a FUSE mount point (nbdfuse then exits by itself).
nm_fuse_unmount() {
  local dir=$1
  fusermount3 -u "$dir" 2>/dev/null || umount -l "$dir"
  local keep=() f
  for f in "${NM_FUSE_MOUNTS[@]}"; do
    [[ $f == "$dir" ]] || keep+=("$f")
  done
  NM_FUSE_MOUNTS=("${keep[@]}")
}

# nm_add_cleanup_hook CMD: the cleanup runs CMD (a function name or simple command, split on
# spaces) before it unmounts anything; hooks run in reverse order of registration. A hook must
# be bounded in time and must not fail the test (the cleanup runs with `set +e`).
nm_add_cleanup_hook() { NM_CLEANUP_HOOKS+=("$*"); }

# nm_umount_lazy DIR: detaches a filesystem mounted with nm_mount even while it is busy or its
# device has died (umount -l), bounded in time.
nm_umount_lazy() {
  timeout 30 umount -l "$1" || return 1
  local keep=() m
  for m in "${NM_MOUNTS[@]}"; do
    [[ $m == "$1" ]] || keep+=("$m")
  done
  NM_MOUNTS=("${keep[@]}")
}

# ---- Mirroring: a secondary and a primary daemon on loopback. ----

# nm_make_secret FILE: a fresh random shared secret for --secret-file, mode 0600.
nm_make_secret() {
  (umask 077 && head -c 32 /dev/urandom | base64 >"$1")
  chmod 600 "$1"
}

# nm_status_answers VOLUME: true while the daemon serving VOLUME answers `nbdmirror status`.
nm_status_answers() { "$NM_BIN" status --volume "$1" --json >/dev/null 2>&1; }

# nm_status_json VOLUME: the whole status JSON (empty when the daemon does not answer).
nm_status_json() { "$NM_BIN" status --volume "$1" --json 2>/dev/null || true; }

# nm_status_field VOLUME KEY: one value of `nbdmirror status --volume VOLUME --json` (empty when
# the daemon does not answer or has no such key). jq when there is one: polling loops call this
# often, and a python3 behind a version-manager shim can take seconds to start on a busy machine.
nm_status_field() {
  if command -v jq >/dev/null 2>&1; then
    "$NM_BIN" status --volume "$1" --json 2>/dev/null |
      jq -r --arg k "$2" '.[$k] // empty | tostring' 2>/dev/null || true
    return 0
  fi
  "$NM_BIN" status --volume "$1" --json 2>/dev/null |
    python3 -c 'import json, sys
print(json.load(sys.stdin).get(sys.argv[1], ""))' "$2" 2>/dev/null || true
}

# nm_peer_up_to_date VOLUME: true once the daemon serving VOLUME reports its peer's disk UpToDate.
nm_peer_up_to_date() { [[ $(nm_status_field "$1" peer_disk) == UpToDate ]]; }

# nm_start_secondary VOLUME [EXTRA RUN ARGS...]: starts a secondary daemon (no NBD export; give
# it --listen, --peer, --secret-file, ...) in the background, logging to the temp dir, and
# returns once its control socket answers `nbdmirror status`. Sets NM_PID and NM_LOG. Honours
# NM_DAEMON_LABEL and NM_EXEC_PREFIX.
nm_start_secondary() {
  local volume=$1
  shift
  local log
  nm_next_daemon_log
  log=$NM_LOG
  "${NM_EXEC_PREFIX[@]}" "$NM_BIN" --log-level "$NM_LOG_LEVEL" run --volume "$volume" "$@" \
    </dev/null >"$log" 2>&1 &
  local pid=$!
  nm_track_pid "$pid"
  nm_log "started secondary nbdmirror pid ${pid} (log $(basename "$log"))"
  local deadline=$(($(nm_now_ms) + NM_START_TIMEOUT * 1000))
  until nm_status_answers "$volume"; do
    if nm_dead "$pid"; then
      local rc=0
      wait "$pid" || rc=$?
      nm_untrack_pid "$pid"
      nm_fail "secondary nbdmirror exited with status ${rc} during start-up"
    fi
    (($(nm_now_ms) < deadline)) ||
      nm_fail "secondary nbdmirror did not answer status within ${NM_START_TIMEOUT}s"
    sleep 0.05
  done
  NM_PID=$pid
  NM_LOG=$log
}

# nm_status_is VOLUME KEY VALUE / nm_status_is_not VOLUME KEY VALUE / nm_status_ge VOLUME KEY N:
# conditions on the status JSON for nm_wait_for and assertions. A daemon that does not answer
# fails all three (unless VALUE is empty for nm_status_is).
nm_status_is() { [[ $(nm_status_field "$1" "$2") == "$3" ]]; }
nm_status_is_not() {
  local v
  v=$(nm_status_field "$1" "$2")
  [[ -n $v && $v != "$3" ]]
}
nm_status_ge() {
  local v
  v=$(nm_status_field "$1" "$2")
  [[ $v =~ ^[0-9]+$ ]] && ((v >= $3))
}

# nm_wait_status TIMEOUT_S VOLUME KEY VALUE: polls the daemon's status until KEY is VALUE.
nm_wait_status() {
  nm_wait_for "$1" "$(basename "$2"): $3 = $4" nm_status_is "$2" "$3" "$4"
}

# nm_stop_clean PID WHAT [TIMEOUT_S]: SIGTERM; fails the test unless it exits 0 in time.
nm_stop_clean() {
  local rc=0
  nm_stop "$1" "${3:-$NM_STOP_TIMEOUT}" || rc=$?
  ((rc == 0)) || nm_fail "$2 (pid $1) exited with status ${rc} after SIGTERM, expected 0"
}

# nm_sha256 FILE: the file's SHA-256.
nm_sha256() { sha256sum "$1" | cut -d' ' -f1; }

# nm_python_with MODULE: sets NM_PYTHON to a python3 that can import MODULE (the system's first,
# which has Debian's python3-* packages, then the one on PATH); skips the test otherwise.
nm_python_with() {
  local py
  for py in /usr/bin/python3 python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c "import $1" >/dev/null 2>&1; then
      NM_PYTHON=$(command -v "$py")
      return 0
    fi
  done
  nm_skip "no python3 here can import $1"
}

nm_cleanup() {
  local rc=$?
  trap - EXIT
  set +e
  if ((rc != 0 && rc != 77)); then
    echo "${NM_TEST_NAME}: exiting with status ${rc}; temp dir ${NM_TMP}" >&2
    nm_show_logs
  fi
  local i
  # A test's own hooks go first: they stop what uses the mounts (a database server, say).
  for ((i = ${#NM_CLEANUP_HOOKS[@]} - 1; i >= 0; i--)); do
    ${NM_CLEANUP_HOOKS[i]}
  done
  # Innermost first: the filesystem, its loop device, the FUSE file under it, then processes.
  for ((i = ${#NM_MOUNTS[@]} - 1; i >= 0; i--)); do
    timeout 30 umount "${NM_MOUNTS[i]}" 2>/dev/null || umount -l "${NM_MOUNTS[i]}" 2>/dev/null
  done
  for ((i = ${#NM_LOOPS[@]} - 1; i >= 0; i--)); do
    timeout 30 losetup -d "${NM_LOOPS[i]}" 2>/dev/null
  done
  for ((i = ${#NM_FUSE_MOUNTS[@]} - 1; i >= 0; i--)); do
    if nm_is_fuse_mounted "${NM_FUSE_MOUNTS[i]}"; then
      timeout 30 fusermount3 -u "${NM_FUSE_MOUNTS[i]}" 2>/dev/null ||
        umount -l "${NM_FUSE_MOUNTS[i]}" 2>/dev/null
    fi
  done
  for ((i = ${#NM_PIDS[@]} - 1; i >= 0; i--)); do
    nm_kill_pid "${NM_PIDS[i]}"
  done
  for ((i = ${#NM_EXIT_HOOKS[@]} - 1; i >= 0; i--)); do
    ${NM_EXIT_HOOKS[i]}
  done
  if [[ -n ${NM_KEEP_TMP:-} ]]; then
    echo "${NM_TEST_NAME}: keeping ${NM_TMP}" >&2
  elif [[ $NM_TMP == /tmp/nbdmirror-* ]]; then
    rm -rf "$NM_TMP"
  fi
  exit "$rc"
}

trap nm_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- Network namespaces ------------------------------------------------------------------------
# nm_make_netns: a new network namespace (unique name) and a veth pair into it (unique names, at
# most 15 characters), each end with an address of a /30 in 10.213.0.0/16 that no address or
# route on this machine touches, both ends up. Both are removed on exit, also on failure. Sets
# NM_NS, NM_VETH_ROOT, NM_VETH_NS, NM_ADDR_ROOT, NM_ADDR_NS. Skips (77) where `ip netns add` is
# not allowed.
nm_make_netns() {
  NM_NS="nbdm-$$-$RANDOM"
  ip netns add "$NM_NS" 2>"$NM_TMP/netns.err" ||
    nm_skip "cannot create a network namespace: $(cat "$NM_TMP/netns.err")"
  nm_add_exit_hook ip netns delete "$NM_NS"
  NM_VETH_ROOT=
  local suffix third fourth net=
  for _ in 1 2 3 4 5 6 7 8; do
    suffix=$RANDOM
    if ! ip link show "nmr${suffix}" >/dev/null 2>&1 && ! ip link show "nmn${suffix}" >/dev/null 2>&1; then
      NM_VETH_ROOT=nmr${suffix}
      NM_VETH_NS=nmn${suffix}
      break
    fi
  done
  [[ -n $NM_VETH_ROOT ]] || nm_fail "found no free veth name"
  for _ in 1 2 3 4 5 6 7 8; do
    third=$((RANDOM % 256))
    fourth=$(((RANDOM % 64) * 4))
    if ! ip -4 route show match "10.213.${third}.${fourth}/30" | grep -qv '^default' &&
      ! ip -4 addr show | grep -qF "inet 10.213.${third}."; then
      net=10.213.${third}
      break
    fi
  done
  [[ -n $net ]] || nm_fail "found no unused /30 in 10.213.0.0/16"
  NM_ADDR_ROOT=${net}.$((fourth + 1))
  NM_ADDR_NS=${net}.$((fourth + 2))
  ip link add "$NM_VETH_ROOT" type veth peer name "$NM_VETH_NS"
  nm_add_exit_hook nm_delete_veth
  ip link set "$NM_VETH_NS" netns "$NM_NS"
  ip addr add "${NM_ADDR_ROOT}/30" dev "$NM_VETH_ROOT"
  ip -n "$NM_NS" addr add "${NM_ADDR_NS}/30" dev "$NM_VETH_NS"
  ip link set "$NM_VETH_ROOT" up
  ip -n "$NM_NS" link set "$NM_VETH_NS" up
  nm_wait_for 10 "both ends of the veth pair to be up" nm_veth_up
  nm_log "namespace ${NM_NS}: ${NM_VETH_ROOT} ${NM_ADDR_ROOT}/30 <-> ${NM_VETH_NS} ${NM_ADDR_NS}/30"
}
# nm_veth_up: both ends of nm_make_netns's pair are up and the root end has its route.
nm_veth_up() {
  ip link show "$NM_VETH_ROOT" | grep -q 'state UP' &&
    ip -n "$NM_NS" link show "$NM_VETH_NS" | grep -q 'state UP' &&
    ip -4 route show dev "$NM_VETH_ROOT" | grep -q .
}
# Removes the root end if it still exists (deleting the namespace usually takes the pair).
nm_delete_veth() {
  if ip link show "$NM_VETH_ROOT" >/dev/null 2>&1; then
    ip link delete "$NM_VETH_ROOT" || true
  fi
}
