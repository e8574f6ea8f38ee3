"""Object-grouped splits and object-balanced sampling for real alerts.

Real alert sets repeat objects: SN 2021rhu has 34 alerts in the shared set, most
variable stars one.  An object seen in training and again in validation inflates every
figure, and 34 alerts of one SN must not weigh as 34 SNe.  So everything here works on
objects: folds and splits never share an object, and training draws objects (then one
of their alerts) so each object counts once and each class equally.
"""

from __future__ import annotations

import numpy as np

from training.data import CLASS_NAMES, DatasetError


def object_table(labels: np.ndarray, object_ids: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct objects, their class, and each example's object index.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, numpy.ndarray)
        Object ids (M,), the class of each object (M,) and, per example, the index of
        its object (N,).

    Raises
    ------
    DatasetError
        An object has examples of two classes (its label must be one).
    """
    objects, inverse = np.unique(object_ids, return_inverse=True)
    classes = np.full(len(objects), -1, np.int64)
    classes[inverse] = labels
    mixed = np.flatnonzero(classes[inverse] != labels)
    if len(mixed):
        i = mixed[0]
        raise DatasetError(f"object {object_ids[i]} has alerts labelled "
                           f"{CLASS_NAMES[labels[i]]} and {CLASS_NAMES[classes[inverse[i]]]}")
    return objects, classes, inverse


def grouped_folds(labels: np.ndarray, object_ids: np.ndarray, k: int = 5, seed: int = 0
                  ) -> np.ndarray:
    """Assign each example to one of ``k`` folds, by object, stratified by class.

    The objects of each class are shuffled and dealt round-robin to the folds (each
    class starting at the fold that has the fewest objects so far), so every fold gets
    ⌊M_c/k⌋ or ⌈M_c/k⌉ objects of class c and no object is in two folds.

    Parameters
    ----------
    labels : numpy.ndarray
        (N,) class indices.
    object_ids : numpy.ndarray
        (N,) object of each example.
    k : int
        Number of folds, ≥ 2.
    seed : int
        Seeds the shuffle.

    Returns
    -------
    numpy.ndarray
        (N,) fold index of each example.
    """
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    objects, classes, inverse = object_table(labels, object_ids)
    rng = np.random.default_rng(seed)
    fold_of_object = np.empty(len(objects), np.int64)
    sizes = np.zeros(k, np.int64)
    for cls in range(len(CLASS_NAMES)):
        members = rng.permutation(np.flatnonzero(classes == cls))
        start = int(np.argmin(sizes))
        folds = (start + np.arange(len(members))) % k
        fold_of_object[members] = folds
        sizes += np.bincount(folds, minlength=k)
    return fold_of_object[inverse]


def object_balanced_draw(labels: np.ndarray, object_ids: np.ndarray, per_class: int,
                         rng: np.random.Generator) -> np.ndarray:
    """Draw ``per_class`` examples of each class: a random object, then one of its alerts.

    Every object of a class is equally likely however many alerts it has, and every
    class gives the same number of draws (minority classes are drawn with
    replacement: the caller augments the copies).

    Returns
    -------
    numpy.ndarray
        Example indices, ``per_class`` for each class present.
    """
    objects, classes, inverse = object_table(labels, object_ids)
    # Each object's example indices in ascending order, grouped by one stable sort
    # (a scan per object would cost objects × examples on a broker's archive).
    order = np.argsort(inverse, kind="stable")
    members_of = np.split(order, np.cumsum(np.bincount(inverse, minlength=len(objects)))[:-1])
    out = []
    for cls in range(len(CLASS_NAMES)):
        pool = np.flatnonzero(classes == cls)
        if len(pool) == 0:
            continue
        chosen = rng.choice(pool, size=per_class, replace=per_class > len(pool))
        out.extend(int(rng.choice(members_of[o])) for o in chosen)
    return np.array(out, np.int64)
