"""A second pair of twin modules for the trace harness: a 2-layer MLP with LayerNorm, written once
in PyTorch and once in Jittor with the same structure and parameter names, so the tests show
that alignment.model_trace works for any twins, not only GPT-2."""
from __future__ import annotations

import numpy as np

WIDTH, HIDDEN, CLASSES = 16, 32, 5


def init_state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"norm.weight": 1.0 + 0.1 * rng.standard_normal(WIDTH).astype(np.float32),
            "norm.bias": 0.1 * rng.standard_normal(WIDTH).astype(np.float32),
            "fc1.weight": 0.3 * rng.standard_normal((HIDDEN, WIDTH)).astype(np.float32),
            "fc1.bias": 0.1 * rng.standard_normal(HIDDEN).astype(np.float32),
            "fc2.weight": 0.3 * rng.standard_normal((CLASSES, HIDDEN)).astype(np.float32),
            "fc2.bias": 0.1 * rng.standard_normal(CLASSES).astype(np.float32)}


def torch_mlp(state: dict, dtype: str = "float32"):
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(WIDTH)
            self.fc1 = nn.Linear(WIDTH, HIDDEN)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(HIDDEN, CLASSES)

        def forward(self, x, labels):
            logits = self.fc2(self.act(self.fc1(self.norm(x))))
            return logits, nn.functional.cross_entropy(logits, labels)

    model = MLP()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(state[name]))
    return model.to(getattr(torch, dtype))


def jittor_mlp(state: dict):
    from jittor_impl.runtime import jt
    nn = jt.nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(WIDTH)
            self.fc1 = nn.Linear(WIDTH, HIDDEN)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(HIDDEN, CLASSES)

        def execute(self, x, labels):
            logits = self.fc2(self.act(self.fc1(self.norm(x))))
            return logits, nn.cross_entropy_loss(logits, labels)

    model = MLP()
    params = dict(model.named_parameters())
    for name, value in state.items():
        params[name].assign(jt.array(value))
    return model


def batch(seed: int = 0, rows: int = 8) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((rows, WIDTH)).astype(np.float32),
            "labels": rng.integers(0, CLASSES, rows)}
