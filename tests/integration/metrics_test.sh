#!/usr/bin/env bash
# metrics_test: the Prometheus endpoint (`run --metrics HOST:PORT`) of both daemons of a pair.
#
# How: a standby and a primary on loopback (mode sync), each serving metrics on its own free
# port. Once the pair is in sync, nbdcopy writes 16 MiB of random data into the export (with a
# FLUSH). Then:
#   - each document parses with the Prometheus Python client's parser and passes
#     `promtool check metrics` (Prometheus' own linter: names, units, types, HELP);
#   - its values agree with `nbdmirror status --json` read at the same quiet moment: the states
#     (role, connection, disk, peer_disk) as state sets with exactly one 1, the write and flush
#     counters, and the latency histograms (count = modify_done / flush_done / apply_done, sum =
#     the status microseconds, buckets cumulative and ending at the count);
#   - status's recent percentiles (write and flush on the primary, apply on the standby) are
#     there and ordered (0 < p50 <= p99);
#   - a real Prometheus server (Debian's) scrapes both daemons and its query API returns the
#     primary's write count and a histogram_quantile over the write histogram; it also loads the
#     shipped alerting rules (scripts/prometheus/nbdmirror-alerts.yml), which must evaluate
#     without errors and raise nothing for this healthy pair; `promtool test rules` proves each
#     alert fires on the series that should raise it (tests/integration/prometheus_alerts_test.yml);
#   - bad clients: an unknown path (404), another method (405 with Allow), a request body (413),
#     garbage bytes (400), 20 KiB of headers (431), HEAD (headers only), keep-alive (two
#     requests on one connection), 16 silent connections (a 17th is closed at once, and scrapes
#     work again once they go); the daemons keep running and the pair stays in sync;
#   - both daemons stop cleanly while a client holds metrics connections open;
#   - --metrics on a port that is taken stops the start with a clear error (exit 1), and a
#     metrics endpoint that is not TCP, or a mode CLI11 rejects, is refused with exit 2.
# Finally both stop cleanly and the copies are identical.

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
nm_require nbdcopy nbdinfo curl cmp prometheus promtool jq
nm_python_with prometheus_client

read -r port_a port_b metrics_a metrics_b prom_port <<<"$(nm_free_ports 5)"
a=$NM_TMP/a.img
b=$NM_TMP/b.img
secret=$NM_TMP/secret
nm_make_secret "$secret"
nm_make_volume "$a" 64M
nm_make_volume "$b" 64M
head -c 16M /dev/urandom >"$NM_TMP/random.bin"

NM_DAEMON_LABEL=standby nm_start_secondary "$b" --node b --listen "127.0.0.1:$port_b" \
  --peer "a=127.0.0.1:$port_a" --secret-file "$secret" --metrics "127.0.0.1:$metrics_b"
standby=$NM_PID
NM_DAEMON_LABEL=primary nm_start_primary "$a" "$NM_TMP/nbd.sock" --node a --mode sync \
  --listen "127.0.0.1:$port_a" --peer "b=127.0.0.1:$port_b" --secret-file "$secret" \
  --metrics "127.0.0.1:$metrics_a"
primary=$NM_PID
uri=$NM_URI
grep -q "serving Prometheus metrics on http://127.0.0.1:${metrics_a}/metrics" "$NM_LOG" ||
  nm_fail "the primary's log does not say where its metrics are"
nm_wait_status 30 "$a" peer_disk UpToDate
nm_wait_status 10 "$b" disk UpToDate

nbdcopy --flush "$NM_TMP/random.bin" "$uri" || nm_fail "nbdcopy into the export failed"
nm_log "16 MiB copied into the export with nbdcopy --flush"

# scrape PORT FILE: GET /metrics; fails unless HTTP 200 with the exposition content type.
scrape() {
  local code type
  code=$(curl -sS -o "$2" -D "$2.headers" -w '%{http_code}' "http://127.0.0.1:$1/metrics") ||
    nm_fail "GET /metrics on port $1 failed"
  [[ $code == 200 ]] || nm_fail "GET /metrics on port $1 answered ${code}"
  type=$(grep -i '^content-type:' "$2.headers" | tr -d '\r')
  [[ $type == *"text/plain; version=0.0.4"* ]] || nm_fail "port $1: content type '${type}'"
}

