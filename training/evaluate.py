"""Evaluate an exported artifact through the worker's own loading and preprocessing.

Used for the transfer check of a simulator-trained model on real stamps: the 51 real
ZTF stamp triplets labelled by ALeRCE (``labelled/alerce-test-stamps`` in the shared
data: an ``.npz`` of raw 63×63×3 stamps, a labels CSV and, for 21 of them, ALeRCE's
metadata feature table).  Stamps without a metadata row get all-missing features (the
training means), which is what the worker does with a field it cannot read.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from training.data import CLASS_NAMES, DatasetError, StampDataset, metadata_matrix
from training.data import preprocess_images as _preprocess
from worker.model import StampModel


def load_alerce_test_stamps(folder: str | Path) -> tuple[StampDataset, np.ndarray, np.ndarray]:
    """Read the labelled real stamps.

    Parameters
    ----------
    folder : str or Path
        ``labelled/alerce-test-stamps`` (``stamps_63x63_float32.npz`` and
        ``small_test_metadata_features.csv``).

    Returns
    -------
    (StampDataset, numpy.ndarray, numpy.ndarray)
        The dataset, a boolean mask of the examples that have metadata, and their
        object ids.
    """
    folder = Path(folder)
    npz_path = folder / "stamps_63x63_float32.npz"
    if not npz_path.is_file():
        raise DatasetError(f"{npz_path}: not found (point --alerce-test-stamps at the "
                           "labelled/alerce-test-stamps folder)")
    with np.load(npz_path, allow_pickle=False) as npz:
        images = npz["images"].astype(np.float32)
        names = [str(v) for v in npz["labels"]]
        oids = np.array([str(v) for v in npz["oids"]])
    unknown = sorted(set(names) - set(CLASS_NAMES))
    if unknown:
        raise DatasetError(f"{npz_path}: unknown class names {unknown}")
    labels = np.array([CLASS_NAMES.index(n) for n in names], dtype=np.int64)
    rows: dict[str, dict[str, str]] = {}
    fieldnames: list[str] = []
    table = folder / "small_test_metadata_features.csv"
    if table.is_file():
        with open(table, newline="") as fh:
            reader = csv.DictReader(fh)
            fieldnames = list(reader.fieldnames or [])
            rows = {r["oid"]: r for r in reader}
    has_meta = np.array([oid in rows for oid in oids])
    columns: dict[str, np.ndarray] = {}
    for key in fieldnames:
        if key in ("oid", "class"):
            continue
        values = [rows.get(oid, {}).get(key) for oid in oids]
        if key == "isdiffpos":
            columns[key] = np.array([v or "" for v in values], dtype=object)
        else:
            columns[key] = np.array([float(v) if v else np.nan for v in values])
    features = metadata_matrix(columns, len(oids))
    return StampDataset(images, labels, features), has_meta, oids


def evaluate(model: StampModel, dataset: StampDataset) -> dict[str, Any]:
    """Accuracy, recall per class and confusion matrix of a model on a dataset."""
    from training.train import _metrics

    images, kept = _preprocess(dataset.images, model.preprocess.crop_size)
    probs = model.predict(images, dataset.features[kept])
    result = _metrics(dataset.labels[kept], probs)
    result["refused_by_preprocessing"] = int((~kept).sum())
    result["class_counts"] = {c: int(n) for c, n in zip(
        CLASS_NAMES, np.bincount(dataset.labels[kept], minlength=len(CLASS_NAMES)), strict=True)}
    return result


def format_result(title: str, result: dict[str, Any]) -> str:
    """A short plain-text table of one evaluation."""
    lines = [f"{title}: accuracy {result['accuracy']:.1%} on {result['n']} stamps "
             f"({result['class_counts']})",
             "          " + "".join(f"{c:>9}" for c in CLASS_NAMES)]
    for name, row in zip(CLASS_NAMES, result["confusion_matrix"], strict=True):
        lines.append(f"{name:>10}" + "".join(f"{v:>9}" for v in row))
    return "\n".join(lines)
