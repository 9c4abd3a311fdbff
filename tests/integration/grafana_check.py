#!/usr/bin/env python3
"""Structural check of the Grafana dashboard (deploy/grafana/moe-dashboard.json).

    grafana_check.py DASHBOARD METRICS METRICS_HIERARCHICAL [PROMETHEUS_URL]

DASHBOARD must be valid JSON with a title, a uid, a schemaVersion and panels;
each panel a unique id, a type, a title and a gridPos inside the 24 columns;
each panel but a row a Prometheus data source and targets, each target an
expr and a unique refId. Every metric an expr names must be a family of
METRICS or METRICS_HIERARCHICAL (/metrics pages of the coordinator of a flat
and of a hierarchical model; a histogram's _bucket/_sum/_count counted as its
family). The dashboard must have what issue 18 asks of it: a heatmap of
moe_expert_rows_routed_total, the throughput (moe_worker_tokens_total), the
servers (moe_server_up) and the checkpoints (moe_checkpoint_age_seconds);
and a row titled "Groups" whose panels (those after it, up to the next row)
show the hierarchical model's series of GROUP_REQUIRED, each exported by
METRICS_HIERARCHICAL.
With PROMETHEUS_URL (scraping both coordinators), each expr
($__rate_interval as 1m) is also evaluated by that Prometheus
(/api/v1/query) and must succeed, the heatmap's must return one series per
expert (the larger count of the two pages), and each of the Groups row's
must return at least one series (so it matches the hierarchical
coordinator's series). Exit 0 with a summary line, 1 with every problem.
Standard library only.
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
# The Groups row: per-group rows routed, Load_p, the CVs over the groups and
# the balancing loss's cv^2 of Importance_H and Load_H.
GROUP_REQUIRED = ("moe_group_rows_routed_total", "moe_group_load", "moe_group_importance_cv",
                  "moe_group_load_cv", "moe_importance_cv_squared", "moe_load_cv_squared")


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


def check(dash, fams, hfams, n_experts, prom):
    errors = []
    for key in ("title", "uid", "schemaVersion", "panels"):
        if key not in dash:
            errors.append("the dashboard has no %s" % key)
    ids, exprs, used, row, group_used = set(), [], set(), None, set()
    all_fams = dict(fams, **hfams)
    for p in dash.get("panels", []):
        where = "panel %r" % p.get("title")
        is_row = p.get("type") == "row"
        for key in ("id", "type", "title", "gridPos") + (() if is_row else ("targets", "datasource")):
            if key not in p:
                errors.append("%s has no %s" % (where, key))
        if p.get("id") in ids:
            errors.append("%s: id %r twice" % (where, p.get("id")))
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "xywh") or g.get("x", 0) + g.get("w", 0) > 24:
            errors.append("%s: gridPos %r is not inside 24 columns" % (where, g))
        if is_row:
            row = p.get("title")
            continue
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
            names = metric_names(expr, all_fams)
            if not names:
                errors.append("%s: %r names no metric of the coordinator" % (where, expr))
            in_groups = row == "Groups"
            for n in sorted(names - set(hfams if in_groups else all_fams)):
                errors.append("%s: %r names %s, which /metrics%s does not export" % (
                    where, expr, n, " of a hierarchical model" if in_groups else ""))
            used |= {(p.get("type"), n) for n in names}
            if in_groups:
                group_used |= names
            exprs.append((where, p.get("type") if not in_groups else "groups", expr))
    for what, metric in REQUIRED.items():
        want_type = "heatmap" if what == "heatmap" else None
        if not any(n == metric and (want_type is None or t == want_type) for t, n in used):
            errors.append("no %s panel (%s%s)" % (what, metric, " in a heatmap" if want_type else ""))
    for metric in GROUP_REQUIRED:
        if metric not in group_used:
            errors.append("no panel of %s in the Groups row" % metric)
    if prom:
        experts = None
        for where, typ, expr in exprs:
            r = query(prom, expr.replace("$__rate_interval", "1m"))
            if r.get("status") != "success":
                errors.append("%s: prometheus cannot evaluate %r: %s" % (where, expr, r.get("error")))
            elif typ == "heatmap":
                experts = len(r["data"]["result"])
            elif typ == "groups" and not r["data"]["result"]:
                errors.append("%s: %r has no series in prometheus (the hierarchical coordinator's "
                              "are not matched)" % (where, expr))
        if experts is not None and experts != n_experts:
            errors.append("the heatmap has %d series, /metrics %s experts" % (experts, n_experts))
    return errors, len(exprs)


def main(argv):
    if len(argv) not in (4, 5):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        dash = json.load(open(argv[1], encoding="utf-8"))
    except (OSError, ValueError) as e:
        print("grafana_check: %s: %s" % (argv[1], e))
        return 1
    fams, hfams = families(argv[2]), families(argv[3])
    n_experts = None
    for path in argv[2:4]:
        for line in open(path, encoding="utf-8"):
            if line.startswith("moe_experts "):
                n_experts = max(n_experts or 0, int(float(line.split()[1])))
    errors, n = check(dash, fams, hfams, n_experts, argv[4] if len(argv) == 5 else None)
    for e in errors:
        print("grafana_check: " + e)
    if errors:
        return 1
    print("  ok: grafana dashboard: %d panels, %d expressions, every metric exported, a Groups row%s" % (
        len(dash["panels"]), n, ", each evaluated by prometheus" if len(argv) == 5 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
