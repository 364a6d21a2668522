"""The names of the files fvnce writes, in one place (no imports: every layer reads them).

A run directory::

    config.json        everything needed to rebuild model, noise and data (plain JSON)
    preprocess.json    the fitted preprocessing, re-applied at scoring time
    noise.pt           the fitted noise (tensors and plain data only)
    checkpoint.pt      latest training state; best.pt the best-validation parameters
    metrics.jsonl      training curves
    alarm.json         the alarm threshold and the validation scores it was set from (runs/alarm.py)
    union.json         a union of runs (runs/union.py): beside alarm.json, in place of the rest
    evaluation.json    metrics on validation and test data; samples.npy model samples
    user_vae.py        the copy of the user's own VAE module (fvnce.user_vae), when there is one
    report.html        the HTML report (fvnce.report)

A poc folder holds ``summary.json`` (written last), ``report.html`` and its runs under ``runs/``.
"""

__all__ = ["ALARM_NAME", "BEST_NAME", "CHECKPOINT_NAME", "CONFIG_NAME", "EVALUATION_NAME", "METRICS_NAME",
           "NOISE_NAME", "PREPROCESS_NAME", "REPORT_NAME", "SAMPLES_NAME", "SUMMARY_NAME", "UNION_NAME",
           "USER_VAE_FILE"]

CONFIG_NAME = "config.json"
PREPROCESS_NAME = "preprocess.json"
NOISE_NAME = "noise.pt"
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
METRICS_NAME = "metrics.jsonl"
ALARM_NAME = "alarm.json"
UNION_NAME = "union.json"  # a union of runs (runs/union.py) in place of config.json
EVALUATION_NAME = "evaluation.json"
SAMPLES_NAME = "samples.npy"
USER_VAE_FILE = "user_vae.py"
REPORT_NAME = "report.html"
SUMMARY_NAME = "summary.json"
