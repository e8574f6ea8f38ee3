"""Labelled stamp datasets: loading, the safe on-disk format, splits and augmentation.

Users have the ALeRCE stamp dataset (``ALERCE_stamps_2020.pkl``): a pickle of a dict with
``Images`` (N×63×63×3 science/template/difference, some non-square), ``Labels`` (0 AGN,
1 SN, 2 VS, 3 asteroid, 4 bogus) and ``Metadata`` (per-image feature values).  Loading a
pickle runs whatever code it contains, so :func:`load_alerce_pickle` is only called on
the user's explicit request (``stamp-train convert --i-trust-this-pickle``) and converts
once to an ``.npz`` file (plain arrays, read with ``allow_pickle=False``) that every
other command reads.

Preprocessing is :func:`worker.prepare.stamps.preprocess_batch`, the worker's own: never a copy.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.model.artifact import CLASS_NAMES
from worker.prepare.features import FEATURE_NAMES, ecliptic_galactic, encode_isdiffpos
from worker.prepare.stamps import preprocess_batch

STAMP_SHAPE = (63, 63, 3)


class DatasetError(ValueError):
    """A dataset file is missing, malformed or inconsistent (the message says what to fix)."""


@dataclass(frozen=True)
class StampDataset:
    """Labelled stamp triplets with their raw metadata features.

    Attributes
    ----------
    images : numpy.ndarray
        (N, 63, 63, 3) float32 science/template/difference, raw values (NaN allowed).
    labels : numpy.ndarray
        (N,) int64 class indices into :data:`CLASS_NAMES`.
    features : numpy.ndarray
        (N, F) float32 raw metadata features in :data:`worker.prepare.features.FEATURE_NAMES`
        order, NaN where missing.
    object_ids : numpy.ndarray
        (N,) str: the astronomical object of each example.  Splits and weights are per
        object (all alerts of one object go to one split).  Default: each example its
        own object (``"ex<i>"``), as for simulated stamps.
    candids : numpy.ndarray
        (N,) int64 alert candidate ids (-1 where unknown).
    tiers : numpy.ndarray
        (N,) str label-quality tier (e.g. A spectroscopic, B catalogue, C ZTF scores;
        ``"sim"`` for simulated examples; "" when unknown).
    sources : numpy.ndarray
        (N,) str where each example came from ("" when unknown).
    """

    images: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    object_ids: np.ndarray | None = None
    candids: np.ndarray | None = None
    tiers: np.ndarray | None = None
    sources: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        defaults = {"object_ids": np.array([f"ex{i}" for i in range(n)]),
                    "candids": np.full(n, -1, np.int64),
                    "tiers": np.full(n, "", dtype="<U1"),
                    "sources": np.full(n, "", dtype="<U1")}
        for name, default in defaults.items():
            value = getattr(self, name)
            value = default if value is None else np.asarray(value)
            if value.shape != (n,):
                raise DatasetError(f"{name} must have one entry per example ({n}), "
                                   f"got shape {value.shape}")
            object.__setattr__(self, name, value)
        if self.images.shape[1:] != STAMP_SHAPE or len(self.images) != n:
            raise DatasetError(f"images must be (N, 63, 63, 3) with N = {n} labels, "
                               f"got {self.images.shape}")
        if self.features.shape != (n, len(FEATURE_NAMES)):
            raise DatasetError(f"features must be (N, {len(FEATURE_NAMES)}), "
                               f"got {self.features.shape}")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(CLASS_NAMES)):
            raise DatasetError(f"labels must be in 0..{len(CLASS_NAMES) - 1} "
                               f"({', '.join(CLASS_NAMES)})")

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """SHA-256 of the arrays: identifies the training data in a model's manifest."""
        digest = hashlib.sha256()
        for array in (self.images, self.labels, self.features):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def class_counts(self) -> dict[str, int]:
        """Number of examples per class name."""
        counts = np.bincount(self.labels, minlength=len(CLASS_NAMES))
        return {name: int(c) for name, c in zip(CLASS_NAMES, counts, strict=True)}

    def subset(self, index: np.ndarray) -> StampDataset:
        """The examples at ``index``."""
        return StampDataset(self.images[index], self.labels[index], self.features[index],
                            self.object_ids[index], self.candids[index], self.tiers[index],
                            self.sources[index])

    @staticmethod
    def concatenate(parts: Sequence[StampDataset]) -> StampDataset:
        """One dataset of several, in order (per-example ids and tiers kept)."""
        return StampDataset(*(np.concatenate([getattr(p, name) for p in parts])
                              for name in _ARRAYS))


