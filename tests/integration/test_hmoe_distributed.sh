# Hierarchical MoE with its experts on expert servers (issue 17, part): 1
# worker x 2 servers, with a coordinator and with the static placement
# without one, are byte-identical to the in-process trainer, model and
# optimizer state (moectl export of the checkpoints); both place whole
# groups (3 groups of 2: server 0 holds groups 0 and 1, server 1 group 2).
# 2 workers x 2 servers: a rerun is byte-identical, with or without a
# coordinator; after the run with one, its monitoring (issue 17, point 8):
# /api/v1/experts's groups, whose rows routed add up exactly to the rows
# the workers routed to their experts and to k_primary x the rows of the
# run, Load_H exactly as the factors give it, the CVs over all experts and
# over the groups; /metrics (prom_check --moe, promtool) with the group
# count, each group's server and series; moectl experts --groups, status;
# the dashboard in headless Chromium (bars by group, one row per group).
make_corpora
H="--moe hierarchical --groups 3 --experts-per-group 2 --k-primary 2 --k 1"
HT=$(echo "$TINY" | sed 's/--n-experts 6 //')
K=40
A="--train $WORK/train.txt --valid= $HT $H --steps $K"
L="$IT_DIR/../../deploy/launch-local.sh"
# (with a validation at step 20 and at the end: the groups' evaluation
# forwards, which the servers answer at once, give the same perplexity)
V="--valid $WORK/valid.txt --valid-every 20 --valid-max-tokens 200"
"$BIN/moe-worker" $A $V --checkpoint-dir "$WORK/local" --report "$WORK/local.json" >"$WORK/local.out" ||
    fail "in-process run"
vppl() { /usr/bin/python3 -c "import json,sys; print(repr(json.load(open(sys.argv[1]))['valid_ppl']))" "$1"; }
"$BIN/moectl" export "$WORK/local" "$WORK/local.export.safetensors" >/dev/null ||
    fail "export of the in-process checkpoint"
grep "valid" "$WORK/local.out" >"$WORK/local.valid"
[ "$(wc -l <"$WORK/local.valid")" = 2 ] || fail "in-process: not two validations: $(cat "$WORK/local.out")"
for how in coordinator static; do
    opt=
    [ $how = static ] && opt=--no-coordinator
    sh "$L" --bin "$BIN" --run-dir "$WORK/$how" --servers 2 --workers 1 $opt -- $A $V \
        --checkpoint-dir "$WORK/$how/ck" --report "$WORK/$how.json" >"$WORK/$how.out" 2>&1 ||
        fail "2 servers + 1 worker ($how)"
    "$BIN/moectl" export "$WORK/$how/ck" "$WORK/$how.export.safetensors" >/dev/null ||
        fail "export ($how)"
    cmp "$WORK/local.export.safetensors" "$WORK/$how.export.safetensors" ||
        fail "2 servers + 1 worker ($how placement) differ from in-process in bytes"
    grep "valid" "$WORK/$how.out" | cmp -s - "$WORK/local.valid" ||
        fail "$how: validation differs from in-process: $(grep valid "$WORK/$how.out")"
    [ "$(vppl "$WORK/$how.json")" = "$(vppl "$WORK/local.json")" ] ||
        fail "$how: validation perplexity $(vppl "$WORK/$how.json"), in-process $(vppl "$WORK/local.json")"
done
echo "  ok: 2 servers + 1 worker (coordinator, static placement) are byte-identical to in-process;" \
    "validation perplexity the same to the last bit: $(vppl "$WORK/local.json")"
# the shard each server wrote on SIGTERM names whole groups only
for how in coordinator static; do
    /usr/bin/python3 - "$WORK/$how" <<'PYEOF' || fail "$how: the groups are not placed whole"
