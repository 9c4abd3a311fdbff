#!/bin/sh
# Headless-browser check of the coordinator's dashboard page
# (server/coordinator/coord_dashboard.html). Standalone, not run by run.sh:
#
#   tests/integration/dashboard_check.sh OUTDIR
#
# Serves a temporary folder holding the page as index.html and canned
# /api/v1/experts and /api/v1/cluster answers with python3 -m http.server on
# 127.0.0.1 (a free port), and loads it in Debian's chromium, headless, with
# a virtual time budget so that several one-second polls run. Scenarios:
#   live     16 experts on 2 servers, 2 workers training, 120 loss points,
#            a history of 60 columns of 2 steps: exactly 16 rect.expert-bar
#            with data-expert 0..15 coloured by server, a legend of both
#            servers, the loss polyline, both tables with each member's
#            state, the tokens/s tile showing the workers' sum (> 0), the
#            epoch, phase, rollbacks and last checkpoint tiles; the heatmap:
#            exactly 16 rect.heat-row (one per expert, ids 0..15) whose
#            totals are the history's sums and whose hottest is the hot
#            expert, an image of 16 x 60 cells, no group boundaries, no
#            groups table, no banner; the screenshot OUTDIR/dashboard.png
#            (1280x1400)
#   hier     a hierarchical model (4 groups of 8 experts, Load history of
#            128 columns, one without steps) stalled in a rollback loop:
#            32 heat-rows with their groups, 3 group boundaries, 4 group
#            labels, the banner's exact sentence; the bar chart's 32 bars
#            with their groups and its 3 group boundaries; the groups
#            table: exactly 4 tr.group-row (0..3) with each group's server,
#            rows routed, share and busiest expert; the tiles of its shape
#            and cv^2 of Importance_H and Load_H; the screenshot
#            OUTDIR/dashboard-heatmap.png (1280x1400)
#   sparse   fields missing, of the wrong type or absurdly large: drawn
#            without errors (5 bars for the 5 entries with a usable id, no
#            heatmap of a malformed history), the failure banner
#   empty    {} from both endpoints
#   down     no API (404) and then non-JSON answers: "waiting for the
#            coordinator"; screenshot OUTDIR/dashboard-waiting.png
#   control  a page that logs and throws, to prove that console messages
#            reach the log at all (else the other checks would prove nothing)
# Chromium's --enable-logging=stderr prints every console message, whatever
# its level, as INFO:CONSOLE, so the page may print nothing at all: any
# console line fails (uncaught exceptions and rejections included).
# Also checks that deploy/embed_file.sh reproduces the page byte for byte.
# When every check passed, the live screenshot (a training cluster: tokens/s
# above 0) replaces docs/dashboard.png, the README's picture, and the hier
# one docs/dashboard-heatmap.png, so that they follow the page; a docs/ that
# cannot be written is reported, not a failure.
# Nothing leaves 127.0.0.1: other hosts resolve to nothing and go to a dead
# proxy. Exit 0 and "dashboard_check: ok", or 1 with the failures.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
page="$top/server/coordinator/coord_dashboard.html"
mkdir -p "$1"
out=$(cd "$1" && pwd)

fail() {
    echo "dashboard_check: FAIL: $*" >&2
    exit 1
}
command -v python3 >/dev/null 2>&1 || fail "python3 is not installed"
CHROME=${CHROME:-$(command -v chromium || true)}
[ -n "$CHROME" ] || fail "chromium is not installed (apt-get install -y chromium)"
[ -f "$page" ] || fail "no page at $page"

