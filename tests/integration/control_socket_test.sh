#!/usr/bin/env bash
# control_socket_test: `--control` takes unix:PATH or PATH, alike for `run`, `status` and
# `verify` (the issue's and the README's spelling is unix:PATH).
#
# How: a standalone primary started from inside the temp dir with `--control unix:DIR/c.sock`
# must listen at DIR/c.sock (not at a relative path named "unix:..."), answer `status` given
# either spelling, and not at the default path beside the volume.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require python3

volume=$NM_TMP/volume.img
nm_make_volume "$volume" 16M
mkdir "$NM_TMP/run"
sock=$NM_TMP/run/c.sock
cd "$NM_TMP"
nm_start_primary "$volume" "$NM_TMP/nbd.sock" --control "unix:$sock"
daemon=$NM_PID

# The export answering does not mean the control socket is up yet: poll it.
role_via() {
  "$NM_BIN" status --control "$1" --json 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin).get("role", ""))' 2>/dev/null || true
}
control_up() { [[ $(role_via "unix:$sock") == primary ]]; }
nm_wait_for 10 "status through --control unix:$sock" control_up
[[ -S $sock ]] || nm_fail "no socket at $sock"
[[ ! -e $NM_TMP/unix: ]] || nm_fail "run took unix:PATH for a relative path ($NM_TMP/unix: exists)"
[[ $(role_via "$sock") == primary ]] || nm_fail "status --control PATH does not reach the daemon"
if "$NM_BIN" status --volume "$volume" --json >/dev/null 2>&1; then
  nm_fail "the default control socket answers although --control named another"
fi
nm_log "run, status: --control unix:PATH and PATH name the same socket"
nm_stop_clean "$daemon" "the primary"
[[ ! -e $sock ]] || nm_fail "the control socket outlived a clean stop"
nm_log "PASS"
