"""Model cost per alert: wall and CPU time of ``StampModel.predict`` at several batch sizes.

For each artifact (``--model``, repeatable; default the bundled one), the model is loaded
as the worker loads it, every padded batch shape is traced first, then random inputs of
each ``--batch`` size are predicted ``--repeat`` times.  Wall time comes from
:func:`time.perf_counter`, CPU time (all of the process's threads: TensorFlow runs a
batch on every core) from :func:`time.process_time`; both are divided by the number of
alerts.  Nothing else should run meanwhile: the figures are for an idle machine.

Run from the repository root::

    .venv/bin/python bench/bench_model.py [--model DIR ...] [--batch 64 256] [--repeat 40]
        [--backend keras onnx]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from worker.model.artifact import StampModel
from worker.prepare.features import FEATURE_NAMES


def cost(model: StampModel, batch: int, repeat: int) -> tuple[float, float]:
    """(wall, CPU) seconds per alert of ``repeat`` predictions of ``batch`` random alerts."""
    rng = np.random.default_rng(0)
    images = rng.random((batch, *model.image_shape), dtype=np.float32)
    features = rng.normal(size=(batch, len(FEATURE_NAMES))).astype(np.float32)
    model.predict(images, features)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        model.predict(images, features)
    return ((time.perf_counter() - wall) / repeat / batch,
            (time.process_time() - cpu) / repeat / batch)


def main() -> int:
    """Time each artifact at each batch size; print one Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, action="append",
                        help="artifact directory (repeatable; default: the bundled model)")
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--backend", nargs="+", choices=("auto", "keras", "onnx"),
                        default=["auto"], help="model backends to time (default auto)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; CPU time counts every thread of the process\n")
    print("| model | backend | parameters | batch | wall µs/alert | CPU µs/alert |")
    print("|---|---|---:|---:|---:|---:|")
    for path in args.model or [None]:
        for backend in args.backend:
            model = StampModel.load(path, backend=backend)
            model.warm_up(max(args.batch))
            label = f"{model.name} {model.version} ({path or 'bundled'})"
            params = model.manifest.raw.get("parameters", "?")
            for batch in args.batch:
                wall, cpu = cost(model, batch, args.repeat)
                print(f"| {label} | {model.backend} | {params:,} | {batch} | "
                      f"{wall * 1e6:,.0f} | {cpu * 1e6:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
