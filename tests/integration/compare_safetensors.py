"""Compares the tensors of two safetensors files with the same names and
shapes: prints the largest difference of each file relative to the largest
magnitude of that tensor, and exits 1 if it exceeds TOL. TOL "exact" asks
for bitwise equal tensors. A and B may each be several files joined with
"+" (e.g. a single-process checkpoint's model.safetensors+optim.safetensors,
to compare with a cluster export); tensors named state.* (a worker's carried
LSTM state) are left out.

Usage: compare_safetensors.py A B TOL
"""
import json
import struct
import sys

import numpy as np


def load(spec):
    out = {}
    for path in spec.split("+"):
        out.update({k: v for k, v in load1(path).items() if not k.startswith("state.")})
    return out


def load1(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    return {
        k: np.frombuffer(data[v["data_offsets"][0] : v["data_offsets"][1]], "<f4").reshape(v["shape"])
        for k, v in header.items()
        if k != "__metadata__"
    }


a, b = load(sys.argv[1]), load(sys.argv[2])
if sorted(a) != sorted(b):
    print("tensor names differ:", sorted(set(a) ^ set(b))[:5])
    sys.exit(1)
if sys.argv[3] == "exact":
    bad = [k for k in a if a[k].shape != b[k].shape or a[k].tobytes() != b[k].tobytes()]
    print(f"  {len(a) - len(bad)} of {len(a)} tensors bitwise equal" + (f"; differ: {bad[:5]}" if bad else ""))
    sys.exit(1 if bad else 0)
tol = float(sys.argv[3])
worst, where = 0.0, ""
for k in a:
    if a[k].shape != b[k].shape:
        print(f"{k}: shapes differ {a[k].shape} {b[k].shape}")
        sys.exit(1)
    scale = float(np.max(np.abs(a[k]))) if a[k].size else 0.0
    diff = float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) if a[k].size else 0.0
    rel = diff / scale if scale > 0 else diff
    if rel > worst:
        worst, where = rel, k
print(f"  largest difference {worst:.3g} of the tensor's largest magnitude ({where}); tolerance {tol:g}")
sys.exit(0 if worst <= tol else 1)
