"""training.grouped: folds and splits never share an object; draws balance objects."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.data import DatasetError
from training.grouped import grouped_folds, object_balanced_draw, object_table

# Datasets as lists of (object number, class): an object keeps one class.
objects_st = st.lists(st.tuples(st.integers(0, 40), st.integers(1, 6)), min_size=1, max_size=60)


def _dataset(spec: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    ids, labels = [], []
    for number, repeats in spec:
        ids += [f"obj{number}"] * repeats
        labels += [number % 5] * repeats
    order = np.random.default_rng(0).permutation(len(ids))
    return np.array(labels)[order], np.array(ids)[order]


@settings(max_examples=150, deadline=None)
@given(spec=objects_st, k=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_folds_never_share_an_object_and_are_stratified(spec, k: int, seed: int) -> None:
    labels, ids = _dataset(spec)
    folds = grouped_folds(labels, ids, k, seed)
    for obj in set(ids.tolist()):
        assert len(set(folds[ids == obj].tolist())) == 1
    objects, classes, inverse = object_table(labels, ids)
    fold_of_object = np.empty(len(objects), int)
    fold_of_object[inverse] = folds
    for cls in range(5):
        per_fold = np.bincount(fold_of_object[classes == cls], minlength=k)
        assert per_fold.max() - per_fold.min() <= 1


def test_object_balanced_draw_weighs_objects_not_alerts() -> None:
    # One SN with 30 alerts and 3 SNe with one each; 50 stars.
    ids = ["big"] * 30 + ["s1", "s2", "s3"] + [f"v{i}" for i in range(50)]
    labels = np.array([1] * 33 + [2] * 50)
    rng = np.random.default_rng(0)
    draws = np.concatenate([object_balanced_draw(labels, np.array(ids), 40, rng)
                            for _ in range(200)])
    assert np.bincount(labels[draws], minlength=5).tolist() == [0, 8000, 8000, 0, 0]
    big_share = np.isin(draws, np.arange(30)).sum() / 8000
    assert big_share == pytest.approx(0.25, abs=0.03)  # one object of four, not 30 of 33


def test_an_object_with_two_classes_is_refused() -> None:
    with pytest.raises(DatasetError, match="object a has alerts labelled"):
        grouped_folds(np.array([0, 1, 2]), np.array(["a", "a", "b"]), 2)
