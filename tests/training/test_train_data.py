"""training.data: the pickle conversion, the safe format, splits, augmentation."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from training.data import (
    CLASS_NAMES,
    DatasetError,
    StampDataset,
    balance_by_augmentation,
    dihedral,
    load_alerce_pickle,
    load_npz,
    metadata_matrix,
    preprocess_images,
    save_npz,
    split_balanced,
)
from worker.prepare.features import FEATURE_NAMES
from worker.prepare.stamps import preprocess_stamps


def alerce_like_pickle(path: Path, n_per_class: int = 12, seed: int = 0) -> Path:
    """A small file in the ALeRCE stamp pickle layout, with two non-square images."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASS_NAMES)), n_per_class)
    images: list[np.ndarray] = []
    for label in labels:
        image = rng.normal(100, 5, (63, 63, 3)).astype(np.float32)
        image[31, 31, 2] += 50 * (label + 1)  # a class-dependent difference peak
        images.append(image)
    images[3] = images[3][:51]  # CCD-edge stamps are dropped by the protocol
    images[20] = images[20][:, :44]
    images[5][..., 0] = np.nan
    n = len(labels)
    metadata = {name: rng.normal(size=n) for name in FEATURE_NAMES
                if name not in ("isdiffpos", "gal_lat", "non_detections")}
    metadata["isdiffpos"] = np.array(["t", "f"] * (n // 2), dtype=object)
    metadata["sgscore1"][0] = -999.0
    with open(path, "wb") as fh:
        pickle.dump({"Images": images, "Labels": labels, "Metadata": metadata}, fh)
    return path


def test_pickle_conversion_round_trip(tmp_path: Path) -> None:
    dataset, dropped = load_alerce_pickle(alerce_like_pickle(tmp_path / "s.pkl"))
    assert dropped == 2 and len(dataset) == 5 * 12 - 2
    assert dataset.images.shape[1:] == (63, 63, 3) and dataset.images.dtype == np.float32
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    assert np.isnan(dataset.features[0, col["sgscore1"]])  # -999 → missing
    assert set(np.unique(dataset.features[:, col["isdiffpos"]])) == {0.0, 1.0}
    assert np.isfinite(dataset.features[:, col["gal_lat"]]).all()  # derived from ra/dec
    path = save_npz(dataset, tmp_path / "s.npz")
    again = load_npz(path)
    np.testing.assert_array_equal(again.images, dataset.images)
    np.testing.assert_array_equal(again.labels, dataset.labels)
    np.testing.assert_array_equal(again.features, dataset.features)
    assert again.fingerprint() == dataset.fingerprint()


def test_npz_is_read_without_pickle(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, images=np.array([object()], dtype=object), labels=np.zeros(1),
             features=np.zeros((1, len(FEATURE_NAMES))),
             feature_names=np.array(FEATURE_NAMES), class_names=np.array(CLASS_NAMES))
    with pytest.raises(DatasetError, match="not a readable"):
        load_npz(path)


@pytest.mark.parametrize("problem", ["missing", "features", "classes", "nofile"])
def test_bad_npz_files_say_what_to_fix(tmp_path: Path, problem: str) -> None:
    arrays = {"images": np.zeros((2, 63, 63, 3), np.float32), "labels": np.zeros(2, np.int64),
              "features": np.zeros((2, len(FEATURE_NAMES)), np.float32),
              "feature_names": np.array(FEATURE_NAMES), "class_names": np.array(CLASS_NAMES)}
    if problem == "missing":
        del arrays["features"]
    elif problem == "features":
        arrays["feature_names"] = np.array(FEATURE_NAMES[::-1])
    elif problem == "classes":
        arrays["class_names"] = np.array(["a", "b", "c", "d", "e"])
    path = tmp_path / "d.npz"
    if problem != "nofile":
        np.savez(path, **arrays)
    with pytest.raises(DatasetError):
        load_npz(path)


def test_dataset_validates_shapes_and_labels() -> None:
    with pytest.raises(DatasetError, match="labels"):
        StampDataset(np.zeros((1, 63, 63, 3), np.float32), np.array([7]),
                     np.zeros((1, len(FEATURE_NAMES)), np.float32))
    with pytest.raises(DatasetError, match="images"):
        StampDataset(np.zeros((1, 21, 21, 3), np.float32), np.array([0]),
                     np.zeros((1, len(FEATURE_NAMES)), np.float32))


def test_preprocessing_is_the_workers() -> None:
    rng = np.random.default_rng(1)
    images = rng.normal(size=(4, 63, 63, 3)).astype(np.float32)
    images[2, 21:42, 21:42, 1] = np.nan  # all-NaN template crop: the worker refuses it
    out, kept = preprocess_images(images)
    assert kept.tolist() == [True, True, False, True]
    np.testing.assert_array_equal(out[2], preprocess_stamps([images[3][..., c]
                                                              for c in range(3)]))


def test_balanced_split() -> None:
    labels = np.repeat(np.arange(5), [50, 20, 60, 30, 40])
    train, val, test = split_balanced(labels, n_val=3, n_test=5, seed=2)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert len(train) + len(val) + len(test) == len(labels)
    assert np.bincount(labels[val]).tolist() == [3] * 5
    assert np.bincount(labels[test]).tolist() == [5] * 5
    again = split_balanced(labels, n_val=3, n_test=5, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    with pytest.raises(DatasetError, match="class SN has 20"):
        split_balanced(labels, n_val=10, n_test=10)


def test_augmentation_balances_with_symmetries() -> None:
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(5), [10, 2, 7, 10, 5])
    images = rng.normal(size=(len(labels), 21, 21, 3)).astype(np.float32)
    features = rng.normal(size=(len(labels), 4)).astype(np.float32)
    x, f, y = balance_by_augmentation(images, features, labels, seed=0)
    assert np.bincount(y).tolist() == [10] * 5
    # Every added SN stamp is a non-identity symmetry of one of the two SN originals.
    originals = images[labels == 1]
    variants = [dihedral(originals, k) for k in range(8)]
    for stamp in x[y == 1]:
        matches = [(k, i) for k in range(8) for i in range(2)
                   if np.array_equal(variants[k][i], stamp)]
        assert matches
    assert sum(any(np.array_equal(s, o) for o in originals) for s in x[y == 1]) >= 2


def test_dihedral_group() -> None:
    image = np.arange(2 * 3 * 3 * 1, dtype=np.float32).reshape(2, 3, 3, 1)
    outs = [dihedral(image, k) for k in range(8)]
    assert len({o.tobytes() for o in outs}) == 8
    np.testing.assert_array_equal(outs[0], image)


def test_metadata_table_kinds() -> None:
    rows = np.zeros(3, dtype=[("ra", "f8"), ("dec", "f8"), ("ndethist", "f8"),
                              ("ncovhist", "f8")])
    rows["ra"], rows["ncovhist"] = [10, 20, 30], [5, 6, 7]
    out = metadata_matrix(rows, 3)
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    assert out[:, col["non_detections"]].tolist() == [5, 6, 7]
    assert np.isnan(out[:, col["magpsf"]]).all()
    with pytest.raises(DatasetError, match="rows"):
        metadata_matrix({"ra": [1, 2]}, 3)
    with pytest.raises(DatasetError, match="dict of columns"):
        metadata_matrix([1, 2, 3], 3)
