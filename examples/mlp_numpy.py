#!/usr/bin/env python3
"""The classic two-layer network in NumPy, for replaying `examples/mlp.rs` exactly.

    python3 examples/mlp_numpy.py DIR      # writes DIR/{x,y,w1,b1,w2,b2}.npy, trains, prints
    cargo run --release --example mlp -- --init DIR

Both print `Epoch N, Loss = x` every 200 epochs (and at 999) from the same start.
"""
import sys
from pathlib import Path

import numpy as np

out = Path(sys.argv[1] if len(sys.argv) > 1 else "mlp-init")
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
f32 = np.float32
x = rng.uniform(-1, 1, (5, 2)).astype(f32)
y = (0.7 * x[:, :1] - 0.4 * x[:, 1:] + 0.2).astype(f32)
w1 = rng.standard_normal((2, 3)).astype(f32)
b1 = np.zeros(3, f32)
w2 = rng.standard_normal((3, 1)).astype(f32)
b2 = np.zeros(1, f32)
for name, value in dict(x=x, y=y, w1=w1, b1=b1, w2=w2, b2=b2).items():
    np.save(out / f"{name}.npy", value)

lr = f32(0.01)
for epoch in range(1000):
    h = x @ w1 + b1
    a = np.maximum(h, 0)
    pred = a @ w2 + b2
    diff = pred - y
    loss = np.mean(diff**2)
    if epoch % 200 == 0 or epoch == 999:
        print(f"Epoch {epoch}, Loss = {loss:.8g}")
    g_pred = (2 / diff.size) * diff
    g_w2, g_b2 = a.T @ g_pred, g_pred.sum(0)
    g_h = (g_pred @ w2.T) * (h > 0)
    g_w1, g_b1 = x.T @ g_h, g_h.sum(0)
    w1, b1, w2, b2 = w1 - lr * g_w1, b1 - lr * g_b1, w2 - lr * g_w2, b2 - lr * g_b2
