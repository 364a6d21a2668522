"""Mixture noises fitted by EM: Gaussian mixture (scikit-learn) or Bernoulli mixture (binary data)."""

from __future__ import annotations

import warnings as _warnings

import numpy as np
import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli, Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal,
)

from .base import (
    TorchBackedNoise, binary_columns, constant_columns, floor_scale, opt_choice, opt_float,
    opt_int, population_std,
)

__all__ = ["MixtureNoise"]


class MixtureNoise(TorchBackedNoise):
    r"""p_n(x) = Σ_k π_k p_k(x), fitted by EM.

    Continuous data: Gaussian components p_k = N(μ_k, Σ_k) (``covariance_type`` "full" or
    "diag"), fitted by scikit-learn's GaussianMixture on data standardised per feature
    (``reg_covar`` is added to the diagonal in those standardised units), then mapped back.
    Multimodal data (operating regimes of a machine, clusters of customers) is where a
    mixture beats a single Gaussian.

    All-binary data: Bernoulli mixture p_k(x) = ∏_j θ_kj^x_j (1-θ_kj)^(1-x_j), fitted by
    EM in log space (Beta(1,1) smoothing of θ, Dirichlet(1) of π); ``discrete`` is True.

    The number of components is reduced to N when N < ``n_components``.
    Options: ``n_components=10``, ``covariance_type="full"``, ``reg_covar=1e-3``,
    ``max_iter=100``.
    """

    name = "gmm"

    def __init__(self, dim: int, kind: str, logits: Tensor, loc: Tensor | None = None,
                 scale: Tensor | None = None):
        super().__init__(dim, kind=kind, logits=logits, loc=loc, scale=scale)
        mix = Categorical(logits=logits, validate_args=False)
        if kind == "bernoulli":
            comp = Independent(Bernoulli(logits=loc, validate_args=False), 1, validate_args=False)
            self.discrete = True
        elif kind == "full":
            comp = MultivariateNormal(loc, scale_tril=scale, validate_args=False)
        else:
            comp = Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)
        self._dist = MixtureSameFamily(mix, comp, validate_args=False)

    @classmethod
    def _fit(cls, data: Tensor, seed: int = 0, n_components: int = 10,
             covariance_type: str = "full", reg_covar: float = 1e-3,
             max_iter: int = 100) -> MixtureNoise:
        n_components = opt_int(cls.name, "n_components", n_components)
        covariance_type = opt_choice(cls.name, "covariance_type", covariance_type, ("full", "diag"))
        reg_covar = opt_float(cls.name, "reg_covar", reg_covar)
        max_iter = opt_int(cls.name, "max_iter", max_iter)
        n, d = data.shape
        k = min(n_components, n)
        warns: list[str] = []
        if k < n_components:
            warns.append(f"{cls.name}: only {n} data rows; using {k} components instead of {n_components}")
        if bool(binary_columns(data).all()):
            logits, theta_logits = _bernoulli_em(data.double().numpy(), k, max_iter, seed)
            noise = cls(d, "bernoulli", logits=torch.from_numpy(logits).to(data.dtype),
                        loc=torch.from_numpy(theta_logits).to(data.dtype))
            noise.warnings = warns
            return noise
        from sklearn.mixture import GaussianMixture

        x = data.double()
        mu = x.mean(0)
        std = floor_scale(population_std(x), constant_columns(x), "std", cls.name, warns)
        z = ((x - mu) / std).numpy()
        if n >= 2:
            gm = GaussianMixture(k, covariance_type=covariance_type, reg_covar=reg_covar,
                                 max_iter=max_iter, random_state=seed)
            with _warnings.catch_warnings():
                _warnings.simplefilter("ignore")
                gm.fit(z)
            weights, means, covs = gm.weights_, gm.means_, gm.covariances_
        else:  # one row: a single component at the point, unit variance in standardised units
            weights, means = np.ones(1), z.copy()
            covs = np.eye(d)[None] if covariance_type == "full" else np.ones((1, d))
        logits = torch.from_numpy(np.log(np.clip(weights, 1e-300, None)))
        loc = torch.from_numpy(means) * std + mu
        if covariance_type == "full":
            chol = torch.linalg.cholesky(torch.from_numpy(covs))
            scale = std[:, None] * chol  # S chol(C)
        else:
            scale = torch.from_numpy(covs).sqrt() * std
        noise = cls(d, covariance_type, logits=logits.to(data.dtype), loc=loc.to(data.dtype),
                    scale=scale.to(data.dtype))
        noise.warnings = warns
        return noise


def _bernoulli_em(x: np.ndarray, k: int, max_iter: int, seed: int, tol: float = 1e-6):
    """EM for a K-component Bernoulli mixture in log space. Returns (log π, logit θ)."""
    rng = np.random.default_rng(seed)
    n, d = x.shape
    resp = rng.dirichlet(np.ones(k), size=n)  # random soft assignment
    prev = -np.inf
    for _ in range(max(1, max_iter)):
        # M step (Beta(1,1) / Dirichlet(1) smoothing keeps θ, π away from 0 and 1)
        nk = resp.sum(0)
        theta = (resp.T @ x + 1.0) / (nk[:, None] + 2.0)
        log_pi = np.log((nk + 1.0) / (n + k))
        # E step
        ll = x @ np.log(theta).T + (1 - x) @ np.log1p(-theta).T + log_pi  # (n, k)
        mx = ll.max(1, keepdims=True)
        norm = mx + np.log(np.exp(ll - mx).sum(1, keepdims=True))
        resp = np.exp(ll - norm)
        cur = float(norm.mean())
        if cur - prev < tol:
            break
        prev = cur
    return log_pi, np.log(theta) - np.log1p(-theta)
