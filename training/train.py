"""Training protocol, export of the model artifact, and the evaluation report.

Protocol (the ALeRCE stamp classifier seed): drop non-square stamps (at load time);
the worker's preprocessing (NaN→0, normalization, centre crop 21×21); balanced
validation and test sets of 100 and 200 examples per class; the rest is training,
balanced by augmentation (90° rotations and flips) rather than undersampling;
cross-entropy (optionally entropy-regularized); Adam; early stopping on validation
accuracy (patience 10, best weights restored); report overall accuracy, SN recall and
precision, the confusion matrix and learning curves.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from training.data import (
    CLASS_NAMES,
    FEATURE_ENCODINGS,
    StampDataset,
    balance_by_augmentation,
    preprocess_images,
    split_balanced,
)
from training.models import BUILDERS, MODEL_INPUTS, TRUNK_FILTERS, check_trunk_filters
from worker.model.artifact import MANIFEST, MANIFEST_FORMAT, MODEL_FILE
from worker.prepare.features import LOG_SCALED, FeatureEncoding
from worker.prepare.stamps import PreprocessConfig

SN = CLASS_NAMES.index("SN")


def fit_encoding(features: np.ndarray, kind: str) -> FeatureEncoding:
    """The feature encoding of a training run, measured on its training features."""
    if kind == "standard":
        return FeatureEncoding.fit(features, log_scaled=(), indicators=False)
    return FeatureEncoding.fit(features, log_scaled=LOG_SCALED, indicators=True)


@dataclass(frozen=True)
class TrainConfig:
    """Parameters of one training run (all recorded in the manifest).

    Parameters
    ----------
    model : {"baseline", "rotinv"}
        Architecture.
    epochs : int
        Maximum number of epochs (early stopping usually ends sooner).
    batch_size : int
        Examples per gradient step.
    seed : int
        Seeds the split, the augmentation and the weight initialization.
    patience : int
        Epochs without a better validation accuracy before stopping.
    val_per_class, test_per_class : int
        Sizes of the balanced validation and test sets, per class.
    crop_size : int
        Centre crop side [pixels].
    entropy_beta : float
        Weight of the entropy regularization (0: plain cross-entropy).
    learning_rate : float
        Adam learning rate.
    feature_encoding : {"standard", "log-indicators"}
        How the metadata features enter the model: plain standardization with missing
        values at the mean, or log scales for the heavy-tailed counts and distances
        plus missing-value indicators.
    metadata_branch : bool
        ``rotinv`` only: two dense layers of its own for the features before the head.
    trunk_filters : tuple of int
        ``rotinv`` only: filters of the trunk's four convolutions (the default is the
        baseline's stack).
    version : str
        Version string written into the artifact.
    """

    model: str = "rotinv"
    epochs: int = 100
    batch_size: int = 256
    seed: int = 0
    patience: int = 10
    val_per_class: int = 100
    test_per_class: int = 200
    crop_size: int = 21
    entropy_beta: float = 0.0
    learning_rate: float = 1e-3
    feature_encoding: str = "standard"
    metadata_branch: bool = False
    trunk_filters: tuple[int, int, int, int] = TRUNK_FILTERS
    version: str = "1"

    def __post_init__(self) -> None:
        if self.model not in BUILDERS:
            raise ValueError(f"model must be one of {sorted(BUILDERS)}, got {self.model!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("epochs, batch_size and patience must be positive")
        if self.val_per_class < 1 or self.test_per_class < 1:
            raise ValueError("val_per_class and test_per_class must be positive")
        if self.feature_encoding not in FEATURE_ENCODINGS:
            raise ValueError(f"feature_encoding must be one of {FEATURE_ENCODINGS}, "
                             f"got {self.feature_encoding!r}")
        if self.metadata_branch and self.model != "rotinv":
            raise ValueError("metadata_branch needs a model with features (rotinv)")
        check_trunk_filters(self.trunk_filters, self.model)


def _metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class recall/precision and the confusion matrix (rows = true)."""
    predicted = probs.argmax(axis=1)
    n = len(CLASS_NAMES)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    recall = np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)
    precision = np.diag(confusion) / np.maximum(confusion.sum(axis=0), 1)
    return {
        "n": int(len(labels)),
        "accuracy": float((predicted == labels).mean()),
        "sn_recall": float(recall[SN]),
        "sn_precision": float(precision[SN]),
        "recall": {c: float(r) for c, r in zip(CLASS_NAMES, recall, strict=True)},
        "precision": {c: float(p) for c, p in zip(CLASS_NAMES, precision, strict=True)},
        "confusion_matrix": confusion.tolist(),
    }


