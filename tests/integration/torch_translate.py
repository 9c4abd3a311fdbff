"""The translation model of moe-worker --task translate in PyTorch (float64),
loaded strictly from its model.safetensors, and its mean cross-entropy per
target token on a parallel corpus: the oracle of test_translate.sh, which
compares it with moe-worker's validation loss (docs/DESIGN.md section 2,
worker/seq2seq.h). Evaluation: no dropout, no gating noise; every pair on
its own (the C model masks padding, so batching must not matter).

Usage: torch_translate.py MODEL.safetensors SRC TGT
"""
import configparser
import math
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "deploy"))
import torch_model  # noqa: E402  (its MoE, Expert, loader and vocabulary reader)


class Attention(nn.Module):
    """e_ts = v . tanh(W_q q_t + b + W_k m_s); alpha = softmax_s; c_t = sum_s alpha_ts m_s."""

    def __init__(self, d):
        super().__init__()
        self.query = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.bias = nn.Parameter(torch.zeros(d))
        self.v = nn.Parameter(torch.zeros(d))

    def forward(self, q, m):  # (T, d), (S, d)
        e = torch.tanh(self.query(q)[:, None, :] + self.bias + self.key(m)[None, :, :]) @ self.v
        return torch.softmax(e, dim=1) @ m


class Side(nn.Module):
    def __init__(self, v, d, h, n, k, lstms):
        super().__init__()
        self.embedding = nn.Embedding(v, d)
        for i in range(1, lstms + 1):
            setattr(self, "lstm%d" % i, nn.LSTM(d, d, batch_first=True))
        self.moe = torch_model.MoE(d, h, n, k)


class Seq2Seq(nn.Module):
    def __init__(self, vs, vt, d, h, n, k, residual, sigmoid):
        super().__init__()
        self.residual, self.sigmoid = residual, sigmoid
        self.encoder = Side(vs, d, h, n, k, 3)
        self.decoder = Side(vt, d, h, n, k, 2)
        self.decoder.attention = Attention(d)
        self.decoder.softmax = nn.Linear(d, vt)

    def block(self, out, x):
        return out + x if self.residual else out

    def moe(self, side, x):
        y = side.moe(x)
        return self.block(torch.sigmoid(y) if self.sigmoid else y, x)

    def lstm(self, layer, x):
        return self.block(layer(x[None])[0][0], x)

    def forward(self, src, tgt_in):
        e = self.encoder
        x = e.embedding(src)
        x = self.lstm(e.lstm2, self.lstm(e.lstm1, x))
        mem = self.lstm(e.lstm3, self.moe(e, x))
        d = self.decoder
        q = self.lstm(d.lstm1, d.embedding(tgt_in))
        y = self.block(d.attention(q, mem), q)
        y = self.lstm(d.lstm2, self.moe(d, y))
        return d.softmax(y)


def main():
    tensors, meta = torch_model.load_safetensors(sys.argv[1])
    assert meta["format"] == "moe-translate-1"
    cfg = configparser.ConfigParser()
    cfg.read_string(meta["config"])
    m = cfg["model"]
    vs = torch_model._vocab_from_text(meta["src_vocab"])
    vt = torch_model._vocab_from_text(meta["tgt_vocab"])
    model = Seq2Seq(len(vs), len(vt), m.getint("d_model"), m.getint("d_hidden"),
                    m.getint("n_experts"), m.getint("k"), m.getboolean("residual"),
                    m.getboolean("moe_sigmoid"))
    model.load_state_dict(tensors, strict=True)
    model = model.double().eval()
    si = {w: i for i, w in enumerate(vs)}
    ti = {w: i for i, w in enumerate(vt)}
    total, tokens = 0.0, 0
    with torch.no_grad():
        for s, t in zip(open(sys.argv[2], encoding="utf-8"), open(sys.argv[3], encoding="utf-8")):
            src = torch.tensor([si.get(w, 0) for w in s.split()] + [1])
            y = [ti.get(w, 0) for w in t.split()] + [1]
            logits = model(src, torch.tensor([1] + y[:-1]))
            total += nn.functional.cross_entropy(logits, torch.tensor(y), reduction="sum").item()
            tokens += len(y)
    print("%.9f" % (total / tokens))


main()
