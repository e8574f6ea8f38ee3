"""Keras layers the models are built from, needed to load a saved model.

They live in the worker (not in ``training/``) because loading a ``.keras`` file must
reconstruct them; they are registered with Keras' serialization under the package name
``stamp_classifier`` so that :func:`keras.saving.load_model` works in safe mode (no
``Lambda`` layers, no pickled Python code).  Only ``keras.ops`` is used: the same model
runs on the TensorFlow, JAX and PyTorch backends.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

PACKAGE = "stamp_classifier"
N_ROTATIONS = 4


def _reversed(images: Any, rows: bool, columns: bool) -> Any:
    """``images`` (B, H, W, C) with its rows and/or columns in reverse order."""
    if keras.backend.backend() in ("tensorflow", "jax"):
        # A slice with step -1: TensorFlow's StridedSlice becomes one ONNX Slice, where
        # a flip (ReverseV2) becomes a Transpose, a ReverseSequence and a Transpose, and
        # those transposes took 16 % of the model's CPU time in ONNX Runtime.
        return images[:, ::-1 if rows else 1, ::-1 if columns else 1, :]
    if rows:
        images = ops.flip(images, axis=1)
    return ops.flip(images, axis=2) if columns else images


def rot90(images: Any, k: int) -> Any:
    """Rotate a batch of images (B, H, W, C) by ``k`` × 90° counter-clockwise."""
    k %= 4
    if k == 0:
        return images
    if k == 2:
        return _reversed(images, rows=True, columns=True)
    transposed = ops.transpose(images, (0, 2, 1, 3))
    # np.rot90 convention: transpose then flip rows (k=1) or columns (k=3).
    return _reversed(transposed, rows=k == 1, columns=k == 3)


@keras.saving.register_keras_serializable(package=PACKAGE)
class RotationStack(keras.layers.Layer):
    """Stack the four 90° rotations of each image along the batch axis.

    Input (B, H, W, C) with H == W; output (4B, H, W, C) ordered rotation-major
    (all images rotated by 0°, then by 90°, ...), so a shared trunk sees every rotation.
    """

    def call(self, images: Any) -> Any:
        """Return the rotated copies, rotation-major along the batch axis."""
        return ops.concatenate([rot90(images, k) for k in range(N_ROTATIONS)], axis=0)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        """Four times the batch, same image shape."""
        batch = None if input_shape[0] is None else N_ROTATIONS * input_shape[0]
        return (batch, *input_shape[1:])


@keras.saving.register_keras_serializable(package=PACKAGE)
class CyclicAveragePool(keras.layers.Layer):
    """Average the trunk's features over the four rotations of each image.

    Input (4B, D) in the order produced by :class:`RotationStack`; output (B, D).  The
    result is invariant to 90° rotations of the input image.
    """

    def call(self, features: Any) -> Any:
        """Return the mean over the four rotations of each example."""
        depth = ops.shape(features)[-1]
        return ops.mean(ops.reshape(features, (N_ROTATIONS, -1, depth)), axis=0)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        """A quarter of the batch, same feature depth."""
        batch = None if input_shape[0] is None else input_shape[0] // N_ROTATIONS
        return (batch, *input_shape[1:])


@keras.saving.register_keras_serializable(package=PACKAGE)
class EntropyRegularizedCrossEntropy(keras.losses.Loss):
    """Categorical cross-entropy minus ``beta`` × the entropy of the prediction.

    Rewarding entropy discourages over-confident probabilities (Carrasco-Davis et al.
    2021, the ALeRCE stamp classifier), which matters because brokers threshold on them.

    Parameters
    ----------
    beta : float
        Weight of the entropy term (0 gives plain cross-entropy).
    """

    def __init__(self, beta: float = 0.5, name: str = "entropy_regularized_ce",
                 **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.beta = float(beta)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Per-example loss from integer labels and predicted probabilities."""
        y_pred = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
        y_true = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), ops.shape(y_pred)[-1])
        cross_entropy = -ops.sum(y_true * ops.log(y_pred), axis=-1)
        entropy = -ops.sum(y_pred * ops.log(y_pred), axis=-1)
        return cross_entropy - self.beta * entropy

    def get_config(self) -> dict[str, Any]:
        """Serializable configuration (includes ``beta``)."""
        return {**super().get_config(), "beta": self.beta}
