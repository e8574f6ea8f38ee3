"""An 8-bit copy of an artifact's ONNX model, for a cheaper model call on the CPU.

:func:`quantize_onnx` writes ``model.int8.onnx`` beside an artifact's ``model.onnx``:
weights and activations of the convolutions, dense layers, ReLUs and poolings in 8 bits
(ONNX "QDQ" form, signed 8-bit, the weights per output channel and within 7 bits), with
activation ranges calibrated on real stamps.  ONNX Runtime then runs the convolutions with integer
instructions (VNNI where the CPU has them), which takes 0.56–0.79 of the float model's
CPU time per alert (README, Performance).

Quantization moves the probabilities a little, so the copy is checked against the
float model on stamps of *other objects* than those used for calibration (the
examples are split by object), and listed in ``manifest.json`` with what the check
measured::

    "onnx_int8": {"file": "model.int8.onnx", "sha256": "...",
                  "calibration": {"examples": 512, "objects": 180},
                  "check": {"examples": 640, "objects": 181, "top_class_agreement": 0.997,
                            "max_abs_diff": 0.09, "mean_abs_diff": 0.004},
                  "quantizer": "onnxruntime 1.32.0 (QDQ, s8s8, 7-bit weights, per channel, MinMax)",
                  "operators": ["Conv", "MatMul", "Relu", "MaxPool"]}

A copy whose top class differs from the float model's on more than ``1 − min_agreement``
of the check examples is not written.  The worker serves it with
``model_backend: onnx-int8`` and says so in every label (``model_version`` ends in
``+int8``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from training.data import StampDataset, preprocess_images
from training.onnx_export import sha256_file
from worker.model.artifact import INT8_ONNX_FILE, MANIFEST, ModelError, StampModel

#: Operators computed in 8 bits.  With the ReLUs and poolings the convolutions' outputs
#: stay 8-bit between them (1.6× faster than float on the bundled model; the convolutions
#: and dense layers alone: 1.35×); the rest (the rotations' concatenation and mean, the
#: softmax) stays float, which kept the largest probability difference at 0.02 instead of
#: 0.09 with every operator (both measured on the shared real alerts, one thread).
QUANTIZED_OPERATORS = ("Conv", "MatMul", "Relu", "MaxPool")
#: Calibration examples used at most (activation ranges settle well before this).
CALIBRATION_EXAMPLES = 512
#: Least share of check examples whose top class must equal the float model's.
MIN_AGREEMENT = 0.99
# Examples per calibration and check call (the worker's ONNX Runtime calls hold 64 rows).
_ROWS = 64


def split_by_object(object_ids: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two halves of the examples with no object in both.

    Parameters
    ----------
    object_ids : numpy.ndarray
        (N,) object of each example.
    seed : int
        Seed of the permutation of the objects.

    Returns
    -------
    calibration, check : numpy.ndarray
        Example indices; the objects are shuffled and split in two halves.
    """
    objects = np.unique(object_ids)
    shuffled = np.random.default_rng(seed).permutation(objects)
    first = set(shuffled[: (len(objects) + 1) // 2].tolist())
    in_first = np.array([o in first for o in object_ids.tolist()], bool)
    return np.flatnonzero(in_first), np.flatnonzero(~in_first)


def _run(session: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Probabilities of an ONNX Runtime session, in calls of at most :data:`_ROWS` rows."""
    names = [i.name for i in session.get_inputs()]
    n = len(inputs["image"])
    return np.concatenate([
        session.run(None, {k: inputs[k][i:i + _ROWS] for k in names})[0]
        for i in range(0, n, _ROWS)]).astype(np.float32)


def quantize_onnx(artifact: str | Path, dataset: StampDataset,
                  examples: int = CALIBRATION_EXAMPLES, min_agreement: float = MIN_AGREEMENT,
                  seed: int = 0) -> dict[str, Any]:
    """Write ``model.int8.onnx`` into an artifact, check it, list it in the manifest.

    Parameters
    ----------
    artifact : str or Path
        Artifact directory whose manifest lists a ``model.onnx``.
    dataset : StampDataset
        Real stamps (labels unused): half of the objects calibrate the activation
        ranges, the other half check the result.  Needs at least 2 objects.
    examples : int
        Most calibration examples (drawn at random from the calibration half).
    min_agreement : float
        Least share of check examples, 0 to 1, whose top class must equal the float
        model's; below it nothing is written.
    seed : int
        Seed of the object split and of the calibration draw.

    Returns
    -------
    dict
        The manifest's ``"onnx_int8"`` entry.

    Raises
    ------
    ModelError
        The artifact has no ONNX model, the dataset has fewer than two objects, the
        quantizer is not installed or fails, or the check fails.
    """
    artifact = Path(artifact)
    model = StampModel.load(artifact, warm_up=False, backend="onnx", threads=1)
    if len(np.unique(dataset.object_ids)) < 2:
        raise ModelError("quantization needs stamps of at least 2 objects (half calibrate, "
                         "half check)")
    try:
        import onnxruntime
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ModelError(f"quantization needs onnxruntime's quantization tools and onnx "
                         f"({exc}): pip install 'stamp-classifier-worker[train]'") from exc
    images, _ = preprocess_images(dataset.images, model.preprocess.crop_size)
    inputs = model.model_inputs(images, dataset.features)
    calibration, check = split_by_object(dataset.object_ids, seed)
    rng = np.random.default_rng(seed)
    drawn = np.sort(rng.choice(calibration, min(examples, len(calibration)), replace=False))

    class _Batches(CalibrationDataReader):
        """The calibration examples, in calls of :data:`_ROWS` rows."""

        def __init__(self) -> None:
            self._batches = iter([{k: v[drawn[i:i + _ROWS]] for k, v in inputs.items()}
                                  for i in range(0, len(drawn), _ROWS)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    source = model.path / Path(model.manifest.raw["onnx"]["file"]).name
    target = artifact / INT8_ONNX_FILE
    with tempfile.TemporaryDirectory(dir=artifact) as tmp:
        prepared, candidate = Path(tmp) / "prepared.onnx", Path(tmp) / INT8_ONNX_FILE
        try:
            # Shape inference and constant folding first, as ONNX Runtime advises; the
            # symbolic pass (sympy) is not needed: the only unknown dimension is the batch.
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(candidate), _Batches(),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, per_channel=True,
                            # 7-bit weights: on x86 CPUs without VNNI, ONNX Runtime's
                            # 8-bit kernels add products in pairs into 16 bits, which 8-bit
                            # weights can overflow (saturate); 7-bit ones cannot, so the
                            # check made here holds on every x86 CPU.  Same speed, and the
                            # same agreement on the bundled model (max difference 0.027
                            # instead of 0.018).
                            reduce_range=True,
                            calibrate_method=CalibrationMethod.MinMax,
                            op_types_to_quantize=list(QUANTIZED_OPERATORS))
        except Exception as exc:  # the quantizer raises many kinds of errors
            raise ModelError(f"{artifact}: quantization failed ({exc})") from exc
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        int8_session = onnxruntime.InferenceSession(str(candidate), options,
                                                    providers=["CPUExecutionProvider"])
        # The float model is the one loaded above (its own session and encoding).
        expected = model.predict(images[check], dataset.features[check])
        got = _run(int8_session, {k: v[check] for k, v in inputs.items()})
        agreement = float(np.mean(expected.argmax(1) == got.argmax(1)))
        diff = np.abs(expected - got)
        if not agreement >= min_agreement:
            raise ModelError(f"{artifact}: the 8-bit model's top class equals the float "
                             f"model's on {agreement:.2%} of {len(check)} check examples "
                             f"(less than {min_agreement:.2%}); not written")
        candidate.replace(target)
    entry = {"file": INT8_ONNX_FILE, "sha256": sha256_file(target),
             "calibration": {"examples": int(len(drawn)),
                             "objects": int(len(np.unique(dataset.object_ids[drawn])))},
             "check": {"examples": int(len(check)),
                       "objects": int(len(np.unique(dataset.object_ids[check]))),
                       "top_class_agreement": agreement,
                       "max_abs_diff": float(diff.max()),
                       "mean_abs_diff": float(diff.mean())},
             "quantizer": f"onnxruntime {onnxruntime.__version__} (QDQ, s8s8, 7-bit weights, "
                          "per channel, MinMax)",
             "operators": list(QUANTIZED_OPERATORS)}
    manifest_path = artifact / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["onnx_int8"] = entry
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return entry
