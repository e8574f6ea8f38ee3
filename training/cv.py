"""Object-grouped k-fold cross-validation on real alerts: the model-selection number.

Each fold holds out whole objects (stratified by class, :func:`training.grouped.
grouped_folds`), trains with :func:`training.finetune.fine_tune` on the other folds and
predicts the held-out alerts; the out-of-fold predictions of all folds are scored
together, per alert and per object, with intervals (:func:`training.evaluate.
evaluate_real`).  A model that only memorised the shared objects scores badly here,
which is the point: brokers run it on objects it has never seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from training.data import StampDataset, preprocess_images
from training.evaluate import classification_table, evaluate_real, per_object
from training.finetune import FineTuneConfig, as_first_detection, fine_tune
from training.grouped import grouped_folds


@dataclass
class CVResult:
    """Out-of-fold predictions and their figures.

    Attributes
    ----------
    probs : numpy.ndarray
        (N, 5) out-of-fold probabilities, one row per example.
    folds : numpy.ndarray
        (N,) fold of each example.
    figures : dict
        :func:`training.evaluate.evaluate_real` of the pooled predictions; its
        ``as_first_detection`` entry scores, per object, the same held-out alerts shown
        as first detections (:func:`training.finetune.as_first_detection`).
    per_fold : list of dict
        Per fold: objects held out, per-object balanced accuracy, training seconds.
    """

    probs: np.ndarray
    folds: np.ndarray
    figures: dict[str, Any]
    per_fold: list[dict[str, Any]]


def cross_validate(real: StampDataset, config: FineTuneConfig, k: int = 5,
                   sim: StampDataset | None = None, fold_seed: int = 0,
                   verbose: bool = False) -> CVResult:
    """Object-grouped k-fold cross-validation of one training configuration.

    Parameters
    ----------
    real : StampDataset
        Real labelled alerts with object ids.
    config : FineTuneConfig
        Training configuration (the same for every fold).
    k : int
        Number of folds.
    sim : StampDataset, optional
        Simulated examples mixed into every fold's training (never into its test).
    fold_seed : int
        Seeds the assignment of objects to folds.
    verbose : bool
        Print a line per fold.

    Returns
    -------
    CVResult
    """
    folds = grouped_folds(real.labels, real.object_ids, k, fold_seed)
    probs = np.zeros((len(real), 5), np.float32)
    first_probs = np.zeros((len(real), 5), np.float32)
    per_fold = []
    for fold in range(k):
        test = folds == fold
        trained = fine_tune(real.subset(np.flatnonzero(~test)), config, sim)
        held = real.subset(np.flatnonzero(test))
        images, kept = preprocess_images(held.images, trained.crop_size)
        if not kept.all():  # a dataset from `stamp-train dataset` holds none of these
            raise ValueError("held-out examples the preprocessing refuses")
        probs[test] = trained.predict(images, held.features)
        first_probs[test] = trained.predict(images, as_first_detection(held.features))
        obj_probs, obj_labels, objects = per_object(probs[test], held.labels, held.object_ids)
        table = classification_table(obj_probs, obj_labels, n_boot=0)
        per_fold.append({"fold": fold, "objects": int(len(objects)),
                         "alerts": int(test.sum()),
                         "balanced_accuracy": table["balanced_accuracy"],
                         "seconds": round(trained.seconds, 1)})
        if verbose:
            print(f"fold {fold + 1}/{k}: {len(objects)} objects, per-object balanced "
                  f"accuracy {table['balanced_accuracy']:.1%} ({trained.seconds:.0f} s)",
                  flush=True)
    figures = evaluate_real(probs, real)
    obj_probs, obj_labels, _ = per_object(first_probs, real.labels, real.object_ids)
    figures["as_first_detection"] = classification_table(obj_probs, obj_labels, n_boot=0)
    return CVResult(probs, folds, figures, per_fold)
