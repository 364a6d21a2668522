"""Where and in which precision the step runs: the device, bfloat16 autocast hooks, and
``torch.compile`` with its eager fallback.

``precision="bf16"`` runs every parameterised leaf layer (``Linear``, ``Conv`` ...) of
the model and encoder under bfloat16 autocast and casts its output back to the
parameters' dtype, so activations, log-densities, log-weights, logsumexp and the
scoring rules stay in float32; the noise is never autocast.  ``compile=True`` wraps the
model's ``log_joint`` and the encoder in ``torch.compile`` (eager fallback with a
one-line message if compilation fails).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .. import distributed as _dist
from .._tree import map_tensors
from ..errors import ConfigError

__all__ = ["Bf16Hooks", "Precision", "compile_modules", "cpu_native_bf16", "move_to", "resolve_device",
           "resolve_precision"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if _dist.is_active():
            return _dist.default_device("auto")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available on this machine; use device='auto'")
    return _dist.default_device(name) if _dist.is_active() else dev


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto``: bf16 where the hardware multiplies bfloat16 natively (a CUDA device
    that supports it, or a CPU with AMX tiles), fp32 elsewhere -- on an AVX2-only CPU
    a bf16 VAE step measured 8-10x *slower* than fp32 (docs/benchmarks.md)."""
    if name == "auto":
        if device.type == "cuda":
            ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        else:
            ok = device.type == "cpu" and cpu_native_bf16()[0]
        return "bf16" if ok else "fp32"
    return name


def cpu_native_bf16() -> tuple[bool, bool]:
    """(AMX tiles, AVX512-BF16) on this CPU; (False, False) where torch cannot tell."""
    try:
        return bool(torch.cpu._is_amx_tile_supported()), bool(torch.cpu._is_avx512_bf16_supported())
    except Exception:  # noqa: BLE001 - private helpers: absent on some builds
        return False, False


def move_to(device: torch.device, modules, noise):
    """Move ``modules`` to ``device``; returns the noise moved too (when it has ``.to``)."""
    for m in modules:
        m.to(device)
    to = getattr(noise, "to", None)
    if callable(to):
        moved = to(device)
        if moved is not None:
            return moved
    return noise


class Precision:
    """The arithmetic of a trainer's steps: ``name`` is "fp32" or "bf16" (``auto``
    resolved for ``device``); ``compile`` compiles model and encoder once."""

    def __init__(self, name: str, device: torch.device, compile: bool, say: Callable[[str], None]) -> None:
        self.name = resolve_precision(name, device)
        self.device, self.compile, self.say, self._compiled = device, compile, say, False
        if self.name == "bf16" and device.type == "cpu" and not any(cpu_native_bf16()):
            say("fvnce: this CPU has no native bfloat16 arithmetic (no AMX, no AVX512-BF16): "
                "bf16 steps run several times slower than fp32 here")
        self.hooks: Bf16Hooks | None = None

    def compile_once(self, model: nn.Module, encoder: nn.Module | None) -> None:
        if self.compile and not self._compiled:
            self._compiled = True
            compile_modules(model, encoder, self.say)

    def install(self, modules: list, dtype: torch.dtype) -> None:
        """bf16: autocast hooks on ``modules`` (outputs cast back to ``dtype``)."""
        if self.name != "bf16":
            return
        if self.hooks is None:
            self.hooks = Bf16Hooks(self.device.type, dtype)
        self.hooks.install(modules)

    def remove(self) -> None:
        if self.hooks is not None:
            self.hooks.remove()


class Bf16Hooks:
    """Forward hooks that run every parameterised leaf layer of ``modules`` under
    bfloat16 autocast and cast its output back to ``dtype`` (float32 or float64)."""

    def __init__(self, device_type: str, dtype: torch.dtype) -> None:
        self.device_type = device_type
        self.dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        self.handles: list = []

    def install(self, modules) -> None:
        if self.handles:
            return
        device_type, target = self.device_type, self.dtype
        stack: list = []

        def upcast(t: Tensor) -> Tensor:  # half-precision outputs back to the parameters' dtype
            return t.to(target) if t.dtype in (torch.bfloat16, torch.float16) else t

        def enter(module, args):
            ctx = torch.autocast(device_type, dtype=torch.bfloat16)
            ctx.__enter__()
            stack.append(ctx)

        def leave(module, args, out):
            if stack:
                stack.pop().__exit__(None, None, None)
            return map_tensors(out, upcast)

        for m in modules:
            for sub in m.modules():
                leaf = next(sub.children(), None) is None
                if leaf and next(sub.parameters(recurse=False), None) is not None:
                    self.handles.append(sub.register_forward_pre_hook(enter))
                    self.handles.append(sub.register_forward_hook(leave, always_call=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def compile_modules(model: nn.Module, encoder: nn.Module | None, say: Callable[[str], None]) -> None:
    """Replace ``model.log_joint`` and ``encoder.forward`` by compiled versions that fall
    back, for good and with one line of log, to eager execution when compilation fails."""
    state = {"failed": False}
    targets = [(model, "log_joint")]
    if encoder is not None:
        targets.append((encoder, "forward"))
    for module, attr in targets:
        eager = getattr(module, attr)
        try:
            compiled = torch.compile(eager)
        except Exception as exc:  # e.g. no compiler support on this Python / platform
            say(f"fvnce: torch.compile is not available here ({_first_line(exc)}); running eagerly")
            return
        setattr(module, attr, _CompiledOrEager(compiled, eager, state, say))


class _CompiledOrEager:
    """A ``torch.compile``-d callable that falls back, for good, to the eager one the
    first time compilation fails (one line of log for the whole trainer)."""

    def __init__(self, compiled, eager, state: dict, say) -> None:
        self.compiled, self.eager, self.state, self.say = compiled, eager, state, say

    def __call__(self, *args, **kwargs):
        if not self.state["failed"]:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # backend/compiler errors surface at the first call
                self.state["failed"] = True
                self.say(f"fvnce: torch.compile failed ({_first_line(exc)}); running eagerly")
        return self.eager(*args, **kwargs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:200] if text else type(exc).__name__)
