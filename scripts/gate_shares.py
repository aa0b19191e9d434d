"""Where a CSG+ gate settles: compare each gate entry with its filter's share of activation mass.

Ignoring the class head, the gradient of CSG+'s loss on a gate entry G[c, k] (while the L1 budget is
exceeded) is ``lambda2 - lambda_s * s_ck / K``, with ``s_ck = sum_{i: y_i = c} a_ik / sum_i a_ik``
(docs/tuning.md, "Where CSG+'s gate settles"). So an entry should stay open (G > 0.5) exactly where its
class holds more than ``tau = K * lambda2 / lambda_s`` of its filter's mass. This reads a run's
``gate.npy`` and ``features.npz`` (test-set pooled activations) and prints how well that rule holds.

    python3 scripts/gate_shares.py RUN [RUN ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from csg.methods.csg_plus import CSGPlusConfig, open_share_threshold
from csg.metrics import class_mass_shares


def gate_shares(run: Path) -> dict:
    for name in ("gate.npy", "features.npz", "config.json"):
        if not (run / name).is_file():
            sys.exit(f"gate_shares: {run / name} is missing; give an evaluated CSG+ run (csg evaluate RUN)")
    gate = np.load(run / "gate.npy")                         # C x K
    with np.load(run / "features.npz") as f:
        pooled, labels = f["pooled"].astype(np.float64), f["labels"]
    C, K = gate.shape
    shares = class_mass_shares(pooled, labels, C)
    cfg = json.loads((run / "config.json").read_text())
    lambda2 = float(cfg.get("lambda2", CSGPlusConfig.lambda2))
    lambda_s = float(cfg.get("suppression_weight", CSGPlusConfig.suppression_weight))
    tau = open_share_threshold(K, lambda2, lambda_s)
    open_ = gate > 0.5
    predicted = shares > tau
    return {"run": str(run), "K": K, "lambda2": lambda2, "lambda_s": lambda_s, "tau": tau,
            "l1_density": float(gate.mean()), "open_per_filter": float(open_.sum(0).mean()),
            "predicted_open_per_filter": float(predicted.sum(0).mean()),
            "rule_agreement": float((open_ == predicted).mean()),
            "max_share_mean": float(shares.max(0).mean())}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        r = gate_shares(Path(arg))
        print(f"{r['run']}: tau = K*lambda2/lambda_s = {r['tau']:.3f}; L1-density {r['l1_density']:.4f}; "
              f"open entries per filter {r['open_per_filter']:.2f} (rule s_ck > tau: "
              f"{r['predicted_open_per_filter']:.2f}); entries where gate and rule agree "
              f"{100 * r['rule_agreement']:.1f}%; mean largest share {r['max_share_mean']:.3f}")
