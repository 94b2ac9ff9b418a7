#!/usr/bin/env bash
# mirror_tls_test: the peer link runs over mutually verified TLS: with certificates from the
# CA both sides trust, the mirror works and the copies end identical; a peer whose certificate
# another CA signed is refused, in either direction, and nothing reaches its volume.
#
# How: the openssl CLI makes, in the temp dir, a throwaway CA with certificates for node a and
# node b, and a second ("rogue") CA with its own certificate for b and for a (EC P-256, valid
# two days, SAN 127.0.0.1).
#   1. Both daemons get --tls-cert/--tls-key/--tls-ca from the good CA. Before the primary
#      starts, `openssl s_client` with a's certificate completes a verified TLS handshake with
#      the standby's peer port and sees CN b: the port speaks TLS. Then the primary connects and
#      resyncs (peer_disk UpToDate); fio (verify=crc32c, 2 x 16 MiB of 4 KiB random writes) and
#      nbdcopy (16 MiB of random data) write through the export; nothing is degraded; clean
#      stops (exit 0) and the two backing files must be byte-identical.
#   2. A standby presenting the rogue CA's certificate for b: the primary must log a TLS
#      handshake failure, and over 3 s of its redialing, neither daemon may ever report the link
#      connected. The primary keeps serving: 8 MiB written through nbdcopy are answered
#      (degraded). The standby's backing file must hash the same before and after, and both
#      daemons must stop cleanly.
#   3. The mirror image: the primary presents the rogue CA's certificate for a; the standby
#      must refuse it (a TLS handshake failure in its log), never connect, write nothing.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require openssl fio nbdcopy nbdinfo cmp sha256sum
fio --enghelp=nbd >/dev/null 2>&1 || nm_skip "this fio has no nbd engine"

pki=$NM_TMP/pki
mkdir -p "$pki"
chmod 700 "$pki"

# make_ca NAME: a self-signed CA certificate NAME.crt and its key NAME.key.
make_ca() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=nbdmirror test CA $1" -keyout "$pki/$1.key" -out "$pki/$1.crt" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    2>>"$pki/openssl.log" || { cat "$pki/openssl.log" >&2; nm_fail "openssl could not make CA $1"; }
}

# make_cert CA NAME CN: NAME.crt/NAME.key for CN, signed by CA.
make_cert() {
  printf 'subjectAltName=IP:127.0.0.1,DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$3" \
    >"$pki/$2.ext"
  if ! openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$3" \
    -keyout "$pki/$2.key" -out "$pki/$2.csr" 2>>"$pki/openssl.log" ||
    ! openssl x509 -req -in "$pki/$2.csr" -CA "$pki/$1.crt" -CAkey "$pki/$1.key" \
      -set_serial "0x$(openssl rand -hex 8)" -days 2 -extfile "$pki/$2.ext" \
      -out "$pki/$2.crt" 2>>"$pki/openssl.log"; then
    cat "$pki/openssl.log" >&2
    nm_fail "openssl could not make certificate $2"
  fi
  chmod 600 "$pki/$2.key"
}

make_ca ca
make_ca rogue
make_cert ca a a
make_cert ca b b
make_cert rogue rogue-a a
make_cert rogue rogue-b b
openssl verify -CAfile "$pki/ca.crt" "$pki/a.crt" "$pki/b.crt" >/dev/null ||
  nm_fail "the test CA does not verify its own certificates"
if openssl verify -CAfile "$pki/ca.crt" "$pki/rogue-b.crt" >/dev/null 2>&1; then
  nm_fail "the rogue certificate verifies against the test CA"
fi
nm_log "made CA 'ca' (certificates a, b) and CA 'rogue' (certificates for a and b)"

secret=$NM_TMP/secret
nm_make_secret "$secret"

tls() { echo --tls-cert "$pki/$1.crt" --tls-key "$pki/$1.key" --tls-ca "$pki/ca.crt"; }

# start_pair NAME PRIMARY_CERT STANDBY_CERT: fresh 64 MiB volumes, the standby then the primary.
# Sets A B PRIMARY STANDBY PRIMARY_LOG STANDBY_LOG URI PORT_B.
start_pair() {
  local name=$1
  A=$NM_TMP/$name-a.img
  B=$NM_TMP/$name-b.img
  nm_make_volume "$A" 64M
  nm_make_volume "$B" 64M
  local ports port_a
  ports=$(nm_free_ports 2)
  read -r port_a PORT_B <<<"$ports"
  # shellcheck disable=SC2046  # tls prints separate words on purpose
  NM_DAEMON_LABEL=$name-standby nm_start_secondary "$B" --node b --listen "127.0.0.1:$PORT_B" \
    --peer "a=127.0.0.1:$port_a" --secret-file "$secret" $(tls "$3")
  STANDBY=$NM_PID
  STANDBY_LOG=$NM_LOG
  if [[ -n ${BEFORE_PRIMARY:-} ]]; then
    $BEFORE_PRIMARY
  fi
  # shellcheck disable=SC2046
  NM_DAEMON_LABEL=$name-primary nm_start_primary "$A" "$NM_TMP/$name.sock" --node a \
    --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:$PORT_B" --secret-file "$secret" \
    $(tls "$2")
  PRIMARY=$NM_PID
  PRIMARY_LOG=$NM_LOG
  URI=$NM_URI
}

