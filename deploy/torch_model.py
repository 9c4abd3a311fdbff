"""The MoE language model of this project in PyTorch, and a loader for what
`moectl export` writes (a bundle folder: model.safetensors, config.ini,
vocab.txt; or the .safetensors file alone, which carries both as metadata).

    import torch_model
    model, vocab, config = torch_model.load("bundle")   # an nn.Module, eval mode
    ids = torch_model.encode(vocab, "the cat sat")       # words -> ids (<unk> = 0)
    logits, state = model(torch.tensor([ids]))           # (1, T, V): next-word logits
    print(torch_model.perplexity(model, vocab, "valid.txt", batch=10))

The model: Embedding -> LSTM -> MoE (top-k of x W_gate, no noise at
evaluation, softmax over the top k, weighted sum of the experts' outputs;
with moe = hierarchical the same over groups, each group such a MoE of its
own experts) -> LSTM -> Linear, with the residual adds and the optional sigmoid of the
configuration. Parameter names and layouts are PyTorch's (strict load).
Command line: python3 torch_model.py BUNDLE CORPUS [BATCH] prints the
perplexity of CORPUS (one sentence per line), computed in float64.
"""
import configparser
import io
import json
import math
import os
import struct
import sys
from urllib.parse import unquote_to_bytes

import torch
from torch import nn


