"""Your own VAE as the starting point: ``--vae FILE.py:FUNCTION --vae-weights WEIGHTS.pt``.

``FUNCTION()`` (no arguments) returns ``(encoder, decoder)``, two ``torch.nn.Module``s as
``docs/bring_your_own_model.md`` defines them: ``encoder(x)`` a Distribution over ``z``
with ``rsample``; ``decoder(z)`` (``z`` with leading sample dimensions ``(k, B, z_dim)``) a
Distribution over ``x`` whose ``log_prob(x)`` has the batch shape ``(k, B)``.
``WEIGHTS.pt`` is ``torch.save({"encoder": encoder.state_dict(), "decoder":
decoder.state_dict()})``, read with ``weights_only=True`` (never executed).

The model is :class:`UserVAE` (``log p(z) + decoder(z).log_prob(x)``, standard normal
prior over ``z``); an FVNCE run tilts it (:class:`fvnce.models.EnergyTiltedVAE` over it),
and its ancestral samples are the ``base`` noise.  A run records the VAE's origin in its
configuration (``vae = {file, function, weights, sha256}``) and keeps a copy of the module
file (``user_vae.py`` in the run folder); reloading the run imports that copy, and refuses
when its sha256 differs from the recorded one.  Every mismatch is a one-line
:class:`~fvnce.errors.ConfigError` (``CheckpointError`` for a changed copy).

Importing the module runs its code: name only files you trust (as for noise plug-ins).
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution

from .errors import CheckpointError, ConfigError
from .filenames import USER_VAE_FILE  # the copy of the user's module file in a run folder
from .models import TILT_BOUND, EnergyTiltedVAE
from .models.wrap import FromVAE

__all__ = ["USER_VAE_FILE", "UserVAE", "build_user_model", "check_user_vae", "copy_module",
           "file_sha256", "vae_spec"]

#: the model names a user VAE takes the place of
MODEL_NAMES = ("vae", "tilted_vae")
#: model options that a user VAE fixes itself (its architecture)
FIXED_OPTIONS = ("z_dim", "hidden", "h_dim", "image_shape")
#: rows tried in the forward-pass check
CHECK_ROWS = 8


class UserVAE(FromVAE):
    """The user's decoder as a normalised model (:class:`fvnce.models.FromVAE`, standard
    normal prior), with the ``x_dim`` and ``likelihood`` that fvnce's ``base`` noise reads."""

    def __init__(self, decoder: nn.Module, z_dim: int, x_dim: int, likelihood: str = "gaussian") -> None:
        super().__init__(decoder, z_dim=z_dim)
        self.x_dim, self.likelihood = int(x_dim), likelihood


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def vae_spec(text: str | None, weights: str | None) -> dict | None:
    """``--vae FILE.py:FUNCTION`` and ``--vae-weights WEIGHTS.pt`` as the record a run keeps:
    ``{"file", "function", "weights", "sha256"}`` (absolute paths); None without ``--vae``.
    Checks only what needs no import: the form, that both files exist."""
    if text is None:
        if weights is not None:
            raise ConfigError("--vae-weights needs --vae FILE.py:FUNCTION (the code that builds the modules)")
        return None
    file, sep, function = str(text).rpartition(":")
    if not sep or not file or not function.isidentifier():
        raise ConfigError(f"--vae must be FILE.py:FUNCTION (a Python file and the function in it that returns "
                          f"(encoder, decoder)), got {text!r}")
    path = Path(file).expanduser()
    if path.suffix != ".py":
        raise ConfigError(f"--vae {text}: {file} is not a .py file")
    if not path.is_file():
        raise ConfigError(f"--vae {text}: file {file} not found")
    if weights is None:
        raise ConfigError("--vae needs --vae-weights WEIGHTS.pt (torch.save({'encoder': ..., 'decoder': ...}) "
                          "of the modules' state_dicts)")
    wpath = Path(weights).expanduser()
    if not wpath.is_file():
        raise ConfigError(f"--vae-weights {weights}: file not found")
    return {"file": str(path.resolve()), "function": function, "weights": str(wpath.resolve()),
            "sha256": file_sha256(path)}


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _import_builder(spec: dict, module_file: Path, error=ConfigError):
    """The function ``spec["function"]`` of ``module_file``, whose sha256 must be
    ``spec["sha256"]``."""
    where = f"--vae {spec.get('file')}:{spec.get('function')}"
    if not module_file.is_file():
        raise error(f"{where}: module file {module_file} not found")
    digest = file_sha256(module_file)
    if digest != spec.get("sha256"):
        raise error(f"{where}: {module_file} has changed since it was recorded (sha256 {digest[:12]}..., recorded "
                    f"{str(spec.get('sha256'))[:12]}...); refusing to run other code than the run was made with")
    name = f"fvnce_user_vae_{digest[:16]}"
    module = sys.modules.get(name)
    if module is None:
        try:
            imp = importlib.util.spec_from_file_location(name, module_file)
            module = importlib.util.module_from_spec(imp)
            imp.loader.exec_module(module)
        except Exception as exc:  # the user's code: any failure is an input error
            raise ConfigError(f"{where}: cannot import {module_file} ({_first_line(exc)})") from None
        sys.modules[name] = module
    fn = getattr(module, spec["function"], None)
    if not callable(fn):
        raise ConfigError(f"{where}: {module_file} has no function {spec['function']!r}")
    return fn


