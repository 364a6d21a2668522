"""The optimiser: torch's Adam, without the ~1.6 s import of ``torch._dynamo`` in eager runs.

Constructing any ``torch.optim`` optimiser imports ``torch._dynamo`` (measured 1.5-1.8 s
of a 2-core machine's process start; ``benchmarks/process_cost.py``, docs/benchmarks.md,
"Fixed cost of a process"): ``Optimizer.add_param_group``, ``zero_grad``, ``state_dict`` and
``load_state_dict`` are wrapped in ``torch._disable_dynamo``, which imports
``torch._dynamo`` on its first call to tell a ``torch.compile`` trace not to enter them,
and ``Adam.step`` runs inside a wrapper that imports it for two graph breaks.  Outside a
``torch.compile`` trace those wrappers only switch gradients off for the step.

:class:`EagerAdam` is ``torch.optim.Adam`` with the unwrapped functions (torch keeps each
as ``__wrapped__``) and the step under ``torch.no_grad()``: the same update code, the same
state and ``state_dict`` (interchangeable with ``torch.optim.Adam``, bit for bit; see
``tests/test_train_parts.py``).  Where torch lacks ``__wrapped__`` the wrapped method is
kept (only slower to import).  :func:`make_optimizer` uses it unless the run compiles:
``torch.compile`` imports ``torch._dynamo`` anyway, and then torch's guards matter.
"""

from __future__ import annotations

import torch

__all__ = ["EagerAdam", "make_optimizer"]


def _unwrapped(method):
    return getattr(method, "__wrapped__", method)


_ADAM_STEP = _unwrapped(torch.optim.Adam.step)


class EagerAdam(torch.optim.Adam):
    """``torch.optim.Adam`` for eager use: identical updates and state, no ``torch._dynamo``
    import.  Not for use inside a ``torch.compile``-traced function."""

    add_param_group = _unwrapped(torch.optim.Optimizer.add_param_group)
    zero_grad = _unwrapped(torch.optim.Optimizer.zero_grad)
    state_dict = _unwrapped(torch.optim.Optimizer.state_dict)
    load_state_dict = _unwrapped(torch.optim.Optimizer.load_state_dict)

    def step(self, closure=None):
        # what torch's wrapper does for differentiable=False, without its graph breaks
        with torch.no_grad():
            return _ADAM_STEP(self, closure)


def make_optimizer(params: list, config) -> torch.optim.Optimizer:
    """Adam with ``config.lr`` and ``config.weight_decay``; :class:`EagerAdam` unless
    ``config.compile``."""
    adam = torch.optim.Adam if getattr(config, "compile", False) else EagerAdam
    # foreach: one multi-tensor kernel per update instead of a Python loop over parameters
    return adam(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
