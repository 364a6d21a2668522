"""One optimisation step with its checks (cf. Pyro's ``SVI.step``).

:func:`take_step` runs the objective, refuses the step -- by raising
:class:`StepFailure` before any parameter changes -- when the loss is non-finite, the
caller's ``check`` names a reason (exploding importance weights, see
:mod:`fvnce.train.guard`) or the gradient is non-finite, and otherwise clips the
gradient norm and takes the optimiser step.

What a healthy step reads on the host: the loss (finite?), the values the ``check``
needs (one read, :func:`fvnce.objectives.base.read_floats`), and the gradient norm
(finite? clip?).  The norm is the one reduction over all gradients: finite exactly when
every gradient entry is (or it overflowed, which is refused too).  The objective's other
diagnostics are computed only when a logging step reads them.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..errors import ConfigError, NonFiniteLossError

__all__ = ["StepFailure", "nonfinite_grad_names", "take_step", "trainable_parameters"]


def trainable_parameters(model, encoder) -> list:
    """The parameters of ``model`` and ``encoder`` that require a gradient, each once."""
    params = list(model.parameters())
    if encoder is not None:
        seen = {id(p) for p in params}
        params += [p for p in encoder.parameters() if id(p) not in seen]
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("the model and encoder have no trainable parameters")
    return params


class StepFailure(Exception):
    """A step that must not be taken (non-finite loss/gradient, exploding weights)."""


def take_step(forward: Callable, x: Tensor, x_log_pn: Tensor | None, scale: float, optimizer, params: list,
              grad_clip: float | None, check: Callable, agree: Callable[[bool], bool] | None = None,
              named_modules=()):
    """One optimiser step on the batch ``x``; returns the objective output and the
    gradient norm before clipping.

    ``forward(x, x_log_pn, scale)`` returns ``(loss, output)``; ``check(output)`` returns
    a reason to refuse the step, or None.  Under torch.distributed ``agree(flag)`` is
    True on every rank when ``flag`` is on any, so all ranks refuse a step together.
    ``named_modules`` (prefix, module) pairs name the parameters of a non-finite gradient.
    """
    optimizer.zero_grad(set_to_none=True)
    failure = None
    try:
        try:
            loss, out = forward(x, x_log_pn, scale)
        except ValueError as exc:  # a Distribution refusing non-finite parameters
            if "constraint" not in str(exc):
                raise
            raise StepFailure(f"non-finite distribution parameters: {str(exc).splitlines()[0]}") from None
        try:
            out.check_finite()
        except NonFiniteLossError as exc:
            raise StepFailure(str(exc)) from None
        reason = check(out)
        if reason is not None:
            raise StepFailure(reason)
    except StepFailure as exc:
        if agree is None:
            raise
        failure = str(exc)
    if agree is not None and agree(failure is not None):
        raise StepFailure(failure or "the step failed on another rank")
    loss.backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    value = norm.item()  # the one host read of the gradient: the finiteness check and the clipping
    if not math.isfinite(value):
        names = nonfinite_grad_names(named_modules)  # before any clipping rescales the gradients
        raise StepFailure(f"non-finite gradient (norm {value}) in {names}")
    if grad_clip is not None and not value + 1e-6 < _CLEARLY_BELOW * grad_clip:
        torch.nn.utils.clip_grads_with_norm_(params, grad_clip, norm)
    optimizer.step()
    return out, norm


#: clip_grad_norm_ multiplies the gradients by min(max_norm / (norm + 1e-6), 1); below this
#: fraction of max_norm that factor is exactly 1 even after bfloat16 rounding, and the
#: multiplication (a pass over every gradient) is skipped
_CLEARLY_BELOW = 0.98


def nonfinite_grad_names(named_modules) -> str:
    """The first few parameters (``prefix.name``) whose gradient holds inf or NaN."""
    names = []
    for prefix, m in named_modules:
        if m is None:
            continue
        for name, p in m.named_parameters():
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                names.append(f"{prefix}.{name}")
    return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "") if names else "the parameters"