def _modules(spec: dict, module_file: Path, error=ConfigError) -> tuple[nn.Module, nn.Module]:
    fn = _import_builder(spec, module_file, error)
    where = f"--vae {spec['file']}:{spec['function']}"
    try:
        out = fn()
    except Exception as exc:
        raise ConfigError(f"{where}: calling {spec['function']}() failed ({_first_line(exc)})") from None
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(m, nn.Module) for m in out)):
        got = type(out).__name__ if not isinstance(out, (tuple, list)) else \
            f"a {type(out).__name__} of {len(out)}: {', '.join(type(m).__name__ for m in out)}"
        raise ConfigError(f"{where}: {spec['function']}() must return (encoder, decoder), two torch.nn.Modules; "
                          f"got {got}")
    return out[0], out[1]


def _load_weights(spec: dict, encoder: nn.Module, decoder: nn.Module) -> None:
    where = f"--vae-weights {spec['weights']}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(spec["weights"], map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found") from None
    except Exception as exc:  # corrupt, or objects that are not plain data: never executed
        raise ConfigError(f"{where}: cannot read it as plain tensors (not a torch.save file of state_dicts, or it "
                          f"holds objects that are not tensors: {type(exc).__name__})") from None
    if not isinstance(state, dict) or not {"encoder", "decoder"} <= set(state):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ConfigError(f"{where}: must hold {{'encoder': state_dict, 'decoder': state_dict}}, got {keys}")
    for part, module in (("encoder", encoder), ("decoder", decoder)):
        try:
            module.load_state_dict(state[part])
        except Exception as exc:
            raise ConfigError(f"{where}: its {part} weights do not fit the {part} that "
                              f"{spec['function']}() builds ({_first_line(exc)})") from None


def _forward_check(spec: dict, encoder: nn.Module, decoder: nn.Module, x: torch.Tensor) -> int:
    """A forward pass on the rows ``x``; the latent dimension. ConfigError naming what does
    not fit."""
    where = f"--vae {spec['file']}:{spec['function']}"
    what = f"{len(x)} rows of {x.shape[-1]} features"
    try:
        with torch.no_grad():
            q = encoder(x)
            if not isinstance(q, Distribution):
                raise ConfigError(f"{where}: encoder(x) must return a torch Distribution over z, got "
                                  f"{type(q).__name__}")
            if not q.has_rsample:
                raise ConfigError(f"{where}: the encoder's {type(q).__name__} has no rsample (use e.g. "
                                  "Independent(Normal(loc, scale), 1))")
            z = q.rsample((2,))
            if z.dim() != 3 or z.shape[:2] != (2, len(x)):
                raise ConfigError(f"{where}: encoder(x).rsample((2,)) on {what} has shape {tuple(z.shape)}, "
                                  f"expected (2, {len(x)}, z_dim): make the distribution's event shape (z_dim,) "
                                  "with Independent(..., 1)")
            p = decoder(z)
            if not isinstance(p, Distribution):
                raise ConfigError(f"{where}: decoder(z) must return a torch Distribution over x, got "
                                  f"{type(p).__name__}")
            lp = p.log_prob(x)
            if tuple(lp.shape) != (2, len(x)):
                raise ConfigError(f"{where}: decoder(z).log_prob(x) on {what} has shape {tuple(lp.shape)}, "
                                  f"expected (2, {len(x)}): the decoder must return a distribution over the whole "
                                  "row (Independent(..., 1))")
            if not torch.isfinite(lp).all():
                raise ConfigError(f"{where}: decoder(z).log_prob(x) is not finite on {what} (is the data in the "
                                  "form the VAE was trained on? --transform and --dequantize default to none with "
                                  "--vae)")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{where}: a forward pass on {what} failed ({_first_line(exc)}); does the VAE fit this "
                          "data?") from None
    return int(z.shape[-1])


