"""Object-grouped cross-validation of many training configurations, side by side.

Model selection for the bundled model: every configuration (a JSON list of
``training.finetune.FineTuneConfig`` fields, plus ``"sim": N`` for N freshly simulated
examples mixed in) runs ``training.cv.cross_validate`` on the same real dataset and the
same folds, for one or more fold seeds, in parallel worker processes.  Prints one row per
configuration: per-object balanced accuracy (mean over fold seeds, and its range), SN
recall, AGN precision and each class's recall.

    python bench/cv_sweep.py --real real.npz --configs sweep.json --parallel 2

On a machine with a GPU, ``KERAS_BACKEND=jax`` runs the same models there (each process
then needs ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` to share the GPU).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any


def _run(job: tuple[int, dict[str, Any], str, int, list[int]]) -> dict[str, Any]:
    index, spec, real_path, folds, fold_seeds = job
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from training.cli import simulated_dataset
    from training.cv import cross_validate
    from training.data import load_npz
    from training.finetune import FineTuneConfig

    spec = dict(spec)
    n_sim = int(spec.pop("sim", 0))
    per_epoch = int(spec.pop("sim_per_epoch", 2000)) if n_sim else 0
    config = FineTuneConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in spec.items()}, sim_per_epoch=per_epoch)
    real = load_npz(real_path)
    sim = simulated_dataset(n_sim, 1, balanced=True) if n_sim else None
    start = time.perf_counter()
    runs = []
    for fold_seed in fold_seeds:
        result = cross_validate(real, config, folds, sim, fold_seed)
        table = result.figures["per_object"]
        first = result.figures["as_first_detection"]
        runs.append({"fold_seed": fold_seed, "balanced_accuracy": table["balanced_accuracy"],
                     "first_detection_balanced_accuracy": first["balanced_accuracy"],
                     "first_detection_sn_recall": first["classes"]["SN"]["recall"],
                     "recall": {c: v["recall"] for c, v in table["classes"].items()},
                     "precision": {c: v["precision"] for c, v in table["classes"].items()},
                     "confusion": table["confusion_matrix"]})
    bal = [r["balanced_accuracy"] for r in runs]
    mean = {key: {c: float(np.mean([r[key][c] for r in runs])) for c in runs[0][key]}
            for key in ("recall", "precision")}
    return {"index": index, "config": {**spec, "sim": n_sim, "sim_per_epoch": per_epoch},
            "runs": runs,
            "first_detection": {key: float(np.mean([r[f"first_detection_{key}"] for r in runs]))
                                for key in ("balanced_accuracy", "sn_recall")},
            "balanced_accuracy": float(np.mean(bal)), "range": [min(bal), max(bal)],
            **mean, "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and print the table (best first)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", required=True, help=".npz from `stamp-train dataset`")
    parser.add_argument("--configs", required=True, help="JSON list of configurations")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--parallel", type=int, default=1, help="worker processes")
    parser.add_argument("--out", help="write every result as JSON here")
    args = parser.parse_args(argv)
    for path in (args.real, args.configs):
        if not Path(path).is_file():
            raise SystemExit(f"cv_sweep: {path}: no such file")
    specs = json.loads(Path(args.configs).read_text())
    jobs = [(i, spec, args.real, args.folds, args.fold_seeds) for i, spec in enumerate(specs)]
    start = time.perf_counter()
    # spawn: each worker imports its own backend (a forked TensorFlow or JAX misbehaves).
    with multiprocessing.get_context("spawn").Pool(args.parallel) as pool:
        results = []
        for result in pool.imap_unordered(_run, jobs):
            results.append(result)
            print(f"[{len(results)}/{len(jobs)}] #{result['index']} "
                  f"{result['balanced_accuracy']:.3f} ({result['seconds']:.0f} s)", flush=True)
            if args.out:  # after each one: a run cut short keeps what it finished
                Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    results.sort(key=lambda r: -r["balanced_accuracy"])
    classes = list(results[0]["recall"])
    print(f"\n{len(jobs)} configurations, {args.folds} folds x fold seeds {args.fold_seeds}, "
          f"{time.perf_counter() - start:.0f} s, backend "
          f"{os.environ.get('KERAS_BACKEND', 'tensorflow')}")
    print(f"{'#':>3} {'bal.acc':>7} {'range':>11} {'SN rec':>6} {'AGN prec':>8}  "
          + " ".join(f"{c[:5]:>5}" for c in classes)
          + f"  {'1st bal':>7} {'1st SN':>6}  config")
    for r in results:
        lo, hi = r["range"]
        print(f"{r['index']:>3} {r['balanced_accuracy']:7.3f} {lo:5.3f}-{hi:5.3f} "
              f"{r['recall']['SN']:6.3f} {r['precision']['AGN']:8.3f}  "
              + " ".join(f"{r['recall'][c]:5.2f}" for c in classes)
              + f"  {r['first_detection']['balanced_accuracy']:7.3f} "
              f"{r['first_detection']['sn_recall']:6.3f}"
              + "  " + json.dumps(r["config"], separators=(",", ":")))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
