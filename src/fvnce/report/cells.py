"""Table cells and headline cards shared by the poc page and the run page: rules, log-likelihoods
with their reliability, importance-weight diagnostics, and the three headline figures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..diagnostics import weights_reliable
from .html import DASH, bounded, esc, fmt_frac, fmt_num, fmt_pct
from .load import RunFiles, finite

__all__ = ["NOISE_TERM_WORDS", "Entry", "Ref", "headline", "ll_cell", "rule_label", "weights_cell"]

#: what a noise-term diagnostic above the limits is called: not "unreliable", which is the
#: run status of an unreliable log-likelihood (the noise term plays no part in that figure)
NOISE_TERM_WORDS = "heavy-tailed weights"


@dataclass
class Entry:
    """One curve source for the ROC / training / samples sections."""

    name: str
    run: RunFiles | None = None  # None for baselines
    roc: dict | None = None
    scores: dict | None = None
    auroc: Any = None
    recommended: bool = False


def rule_label(rule: Any, params: Any = None) -> str:
    """Plain-text rule name with its numeric parameters, e.g. ``power (alpha=0.5)``."""
    if isinstance(rule, dict):
        params = {k: v for k, v in rule.items() if k in ("alpha", "c")}
        rule = rule.get("name")
    if not rule:
        return DASH
    if isinstance(params, dict) and params:
        inner = ", ".join(f"{k}={v:g}" if finite(v) is not None else f"{k}={v}"
                          for k, v in sorted(params.items()))
        return f"{rule} ({inner})"
    return str(rule)


def _diag_text(khat: Any, ess_fraction: Any) -> str:
    k, e = finite(khat), finite(ess_fraction)
    parts = ([f"k-hat {k:.2f}"] if k is not None else []) + ([f"ESS fraction {e:.1e}"] if e is not None else [])
    return ", ".join(parts)


def ll_cell(value: Any, kind: Any, ess_fraction: Any = None, khat: Any = None, reliable: Any = None) -> str:
    """Log-likelihood with an "(estimate)" marker when it is not a proper bound, and a
    warning naming k-hat and ESS when it is unreliable: ``reliable`` false, or (for an
    estimate through log Z, when ``reliable`` is unknown) k-hat > KHAT_MAX or ESS fraction
    < ESS_FRACTION_MIN."""
    text = fmt_num(value, 2)
    if text == DASH:
        return text
    estimate = kind == "estimate"
    if reliable is False or (estimate and weights_reliable(khat, ess_fraction, reliable) is False):
        diag = _diag_text(khat, ess_fraction) if estimate else ""
        why = f": log Z weights have {esc(diag)}" if diag else ""
        text += f' <span class="small bad-text">({"estimate, " if estimate else ""}unreliable{why})</span>'
    elif estimate:
        text += ' <span class="small">(estimate)</span>'
    return text


def weights_cell(diag: Any, noise_term: bool = False) -> str:
    """``0.42 · 12.0%`` (k-hat · ESS) of a set of importance weights.  Beyond the limits:
    log Z weights in red with "unreliable" (the log-likelihood rests on them); the training
    objective's noise-term weights (``noise_term``) in amber with "heavy-tailed weights",
    a diagnostic of training only, so that "unreliable" keeps one meaning."""
    if not isinstance(diag, dict):
        return DASH
    k, e = finite(diag.get("khat")), finite(diag.get("ess_fraction"))
    if k is None and e is None:
        return DASH
    text = f'<span class="nowrap">{fmt_num(k, 2)} ·</span> {fmt_pct(e, 2 if e is not None and e < 0.01 else 1)}'
    if weights_reliable(k, e, diag.get("reliable")) is False:
        if noise_term:
            return f'<span class="warn-text">{text} {NOISE_TERM_WORDS}</span>'
        return f'<span class="bad-text">{text} unreliable</span>'
    return text


@dataclass
class Ref:
    """A figure to compare a headline card with: another run or a baseline."""

    name: str
    what: str  # e.g. "the VAE", "baseline"
    auroc: Any = None
    fpr95: Any = None
    ll: Any = None
    model: Any = None


def _compare_line(refs: Sequence[Ref], key: str, fmt: Callable[[Any], str]) -> str:
    have = [r for r in refs if finite(getattr(r, key)) is not None]
    if not have:
        return ""
    items = "; ".join(f"{esc(r.name)} ({esc(r.what)}): {fmt(getattr(r, key))}" for r in have)
    return f'<span class="card-compare">Compare: {items}.</span>'


def headline(auroc: Any, fpr95: Any, ll: Any, ll_kind: Any, *, who: str = "this run", model: Any = None,
             refs: Sequence[Ref] = (), chosen_by: str | None = None) -> str:
    """Three headline figures of ``who`` on the held-out test data, each saying what it is
    and what it is compared with (``refs``).  ``chosen_by``: "auroc" or "log_likelihood",
    the criterion of the recommendation, which the log-likelihood card explains: with labels
    the choice is by validation AUROC, and log-likelihoods of different model families are
    not a detection criterion (so a lower one can win)."""
    cards = []
    a = finite(auroc)
    cards.append(f"<div>Detection quality (test AUROC)<b>{fmt_frac(a, 3)}</b>"
                 + (f"An anomalous test item outranks a normal one {bounded(a, 100.0, 1)}% of the time; 0.5 is "
                    "guessing. " if a is not None else "Not available (no anomaly labels in the test data). ")
                 + _compare_line(refs, "auroc", lambda v: fmt_frac(v, 3)) + "</div>")
    f = finite(fpr95)
    cards.append(f"<div>False alarms at 95% detection (test)<b>{fmt_pct(f)}</b>"
                 + (f"To catch 95% of the anomalies, {fmt_pct(f)} of normal items would be flagged; lower is "
                    "better. " if f is not None else "Not available (no anomaly labels in the test data). ")
                 + _compare_line(refs, "fpr95", fmt_pct) + "</div>")
    est = " (estimate)" if ll_kind == "estimate" else ""
    why = ""
    v = finite(ll)
    if chosen_by == "auroc" and v is not None:
        lower = [r for r in refs if finite(r.ll) is not None and finite(r.ll) > v]
        families = sorted({str(x) for x in [model, *(r.model for r in refs)] if x})
        here = f" (here {esc(', '.join(families))})" if len(families) > 1 else ""
        why = (" Not how the choice was made: that is the validation AUROC, measured with the anomaly labels. "
               f"Log-likelihoods of different model families{here} are not a detection criterion: "
               + ("a lower one can be the better detector, as here." if lower
                  else "a higher one need not be the better detector."))
    elif chosen_by == "log_likelihood" and v is not None:
        why = (" Without anomaly labels it is the criterion of the choice: the highest validation "
               "log-likelihood among reliable estimates.")
    cards.append(f"<div>Test log-likelihood{esc(est)}<b>{fmt_num(ll, 2)}</b>"
                 + ("nats per example; higher: the model finds the held-out data more probable."
                    if v is not None else "Not available for this configuration.")
                 + why + " " + _compare_line(refs, "ll", lambda x: f"{fmt_num(x, 2)} nats") + "</div>")
    versus = [w for w in ("the VAE", "the baselines")
              if any((r.what == "the VAE") == (w == "the VAE") for r in refs)]
    against = f", each compared with {' and '.join(versus)}" if versus else ""
    return (f'<p class="headline-what">Figures of <b>{esc(who)}</b> on the held-out test data{against}:</p>'
            f'<div class="headline">{"".join(cards)}</div>')