def predict_batches(model: Any, inputs: dict[str, np.ndarray], batch_size: int = 1024
                    ) -> np.ndarray:
    """Probabilities of a Keras model over inputs, in batches."""
    n = len(next(iter(inputs.values())))
    out = [np.asarray(model.predict_on_batch({k: v[i:i + batch_size] for k, v in inputs.items()}))
           for i in range(0, n, batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(CLASS_NAMES)), np.float32)


def train(dataset: StampDataset, config: TrainConfig, out_dir: str | Path,
          data_source: str = "", verbose: int = 2) -> dict[str, Any]:
    """Train, evaluate and export one model artifact with its report.

    Parameters
    ----------
    dataset : StampDataset
        Labelled raw stamps and features.
    config : TrainConfig
        Training parameters.
    out_dir : str or Path
        Directory that receives ``model.keras``, ``manifest.json`` and ``report/``.
    data_source : str
        Description of the data (file name, simulator call) for the manifest.
    verbose : int
        Keras verbosity (1: progress bar, 2: one line per epoch, 0: silent).

    Returns
    -------
    dict
        The manifest written (test metrics under ``"metrics"``).
    """
    import keras  # deferred so `stamp-train --help` is instant

    import worker.model.layers as layers

    out_dir = Path(out_dir)
    start = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    preprocess = PreprocessConfig(crop_size=config.crop_size)
    images, kept = preprocess_images(dataset.images, config.crop_size)
    labels = dataset.labels[kept]
    features = dataset.features[kept]
    train_idx, val_idx, test_idx = split_balanced(labels, config.val_per_class,
                                                  config.test_per_class, config.seed)
    encoding = fit_encoding(features[train_idx], config.feature_encoding)
    x_train, f_train, y_train = balance_by_augmentation(
        images[train_idx], features[train_idx], labels[train_idx], config.seed)
    uses_features = "features" in MODEL_INPUTS[config.model]

    def inputs(x: np.ndarray, f: np.ndarray) -> dict[str, np.ndarray]:
        return {"image": x, "features": encoding.encode(f)} if uses_features else {"image": x}

    builder = BUILDERS[config.model]
    model = (builder(images.shape[1:], n_features=encoding.width,
                     metadata_branch=config.metadata_branch,
                     trunk_filters=tuple(config.trunk_filters)) if uses_features
             else builder(images.shape[1:]))
    loss: Any = (layers.EntropyRegularizedCrossEntropy(config.entropy_beta)
                 if config.entropy_beta > 0 else "sparse_categorical_crossentropy")
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss,
                  metrics=["accuracy"])
    stopper = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                            patience=config.patience,
                                            restore_best_weights=True)
    history = model.fit(inputs(x_train, f_train), y_train,
                        validation_data=(inputs(images[val_idx], features[val_idx]),
                                         labels[val_idx]),
                        epochs=config.epochs, batch_size=config.batch_size,
                        callbacks=[stopper], verbose=verbose, shuffle=True)
    train_seconds = time.perf_counter() - start
    test_probs = predict_batches(model, inputs(images[test_idx], features[test_idx]))
    val_probs = predict_batches(model, inputs(images[val_idx], features[val_idx]))
    metrics = {"test": _metrics(labels[test_idx], test_probs),
               "validation": _metrics(labels[val_idx], val_probs)}
    curves = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    best_epoch = int(np.argmax(curves["val_accuracy"])) + 1
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / MODEL_FILE)
    manifest = {
        **manifest_head(model, config.model, config.version, preprocess,
                        MODEL_INPUTS[config.model], encoding),
        "training": {
            **asdict(config), "data_source": data_source,
            "data_fingerprint_sha256": dataset.fingerprint(),
            "examples": {"total": len(dataset), "kept_after_preprocessing": int(kept.sum()),
                         "train": int(len(train_idx)), "train_after_augmentation":
                             int(len(y_train)), "validation": int(len(val_idx)),
                         "test": int(len(test_idx))},
            "class_counts": dataset.class_counts(),
            "epochs_run": len(curves["loss"]), "best_epoch": best_epoch,
            "seconds": round(train_seconds, 1),
            "keras": keras.__version__, "backend": keras.backend.backend(),
            "python": platform.python_version(), "machine": platform.machine(),
        },
        "metrics": metrics,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    write_report(out_dir / "report", manifest, curves)
    return manifest


def manifest_head(model: Any, name: str, version: str, preprocess: PreprocessConfig,
                  inputs: tuple[str, ...], encoding: FeatureEncoding) -> dict[str, Any]:
    """The part of an artifact's manifest the worker reads (and the parameter count).

    Parameters
    ----------
    model : keras.Model
        The trained model.
    name, version : str
        Model name and artifact version.
    preprocess : PreprocessConfig
        The preprocessing of its inputs.
    inputs : tuple of str
        ``("image",)`` or ``("image", "features")``.
    encoding : FeatureEncoding
        How its feature input is made from the raw features.
    """
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "class_names": list(CLASS_NAMES),
        "preprocessing": preprocess.as_dict(),
        "inputs": list(inputs),
        "features": encoding.as_dict(),
        "parameters": int(model.count_params()),
    }