# Nothing writes now, so status and the documents describe the same moment (up to clean cycles
# of the bitmap, which only move metadata counters that are not compared here).
scrape "$metrics_a" "$NM_TMP/a.prom"
scrape "$metrics_b" "$NM_TMP/b.prom"
nm_status_json "$a" >"$NM_TMP/a.json"
nm_status_json "$b" >"$NM_TMP/b.json"

promtool check metrics <"$NM_TMP/a.prom" >"$NM_TMP/lint-a.txt" 2>&1 ||
  nm_fail "promtool check metrics (primary): $(cat "$NM_TMP/lint-a.txt")"
promtool check metrics <"$NM_TMP/b.prom" >"$NM_TMP/lint-b.txt" 2>&1 ||
  nm_fail "promtool check metrics (standby): $(cat "$NM_TMP/lint-b.txt")"
nm_log "promtool check metrics: both documents pass the linter"
alerts=$NBDMIRROR_SOURCE_DIR/scripts/prometheus/nbdmirror-alerts.yml
promtool check rules "$alerts" >"$NM_TMP/rules.txt" 2>&1 ||
  nm_fail "promtool check rules: $(cat "$NM_TMP/rules.txt")"
promtool test rules "$NBDMIRROR_SOURCE_DIR/tests/integration/prometheus_alerts_test.yml" \
  >"$NM_TMP/rules-test.txt" 2>&1 || nm_fail "promtool test rules: $(cat "$NM_TMP/rules-test.txt")"
nm_log "alerting rules: promtool check and unit tests pass ($(grep -c 'alert:' "$alerts") alerts)"

"$NM_PYTHON" - "$NM_TMP" <<'EOF' || nm_fail "the metrics do not agree with status (see above)"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families

tmp = sys.argv[1]
errors = []

def load(side):
    families = {f.name: f for f in text_string_to_metric_families(open(f"{tmp}/{side}.prom").read())}
    status = json.load(open(f"{tmp}/{side}.json"))
    return families, status

def value(families, name, suffix="", **labels):
    family = families.get(name)
    if family is None:
        errors.append(f"missing metric family {name}")
        return math.nan
    for s in family.samples:
        if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    errors.append(f"no sample {name}{suffix} {labels}")
    return math.nan

def expect(what, got, want):
    if not (got == want or (isinstance(want, float) and abs(got - want) < 1e-6)):
        errors.append(f"{what}: metrics say {got}, expected {want}")

def state_set(side, families, name, label, want):
    ones = [s.labels[label] for s in families[name].samples if s.value == 1]
    if ones != [want]:
        errors.append(f"{side} {name}: states at 1 are {ones}, expected [{want}]")

def histogram(side, families, name, count, sum_us):
    fam = families.get(name)
    if fam is None or fam.type != "histogram":
        errors.append(f"{side}: {name} is not a histogram")
        return
    buckets = sorted(((float(s.labels["le"]), s.value) for s in fam.samples
                      if s.name.endswith("_bucket")))
    counts = [c for _, c in buckets]
    if counts != sorted(counts):
        errors.append(f"{side} {name}: buckets not cumulative: {buckets}")
    if buckets[-1][0] != math.inf or buckets[-1][1] != count:
        errors.append(f"{side} {name}: +Inf bucket {buckets[-1]} != count {count}")
    expect(f"{side} {name}_count", value(families, name, "_count"), count)
    expect(f"{side} {name}_sum", value(families, name, "_sum"), sum_us / 1e6)
    print(f"  {side} {name}: {count} samples, {len(buckets)} buckets", file=sys.stderr)

fa, sa = load("a")
fb, sb = load("b")
for side, fam, st in (("primary", fa, sa), ("standby", fb, sb)):
    state_set(side, fam, "nbdmirror_role", "role", st["role"])
    state_set(side, fam, "nbdmirror_connection", "state", st["connection"])
    state_set(side, fam, "nbdmirror_disk", "state", st["disk"])
    state_set(side, fam, "nbdmirror_peer_disk", "state", st["peer_disk"])
    expect(f"{side} size", value(fam, "nbdmirror_size_bytes"), st["size_bytes"])
    expect(f"{side} out of sync", value(fam, "nbdmirror_out_of_sync_bytes"), st["out_of_sync_bytes"])
    expect(f"{side} info", value(fam, "nbdmirror_info", node_id=st["node_id"],
                                 volume_uuid=st["volume_uuid"]), 1)
