"""Print the result JSONs under benchmarks/results/ as markdown tables (for docs/benchmarks.md).

    python benchmarks/render_md.py [results_dir]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def md(rows, cols, fmt="{:.4g}"):
    def f(v):
        if isinstance(v, float):
            return fmt.format(v)
        return "" if v is None else str(v)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(f(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main() -> None:
    d = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"
    for name, cols, key in [
        ("step_cost", ["variant", "median_ms", "ratio_vs_vae", "ratio_lo", "ratio_hi", "gflop_step", "gflops_per_s",
                       "saved_MiB"], "rows"),
        ("pyro_vae", ["variant", "epoch_s", "ratio_vs_pyro", "speedup_vs_pyro", "test_elbo", "test_iwae64"], "rows"),
        ("instances", ["dataset", "objective", "rule", "noise", "stab", "runs", "diverged", "test_ll", "ll_unreliable",
                       "auroc", "auroc_min", "auroc_max", "ess_frac", "ess_noise", "ess_base", "proposal", "wall_s"],
         "aggregate"),
        ("instances", ["dataset", "rule", "stab", "runs", "diverged", "test_ll", "ll_unreliable", "auroc"], "by_rule"),
        ("consistency", ["protocol", "method", "n", "fits", "log10se_theta_med", "theta_p10", "theta_p90",
                         "log10se_c_med", "c_p10", "c_p90", "runaway", "collapsed", "starts_runaway",
                         "starts_collapsed", "s_per_fit"], "rows"),
        ("anomaly", ["set", "normal", "n_train", "isolation_forest", "ocsvm", "gmm", "pca", "vae_recon", "fvnce",
                     "fvnce_choice"], "per_class"),
        ("anomaly", ["set", "classes", "isolation_forest", "ocsvm", "gmm", "pca", "vae_recon", "fvnce",
                     "best_baseline", "fvnce_minus_best", "met"], "means"),
    ]:
        p = d / f"{name}.json"
        if not p.exists():
            continue
        data = json.loads(p.read_text())
        if key not in data:
            continue
        print(f"### {name} ({key})\n")
        m = data.get("machine", {})
        print(f"`{m.get('command')}` -- {m.get('date')}, {m.get('cpu')} ({m.get('cpu_capability')}), "
              f"{m.get('cores')} cores, torch {m.get('torch')}, {m.get('threads')} thread(s)\n")
        print(md(data[key], cols) + "\n")


if __name__ == "__main__":
    main()