def draw_confusion(ax: Any, confusion: Any) -> None:
    """Draw a confusion matrix (rows true, columns predicted) on a matplotlib axes.

    Cells are shaded by the share of their row (the recall) and show count and share.
    """
    confusion = np.asarray(confusion)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(CLASS_NAMES)):
        for j in range(len(CLASS_NAMES)):
            ax.text(j, i, f"{confusion[i, j]}\n{rates[i, j]:.0%}", ha="center", va="center",
                    color="white" if rates[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")


def write_report(report_dir: Path, manifest: dict[str, Any], curves: dict[str, list[float]]
                 ) -> None:
    """Write ``metrics.json``, ``confusion_matrix.png``, ``learning_curves.png``, ``report.md``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    report_dir.mkdir(parents=True, exist_ok=True)
    metrics = manifest["metrics"]
    (report_dir / "metrics.json").write_text(
        json.dumps({**metrics, "learning_curves": curves}, indent=2) + "\n", encoding="utf-8")
    fig, ax = plt.subplots(figsize=(5, 4.5))
    draw_confusion(ax, metrics["test"]["confusion_matrix"])
    ax.set_title(f"{manifest['name']}: balanced test set, "
                 f"accuracy {metrics['test']['accuracy']:.1%}")
    fig.tight_layout()
    fig.savefig(report_dir / "confusion_matrix.png", dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = np.arange(1, len(curves["loss"]) + 1)
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, curves[key], label="training (augmented)")
        ax.plot(epochs, curves[f"val_{key}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
    axes[1].axvline(manifest["training"]["best_epoch"], color="grey", ls=":", label="best")
    fig.tight_layout()
    fig.savefig(report_dir / "learning_curves.png", dpi=120)
    plt.close(fig)
    (report_dir / "report.md").write_text(report_markdown(manifest), encoding="utf-8")


def report_markdown(manifest: dict[str, Any]) -> str:
    """A short human-readable report of one training run."""
    test = manifest["metrics"]["test"]
    t = manifest["training"]
    lines = [
        f"# {manifest['name']} v{manifest['version']}",
        "",
        f"Data: {t['data_source']} (sha256 {t['data_fingerprint_sha256'][:16]}…), "
        f"{t['examples']['total']} examples; training {t['examples']['train']} "
        f"({t['examples']['train_after_augmentation']} after augmentation), validation "
        f"{t['examples']['validation']}, test {t['examples']['test']} (balanced).",
        f"Model: {manifest['parameters']:,} parameters; {t['epochs_run']} epochs "
        f"(best {t['best_epoch']}), {t['seconds']:.0f} s on {t['machine']} with "
        f"Keras {t['keras']} / {t['backend']}.",
        "",
        "| balanced test set | value |",
        "|---|---:|",
        f"| overall accuracy | {test['accuracy']:.1%} |",
        f"| SN recall (SN accuracy) | {test['sn_recall']:.1%} |",
        f"| SN precision | {test['sn_precision']:.1%} |",
        "",
        "| class | recall | precision |",
        "|---|---:|---:|",
    ]
    lines += [f"| {c} | {test['recall'][c]:.1%} | {test['precision'][c]:.1%} |"
              for c in CLASS_NAMES]
    lines += ["", "Confusion matrix (rows true, columns predicted): "
              "![confusion](confusion_matrix.png)", "",
              "Learning curves: ![curves](learning_curves.png)", ""]
    return "\n".join(lines)


def print_summary(manifest: dict[str, Any], stream: Any = None) -> None:
    """One table of the test metrics, for the command line (default: standard output)."""
    stream = stream or sys.stdout
    test = manifest["metrics"]["test"]
    print(f"\n{manifest['name']}: test accuracy {test['accuracy']:.1%}, "
          f"SN recall {test['sn_recall']:.1%}, SN precision {test['sn_precision']:.1%} "
          f"({manifest['training']['seconds']:.0f} s)", file=stream)
    print("confusion matrix (rows true, columns predicted):", file=stream)
    print("          " + "".join(f"{c:>9}" for c in CLASS_NAMES), file=stream)
    for name, row in zip(CLASS_NAMES, test["confusion_matrix"], strict=True):
        print(f"{name:>10}" + "".join(f"{v:>9}" for v in row), file=stream)
