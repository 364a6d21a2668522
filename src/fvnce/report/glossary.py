"""The glossary at the end of every report."""

from __future__ import annotations

from .html import esc, section

__all__ = ["glossary"]


def glossary() -> str:
    items = [
        ("AUROC (area under the ROC curve)",
         "The probability that a randomly chosen anomalous item gets a higher anomaly score "
         "than a randomly chosen normal item. 1.0 is perfect, 0.5 is guessing."),
        ("AUPRC (area under the precision-recall curve)",
         "Like AUROC but focused on the anomalies; it is more informative when anomalies are "
         "rare. Its value for random guessing equals the share of anomalies."),
        ("Alarm threshold",
         "The anomaly score above which an item raises an alarm. It is set on validation data for a target "
         "false-alarm rate (default 1 %): the conformal quantile of the normal validation items' scores, so that "
         "new normal items exceed it at most that often on average. 'fvnce score' marks each row's alarm."),
        ("False alarms per 1,000 normal items; detection rate",
         "At the alarm threshold: how many of the normal test items raised an alarm (and how many that makes "
         "per 1,000), and how many of the anomalous test items did. A count seen on a few hundred items says "
         "little about the true rate, so it comes with its 99 % range (exact binomial, Clopper-Pearson): the "
         "rates under which the count seen is not unusual. When the normal test items are fewer than one "
         "expected false alarm at the target (fewer than 100 for 1 %), zero false alarms is what a threshold "
         "working at the target gives too: the report then says the target cannot be checked. The report also "
         "gives the range a threshold working as designed produces on that many items. Rates are never "
         "rounded to 0 % or 100 % unless they are exact."),
        ("FPR@95TPR (false alarms at 95% detection)",
         "Set the alarm threshold so that 95% of anomalies are caught; this is the share of "
         "normal items that would then be flagged by mistake. Lower is better."),
        ("Log-likelihood (nats per example)",
         "How probable the model finds the held-out test data; higher (closer to zero) means a better fit of "
         "that model. Values marked \u201c(estimate)\u201d come from a model whose normalising "
         "constant had to be estimated, so they are approximate; other values are lower bounds. With anomaly "
         "labels it is not how the recommendation is chosen (that is the validation AUROC): between model "
         "families (a VAE, a diagonal Gaussian mixture) a higher log-likelihood does not mean a better "
         "detector; a model that explains more of the data, the anomalies' features included, can separate "
         "anomalies worse."),
        ("Noise accuracy",
         "How often the model tells real data apart from artificial noise. Around 50% means it "
         "cannot; close to 100% means the task was easy (the noise may be too unlike the data "
         "to teach much)."),
        ("Noise distribution",
         "The artificial \u201cfake data\u201d the model learns to reject during training. Noise "
         "that resembles the data more closely usually teaches the model more."),
        ("Rule",
         "The scoring rule used to compare data and noise during training (for example "
         "kl, power, shifted_log or logistic). Different rules weigh mistakes differently and "
         "can be more or less stable."),
        ("Degraded",
         "A run that ended clearly worse on validation data than the VAE: by more than twice the "
         "statistical uncertainty of the difference (and, for AUROC, by at least 0.02); the "
         "log-likelihood is compared only for runs that started from the VAE. It is never recommended."),
        ("Mixture runs (names ending in -mix1, -mix4)",
         "A mixture of 1 or 4 Gaussians that treats the features as independent within each component, "
         "trained by the same rule, not started from the VAE (on images it starts at the pixels' means "
         "and spreads). It cannot learn how the features move together, so a row "
         "that is extreme in one feature stays improbable even when it follows the normal rows' "
         "correlations; on some tables that makes it the better detector, though its log-likelihood is "
         "lower."),
        ("PPCA runs (names ending in -ppca and a number, images)",
         "Probabilistic PCA: each image is a point of a low-dimensional linear space (the number of "
         "dimensions in the name) plus pixel noise. It starts at the best fit of that kind to the "
         "training images and is then trained by the same rule. It scores an image by how far it lies "
         "from that space and how unusual its place in it is: the likelihood counterpart of PCA "
         "reconstruction error, strong on aligned images such as solar cells of one type."),
        ("Union of runs (the recommendation without labels)",
         "One detector made of two runs: the most probable model of the features together and the most "
         "probable one-component mixture (independent features). Each run's score is put in units of its "
         "own spread on the validation rows, and the union's score is the larger of the two, so an item "
         "raises an alarm when either run finds it extreme. Without labels nothing says which of the two "
         "kinds of anomaly the data holds; the union covers both. Score new data with fvnce score on its "
         "folder, runs/union."),
        ("Unreliable (a run's status); k-hat and ESS of log Z",
         "An estimated log-likelihood rests on importance sampling of the normaliser log Z. The Pareto "
         "k-hat describes the tail of the importance weights (below 0.5 good, up to 0.7 usable, above 0.7 "
         "unreliable: the estimate can be far off however many samples are drawn); the effective sample "
         "size (ESS) is the share of samples that actually carry the estimate (below 5% is too few). "
         "\u201cUnreliable\u201d in this report means only this: a run whose log-likelihood is unreliable "
         "is never ranked by it nor recommended."),
        ("Noise term: heavy-tailed weights",
         "A diagnostic of training, not of the results: the training objective's noise term is itself "
         "estimated by importance sampling, and its weights (k-hat above 0.7 or ESS below 5%) can be "
         "heavy-tailed. Training then followed a noisy estimate of its objective; it may have learned less "
         "than it could, and a noise distribution closer to the data, or more noise samples, may do better. "
         "It does not touch the figures the choice rests on: the log-likelihood (through log Z, with its own "
         "k-hat and ESS) and the detection figures are measured afterwards on validation and test data, so "
         "for a chosen run they stand as shown."),
        ("Training curves with spikes",
         "When a few steps have losses far outside the rest (numerical spikes), the loss axis is cut at the "
         "range of the other steps so the curves stay readable; the points beyond it are drawn as triangles on "
         "the edge and counted in the plot, with the largest value."),
        ("Training events",
         "Automatic interventions during training: a restart after a numerical problem, a change "
         "of the objective's stabilisation (the rule's weight frozen outside a band of log ratios; "
         "it stays a proper rule with the same minimiser and a bound), and warnings such as "
         "heavy-tailed weights."),
        ("Validation vs test data",
         "Validation data is used to choose between configurations; test data is kept apart "
         "and only used to report the final figures, so they are not flattered by the choice."),
    ]
    body = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items)
    return section("glossary", "How to read this report",
                   "Short explanations of the terms used above.",
                   f'<dl class="glossary">{body}</dl>')