def load_safetensors(path):
    """The F32 tensors of a safetensors file by name, and its metadata."""
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
        t = torch.frombuffer(bytearray(data[begin:end]), dtype=torch.float32)
        out[name] = t.reshape(meta["shape"])  # little-endian F32, as on x86
    return out, header.get("__metadata__", {})


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
        return self.mix(x, self.experts)

    def mix(self, x, parts):
        """Softmax over the top k of x W_gate, times the chosen parts' outputs."""
        clean = x @ self.w_gate
        top_v, top_i = clean.topk(self.k, dim=-1)
        gates = torch.softmax(top_v, dim=-1)
        out = torch.stack([e(x) for e in parts], dim=1)  # (N, n, d)
        picked = out.gather(1, top_i.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return (gates.unsqueeze(-1) * picked).sum(1)


class HierarchicalMoE(MoE):
    """--moe hierarchical: the top k_primary of x W_gate (softmaxed) over
    groups; each group a MoE of its own (top k of x W_gate_i, softmaxed,
    over its experts); y = sum_i G_p,i sum_j G_i,j E_ij(x). Names:
    moe.w_gate (d, groups), moe.groups.I.w_gate (d, B),
    moe.groups.I.experts.J.w1.weight ..."""

    def __init__(self, d, h, groups, per_group, k_primary, k):
        nn.Module.__init__(self)
        self.k = k_primary
        self.w_gate = nn.Parameter(torch.zeros(d, groups))
        self.w_noise = nn.Parameter(torch.zeros(d, groups))
        self.groups = nn.ModuleList([MoE(d, h, per_group, k) for _ in range(groups)])

    def forward(self, x):
        return self.mix(x, self.groups)


class LM(nn.Module):
    def __init__(self, v, d, h, n, k, residual, sigmoid, hierarchy=None):
        """hierarchy: None (flat MoE) or (groups, experts_per_group, k_primary)."""
        super().__init__()
        self.residual, self.sigmoid = residual, sigmoid
        self.embedding = nn.Embedding(v, d)
        self.lstm1 = nn.LSTM(d, d, batch_first=True)
        self.moe = HierarchicalMoE(d, h, *hierarchy, k) if hierarchy else MoE(d, h, n, k)
        self.lstm2 = nn.LSTM(d, d, batch_first=True)
        self.softmax = nn.Linear(d, v)

    def forward(self, tok, state=None):
        """Next-word logits (B, T, V) of tok (B, T); with `state` (what the
        previous call returned as its second value) the LSTMs go on from
        there, so a long text can be read in pieces. Returns (logits, state)."""
        s1, s2 = state if state is not None else (None, None)
        a0 = self.embedding(tok)
        a1, s1 = self.lstm1(a0, s1)
        if self.residual:
            a1 = a1 + a0
        b, t, d = a1.shape
        m = self.moe(a1.reshape(b * t, d)).reshape(b, t, d)
        if self.sigmoid:
            m = torch.sigmoid(m)
        a2 = m + a1 if self.residual else m
        a3, s2 = self.lstm2(a2, s2)
        if self.residual:
            a3 = a3 + a2
        return self.softmax(a3), (s1, s2)


def _vocab_from_text(text):
    # one word per line; '%' and bytes that are not UTF-8 are written %HH
    return [unquote_to_bytes(w).decode("utf-8", "surrogateescape") for w in text.split("\n") if w != ""]


def load(path):
    """(model, vocab, config) of an export bundle folder or file."""
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    file = os.path.join(path, "model.safetensors") if os.path.isdir(path) else path
    state, meta = load_safetensors(file)
    config = configparser.ConfigParser()
    ini = os.path.join(folder, "config.ini")
    if os.path.isdir(path) and os.path.exists(ini):
        config.read(ini)
    else:
        config.read_file(io.StringIO(meta["config"]))
    voc = os.path.join(folder, "vocab.txt")
    if os.path.isdir(path) and os.path.exists(voc):
        vocab = [w.rstrip("\n") for w in open(voc, encoding="utf-8", errors="surrogateescape")]
    else:
        vocab = _vocab_from_text(meta["vocab"])
    get = lambda s, k: config.get(s, k)
    hierarchy = None
    if config.get("model", "moe", fallback="flat") == "hierarchical":
        hierarchy = tuple(int(get("model", k)) for k in ("groups", "experts_per_group", "k_primary"))
    model = LM(
        len(vocab),
        int(get("model", "d_model")),
        int(get("model", "d_hidden")),
        int(get("model", "n_experts")),
        int(get("model", "k")),
        get("model", "residual") == "true",
        get("model", "moe_sigmoid") == "true",
        hierarchy,
    )
    model.load_state_dict({k: v for k, v in state.items() if not k.endswith((".adam_m", ".adam_v", ".fadam"))}, strict=True)
    return model.eval(), vocab, config


def encode(vocab, text):
    """Word ids of text, <eos> (1) after each line; unknown words are <unk> (0)."""
    index = {w: i for i, w in enumerate(vocab)}
    ids = []
    for line in text.splitlines():
        ids.extend(index.get(w, 0) for w in line.split())
        ids.append(1)
    return ids


def perplexity(model, vocab, corpus, batch, unroll=35):
    """Per-token perplexity of a corpus file, as moectl eval computes it:
    the token stream cut into `batch` streams, every next word predicted,
    read `unroll` tokens at a time with the LSTM state carried (memory stays
    that of one piece, in float64)."""
    ids = encode(vocab, open(corpus, encoding="utf-8", errors="surrogateescape").read())
    L = (len(ids) - 1) // batch
    x = torch.tensor([ids[b * L : b * L + L] for b in range(batch)])
    y = torch.tensor([ids[b * L + 1 : b * L + L + 1] for b in range(batch)])
    m = model.double()
    nll, state = 0.0, None
    with torch.no_grad():
        for t in range(0, L, unroll):
            logits, state = m(x[:, t : t + unroll], state)
            nll += nn.functional.cross_entropy(
                logits.reshape(-1, len(vocab)), y[:, t : t + unroll].reshape(-1), reduction="sum"
            ).item()
    return math.exp(nll / (batch * L))


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: torch_model.py BUNDLE CORPUS [BATCH]")
    model, vocab, config = load(sys.argv[1])
    batch = int(sys.argv[3]) if len(sys.argv) == 4 else int(config.get("train", "eval_batch"))
    unroll = int(config.get("train", "unroll"))
    print(f"{perplexity(model, vocab, sys.argv[2], batch, unroll):.10g}")


if __name__ == "__main__":
    main()
