"""The proof of concept: every noise candidate x every FVNCE rule, plus baselines, on one
data split; evaluated, compared, and one configuration recommended on validation data.

Output directory::

    DIR/runs/<name>/     one run directory per trained configuration
    DIR/summary.json     runs, baselines, metrics, the recommendation and its criteria
    DIR/report.html      the self-contained report (fvnce.report)

Each run's entry in ``summary.json`` has a ``status``: ``ok``; ``degraded`` (an FVNCE run
that ended clearly worse on validation data than the poc's VAE ``elbo-vae``, beyond
statistical noise: :func:`degradation`; the sentence with the numbers is in
``status_reason``); ``unreliable`` (its log-likelihood rests on importance weights with
Pareto k-hat > 0.7 or ESS < 5 %; the sentence is in ``status_reason``); ``diverged`` or
``failed`` (with ``error``). ``reliable`` says whether
its log-likelihood can be trusted (:func:`ll_reliability`: k-hat and ESS of the
importance weights behind log Z), ``warnings`` holds sentences for the report. The
recommendation (:func:`recommend`) is taken among the ``ok`` and reliable runs, the VAE
included, on validation data only; without anomaly labels it is the union
(``runs/union``, :func:`~fvnce.poc.choose.union_members`) of the best joint model and the
best one-component mixture when the poc trained both.  ``criteria`` records the thresholds
behind these verdicts (:mod:`fvnce.criteria`), so that the report reads them from the file.

The modules, in the order a poc runs them: :mod:`~fvnce.poc.plan` (configuration and grid),
:mod:`~fvnce.poc.grid` (training and evaluating the runs), :mod:`~fvnce.poc.assess`
(verdicts), :mod:`~fvnce.poc.choose` (the recommendation), :mod:`~fvnce.poc.union` (the
label-free union written to disk), :mod:`~fvnce.poc.production` (command lines),
:mod:`~fvnce.poc.extras` (cost and learning curve) and :mod:`~fvnce.poc.run` (all of it).
"""

from ..criteria import AUROC_MARGIN_MIN, NO_NOISE_TERM, SE_FACTOR, VAE_RUN, auroc_standard_error, find_vae
from .assess import assess_runs, degradation, ll_reliability
from .choose import LABEL_FREE, LABEL_FREE_UNION, UNION_RUN, recommend
from .plan import (BUDGETS, MIXTURES, TILT_OPTIONS, VAE_FINETUNED_RUN, PocConfig, default_noises, mixture_plan,
                   parse_rule, rule_label)
from .production import production_commands
from .run import run_poc

__all__ = ["AUROC_MARGIN_MIN", "BUDGETS", "LABEL_FREE", "LABEL_FREE_UNION", "MIXTURES", "NO_NOISE_TERM", "SE_FACTOR",
           "TILT_OPTIONS", "UNION_RUN", "VAE_FINETUNED_RUN", "VAE_RUN", "PocConfig", "assess_runs",
           "auroc_standard_error", "default_noises", "degradation", "find_vae", "ll_reliability", "mixture_plan",
           "parse_rule", "production_commands", "recommend", "rule_label", "run_poc"]
