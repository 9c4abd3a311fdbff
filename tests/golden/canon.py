"""Writes the canonical form of the tensors of one or more safetensors
files: every tensor but a worker's carried LSTM state (state.*), sorted by
name, as name, shape and the little-endian float32 bytes, without any
metadata. Golden files are kept in this form so that what they pin is the
numbers, not a file format that may grow (metadata, file layout).

Usage: canon.py OUT IN[+IN...]
"""
import json
import struct
import sys


def tensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    for name, v in header.items():
        if name == "__metadata__" or name.startswith("state."):
            continue
        if v["dtype"] != "F32":
            sys.exit("%s: tensor %s is %s, expected F32" % (path, name, v["dtype"]))
        a, b = v["data_offsets"]
        yield name, v["shape"], data[a:b]


out = {}
for path in sys.argv[2].split("+"):
    for name, shape, blob in tensors(path):
        if name in out:
            sys.exit("tensor %s appears twice" % name)
        out[name] = (shape, blob)
with open(sys.argv[1], "wb") as f:
    for name in sorted(out):
        shape, blob = out[name]
        f.write(name.encode() + b"\0")
        f.write(struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape))
        f.write(struct.pack("<Q", len(blob)) + blob)
