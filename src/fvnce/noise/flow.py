"""Normalising-flow noise fitted by maximum likelihood (zuko MAF / NSF)."""

from __future__ import annotations

import warnings as _warnings

import torch
from torch import Tensor

from .base import (
    NoiseDistribution, binary_columns, constant_columns, floor_scale, opt_choice, opt_float,
    opt_int, population_std,
)

__all__ = ["FlowNoise"]


def _build(kind: str, dim: int, transforms: int, hidden: list[int]) -> torch.nn.Module:
    import zuko

    cls = zuko.flows.MAF if kind == "maf" else zuko.flows.NSF
    # randperm=False: feature orders are deterministic, so the module rebuilds exactly
    return cls(dim, transforms=transforms, hidden_features=tuple(hidden), randperm=False)


class FlowNoise(NoiseDistribution):
    r"""p_n(x) = p_flow((x - μ)/σ) / ∏_j σ_j, a normalising flow fitted by maximum likelihood.

    The most data-like noise that still has an exact density and fast sampling: use it
    when the model must learn fine structure (images, strongly dependent features) and
    simpler noises leave log w extreme (low effective sample size). Inputs are
    standardised per feature (μ, σ of the data; constant columns floored) and the affine
    map's log-determinant -Σ_j log σ_j is included, so the density is exact in x-space.
    The flow is fixed after fitting (parameters do not require grad).

    Options: ``flow="maf"`` | ``"nsf"``, ``transforms=3``, ``hidden=(64, 64)``,
    ``steps=300`` Adam steps, ``batch=256``, ``lr=1e-3``, ``weight_decay=0.0``.
    """

    name = "flow"

    def __init__(self, dim: int, flow: str, transforms: int, hidden: list[int], loc: Tensor,
                 scale: Tensor, weights: dict[str, Tensor]):
        super().__init__(dim, flow=flow, transforms=transforms, hidden=list(hidden), loc=loc,
                         scale=scale, weights=weights)
        self._loc, self._scale = loc, scale
        self._log_det = torch.log(scale).sum()
        with torch.random.fork_rng(devices=[]):  # module init must not touch the global RNG
            torch.manual_seed(0)
            module = _build(flow, dim, transforms, list(hidden))
        module = module.to(dtype=loc.dtype)
        module.load_state_dict(weights)
        module = module.to(loc.device)
        module.eval()
        module.requires_grad_(False)
        self._module = module

    @classmethod
    def _fit(cls, data: Tensor, seed: int = 0, flow: str = "maf", transforms: int = 3,
             hidden: tuple[int, ...] | list[int] = (64, 64), steps: int = 300, batch: int = 256,
             lr: float = 1e-3, weight_decay: float = 0.0) -> FlowNoise:
        flow = opt_choice(cls.name, "flow", flow, ("maf", "nsf"))
        transforms = opt_int(cls.name, "transforms", transforms)
        if isinstance(hidden, int):
            hidden = [hidden]
        try:
            hidden = [opt_int(cls.name, "hidden", h) for h in hidden]
        except TypeError:
            hidden = [opt_int(cls.name, "hidden", hidden)]
        steps = opt_int(cls.name, "steps", steps, low=0)
        batch = opt_int(cls.name, "batch", batch)
        lr = opt_float(cls.name, "lr", lr)
        weight_decay = opt_float(cls.name, "weight_decay", weight_decay, low_open=False)
        warns: list[str] = []
        n, d = data.shape
        if bool(binary_columns(data).all()):
            warns.append(f"{cls.name}: data is all binary but a flow is a density; "
                         "consider kde, gmm or marginals (exact pmfs)")
        x = data.double()
        mu = x.mean(0)
        std = floor_scale(population_std(x), constant_columns(x), "std", cls.name, warns)
        z = ((x - mu) / std).float()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = _build(flow, d, transforms, hidden)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
        bs = min(batch, n)
        module.train()
        for _ in range(steps):
            idx = torch.randint(n, (bs,), generator=gen)
            loss = -module().log_prob(z[idx]).mean()
            if not torch.isfinite(loss):
                _warnings.warn("flow noise: non-finite loss during fitting; step skipped")
                opt.zero_grad(set_to_none=True)
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 10.0)
            opt.step()
            sched.step()
        weights = {k: v.detach().to(data.dtype).clone() for k, v in module.state_dict().items()
                   if v.is_floating_point()}
        weights.update({k: v.detach().clone() for k, v in module.state_dict().items()
                        if not v.is_floating_point()})
        noise = cls(d, flow, transforms, hidden, loc=mu.to(data.dtype), scale=std.to(data.dtype),
                    weights=weights)
        noise.warnings = warns
        return noise

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            z = self._module().sample(torch.Size(sample_shape))
        return self._loc + self._scale * z

    def log_prob(self, x: Tensor) -> Tensor:
        z = (x.to(self._loc.dtype) - self._loc) / self._scale
        return self._module().log_prob(z) - self._log_det

    @property
    def module(self) -> torch.nn.Module:
        """The fitted zuko flow (in standardised coordinates), parameters frozen."""
        return self._module