# The per-example arrays of a dataset, in constructor order (and as stored in .npz).
_ARRAYS = ("images", "labels", "features", "object_ids", "candids", "tiers", "sources")


# --------------------------------------------------------------------------- files

def save_npz(dataset: StampDataset, path: str | Path) -> Path:
    """Write a dataset in the safe format (compressed ``.npz`` of plain arrays)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{name: getattr(dataset, name) for name in _ARRAYS},
                        feature_names=np.array(FEATURE_NAMES),
                        class_names=np.array(CLASS_NAMES))
    return path


def load_npz(path: str | Path) -> StampDataset:
    """Read a dataset written by :func:`save_npz` (never unpickles anything).

    Raises
    ------
    DatasetError
        Missing file or arrays, other feature or class names.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such dataset file (make one with `stamp-train "
                           "convert` or `stamp-train simulate`)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npz dataset ({exc})") from exc
    missing = {"images", "labels", "features", "feature_names", "class_names"} - set(arrays)
    if missing:
        raise DatasetError(f"{path}: missing arrays {sorted(missing)}")
    if tuple(arrays["feature_names"].tolist()) != FEATURE_NAMES:
        raise DatasetError(f"{path}: feature names differ from this version's "
                           f"{FEATURE_NAMES}; convert the source data again")
    if tuple(arrays["class_names"].tolist()) != CLASS_NAMES:
        raise DatasetError(f"{path}: class names {arrays['class_names'].tolist()} are not "
                           f"{list(CLASS_NAMES)}")
    # object_ids, candids, tiers and sources are optional: older files lack them.
    return StampDataset(arrays["images"].astype(np.float32, copy=False),
                        arrays["labels"].astype(np.int64, copy=False),
                        arrays["features"].astype(np.float32, copy=False),
                        arrays.get("object_ids"), arrays.get("candids"), arrays.get("tiers"),
                        arrays.get("sources"))


def _column(metadata: Any, name: str, n: int) -> np.ndarray | None:
    """One metadata column by name from a dict, a structured array or a DataFrame."""
    if isinstance(metadata, Mapping):
        values = metadata.get(name)
    elif isinstance(metadata, np.ndarray) and metadata.dtype.names:
        values = metadata[name] if name in metadata.dtype.names else None
    elif hasattr(metadata, "columns"):  # a pandas DataFrame, when pandas is installed
        values = metadata[name].to_numpy() if name in metadata.columns else None
    else:
        raise DatasetError("Metadata must be a dict of columns, a structured array or a "
                           f"DataFrame, not {type(metadata).__name__}")
    if values is None:
        return None
    values = np.asarray(values)
    if len(values) != n:
        raise DatasetError(f"Metadata column {name!r} has {len(values)} rows, Images {n}")
    return values


def metadata_matrix(metadata: Any, n: int) -> np.ndarray:
    """Raw feature matrix (N, F) from a Metadata table; absent columns are NaN.

    ``isdiffpos`` strings are encoded the worker's way; ecliptic/galactic coordinates
    and ``non_detections`` are derived when the table lacks them.
    """
    out = np.full((n, len(FEATURE_NAMES)), np.nan, dtype=np.float32)
    for j, name in enumerate(FEATURE_NAMES):
        values = _column(metadata, name, n)
        if values is None:
            continue
        if name == "isdiffpos" and values.dtype.kind in "OUS":
            out[:, j] = [encode_isdiffpos(str(v)) for v in values]
        else:
            out[:, j] = np.asarray(values, dtype=np.float64)
    col = {name: j for j, name in enumerate(FEATURE_NAMES)}
    derived = np.isnan(out[:, col["gal_lat"]]) & np.isfinite(out[:, col["ra"]])
    for i in np.flatnonzero(derived):
        out[i, [col["ecl_lat"], col["ecl_long"], col["gal_lat"], col["gal_long"]]] = (
            ecliptic_galactic(float(out[i, col["ra"]]), float(out[i, col["dec"]])))
    no_nd = np.isnan(out[:, col["non_detections"]])
    out[no_nd, col["non_detections"]] = (out[no_nd, col["ncovhist"]]
                                         - out[no_nd, col["ndethist"]])
    out[out == -999.0] = np.nan  # ZTF's "no counterpart" sentinel, as in the worker
    return out


