# Debian's Prometheus scrapes a small cluster (coordinator + 1 server + 1
# worker, 6 experts with metrics_max_experts 4, so the per-expert series are
# opt-in and the scrape asks for them with ?experts=1). Checked: /metrics by
# the strict parser and the project's conventions (prom_check.py --moe), the
# counters against what the run did, Prometheus' own copy of
# moe_expert_rows_routed_total{expert="0"} against /api/v1/experts, the alert
# rules of deploy/prometheus/alerts.yml loaded (/api/v1/rules), and every
# expression of the Grafana dashboard evaluated by Prometheus over metrics
# the coordinator exports (grafana_check.py). Two more coordinators run
# alone (no member joins, so they stay forming and cost nothing): a
# translation model's, whose per-expert series carry layer and layer_expert
# (exact label sets, promtool check metrics), and a hierarchical model's,
# which Prometheus scrapes too, for the dashboard's Groups row.
# Everything on 127.0.0.1.
PROM=$(command -v prometheus || true)
[ -n "$PROM" ] || fail "prometheus is not installed (deploy/install-deps.sh --test)"
TOP=$(cd "$IT_DIR/../.." && pwd)
/usr/bin/python3 "$IT_DIR/prom_check.py" --self-test >/dev/null || fail "prom_check.py --self-test"
make_corpora
mt_tiny 5
free_ports 8
C="tcp://127.0.0.1:$P1"
HTTP="127.0.0.1:$P2"
SV="tcp://127.0.0.1:$P3"
PP=$P4
HTTP_MT="127.0.0.1:$P6"
HTTP_H="127.0.0.1:$P8"
A="--train $WORK/train.txt --valid $WORK/valid.txt $TINY --steps 15 --servers $SV --coordinator $C \
--checkpoint-dir $WORK/ck"
"$BIN/moe-coordinator" $A --http "$HTTP" --metrics-max-experts 4 >"$WORK/coord.out" 2>"$WORK/coord.err" &
coord=$!
PIDS=$coord
stop_all() { kill $PIDS 2>/dev/null; }
# the translation model: 4 experts in each of its 2 MoE layers
"$BIN/moe-coordinator" $MT --keys "$KEYS" --log-level warn --servers "$SV" --coordinator "tcp://127.0.0.1:$P5" \
    --http "$HTTP_MT" >"$WORK/coord-mt.out" 2>"$WORK/coord-mt.err" &
coord_mt=$!
PIDS="$PIDS $coord_mt"
# a hierarchical model of 3 groups of 2 experts
"$BIN/moe-coordinator" --train "$WORK/train.txt" --valid= $TINY --n-experts 6 --moe hierarchical --groups 3 \
    --experts-per-group 2 --k-primary 2 --k 1 --servers "$SV" --coordinator "tcp://127.0.0.1:$P7" \
    --http "$HTTP_H" >"$WORK/coord-h.out" 2>"$WORK/coord-h.err" &
coord_h=$!
PIDS="$PIDS $coord_h"
wait_up $coord "$WORK/coord.out" "dashboard at" "the coordinator"
wait_up $coord_mt "$WORK/coord-mt.out" "dashboard at" "the translation model's coordinator"
wait_up $coord_h "$WORK/coord-h.out" "dashboard at" "the hierarchical model's coordinator"
"$BIN/moe-server" $A --servers= --bind "$SV" >"$WORK/s0.err" 2>&1 &
s0=$!
PIDS="$PIDS $s0"
wait_up $s0 "$WORK/s0.err" "moe-server: server .* serving on" "server 0"
"$BIN/moe-worker" $A --servers= --experts remote --report "$WORK/r.json" >/dev/null 2>"$WORK/w0.err" ||
    { stop_all; fail "worker 0: $(tail -n 2 "$WORK/w0.err")"; }
