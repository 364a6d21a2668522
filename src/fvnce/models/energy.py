"""Unnormalised latent-variable models with neural energies.

* :class:`EnergyTiltedVAE` -- a VAE joint tilted by a learned function of ``x``:
  ``log p~(x, z) = log p_base(x, z) + g(x) - c``.  Starting from ``g = 0`` it *is* the
  base VAE (a pre-trained VAE is a natural start), and the base VAE is a good importance
  proposal for its partition function ``Z = E_{p_base}[exp g(x)]``.

  Staying honest.  An unbounded tilt can hide mass from finitely many noise samples
  (spikes at training points), and then ``log Z`` through any proposal rests on a few
  weights.  ``tilt_bound=B`` makes ``g = B tanh(h / B)``, so ``|g| <= B``: the model's
  density stays within ``e^{+-B}`` of its base, the weights ``exp(g - c)`` of ``Z``
  through the base lie in an interval of ratio ``e^{2B}``, and their Pareto k-hat cannot
  exceed zero (bounded weights).  ``freeze_base=True`` trains the tilt and ``c`` only;
  with the base frozen the base is a fixed distribution and can serve as the noise
  (:class:`fvnce.noise.BaseModelNoise`), for which ``r(x) = exp(g(x) - c)`` exactly.
  On images the tilt is a small CNN (:class:`ConvTilt`).
* :class:`MLPEnergy` -- ``log p~(x, z) = -E(x, z) - |z|^2/2 - lam |x|^2/2 - c`` with
  ``E`` an MLP of ``(x, z)``; the quadratic terms keep it integrable.  ``energy_bound``
  bounds ``|E|`` so that the Gaussian confinement is a reliable proposal for ``log Z``.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Normal

from ..encoders import conv_stages, conv_widths, image_chw, mlp
from .base import LatentVariableModel
from .discretized import BINS, to_bins

__all__ = ["ConvTilt", "EnergyTiltedVAE", "GaussianReference", "MLPEnergy"]


def _check_bound(name: str, value, allow_bool: bool = False) -> float | None:
    """``value`` as a float bound, or None; ValueError unless it is None or a positive
    finite number (a bool counts as one only with ``allow_bool``)."""
    if value is None:
        return None
    if not (isinstance(value, (int, float)) and (allow_bool or not isinstance(value, bool))
            and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {name}={value!r}")
    return float(value)


def _soft_bound(h: Tensor, bound: float | None) -> Tensor:
    """``bound * tanh(h / bound)``: ``h`` squashed smoothly into ``(-bound, bound)``; ``h`` when unbounded."""
    return h if bound is None else bound * torch.tanh(h / bound)


class ConvTilt(nn.Module):
    """The tilt network ``h(x)`` of an energy-tilted model on ``(C, H, W)`` images:
    stride-2 3x3 convolutions (depth from :func:`~fvnce.encoders.conv_stages`, widths
    :func:`~fvnce.encoders.conv_widths` of ``channels``), then an MLP to one number;
    ``x`` arrives flattened, the output has shape ``(..., 1)``.

    ``grid=True`` maps each input to its 8-bit bin first (``round(255 x) / 255``,
    clamped to [0, 1]), as the discretised-logistic base does: the tilted model is then
    constant within every bin, a pmf on the 8-bit grid like its base, and a noise sample
    between grid values cannot be told from the data point at its bin centre.
    """

    def __init__(self, image_shape: Sequence[int], channels: int = 16, hidden: int = 64,
                 stages: int | None = None, grid: bool = False) -> None:
        super().__init__()
        self.image_shape = image_chw(image_shape)
        c, h, w = self.image_shape
        n = conv_stages(self.image_shape, stages)
        widths = conv_widths(channels, n)
        layers: list[nn.Module] = []
        for c_in, c_out in zip([c, *widths], widths):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.SiLU()]
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.conv = nn.Sequential(*layers)
        self.head = mlp([widths[-1] * h * w, hidden, 1])
        self.grid = grid

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        if self.grid:
            x = to_bins(x) / (BINS - 1)
        h = self.conv(x.reshape(-1, *self.image_shape))
        return self.head(h.flatten(1)).reshape(*lead, 1)


class EnergyTiltedVAE(LatentVariableModel):
    """``log p~(x, z) = log p_base(x, z) + g(x) - c`` (see the module docstring).

    ``tilt_bound``: ``None`` (unbounded ``g = h``) or ``B > 0`` (``g = B tanh(h/B)``);
    ``freeze_base``: the base's parameters get no gradient; ``tilt``: the network ``h``
    (``x -> (..., 1)``, e.g. :class:`ConvTilt`), default an MLP with ``hidden`` layers.
    The last linear layer of the tilt starts at zero, so the model starts as its base.
    """

    normalised = False

    def __init__(self, base: LatentVariableModel, x_dim: int, hidden: Sequence[int] = (128,),
                 tilt_bound: float | None = None, freeze_base: bool = False, tilt: nn.Module | None = None) -> None:
        super().__init__()
        bound = _check_bound("tilt_bound", tilt_bound)
        self.base = base
        self.tilt = mlp([x_dim, *hidden, 1]) if tilt is None else tilt
        last = [m for m in self.tilt.modules() if isinstance(m, nn.Linear)][-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.tilt_bound = bound
        if freeze_base:
            self.base.requires_grad_(False)
        self._init_log_normaliser()

    @classmethod
    def from_vae(cls, vae: LatentVariableModel, x_dim: int, hidden: Sequence[int] = (128,), copy_base: bool = True,
                 tilt_bound: float | None = None, freeze_base: bool = False, tilt: nn.Module | None = None):
        """Start from a (pre-trained) normalised model; ``copy_base=False`` shares its weights."""
        return cls(copy.deepcopy(vae) if copy_base else vae, x_dim, hidden, tilt_bound, freeze_base, tilt)

    def g(self, x: Tensor) -> Tensor:
        return _soft_bound(self.tilt(x).squeeze(-1), self.tilt_bound)

    def log_ratio_to_base(self, x: Tensor) -> Tensor:
        """``log p~(x) - log p_base(x) = g(x) - c``, exact (the tilt depends on ``x`` only)."""
        return self.g(x) - self.log_normaliser

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        return self.base.log_joint(x, z) + self.g(x) - self.log_normaliser

    def proposal(self) -> LatentVariableModel:
        return self.base

    def pixel_log_probs(self, x: Tensor, z: Tensor) -> Tensor:
        """The base decoder's per-feature ``log p_base(x_d | z)`` (the tilt ``g(x) - c`` is
        one number per image, not a sum over pixels)."""
        return self.base.pixel_log_probs(x, z)

    def sample(self, n: int) -> Tensor:  # pragma: no cover - documented limitation
        raise NotImplementedError("EnergyTiltedVAE has no exact sampler; use fvnce.evaluate.sample "
                                  "(importance resampling through the base model)")


class GaussianReference(LatentVariableModel):
    """``x ~ N(0, I / lam)``, ``z ~ N(0, I)``: the normalised confinement of :class:`MLPEnergy`,
    used as its importance proposal for ``log Z``."""

    normalised = True

    def __init__(self, x_dim: int, z_dim: int, lam: float) -> None:
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.register_buffer("x_scale", torch.tensor(1.0 / math.sqrt(lam)))

    def _dists(self):
        zero = torch.zeros((), dtype=self.x_scale.dtype, device=self.x_scale.device)
        return Normal(zero, self.x_scale), Normal(zero, torch.ones_like(self.x_scale))

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        px, pz = self._dists()
        return px.log_prob(x).sum(-1) + pz.log_prob(z).sum(-1)

    @torch.no_grad()
    def sample_joint(self, n: int) -> tuple[Tensor, Tensor]:
        px, pz = self._dists()
        return px.sample((n, self.x_dim)), pz.sample((n, self.z_dim))

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        return self.sample_joint(n)[0]


class MLPEnergy(LatentVariableModel):
    """``log p~(x, z) = -E(x, z) - |z|^2/2 - lam |x|^2/2 - c`` (module docstring).

    ``energy_bound=B`` makes ``E = B tanh(E_raw / B)``: the model then stays within a
    factor ``e^{+-B}`` of its Gaussian confinement, which serves as a reliable importance
    proposal for ``log Z`` (:meth:`proposal`; weights in an interval of ratio ``e^{2B}``).
    """

    normalised = False

    def __init__(self, x_dim: int, z_dim: int = 4, hidden: Sequence[int] = (128, 128), lam: float = 0.05,
                 energy_bound: float | None = None) -> None:
        super().__init__()
        if lam <= 0:
            raise ValueError(f"lam must be positive to keep the model integrable, got {lam}")
        bound = _check_bound("energy_bound", energy_bound, allow_bool=True)  # True is accepted (as 1.0), as before
        self.energy = mlp([x_dim + z_dim, *hidden, 1])
        self.lam, self.z_dim, self.x_dim = lam, z_dim, x_dim
        self.energy_bound = bound
        self._init_log_normaliser()

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        xb = x.expand(*z.shape[:-1], x.shape[-1])
        e = _soft_bound(self.energy(torch.cat([xb, z], dim=-1)).squeeze(-1), self.energy_bound)
        return -e - 0.5 * (z ** 2).sum(-1) - 0.5 * self.lam * (xb ** 2).sum(-1) - self.log_normaliser

    def proposal(self) -> LatentVariableModel | None:
        """The Gaussian confinement (normalised), when the energy is bounded."""
        if self.energy_bound is None:
            return None
        ref = GaussianReference(self.x_dim, self.z_dim, self.lam)
        return ref.to(dtype=self.log_normaliser.dtype, device=self.log_normaliser.device)
