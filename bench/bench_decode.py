"""Decode + preprocessing cost per alert: an ALeRCE-style reference versus this project.

Measures, on one CPU core, the microseconds needed to turn the bytes of an Avro alert
file into the model's (21, 21, 3) float32 image, for every decodable alert of the real
ZTF data (``../shared/data`` beside the repository, or ``$STAMP_DATA_DIR``, or
``--data``):

(a) *reference*, written here the way ALeRCE's stamp classifier does it:
    :func:`fastavro.reader` over the whole container, then for each cutout
    :func:`gzip.open` + :func:`astropy.io.fits.open` → ``.data``, the same geometry
    handling (:func:`worker.prepare.stamps.place_on_grid` for stamps cut by a CCD edge) and
    a plain-numpy centre crop 21×21, ``nan_to_num``, min-max normalization;
(b) *this project*: :meth:`worker.decode.alerts.AlertDecoder.iter_records` (projected Avro
    decode) + :func:`worker.prepare.stamps.prepare_alert` (gunzip, direct FITS card parse, the
    project's preprocessing and the metadata feature vector).  With the compiled
    extension (``native/``, :mod:`worker.decode.native`) the record read and the cutouts →
    image step run in Rust; ``STAMP_NATIVE=0`` measures the pure-Python path.  One
    decoder serves every pass, as in the worker, whose decoder keeps the parsed writer
    schemas for the life of the process.

Sub-stage rows split each path: Avro decode, gunzip + FITS, preprocessing (and, for
(b), the compiled cutouts → image call when built, and the metadata features, which (a)
does not compute).  The same run checks that (a)
and (b) give identical (:func:`numpy.array_equal`) images for every alert; alerts that
(b) rejects with :class:`~worker.decode.errors.AlertError` (corrupt containers, the alert with
no cutouts) are skipped in both paths and counted by reason.

Method: the process is pinned to the first CPU it may use and BLAS/OpenMP pools are set
to one thread before numpy is imported; every stage runs one warm-up pass, then
``--repeat`` timed passes over all alerts (:func:`time.perf_counter`, garbage collector
paused as :mod:`timeit` does); the table reports the median pass divided by the number
of alerts.  Output is Markdown, ready to paste into the README.

Run it from the repository root::

    .venv/bin/python bench/bench_decode.py [--data DIR] [--repeat N]

Notes
-----
Astropy's warnings (the SIMPLE card of ZTF stamps does not follow the FITS standard)
are silenced for the whole run; only the reference path uses astropy.
"""

from __future__ import annotations

import os

# Before numpy is imported (by this script or by worker.*): one core, one BLAS thread.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
PINNED_CPU = min(os.sched_getaffinity(0))
os.sched_setaffinity(0, {PINNED_CPU})

import argparse  # noqa: E402
import gc  # noqa: E402
import gzip  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from importlib.metadata import version  # noqa: E402
from itertools import islice  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import fastavro  # noqa: E402
import numpy as np  # noqa: E402
from common import cpu_model  # noqa: E402

from worker.decode import native  # noqa: E402
from worker.decode.alerts import CUTOUT_FIELDS, Alert, AlertDecoder  # noqa: E402
from worker.decode.errors import AlertError, Reason  # noqa: E402
from worker.prepare.features import metadata_features  # noqa: E402
from worker.prepare.stamps import (  # noqa: E402
    PreprocessConfig,
    decode_stamp,
    native_image,
    place_on_grid,
    prepare_alert,
    preprocess_stamps,
)

try:
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyWarning
except ImportError:  # astropy is a dev dependency only
    sys.exit("bench_decode.py needs astropy for the reference path: pip install -e .[dev]")

REPO = Path(__file__).resolve().parents[1]
DATA_ENV = "STAMP_DATA_DIR"
CONFIG = PreprocessConfig()
# Errors the decoder yields for one record and then goes on; any other is container-level.
RECORD_LEVEL = frozenset({Reason.MISSING_CUTOUT, Reason.MISSING_FIELD})


# --------------------------------------------------------------------------- workload

@dataclass(frozen=True)
class AlertFile:
    """One ``.avro`` file and which of its records both paths turn into model inputs.

    Attributes
    ----------
    path : pathlib.Path
        Where the file was read from.
    payload : bytes
        The file's bytes (one Kafka message for ZTF; many alerts for broker files).
    n_records : int
        Records to read: those before a container-level error, if any.
    keep : tuple of bool
        Per record, whether (b) makes a model input from it (else it is skipped).
    """

    path: Path
    payload: bytes
    n_records: int
    keep: tuple[bool, ...]


@dataclass
class Workload:
    """The alerts both paths process, and what was skipped."""

    files: list[AlertFile]
    n_alerts: int
    skipped: Counter[str]


def default_data_dir() -> Path:
    """``$STAMP_DATA_DIR`` if set, else ``../shared/data`` beside the repository."""
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else REPO.parent / "shared" / "data"