get() { /usr/bin/python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen('http://$1' + sys.argv[1], timeout=10).read().decode())" "$2"; }
get "$HTTP_MT" /metrics >"$WORK/metrics-mt.txt" || { stop_all; fail "GET /metrics of the translation model"; }
get "$HTTP_H" /metrics >"$WORK/metrics-h.txt" || { stop_all; fail "GET /metrics of the hierarchical model"; }
for f in metrics-mt metrics-h; do
    /usr/bin/python3 "$IT_DIR/prom_check.py" "$WORK/$f.txt" --moe >/dev/null ||
        { stop_all; fail "$f: not by the conventions: $(/usr/bin/python3 "$IT_DIR/prom_check.py" "$WORK/$f.txt" --moe | head -n 3)"; }
    promtool check metrics <"$WORK/$f.txt" >"$WORK/promtool-$f.txt" 2>&1 ||
        { stop_all; fail "promtool check metrics $f: $(head -n 3 "$WORK/promtool-$f.txt")"; }
done
/usr/bin/python3 - "$WORK" <<'PY' || { stop_all; fail "the per-expert series' layer labels"; }
import re, sys
w = sys.argv[1]
def labels(path, family):
    return [l.split(" ")[0][len(family):] for l in open(path) if l.startswith(family + "{")]
