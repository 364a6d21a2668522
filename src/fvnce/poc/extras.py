"""What the poc adds after its choice: where the VAE came from, the recommendation's cost
(:mod:`fvnce.costs`) and its learning curve (:mod:`fvnce.learning_curve`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..errors import FvnceError
from ..learning_curve import learning_curve
from ..runs.costing import run_cost
from ..user_vae import source_record
from .grid import run_one
from .plan import PocConfig

__all__ = ["poc_extras"]


def poc_extras(config: PocConfig, plan: dict, recommended: dict | None, runs: list[dict], dataset, out_dir: Path,
               log: Callable[[str], None]) -> dict:
    """Where the VAE came from (``vae_source``), the learning curve (fvnce.learning_curve) and,
    with costs, the recommendation's cost (``recommended["cost"]``, fvnce.costs)."""
    out: dict[str, Any] = {"vae_source": source_record(config.vae), "vae_finetune": config.vae_finetune or None}
    if recommended is not None and recommended.get("run") is not None and config.costs is not None:
        try:
            recommended["cost"] = run_cost(out_dir / "runs" / recommended["run"], config.costs, dataset=dataset)
            log(f"fvnce: cost: {recommended['cost']['sentence']}")
        except FvnceError as exc:
            recommended["cost"] = {"available": False, "reason": str(exc)}
    out.update(learning_curve(config.learning_curve, plan, recommended, runs, dataset, out_dir, config, run_one, log))
    log(f"fvnce: learning curve: {out['learning_curve_verdict']}")
    return out
