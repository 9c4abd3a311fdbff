"""Builds benchmarks/results/results.md (the table the README shows) from the
JSON files of the latest run of each part of benchmarks/run.sh. A part that
has not run yet leaves its rows out. Every compute ratio is against sgemm
with the best correct kernel set of the machine (kernels.json), and every
row names the kernel set it ran with.

Usage: table.py RESULTS_DIR
"""
import json
import os
import sys

out = sys.argv[1]


def J(f):
    return json.load(open(os.path.join(out, f)))


def have(*fs):
    return all(os.path.exists(os.path.join(out, f)) for f in fs)


def med(v):
    v = sorted(v)
    return v[len(v) // 2]


def kern(d, key, src):
    """The kernel set a measurement recorded; a result without one is from
    an older run: its part must run again (PARTS=...)."""
    if not d.get(key):
        sys.exit(f"table.py: {src} does not name its BLAS kernels ({key}): run its part again")
    return d[key]


rows = []
pre = []
if have("kernels.json"):
    k = J("kernels.json")
    env = k["openblas_coretype"]
    pre.append(
        f"BLAS kernels (`bench_gemm --survey`, {k['threads']} threads, median of {k['rounds']} rounds; "
        f"CPU features: {k['cpu_features']}; OPENBLAS_CORETYPE {'= ' + env if env else 'unset'}): "
        f"OpenBLAS's own choice **{k['openblas_own']}**; the programs run **{k['chosen']}** "
        f"({k['chosen_reason']}); the best correct set, which every limit below is measured with, "
        f"is **{k['best']}**.")
    shapes = " | ".join(f"sgemm {s.replace(',0,0', '').replace(',0,1', ' (B^T)').replace(',', 'x')}"
                        for s in k["shapes"])
    pre.append(f"\n| kernel set | self-test | {shapes} | geometric mean |\n"
               f"|---|---|{'---|' * len(k['shapes'])}---|")
    for st in k["sets"]:
        tags = []
        if st["name"] == k["openblas_own"]:
            tags.append("OpenBLAS's own")
        if st["name"] == k["chosen"]:
            tags.append("the programs'")
        if st["name"] == k["best"]:
            tags.append("best")
        rates = " | ".join(f"{g:.1f}" for g in st["gflops"])
        pre.append(f"| {st['name']}{' (' + ', '.join(tags) + ')' if tags else ''} | "
                   f"{'passed' if st['selftest'] else 'FAILED'} | {rates} | "
                   f"**{st['geomean_gflops']:.1f}** GFLOP/s |")
    pre.append("")

for t in (1, 2):
    if not have(f"expert_t{t}.json"):
        continue
    ex = J(f"expert_t{t}.json")
    with open(os.path.join(out, f"expert_t{t}.dat"), "w") as f:
        for r in ex:
            f.write(f"{r['rows']} {r['fraction']:.4f} {r['gflops']:.2f} {r['sgemm_gflops']:.2f}\n")
    big = [r for r in ex if r["rows"] >= 256]
    worst = min(big, key=lambda r: r["fraction"]) if big else ex[-1]
    kn = kern(worst, "kernels", f"expert_t{t}.json")
    kb = kern(worst, "kernels_best", f"expert_t{t}.json")
    rows.append(f"| expert compute (fwd + bwd + factored Adam), 512 -> 1024 -> 512, {t} thread(s), "
                f"{worst['rows']} rows (worst from 256 up), kernels {kn} | {worst['gflops']:.1f} GFLOP/s | "
                f"{1e3 * worst['step_time_s']:.1f} ms per expert step | sgemm on the same shapes: "
                f"{worst['sgemm_best_gflops']:.1f} GFLOP/s with {kb} "
                f"({worst['sgemm_gflops']:.1f} with {kn}) | **{worst['fraction']:.2f}** of sgemm |")
if have("expert_t1.json"):
    ex = J("expert_t1.json")[0]
    rows.append(f"| optimizer state per expert parameter (factored Adam; a count, no BLAS) | "
                f"{ex['opt_state_per_param']:.5f} | "
                f"{100 * ex['opt_state_per_param']:.2f}% of the parameter bytes | Adam: 2 (200%) | "
                f"**{ex['opt_state_per_param'] / 2:.4f}** of Adam |")
for name, f in (("default model, 1 thread(s)", "step_t1.json"), ("default model, 2 thread(s)", "step_t2.json"),
                ("D=512 H=1024 E=16 k=4 B=32 T=35, 2 thread(s)", "step_d512_t2.json")):
    if not have(f):
        continue
    r = J(f)
    kn = kern(r, "kernels", f)
    kb = kern(r, "kernels_best", f)
    rounds = ", ".join(f"{x:.2f}" for x in r.get("rounds", []))
    rows.append(f"| training step, in-process, {name}, kernels {kn} | {r['tokens_per_sec']:.0f} tok/s | "
                f"{r['model_gflops']:.1f} GFLOP/s | sgemm on the same shapes: "
                f"{r['sgemm_best_gflops']:.1f} GFLOP/s with {kb} "
                f"({r['sgemm_gflops']:.1f} with {kn}) | **{r['fraction']:.2f}** of sgemm"
                f"{' (rounds: ' + rounds + ')' if rounds else ''} |")
# The machine's memory, for what would fit in it (the 24 GB here).
mem_total = None
try:
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            mem_total = int(line.split()[1]) / 1024
except OSError:
    pass
fits_note = []
if have("recompute.json"):
    rc = J("recompute.json")
    kn = kern(rc, "blas_kernels", "recompute.json")
    base = rc["settings"]["none"]
    per = rc["expert_mb"]
    D, H, E = rc["d_model"], rc["d_hidden"], rc["n_experts"]
    expert_params = 2 * D * H + D + H
    for m, v in rc["settings"].items():
        rows.append(f"| --recompute {m}, default model in-process, {rc['steps']} steps, kernels {kn} | "
                    f"{v['tokens_per_sec']:.0f} tok/s | peak RSS {v['peak_rss_mb']:.1f} MB | "
                    f"--recompute none: {base['tokens_per_sec']:.0f} tok/s, {base['peak_rss_mb']:.1f} MB | "
                    f"**{v['tokens_per_sec'] / base['tokens_per_sec']:.3f}** x the speed, "
                    f"**{v['peak_rss_mb'] - base['peak_rss_mb']:+.1f} MB** |")
    if mem_total and per > 0:
        # peak RSS = what does not grow with experts + E * (measured bytes per expert)
        fit = {m: int((mem_total - (v["peak_rss_mb"] - E * per)) / per) for m, v in rc["settings"].items()}
        fits_note.append(
            f"Memory per expert of the default model ({D} -> {H} -> {D}, in-process, parameters, factored-Adam "
            f"state and gradient), measured as the peak RSS slope from {E} to {rc['more']['n_experts']} experts "
            f"({base['peak_rss_mb']:.1f} MB to {rc['more']['peak_rss_mb']:.1f} MB): **{per * 1024:.1f} KiB**. "
            f"In this machine's {mem_total / 1024:.1f} GiB the default model fits " +
            ", ".join(f"{fit[m]} experts ({fit[m] * expert_params / 1e9:.2f}B expert parameters) with "
                      f"--recompute {m}" for m in fit) +
            f": recomputation makes room for **{fit['all'] - fit['none']:+d}** experts "
            f"({100 * (fit['all'] / fit['none'] - 1):+.2f}%) of the same size.")

dist = [f"dist_{s}_r{r}.json" for s in ("local", "tcp_f32", "ipc_f32", "tcp_bf16") for r in (1, 2, 3)]
if have(*dist, "wire_tcp.json", "wire_ipc.json"):
    def runs(stem):
        return [J(f"{stem}_r{r}.json") for r in (1, 2, 3)]
    loc_runs = runs("dist_local")
    loc = {"tokens_per_sec": med([d["tokens_per_sec"] for d in loc_runs])}
    wire = {w["transport"] + str(w["bytes"]): w for f in ("wire_tcp.json", "wire_ipc.json") for w in J(f)}
    for name, stem in (("tcp, fp32", "dist_tcp_f32"), ("ipc, fp32", "dist_ipc_f32"), ("tcp, bf16", "dist_tcp_bf16")):
        rr = runs(stem)
        ratios = [l["tokens_per_sec"] / d["tokens_per_sec"] for l, d in zip(loc_runs, rr)]
        ratio = med(ratios)
        d = dict(rr[0], tokens_per_sec=med([x["tokens_per_sec"] for x in rr]))
        tr = name.split(",")[0]
        size = 32 * 35 * 4 // 2 * 128 * (2 if "bf16" in name else 4)
        w = wire[tr + str(size)]
        rows.append(f"| step, 2 expert servers, {name}, kernels {kern(d, 'blas_kernels', stem + '_r1.json')} | "
                    f"{d['tokens_per_sec']:.0f} tok/s | "
                    f"{d['wire_bytes_per_token']:.0f} wire bytes/token | raw ZeroMQ {tr} at {size} B: {w['mb_per_s']:.0f} MB/s, "
                    f"{w['rtt_ms']:.2f} ms round trip | **{ratio:.3f}** x in-process step time "
                    f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)}) |")
    rows.append(f"| step, in-process (same rounds, for the ratios; median), kernels "
                f"{kern(loc_runs[0], 'blas_kernels', 'dist_local_r1.json')} | {loc['tokens_per_sec']:.0f} tok/s | | | |")
    # CURVE against plain tcp (builds with CURVE: run.sh adds the --insecure runs)
    if have("dist_tcpplain_f32_r1.json", "dist_tcpplain_f32_r2.json", "dist_tcpplain_f32_r3.json"):
        cu, pl = runs("dist_tcp_f32"), runs("dist_tcpplain_f32")
        cost = [p["tokens_per_sec"] / c["tokens_per_sec"] for c, p in zip(cu, pl)]
        rows.append(f"| CURVE: step, 2 expert servers, tcp fp32, keys against --insecure, kernels "
                    f"{kern(cu[0], 'blas_kernels', 'dist_tcp_f32_r1.json')} | "
                    f"{med([c['tokens_per_sec'] for c in cu]):.0f} tok/s with CURVE | | "
                    f"--insecure (plain tcp): {med([p['tokens_per_sec'] for p in pl]):.0f} tok/s | "
                    f"**{med(cost):.3f}** x plain step time (rounds: {', '.join(f'{x:.3f}' for x in cost)}) |")