# the translation model: experts 0-3 the encoder's (layer 0), 4-7 the decoder's
mt = ['{expert="%d",layer="%d",layer_expert="%d"}' % (e, e // 4, e % 4) for e in range(8)]
for fam in ("moe_expert_rows_routed_total", "moe_expert_rows_routed_last_step", "moe_expert_importance",
            "moe_expert_importance_avg", "moe_expert_load", "moe_expert_load_avg"):
    got = labels(w + "/metrics-mt.txt", fam)
    assert got == mt, (fam, got)
got = labels(w + "/metrics-mt.txt", "moe_expert_top_rows_routed_last_step")
assert got == [x[:-1] + ',position="%d"}' % (i + 1) for i, x in enumerate(mt)], got
# not placed yet: no placement series
assert labels(w + "/metrics-mt.txt", "moe_expert_placement_info") == []
# the hierarchical model: one MoE layer, its experts by group
got = labels(w + "/metrics-h.txt", "moe_expert_group_info")
assert got == ['{expert="%d",layer="0",layer_expert="%d",group="%d",index="%d"}' % (e, e, e // 2, e % 2)
               for e in range(6)], got
assert labels(w + "/metrics-h.txt", "moe_expert_load_in_group") == [
    '{expert="%d",layer="0",layer_expert="%d"}' % (e, e) for e in range(6)]
assert labels(w + "/metrics-h.txt", "moe_group_load") == ['{group="%d"}' % g for g in range(3)]
print("  ok: per-expert series: expert, layer and layer_expert (translation: 2 layers of 4; "
      "hierarchical: layer 0 with group and index)")
PY
# the server's last heartbeat (every 0.25 s) carries the last step's counters
sleep 0.6
get "$HTTP" /api/v1/experts >"$WORK/experts.json" || { stop_all; fail "GET /api/v1/experts"; }
get "$HTTP" /metrics >"$WORK/metrics.txt" || { stop_all; fail "GET /metrics"; }
get "$HTTP" "/metrics?experts=1" >"$WORK/metrics-all.txt" || { stop_all; fail "GET /metrics?experts=1"; }
for f in metrics metrics-all; do
    /usr/bin/python3 "$IT_DIR/prom_check.py" "$WORK/$f.txt" --moe --require moe_build_info \
        --require moe_step_duration_seconds --require moe_checkpoint_duration_seconds \
        --require moe_server_step_compute_seconds --require process_cpu_seconds_total \
        --require moe_worker_process_resident_memory_bytes --require moe_expert_top_rows_routed_last_step ||
        { stop_all; fail "$f: not by the conventions"; }
done
grep -q '^moe_expert_rows_routed_total' "$WORK/metrics.txt" &&
    { stop_all; fail "6 experts over metrics_max_experts 4, yet /metrics has per-expert series"; }
[ "$(grep -c '^moe_expert_rows_routed_total{expert="\([0-5]\)",layer="0",layer_expert="\1"} ' "$WORK/metrics-all.txt")" -eq 6 ] ||
    { stop_all; fail "/metrics?experts=1 does not have one moe_expert_rows_routed_total per expert"; }
[ "$(grep -c '^moe_expert_top_rows_routed_last_step{' "$WORK/metrics.txt")" -eq 6 ] ||
    { stop_all; fail "the top experts are not all 6 (fewer than 10)"; }
mkdir -p "$ARTIFACTS" && cp "$WORK/metrics-all.txt" "$ARTIFACTS/metrics.txt"
ls -d "$WORK"/ck/step-* >"$WORK/ckpts.txt" 2>/dev/null
/usr/bin/python3 - "$WORK" <<'PY' || { stop_all; fail "/metrics disagrees with the run"; }
import json, re, sys
w = sys.argv[1]
def samples(path):
    out = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        series, value = line.rsplit(" ", 1)
        out[series] = float(value)
    return out
m, a = samples(w + "/metrics.txt"), samples(w + "/metrics-all.txt")
experts = json.load(open(w + "/experts.json"))["experts"]
report = json.load(open(w + "/r.json"))
routed = report["rows_routed"]
for e in experts:
    x = 'expert="%d",layer="0",layer_expert="%d"' % (e["id"], e["id"])  # one MoE layer
    got = a['moe_expert_rows_routed_total{%s}' % x]
    assert got == e["rows_routed_total"] == routed[e["id"]], (e, got, routed)
    assert a['moe_expert_placement_info{%s,server="0"}' % x] == 1
assert m['moe_server_rows_total{server="0"}'] == sum(routed), (m['moe_server_rows_total{server="0"}'], sum(routed))
bin_ = m['moe_server_bytes_total{server="0",direction="in"}']
bout = m['moe_server_bytes_total{server="0",direction="out"}']
# rows x d_model 16 x 4 bytes each way of the forward, again in the backward
assert bin_ == bout == 2 * 16 * 4 * sum(routed), (bin_, bout, sum(routed))
assert m['moe_server_step_compute_seconds_count{server="0"}'] == 15
assert m['moe_step_duration_seconds_count'] == 14  # the first step of the epoch has no start
assert m['moe_step'] == 14
assert m['moe_worker_tokens_total{rank="0"}'] == 15 * 4 * 8  # steps x batch x unroll
ckpts = len(open(w + "/ckpts.txt").read().split())
assert m['moe_checkpoints_committed_total'] == ckpts == 2, (m['moe_checkpoints_committed_total'], ckpts)
assert m['moe_checkpoint_duration_seconds_count'] == 2
assert m['moe_rollbacks_total'] == 0 and m['moe_servers_lost_total'] == 0
assert m['moe_phase{phase="finished"}'] == 1 and m['moe_phase{phase="running"}'] == 0
assert m['moe_stalled'] == 0 and m['moe_stall_heartbeats'] == 40  # finished: not stalled
assert m['moe_worker_up{rank="0"}'] in (0, 1) and m['moe_server_up{server="0"}'] == 1
for k in ('process_resident_memory_bytes', 'moe_server_process_resident_memory_bytes{server="0"}',
          'moe_worker_process_resident_memory_bytes{rank="0"}'):
    assert 1e6 < m[k] < 4e9, (k, m[k])
for k in ('process_cpu_seconds_total', 'moe_server_process_cpu_seconds_total{server="0"}',
          'moe_worker_process_cpu_seconds_total{rank="0"}'):
    assert 0 < m[k] < 600, (k, m[k])
assert not any("server=" in k for k in a if k.startswith("moe_expert_") and "placement_info" not in k)
# a flat MoE: the balancing loss's cv^2 terms, no group series
assert abs(m['moe_load_cv_squared'] - m['moe_load_cv'] ** 2) <= 1e-8 * max(1, m['moe_load_cv_squared'])
assert abs(m['moe_importance_cv_squared'] - m['moe_importance_cv'] ** 2) <= 1e-8 * max(1, m['moe_importance_cv_squared'])
assert not any(k.startswith(("moe_group", "moe_expert_group_info", "moe_expert_load_in_group")) for k in a)
print("  ok: /metrics: rows routed per expert, server rows and bytes by direction, 15 compute and "
      "14 step observations, %d checkpoints, tokens, CPU and RSS of 3 processes" % ckpts)
PY
# Prometheus, on a free port, scraping every second with ?experts=1
mkdir -p "$WORK/tsdb"
cat >"$WORK/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $TOP/deploy/prometheus/alerts.yml
scrape_configs:
  - job_name: moe-coordinator
    params:
      experts: ["1"]
    static_configs:
      - targets: ["$HTTP"]
  - job_name: moe-hierarchical
    static_configs:
      - targets: ["$HTTP_H"]
YML
"$PROM" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PP" --log.level=warn >"$WORK/prom.log" 2>&1 &
prom=$!
PIDS="$PIDS $prom"
want=$(/usr/bin/python3 -c "import json,sys; print(int(json.load(open(sys.argv[1]))['experts'][0]['rows_routed_total']))" "$WORK/experts.json")
# promq EXPR: the value of the first series of an instant query ("": none)
promq() {
    get "127.0.0.1:$PP" "/api/v1/query?query=$(printf %s "$1" | /usr/bin/python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.stdin.read()))')" 2>/dev/null |
        /usr/bin/python3 -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")' 2>/dev/null
}
q='moe_expert_rows_routed_total{job="moe-coordinator",expert="0"}'
qh='moe_group_rows_routed_total{job="moe-hierarchical",group="0"}'
# two scrapes of each, so that rates exist (the dashboard's expressions need them)
n=0
until [ "$(promq "count_over_time(${q}[1m]) >= 2")" != "" ] && [ "$(promq "count_over_time(${qh}[1m]) >= 2")" != "" ]; do
    kill -0 $prom 2>/dev/null || { stop_all; fail "prometheus exited: $(tail -n 3 "$WORK/prom.log")"; }
    [ $n -lt 120 ] || { stop_all; fail "prometheus has not scraped $q and $qh twice after 30 s: $(tail -n 3 "$WORK/prom.log")"; }
    sleep 0.25
    n=$((n + 1))
done
got=$(promq "$q")
[ "$got" = "$want" ] || { stop_all; fail "prometheus says $q = $got, /api/v1/experts says $want"; }
echo "  ok: prometheus scraped $q = $got, as /api/v1/experts says"
get "127.0.0.1:$PP" /api/v1/rules >"$WORK/rules.json" || { stop_all; fail "GET /api/v1/rules"; }
/usr/bin/python3 - "$WORK/rules.json" <<'PY' || { stop_all; fail "the alert rules did not load"; }
import json, sys
r = json.load(open(sys.argv[1]))
names = {rule["name"]: rule.get("health") for g in r["data"]["groups"] for rule in g["rules"]}
want = {"MoEStepStalled", "MoEClusterStalled", "MoEServerDown", "MoEServerLost", "MoELoadImbalance", "MoERollbackLoop",
        "MoECheckpointStale"}
assert want <= set(names), (sorted(names), sorted(want))
print("  ok: prometheus loaded the alert rules:", ", ".join(sorted(names)))
PY
# every expression of the Grafana dashboard: names only exported metrics and
# Prometheus evaluates it without error
/usr/bin/python3 "$IT_DIR/grafana_check.py" "$TOP/deploy/grafana/moe-dashboard.json" \
    "$WORK/metrics-all.txt" "$WORK/metrics-h.txt" "http://127.0.0.1:$PP" || { stop_all; fail "the Grafana dashboard"; }
kill -TERM $prom $s0 $coord $coord_mt $coord_h
wait $prom || fail "prometheus did not exit 0 on SIGTERM"
wait $s0 || fail "server 0 did not exit 0"
wait $coord || fail "the coordinator did not exit 0 on SIGTERM"
wait $coord_mt || fail "the translation model's coordinator did not exit 0 on SIGTERM"
wait $coord_h || fail "the hierarchical model's coordinator did not exit 0 on SIGTERM"
echo "  ok: prometheus, the alert rules and the Grafana dashboard against a live cluster"