expect("primary role", sa["role"], "primary")
expect("standby role", sb["role"], "secondary")
expect("primary connection", sa["connection"], "connected")
for key, name in (("writes", "nbdmirror_writes"), ("flushes", "nbdmirror_flushes"),
                  ("written_bytes", "nbdmirror_written_bytes"), ("errors", "nbdmirror_errors"),
                  ("degraded_writes", "nbdmirror_degraded_writes")):
    # The parser names a counter family without its _total suffix.
    expect(f"primary {key}", value(fa, name, "_total"), sa[key])
if sa["written_bytes"] < 16 << 20:
    errors.append(f"primary written_bytes {sa['written_bytes']} < 16 MiB")
histogram("primary", fa, "nbdmirror_write_duration_seconds", sa["modify_done"], sa["modify_us"])
histogram("primary", fa, "nbdmirror_write_peer_duration_seconds", sa["modify_peer_done"],
          sa["modify_peer_us"])
histogram("primary", fa, "nbdmirror_flush_duration_seconds", sa["flush_done"], sa["flush_us"])
histogram("standby", fb, "nbdmirror_apply_duration_seconds", sb["apply_done"], sb["apply_us"])
histogram("standby", fb, "nbdmirror_apply_flush_duration_seconds", sb["apply_flush_done"],
          sb["apply_flush_us"])
expect("standby applied writes", value(fb, "nbdmirror_applied_writes", "_total"), sb["applied_writes"])
if sa["modify_done"] < 16 or sa["flush_done"] < 1:
    errors.append(f"primary counted {sa['modify_done']} writes, {sa['flush_done']} flushes")
for st, op in ((sa, "write"), (sa, "flush"), (sb, "apply")):
    p50, p99 = st[f"{op}_p50_us"], st[f"{op}_p99_us"]
    if not 0 < p50 <= p99:
        errors.append(f"status {op}_p50_us {p50}, {op}_p99_us {p99}: expected 0 < p50 <= p99")
    print(f"  {op} latency over the last minute: p50 {p50} us, p99 {p99} us", file=sys.stderr)