for t in ("tcp", "ipc"):
    if not have(f"codec_{t}.json"):
        continue
    c = J(f"codec_{t}.json")
    rows.append(f"| bf16 on the wire: a worker's round trip through the codec, {c['rows']} x {c['width']} "
                f"floats, {t} (no BLAS) | bf16 {c['bf16_round_trip_ms']:.3f} ms | conversions {c['to_bf16_gbps']:.1f} GB/s "
                f"to bf16, {c['to_f32_gbps']:.1f} GB/s back (of float32) | float32: {c['f32_round_trip_ms']:.3f} ms "
                f"| **{c['bf16_over_f32']:.2f}** x the float32 time (rounds: "
                f"{', '.join(f'{x:.2f}' for x in c['ratios'])}) |")
if have("wireppl_f32.json", "wireppl_bf16.json"):
    pf, pb = J("wireppl_f32.json"), J("wireppl_bf16.json")
    rows.append(f"| wire precision: validation perplexity after {pf['steps']} steps (default model, 2 servers, tcp), "
                f"kernels {kern(pb, 'blas_kernels', 'wireppl_bf16.json')} | "
                f"bf16 on the wire: {pb['valid_ppl']:.2f} | {pb['wire_bytes_per_token']:.0f} wire bytes/token "
                f"(fp32: {pf['wire_bytes_per_token']:.0f}) | fp32 on the wire: {pf['valid_ppl']:.2f} "
                f"(kernels {kern(pf, 'blas_kernels', 'wireppl_f32.json')}) | "
                f"**{100 * (pb['valid_ppl'] / pf['valid_ppl'] - 1):+.2f}%** perplexity with bf16 |")
