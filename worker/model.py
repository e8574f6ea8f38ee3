"""The model artifact: a ``.keras`` file plus ``manifest.json``, loaded and run by the worker.

An artifact directory holds::

    model.keras      the Keras 3 model (custom layers from worker.layers only)
    manifest.json    name, version, class names in order, preprocessing version and
                     parameters, model inputs, feature names and their encoding
                     (standardization statistics, log scales, missing-value
                     indicators), training data fingerprint, test metrics

:meth:`StampModel.load` refuses an artifact whose preprocessing version this worker does
not implement, whose classes or features differ from the worker's, or that needs
unsafe deserialization (Keras safe mode stays on).  :meth:`StampModel.predict` takes the
preprocessed images and *raw* feature vectors, encodes the features as the manifest
says (:class:`worker.features.FeatureEncoding`) and returns probabilities.
The code uses Keras 3 only, so the same artifact runs with ``KERAS_BACKEND`` set to
``tensorflow`` (default) or ``jax``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from worker.features import FEATURE_NAMES, FeatureEncoding
from worker.stamps import PREPROCESSING_VERSION, PreprocessConfig

CLASS_NAMES: tuple[str, ...] = ("AGN", "SN", "VS", "asteroid", "bogus")
MANIFEST = "manifest.json"
MODEL_FILE = "model.keras"
MANIFEST_FORMAT = 1


def bucket_size(n: int) -> int:
    """The padded batch size used for ``n`` examples: the next power of two (at least 8)."""
    return max(8, 1 << (max(n, 1) - 1).bit_length())


class ModelError(RuntimeError):
    """A model artifact cannot be used (the message says what is wrong and what to do)."""


def default_model_path() -> Path:
    """The artifact bundled with the worker (trained on simulated stamps; see README)."""
    return Path(str(files("worker").joinpath("models", "default")))


@dataclass(frozen=True)
class Manifest:
    """What a model artifact promises about its inputs and outputs.

    Attributes
    ----------
    name, version : str
        Model name (``baseline``, ``rotinv``) and artifact version.
    class_names : tuple of str
        Output order of the probabilities.
    preprocessing : dict
        :meth:`worker.stamps.PreprocessConfig.as_dict` of the training data.
    inputs : tuple of str
        ``("image",)`` or ``("image", "features")``.
    features : FeatureEncoding
        How raw feature vectors become the model's feature input (statistics measured
        on the training set, log scales, missing-value indicators).
    raw : dict
        The whole manifest (fingerprint, metrics, training parameters...).
    """

    name: str
    version: str
    class_names: tuple[str, ...]
    preprocessing: dict[str, Any]
    inputs: tuple[str, ...]
    features: FeatureEncoding
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Manifest:
        """Validate a parsed manifest against what this worker implements."""
        try:
            manifest = cls(
                name=str(data["name"]), version=str(data["version"]),
                class_names=tuple(data["class_names"]),
                preprocessing=dict(data["preprocessing"]), inputs=tuple(data["inputs"]),
                features=FeatureEncoding.from_dict(data["features"]), raw=data)
        except (KeyError, TypeError) as exc:
            raise ModelError(f"{where}: manifest is incomplete or malformed ({exc!r})") from exc
        except ValueError as exc:
            raise ModelError(f"{where}: {exc}") from exc
        version = str(manifest.preprocessing.get("version"))
        if version != PREPROCESSING_VERSION:
            raise ModelError(f"{where}: model needs preprocessing version {version}, this "
                             f"worker implements {PREPROCESSING_VERSION}; use a matching "
                             "worker release or retrain the model")
        if manifest.class_names != CLASS_NAMES:
            raise ModelError(f"{where}: classes {manifest.class_names} are not the worker's "
                             f"{CLASS_NAMES}")
        if manifest.inputs not in (("image",), ("image", "features")):
            raise ModelError(f"{where}: unknown model inputs {manifest.inputs}")
        return manifest

    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing the model was trained with."""
        p = self.preprocessing
        return PreprocessConfig(crop_size=int(p["crop_size"]), stamp_size=int(p["stamp_size"]),
                                non_square=p["non_square"])


