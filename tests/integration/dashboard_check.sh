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
#   live     16 experts on 2 servers, 2 workers training, 120 loss points:
#            exactly 16 rect.expert-bar with data-expert 0..15 coloured by
#            server, a legend of both servers, the loss polyline, both
#            tables, the tokens/s tile showing the workers' sum (> 0); the
#            screenshot OUTDIR/dashboard.png (1280x900)
#   sparse   fields missing, of the wrong type or absurdly large: drawn
#            without errors (5 bars for the 5 entries with a usable id)
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
# above 0) replaces docs/dashboard.png, the README's picture, so that it
# follows the page; a docs/ that cannot be written is reported, not a failure.
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
# $BUDGET ms of virtual time; DOM in $work/TAG.dom, log in $work/TAG.log.
BUDGET=${BUDGET:-5000}
run_chrome() {
    tag=$1
    shift
    profile=$(mktemp -d "$work/profile-XXXXXX")
    timeout 120 "$CHROME" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --disable-domain-reliability --disable-client-side-phishing-detection \
        --no-default-browser-check --no-pings --disable-extensions \
        --proxy-server=127.0.0.1:9 --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" \
        --user-data-dir="$profile" --window-size=1280,900 --virtual-time-budget="$BUDGET" \
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
experts = [{"id": e, "server": e // 8, "rows_last": int(4 * loads[e]),
            "rows_total": int(4 * loads[e]) * step, "importance_last": round(loads[e] * 0.98, 2),
            "importance_avg": round(loads[e] * 0.99, 2), "load_last": round(loads[e], 2),
            "load_avg": round(loads[e] * 0.995, 2), "load_share": round(loads[e] / total, 4)}
           for e in range(E)]
hist = [[s, round(5.5 + 4.9 * math.exp(-s / 30) + 0.08 * math.sin(s), 4)] for s in range(1, step + 1)]
cluster = {"step": step, "placement_version": 1,
           "servers": [{"id": 0, "endpoint": "tcp://127.0.0.1:5600", "alive": True, "experts": 8,
                        "rows_per_sec": 4500.0, "bytes_total": 123456, "errors_total": 0,
                        "latency_seconds": 0.0012},
                       {"id": 1, "endpoint": "tcp://127.0.0.1:5601", "alive": True, "experts": 8,
                        "rows_per_sec": 4380.5, "bytes_total": 120012345, "errors_total": 2,
                        "latency_seconds": 0.0017}],
           "workers": [{"rank": 0, "step": step, "tokens_per_sec": 2100.0, "loss": hist[-1][1]},
                       {"rank": 1, "step": step - 1, "tokens_per_sec": 2050.0, "loss": 5.66}],
           "cv_importance": 0.09, "cv_load": 0.05, "max_over_mean_load": 1.12,
           "loss_history": hist}
json.dump({"step": step, "placement_version": 1, "experts": experts}, open(d + "/experts", "w"))
json.dump(cluster, open(d + "/cluster", "w"))
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
 "cv_load": null}
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
    def handle_starttag(self, t, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if t == "rect" and "expert-bar" in cls:
            self.bars.append(a)
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
        if t == "div":
            self.in_legend = 0
    def handle_data(self, d):
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
elif mode == "sparse":
    need(len(p.bars) == 5, "%d expert-bar elements, want 5 (ids 0 to 4)" % len(p.bars))
    need(sorted(b.get("data-expert") for b in p.bars) == ["0", "1", "2", "3", "4"],
         "data-expert %s" % [b.get("data-expert") for b in p.bars])
    need(len(p.lines) == 1, "%d loss polylines, want 1" % len(p.lines))
    need(p.body.get("data-state") == "live", "data-state %r, want live" % p.body.get("data-state"))
elif mode == "empty":
    need(not p.bars, "%d expert-bar elements, want 0" % len(p.bars))
    need("no experts reported yet" in text, "no 'no experts reported yet' text")
    need(p.body.get("data-state") == "live", "data-state %r, want live" % p.body.get("data-state"))
elif mode == "down":
    need(not p.bars, "%d expert-bar elements, want 0" % len(p.bars))
    need("waiting for the coordinator" in text, "no 'waiting for the coordinator' text")
    need(p.body.get("data-state") == "waiting", "data-state %r, want waiting"
         % p.body.get("data-state"))
for e in errors:
    print("  %s: %s" % (tag, e), file=sys.stderr)
if not errors:
    print("  ok: %s: %d bars, %d loss line(s), state %s" % (tag, len(p.bars), len(p.lines),
                                                          p.body.get("data-state")))
sys.exit(1 if errors else 0)
PY
}

# check_png FILE: a 1280x900 PNG that is not one flat colour.
check_png() {
    python3 - "$1" <<'PY' || fail "bad screenshot $1"
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
w, h = struct.unpack(">II", data[16:24])
assert (w, h) == (1280, 900), "size %dx%d, want 1280x900" % (w, h)
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
run_chrome live --screenshot="$out/dashboard.png"
no_console live
check_dom live live "$www/api/v1/experts" "$www/api/v1/cluster"
check_png "$out/dashboard.png"
grep -q 'GET /api/v1/experts' http.log || fail "the page never fetched /api/v1/experts"
polls=$(grep -c 'GET /api/v1/cluster' http.log || true)
[ "$polls" -ge 3 ] || fail "only $polls polls of /api/v1/cluster in ${BUDGET} ms of virtual time"
echo "  ok: live: $polls polls of each endpoint"

# ---------------------------------------------------------------------------
# sparse and empty answers

write_sparse_api
run_chrome sparse --screenshot="$out/dashboard-sparse.png"
no_console sparse
check_dom sparse sparse

echo '{}' >"$www/api/v1/experts"
echo '{}' >"$www/api/v1/cluster"
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
    if [ -d "$top/docs" ] && cp "$out/dashboard.png" "$top/docs/.dashboard.png.$$" 2>/dev/null &&
        mv -f "$top/docs/.dashboard.png.$$" "$top/docs/dashboard.png" 2>/dev/null; then
        echo "  ok: docs/dashboard.png is this run's live screenshot ($tps tokens/s shown)"
    else
        rm -f "$top/docs/.dashboard.png.$$" 2>/dev/null || true
        echo "  note: could not update $top/docs/dashboard.png (not writable?); the screenshot is $out/dashboard.png"
    fi
else
    fail "live: the screenshot shows no tokens/s; docs/dashboard.png left as it was"
fi

echo "dashboard_check: ok (screenshots in $out)"
