"""Per-pixel anomaly maps: where in an image the decoder finds it unlikely.

For a model whose decoder factorises over the features,
``log p(x | z) = sum_d log p(x_d | z)``, the map of an image ``x`` is each pixel's share
of the reconstruction term of its anomaly score, averaged over the encoder,

    m_d(x) = -(1/k) sum_j log p(x_d | z_j),    z_1..k ~ q(z | x),

with the channels of a pixel summed.  Summed over the pixels it is
``-(1/k) sum_j log p(x | z_j)``, the Monte-Carlo estimate of ``-E_q log p(x | z)`` with
the same draws.  The terms are those of the model's ``log_joint`` (for the discretised
logistic: log densities of the dequantised pixel, ``log pmf + log 255``), so a map's
values are in nats and may be negative; only their differences across the image matter
to the eye.  For an energy-tilted model the map is its base decoder's: the tilt
``g(x)`` is one number per image and is not split over pixels.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .encoders import image_chw
from .errors import ConfigError

__all__ = ["pixel_anomaly_maps"]


@torch.no_grad()
def pixel_anomaly_maps(model, encoder, x: Tensor, image_shape: Sequence[int], k: int = 16,
                       batch_size: int = 256) -> Tensor:
    """Maps ``m(x)`` of shape ``(N, H, W)`` for the rows ``x`` (``(N, C*H*W)``), ``k``
    draws of ``q(z | x)`` per row (module docstring); rows go through in batches of
    ``batch_size``, each batch drawing its ``(k, batch)`` latents at once."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"maps need a positive integer number of draws k, got {k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"maps need a positive integer batch_size, got {batch_size!r}")
    if encoder is None or not callable(getattr(model, "pixel_log_probs", None)):
        raise ConfigError(f"per-pixel maps need a model whose decoder gives per-pixel log-probabilities and an "
                          f"encoder; {type(model).__name__} has none")
    try:
        c, h, w = image_chw(image_shape)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"per-pixel maps: {exc}") from None
    if x.dim() != 2 or x.shape[1] != c * h * w:
        raise ConfigError(f"per-pixel maps: expected rows of {c * h * w} = {c}x{h}x{w} values, "
                          f"got shape {tuple(x.shape)}")
    p = next(model.parameters())
    x = x.to(dtype=p.dtype, device=p.device)
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size]
        z = encoder(xb).sample((k,))
        terms = model.pixel_log_probs(xb, z)  # (k, B, D)
        out.append(-terms.mean(0).reshape(-1, c, h, w).sum(1))
    if not out:
        return torch.zeros(0, h, w, dtype=p.dtype, device=p.device)
    maps = torch.cat(out)
    if not bool(torch.isfinite(maps).all()):
        raise ConfigError("per-pixel maps: the decoder gave a non-finite log-probability "
                          f"({int((~torch.isfinite(maps)).sum())} of {math.prod(maps.shape)} map values)")
    return maps