class StampModel:
    """A loaded, warmed-up classifier.

    Use :meth:`load`; predictions come from :meth:`predict`.
    """

    def __init__(self, keras_model: Any, manifest: Manifest, path: Path) -> None:
        self._model = keras_model
        self.manifest = manifest
        self.path = path
        self.preprocess = manifest.preprocess_config()

    @property
    def name(self) -> str:
        """Model name from the manifest."""
        return self.manifest.name

    @property
    def version(self) -> str:
        """Artifact version from the manifest."""
        return self.manifest.version

    @classmethod
    def load(cls, path: str | Path | None = None, warm_up: bool = True) -> StampModel:
        """Load an artifact directory (default: the bundled model).

        Parameters
        ----------
        path : str or Path, optional
            Artifact directory holding ``model.keras`` and ``manifest.json``.
        warm_up : bool
            Run one prediction so the first real batch does not pay for tracing.

        Raises
        ------
        ModelError
            Missing files, a manifest this worker cannot honour, or a model file that
            does not load in safe mode or does not match its manifest.
        """
        path = Path(path) if path is not None else default_model_path()
        manifest_path, model_path = path / MANIFEST, path / MODEL_FILE
        for needed in (manifest_path, model_path):
            if not needed.is_file():
                raise ModelError(f"{needed}: missing; a model artifact is a directory with "
                                 f"{MODEL_FILE} and {MANIFEST} (made by `stamp-train train`)")
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{manifest_path}: not valid JSON ({exc})") from exc
        manifest = Manifest.from_dict(data, str(manifest_path))
        # Deferred: a bad manifest is reported without importing a backend.  The first
        # import drops TensorFlow's start-up notices below TF_CPP_MIN_LOG_LEVEL.
        from worker.commandline import import_keras

        import_keras()
        import keras

        import worker.layers  # noqa: F401  (registers the custom layers)

        try:
            model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
        except Exception as exc:  # Keras raises ValueError, TypeError, OSError...
            raise ModelError(f"{model_path}: does not load in Keras safe mode ({exc})") from exc
        input_names = tuple(sorted(t.name.split(":")[0] for t in model.inputs))
        if input_names != tuple(sorted(manifest.inputs)):
            raise ModelError(f"{model_path}: model inputs {input_names} differ from the "
                             f"manifest's {manifest.inputs}")
        widths = {t.name.split(":")[0]: t.shape[-1] for t in model.inputs}
        if "features" in widths and widths["features"] != manifest.features.width:
            raise ModelError(f"{model_path}: the model takes {widths['features']} features, "
                             f"the manifest's encoding gives {manifest.features.width}")
        stamp_model = cls(model, manifest, path)
        if warm_up:
            stamp_model.predict(np.zeros((1, *stamp_model.image_shape), np.float32),
                                np.zeros((1, len(FEATURE_NAMES)), np.float32))
        return stamp_model

    def warm_up(self, max_batch: int) -> None:
        """Trace every padded batch shape up to ``max_batch`` now, not mid-stream.

        Parameters
        ----------
        max_batch : int
            Largest micro-batch the caller will pass [alerts].
        """
        size = 8
        while True:
            self.predict(np.zeros((size, *self.image_shape), np.float32),
                         np.zeros((size, len(FEATURE_NAMES)), np.float32))
            if size >= bucket_size(max_batch):
                return
            size *= 2

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one model image (crop, crop, 3)."""
        crop = self.preprocess.crop_size
        return (crop, crop, 3)

    def model_inputs(self, images: np.ndarray, features: np.ndarray) -> dict[str, np.ndarray]:
        """The dict the Keras model takes: images, and encoded features if used."""
        inputs = {"image": np.asarray(images, np.float32)}
        if "features" in self.manifest.inputs:
            inputs["features"] = self.manifest.features.encode(features)
        return inputs

    def predict(self, images: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch.

        Parameters
        ----------
        images : numpy.ndarray
            (N, crop, crop, 3) float32 from :func:`worker.stamps.preprocess_stamps`.
        features : numpy.ndarray
            (N, F) raw features from :func:`worker.features.metadata_features`.

        Returns
        -------
        numpy.ndarray
            (N, 5) float32 probabilities in :data:`CLASS_NAMES` order.
        """
        n = len(images)
        if n == 0:
            return np.zeros((0, len(CLASS_NAMES)), np.float32)
        # Each new batch shape makes the backend trace the model again (~0.3 s on CPU),
        # and micro-batch sizes vary all the time: pad to a power of two so a handful of
        # shapes serve every batch.
        size = bucket_size(n)
        inputs = self.model_inputs(images, features)
        if size != n:
            inputs = {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
                      for k, v in inputs.items()}
        out = self._model.predict_on_batch(inputs)
        return np.asarray(out, dtype=np.float32)[:n]