work=$(mktemp -d "${TMPDIR:-/tmp}/moe-dash-XXXXXX")
www="$work/www"
http_pid=""
cleanup() {
    if [ -n "$http_pid" ]; then
        kill "$http_pid" 2>/dev/null || true
        wait "$http_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

# ---------------------------------------------------------------------------
# The web server: one for all scenarios; each scenario rewrites $www.

start_server() {
    tries=0
    while [ $tries -lt 5 ]; do
        tries=$((tries + 1))
        port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        python3 -m http.server --bind 127.0.0.1 --directory "$www" "$port" \
            >"$work/http.log" 2>&1 &
        http_pid=$!
        if python3 - "$port" <<'PY'; then return 0; fi
import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
PY
        kill "$http_pid" 2>/dev/null || true
        wait "$http_pid" 2>/dev/null || true
        http_pid=""
    done
    fail "could not start python3 -m http.server on 127.0.0.1"
}

# run_chrome TAG [extra chromium flags]: loads http://127.0.0.1:$port/ with
# $BUDGET ms of virtual time in a $SIZE window (1280x900; the screenshots of
# the heatmap 1280x1400); DOM in $work/TAG.dom, log in $work/TAG.log.
BUDGET=${BUDGET:-5000}
SIZE=1280,900
run_chrome() {
    tag=$1
    shift
    profile=$(mktemp -d "$work/profile-XXXXXX")
    timeout 120 "$CHROME" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --disable-domain-reliability --disable-client-side-phishing-detection \
        --no-default-browser-check --no-pings --disable-extensions \
        --proxy-server=127.0.0.1:9 --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" \
        --user-data-dir="$profile" --window-size="$SIZE" --virtual-time-budget="$BUDGET" \
        --enable-logging=stderr --v=0 --dump-dom "$@" "http://127.0.0.1:$port/" \
        >"$work/$tag.dom" 2>"$work/$tag.log" || fail "$tag: chromium failed: $(tail -n 5 "$work/$tag.log")"
    [ -s "$work/$tag.dom" ] || fail "$tag: chromium dumped no DOM"
}

# no_console TAG: the page printed nothing on the console.
no_console() {
    if grep -q ':CONSOLE' "$work/$1.log"; then
        grep ':CONSOLE' "$work/$1.log" >&2
        fail "$1: console messages (above)"
    fi
}

# ---------------------------------------------------------------------------
# Fixtures: the JSON of the coordinator's API, 16 experts on 2 servers.

write_live_api() {
    mkdir -p "$www/api/v1"
    python3 - "$www/api/v1" <<'PY'
import json, math, sys
d = sys.argv[1]
E, step = 16, 120
loads = [70.3 + 9 * math.sin(1.7 * e) for e in range(E)]
loads[5] = 112.4  # one hot expert
total = sum(loads)
experts = [{"id": e, "server": e // 8, "rows_routed_last": int(4 * loads[e]),
            "rows_routed_total": int(4 * loads[e]) * step, "importance_last": round(loads[e] * 0.98, 2),
            "importance_avg": round(loads[e] * 0.99, 2), "load_last": round(loads[e], 2),
            "load_avg": round(loads[e] * 0.995, 2), "rows_routed_share": round(loads[e] / total, 4)}
           for e in range(E)]
hist = [[s, round(5.5 + 4.9 * math.exp(-s / 30) + 0.08 * math.sin(s), 4)] for s in range(1, step + 1)]
cluster = {"step": step, "placement_version": 2, "epoch": 3, "phase": "running", "failure": None,
           "stopping": False, "rollbacks": 1, "committed_checkpoint_step": 100,
           "committed_checkpoint": "step-00000100", "heartbeats_since_step": 1,
           "stall_heartbeats": 40, "stalled": False, "n_experts": E, "groups": None,
           "experts_per_group": None, "errors_total": 0,
           "servers": [{"id": 0, "endpoint": "tcp://127.0.0.1:5600", "alive": True, "experts": 8,
                        "state": "serving",
                        "rows_per_sec": 4500.0, "bytes_total": 123456, "errors_total": 0,
                        "latency_seconds": 0.0012},
                       {"id": 1, "endpoint": "tcp://127.0.0.1:5601", "alive": True, "experts": 8,
                        "state": "serving",
                        "rows_per_sec": 4380.5, "bytes_total": 120012345, "errors_total": 2,
                        "latency_seconds": 0.0017}],
           "workers": [{"rank": 0, "state": "training", "step": step, "tokens_per_sec": 2100.0,
                        "loss": hist[-1][1]},
                       {"rank": 1, "state": "training", "step": step - 1, "tokens_per_sec": 2050.0,
                        "loss": 5.66}],
           "cv_importance": 0.09, "cv_load": 0.05, "max_over_mean_rows_routed": 1.12,
           "loss_history": hist}
# the history: steps 1..120 in 60 columns of 2 steps; expert 5 grows hot
cols = 60
rows = [[int(2 * 4 * (loads[e] if e != 5 else 70 + 42.4 * c / (cols - 1))) for c in range(cols)]
        for e in range(E)]
history = {"field": "rows_routed", "n_experts": E, "groups": None, "experts_per_group": None,
           "first_step": 1, "last_step": step, "steps_per_column": 2, "max_columns": 128,
           "column_steps": [2] * cols, "rows_routed": rows}
json.dump({"step": step, "placement_version": 2, "experts": experts}, open(d + "/experts", "w"))
json.dump(cluster, open(d + "/cluster", "w"))
json.dump(history, open(d + "/history", "w"))
PY
}

# A hierarchical model, 4 groups of 8 experts, in a rollback loop: step 80
# has not advanced for 57 heartbeats, epoch 14, 12 rollbacks; the history
# is of Load, 128 columns of 4 steps, group 2 hot, one column without steps.
write_hier_api() {
    mkdir -p "$www/api/v1"
    python3 - "$www/api/v1" <<'PY'
import json, math, sys
d = sys.argv[1]
G, B, step, cols = 4, 8, 80, 128
E = G * B
# whole groups on servers 0, 1, 2, 0; group 2 hot, its expert 21 the busiest
experts = [{"id": e, "server": [0, 1, 2, 0][e // B],
            "rows_routed_last": 40 + (30 if e // B == 2 else 0) + (9 if e == 21 else 0),
            "rows_routed_total": 4000 + e, "load_last": 40.5, "load_avg": 40.25,
            "importance_last": 1.5, "importance_avg": 1.25, "rows_routed_share": 1 / E,
            "group": e // B, "expert_in_group": e % B, "load_in_group_last": 12.5 + e % B}
           for e in range(E)]
rows = [sum(x["rows_routed_last"] for x in experts if x["group"] == g) for g in range(G)]
groups = [{"id": g, "server": [0, 1, 2, 0][g], "first_expert": g * B, "n_experts": B,
           "rows_routed_last": rows[g] // 2, "rows_routed_total": 16000 + g,
           "rows_routed_share": round(rows[g] / sum(rows), 6), "expert_rows_routed_last": rows[g],
           "importance_last": 12.0 + g, "importance_avg": 11.5, "load_last": 150.25 + g,
           "load_avg": 149.0} for g in range(G)]
balance = {"cv_importance": 0.4, "cv_load": 0.35, "cv2_importance": 0.16, "cv2_load": 0.1225,
           "cv_group_importance": 0.11, "cv_group_load": 0.21}
load = [[round(30 + (25 if e // B == 2 else 0) * (1 + math.sin(c / 9)) + 3 * math.sin(e + c / 5), 3)
         for c in range(cols)] for e in range(E)]
steps = [4] * cols
steps[40] = 0
for e in range(E):
    load[e][40] = 0
history = {"field": "load", "n_experts": E, "groups": G, "experts_per_group": B, "first_step": 0,
           "last_step": 511, "steps_per_column": 4, "max_columns": 128, "column_steps": steps,
           "load": load}
cluster = {"step": step, "placement_version": 9, "epoch": 14, "phase": "loading", "failure": None,
           "stopping": False, "rollbacks": 12, "committed_checkpoint_step": 80,
           "committed_checkpoint": "step-00000080", "heartbeats_since_step": 57,
           "stall_heartbeats": 40, "stalled": True, "n_experts": E, "groups": G,
           "experts_per_group": B, "errors_total": 3,
           "servers": [{"id": i, "endpoint": "tcp://127.0.0.1:56%02d" % i, "alive": i != 1,
                        "state": "loading" if i != 1 else "down", "experts": 11 if i else 10,
                        "rows_per_sec": 0, "bytes_total": 1 << 20, "errors_total": 0,
                        "latency_seconds": 0.002} for i in range(3)],
           "workers": [{"rank": r, "alive": True, "state": "waiting", "step": step,
                        "tokens_per_sec": 0, "loss": 6.1} for r in range(2)],
           "max_over_mean_rows_routed": 1.6,
           "loss_history": [[s, 7 - s / 40] for s in range(1, step + 1)]}
cluster.update(balance)
ex = {"step": step, "placement_version": 9, "n_experts": E, "groups": G, "experts_per_group": B,
      "experts": experts, "group_stats": groups}
ex.update(balance)
json.dump(ex, open(d + "/experts", "w"))
json.dump(cluster, open(d + "/cluster", "w"))
json.dump(history, open(d + "/history", "w"))
PY
}

write_sparse_api() {
    mkdir -p "$www/api/v1"
    cat >"$www/api/v1/experts" <<'EOF'
{"experts": [{"id": 0}, {"id": 1, "server": "x", "load_last": "NaN"},
 {"id": 2, "server": 1, "load_last": null, "load_share": "a"}, {"server": 0, "load_last": 5},
 5, null, [1, 2], {"id": -3}, {"id": 1.5}, {"id": 3, "server": 0, "load_last": 1.7e308},
 {"id": 4, "server": 12, "load_last": 1.7e308, "rows_total": -1}]}
EOF
    cat >"$www/api/v1/cluster" <<'EOF'
{"step": "x", "servers": "nope", "workers": [null, {"rank": "a"}, {"loss": 2}, 7],
 "loss_history": [[1], [2, "x"], null, [3, 4.5], "s", [4, 4.25, 9], [1e300, -1e300]],
 "cv_load": null, "phase": "failed", "failure": "worker 0 cannot write its checkpoint of step 80"}
EOF
    cat >"$www/api/v1/history" <<'EOF'
{"field": "rows_routed", "column_steps": [1, 1], "rows_routed": [[1, 2], [3], "x"]}
EOF
}

# check_dom TAG MODE [EXPERTS_JSON CLUSTER_JSON]: structural checks of a DOM.
check_dom() {
    python3 - "$@" <<'PY' || fail "$1: DOM check failed (above)"
import json, sys
from html.parser import HTMLParser

tag, mode = sys.argv[1], sys.argv[2]
dom = open("%s.dom" % tag, encoding="utf-8").read()

class P(HTMLParser):
    def __init__(self):
        super().__init__()
        self.bars, self.lines, self.body, self.legend, self.text = [], [], {}, 0, []
        self.in_legend = 0
        self.skip = 0
        self.tiles, self.tile_part, self.tile_key = {}, None, None
        self.heat, self.group_lines, self.group_labels, self.images = [], [], 0, []
        self.banner, self.banner_text, self.in_banner = None, [], 0
        self.bar_group_lines, self.bar_group_labels = [], 0
        self.group_rows, self.in_group_row, self.cell = [], 0, None
    def handle_starttag(self, t, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if t == "rect" and "expert-bar" in cls:
            self.bars.append(a)
        if t == "rect" and "heat-row" in cls:
            self.heat.append(a)
        if t == "line" and "group-line" in cls:
            self.group_lines.append(a)
        if t == "text" and "group-label" in cls:
            self.group_labels += 1
        if t == "line" and "bar-group-line" in cls:
            self.bar_group_lines.append(a)
        if t == "text" and "bar-group-label" in cls:
            self.bar_group_labels += 1
        if t == "tr" and "group-row" in cls:
            self.group_rows.append({"attrs": a, "cells": []})
            self.in_group_row = 1
        if t == "td" and self.in_group_row:
            self.cell = []
        if t == "image" and "heat-image" in cls:
            self.images.append(a)
        if t == "div" and a.get("id") == "banner":
            self.banner, self.in_banner = a, 1
        if t == "polyline" and "loss-line" in cls:
            self.lines.append(a)
        if t == "body":
            self.body = a
        if t in ("script", "style", "title"):
            self.skip += 1
        if t == "div" and ("k" in cls or "v" in cls):  # a tile: div.k name, div.v value
            self.tile_part = "k" if "k" in cls else "v"
        if a.get("id") == "legend":
            self.in_legend = 1
        elif self.in_legend and t == "span" and "item" in cls:
            self.legend += 1
    def handle_endtag(self, t):
        if t in ("script", "style", "title"):
            self.skip -= 1
        if t == "td" and self.cell is not None:
            self.group_rows[-1]["cells"].append("".join(self.cell).strip())
            self.cell = None
        if t == "tr":
            self.in_group_row = 0
        if t == "div":
            self.in_legend = 0
            self.in_banner = 0
    def handle_data(self, d):
        if self.cell is not None:
            self.cell.append(d)
        if self.in_banner:
            self.banner_text.append(d)
        if not self.skip:
            self.text.append(d)
        if self.tile_part == "k":
            self.tile_key = d.strip()
        elif self.tile_part == "v" and self.tile_key is not None:
            self.tiles[self.tile_key] = d.strip()
        self.tile_part = None

p = P()
p.feed(dom)
text = " ".join(" ".join(p.text).split())
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)

need("data-render-error" not in p.body, "the page caught a drawing error: %s"
     % text[text.find("dashboard error"):][:200])
banner = " ".join("".join(p.banner_text).split())
need(p.banner is not None, "no div#banner")
tiles = p.tiles

def heat_check(hist, cl):
    """One heat-row per expert, ids 0..E-1, exact totals, the hottest right,
    groups when hierarchical, the image of E x columns pixels."""
    field = hist["field"]
    rows = hist[field]
    E, n = len(rows), len(hist["column_steps"])
    need(len(p.heat) == E, "%d heat-row elements, want one per expert: %d" % (len(p.heat), E))
    need([int(r.get("data-expert", -1)) for r in p.heat] == list(range(E)),
         "heat-row data-expert %s" % [r.get("data-expert") for r in p.heat])
    totals = [sum(r) for r in rows]
    for r in p.heat:
        e = int(r.get("data-expert", -1))
        if 0 <= e < E:
            need(abs(float(r.get("data-total", "nan")) - totals[e]) <= 1e-9 * max(1, abs(totals[e])),
                 "heat-row %d: data-total %s, want %r" % (e, r.get("data-total"), totals[e]))
    hot = max(range(E), key=lambda e: totals[e])
    ratios = [float(r.get("data-ratio", "nan")) for r in p.heat]
    need(len(ratios) == E and max(range(E), key=lambda e: ratios[e]) == hot,
         "the hottest heat-row is not expert %d: %s" % (hot, ratios))
    want_ratio = totals[hot] / (sum(totals) / E)
    need(len(ratios) == E and abs(ratios[hot] - want_ratio) < 1e-4,
         "expert %d: data-ratio %s, want %.4f" % (hot, ratios[hot] if ratios else None, want_ratio))
    need(len(p.images) == 1 and p.images[0].get("data-experts") == str(E)
         and p.images[0].get("data-columns") == str(n)
         and p.images[0].get("href", "").startswith("data:image/png;base64,"),
         "heat image: %s" % [{k: v[:40] for k, v in i.items()} for i in p.images])
    G, B = hist.get("groups"), hist.get("experts_per_group")
    if G:
        need([r.get("data-group") for r in p.heat] == [str(e // B) for e in range(E)],
             "heat-row data-group %s" % [r.get("data-group") for r in p.heat])
        need(sorted(int(l.get("data-group")) for l in p.group_lines) == list(range(1, G)),
             "group boundaries %s, want groups 1..%d" % ([l.get("data-group") for l in p.group_lines], G - 1))
        need(p.group_labels == G, "%d group labels, want %d" % (p.group_labels, G))
    else:
        need(all(r.get("data-group") == "" for r in p.heat), "groups on a flat model")
        need(not p.group_lines and not p.group_labels, "group boundaries on a flat model")

def cluster_tiles(cl):
    """Epoch, phase, rollbacks and the last committed checkpoint as tiles;
    each member's state in the tables."""
    for k, want in (("epoch", str(cl["epoch"])), ("phase", cl["phase"]),
                    ("rollbacks", str(cl["rollbacks"])),
                    ("last checkpoint", "step %d" % cl["committed_checkpoint_step"]),
                    ("heartbeats since a step", str(cl["heartbeats_since_step"]))):
        need(tiles.get(k) == want, "tile %r shows %r, want %r" % (k, tiles.get(k), want))
    for m in cl["servers"] + cl["workers"]:
        need(m["state"] in text.split(), "state %r not shown" % m["state"])
if mode == "live":
    ex = json.load(open(sys.argv[3]))
    cl = json.load(open(sys.argv[4]))
    n = len(ex["experts"])
    need(len(p.bars) == n, "%d expert-bar elements, want %d" % (len(p.bars), n))
    ids = sorted(int(b.get("data-expert", "-1")) for b in p.bars)
    need(ids == sorted(e["id"] for e in ex["experts"]), "data-expert ids %s" % ids)
    fills = {}
    for b in p.bars:
        e = ex["experts"][int(b["data-expert"])]
        fills.setdefault(e["server"], set()).add(b.get("fill"))
        need(float(b.get("height", "-1")) > 0, "bar of expert %s has no height" % b["data-expert"])
    need(all(len(f) == 1 for f in fills.values()), "a server's bars have several colours: %s" % fills)
    need(len({next(iter(f)) for f in fills.values()}) == len(fills),
         "servers share a colour: %s" % fills)
    hot = max(ex["experts"], key=lambda e: e["load_last"])["id"]
    tallest = max(p.bars, key=lambda b: float(b["height"]))
    need(int(tallest["data-expert"]) == hot, "tallest bar is expert %s, want %s"
         % (tallest["data-expert"], hot))
    need(p.legend == len(cl["servers"]), "%d legend entries, want %d" % (p.legend, len(cl["servers"])))
    need(len(p.lines) == 1, "%d loss polylines, want 1" % len(p.lines))
    if p.lines:
        pts = p.lines[0].get("points", "").split()
        need(len(pts) == len(cl["loss_history"]), "loss polyline has %d points, want %d"
             % (len(pts), len(cl["loss_history"])))
        ys = [float(q.split(",")[1]) for q in pts]
        need(ys[-1] > ys[0], "the loss curve does not fall (SVG y grows downwards)")
    for s in cl["servers"]:
        need(s["endpoint"] in text, "endpoint %s not shown" % s["endpoint"])
    need(p.body.get("data-state") == "live", "data-state %r, want live" % p.body.get("data-state"))
    need("waiting for the coordinator" not in text, "says waiting although the API answers")
    # the tokens/s tile: the workers' sum, as the page formats it (4150, 12.3 k, 1.20 M)
    shown = p.tiles.get("tokens / s", "")
    try:
        num, _, unit = shown.partition(" ")
        tps = float(num) * {"": 1, "k": 1e3, "M": 1e6}[unit]
    except (ValueError, KeyError):
        tps = None
    want = sum(w["tokens_per_sec"] for w in cl["workers"])
    need(tps is not None and tps > 0, "the tokens / s tile shows %r, want a number above 0" % shown)
    need(tps is not None and abs(tps - want) <= 0.01 * want,
         "the tokens / s tile shows %r, want the workers' sum %g" % (shown, want))
    open("%s.tps" % tag, "w").write("%g\n" % (tps or 0))
    heat_check(json.load(open(sys.argv[5])), cl)
    cluster_tiles(cl)
    need("hidden" in p.banner and not banner and "data-banner" not in p.body,
         "a banner on a healthy cluster: %r" % banner)
    need(not p.group_rows and not p.bar_group_lines and not p.bar_group_labels
         and all(b.get("data-group") == "" for b in p.bars) and "groups" not in tiles,
         "groups drawn for a flat model")
elif mode == "hier":
    ex = json.load(open(sys.argv[3]))
    cl = json.load(open(sys.argv[4]))
    heat_check(json.load(open(sys.argv[5])), cl)
    cluster_tiles(cl)
    G, B = ex["groups"], ex["experts_per_group"]
    # the bar chart by group
    need(sorted((int(b.get("data-expert", -1)), b.get("data-group")) for b in p.bars)
         == [(e, str(e // B)) for e in range(G * B)],
         "bars and their groups: %s" % [(b.get("data-expert"), b.get("data-group")) for b in p.bars])
    need(sorted(int(l.get("data-group")) for l in p.bar_group_lines) == list(range(1, G)),
         "bar chart group boundaries %s" % [l.get("data-group") for l in p.bar_group_lines])
    need(p.bar_group_labels == G, "%d bar chart group labels, want %d" % (p.bar_group_labels, G))
    # the groups table: one row per group, in order, with its numbers
    need([r["attrs"].get("data-group") for r in p.group_rows] == [str(g) for g in range(G)],
         "group rows %s" % [r["attrs"].get("data-group") for r in p.group_rows])
    for r, g in zip(p.group_rows, ex["group_stats"]):
        c = r["cells"]
        mine = [x for x in ex["experts"] if x["group"] == g["id"]]
        busy = max(mine, key=lambda x: (x["rows_routed_last"], -x["id"]))
        want = [str(g["id"]), str(g["server"]), str(g["rows_routed_last"]),
                "%.1f%%" % (100 * g["rows_routed_share"])]
        need(c[:4] == want, "group %d: cells %s, want %s" % (g["id"], c[:4], want))
        want_busy = "expert %d (%.1f%%)" % (busy["id"], 100 * busy["rows_routed_last"]
                                             / sum(x["rows_routed_last"] for x in mine))
        need(c[-1] == want_busy, "group %d: busiest %r, want %r" % (g["id"], c[-1], want_busy))
    for k, want in (("groups", "%d \u00d7 %d" % (G, B)), ("cv\u00b2 Importance_H", "0.1600"),
                    ("cv\u00b2 Load_H", "0.1225"), ("CV groups' Load_p", "0.210")):
        need(tiles.get(k) == want, "tile %r shows %r, want %r" % (k, tiles.get(k), want))
    need(p.body.get("data-banner") == "stalled" and "hidden" not in p.banner,
         "no stalled banner: data-banner %r" % p.body.get("data-banner"))
    want = ("The step has not advanced past 80 for 57 heartbeats (stall_heartbeats 40): "
            "loading, epoch 14, 12 rollbacks.")
    need(banner == want, "banner %r, want %r" % (banner, want))
elif mode == "sparse":
    need(len(p.bars) == 5, "%d expert-bar elements, want 5 (ids 0 to 4)" % len(p.bars))
    need(not p.heat and "no step recorded yet" in text, "a heatmap of a malformed history")
    need(p.body.get("data-banner") == "failed" and
         banner == "The cluster failed: worker 0 cannot write its checkpoint of step 80",
         "failure banner %r (data-banner %r)" % (banner, p.body.get("data-banner")))
    need(sorted(b.get("data-expert") for b in p.bars) == ["0", "1", "2", "3", "4"],
         "data-expert %s" % [b.get("data-expert") for b in p.bars])
    need(len(p.lines) == 1, "%d loss polylines, want 1" % len(p.lines))
    need(p.body.get("data-state") == "live", "data-state %r, want live" % p.body.get("data-state"))
elif mode == "empty":
    need(not p.bars, "%d expert-bar elements, want 0" % len(p.bars))
    need(not p.heat, "%d heat-row elements, want 0" % len(p.heat))
    need("no experts reported yet" in text, "no 'no experts reported yet' text")
    need(p.body.get("data-state") == "live", "data-state %r, want live" % p.body.get("data-state"))
elif mode == "down":
    need(not p.bars, "%d expert-bar elements, want 0" % len(p.bars))
    need(not p.heat, "%d heat-row elements, want 0" % len(p.heat))
    need("hidden" in p.banner, "a banner without data: %r" % banner)
    need("waiting for the coordinator" in text, "no 'waiting for the coordinator' text")
    need(p.body.get("data-state") == "waiting", "data-state %r, want waiting"
         % p.body.get("data-state"))
for e in errors:
    print("  %s: %s" % (tag, e), file=sys.stderr)
if not errors:
    print("  ok: %s: %d bars, %d heatmap rows, %d loss line(s), state %s%s"
          % (tag, len(p.bars), len(p.heat), len(p.lines), p.body.get("data-state"),
             ", banner: " + banner if banner else ""))
sys.exit(1 if errors else 0)
PY
}

# check_png FILE: a PNG of the window's size ($SIZE) that is not one flat colour.
check_png() {
    python3 - "$1" "$SIZE" <<'PY' || fail "bad screenshot $1"
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
w, h = struct.unpack(">II", data[16:24])
want = tuple(int(x) for x in sys.argv[2].split(","))
assert (w, h) == want, "size %dx%d, want %dx%d" % (w, h, want[0], want[1])
# Decompress the pixels and count distinct row contents as a crude
# "something is drawn" test.
pos, idat = 8, b""
while pos < len(data):
    n, = struct.unpack(">I", data[pos:pos + 4])
    if data[pos + 4:pos + 8] == b"IDAT":
        idat += data[pos + 8:pos + 8 + n]
    pos += 12 + n
raw = zlib.decompress(idat)
stride = len(raw) // h
rows = {raw[i * stride + 1:(i + 1) * stride] for i in range(h)}
assert len(rows) > 50, "only %d distinct rows" % len(rows)
print("  ok: %s: %dx%d, %d distinct rows" % (sys.argv[1], w, h, len(rows)))
PY
}

cd "$work"
mkdir -p "$www"

# ---------------------------------------------------------------------------
# control: does a console message reach the log?

cat >"$www/index.html" <<'EOF'
<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body><script>
console.error("control: console.error");
setTimeout(function () { null.x; }, 100);
</script></body></html>
EOF
start_server
run_chrome control
grep -q 'control: console.error' control.log || fail "control: chromium's log does not show console.error; this harness cannot see console messages"
grep -q 'Uncaught TypeError' control.log || fail "control: chromium's log does not show uncaught exceptions"
echo "  ok: control: console.error and an uncaught exception both reach the log"

# ---------------------------------------------------------------------------
# live, with the screenshot

cp "$page" "$www/index.html"
write_live_api
SIZE=1280,1400
run_chrome live --screenshot="$out/dashboard.png"
no_console live
check_dom live live "$www/api/v1/experts" "$www/api/v1/cluster" "$www/api/v1/history"
check_png "$out/dashboard.png"
grep -q 'GET /api/v1/experts' http.log || fail "the page never fetched /api/v1/experts"
grep -q 'GET /api/v1/history?field=rows_routed' http.log || fail "the page never fetched /api/v1/history"
polls=$(grep -c 'GET /api/v1/cluster' http.log || true)
[ "$polls" -ge 3 ] || fail "only $polls polls of /api/v1/cluster in ${BUDGET} ms of virtual time"
echo "  ok: live: $polls polls of each endpoint"

# ---------------------------------------------------------------------------
# hier: a hierarchical model's heatmap (group boundaries) and a stalled step

rm -f "$www/api/v1/"*
write_hier_api
run_chrome hier --screenshot="$out/dashboard-heatmap.png"
no_console hier
check_dom hier hier "$www/api/v1/experts" "$www/api/v1/cluster" "$www/api/v1/history"
check_png "$out/dashboard-heatmap.png"
SIZE=1280,900

# ---------------------------------------------------------------------------
# sparse and empty answers

write_sparse_api
run_chrome sparse --screenshot="$out/dashboard-sparse.png"
no_console sparse
check_dom sparse sparse

echo '{}' >"$www/api/v1/experts"
echo '{}' >"$www/api/v1/cluster"
echo '{}' >"$www/api/v1/history"
run_chrome empty
no_console empty
check_dom empty empty

# ---------------------------------------------------------------------------
# down: no API at all, then answers that are not JSON

rm -rf "$www/api"
run_chrome down --screenshot="$out/dashboard-waiting.png"
no_console down
check_dom down down
check_png "$out/dashboard-waiting.png"

mkdir -p "$www/api/v1"
printf 'not json{' >"$www/api/v1/experts"
printf '<html>oops</html>' >"$www/api/v1/cluster"
run_chrome garbage
no_console garbage
check_dom garbage down

# ---------------------------------------------------------------------------
# the embedded copy is the page, byte for byte

if command -v cc >/dev/null 2>&1; then
    sh "$top/deploy/embed_file.sh" "$page" "$work/page.c" coord_dashboard_html
    cat >"$work/dump.c" <<'EOF'
#include <stdio.h>
extern const char coord_dashboard_html[];
extern const size_t coord_dashboard_html_len;
int main(void)
{
    fwrite(coord_dashboard_html, 1, coord_dashboard_html_len, stdout);
    return coord_dashboard_html[coord_dashboard_html_len] != '\0';
}
EOF
    cc -std=c11 -Wall -Wextra -Werror -o "$work/dump" "$work/page.c" "$work/dump.c" ||
        fail "the embedded page does not compile"
    "$work/dump" >"$work/page.out" || fail "the embedded page is not NUL-terminated"
    cmp -s "$work/page.out" "$page" || fail "the embedded page differs from $page"
    echo "  ok: embed_file.sh reproduces the page ($(wc -c <"$page") bytes)"
fi

# ---------------------------------------------------------------------------
# docs/dashboard.png, the README's picture, is the live screenshot of this
# run: every check above passed and its tiles show a training cluster.

tps=$(cat "$work/live.tps" 2>/dev/null || echo 0)
if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)' "$tps"; then
    for shot in dashboard dashboard-heatmap; do
        if [ -d "$top/docs" ] && cp "$out/$shot.png" "$top/docs/.$shot.png.$$" 2>/dev/null &&
            mv -f "$top/docs/.$shot.png.$$" "$top/docs/$shot.png" 2>/dev/null; then
            echo "  ok: docs/$shot.png is this run's screenshot ($tps tokens/s shown live)"
        else
            rm -f "$top/docs/.$shot.png.$$" 2>/dev/null || true
            echo "  note: could not update $top/docs/$shot.png (not writable?); the screenshot is $out/$shot.png"
        fi
    done
else
    fail "live: the screenshot shows no tokens/s; docs/dashboard.png left as it was"
fi

echo "dashboard_check: ok (screenshots in $out)"
