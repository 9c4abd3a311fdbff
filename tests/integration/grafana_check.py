#!/usr/bin/env python3
"""Structural check of the Grafana dashboard (deploy/grafana/moe-dashboard.json).

    grafana_check.py DASHBOARD METRICS [PROMETHEUS_URL]

DASHBOARD must be valid JSON with a title, a uid, a schemaVersion and panels;
each panel a unique id, a type, a title, a Prometheus data source and a
gridPos inside the 24 columns; each target an expr and a unique refId. Every
metric an expr names must be a family of METRICS (a /metrics page of the
coordinator, a histogram's _bucket/_sum/_count counted as its family). The
dashboard must have what issue 18 asks of it: a heatmap of
moe_expert_rows_routed_total, the throughput (moe_worker_tokens_total), the
servers (moe_server_up) and the checkpoints (moe_checkpoint_age_seconds).
With PROMETHEUS_URL, each expr ($__rate_interval as 1m) is also evaluated by
that Prometheus (/api/v1/query) and must succeed, and the heatmap's must
return one series per expert of METRICS. Exit 0 with a summary line, 1 with
every problem. Standard library only.
"""

import json
import re
import sys
import urllib.parse
import urllib.request

METRIC_RE = re.compile(r"\b((?:moe|process)_[a-zA-Z0-9_]*)\b")
REQUIRED = {
    "heatmap": "moe_expert_rows_routed_total",
    "throughput": "moe_worker_tokens_total",
    "servers": "moe_server_up",
    "checkpoints": "moe_checkpoint_age_seconds",
}


def families(path):
    """Family names of a /metrics page: its TYPE lines."""
    out = {}
    for line in open(path, encoding="utf-8"):
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            out[name] = kind
    return out


def metric_names(expr, fams):
    names = set()
    for m in METRIC_RE.findall(expr):
        for suffix in ("_bucket", "_sum", "_count"):
            if m.endswith(suffix) and fams.get(m[: -len(suffix)]) == "histogram":
                m = m[: -len(suffix)]
        names.add(m)
    return names


def query(url, expr):
    q = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen("%s/api/v1/query?%s" % (url, q), timeout=10) as r:
        return json.load(r)


def check(dash, fams, n_experts, prom):
    errors = []
    for key in ("title", "uid", "schemaVersion", "panels"):
        if key not in dash:
            errors.append("the dashboard has no %s" % key)
    ids, exprs, used = set(), [], set()
    for p in dash.get("panels", []):
        where = "panel %r" % p.get("title")
        for key in ("id", "type", "title", "gridPos", "targets", "datasource"):
            if key not in p:
                errors.append("%s has no %s" % (where, key))
        if p.get("id") in ids:
            errors.append("%s: id %r twice" % (where, p.get("id")))
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "xywh") or g.get("x", 0) + g.get("w", 0) > 24:
            errors.append("%s: gridPos %r is not inside 24 columns" % (where, g))
        if p.get("datasource", {}).get("type") != "prometheus":
            errors.append("%s: the data source is not Prometheus" % where)
        refs = set()
        for t in p.get("targets", []):
            expr = t.get("expr")
            if not expr:
                errors.append("%s: a target without expr" % where)
                continue
            if t.get("refId") in refs:
                errors.append("%s: refId %r twice" % (where, t.get("refId")))
            refs.add(t.get("refId"))
            names = metric_names(expr, fams)
            if not names:
                errors.append("%s: %r names no metric of the coordinator" % (where, expr))
            for n in sorted(names - set(fams)):
                errors.append("%s: %r names %s, which /metrics does not export" % (where, expr, n))
            used |= {(p.get("type"), n) for n in names}
            exprs.append((where, p.get("type"), expr))
    for what, metric in REQUIRED.items():
        want_type = "heatmap" if what == "heatmap" else None
        if not any(n == metric and (want_type is None or t == want_type) for t, n in used):
            errors.append("no %s panel (%s%s)" % (what, metric, " in a heatmap" if want_type else ""))
    if prom:
        experts = None
        for where, typ, expr in exprs:
            r = query(prom, expr.replace("$__rate_interval", "1m"))
            if r.get("status") != "success":
                errors.append("%s: prometheus cannot evaluate %r: %s" % (where, expr, r.get("error")))
            elif typ == "heatmap":
                experts = len(r["data"]["result"])
        if experts is not None and experts != n_experts:
            errors.append("the heatmap has %d series, /metrics %s experts" % (experts, n_experts))
    return errors, len(exprs)


def main(argv):
    if len(argv) not in (3, 4):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        dash = json.load(open(argv[1], encoding="utf-8"))
    except (OSError, ValueError) as e:
        print("grafana_check: %s: %s" % (argv[1], e))
        return 1
    fams = families(argv[2])
    n_experts = None
    for line in open(argv[2], encoding="utf-8"):
        if line.startswith("moe_experts "):
            n_experts = int(float(line.split()[1]))
    errors, n = check(dash, fams, n_experts, argv[3] if len(argv) == 4 else None)
    for e in errors:
        print("grafana_check: " + e)
    if errors:
        return 1
    print("  ok: grafana dashboard: %d panels, %d expressions, every metric exported%s" % (
        len(dash["panels"]), n, ", each evaluated by prometheus" if len(argv) == 4 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