# standby_speaks_tls: a verified TLS handshake with the standby's peer port, as node a.
standby_speaks_tls() {
  local out=$NM_TMP/s_client.out
  openssl s_client -connect "127.0.0.1:$PORT_B" -CAfile "$pki/ca.crt" -cert "$pki/a.crt" \
    -key "$pki/a.key" -verify_return_error -brief </dev/null >"$out" 2>&1 || true
  if ! grep -q "Verification: OK" "$out" || ! grep -qE "Peer certificate: .*CN ?= ?b" "$out"; then
    cat "$out" >&2
    nm_fail "openssl s_client did not complete a verified TLS handshake with the standby"
  fi
  nm_log "the standby's peer port completed a verified TLS handshake with s_client (peer CN b)"
}

# ---- 1. good certificates: mirror, write, identical ------------------------------------------
BEFORE_PRIMARY=standby_speaks_tls start_pair good a b
nm_wait_status 30 "$A" peer_disk UpToDate
nm_wait_status 10 "$B" disk UpToDate
nm_status_is "$A" connection connected || nm_fail "the primary is not connected"
nm_log "good: standby connected over TLS and resynced"

(cd "$NM_TMP" && fio --name=tls --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k \
  --numjobs=2 --size=16M --offset_increment=16M --iodepth=32 --verify=crc32c --verify_fatal=1 \
  --verify_dump=0 --verify_state_save=0 --output="$NM_TMP/fio.out") 2>"$NM_TMP/fio.err" ||
  { cat "$NM_TMP/fio.err" "$NM_TMP/fio.out" >&2; nm_fail "fio failed"; }
grep -q "err= 0" "$NM_TMP/fio.out" || { cat "$NM_TMP/fio.out" >&2; nm_fail "fio reported errors"; }
head -c 16M /dev/urandom >"$NM_TMP/random.bin"
nbdcopy "$NM_TMP/random.bin" "$URI" || nm_fail "nbdcopy into the export failed"
nm_status_is "$A" degraded_writes 0 || nm_fail "writes were acknowledged without the standby"
nm_status_is "$A" connection connected || nm_fail "the TLS link dropped during the writes"
nm_log "good: fio (verified) and nbdcopy wrote through the export; nothing degraded"

nm_stop_clean "$PRIMARY" "good primary"
nm_stop_clean "$STANDBY" "good standby"
cmp "$A" "$B" || nm_fail "good: the two backing files differ after clean stops"
cmp -n $((16 << 20)) "$NM_TMP/random.bin" "$B" || nm_fail "good: the standby lacks the nbdcopy data"
nm_log "good: both stopped cleanly; the backing files are byte-identical"
rm -f "$A" "$B"

# ---- 2 and 3: a certificate from another CA is refused -------------------------------------
# never_connected VOLUME...: over 3 s, no daemon among VOLUMEs reports the link connected.
never_connected() {
  local deadline=$(($(nm_now_ms) + 3000)) v
  while (($(nm_now_ms) < deadline)); do
    for v in "$@"; do
      [[ $(nm_status_field "$v" connection) != connected ]] ||
        nm_fail "$(basename "$v") reports the link connected with a certificate from another CA"
    done
    sleep 0.1
  done
}

# rogue_case NAME PRIMARY_CERT STANDBY_CERT REFUSER: REFUSER (primary or standby) must log the
# TLS handshake failure.
rogue_case() {
  local name=$1
  start_pair "$name" "$2" "$3"
  local before
  before=$(nm_sha256 "$B")
  local refusing_log=$PRIMARY_LOG
  [[ $4 == primary ]] || refusing_log=$STANDBY_LOG
  nm_wait_for 20 "a TLS handshake failure in $(basename "$refusing_log")" \
    grep -qE "TLS handshake" "$refusing_log"
  nm_log "${name}: refused: $(grep -m1 -E 'TLS handshake' "$refusing_log" | cut -d' ' -f3-)"
  never_connected "$A" "$B"
  [[ $(nm_status_field "$A" peer_disk) != UpToDate ]] || nm_fail "${name}: the peer counts as UpToDate"
  [[ $(nm_status_field "$B" disk) == Inconsistent ]] ||
    nm_fail "${name}: the standby's disk is '$(nm_status_field "$B" disk)', expected Inconsistent (never synced)"
  head -c 8M /dev/urandom >"$NM_TMP/$name.bin"
  nbdcopy "$NM_TMP/$name.bin" "$URI" || nm_fail "${name}: the primary stopped serving writes"
  nm_status_ge "$A" degraded_writes 1 || nm_fail "${name}: the writes were not counted degraded"
  never_connected "$A" "$B"
  nm_assert_alive "$PRIMARY" "${name} primary"
  nm_assert_alive "$STANDBY" "${name} standby"
  nm_stop_clean "$PRIMARY" "${name} primary"
  nm_stop_clean "$STANDBY" "${name} standby"
  [[ $(nm_sha256 "$B") == "$before" ]] || nm_fail "${name}: the standby's backing file changed"
  nm_log "${name}: never connected; the primary served 8 MiB degraded; the standby's file is unchanged"
  rm -f "$A" "$B"
}

rogue_case rogue-standby a rogue-b primary
rogue_case rogue-primary rogue-a b standby
nm_log "PASS"
