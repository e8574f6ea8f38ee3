"""The two stamp classifier architectures (Keras 3, backend-neutral).

``baseline``
    Table 2 of the ALeRCE stamp classifier seed: conv16-3, conv32-3, maxpool, conv64-3,
    conv128-3, maxpool, flatten, FC100, dropout, FC5 — 149,245 parameters at 21×21×3
    ('valid' convolutions: 21 → 19 → 17 → 8 → 6 → 4 → 2, so the flatten is 2×2×128).
``rotinv``
    Rotation-invariant CNN: the four 90° rotations of the stamp go through one shared
    convolutional trunk (the baseline's convolutions + FC64), the trunk's features are
    averaged over the rotations (cyclic average pooling), concatenated with the
    standardized alert metadata features (optionally after a branch of their own, FC64,
    FC64), and classified by a dense head (FC64, dropout, FC64, FC5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

# Keras is imported by the builders, not here: the training configurations import this
# module's names and check a command line without paying for TensorFlow's start-up.
N_CLASSES = 5


def build_baseline(input_shape: tuple[int, int, int] = (21, 21, 3),
                   n_classes: int = N_CLASSES, dropout: float = 0.5) -> keras.Model:
    """The seed's baseline CNN (image input only).

    Parameters
    ----------
    input_shape : tuple of int
        (crop, crop, channels) of the preprocessed stamps.
    n_classes : int
        Number of output classes.
    dropout : float
        Dropout rate before the last layer.

    Returns
    -------
    keras.Model
        Inputs ``{"image"}``, output softmax probabilities (N, n_classes).
    """
    import keras
    from keras import layers

    image = keras.Input(input_shape, name="image")
    x = layers.Conv2D(16, 3, activation="relu")(image)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    x = layers.Conv2D(128, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(100, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    probs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model({"image": image}, probs, name="baseline")


# The baseline's convolution filters, the rotation-invariant trunk's default.
TRUNK_FILTERS = (16, 32, 64, 128)


def check_trunk_filters(trunk_filters: tuple[int, ...], model: str,
                        init_from: str | None = None) -> None:
    """Refuse trunk filters a configuration cannot use (``ValueError``).

    Parameters
    ----------
    trunk_filters : tuple of int
        Filters of the ``rotinv`` trunk's four convolutions.
    model : str
        The architecture: other filters than :data:`TRUNK_FILTERS` need ``rotinv`` (the
        baseline is the seed's fixed architecture).
    init_from : str, optional
        An artifact to start from: it keeps its own trunk, so only the default is allowed.
    """
    if len(trunk_filters) != 4 or min(trunk_filters) < 1:
        raise ValueError(f"trunk_filters must be four positive filter counts, "
                         f"got {trunk_filters!r}")
    if tuple(trunk_filters) == TRUNK_FILTERS:
        return
    if init_from:
        raise ValueError("trunk_filters applies to a new rotinv model only (an init_from "
                         "artifact keeps its own trunk)")
    if model != "rotinv":
        raise ValueError("trunk_filters applies to a new rotinv model only (the baseline "
                         "is the seed's fixed architecture)")


def build_rotinv(input_shape: tuple[int, int, int] = (21, 21, 3), n_features: int = 26,
                 n_classes: int = N_CLASSES, dropout: float = 0.5,
                 metadata_branch: bool = False,
                 trunk_filters: tuple[int, int, int, int] = TRUNK_FILTERS) -> keras.Model:
    """The rotation-invariant CNN with the alert metadata features.

    Parameters
    ----------
    input_shape : tuple of int
        (crop, crop, channels) of the preprocessed stamps; crop must be square.
    n_features : int
        Length of the standardized metadata feature vector.
    n_classes : int
        Number of output classes.
    dropout : float
        Dropout rate in the dense head.
    metadata_branch : bool
        Pass the features through two dense layers (FC64, FC64) of their own before
        they meet the image features, instead of straight into the head.
    trunk_filters : tuple of int
        Filters of the trunk's four 3×3 convolutions.  The default is the baseline's
        stack; ``(8, 16, 32, 64)`` costs about 40 % of its CPU time per alert.

    Returns
    -------
    keras.Model
        Inputs ``{"image", "features"}``, output softmax probabilities (N, n_classes).
    """
    import keras
    from keras import layers

    from worker.model.layers import CyclicAveragePool, RotationStack

    image = keras.Input(input_shape, name="image")
    features = keras.Input((n_features,), name="features")
    # The baseline's convolutional stack as the shared trunk: four rotations make the
    # model 4x as costly as the baseline, which keeps CPU training practical.
    trunk = keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(trunk_filters[0], 3, activation="relu"),
        layers.Conv2D(trunk_filters[1], 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(trunk_filters[2], 3, activation="relu"),
        layers.Conv2D(trunk_filters[3], 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
    ], name="shared_trunk")
    pooled = CyclicAveragePool(name="cyclic_average")(trunk(RotationStack(name="rotations")(image)))
    meta = features
    if metadata_branch:
        meta = layers.Dense(64, activation="relu", name="metadata_1")(meta)
        meta = layers.Dense(64, activation="relu", name="metadata_2")(meta)
    x = layers.Concatenate(name="with_metadata")([pooled, meta])
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(64, activation="relu")(x)
    probs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model({"image": image, "features": features}, probs, name="rotinv")


BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "baseline": build_baseline,
    "rotinv": build_rotinv,
}
MODEL_INPUTS: dict[str, tuple[str, ...]] = {
    "baseline": ("image",),
    "rotinv": ("image", "features"),
}
