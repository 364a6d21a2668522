"""Per-example log-likelihood and data-vs-noise accuracy."""

from __future__ import annotations

import torch
from torch import Tensor

from .util import as_input, check_batch_size, check_k, log_px_tilde, noise_log_ratio, reference_tensor
from .log_z import LogZEstimate, estimate_log_partition


# --------------------------------------------------------------------------- likelihood
@torch.no_grad()
def log_likelihood(model, encoder, x: Tensor, k: int = 256, batch_size: int = 256,
                   log_z: LogZEstimate | float | None = None, noise=None) -> Tensor:
    """Per-example log-likelihood ``(N,)`` of the rows of ``x``.

    * Normalised model: the IWAE bound ``logsumexp_j [log p(x, z_j) - log q(z_j|x)] - log k``
      with ``z_j ~ q(z | x)``; it lies below ``log p(x)`` in expectation and tightens as
      ``k`` grows.  Enumerable discrete encoders are summed over exactly (then ``k`` is
      irrelevant and the value is exact).
    * Unnormalised model: the same estimate of ``log p~(x)`` (which includes ``-c``)
      minus ``log_z``: a :class:`LogZEstimate` or a float; when None it is computed by
      :func:`estimate_log_partition` (with ``noise`` if given).  The result is an
      *estimate*, as good as ``log Z`` (check its ESS), and no longer a bound.
    * ``encoder=None`` (fully observed models, e.g. an RBM trained by ``nce``): the
      closed-form ``model.log_unnormalised_marginal(x)`` (minus ``log Z`` if unnormalised).

    ``log_z`` is ignored for normalised models.  Against models whose density is known
    (the linear-Gaussian oracle, small RBMs), the estimate matches the truth within
    Monte Carlo error; ``tests/test_evaluate.py`` checks this.
    """
    check_k(k)
    check_batch_size(batch_size)
    x = as_input(model, x)
    lp = log_px_tilde(model, encoder, x, k, batch_size)
    if model.normalised:
        return lp
    if log_z is None:
        log_z = estimate_log_partition(model, encoder, noise=noise)
    return lp - float(log_z)


@torch.no_grad()
def noise_accuracy(model, encoder, x: Tensor, noise, k: int = 1, batch_size: int = 4096) -> float:
    """Balanced accuracy of the data-vs-noise classifier ``log r(x) > 0``.

    ``log r = log p~(x) - log p_n(x)`` (importance-sampled with ``k`` samples, exact for
    enumerated latents or ``encoder=None``) on the held-out data ``x`` and on as many
    fresh samples of ``noise``; the accuracy is the mean of the hit rates on both sides.
    0.5 means the model cannot tell data from noise.
    """
    check_k(k)
    check_batch_size(batch_size)
    x = as_input(model, x)
    ref = reference_tensor(model)
    data_lr = torch.cat([noise_log_ratio(model, encoder, noise, c, k) for c in x.split(batch_size)])
    noise_lr = []
    for start in range(0, x.shape[0], batch_size):
        y = noise.sample((min(batch_size, x.shape[0] - start),)).to(dtype=ref.dtype, device=ref.device)
        noise_lr.append(noise_log_ratio(model, encoder, noise, y, k))
    noise_lr = torch.cat(noise_lr)
    hit_data = (data_lr > 0).double().mean()
    hit_noise = (noise_lr <= 0).double().mean()
    return float(0.5 * (hit_data + hit_noise))


