#!/usr/bin/env bash
# mirror_unrelated_test: a standby that holds another volume's copy is refused by a primary it
# does not belong to, nothing of it is overwritten, and the documented operator path (README,
# "A copy of another volume") turns it into a new standby of this primary.
#
# How: a pair A (primary) + B (secondary) on loopback, 16 MiB volumes, --skip-initial-sync; A
# writes 1 MiB of random data through NBD, the pair stops cleanly, so B's metadata names A's
# volume. Then a new primary C with its own 16 MiB of random data (a volume of its own) is
# pointed at B. B must refuse it ("volume identity mismatch" in its log; a refusal also in C's
# `last_peer_error`), C must never count B as connected, and B's file must keep its bytes.
# Operator path: stop B, delete its metadata file, start it again: C fully syncs it
# (`sync_decision full`), and after a clean stop B's file equals C's.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require cmp jq nbdcopy sha256sum

a=$NM_TMP/a.img
b=$NM_TMP/b.img
c=$NM_TMP/c.img
nm_make_volume "$a" 16M
nm_make_volume "$b" 16M
head -c $((16 << 20)) /dev/urandom >"$c"
head -c $((1 << 20)) /dev/urandom >"$NM_TMP/data.bin"
nm_make_secret "$NM_TMP/secret"
read -r port_a port_b port_c <<<"$(nm_free_ports 3)"

start_b() {  # start_b PRIMARY-NODE PRIMARY-PORT
  NM_DAEMON_LABEL=standby nm_start_secondary "$b" --node b --listen "127.0.0.1:$port_b" \
    --peer "$1=127.0.0.1:$2" --secret-file "$NM_TMP/secret"
  standby=$NM_PID
  standby_log=$NM_LOG
}

# ---- the pair A + B ----------------------------------------------------------------------
start_b a "$port_a"
NM_DAEMON_LABEL=primary-a nm_start_primary "$a" "$NM_TMP/a.sock" --node a \
  --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:$port_b" --secret-file "$NM_TMP/secret" \
  --skip-initial-sync
primary_a=$NM_PID
nm_wait_for 20 "A and B in sync" nm_peer_up_to_date "$a"
nbdcopy -- "$NM_TMP/data.bin" "$(nm_uri "$NM_TMP/a.sock")" || nm_fail "nbdcopy into A failed"
nm_stop_clean "$primary_a" "primary A"
nm_stop_clean "$standby" "standby B"
cmp -- "$a" "$b" || nm_fail "A and B differ after their clean stop"
b_hash=$(sha256sum <"$b")

# ---- B meets an unrelated primary C --------------------------------------------------------
start_b c "$port_c"
NM_DAEMON_LABEL=primary-c nm_start_primary "$c" "$NM_TMP/c.sock" --node c \
  --listen "127.0.0.1:$port_c" --peer "b=127.0.0.1:$port_b" --secret-file "$NM_TMP/secret"
primary_c=$NM_PID
nm_wait_for 20 "B refusing C" grep -q "volume identity mismatch" "$standby_log"
refused() { [[ -n $(nm_status_field "$c" last_peer_error) ]]; }
nm_wait_for 20 "C reporting the refusal" refused
nm_log "C's last_peer_error: $(nm_status_field "$c" last_peer_error)"
[[ $(nm_status_field "$c" connection) != connected ]] || nm_fail "C counts B as connected"
[[ $(nm_status_field "$c" peer_disk) != UpToDate ]] || nm_fail "C counts B as UpToDate"
nm_stop_clean "$standby" "standby B (refusing)"
[[ $(sha256sum <"$b") == "$b_hash" ]] || nm_fail "B's copy changed although C was refused"

# ---- the operator path: B becomes a new standby of C ----------------------------------------
rm -- "$b.nbdmirror-meta"
start_b c "$port_c"
nm_wait_for 60 "C to sync B fully" nm_peer_up_to_date "$c"
[[ $(nm_status_field "$c" sync_decision) == full ]] ||
  nm_fail "sync_decision $(nm_status_field "$c" sync_decision), expected full"
nm_stop_clean "$primary_c" "primary C"
nm_stop_clean "$standby" "standby B"
cmp -- "$c" "$b" || nm_fail "B is not a copy of C after its full sync"
nm_log "PASS: refused without a write; a new standby after the documented path"