def check_user_vae(spec: dict, dataset) -> int:
    """Import, build, load the weights and run a forward pass on the first rows of the
    training and validation splits: every mismatch as a one-line ConfigError, before
    anything is written.  Returns the latent dimension."""
    encoder, decoder = _modules(spec, Path(spec["file"]))
    _load_weights(spec, encoder, decoder)
    encoder.eval(), decoder.eval()
    z_dim = 0
    for x in (dataset.train[:CHECK_ROWS], dataset.val[:CHECK_ROWS]):
        if len(x):
            z_dim = _forward_check(spec, encoder, decoder, x.to(_dtype(encoder, decoder)))
    return z_dim


def _dtype(*modules: nn.Module) -> torch.dtype:
    for m in modules:
        for p in m.parameters():
            return p.dtype
    return torch.get_default_dtype()


def check_config(config) -> None:
    """The settings a run with a user VAE can have (called by RunConfig.validate)."""
    if config.model not in ("auto", *MODEL_NAMES):
        raise ConfigError(f"--vae gives the model (your VAE, or a tilted model over it); --model {config.model} "
                          "cannot be combined with it")
    bad = [k for k in FIXED_OPTIONS if k in config.model_options]
    if bad:
        raise ConfigError(f"--vae: your VAE fixes its own architecture; leave out {bad[0].replace('_', '-')}")
    if not isinstance(config.vae, dict) or not {"file", "function", "weights", "sha256"} <= set(config.vae):
        raise ConfigError("vae must be {file, function, weights, sha256} (use --vae FILE.py:FUNCTION "
                          "--vae-weights WEIGHTS.pt)")


def build_user_model(spec: dict, name: str, opts: dict, x_dim: int, *, module_file: Path | None = None,
                     load_weights: bool = False):
    """``(model, encoder)`` for the resolved model ``name`` (``vae``: :class:`UserVAE`;
    ``tilted_vae``: an :class:`~fvnce.models.EnergyTiltedVAE` over it with the tilt options
    of ``opts``).  ``module_file``: the run folder's copy (default: the recorded file);
    ``load_weights``: start from ``WEIGHTS.pt`` (a new run)."""
    from_copy = module_file is not None
    encoder, decoder = _modules(spec, Path(module_file or spec["file"]), CheckpointError if from_copy else ConfigError)
    if load_weights:
        _load_weights(spec, encoder, decoder)
    probe = torch.zeros(2, x_dim, dtype=_dtype(encoder, decoder))
    try:
        with torch.no_grad():
            z_dim = int(encoder(probe).rsample().shape[-1])
    except Exception as exc:
        raise ConfigError(f"--vae {spec['file']}:{spec['function']}: the encoder fails on {x_dim} features "
                          f"({_first_line(exc)})") from None
    vae = UserVAE(decoder, z_dim, x_dim, opts.get("likelihood", "gaussian"))
    if name == "vae":
        return vae, encoder
    if name != "tilted_vae":
        raise ConfigError(f"--vae takes the place of model vae or tilted_vae, not {name!r}")
    model = EnergyTiltedVAE(vae, x_dim, tuple(opts.get("tilt_hidden", (128,))), opts.get("tilt_bound", TILT_BOUND),
                            bool(opts.get("freeze_base", False)))
    return model, encoder


def copy_module(run_dir: str | Path, spec: dict) -> None:
    """Copy the user's module file into the run folder (checked against its recorded hash)."""
    src, dst = Path(spec["file"]), Path(run_dir) / USER_VAE_FILE
    if file_sha256(src) != spec["sha256"]:
        raise ConfigError(f"--vae {src}: the file changed while fvnce was running; run again")
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)


def run_module_file(run_dir: str | Path) -> Path:
    """The run folder's copy of the module, which reloading a run imports."""
    path = Path(run_dir) / USER_VAE_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} was trained from your own VAE but its copy {USER_VAE_FILE} is missing")
    return path


def source_record(spec: dict | None) -> dict | None:
    """Where the VAE came from, for summary.json: ``{file, function, weights, sha256}``."""
    if not spec:
        return None
    return {k: spec.get(k) for k in ("file", "function", "weights", "sha256")}
