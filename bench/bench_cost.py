"""CPU cost per alert, stage by stage: an ALeRCE-style reference against the worker's path.

Both paths run in this one process, on the same real alerts (every decodable alert of
``../shared/data``, ``$STAMP_DATA_DIR`` or ``--data``, as in ``bench_decode.py``), the
same bundled model (or ``--model``) and one CPU core:

(a) *reference*, the way an ALeRCE-style stamp step works: :func:`fastavro.reader` over
    the whole record, ``gzip`` + ``astropy.io.fits`` for each cutout, numpy crop and
    normalization, the metadata features from the full candidate, and one model call per
    alert on Keras with TensorFlow, as ALeRCE's steps serve their models;
(b) *the worker*: the projected Avro decode (:class:`worker.decode.alerts.AlertDecoder`, one
    decoder for every pass as in the worker, so parsed writer schemas stay cached),
    :func:`worker.prepare.stamps.prepare_alert` (gunzip, FITS cards, preprocessing, features;
    compiled in ``native/`` when built, ``STAMP_NATIVE=0`` for the pure-Python path),
    one model call per batch of ``--batch`` alerts on the worker's model backend
    (``--backend``, by default what the worker chooses: ONNX Runtime for the bundled
    model; several backends give a worker column each, measured in the same run; ONNX
    Runtime with one thread, as the process has one core), and the label record
    (:func:`worker.stream.output.label_record` + :func:`worker.stream.output.encode_label`).

Each stage is timed with :func:`time.process_time` (CPU time of every thread of the
process) over all alerts, after one warm-up pass, ``--repeat`` times; the table gives the
median per alert and the reference-to-worker ratio.  Kafka's own cost (fetching,
producing, committing) is not in it: ``bench_e2e.py`` measures the worker's and the
broker's CPU per alert through a real broker.

Run from the repository root::

    .venv/bin/python bench/bench_cost.py [--repeat 3] [--batch 256] [--model DIR]
        [--backend auto|onnx|onnx-int8|keras|jax ...]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notices
# isort: off
# bench_decode pins this process to one core and one BLAS thread when imported, which
# must come before numpy is imported.
from bench_decode import (
    CONFIG,
    DECODER,
    CUTOUT_FIELDS,
    default_data_dir,
    kept_alerts,
    kept_records,
    load_workload,
    ref_open_stamp,
    ref_preprocess,
)
from common import cpu_model

import fastavro  # noqa: E402  (after the pinning)
import numpy as np  # noqa: E402

from worker.decode import native  # noqa: E402
from worker.prepare.features import metadata_features  # noqa: E402
from worker.model.artifact import StampModel  # noqa: E402
from worker.stream.output import Source, encode_label, label_record  # noqa: E402
from worker.prepare.stamps import prepare_alert  # noqa: E402
# isort: on


def ref_metadata_features(candidate: dict) -> np.ndarray:
    """The reference's features: the project's Python code, never its compiled twin."""
    saved, native.ENABLED = native.ENABLED, False
    try:
        return metadata_features(candidate)
    finally:
        native.ENABLED = saved


def cpu_per_call(func: Callable[[], object], repeat: int) -> float:
    """Median CPU seconds of ``repeat`` calls after one warm-up call."""
    func()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        func()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="data folder (default ../shared/data)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per stage")
    parser.add_argument("--batch", type=int, default=256, help="the worker's batch size")
    parser.add_argument("--model", help="model artifact (default: the bundled model)")
    parser.add_argument("--backend", nargs="+", default=["auto"],
                        choices=("auto", "onnx", "onnx-int8", "keras", "jax"),
                        help="the worker's model backend (default auto, as the worker); "
                        "the reference always runs Keras on TensorFlow")
    args = parser.parse_args(argv)
    data = args.data or default_data_dir()
    if not data.is_dir():
        raise SystemExit(f"bench_cost: no data folder at {data}: give --data")
    wl = load_workload(data)
    n = wl.n_alerts
    # One thread: bench_decode pinned this process to one core.
    models = [StampModel.load(args.model, backend=b, threads=1) for b in args.backend]
    for model in models:
        model.warm_up(args.batch)
    model = models[0]
    reference_model = StampModel.load(args.model, backend="keras")
    reference_model.warm_up(1)

    # Inputs of each stage, made once so that each stage is timed on its own.
    records = list(kept_records(wl))
    stamps = [[ref_open_stamp(r[name]["stampData"]) for name in CUTOUT_FIELDS]
              for r in records]
    ref_images = [ref_preprocess(s, r["candidate"].get("xpos"), r["candidate"].get("ypos"))
                  for s, r in zip(stamps, records, strict=True)]
    ref_features = [ref_metadata_features(r["candidate"]) for r in records]
    alerts = list(kept_alerts(wl))
    prepared = [prepare_alert(a, CONFIG) for a in alerts]
    images = np.stack([p.image for p in prepared])
    features = np.stack([p.features for p in prepared])
    probabilities = model.predict(images, features)
    source = Source("alerts", 0, 0, 0)

    def ref_avro() -> None:
        for f in wl.files:
            for _ in zip(range(f.n_records), fastavro.reader(io.BytesIO(f.payload)),
                         strict=False):
                pass

    def ref_stamps() -> None:
        for r in records:
            for name in CUTOUT_FIELDS:
                ref_open_stamp(r[name]["stampData"])

    def ref_input() -> None:  # what the worker's prepare_alert does, the reference way
        for r in records:
            candidate = r["candidate"]
            ref_preprocess([ref_open_stamp(r[name]["stampData"]) for name in CUTOUT_FIELDS],
                           candidate.get("xpos"), candidate.get("ypos"))
            ref_metadata_features(candidate)

    def ref_prep() -> None:
        for s, r in zip(stamps, records, strict=True):
            ref_preprocess(s, r["candidate"].get("xpos"), r["candidate"].get("ypos"))

    def ref_feat() -> None:
        for r in records:
            ref_metadata_features(r["candidate"])

    def ref_model() -> None:
        for image, feats in zip(ref_images, ref_features, strict=True):
            reference_model.predict(image[None], feats[None])

    def our_avro() -> None:
        decoder = DECODER
        for f in wl.files:
            for _ in zip(range(f.n_records), decoder.iter_records(f.payload), strict=False):
                pass

    def our_prepare() -> None:
        for a in alerts:
            prepare_alert(a, CONFIG)

    def our_model(model: StampModel) -> Callable[[], None]:
        def run() -> None:
            for i in range(0, n, args.batch):
                model.predict(images[i:i + args.batch], features[i:i + args.batch])
        return run

    def our_record(model: StampModel) -> Callable[[], None]:
        def run() -> None:
            for a, p in zip(alerts, probabilities, strict=True):
                encode_label(label_record(a, p, "cnn", model.name, model.version, "1", [],
                                          0, 0, source))
        return run

    # (name, reference, the worker's stage for each model or None, counted in the totals);
    # the stages before the model are the same for every backend: measured once.
    def same(func: Callable[[], None]) -> list[Callable[[], None]]:
        return [func] * len(models)

    rows = [
        ("Avro decode", ref_avro, same(our_avro), True),
        ("cutouts → model input (gunzip, FITS, preprocessing, features)", ref_input,
         same(our_prepare), True),
        ("  of which gunzip + FITS", ref_stamps, None, False),
        ("  of which preprocessing", ref_prep, None, False),
        ("  of which metadata features", ref_feat, None, False),
        ("model", ref_model, [our_model(m) for m in models], True),
        ("label record", None, [our_record(m) for m in models], True),
    ]
    print(f"CPU: {cpu_model()}, one core; {n} real alerts of {data}; model {model.name} "
          f"v{model.manifest.version}; reference: one model call per alert, keras backend; "
          f"worker: batches of {args.batch}, one thread; median of {args.repeat} passes; "
          f"native path {'on' if native.ENABLED else 'off (pure Python)'}\n")
    heads = "".join(f" worker ({m.backend}) µs/alert | ratio |" for m in models)
    print(f"| stage | reference µs/alert |{heads}")
    print("|---|---:|" + "---:|---:|" * len(models))
    totals = [0.0] * (1 + len(models))
    for name, ref, ours, counted in rows:
        cells: list[float | None] = []
        measured: dict[int, float] = {}
        for k, func in enumerate([ref, *(ours or [None] * len(models))]):
            if func is None:
                cells.append(None)
                continue
            if id(func) not in measured:
                measured[id(func)] = cpu_per_call(func, args.repeat) / n * 1e6
            value = measured[id(func)]
            totals[k] += value if counted else 0.0
            cells.append(value)
        line = f"| {name} | {'—' if cells[0] is None else f'{cells[0]:,.0f}'} |"
        for cell in cells[1:]:
            ratio = (f"{cells[0] / cell:.1f}×" if cell is not None and cells[0] is not None
                     else "")
            line += f" {'—' if cell is None else f'{cell:,.0f}'} | {ratio} |"
        print(line)
    line = f"| **total** | **{totals[0]:,.0f}** |"
    for total in totals[1:]:
        line += f" **{total:,.0f}** | **{totals[0] / total:.1f}×** |"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
