"""Shares and counts as text, never rounded to 0 or to the whole unless exact (the report
and the command line both write them; numbers only, no imports beyond the standard ones)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["DASH", "bounded", "finite", "fmt_count", "fmt_frac", "fmt_pct"]

#: what a missing number is written as
DASH = "—"


def finite(x: Any) -> float | None:
    """``x`` as a float if it is a finite number (not a bool), else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def bounded(frac: float, scale: float = 1.0, digits: int = 1) -> str:
    """``frac * scale`` for a share ``frac`` in [0, 1], with ``digits`` decimals or as many
    more as it takes never to show 0 or ``scale`` (100 %, 1,000 per 1,000, an AUROC of 1)
    unless ``frac`` is exactly 0 or 1: 0.9996 is "99.96", not "100.0"."""
    if not 0.0 <= frac <= 1.0 or frac in (0.0, 1.0):
        return f"{frac * scale:.{digits}f}"
    for d in range(digits, digits + 7):
        text = f"{frac * scale:.{d}f}"
        if 0.0 < float(text) < scale:
            return text
    d = digits + 7
    return f"<{10.0 ** -d:.{d}f}" if frac < 0.5 else f">{scale - 10.0 ** -d:.{d}f}"


def fmt_frac(x: Any, digits: int = 3) -> str:
    """A share in [0, 1] such as an AUROC: never rounded to 0 or 1 unless exact."""
    v = finite(x)
    return DASH if v is None else bounded(v, 1.0, digits)


def fmt_pct(x: Any, digits: int = 1) -> str:
    """A share in [0, 1] as a percentage, never rounded to 0% or 100% unless exact."""
    v = finite(x)
    return DASH if v is None else bounded(v, 100.0, digits) + "%"


def fmt_count(count: Any, total: Any, share: Any = None, digits: int = 1) -> str:
    """"807 of 809 (99.8%)": a count with its total and the share it makes; ``share``
    alone (as :func:`fmt_pct`) when the counts are missing."""
    k, n = finite(count), finite(total)
    if k is None or n is None or n <= 0 or not 0 <= k <= n:
        return fmt_pct(share, digits)
    return f"{int(k):,} of {int(n):,} ({bounded(k / n, 100.0, digits)}%)"