import json, re, struct, sys
def groups(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    names = [k for k in json.loads(raw[8 : 8 + n]) if k != "__metadata__"]
    return sorted({(int(m.group(1)), int(m.group(2))) for k in names
                   for m in [re.match(r"moe\.groups\.(\d+)\.experts\.(\d+)\.", k)] if m})
g0, g1 = groups(sys.argv[1] + "/server-0.safetensors"), groups(sys.argv[1] + "/server-1.safetensors")
assert g0 == [(0, 0), (0, 1), (1, 0), (1, 1)] and g1 == [(2, 0), (2, 1)], (g0, g1)
PYEOF
done
echo "  ok: server 0 holds groups 0 and 1 (4 experts), server 1 group 2 (its shard file's names)"
# 2 workers x 2 servers (the workers' ring sums Importance_H, the secondary
# loads and the per-group factors of Load_H): a rerun is byte-identical, and
# the model is that of 1 worker within a float tolerance (sums in another
# order); the coordinator (run c, started by hand below so that its HTTP
# outlives the run) sums the same vectors in the same rank order
for run in a b; do
    sh "$L" --bin "$BIN" --run-dir "$WORK/w2$run" --servers 2 --workers 2 --no-coordinator -- $A \
        --checkpoint-dir "$WORK/w2$run/ck" >/dev/null 2>&1 || fail "2 servers + 2 workers (run $run)"
done
free_ports 6
C="tcp://127.0.0.1:$P1"
HTTP="127.0.0.1:$P2"
SV="tcp://127.0.0.1:$P3,tcp://127.0.0.1:$P4"
WK="tcp://127.0.0.1:$P5,tcp://127.0.0.1:$P6"
AC="$A --keys $KEYS --servers $SV --workers $WK --coordinator $C --checkpoint-dir $WORK/w2c/ck"
mkdir -p "$WORK/w2c"
"$BIN/moe-coordinator" $AC --http "$HTTP" >"$WORK/coord.out" 2>"$WORK/coord.err" &
coord=$!
PIDS=$coord
stop_all() { kill $PIDS 2>/dev/null; }
wait_up $coord "$WORK/coord.out" "dashboard at" "the coordinator"
for i in 0 1; do
    "$BIN/moe-server" $AC --servers= --bind "tcp://127.0.0.1:$(eval echo \$P$((i + 3)))" \
        --server-index $i >"$WORK/s$i.err" 2>&1 &
    PIDS="$PIDS $!"
    wait_up $! "$WORK/s$i.err" "moe-server: server .* serving on" "server $i"
done
"$BIN/moe-worker" $AC --servers= --experts remote --rank 1 --report "$WORK/r.json" >/dev/null 2>"$WORK/w1.err" &
w1=$!
"$BIN/moe-worker" $AC --servers= --experts remote --rank 0 --report "$WORK/r.json" >/dev/null \
    2>"$WORK/w0.err" || { stop_all; fail "2 workers with a coordinator: worker 0: $(tail -n 2 "$WORK/w0.err")"; }
wait $w1 || { stop_all; fail "2 workers with a coordinator: worker 1: $(tail -n 2 "$WORK/w1.err")"; }
# Monitoring of the hierarchical cluster (issue 17, point 8), after its run
get() { /usr/bin/python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen('http://$HTTP' + sys.argv[1], timeout=10).read().decode())" "$1"; }
get /api/v1/experts >"$WORK/experts.json" || { stop_all; fail "GET /api/v1/experts"; }
get /api/v1/cluster >"$WORK/cluster.json" || { stop_all; fail "GET /api/v1/cluster"; }
get /metrics >"$WORK/metrics.txt" || { stop_all; fail "GET /metrics"; }
"$BIN/moectl" --http "$HTTP" experts --groups --sort load >"$WORK/groups.txt" ||
    { stop_all; fail "moectl experts --groups"; }
"$BIN/moectl" --http "$HTTP" status >"$WORK/status.txt" || { stop_all; fail "moectl status"; }
# the live dashboard in headless Chromium: its DOM only
CHROME=$(command -v chromium || true)
[ -n "$CHROME" ] || { stop_all; fail "chromium is not installed (deploy/install-deps.sh --test)"; }
timeout 120 "$CHROME" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --disable-domain-reliability --no-default-browser-check --no-pings --disable-extensions \
    --proxy-server=127.0.0.1:9 --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" \
    --user-data-dir="$(mktemp -d "$WORK/chrome-XXXXXX")" --window-size=1280,900 \
    --virtual-time-budget=3000 --enable-logging=stderr --v=0 --dump-dom "http://$HTTP/" \
    >"$WORK/dash.dom" 2>"$WORK/dash.log" || { stop_all; fail "chromium failed"; }
grep ':CONSOLE' "$WORK/dash.log" && { stop_all; fail "the dashboard printed console messages (above)"; }
kill -TERM $PIDS
for p in $PIDS; do wait $p || fail "a server or the coordinator did not exit 0 on SIGTERM"; done
/usr/bin/python3 "$IT_DIR/prom_check.py" --moe "$WORK/metrics.txt" --require moe_groups \
    --require moe_group_load --require moe_expert_group_info || fail "/metrics of a hierarchical cluster"
promtool check metrics <"$WORK/metrics.txt" >"$WORK/promtool.txt" 2>&1 ||
    fail "promtool check metrics: $(head -n 3 "$WORK/promtool.txt")"
/usr/bin/python3 - "$WORK" "$K" <<'PY' || fail "the coordinator's groups disagree with the run"
import json, re, sys
import numpy as np
w, steps = sys.argv[1], int(sys.argv[2])
ex, cl = json.load(open(w + "/experts.json")), json.load(open(w + "/cluster.json"))
mine = [json.load(open(w + "/r.json"))["rows_routed"], json.load(open(w + "/r.json.rank1"))["rows_routed"]]
routed = [a + b for a, b in zip(*mine)]
A, B, K1 = 3, 2, 2
assert (ex["groups"], ex["experts_per_group"], cl["groups"], cl["experts_per_group"]) == (A, B, A, B), ex
assert ex["step"] == steps - 1, ex["step"]
experts, groups = sorted(ex["experts"], key=lambda e: e["id"]), ex["group_stats"]
assert [g["id"] for g in groups] == list(range(A)) and [g["server"] for g in groups] == [0, 0, 1], groups
assert [(e["group"], e["expert_in_group"]) for e in experts] == [(i, j) for i in range(A) for j in range(B)]
# rows: k = 1, so the rows each group got (|X^(i)|, summed over the run) are
# exactly the rows the workers routed to its experts; every row goes to
# k_primary groups: K1 x 40 steps x 32 rows in all
for g in groups:
    mine_g = sum(routed[g["id"] * B:(g["id"] + 1) * B])
    assert g["rows_routed_total"] == mine_g, (g, mine_g)
    assert g["expert_rows_routed_last"] == g["rows_routed_last"] == sum(
        e["rows_routed_last"] for e in experts if e["group"] == g["id"]), g
assert sum(g["rows_routed_total"] for g in groups) == K1 * steps * 32, groups
assert sum(g["rows_routed_last"] for g in groups) == K1 * 32, groups
# Load_H = Load_i(X^(i))_j Load_p,i / (|X^(i)| + 1e-10), rounded to float
f32 = np.float32
for e in experts:
    g = groups[e["group"]]
    want = f32(float(f32(e["load_in_group_last"])) * float(f32(g["load_last"])) / (g["rows_routed_last"] + 1e-10))
    assert f32(e["load_last"]) == want, (e, g, want)
    assert e["load_last"] != e["load_in_group_last"] or g["load_last"] == g["rows_routed_last"], e
# the CVs over all A x B entries and over the groups
def cv2(v):
    v = np.asarray(v, dtype=np.float64)
    n = len(v) + 1e-10
    m = v.sum() / n
    return ((v - m) ** 2).sum() / n / (m * m + 1e-10)
for key, vals in (("cv2_load", [e["load_last"] for e in experts]),
                  ("cv2_importance", [e["importance_last"] for e in experts])):
    assert abs(ex[key] - cv2(vals)) <= 1e-6 * max(1, cv2(vals)), (key, ex[key], cv2(vals))
    assert abs(cl[key] - ex[key]) == 0, (key, cl[key], ex[key])
assert abs(ex["cv_group_load"] ** 2 - cv2([g["load_last"] for g in groups])) <= 1e-6
assert abs(ex["cv_group_importance"] ** 2 - cv2([g["importance_last"] for g in groups])) <= 1e-6
for g in groups:
    s = sum(e["importance_last"] for e in experts if e["group"] == g["id"])
    assert abs(g["importance_last"] - s) <= 1e-5 * max(1, s), (g, s)
# /metrics: the group count, each group's series and the per-expert ones
m = {}
for line in open(w + "/metrics.txt"):
    if line.strip() and not line.startswith("#"):
        series, value = line.rsplit(" ", 1)
        m[series] = float(value)
assert m["moe_groups"] == A and m["moe_experts"] == A * B, (m["moe_groups"], m["moe_experts"])
info = sorted(k for k in m if k.startswith("moe_group_info{"))
assert info == ['moe_group_info{group="%d",server="%d",first_expert="%d"}' % (i, s, i * B)
                for i, s in enumerate([0, 0, 1])], info
for g in groups:
    i = g["id"]
    assert m['moe_group_rows_routed_total{group="%d"}' % i] == g["rows_routed_total"]
    assert m['moe_group_rows_routed_last_step{group="%d"}' % i] == g["rows_routed_last"]
    assert f32(m['moe_group_load{group="%d"}' % i]) == f32(g["load_last"])
for e in experts:
    i = e["id"]
    x = 'expert="%d",layer="0",layer_expert="%d"' % (i, i)  # one MoE layer
    assert m['moe_expert_group_info{%s,group="%d",index="%d"}' % (x, e["group"], e["expert_in_group"])] == 1
    assert f32(m['moe_expert_load{%s}' % x]) == f32(e["load_last"])
    assert f32(m['moe_expert_load_in_group{%s}' % x]) == f32(e["load_in_group_last"])
assert sum(1 for k in m if k.startswith("moe_expert_group_info{")) == A * B
assert abs(m["moe_load_cv_squared"] - ex["cv2_load"]) <= 1e-8 * max(1, ex["cv2_load"])
# moectl experts --groups: 3 group lines with their servers and rows, 2 experts under each
t = open(w + "/groups.txt").read().splitlines()
glines = [l.split() for i, l in enumerate(t) if i > 0 and t[i - 1].startswith("GROUP")]
assert [(int(l[0]), int(l[1]), int(l[2])) for l in glines] == [
    (g["id"], g["server"], int(g["rows_routed_last"])) for g in groups], glines
elines = [l.split() for l in t if re.match(r"^  [0-9]", l)]
assert sorted(int(l[0]) for l in elines) == list(range(A * B)), elines
for l in elines:
    e = experts[int(l[0])]
    assert int(l[1]) == e["expert_in_group"] and int(l[2]) == e["rows_routed_last"], (l, e)
# the dashboard: 6 bars with their groups, one row per group with its server and rows routed
dom = open(w + "/dash.dom").read()
bars = re.findall(r'<rect [^>]*class="expert-bar"[^>]*>', dom)
assert sorted((int(re.search(r'data-expert="(\d+)"', b).group(1)), re.search(r'data-group="(\d*)"', b).group(1))
              for b in bars) == [(e, str(e // B)) for e in range(A * B)], bars
rows = re.findall(r'<tr class="group-row" data-group="(\d+)">(.*?)</tr>', dom)
assert [int(g) for g, _ in rows] == list(range(A)), rows
for (gid, cells), g in zip(rows, groups):
    c = re.findall(r"<td[^>]*>(.*?)</td>", cells)
    assert c[1] == str(g["server"]) and c[2] == "%d" % g["rows_routed_last"], (c, g)
assert re.search(r"^hierarchical: 3 groups x 2 experts; over all experts cv\^2 Importance_H ",
                 open(w + "/status.txt").read(), re.M), open(w + "/status.txt").read()
print("  ok: monitoring: 3 groups on servers 0, 0, 1; rows per group = the workers' rows to its "
      "experts (%s), %d = k_primary x 40 x 32; Load_H from the factors exact; cv^2 Load_H %.4g, "
      "Importance_H %.4g; /metrics (prom_check, promtool), moectl experts --groups and status, "
      "the dashboard's bars by group and group rows"
      % ([int(g["rows_routed_total"]) for g in groups], sum(g["rows_routed_total"] for g in groups),
         ex["cv2_load"], ex["cv2_importance"]))
PY
sed 's/^/    /' "$WORK/groups.txt"
for run in a b c; do
    "$BIN/moectl" export --params-only "$WORK/w2$run/ck" "$WORK/w2$run.export.safetensors" >/dev/null ||
        fail "export (2 workers, run $run)"
done
cmp "$WORK/w2a.export.safetensors" "$WORK/w2b.export.safetensors" || fail "2 workers: a rerun differs"
cmp "$WORK/w2a.export.safetensors" "$WORK/w2c.export.safetensors" ||
    fail "2 workers: the coordinator's sums give other bytes than the ring's"
/usr/bin/python3 "$IT_DIR/compare_safetensors.py" "$WORK/local/step-000000$K/model.safetensors" \
    "$WORK/w2a.export.safetensors" 1e-4 || fail "2 workers differ from 1 worker beyond tolerance"
echo "  ok: 2 workers x 2 servers: a rerun is byte-identical, with a coordinator too; within 1e-4 of 1 worker"
