"""What a local cluster run of the benchmarks (deploy/launch-local.sh)
left behind: the worker's progress lines and report, every process's log.
Shared by bench_scale.sh and bench_hmoe.sh."""
import json
import os
import re


def read(run_dir, worker_out, prefix=""):
    """tokens/s of the steps after the first (the first pays for
    allocation): their fastest (noise on a shared machine only adds time)
    and mean, with the report's figure when no step line was printed; the
    peak resident memory in MB of each process whose log (RUN_DIR/*.log,
    those starting with `prefix`) names it, and of the worker (its report);
    the BLAS kernel sets they ran."""
    rep = json.load(open(os.path.join(run_dir, "report.json")))
    tps = []
    for line in open(worker_out):
        m = re.match(r"step\s+(\d+)/\d+ \|\s+(\d+) tok/s", line)
        if m and int(m.group(1)) > 1:
            tps.append(float(m.group(2)))
    rss, kernels = {}, {rep["blas_kernels"]}
    for f in sorted(os.listdir(run_dir)):
        if f.startswith(prefix) and f.endswith(".log"):
            for line in open(os.path.join(run_dir, f)):
                m = re.search(r"peak RSS ([0-9.]+) MB", line)
                if m:
                    rss[f[:-4]] = float(m.group(1))
                m = re.search(r"BLAS kernels: (\S+) \(", line)
                if m:
                    kernels.add(m.group(1))
    return {"report": rep, "timed_steps": len(tps),
            "tokens_per_sec": max(tps) if tps else rep["tokens_per_sec"],
            "tokens_per_sec_mean": sum(tps) / len(tps) if tps else rep["tokens_per_sec"],
            "peak_rss_mb": rss, "worker_peak_rss_mb": rep.get("peak_rss_mb"),
            "blas_kernels": "/".join(sorted(kernels))}
