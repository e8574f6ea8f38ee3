"""Training on real labelled alerts, mixed with simulated ones.

Real sets are small and lopsided (the shared one: 335 variable stars, 14 bogus
objects) and repeat objects (34 alerts of one SN), so the ALeRCE protocol's balanced
100/200-per-class validation and test sets cannot be cut from them.  Instead:

* every epoch draws the same number of **objects** of each class (with replacement for
  the small classes), one random alert of each, under a random rotation/flip of the
  square (class balance by augmentation, each object weighing once);
* simulated examples, if given, join each epoch with a weight of their own
  (``sim_weight`` per example, relative to a real draw): the simulator keeps the
  rare scenes covered, the real alerts teach what real stamps look like;
* the model can start from an artifact (``init_from``: its weights and its feature
  encoding), or from scratch;
* a share of the real draws with a detection history is shown as first detections
  (:func:`as_first_detection`): the real SNe are almost all late in their light curves
  (1 of 74 labelled SN alerts is a first detection), and a model that never saw a SN
  without history learns "no history → asteroid or bogus", the opposite of what a
  broker wants from its first alert;
* the number of epochs is fixed and chosen by object-grouped cross-validation
  (:mod:`training.cv`), not by early stopping on a validation split that would hold
  two or three bogus objects.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data import CLASS_NAMES, StampDataset, dihedral, preprocess_images
from training.grouped import object_balanced_draw, object_table
from training.models import BUILDERS, MODEL_INPUTS, TRUNK_FILTERS, check_trunk_filters
from worker.model.artifact import MANIFEST, MODEL_FILE, StampModel
from worker.prepare.features import FEATURE_NAMES, FeatureEncoding
from worker.prepare.stamps import PreprocessConfig


@dataclass(frozen=True)
class FineTuneConfig:
    """Parameters of one training run on real (and simulated) alerts.

    Parameters
    ----------
    epochs : int
        Epochs (fixed; chosen by grouped cross-validation).
    per_class : int or None
        Object draws per class per epoch (None: the object count of the largest class).
    sim_per_epoch : int
        Simulated examples drawn (balanced over classes) per epoch; 0 for real data only.
    sim_weight : float
        Loss weight of one simulated example relative to one real draw.
    first_detection_share : float
        Share of the real draws with earlier detections shown as first detections
        (:func:`as_first_detection`), in [0, 1].
    batch_size : int
        Examples per gradient step.
    learning_rate : float
        Adam learning rate.
    seed : int
        Seeds the draws, the augmentation and the initialization.
    init_from : str or None
        Artifact directory to start from (its weights and feature encoding); None
        trains a new model.
    model : {"rotinv", "baseline"}
        Architecture when training a new model.
    metadata_branch : bool
        ``rotinv`` from scratch: dense layers of its own for the features.
    feature_encoding : {"standard", "log-indicators"}
        Feature encoding when training a new model (fitted on the training data).
    trunk_filters : tuple of int
        ``rotinv`` from scratch: filters of the four trunk convolutions.
    version : str
        Version string of the exported artifact.
    """

    epochs: int = 45
    per_class: int | None = None
    sim_per_epoch: int = 0
    sim_weight: float = 0.3
    first_detection_share: float = 0.5
    batch_size: int = 128
    learning_rate: float = 5e-4
    seed: int = 0
    init_from: str | None = None
    model: str = "rotinv"
    metadata_branch: bool = True
    feature_encoding: str = "log-indicators"
    trunk_filters: tuple[int, int, int, int] = TRUNK_FILTERS
    version: str = "2"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")
        if self.per_class is not None and self.per_class < 1:
            raise ValueError("per_class must be positive")
        if self.sim_per_epoch < 0 or self.sim_weight < 0:
            raise ValueError("sim_per_epoch and sim_weight must not be negative")
        if self.model not in BUILDERS:
            raise ValueError(f"model must be one of {sorted(BUILDERS)}, got {self.model!r}")
        if not 0.0 <= self.first_detection_share <= 1.0:
            raise ValueError("first_detection_share must be in [0, 1]")
        check_trunk_filters(self.trunk_filters, self.model, self.init_from)


_NDETHIST = FEATURE_NAMES.index("ndethist")
_NCOVHIST = FEATURE_NAMES.index("ncovhist")
_NON_DETECTIONS = FEATURE_NAMES.index("non_detections")


def as_first_detection(features: np.ndarray) -> np.ndarray:
    """Raw features as the same alert would have them as its object's first detection.

    ``ndethist`` becomes 1 and ``non_detections`` = ``ncovhist`` − 1 (the field was
    covered as often, with no earlier detection); everything else is kept.  Alerts
    already without history are unchanged.

    Parameters
    ----------
    features : numpy.ndarray
        (N, F) raw features in :data:`worker.prepare.features.FEATURE_NAMES` order.

    Returns
    -------
    numpy.ndarray
        A modified copy.
    """
    out = np.array(features, dtype=np.float32, copy=True)
    history = out[:, _NDETHIST] > 1
    out[history, _NDETHIST] = 1.0
    out[history, _NON_DETECTIONS] = out[history, _NCOVHIST] - 1.0
    return out


@dataclass
class Prepared:
    """A dataset as model inputs: preprocessed images, raw features, labels, objects."""

    images: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    object_ids: np.ndarray

    @classmethod
    def of(cls, dataset: StampDataset, crop_size: int) -> Prepared:
        """Run the worker's preprocessing (examples it would refuse are dropped)."""
        images, kept = preprocess_images(dataset.images, crop_size)
        return cls(images, dataset.features[kept], dataset.labels[kept],
                   dataset.object_ids[kept])