def load_workload(data_dir: Path) -> Workload:
    """Read every ``.avro`` file under ``data_dir`` and decide which records to use.

    A record is used when (b) turns it into a model input; an
    :class:`~worker.decode.errors.AlertError` (yielded by the decoder or raised by
    :func:`~worker.prepare.stamps.prepare_alert`) skips it in both paths.  A container-level
    error is yielded last by the decoder and ends the records read from that file.
    """
    decoder = AlertDecoder()
    files: list[AlertFile] = []
    skipped: Counter[str] = Counter()
    n_alerts = 0
    for path in sorted(data_dir.rglob("*.avro")):
        payload = path.read_bytes()
        items = list(decoder.iter_records(payload))
        keep: list[bool] = []
        for index, item in enumerate(items):
            if isinstance(item, AlertError):
                skipped[item.reason.value] += 1
                if index == len(items) - 1 and item.reason not in RECORD_LEVEL:
                    break  # container-level error: no record behind it
                keep.append(False)
                continue
            try:
                prepare_alert(item, CONFIG)
            except AlertError as err:
                skipped[err.reason.value] += 1
                keep.append(False)
                continue
            keep.append(True)
        if any(keep):
            files.append(AlertFile(path, payload, len(keep), tuple(keep)))
            n_alerts += sum(keep)
    return Workload(files, n_alerts, skipped)


def kept_records(wl: Workload) -> Iterator[dict[str, Any]]:
    """Full fastavro records of the used alerts (the reference path's input)."""
    for f in wl.files:
        reader = fastavro.reader(io.BytesIO(f.payload))
        for record, keep in zip(islice(reader, f.n_records), f.keep, strict=True):
            if keep:
                yield record


# Path (b)'s decoder, kept across passes as the worker keeps its own: parsed writer
# schemas (27 distinct ones in the shared data) are cached by the decoder.
DECODER = AlertDecoder()


def kept_alerts(wl: Workload) -> Iterator[Alert]:
    """Projected :class:`~worker.decode.alerts.Alert` values of the used alerts (path (b))."""
    decoder = DECODER
    for f in wl.files:
        for item, keep in zip(islice(decoder.iter_records(f.payload), f.n_records), f.keep,
                              strict=True):
            if keep:
                assert isinstance(item, Alert)
                yield item


# --------------------------------------------------------------------------- (a) reference

def ref_open_stamp(blob: bytes) -> np.ndarray:
    """ALeRCE-style cutout read: ``gzip.open`` → ``astropy.io.fits.open`` → ``.data``."""
    with gzip.open(io.BytesIO(blob), "rb") as fh:
        with fits.open(io.BytesIO(fh.read()), ignore_missing_simple=True) as hdul:
            return hdul[0].data


def ref_fits_only(raw: bytes) -> np.ndarray:
    """``astropy.io.fits.open`` → ``.data`` on an already gunzipped cutout."""
    with fits.open(io.BytesIO(raw), ignore_missing_simple=True) as hdul:
        return hdul[0].data


def ref_preprocess(stamps: Sequence[np.ndarray], xpos: float | None,
                   ypos: float | None) -> np.ndarray:
    """Geometry, centre crop, NaN→0, min-max normalize, stack: written with plain numpy."""
    size, crop = CONFIG.stamp_size, CONFIG.crop_size
    lo = (size - crop) // 2
    channels = []
    for stamp in stamps:
        full, _ = place_on_grid(stamp, size, xpos, ypos)
        image = np.nan_to_num(full[lo:lo + crop, lo:lo + crop])
        image = image - image.min()
        span = image.max()
        if span > 0:
            image = image / span
        channels.append(image)
    return np.stack(channels, axis=-1).astype(np.float32)


def ref_record_input(record: dict[str, Any]) -> np.ndarray:
    """Model image of one full fastavro record, the reference way."""
    stamps = [ref_open_stamp(record[name]["stampData"]) for name in CUTOUT_FIELDS]
    candidate = record["candidate"]
    return ref_preprocess(stamps, candidate.get("xpos"), candidate.get("ypos"))


def ref_full(wl: Workload) -> list[np.ndarray]:
    """Path (a): bytes of each file → model images of its used alerts."""
    return [ref_record_input(record) for record in kept_records(wl)]


def ref_avro_decode(wl: Workload) -> None:
    """(a) stage: full fastavro decode of every record read."""
    for f in wl.files:
        for _ in islice(fastavro.reader(io.BytesIO(f.payload)), f.n_records):
            pass


# --------------------------------------------------------------------------- (b) project

def project_full(wl: Workload) -> list[np.ndarray]:
    """Path (b): ``AlertDecoder().iter_records`` + ``prepare_alert`` for each used alert."""
    return [prepare_alert(alert, CONFIG).image for alert in kept_alerts(wl)]


def project_avro_decode(wl: Workload) -> None:
    """(b) stage: projected Avro decode of every record read."""
    decoder = DECODER
    for f in wl.files:
        for _ in islice(decoder.iter_records(f.payload), f.n_records):
            pass


# --------------------------------------------------------------------------- timing

