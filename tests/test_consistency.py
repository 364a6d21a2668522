"""Statistical consistency of the estimators on models with a known truth.

* Unnormalised two-Gaussian mixture (Rhodes & Gutmann 2019, section 5.1): data from
  ``TwoGaussianMixture(theta*)`` with ``theta*`` drawn in [2, 6]; the errors of theta
  and of the log-normaliser ``c`` (against the exact ``log Z(theta*)``) must fall as
  the sample size grows from 500 to 5000, for ``fvnce`` with the KL and the power rule.
* Tiny RBM (6 visible, 3 hidden units): exact samples from its exact marginal (all 64
  visible states enumerated); after fitting, the learned log-normaliser must match the
  fitted model's exact log partition function and the learned pmf the true one.

Design choices (so that the tests measure the estimator and not the optimiser):

* The estimator is the finite-sample one of the papers: ``n`` data points and one fixed
  set of ``nu * n`` noise points, optimised full batch to convergence
  (:class:`FixedNoiseSample` hands the Trainer the same noise points at every step).
  With fresh noise at every step and a constant learning rate the final iterate would
  jitter by about the learning rate, which would hide the n = 5000 error.
* The noise is fitted on the data: ``make_noise("diag_gaussian", x)``, i.e.
  ``N(mean(x), std(x)^2)`` (the paper uses a Gaussian noise of fixed width; a fitted
  one is what a user of this library would pick).
* theta starts at the data's standard deviation.  From theta = 1 the fit often
  collapses to theta -> 0 (the narrow component gets no posterior mass and shrinks
  further), a local optimum of the likelihood that has nothing to do with consistency.
* Float64 throughout; every seed pinned, so the tests are deterministic.  The
  assertions compare mean squared errors over the draws with a factor-2 margin (the
  expected ratio for a 10-fold larger sample is about 10).

The default suite runs a small version (3 draws, 150 steps); ``-m slow`` the thorough
one (6 draws, 300 steps, medians as well).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.distributions import Distribution

from fvnce.encoders import BernoulliEncoder, CategoricalEncoder
from fvnce.models import RBM, TwoGaussianMixture
from fvnce.noise import make_noise
from fvnce.objectives import make_objective
from fvnce.train import TrainConfig, Trainer

from conftest import quiet

RULES = {"kl": {}, "power": {"alpha": 1.5}}
NU = 1


class FixedNoiseSample(Distribution):
    """A noise whose ``sample((m,))`` returns the same pre-drawn ``m`` points every time
    (other shapes, e.g. the Trainer's calibration draw, come from the fitted noise);
    ``log_prob`` is the fitted noise's exact density."""

    arg_constraints: dict = {}

    def __init__(self, noise: Distribution, y: torch.Tensor) -> None:
        self.noise, self.y = noise, y
        super().__init__(event_shape=noise.event_shape, validate_args=False)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        if tuple(sample_shape) == (self.y.shape[0],):
            return self.y
        return self.noise.sample(sample_shape)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.noise.log_prob(x)





def true_thetas(k: int) -> list[float]:
    g = torch.Generator().manual_seed(0)
    return (2.0 + 4.0 * torch.rand(k, generator=g, dtype=torch.float64)).tolist()


def fit_two_gaussians(theta_true: float, n: int, rule: str, seed: int, steps: int, lr: float):
    """Signed errors ``(theta - theta*, c - log Z(theta*))`` of one fvnce fit."""
    torch.manual_seed(seed)
    truth = TwoGaussianMixture(theta_true).double()
    x = truth.sample(n)
    fitted = make_noise("diag_gaussian", x)
    noise = FixedNoiseSample(fitted, fitted.sample((NU * n,)).double())
    torch.manual_seed(seed + 1)
    model = TwoGaussianMixture(float(x.std())).double()
    encoder = CategoricalEncoder(1, 2, hidden=(16,)).double()
    objective = make_objective("fvnce", rule=rule, nu=NU, **RULES[rule])
    cfg = TrainConfig(steps=steps, batch_size=n, lr=lr, seed=seed, progress=False, log_every=10 ** 6)
    Trainer(model, encoder, objective, noise, cfg, log=quiet).fit(x)
    with torch.no_grad():
        return model.theta.item() - theta_true, model.c.item() - truth.log_partition().item()


def errors_by_n(rule: str, k: int, steps: int, lr: float, sizes=(500, 5000)) -> dict[int, torch.Tensor]:
    """``{n: (k, 2) signed errors}``; each (draw, n) pair has its own data seed."""
    out = {}
    for n in sizes:
        errs = [fit_two_gaussians(th, n, rule, seed=1000 * i + n, steps=steps, lr=lr)
                for i, th in enumerate(true_thetas(k))]
        out[n] = torch.tensor(errs, dtype=torch.float64)
    return out


def assert_error_falls(errs: dict[int, torch.Tensor], medians: bool = False) -> None:
    small, large = errs[500], errs[5000]
    assert torch.isfinite(small).all() and torch.isfinite(large).all()
    mse_small, mse_large = (small ** 2).mean(0), (large ** 2).mean(0)
    for j, what in enumerate(("theta", "log-normaliser c")):
        detail = (f"{what}: MSE {mse_small[j]:.3g} at n=500, {mse_large[j]:.3g} at n=5000; "
                  f"errors {small[:, j].tolist()} vs {large[:, j].tolist()}")
        assert mse_large[j] < 0.5 * mse_small[j], detail
        if medians:
            assert large[:, j].abs().median() < small[:, j].abs().median(), detail
    # and the n = 5000 fits are accurate in absolute terms (theta in [2, 6])
    assert large[:, 0].abs().max() < 0.5 and large[:, 1].abs().max() < 0.05


@pytest.mark.parametrize("rule", sorted(RULES))
def test_two_gaussians_error_falls_with_n(rule):
    assert_error_falls(errors_by_n(rule, k=3, steps=150, lr=0.1))


@pytest.mark.slow
@pytest.mark.parametrize("rule", sorted(RULES))
def test_two_gaussians_error_falls_with_n_thorough(rule):
    assert_error_falls(errors_by_n(rule, k=6, steps=300, lr=0.05), medians=True)


# --------------------------------------------------------------------------------------
# tiny RBM: exact log partition function by enumeration
# --------------------------------------------------------------------------------------
D, H, N_RBM = 6, 3, 2000


def all_states(d: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=d)), dtype=torch.float64)