def _augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image under a random one of the 8 symmetries of the square."""
    ops = rng.integers(0, 8, size=len(images))
    out = np.empty_like(images)
    for k in range(8):
        sel = ops == k
        if sel.any():
            out[sel] = dihedral(images[sel], k)
    return out


def _start_model(config: FineTuneConfig, real: Prepared, start: StampModel | None
                 ) -> tuple[Any, FeatureEncoding, str, tuple[str, ...]]:
    """The Keras model to train, its feature encoding, its name and its inputs.

    ``start`` is the loaded ``init_from`` artifact (None: a new model).
    """
    import keras

    from training.train import fit_encoding

    if start is not None:
        # A fresh copy: the loaded artifact stays as it is for whoever else holds it.
        model = keras.models.clone_model(start.keras_model)
        model.set_weights(start.keras_model.get_weights())
        return model, start.manifest.features, start.name, start.manifest.inputs
    input_shape = real.images.shape[1:]
    encoding = fit_encoding(real.features, config.feature_encoding)
    inputs = MODEL_INPUTS[config.model]
    builder = BUILDERS[config.model]
    if "features" in inputs:
        model = builder(input_shape, n_features=encoding.width,
                        metadata_branch=config.metadata_branch,
                        trunk_filters=tuple(config.trunk_filters))
    else:
        model = builder(input_shape)
    return model, encoding, config.model, inputs


@dataclass
class Trained:
    """The result of :func:`fine_tune`: a Keras model and what its artifact needs."""

    model: Any
    encoding: FeatureEncoding
    name: str
    inputs: tuple[str, ...]
    crop_size: int
    history: list[float]
    seconds: float

    def predict(self, images: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Probabilities (N, 5) for preprocessed images and raw features."""
        from training.train import predict_batches

        inputs = {"image": images}
        if "features" in self.inputs:
            inputs["features"] = self.encoding.encode(features)
        return predict_batches(self.model, inputs)


