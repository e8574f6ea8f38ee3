"""Model throughput [stamps/s] at GPU-sized batches: JAX (``model_backend: jax``) and ONNX.

The bundled model (or ``--model DIR``) is loaded as the worker loads it, on the device
``--device`` names (``auto``: a GPU when one is usable, else the CPU), for each backend:

* ``jax``: Keras on JAX; on a GPU it needs ``pip install 'stamp-classifier-worker[gpu]'``
  (jax[cuda12]).  Each batch shape is compiled once before it is timed.
* ``onnx``: ONNX Runtime on the artifact's ``model.onnx``, on CUDA when onnxruntime-gpu
  is installed and ``--device`` allows it, on the CPU otherwise.

Each batch size (default 256, 1024 and 4096 stamps) is predicted from host memory to
host memory, as :meth:`worker.model.artifact.StampModel.predict` does in the worker (so transfers
to and from a GPU count), ``--repeat`` times and for at least ``--min-seconds``; the
table gives stamps per second, milliseconds per call and the process's CPU time per
stamp (all its threads; on a GPU, the host's share), with the CPU and GPU named.
Nothing else should run meanwhile: stamps per second are for an idle machine.

Run from the repository root::

    .venv/bin/python bench/bench_gpu.py [--backend jax onnx] [--device auto]
        [--batch 256 1024 4096] [--repeat 5] [--min-seconds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from worker.model.artifact import DEVICES, ModelError, StampModel
from worker.prepare.features import FEATURE_NAMES


def cpu_name() -> str:
    """The CPU's model name and core count (from /proc/cpuinfo on Linux)."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def gpu_names() -> list[str]:
    """The NVIDIA GPUs ``nvidia-smi`` lists (none without the driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def throughput(model: StampModel, batch: int, repeat: int, min_seconds: float
               ) -> tuple[float, float, float, float]:
    """First call [s], stamps per second, ms per call and CPU µs per stamp (every thread
    of this process: the host's share on a GPU) for random stamps of ``batch``."""
    rng = np.random.default_rng(0)
    images = rng.random((batch, *model.image_shape), dtype=np.float32)
    features = rng.normal(size=(batch, len(FEATURE_NAMES))).astype(np.float32)
    start = time.perf_counter()
    model.predict(images, features)  # compiles the shape (JAX), allocates (ONNX Runtime)
    first = time.perf_counter() - start
    calls = 0
    start, cpu = time.perf_counter(), time.process_time()
    while calls < repeat or time.perf_counter() - start < min_seconds:
        model.predict(images, features)
        calls += 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    return first, calls * batch / elapsed, elapsed / calls * 1e3, cpu / calls / batch * 1e6


def main() -> int:
    """Time each backend at each batch size; print the machine and one Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="artifact directory (default: bundled)")
    parser.add_argument("--backend", nargs="+", choices=("jax", "onnx"),
                        default=["jax", "onnx"], help="backends to time, in this order")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where the model runs (auto: a GPU when usable)")
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeat", type=int, default=5, help="calls per row, at least")
    parser.add_argument("--min-seconds", type=float, default=2.0,
                        help="seconds of calls per row, at least")
    args = parser.parse_args()
    if min(args.batch) < 1 or args.repeat < 1 or args.min_seconds < 0:
        parser.error("--batch and --repeat must be at least 1, --min-seconds at least 0")
    gpus = gpu_names()
    print(f"CPU: {cpu_name()}")
    print(f"GPU: {'; '.join(gpus) if gpus else 'none found (no nvidia-smi or no GPU)'}")
    print(f"Python {platform.python_version()}, numpy {np.__version__}\n")
    print("| backend | device | batch | first call [s] | stamps/s | ms per call | "
          "CPU µs per stamp |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for backend in args.backend:
        try:
            model = StampModel.load(args.model, backend=backend, device=args.device)
        except ModelError as exc:
            print(f"| {backend} | not run: {exc} | | | | | |")
            continue
        for batch in args.batch:
            first, rate, ms, cpu = throughput(model, batch, args.repeat, args.min_seconds)
            print(f"| {model.backend} | {model.device} | {batch:,} | {first:.2f} | "
                  f"{rate:,.0f} | {ms:,.1f} | {cpu:,.0f} |", flush=True)
    if "jax" in args.backend:
        import jax

        print(f"\njax {jax.__version__}, devices: {', '.join(str(d) for d in jax.devices())}")
    if "onnx" in args.backend:
        import onnxruntime

        print(f"onnxruntime {onnxruntime.__version__}, providers: "
              f"{', '.join(onnxruntime.get_available_providers())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
