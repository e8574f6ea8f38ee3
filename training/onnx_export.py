"""Export a model artifact to ONNX so the worker can serve it without TensorFlow.

:func:`export_onnx` converts an artifact's ``model.keras`` to ``model.onnx`` (through
Keras' own exporter, which uses ``tf2onnx`` on the TensorFlow backend), checks the ONNX
model against Keras on a fixed batch and records the file in ``manifest.json``::

    "onnx": {"file": "model.onnx", "sha256": "...", "opset": 17,
             "max_abs_diff": 3e-08, "check_batch": 64, "exporter": "tf2onnx 1.17.0"}

The worker (:class:`worker.model.artifact.StampModel` with backend ``onnx`` or ``auto``) then
runs the model with ONNX Runtime and never imports TensorFlow or Keras.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from worker.model.artifact import MANIFEST, ONNX_FILE, ModelError, StampModel
from worker.prepare.features import FEATURE_NAMES

#: ONNX operator set written (ONNX Runtime ≥ 1.14 runs it).
ONNX_OPSET = 17
#: Examples in the fixed batch compared at export time.
CHECK_BATCH = 64
#: Largest probability difference to Keras accepted at export (the worker's promise).
TOLERANCE = 1e-5


def sha256_file(path: Path) -> str:
    """Hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_batch(model: StampModel, n: int = CHECK_BATCH, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, reproducible batch of images and raw features for comparing backends.

    Images are uniform in [0, 1] like the min-max normalized stamps; raw features are
    drawn around the manifest's training statistics (so the encoded features are of
    order one), with 5 % of the values missing (NaN) and a fifth of those that have a
    missing-value indicator.

    Parameters
    ----------
    model : StampModel
        Gives the image shape and the feature statistics.
    n : int
        Examples.
    seed : int
        Random seed.

    Returns
    -------
    images, features : numpy.ndarray
        (n, crop, crop, 3) and (n, F) float32.
    """
    rng = np.random.default_rng(seed)
    images = rng.random((n, *model.image_shape), dtype=np.float32)
    encoding = model.manifest.features
    scaled = rng.normal(encoding.mean, encoding.std, size=(n, len(FEATURE_NAMES)))
    features = scaled.copy()
    for name in encoding.log_scaled:  # invert signed_log1p
        i = FEATURE_NAMES.index(name)
        features[:, i] = np.sign(scaled[:, i]) * np.expm1(np.abs(scaled[:, i]))
    # Missing values, as in real alerts: a few anywhere, more where an indicator says so.
    features[rng.random(features.shape) < 0.05] = np.nan
    for name in encoding.indicators:
        features[rng.random(n) < 0.2, FEATURE_NAMES.index(name)] = np.nan
    return images, features.astype(np.float32)


def export_onnx(artifact: str | Path, opset: int = ONNX_OPSET) -> dict[str, Any]:
    """Write ``model.onnx`` into an artifact, check it against Keras, list it in the manifest.

    Parameters
    ----------
    artifact : str or Path
        Artifact directory (``model.keras`` and ``manifest.json``).
    opset : int
        ONNX operator set version.

    Returns
    -------
    dict
        The manifest's ``"onnx"`` entry.

    Raises
    ------
    ModelError
        The artifact does not load, or the ONNX model's probabilities differ from
        Keras' by more than :data:`TOLERANCE` (nothing is written then).
    """
    artifact = Path(artifact)
    # Loading the Keras model first imports TensorFlow without its start-up notices.
    keras_model = StampModel.load(artifact, warm_up=False, backend="keras")
    import onnxruntime

    try:
        import tf2onnx
    except ImportError as exc:
        raise ModelError("the ONNX export needs tf2onnx: pip install "
                         "'stamp-classifier-worker[train]'") from exc
    images, features = check_batch(keras_model)
    expected = keras_model.predict(images, features)
    target = artifact / ONNX_FILE
    with tempfile.TemporaryDirectory(dir=artifact) as tmp:
        candidate = Path(tmp) / ONNX_FILE
        try:
            with warnings.catch_warnings():
                # Keras' tf2onnx shim probes np.object (a numpy 2 FutureWarning).
                warnings.simplefilter("ignore", FutureWarning)
                keras_model.keras_model.export(str(candidate), format="onnx", verbose=False,
                                               opset_version=opset)
        except Exception as exc:  # the converter raises many kinds of errors
            raise ModelError(f"{artifact}: ONNX export failed ({exc})") from exc
        session = onnxruntime.InferenceSession(str(candidate),
                                               providers=["CPUExecutionProvider"])
        feeds = keras_model.model_inputs(images, features)
        got = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
        diff = float(np.max(np.abs(np.asarray(got, np.float32) - expected)))
        if not diff <= TOLERANCE:
            raise ModelError(f"{artifact}: the ONNX model's probabilities differ from Keras' "
                             f"by {diff:.2e} (more than {TOLERANCE:.0e}); not written")
        candidate.replace(target)
    entry = {"file": ONNX_FILE, "sha256": sha256_file(target), "opset": opset,
             "max_abs_diff": diff, "check_batch": len(images),
             "exporter": f"tf2onnx {tf2onnx.__version__}"}
    manifest_path = artifact / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["onnx"] = entry
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return entry