for e in errors:
    print("  " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
nm_log "both documents parse and agree with status (states, counters, histograms)"

# A real Prometheus server scrapes both daemons; its query API must return what they served.
cat >"$NM_TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - ${alerts}
scrape_configs:
  - job_name: nbdmirror
    static_configs:
      - targets: ['127.0.0.1:${metrics_a}', '127.0.0.1:${metrics_b}']
EOF
TZ=UTC prometheus --config.file="$NM_TMP/prometheus.yml" --storage.tsdb.path="$NM_TMP/prom-data" \
  --web.listen-address="127.0.0.1:$prom_port" >"$NM_TMP/prometheus.log" 2>&1 &
prom_pid=$!
nm_track_pid "$prom_pid"
prom_query() {  # prom_query EXPR: the first result's value, or empty
  curl -sS -G "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$1" 2>/dev/null |
    jq -r '.data.result[0].value[1] // empty' 2>/dev/null || true
}
prom_sees() { [[ $(prom_query "$1") == "$2" ]]; }
writes=$(jq -r .writes "$NM_TMP/a.json")
nm_wait_for 60 "Prometheus scrapes both daemons" prom_sees 'sum(up{job="nbdmirror"})' 2
nm_wait_for 20 "Prometheus has the primary's write count" \
  prom_sees 'nbdmirror_writes_total{job="nbdmirror"}' "$writes"
p99=$(prom_query 'histogram_quantile(0.99, nbdmirror_write_duration_seconds_bucket)')
[[ $p99 =~ ^[0-9.e+-]+$ ]] || nm_fail "histogram_quantile over the write histogram gave '${p99}'"
nm_log "Prometheus scraped both daemons: ${writes} writes, write p99 ${p99} s (histogram_quantile)"
# More writes while Prometheus watches, so the rules on rates see traffic, not one sample.
nbdcopy --flush "$NM_TMP/random.bin" "$uri" || nm_fail "the second nbdcopy into the export failed"
more_writes() {
  local n
  n=$(prom_query 'nbdmirror_writes_total{job="nbdmirror"}')
  [[ $n =~ ^[0-9]+$ ]] && ((n > writes))
}
nm_wait_for 20 "Prometheus sees the second copy's writes" more_writes
# rules_quiet: every rule evaluated since Prometheus had both daemons' data (health ok, last
# evaluation after that moment) and none pending or firing.
scraped_at=$(date -u +%s)
rules_quiet() {
  curl -sS "http://127.0.0.1:$prom_port/api/v1/rules" 2>/dev/null >"$NM_TMP/rules.json" || return 1
  jq -e --argjson t "$scraped_at" '[.data.groups[].rules[]] | length > 0 and
         all(.health == "ok" and .state == "inactive" and
             (.lastEvaluation | sub("\\.[0-9]+"; "") | fromdateiso8601) >= $t)' \
    "$NM_TMP/rules.json" >/dev/null
}
nm_wait_for 20 "the alerting rules evaluated, all inactive for the healthy pair" rules_quiet
nm_log "Prometheus evaluated $(jq '[.data.groups[].rules[]] | length' "$NM_TMP/rules.json") alerting rules: none pending or firing"
nm_stop "$prom_pid" 20 || true

# Bad and unusual clients.
http_code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
code=$(http_code "http://127.0.0.1:$metrics_a/nope")
[[ $code == 404 ]] || nm_fail "GET /nope answered ${code}, expected 404"
code=$(http_code -X DELETE -D "$NM_TMP/405.headers" "http://127.0.0.1:$metrics_a/metrics")
[[ $code == 405 ]] || nm_fail "DELETE /metrics answered ${code}, expected 405"
grep -qi '^allow: GET, HEAD' "$NM_TMP/405.headers" || nm_fail "the 405 does not say what is allowed"
code=$(http_code -X POST --data 'hello' "http://127.0.0.1:$metrics_a/metrics")
[[ $code == 413 ]] || nm_fail "a request with a body answered ${code}, expected 413"
code=$(http_code -H "X-Padding: $(head -c 20000 /dev/zero | tr '\0' x)" "http://127.0.0.1:$metrics_a/metrics")
[[ $code == 431 ]] || nm_fail "20 KiB of headers answered ${code}, expected 431"
"$NM_PYTHON" - "$metrics_a" <<'EOF' || nm_fail "raw HTTP clients were not answered as expected"
import http.client, socket, sys
port = int(sys.argv[1])
# Garbage: a 400, then the connection closes.
s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.sendall(b"\x00\xff\x13GARBAGE that is not HTTP\r\n\r\n")
answer = b""
while chunk := s.recv(4096):
    answer += chunk
s.close()
assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
# Keep-alive: GET, HEAD (headers announcing a body of about the GET's size, and no body: the
# next response on the connection would not parse if one came), GET with a query string.
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
c.request("GET", "/metrics")
r = c.getresponse()
body = r.read()
assert r.status == 200 and b"nbdmirror_writes_total" in body, (r.status, body[:80])
c.request("HEAD", "/metrics")
r = c.getresponse()
length = int(r.getheader("Content-Length"))
assert r.status == 200 and r.read() == b"" and abs(length - len(body)) < 64, (r.status, length)
c.request("GET", "/metrics?from=test")
r = c.getresponse()
assert r.status == 200 and b"nbdmirror_writes_total" in r.read(), r.status
c.close()
# Sixteen silent connections fill the server; a seventeenth is closed at once.
silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(16)]
extra = socket.create_connection(("127.0.0.1", port), timeout=10)
extra.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
try:
    got = extra.recv(4096)
except ConnectionResetError:
    got = b""
assert got == b"", got[:80]
for s in silent:
    s.close()