def load_alerce_pickle(path: str | Path) -> tuple[StampDataset, int]:
    """Read the ALeRCE stamp pickle (unpickling runs code from the file).

    Only call this on a file you trust; convert it once with :func:`save_npz`.

    Returns
    -------
    (StampDataset, int)
        The square 63×63 examples, and how many non-square ones were dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    with open(path, "rb") as fh:
        try:
            data = pickle.load(fh)  # noqa: S301 - explicit, documented user request
        except Exception as exc:
            raise DatasetError(f"{path}: does not unpickle ({exc})") from exc
    if not isinstance(data, Mapping) or not {"Images", "Labels"} <= set(data):
        raise DatasetError(f"{path}: expected a dict with 'Images', 'Labels', 'Metadata'")
    images = data["Images"]
    labels = np.asarray(data["Labels"], dtype=np.int64)
    n = len(labels)
    if len(images) != n:
        raise DatasetError(f"{path}: {len(images)} Images but {n} Labels")
    square = np.array([np.shape(img) == STAMP_SHAPE for img in images], dtype=bool)
    kept = np.stack([np.asarray(images[i], dtype=np.float32) for i in np.flatnonzero(square)]) \
        if square.any() else np.zeros((0, *STAMP_SHAPE), np.float32)
    metadata = data.get("Metadata")
    features = (metadata_matrix(metadata, n) if metadata is not None
                else np.full((n, len(FEATURE_NAMES)), np.nan, np.float32))
    return StampDataset(kept, labels[square], features[square]), int((~square).sum())


# --------------------------------------------------------------------------- preparation

def preprocess_images(images: np.ndarray, crop_size: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """Run the worker's preprocessing on raw (N, 63, 63, 3) stamps.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        The model inputs (M, crop, crop, 3) and the boolean mask (N,) of the examples kept
        (those the worker would refuse, e.g. an all-NaN crop, are dropped).
    """
    out = np.zeros((len(images), crop_size, crop_size, 3), np.float32)
    kept = np.ones(len(images), dtype=bool)
    for start in range(0, len(images), 4096):  # bounded memory for large datasets
        chunk = images[start:start + 4096]
        out[start:start + len(chunk)], errors = preprocess_batch(
            [[image[..., c] for c in range(3)] for image in chunk], crop_size)
        kept[start:start + len(chunk)] = [error is None for error in errors]
    return out[kept], kept


def split_balanced(labels: np.ndarray, n_val: int = 100, n_test: int = 200,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced validation and test sets (``n_val`` / ``n_test`` per class), rest training.

    Raises
    ------
    DatasetError
        A class has fewer than ``n_val + n_test + 1`` examples.
    """
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for cls, name in enumerate(CLASS_NAMES):
        index = rng.permutation(np.flatnonzero(labels == cls))
        if len(index) <= n_val + n_test:
            raise DatasetError(f"class {name} has {len(index)} examples; a balanced split "
                               f"needs more than {n_val} + {n_test} (lower --val-per-class/"
                               "--test-per-class or add data)")
        test.append(index[:n_test])
        val.append(index[n_test:n_test + n_val])
        train.append(index[n_test + n_val:])
    return tuple(np.sort(np.concatenate(part)) for part in (train, val, test))  # type: ignore[return-value]


def dihedral(images: np.ndarray, k: int) -> np.ndarray:
    """Apply one of the 8 symmetries of the square (k in 0..7) to (N, H, W, C) images."""
    out = np.rot90(images, k % 4, axes=(1, 2))
    return np.flip(out, axis=2) if k >= 4 else out


def balance_by_augmentation(images: np.ndarray, features: np.ndarray, labels: np.ndarray,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Oversample every class to the largest one with 90° rotations and flips.

    The original examples are kept as they are; each added example is a random copy
    under a random non-identity symmetry (so no class is undersampled and no added
    stamp is an exact duplicate of its source).
    """
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    target = counts.max()
    parts_x, parts_f, parts_y = [images], [features], [labels]
    for cls in range(len(CLASS_NAMES)):
        need = target - counts[cls]
        index = np.flatnonzero(labels == cls)
        if need <= 0 or len(index) == 0:
            continue
        source = rng.choice(index, size=need, replace=True)
        ops = rng.integers(1, 8, size=need)
        augmented = np.empty((need, *images.shape[1:]), images.dtype)
        for k in range(1, 8):
            sel = ops == k
            augmented[sel] = dihedral(images[source[sel]], k)
        parts_x.append(augmented)
        parts_f.append(features[source])
        parts_y.append(labels[source])
    order = rng.permutation(sum(len(y) for y in parts_y))
    return (np.concatenate(parts_x)[order], np.concatenate(parts_f)[order],
            np.concatenate(parts_y)[order])


# How metadata features enter a model (see training.train.TrainConfig.feature_encoding).
FEATURE_ENCODINGS = ("standard", "log-indicators")

