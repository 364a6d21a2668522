"""A VAE written and trained in plain PyTorch, then taken into an fvnce proof of concept.

Nothing here imports fvnce: this is the VAE a team already has.  It takes raw rows (its
own standardisation is part of the model, as buffers in its state_dict), so the poc
passes the rows on unchanged (``--transform`` and ``--dequantize`` default to ``none``
with ``--vae``).

Data: scikit-learn's breast-cancer table (bundled, no download), 30 features; benign
tumours are the normal rows.  The rows are split in two CSV files so that the VAE never
sees a row the proof of concept evaluates on:

* ``history.csv``: 150 benign rows, the VAE's own training data;
* ``poc.csv``: the other 207 benign rows and 30 malignant ones (label column ``diagnosis``).

Run::

    python examples/plain_vae.py --out vae_demo          # writes the CSVs and vae_demo/vae.pt
    fvnce poc --data vae_demo/poc.csv --label diagnosis --normal benign \\
        --vae examples/plain_vae.py:build --vae-weights vae_demo/vae.pt --out vae_demo/poc

``build()`` is the ``FUNCTION`` of ``--vae FILE.py:FUNCTION``: it returns
``(encoder, decoder)``; ``vae.pt`` is ``torch.save({"encoder": ..., "decoder": ...})`` of
their state_dicts.  ``--quick`` trains a few steps only (used by the tests).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.distributions import Independent, Normal
from torch.nn import functional as F

X_DIM, Z_DIM, HIDDEN = 30, 4, 64
N_HISTORY, N_ANOMALIES = 150, 30


class Encoder(nn.Module):
    """Raw rows -> q(z | x) = N(mu(x), diag sigma(x)^2), standardising inside."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(X_DIM))
        self.register_buffer("scale", torch.ones(X_DIM))
        self.body = nn.Sequential(nn.Linear(X_DIM, HIDDEN), nn.Tanh())
        self.loc = nn.Linear(HIDDEN, Z_DIM)
        self.raw_scale = nn.Linear(HIDDEN, Z_DIM)

    def forward(self, x):
        h = self.body((x - self.center) / self.scale)
        return Independent(Normal(self.loc(h), F.softplus(self.raw_scale(h)) + 1e-3), 1)


class Decoder(nn.Module):
    """z -> p(x | z) = N(m(z), diag s^2) in raw units (the standardisation undone)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(X_DIM))
        self.register_buffer("scale", torch.ones(X_DIM))
        self.net = nn.Sequential(nn.Linear(Z_DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, X_DIM))
        self.raw_sd = nn.Parameter(torch.full((X_DIM,), -1.0))

    def forward(self, z):
        loc = self.net(z) * self.scale + self.center
        return Independent(Normal(loc, (F.softplus(self.raw_sd) + 1e-3) * self.scale), 1)


def build():
    """(encoder, decoder): the FUNCTION that ``fvnce --vae examples/plain_vae.py:build`` calls."""
    return Encoder(), Decoder()


def write_data(out: Path, seed: int = 0) -> tuple[np.ndarray, Path]:
    """``history.csv`` and ``poc.csv`` (see the module docstring); the history rows."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x, y = data.data.astype(np.float64), data.target  # target 1 = benign
    rng = np.random.default_rng(seed)
    benign, malignant = rng.permutation(np.flatnonzero(y == 1)), rng.permutation(np.flatnonzero(y == 0))
    history, normal, anomalies = benign[:N_HISTORY], benign[N_HISTORY:], malignant[:N_ANOMALIES]
    names = [n.replace(" ", "_") for n in data.feature_names]
    out.mkdir(parents=True, exist_ok=True)
    np.savetxt(out / "history.csv", x[history], delimiter=",", header=",".join(names), comments="", fmt="%.10g")
    rows = np.concatenate([normal, anomalies])
    with open(out / "poc.csv", "w", encoding="utf-8") as fh:
        fh.write(",".join(names + ["diagnosis"]) + "\n")
        for i in rows:
            fh.write(",".join(f"{v:.10g}" for v in x[i]) + ("," + ("benign" if y[i] == 1 else "malignant")) + "\n")
    return x[history], out / "poc.csv"


def train(x: np.ndarray, steps: int, seed: int = 0) -> tuple[Encoder, Decoder]:
    """The ELBO, Adam, mini-batches of 64: a textbook VAE."""
    torch.manual_seed(seed)
    encoder, decoder = build()
    xt = torch.as_tensor(x, dtype=torch.float32)
    for m in (encoder, decoder):
        m.center.copy_(xt.mean(0))
        m.scale.copy_(xt.std(0).clamp_min(1e-6))
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=2e-3)
    prior = Independent(Normal(torch.zeros(Z_DIM), torch.ones(Z_DIM)), 1)
    for _ in range(steps):
        xb = xt[torch.randint(len(xt), (64,))]
        q = encoder(xb)
        z = q.rsample()
        elbo = decoder(z).log_prob(xb) + prior.log_prob(z) - q.log_prob(z)
        opt.zero_grad()
        (-elbo.mean()).backward()
        opt.step()
    return encoder.eval(), decoder.eval()


@torch.no_grad()
def anomaly_scores(encoder, decoder, x, k: int = 32, seed: int = 0) -> np.ndarray:
    """-log p(x) by importance sampling through the encoder (the IWAE estimate, k samples)."""
    torch.manual_seed(seed)
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    q = encoder(xt)
    z = q.sample((k,))
    prior = Independent(Normal(torch.zeros(Z_DIM), torch.ones(Z_DIM)), 1)
    log_w = decoder(z).log_prob(xt) + prior.log_prob(z) - q.log_prob(z)
    return -(torch.logsumexp(log_w, 0) - math.log(k)).numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for history.csv, poc.csv and vae.pt")
    parser.add_argument("--quick", action="store_true", help="a few hundred steps (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    history, poc_csv = write_data(out, args.seed)
    encoder, decoder = train(history, 300 if args.quick else 3000, args.seed)
    torch.save({"encoder": encoder.state_dict(), "decoder": decoder.state_dict()}, out / "vae.pt")
    s = anomaly_scores(encoder, decoder, history)
    print(f"trained on {len(history)} rows; mean -log p(x) on them {s.mean():.2f} nats; weights: {out / 'vae.pt'}")
    print(f"fvnce poc --data {poc_csv} --label diagnosis --normal benign --vae {Path(__file__)}:build "
          f"--vae-weights {out / 'vae.pt'} --out {out / 'poc'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