print("  garbage -> 400, keep-alive GET/HEAD/GET?query, connection 17 of 16 closed", file=sys.stderr)
EOF
scrape_works() { curl -sf -o /dev/null "http://127.0.0.1:$metrics_a/metrics"; }
nm_wait_for 10 "scrapes are answered once the silent connections are gone" scrape_works
nm_log "bad clients: 404, 405 with Allow, 413, 431, 400, HEAD, keep-alive, connection limit"

# The pair is unharmed.
nm_assert_alive "$primary" "primary"
nm_assert_alive "$standby" "standby"
[[ $(nm_status_field "$a" connection) == connected && $(nm_status_field "$a" peer_disk) == UpToDate ]] ||
  nm_fail "the pair is no longer in sync after the metrics clients"
scrapes=$(curl -sf "http://127.0.0.1:$metrics_a/metrics" | awk '$1 == "nbdmirror_metrics_scrapes_total" { print $2 }')
((scrapes >= 4)) || nm_fail "nbdmirror_metrics_scrapes_total is '${scrapes}'"

# A taken port stops the start, and says so.
nm_make_volume "$NM_TMP/c.img" 16M
rc=0
"$NM_BIN" run --volume "$NM_TMP/c.img" --primary --nbd "unix:$NM_TMP/c.sock" \
  --metrics "127.0.0.1:$metrics_b" </dev/null >"$NM_TMP/c.log" 2>&1 &
c_pid=$!
nm_track_pid "$c_pid"
nm_wait_exit "$c_pid" 20 || rc=$?
((rc == 1)) || nm_fail "a daemon whose metrics port is taken exited ${rc}, expected 1"
grep -q "cannot serve metrics on 127.0.0.1:${metrics_b}" "$NM_TMP/c.log" ||
  nm_fail "the refusal does not name the metrics port: $(cat "$NM_TMP/c.log")"
nm_log "a taken metrics port: exit ${rc}, '$(grep -o 'cannot serve metrics.*' "$NM_TMP/c.log")'"

# Command lines it refuses exit 2 with the reason, before opening anything: a metrics endpoint
# that is not TCP, and a value CLI11 validates (the mode).
refuse() {  # refuse WHAT PATTERN ARGS...
  local what=$1 pattern=$2 rc=0
  shift 2
  "$NM_BIN" run --volume "$NM_TMP/c.img" --primary --nbd "unix:$NM_TMP/c.sock" "$@" \
    </dev/null >"$NM_TMP/refused.log" 2>&1 || rc=$?
  ((rc == 2)) || nm_fail "${what}: exit ${rc}, expected 2: $(cat "$NM_TMP/refused.log")"
  grep -q -- "$pattern" "$NM_TMP/refused.log" || nm_fail "${what}: no reason: $(cat "$NM_TMP/refused.log")"
  nm_log "${what}: exit 2, '$(grep -m1 -- "$pattern" "$NM_TMP/refused.log")'"
}
refuse "--metrics unix:PATH" "--metrics takes HOST" --metrics "unix:$NM_TMP/m.sock"
refuse "--mode bogus" "--mode" --mode bogus

# Stopping with metrics connections open (as Prometheus always keeps one): each daemon holds an
# idle keep-alive connection and a silent new one when told to stop, and must still exit 0
# (under ASan this also proves the connections are torn down after the server safely).
"$NM_PYTHON" - "$metrics_a" "$metrics_b" >"$NM_TMP/holder.out" 2>&1 <<'EOF' &
import http.client, socket, sys, threading
held = []
for port in map(int, sys.argv[1:]):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", "/metrics")
    c.getresponse().read()
    held += [c, socket.create_connection(("127.0.0.1", port), timeout=60)]
print("holding", flush=True)
threading.Event().wait()  # holds them until the test ends this process
EOF
holder=$!
nm_track_pid "$holder"
holding() { grep -q holding "$NM_TMP/holder.out"; }
nm_wait_for 10 "a client holding metrics connections to both daemons" holding
nm_stop_clean "$primary" "primary"
nm_stop_clean "$standby" "standby"
nm_kill_pid "$holder"

cmp "$a" "$b" || nm_fail "the two backing files differ after a clean stop"
nm_log "both stopped cleanly; the copies are identical"
