"""What evaluation spends and what the poc trains on continuous images.

Continuous images are 8-bit pictures given as ``(C, H, W)`` (image folders, ELPV), modelled
by the convolutional VAE family with a discretised-logistic decoder
(:func:`fvnce.runs.build.image_model_options`).  At 64 x 64 a row has 4,096 values and
every decoder pass is a stack of transposed convolutions: a sample count chosen for
tables (tens of features) costs minutes per run here.  Tables and binary images keep
their settings exactly; only continuous images take the settings of this module.
"""

from __future__ import annotations

from typing import Any

#: noise samples of the log Z estimate and of the noise-term diagnostics, per candidate
LOG_Z_SAMPLES = 20000
#: the same on continuous images.  Why: at 64 x 64, 20,000 samples per candidate took
#: 355 of the 555 s of ``fvnce train --steps 5`` (decoder passes, profiled with one torch
#: thread); 2,000 keep the k-hat and effective-sample-size diagnostics meaningful
#: (reliability needs an ESS of at least 100 of them) at a tenth of the cost.
IMAGE_LOG_Z_SAMPLES = 2000


def continuous_images(image_shape, binary: bool) -> bool:
    """Whether the data are continuous images ``(C, H, W)``: the case this module plans for."""
    return not binary and image_shape is not None and len(image_shape) == 3


def log_z_samples(image_shape, binary: bool) -> int:
    """Noise (and proposal) samples per log Z candidate in a run's evaluation."""
    return IMAGE_LOG_Z_SAMPLES if continuous_images(image_shape, binary) else LOG_Z_SAMPLES


def run_log_z_samples(run) -> int:
    """:func:`log_z_samples` of a loaded run (:class:`fvnce.runs.loading.LoadedRun`)."""
    return log_z_samples(run.image_shape, bool(run.record.get("binary")))


# --------------------------------------------------------------------------- the poc
#: training steps per run of each budget preset on continuous images (tables and binary
#: images: fvnce.poc.BUDGETS).  Why: see IMAGE_NOISES; the default must finish a whole
#: poc of ELPV mono at 64 x 64 within 15 minutes on 2 cores (docs/images_poc.md has the
#: measurement).
IMAGE_BUDGETS = {"quick": 60, "default": 300, "long": 1500}
#: the poc's noise candidates on continuous images, for tilted models (other models keep
#: the defaults of tables).  Why: ``base`` (the VAE's own samples) is the only noise near
#: images: the ratio to it is exact, its log Z is reliable, the tilt learns what the VAE
#: got wrong, and a step costs a third of a VAE step (the base is frozen).  The fitted
#: noises are far from 4,096-pixel images; on ELPV mono at 64 x 64 (docs/images_poc.md)
#: ``diag_gaussian`` diverged at step 3 and ``kde`` at step 15 (non-finite losses with
#: exp_mode linear), and ``full_gaussian`` trains but costs 5 times a ``base`` step.
IMAGE_NOISES = ("base",)
#: latent dimensions of the poc's probabilistic PCA on continuous images (``linear_gaussian``
#: started at the maximum-likelihood solution).  Why: on ELPV mono cells at 32 x 32 the
#: PCA reconstruction error is the strongest baseline, and PPCA's likelihood with 128
#: dimensions ranks defects as well (test AUROC 0.952 / 0.915 / 0.943 on seeds 0-2, PCA
#: error 0.954 / 0.917 / 0.943; docs/images.md); 16 and 64 dimensions rank worse.
IMAGE_PPCA_DIMS = 128
#: the noise of the mixtures and PPCA on continuous images.  Why: they start at the data's
#: moments, so the noise only has to cover the data; the diagonal Gaussian costs one
#: elementwise pass at 4,096 pixels where the full Gaussian solves a 4,096 x 4,096 system.
IMAGE_SIMPLE_NOISE = "diag_gaussian"
#: the largest learning rate of the mixtures and PPCA on continuous images.  Why: they
#: start at the data's maximum-likelihood fit, whose parameters (intensities in [0, 1])
#: are of order 0.01-0.1, and Adam moves every parameter by about the learning rate per
#: step: at 1e-3, 150 FVNCE steps took PPCA's test AUROC on ELPV mono (seed 1) from 0.917
#: at its start to 0.908, and the power rule took the one-component mixture on poly from
#: 0.75 to 0.51; at 1e-4 both stay within 0.02 of their start (docs/images.md).
IMAGE_SIMPLE_LR = 1e-4
#: fractions of the learning curve: tables (and binary images), continuous images.  On
#: images each fraction retrains the VAE and the recommendation at full length: one
#: fraction keeps the budget.
LEARNING_CURVE = (0.25, 0.5)
IMAGE_LEARNING_CURVE = (0.5,)


def linear_plan(config, dataset) -> list[int]:
    """Latent dimensions of the probabilistic PCA runs of the poc: ``IMAGE_PPCA_DIMS`` on
    continuous images with ``model="auto"`` (capped below the training rows and pixels, so
    that variance is left for the noise level), none otherwise."""
    if config.model != "auto" or not continuous_images(dataset.image_shape, dataset.binary):
        return []
    k = min(IMAGE_PPCA_DIMS, dataset.train.shape[0] - 2, dataset.dim - 1)
    return [k] if k >= 1 else []


def poc_plan(config, dataset, log=lambda m: None):
    """The poc's settings (:class:`fvnce.poc.PocConfig`) with what was left to the data
    resolved: a copy.  Tables and binary images: the learning curve ``LEARNING_CURVE``,
    nothing else changes.  Continuous images: noises ``IMAGE_NOISES`` (tilted models, when
    none were given), a named budget in ``IMAGE_BUDGETS`` steps, the learning curve
    ``IMAGE_LEARNING_CURVE`` (when none was given); what was given is kept, and the plan
    is logged."""
    import dataclasses

    images = continuous_images(dataset.image_shape, dataset.binary)
    cfg = dataclasses.replace(config)
    if cfg.learning_curve is None:
        cfg.learning_curve = IMAGE_LEARNING_CURVE if images else LEARNING_CURVE
    if not images:
        return cfg
    chosen: list[str] = []
    if config.noises is None and cfg.model in ("auto", "tilted_vae"):
        cfg.noises = list(IMAGE_NOISES)
        chosen.append(f"noises {', '.join(cfg.noises)}")
    if isinstance(config.budget, str) and config.budget in IMAGE_BUDGETS:
        cfg.budget = IMAGE_BUDGETS[config.budget]
        chosen.append(f"{cfg.budget} steps per run (budget {config.budget})")
    if config.learning_curve is None:
        chosen.append(f"learning curve at {', '.join(f'{f:g}' for f in cfg.learning_curve)} of the training rows")
    if chosen:
        log(f"fvnce: note: continuous images: {'; '.join(chosen)} (the image plan; give --noises, --budget or "
            "--learning-curve to choose otherwise)")
    return cfg
