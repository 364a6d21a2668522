"""The model-proposal weights of an energy-tilted VAE over its own base are
``exp(g(x) - c)`` exactly, not the float32 difference of two large log-joints."""

import math

import torch

from fvnce.evaluate import estimate_log_partition
from fvnce.models import EnergyTiltedVAE, make_model


def test_tilted_vae_model_proposal_weights_are_the_tilt_exactly():
    # 2,000 Gaussian pixels: log p_base(x, z) is some thousands of nats, where float32 has
    # a spacing of ~2e-4; the difference log p~ - log p_base of two such numbers would
    # carry that error (and tie draws on its grid) instead of g(x) - c
    torch.manual_seed(0)
    vae, _ = make_model("vae", 2000, z_dim=2, hidden=(8,), likelihood="gaussian")
    model = EnergyTiltedVAE(vae, 2000, hidden=(4,), tilt_bound=1.0, freeze_base=True)
    last = [m for m in model.tilt.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.normal_(last.weight, std=2.0)
    with torch.no_grad():
        model.log_normaliser.fill_(0.3)
        torch.manual_seed(1)
        x, z = vae.sample_joint(500)
        assert float(vae.log_joint(x, z).abs().min()) > 1000  # the regime where float32 cancels
        lw = (model.g(x) - model.log_normaliser).double()
    want = float(torch.logsumexp(lw, 0)) - math.log(500)
    torch.manual_seed(1)
    est = estimate_log_partition(model, n=500, proposals=("model_proposal",))
    assert abs(est.log_z - want) < 1e-12
    assert est.candidates["model_proposal"]["n"] == 500
