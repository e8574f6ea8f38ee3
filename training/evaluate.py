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
from worker.model.artifact import StampModel
from worker.prepare.features import FEATURE_NAMES


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


# --------------------------------------------------------------------------- real alerts

def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % for z = 1.96).

    Unlike the normal approximation it stays inside [0, 1] and is honest for the small
    counts of real classes (14 bogus objects).  ``(nan, nan)`` when ``n`` is 0.
    """
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def per_object(probs: np.ndarray, labels: np.ndarray, object_ids: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One answer per object: the mean of its alerts' probabilities.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, numpy.ndarray)
        Object probabilities (M, 5), object labels (M,), object ids (M,).
    """
    from training.grouped import object_table

    objects, classes, inverse = object_table(labels, object_ids)
    sums = np.zeros((len(objects), probs.shape[1]))
    np.add.at(sums, inverse, probs)
    counts = np.bincount(inverse, minlength=len(objects))[:, None]
    return sums / counts, classes, objects


def classification_table(probs: np.ndarray, labels: np.ndarray, n_boot: int = 2000,
                         seed: int = 0) -> dict[str, Any]:
    """Per-class recall and precision (Wilson intervals), balanced accuracy, confusion.

    The balanced accuracy (mean recall over the classes present) gets a bootstrap
    interval; the confusion matrix has true classes in rows, predictions in columns.

    Parameters
    ----------
    probs : numpy.ndarray
        (N, 5) probabilities.
    labels : numpy.ndarray
        (N,) true class indices.
    n_boot : int
        Bootstrap resamples (of the N rows, within each class) for the balanced
        accuracy interval.
    seed : int
        Seeds the bootstrap.
    """
    n_cls = len(CLASS_NAMES)
    predicted = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    confusion = np.zeros((n_cls, n_cls), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    classes: dict[str, dict[str, Any]] = {}
    recalls = []
    for c, name in enumerate(CLASS_NAMES):
        n_true, n_pred, hit = int(confusion[c].sum()), int(confusion[:, c].sum()), \
            int(confusion[c, c])
        recall = hit / n_true if n_true else float("nan")
        if n_true:
            recalls.append(recall)
        classes[name] = {
            "n": n_true, "predicted": n_pred,
            "recall": recall, "recall_95": wilson_interval(hit, n_true),
            "precision": hit / n_pred if n_pred else float("nan"),
            "precision_95": wilson_interval(hit, n_pred),
        }
    rng = np.random.default_rng(seed)
    present = [np.flatnonzero(labels == c) for c in range(n_cls)]
    present = [idx for idx in present if len(idx)]
    boot = []
    correct = predicted == labels
    for _ in range(n_boot if present else 0):
        # Resample within each class: the class sizes of the set stay fixed, as the
        # balanced accuracy's definition assumes.
        boot.append(np.mean([correct[rng.choice(idx, len(idx))].mean() for idx in present]))
    balanced = float(np.mean(recalls)) if recalls else float("nan")
    return {
        "n": int(len(labels)),
        "accuracy": float(correct.mean()) if len(labels) else float("nan"),
        "balanced_accuracy": balanced,
        "balanced_accuracy_95": (tuple(float(v) for v in np.percentile(boot, [2.5, 97.5]))
                                 if boot else (float("nan"), float("nan"))),
        "classes": classes,
        "confusion_matrix": confusion.tolist(),
    }


def evaluate_real(probs: np.ndarray, dataset: StampDataset) -> dict[str, Any]:
    """Real-data figures of predictions: per alert, per object, per label tier.

    An object's answer is the mean probability of its alerts; tiers are counted per
    object.

    Parameters
    ----------
    probs : numpy.ndarray
        (N, 5) probabilities, one row per example of ``dataset``.
    dataset : StampDataset
        The examples, with object ids and tiers.
    """
    obj_probs, obj_labels, objects = per_object(probs, dataset.labels, dataset.object_ids)
    out: dict[str, Any] = {"per_alert": classification_table(probs, dataset.labels),
                           "per_object": classification_table(obj_probs, obj_labels),
                           "per_tier": {}}
    # The model reads the detection counts (ndethist, ncovhist): alerts of a first
    # detection, which have no history, are scored on their own as well.
    ndethist = dataset.features[:, FEATURE_NAMES.index("ndethist")]
    first = ndethist <= 1
    out["first_detection"] = classification_table(probs[first], dataset.labels[first], n_boot=0)
    out["with_history"] = classification_table(probs[~first], dataset.labels[~first],
                                               n_boot=0)
    for tier in sorted(set(dataset.tiers.tolist())):
        mask = dataset.tiers == tier
        p, y, _ = per_object(probs[mask], dataset.labels[mask], dataset.object_ids[mask])
        out["per_tier"][tier or "(none)"] = classification_table(p, y, n_boot=0)
    return out


def _pct(value: float) -> str:
    return "  n/a" if np.isnan(value) else f"{value:5.1%}"


def format_real(title: str, result: dict[str, Any]) -> str:
    """Plain-text tables of :func:`evaluate_real` (per object first, then per alert)."""
    lines = [title]
    for level in ("per_object", "per_alert"):
        table = result[level]
        lo, hi = table["balanced_accuracy_95"]
        lines += ["", f"{level.replace('_', ' ')}: balanced accuracy "
                  f"{_pct(table['balanced_accuracy'])} (95 % {_pct(lo)}–{_pct(hi)}), "
                  f"accuracy {_pct(table['accuracy'])}, n = {table['n']}",
                  f"{'class':<10}{'n':>5}  {'recall':>6} {'95 % interval':>15}  "
                  f"{'precision':>9} {'95 % interval':>15}"]
        for name, c in table["classes"].items():
            r_lo, r_hi = c["recall_95"]
            p_lo, p_hi = c["precision_95"]
            lines.append(f"{name:<10}{c['n']:>5}  {_pct(c['recall']):>6} "
                         f"{_pct(r_lo):>7}–{_pct(r_hi):<7}  {_pct(c['precision']):>9} "
                         f"{_pct(p_lo):>7}–{_pct(p_hi):<7}")
        lines.append("confusion (rows true, columns predicted):")
        lines.append("          " + "".join(f"{c:>9}" for c in CLASS_NAMES))
        for name, row in zip(CLASS_NAMES, table["confusion_matrix"], strict=True):
            lines.append(f"{name:>10}" + "".join(f"{v:>9}" for v in row))
    for key, title in (("first_detection", "first detections (ndethist ≤ 1), per alert"),
                       ("with_history", "alerts with earlier detections, per alert"),
                       ("as_first_detection", "every alert shown as a first detection "
                        "(history counts reset), per object")):
        table = result.get(key)
        if table and table["n"]:
            recalls = ", ".join(f"{name} {_pct(c['recall']).strip()} of {c['n']}"
                                for name, c in table["classes"].items() if c["n"])
            lines += ["", f"{title}: n = {table['n']}, balanced accuracy "
                      f"{_pct(table['balanced_accuracy']).strip()}; recall {recalls}"]
    if result.get("per_tier"):
        lines += ["", "per tier (objects): tier  n  accuracy  recall per class present"]
        for tier, table in result["per_tier"].items():
            recalls = ", ".join(f"{name} {_pct(c['recall']).strip()} of {c['n']}"
                                for name, c in table["classes"].items() if c["n"])
            lines.append(f"  {tier:<6}{table['n']:>4}  {_pct(table['accuracy'])}  {recalls}")
    return "\n".join(lines)


def plot_confusion(result: dict[str, Any], path: str | Path, title: str) -> Path:
    """Write the per-object and per-alert confusion matrices side by side as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    from training.train import draw_confusion

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, level in zip(axes, ("per_object", "per_alert"), strict=True):
        table = result[level]
        draw_confusion(ax, table["confusion_matrix"])
        ax.set_title(f"{level.replace('_', ' ')}: balanced accuracy "
                     f"{table['balanced_accuracy']:.1%}", fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
