"""Loads a moe-worker checkpoint into PyTorch modules by tensor names and
shapes alone (load_state_dict(strict=True)), evaluates the validation
perplexity with the same model definition in float64, and prints it.

Usage: torch_eval.py CHECKPOINT_DIR VALID_CORPUS
The model: Embedding -> LSTM -> MoE (top-k of x W_gate, no noise at
evaluation, softmax over the top k, linear combine) -> LSTM -> Linear, with
the residual adds and the optional sigmoid of the checkpoint's config.ini.
"""
import configparser
import json
import math
import struct
import sys

import numpy as np
import torch
from torch import nn


def load_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "F32", (name, meta["dtype"])
        begin, end = meta["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype="<f4").reshape(meta["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


class Expert(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.w1 = nn.Linear(d, h)
        self.w2 = nn.Linear(h, d)

    def forward(self, x):
        return self.w2(torch.relu(self.w1(x)))


class MoE(nn.Module):
    def __init__(self, d, h, n, k):
        super().__init__()
        self.k = k
        self.w_gate = nn.Parameter(torch.zeros(d, n))
        self.w_noise = nn.Parameter(torch.zeros(d, n))
        self.experts = nn.ModuleList([Expert(d, h) for _ in range(n)])

    def forward(self, x):
        clean = x @ self.w_gate
        top_v, top_i = clean.topk(self.k, dim=-1)
        gates = torch.softmax(top_v, dim=-1)
        out = torch.stack([e(x) for e in self.experts], dim=1)  # (N, n, d)
        picked = out.gather(1, top_i.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return (gates.unsqueeze(-1) * picked).sum(1)


class LM(nn.Module):
    def __init__(self, v, d, h, n, k, residual, sigmoid):
        super().__init__()
        self.residual, self.sigmoid = residual, sigmoid
        self.embedding = nn.Embedding(v, d)
        self.lstm1 = nn.LSTM(d, d, batch_first=True)
        self.moe = MoE(d, h, n, k)
        self.lstm2 = nn.LSTM(d, d, batch_first=True)
        self.softmax = nn.Linear(d, v)

    def forward(self, tok):
        a0 = self.embedding(tok)
        a1, _ = self.lstm1(a0)
        if self.residual:
            a1 = a1 + a0
        b, t, d = a1.shape
        m = self.moe(a1.reshape(b * t, d)).reshape(b, t, d)
        if self.sigmoid:
            m = torch.sigmoid(m)
        a2 = m + a1 if self.residual else m
        a3, _ = self.lstm2(a2)
        if self.residual:
            a3 = a3 + a2
        return self.softmax(a3)


def main():
    ckpt, valid = sys.argv[1], sys.argv[2]
    cfg = configparser.ConfigParser()
    cfg.read(f"{ckpt}/config.ini")
    get = lambda s, k: cfg.get(s, k)
    vocab = [w.rstrip("\n") for w in open(f"{ckpt}/vocab.txt", encoding="utf-8")]
    index = {w: i for i, w in enumerate(vocab)}
    ids = []
    for line in open(valid, encoding="utf-8"):
        ids.extend(index.get(w, 0) for w in line.split())
        ids.append(1)
    d, h = int(get("model", "d_model")), int(get("model", "d_hidden"))
    n, k = int(get("model", "n_experts")), int(get("model", "k"))
    residual = get("model", "residual") == "true"
    sigmoid = get("model", "moe_sigmoid") == "true"
    model = LM(len(vocab), d, h, n, k, residual, sigmoid)
    state = load_safetensors(f"{ckpt}/model.safetensors")
    model.load_state_dict(state, strict=True)
    model = model.double().eval()
    B = int(get("train", "eval_batch"))
    L = (len(ids) - 1) // B
    x = torch.tensor([ids[b * L : b * L + L] for b in range(B)])
    y = torch.tensor([ids[b * L + 1 : b * L + L + 1] for b in range(B)])
    with torch.no_grad():
        logits = model(x)
        nll = nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), y.reshape(-1))
    print(f"{math.exp(nll.item()):.10g}")


if __name__ == "__main__":
    main()
