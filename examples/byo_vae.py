"""Bring your own VAE: train plain PyTorch modules with fvnce, then continue with FVNCE.

The user's VAE below is ordinary PyTorch and knows nothing about fvnce:

* ``Encoder(x)`` returns a Distribution over ``z`` (``Independent(Normal)``),
* ``Decoder(z)`` returns a Distribution over ``x`` (``Independent(Bernoulli(logits))``).

Steps:

1. wrap the decoder as a model, ``FromVAE(decoder, z_dim=...)`` (standard normal prior),
   and pre-train decoder and encoder *as they are* with the ``elbo`` objective;
2. tilt the pre-trained VAE, ``EnergyTiltedVAE.from_vae(vae, x_dim)``: an unnormalised
   model ``log p~(x, z) = log p_vae(x, z) + g(x) - c`` that starts out as the
   pre-trained VAE (``g = 0``), and continue with ``fvnce`` (KL rule) against a noise
   made of the pixel marginals of the (binary) data;
3. check the learned log-normaliser ``c`` against ``log Z`` importance-sampled through
   the base VAE (the pixel-marginal noise is far from the data, so ``c`` alone is not
   to be trusted; see the design guide).

Data: scikit-learn's 8x8 digits (bundled, no download), binarised at 8/16.
Run ``python examples/byo_vae.py`` (about half a minute on a laptop CPU) or with
``--quick`` (a few seconds; used by the tests).
"""

from __future__ import annotations

import argparse
import copy
import math

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal
from torch.nn import functional as F

from fvnce.models import EnergyTiltedVAE, FromVAE
from fvnce.noise import make_noise
from fvnce.objectives import log_weights, make_objective
from fvnce.train import TrainConfig, Trainer

Z_DIM = 8


# -- the user's own VAE: plain PyTorch ------------------------------------------------
class Encoder(nn.Module):
    def __init__(self, x_dim: int, z_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU())
        self.loc = nn.Linear(hidden, z_dim)
        self.raw_scale = nn.Linear(hidden, z_dim)

    def forward(self, x):
        h = self.body(x)
        return Independent(Normal(self.loc(h), F.softplus(self.raw_scale(h)) + 1e-4), 1)


class Decoder(nn.Module):
    def __init__(self, z_dim: int, x_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, x_dim))

    def forward(self, z):
        return Independent(Bernoulli(logits=self.net(z)), 1)


# -- helpers ----------------------------------------------------------------------------
def load_binary_digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor(load_digits().data >= 8, dtype=torch.float32)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    x = x[perm]
    return x[:1500], x[1500:]


@torch.no_grad()
def mean_elbo(model, encoder, x: torch.Tensor, k: int = 16, shift: float = 0.0) -> float:
    """``E_q[log p~(x, z) - log q(z | x)] + shift`` averaged over ``k`` samples and the rows
    of ``x``; for an unnormalised model ``shift = c - log Z`` makes it a bound on the
    normalised ``log p(x)``."""
    torch.manual_seed(123)
    return log_weights(model, encoder, x, 0.0, k).log_w.mean().item() + shift


@torch.no_grad()
def log_partition_via_base(model: EnergyTiltedVAE, n: int) -> tuple[float, float]:
    """``log Z`` of the tilted model (without its ``c``) by importance sampling through its
    normalised base VAE, ``log mean exp g(x_i)``, ``x_i ~ p_vae``; and the effective
    sample size of the weights."""
    torch.manual_seed(7)
    g = model.g(model.base.sample(n))
    log_z = (torch.logsumexp(g, 0) - math.log(n)).item()
    ess = torch.exp(2 * torch.logsumexp(g, 0) - torch.logsumexp(2 * g, 0)).item()
    return log_z, ess


@torch.no_grad()
def noise_accuracy(model, encoder, x: torch.Tensor, noise, k: int = 16) -> float:
    """Balanced accuracy of the classifier ``log r > 0`` separating ``x`` from noise."""
    torch.manual_seed(321)
    y = noise.sample((x.shape[0],)).to(x.dtype)
    lr_x = log_weights(model, encoder, x, noise.log_prob(x), k).log_ratio()
    lr_y = log_weights(model, encoder, y, noise.log_prob(y), k).log_ratio()
    return 0.5 * ((lr_x > 0).float().mean() + (lr_y <= 0).float().mean()).item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few training steps only (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", default="marginals", help="noise: marginals (pixel marginals) or gmm (Bernoulli mixture)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest for this tiny model)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pre_steps, fv_steps = (60, 40) if args.quick else (2500, 300)

    train, test = load_binary_digits(args.seed)
    x_dim = train.shape[1]
    encoder, decoder = Encoder(x_dim, Z_DIM), Decoder(Z_DIM, x_dim)

    # 1. pre-train the user's modules, unchanged, with the ELBO
    vae = FromVAE(decoder, z_dim=Z_DIM)
    cfg = TrainConfig(steps=pre_steps, batch_size=128, lr=2e-3, seed=args.seed, progress=False, log_every=50)
    Trainer(vae, encoder, make_objective("elbo"), None, cfg, log=lambda msg: None).fit(train)
    print(f"pre-trained VAE ({pre_steps} ELBO steps): test ELBO {mean_elbo(vae, encoder, test):.2f} nats")

    # 2. start FVNCE from the pre-trained weights
    noise = make_noise(args.noise, train, seed=args.seed)
    model = EnergyTiltedVAE.from_vae(vae, x_dim, hidden=(64,))   # copies the pre-trained VAE
    fv_encoder = copy.deepcopy(encoder)                          # and the pre-trained encoder
    objective = make_objective("fvnce", rule="kl", k=1, nu=1)
    print(f"tilted model at start: test ELBO {mean_elbo(model, fv_encoder, test):.2f} nats (= the VAE's: g = 0, c = 0), "
          f"noise accuracy {noise_accuracy(model, fv_encoder, test, noise):.3f}")
    cfg = TrainConfig(steps=fv_steps, batch_size=128, lr=2e-4, seed=args.seed, progress=False, log_every=50)
    result = Trainer(model, fv_encoder, objective, noise, cfg, log=lambda msg: None).fit(train)
    last = [r for r in result.history if "loss" in r][-1]
    print(f"after {fv_steps} fvnce steps (kl rule): train loss {last['loss']:.4f}, "
          f"train noise accuracy {last.get('accuracy', float('nan')):.3f}, learned c = {model.c.item():.3f}, "
          f"retries {result.retries}")

    # The learned c is only an estimate of log Z.  The base VAE is a normalised proposal
    # for the tilted model: Z = E_{x ~ p_vae}[exp g(x)] (always report the ESS).
    log_z, ess = log_partition_via_base(model, 2000 if args.quick else 20000)
    print(f"log Z by importance sampling through the base VAE: {log_z:.3f} (ESS {ess:.0f}); "
          f"learned c = {model.c.item():.3f}")
    print(f"tilted model after fvnce: test ELBO {mean_elbo(model, fv_encoder, test, shift=model.c.item() - log_z):.2f} "
          f"nats (normalised with the importance-sampled log Z), "
          f"test noise accuracy {noise_accuracy(model, fv_encoder, test, noise):.3f}")
    ok = math.isfinite(last["loss"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