def time_stage(func: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` calls after one warm-up call [s]."""
    func()
    times = []
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            func()
            times.append(time.perf_counter() - start)
        finally:
            gc.enable()
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the check and the timings, print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(),
                        help=f"folder searched for *.avro files (default: ${DATA_ENV} or "
                             "../shared/data beside the repository)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed passes per stage; the median is reported (default 5)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    data_dir: Path = args.data
    if not data_dir.is_dir():
        sys.exit(f"real ZTF data not found at {data_dir}: pass --data DIR or set {DATA_ENV}")
    warnings.filterwarnings("ignore", category=AstropyWarning)

    wl = load_workload(data_dir)
    if wl.n_alerts == 0:
        sys.exit(f"no decodable alert in {data_dir} (searched **/*.avro)")

    # Correctness: identical model images from both paths, alert by alert.
    ref_images = ref_full(wl)
    our_images = project_full(wl)
    if len(ref_images) != len(our_images):
        sys.exit(f"paths disagree on the number of alerts: {len(ref_images)} vs "
                 f"{len(our_images)}")
    mismatches = sum(not (a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b))
                     for a, b in zip(ref_images, our_images, strict=True))

    # Inputs of the sub-stages, prepared once.
    records = list(kept_records(wl))
    alerts = list(kept_alerts(wl))
    ref_blobs = [[r[name]["stampData"] for name in CUTOUT_FIELDS] for r in records]
    ref_raw = [[gzip.decompress(b) for b in blobs] for blobs in ref_blobs]
    ref_pos = [(r["candidate"].get("xpos"), r["candidate"].get("ypos")) for r in records]
    ref_data = [[ref_fits_only(raw) for raw in triple] for triple in ref_raw]
    our_stamps = [[decode_stamp(blob, CONFIG.limits) for blob in a.cutouts] for a in alerts]

    def our_preprocess() -> None:
        for alert, stamps in zip(alerts, our_stamps, strict=True):
            x, y = alert.candidate.get("xpos"), alert.candidate.get("ypos")
            preprocess_stamps([place_on_grid(s, CONFIG.stamp_size, x, y, CONFIG.non_square)[0]
                               for s in stamps], CONFIG.crop_size)

    # With the compiled path, the pure-Python twins are timed for comparison only.
    python_rows = "pure-Python twin, not in the full path: " if native.ENABLED else ""
    stages: list[tuple[str, str, Callable[[], object]]] = [
        ("(a) reference", "**full path**", lambda: ref_full(wl)),
        ("(a) reference", "fastavro.reader, full record decode", lambda: ref_avro_decode(wl)),
        ("(a) reference", "gzip.open + astropy fits.open + .data ×3",
         lambda: [ref_open_stamp(b) for blobs in ref_blobs for b in blobs]),
        ("(a) reference", "of which astropy fits.open + .data ×3",
         lambda: [ref_fits_only(raw) for triple in ref_raw for raw in triple]),
        ("(a) reference", "geometry + crop/NaN→0/normalize (numpy)",
         lambda: [ref_preprocess(d, x, y) for d, (x, y) in zip(ref_data, ref_pos, strict=True)]),
        ("(b) project", "**full path**", lambda: project_full(wl)),
        ("(b) project", "AlertDecoder.iter_records (projected Avro)",
         lambda: project_avro_decode(wl)),
        *([("(b) project", "compiled cutouts → image (native_image: gunzip, FITS, "
             "preprocessing)", lambda: [native_image(a, CONFIG) for a in alerts])]
          if native.ENABLED else []),
        ("(b) project", f"{python_rows}gunzip + FITS (decode_stamp ×3)",
         lambda: [decode_stamp(b, CONFIG.limits) for a in alerts for b in a.cutouts]),
        ("(b) project", f"{python_rows}preprocessing (place_on_grid ×3 + preprocess_stamps)",
         our_preprocess),
        ("(b) project", "metadata_features (no counterpart in (a))",
         lambda: [metadata_features(a.candidate) for a in alerts]),
    ]
    results = [(path, stage, time_stage(func, args.repeat) / wl.n_alerts * 1e6)
               for path, stage, func in stages]
    full = {path: us for path, stage, us in results if stage == "**full path**"}

    print(f"CPU: {cpu_model()} (pinned to CPU {PINNED_CPU}) · Python "
          f"{platform.python_version()} · numpy {np.__version__} · fastavro "
          f"{version('fastavro')} · astropy {version('astropy')} · isal {version('isal')} · "
          f"native path {'on' if native.ENABLED else 'off (pure Python)'}")
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(wl.skipped.items()))
    print(f"Data: {data_dir}: {len(wl.files)} files, {wl.n_alerts} alerts; skipped "
          f"{sum(wl.skipped.values())} ({reasons or 'none'})")
    print(f"Check: {len(our_images)} alerts compared, {mismatches} mismatches "
          "(np.array_equal of the (21, 21, 3) float32 images)")
    print()
    print(f"| path | stage | µs / alert (median of {args.repeat}) | share of path |")
    print("|---|---|---:|---:|")
    for path, stage, us in results:
        print(f"| {path} | {stage} | {us:,.1f} | {us / full[path]:.0%} |")
    print()
    print(f"Speedup (a)/(b): {full['(a) reference'] / full['(b) project']:.1f}×")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