@pytest.fixture(scope="module")
def rbm_truth():
    """A 6x3 RBM with strong random weights, its exact pmf over all 2^6 visible states,
    and N_RBM exact samples drawn from that pmf."""
    g = torch.Generator().manual_seed(0)
    truth = RBM(D, H).double()
    with torch.no_grad():
        truth.W.copy_(1.5 * torch.randn(D, H, generator=g, dtype=torch.float64))
        truth.a.copy_(0.5 * torch.randn(D, generator=g, dtype=torch.float64))
        truth.b.copy_(0.5 * torch.randn(H, generator=g, dtype=torch.float64))
        v = all_states(D)
        p = truth.log_marginal(v).exp()
    assert abs(p.sum().item() - 1.0) < 1e-12
    idx = torch.multinomial(p, N_RBM, replacement=True, generator=g)
    return v, p, v[idx]


def fit_rbm(x: torch.Tensor, objective: str, rule: str, phases, **params):
    """Fit a fresh RBM full batch (fresh noise each step, as in ordinary training), in
    phases of ``(steps, lr)`` with a falling learning rate so the final iterate does not
    jitter.  Returns the model and its log-normaliser error right after calibration."""
    torch.manual_seed(1)
    model = RBM(D, H).double()
    encoder = BernoulliEncoder(D, H).double() if objective != "nce" else None
    noise = make_noise("marginals", x)
    obj = make_objective(objective, rule=rule, **params)
    calibrated = {}

    def first_step(trainer, rec):
        if trainer.step == 1 and not calibrated:
            calibrated["err"] = abs(trainer.model.c.item() - trainer.model.log_partition().item())

    for i, (steps, lr) in enumerate(phases):
        cfg = TrainConfig(steps=steps, batch_size=x.shape[0], lr=lr, seed=i, progress=False,
                          log_every=10 ** 6, calibrate=(i == 0))
        Trainer(model, encoder, obj, noise, cfg, log=quiet).fit(x, callback=first_step)
    return model, calibrated["err"]


RBM_CASES = {
    "fvnce-kl": ("fvnce", "kl", {}),
    "nce-logistic": ("nce", "logistic", {}),
}


@pytest.mark.parametrize("case", sorted(RBM_CASES))
def test_rbm_log_normaliser_matches_enumeration(rbm_truth, case):
    v, p_true, x = rbm_truth
    objective, rule, params = RBM_CASES[case]
    torch.manual_seed(1)
    init = RBM(D, H).double()
    with torch.no_grad():
        err_init = abs(init.c.item() - init.log_partition().item())  # c = 0 against log Z ~ 6
        tv_init = 0.5 * (init.log_marginal(v).exp() - p_true).abs().sum().item()

    model, err_calibrated = fit_rbm(x, objective, rule, [(300, 0.05), (150, 0.01)], **params)
    with torch.no_grad():
        err = abs(model.c.item() - model.log_partition().item())
        p_fit = model.log_marginal(v).exp()
    tv = 0.5 * (p_fit - p_true).abs().sum().item()
    kl = (p_true * (p_true.log() - p_fit.log())).sum().item()
    msg = (f"{case}: |c - log Z| {err:.4f} (init {err_init:.3f}, after calibration {err_calibrated:.3f}); "
           f"TV {tv:.4f} (init {tv_init:.3f}), KL {kl:.4f}")
    assert err < 0.1, msg
    assert err < 0.05 * err_init, msg
    # the empirical pmf of 2000 samples is itself about 0.07 from the truth in TV
    assert tv < 0.1 and tv < 0.25 * tv_init, msg
    assert kl < 0.03, msg
