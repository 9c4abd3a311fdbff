"""Compares the tensors of two safetensors files with the same names and
shapes: prints the largest difference of each file relative to the largest
magnitude of that tensor, and exits 1 if it exceeds TOL.

Usage: compare_safetensors.py A B TOL
"""
import json
import struct
import sys

import numpy as np


def load(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    return {
        k: np.frombuffer(data[v["data_offsets"][0] : v["data_offsets"][1]], "<f4").reshape(v["shape"])
        for k, v in header.items()
        if k != "__metadata__"
    }


a, b, tol = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
if sorted(a) != sorted(b):
    print("tensor names differ")
    sys.exit(1)
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
