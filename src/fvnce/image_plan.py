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
#: fractions of the learning curve: tables (and binary images), continuous images.  On
#: images each fraction retrains the VAE and the recommendation at full length: one
#: fraction keeps the budget.
LEARNING_CURVE = (0.25, 0.5)
IMAGE_LEARNING_CURVE = (0.5,)


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