def fine_tune(real: StampDataset, config: FineTuneConfig, sim: StampDataset | None = None,
              crop_size: int = 21, verbose: bool = False) -> Trained:
    """Train on real labelled alerts (object-balanced), optionally mixed with simulated ones.

    Parameters
    ----------
    real : StampDataset
        Real examples with object ids.
    config : FineTuneConfig
        Parameters.
    sim : StampDataset, optional
        Simulated examples (needed when ``config.sim_per_epoch`` > 0).
    crop_size : int
        Centre crop side [pixels] (an ``init_from`` artifact's own wins).
    verbose : bool
        Print one line per epoch.

    Returns
    -------
    Trained
    """
    import keras

    start_time = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    start = (StampModel.load(config.init_from, warm_up=False, backend="keras")
             if config.init_from else None)
    if start is not None:
        crop_size = start.preprocess.crop_size
    real_p = Prepared.of(real, crop_size)
    model, encoding, name, inputs = _start_model(config, real_p, start)
    uses_features = "features" in inputs
    sim_p = Prepared.of(sim, crop_size) if sim is not None and config.sim_per_epoch else None
    if config.sim_per_epoch and sim_p is None:
        raise ValueError("sim_per_epoch > 0 needs simulated examples")
    objects, classes, _ = object_table(real_p.labels, real_p.object_ids)
    per_class = config.per_class or int(np.bincount(classes).max())
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="sparse_categorical_crossentropy", weighted_metrics=[])
    history = []
    for epoch in range(config.epochs):
        idx = object_balanced_draw(real_p.labels, real_p.object_ids, per_class, rng)
        real_f = real_p.features[idx]
        if config.first_detection_share:
            shown_first = rng.random(len(idx)) < config.first_detection_share
            real_f[shown_first] = as_first_detection(real_f[shown_first])
        x = [real_p.images[idx]]
        f = [real_f]
        y = [real_p.labels[idx]]
        w = [np.ones(len(idx), np.float32)]
        if sim_p is not None:
            sim_idx = object_balanced_draw(sim_p.labels, sim_p.object_ids,
                                           max(1, config.sim_per_epoch // len(CLASS_NAMES)),
                                           rng)
            x.append(sim_p.images[sim_idx])
            f.append(sim_p.features[sim_idx])
            y.append(sim_p.labels[sim_idx])
            w.append(np.full(len(sim_idx), config.sim_weight, np.float32))
        order = rng.permutation(sum(len(part) for part in y))
        images = _augment(np.concatenate(x), rng)[order]
        batch = {"image": images}
        if uses_features:
            batch["features"] = encoding.encode(np.concatenate(f)[order])
        result = model.fit(batch, np.concatenate(y)[order],
                           sample_weight=np.concatenate(w)[order], epochs=1,
                           batch_size=config.batch_size, verbose=0, shuffle=False)
        history.append(float(result.history["loss"][0]))
        if verbose:
            print(f"epoch {epoch + 1}/{config.epochs}: loss {history[-1]:.4f}", flush=True)
    return Trained(model, encoding, name, tuple(inputs), crop_size, history,
                   time.perf_counter() - start_time)


def export(trained: Trained, config: FineTuneConfig, out_dir: str | Path,
           data: dict[str, Any], metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the artifact (``model.keras``, ``manifest.json``) of a :func:`fine_tune` run.

    Parameters
    ----------
    trained : Trained
        The model.
    config : FineTuneConfig
        Its parameters (recorded).
    out_dir : str or Path
        Artifact directory.
    data : dict
        Description of the training data (sources, fingerprints, counts), recorded.
    metrics : dict, optional
        Figures to record (e.g. the grouped cross-validation that chose the config).

    Returns
    -------
    dict
        The manifest.
    """
    import keras

    from training.train import manifest_head

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trained.model.save(out_dir / MODEL_FILE)
    manifest = {
        **manifest_head(trained.model, trained.name, config.version,
                        PreprocessConfig(crop_size=trained.crop_size), trained.inputs,
                        trained.encoding),
        "training": {
            "protocol": "real alerts, object-balanced draws with rotations/flips, "
                        "simulated examples mixed in (training.finetune)",
            **asdict(config), "data": data, "epochs_run": config.epochs,
            "loss_per_epoch": [round(v, 5) for v in trained.history],
            "seconds": round(trained.seconds, 1),
            "keras": keras.__version__, "backend": keras.backend.backend(),
            "python": platform.python_version(), "machine": platform.machine(),
        },
        "metrics": metrics or {},
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
