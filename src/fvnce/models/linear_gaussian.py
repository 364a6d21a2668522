"""Linear-Gaussian latent model: the exact oracle of the test suite.

    z ~ N(0, I_k),   x | z ~ N(W z + b, sigma^2 I_D)

Marginal ``x ~ N(b, W W^T + sigma^2 I)``; posterior ``z | x ~ N(m, S)`` with
``S = (I + W^T W / sigma^2)^{-1}`` and ``m = S W^T (x - b) / sigma^2``.  With
``q = p(z|x)`` every log-weight equals ``log p(x) - log p_n(x)`` whatever ``z``, so
every bound is exact with one sample.  ``normalised=False`` adds a learnable
log-normaliser ``c`` (the true value is 0).

With ``init="pca"`` the model is probabilistic PCA: training starts from the maximum
likelihood solution of Tipping & Bishop (1999) on the training rows
(:meth:`LinearGaussian.start_from_data`), ``W = U_k (L_k - sigma^2 I)^(1/2)`` from the
leading ``k`` eigenpairs of the sample covariance and ``sigma^2`` the mean of the others,
and its run's encoder is the exact posterior (:class:`~fvnce.encoders.ExactPosterior`;
a learned linear encoder passed to ``start_from_data`` is set to it).  On images this is the
latent-variable counterpart of the PCA reconstruction error that inspection engineers use.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, LowRankMultivariateNormal, MultivariateNormal, Normal

from ..encoders import MIN_SCALE
from .base import LatentVariableModel

__all__ = ["LinearGaussian"]


class LinearGaussian(LatentVariableModel):
    #: how the parameters start: ``random`` or ``pca`` (the maximum-likelihood solution on
    #: the training rows, set by the training run through :meth:`start_from_data`)
    INITS = ("random", "pca")

    def __init__(self, x_dim: int, z_dim: int, sigma: float = 0.5, normalised: bool = True,
                 generator: torch.Generator | None = None, init: str = "random") -> None:
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        if init not in self.INITS:
            raise ValueError(f"init must be one of {', '.join(self.INITS)}, got {init!r}")
        if not 1 <= z_dim <= x_dim:
            raise ValueError(f"z_dim must lie between 1 and the number of features ({x_dim}), got {z_dim}")
        #: whether the training run calls :meth:`start_from_data` before the first step
        self.starts_from_data = init == "pca"
        self.W = nn.Parameter(torch.randn(x_dim, z_dim, generator=generator) / math.sqrt(z_dim))
        self.b = nn.Parameter(0.1 * torch.randn(x_dim, generator=generator))
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))
        self.normalised = normalised
        if not normalised:
            self._init_log_normaliser()
        self.z_dim = z_dim

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        sigma = self.log_sigma.exp()
        prior = Normal(torch.zeros((), dtype=z.dtype, device=z.device), 1.0).log_prob(z).sum(-1)
        mean = z @ self.W.T + self.b
        lik = Normal(mean, sigma).log_prob(x).sum(-1)
        return prior + lik - self._shift()

    def pixel_log_probs(self, x: Tensor, z: Tensor) -> Tensor:
        """``log N(x_d; (W z + b)_d, sigma^2)`` per feature, shape ``(*S, B, D)``: the terms
        whose sum over ``d`` is ``log p(x | z)`` (per-pixel maps, :mod:`fvnce.maps`)."""
        return Normal(z @ self.W.T + self.b, self.log_sigma.exp()).log_prob(x)

    def marginal(self) -> LowRankMultivariateNormal:
        """``N(b, W W^T + sigma^2 I)`` in low-rank form: its density and samples cost
        ``O(D k^2)`` (Woodbury), never a ``D x D`` matrix, which at 128 x 128 RGB pixels
        would need 19 GB."""
        diag = (self.log_sigma.exp() ** 2).expand(self.W.shape[0])
        return LowRankMultivariateNormal(self.b, self.W, diag, validate_args=False)

    def log_marginal(self, x: Tensor) -> Tensor:
        return self.marginal().log_prob(x)

    def log_unnormalised_marginal(self, x: Tensor) -> Tensor:
        return self.log_marginal(x) - self._shift()

    def log_partition(self) -> Tensor:
        return torch.zeros((), dtype=self.W.dtype, device=self.W.device)

    def posterior(self, x: Tensor) -> Distribution:
        k = self.z_dim
        s2 = self.log_sigma.exp() ** 2
        eye = torch.eye(k, dtype=self.W.dtype, device=self.W.device)
        prec = eye + self.W.T @ self.W / s2
        cov = torch.linalg.inv(prec)
        mean = (x - self.b) @ self.W @ cov.T / s2
        tril = torch.linalg.cholesky(cov)
        return MultivariateNormal(mean, scale_tril=tril.expand(*x.shape[:-1], k, k))

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        return self.marginal().sample((n,))

    @torch.no_grad()
    def start_from_data(self, x: Tensor, encoder: nn.Module | None = None, quantum: float | None = None) -> str:
        """Set ``W``, ``b`` and ``sigma`` to the maximum-likelihood probabilistic PCA of the
        rows ``x`` (N, D) (Tipping & Bishop 1999, eqs. 7-8), in float64: ``b`` the mean,
        ``sigma^2`` the mean of the ``D - k`` smallest eigenvalues of the sample covariance
        (divided by N; eigenvalues beyond the rank ``N - 1`` are zero), ``W`` the leading ``k``
        eigenvectors scaled by ``sqrt(max(L_i - sigma^2, 0))``.  Its columns are orthogonal,
        so the posterior ``N(M^-1 W^T (x - b), sigma^2 M^-1)``, ``M = W^T W + sigma^2 I``, has a
        diagonal covariance, and a linear :class:`~fvnce.encoders.GaussianEncoder` (no hidden
        layer) is set to it exactly.  ``quantum``: the step of values that are quantised (8-bit
        images in [0, 1]: 1/255); every eigenvalue then gains ``quantum^2 / 12``, the variance
        of uniform dequantisation, so that the density is that of the data spread over their
        quantisation bins (comparable with a discretised decoder's likelihood) and never
        sharper than the quantisation.  ValueError when ``x`` cannot fix ``sigma`` (fewer than
        two rows, or no variance left outside the ``k`` leading directions).  Returns a line
        for the log."""
        n, d = x.shape
        k = self.z_dim
        if n < 2:
            raise ValueError(f"probabilistic PCA needs at least 2 training rows, got {n}")
        xd = x.to(torch.float64)
        mean = xd.mean(0)
        s = torch.linalg.svd(xd - mean, full_matrices=False)
        eig = s.S ** 2 / n  # the nonzero eigenvalues of the sample covariance, largest first
        u = s.Vh.T  # (D, min(N, D)) eigenvectors
        rest = (eig.sum() - eig[:k].sum()) / (d - k) if d > k else eig.new_zeros(())
        if not float(rest) > 1e-9 * float(eig.sum()) / d:  # round-off of the rank's last eigenvalue
            raise ValueError(f"probabilistic PCA with {k} latent dimensions leaves no variance in the other "
                             f"directions of {n} training rows; use fewer latent dimensions (z_dim)")
        # past the check k < rank: the k leading eigenpairs exist
        jitter = (quantum or 0.0) ** 2 / 12
        eig, rest = eig + jitter, rest + jitter
        w = u[:, :k] * (eig[:k] - rest).clamp_min(0).sqrt()
        self.W.copy_(w)
        self.b.copy_(mean)
        self.log_sigma.copy_(0.5 * rest.log())
        if encoder is not None:
            _set_exact_posterior(encoder, w, mean, rest)
        kept = float((eig[:k].sum() - jitter * k) / (eig.sum() - jitter * eig.numel()))
        return f"probabilistic PCA start: {k} latent dimensions keep {kept:.1%} of the variance, sigma {float(rest.sqrt()):.3g}"


def _set_exact_posterior(encoder: nn.Module, w: Tensor, b: Tensor, s2: Tensor) -> None:
    """Set a linear Gaussian encoder (``net`` a single ``Linear`` giving location and raw
    scale) to the exact posterior of ``W`` with orthogonal columns; other encoders are
    left as they are."""
    net = getattr(encoder, "net", None)
    layers = list(net) if isinstance(net, nn.Sequential) else []
    if len(layers) != 1 or not isinstance(layers[0], nn.Linear):
        return
    lin = layers[0]
    k = w.shape[1]
    m = (w * w).sum(0) + s2  # diagonal of M = W^T W + sigma^2 I
    gain = w / m  # (D, k): loc = (x - b) W M^-1
    std = (s2 / m).sqrt() - MIN_SCALE
    raw = std + torch.log(-torch.expm1(-std))  # softplus^-1
    weight = torch.zeros_like(lin.weight, dtype=torch.float64)
    weight[:k] = gain.T
    bias = torch.zeros_like(lin.bias, dtype=torch.float64)
    bias[:k] = -(b @ gain)
    bias[k:] = raw
    lin.weight.copy_(weight)
    lin.bias.copy_(bias)