if have("scale.json"):
    sc = J("scale.json")
    by = {r["n_experts"]: r for r in sc}
    ref = by.get(16, sc[0])
    for r in sc:
        srv = ", ".join(f"{v:.0f}" for v in r["server_peak_rss_mb"].values())
        rows.append(f"| scaling, {r['n_experts']} experts, k = 4, {r['batch_rows']} tokens/step "
                    f"({r['rows_per_expert']:.0f} rows per expert), kernels "
                    f"{kern(r, 'blas_kernels', 'scale.json')} | {r['tokens_per_sec']:.0f} tok/s "
                    f"(fastest of {r['timed_steps']} steps; mean {r['tokens_per_sec_mean']:.0f}) | "
                    f"peak RSS worker {r['worker_peak_rss_mb']:.0f} MB, servers {srv} MB | "
                    f"{ref['n_experts']} experts: {ref['tokens_per_sec']:.0f} tok/s | "
                    f"**{r['tokens_per_sec'] / ref['tokens_per_sec']:.2f}** of {ref['n_experts']} experts |")
big = {m: J(f"big_{m}.json") for m in ("none", "experts", "all") if have(f"big_{m}.json")}
for m, b in big.items():
    rss = ", ".join(f"{k} {v:.0f}" for k, v in b["peak_rss_mb"].items() if v)
    rows.append(f"| MoE-{b['n_experts']}: {b['expert_params'] / 1e9:.2f}B expert parameters, 2 servers, "
                f"{b['steps']} steps of {b['rows_per_step']} tokens, --recompute {m}, kernels "
                f"{kern(b, 'blas_kernels', f'big_{m}.json')} | {b['step_time_s']:.1f} s/step | peak RSS (MB): {rss} | "
                f"machine memory {mem_total / 1024:.1f} GiB | **{b['total_peak_rss_mb'] / 1024:.2f} GiB** peak in all |")
table = ("\n".join(pre) + "\n" if pre else "") + \
    "| measurement | speed | work | limit measured in the same run | ratio |\n|---|---|---|---|---|\n" + \
    "\n".join(rows) + "\n"
if fits_note:
    table += "\n" + "\n\n".join(fits_note) + "\n"
if have("monitoring.json"):
    m = J("monitoring.json")
    table += (f"\nHTTP monitoring under load (200 scrapers + malformed, slow and disconnecting clients, "
              f"load generator at {m['load_generator_priority']}; kernels "
              f"{kern(m, 'blas_kernels', 'monitoring.json')}): median slowdown of training "
              f"{100 * m['median_slowdown']:.1f}% (runs: " +
              ", ".join(f"{100 * x:.1f}%" for x in m["slowdowns"]) +
              f"); coordinator CPU {', '.join(f'{c:.2f}' for c in m['coordinator_cpu_seconds'])} s "
              f"for {', '.join(str(n) for n in m['http_requests'])} requests.\n")
open(os.path.join(out, "results.md"), "w").write(table)
print(table)
