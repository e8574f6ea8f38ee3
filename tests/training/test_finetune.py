"""training.finetune: object-balanced training on real alerts, export, reload in the worker."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.model.test_artifact import _artifact
from training.data import StampDataset, preprocess_images
from training.finetune import FineTuneConfig, export, fine_tune
from training.models import build_rotinv
from worker.model.artifact import StampModel
from worker.prepare.features import FEATURE_NAMES


def tiny_real(n_objects: int = 25, alerts_per_object: int = 2, seed: int = 0) -> StampDataset:
    """Labelled 'real' alerts: a class-dependent blob, repeated objects, some NaN features."""
    rng = np.random.default_rng(seed)
    n = n_objects * alerts_per_object
    labels = np.repeat(np.arange(n_objects) % 5, alerts_per_object)
    yy, xx = np.mgrid[:63, :63] - 31
    images = rng.normal(0, 1, (n, 63, 63, 3)).astype(np.float32)
    for i, label in enumerate(labels):
        images[i, ..., 2] += (3 + 2 * label) * np.exp(-(xx**2 + yy**2) / (2 * (1 + label)**2))
    features = rng.normal(0, 1, (n, len(FEATURE_NAMES))).astype(np.float32)
    features[:, 0] += labels
    features[::7, 3] = np.nan
    ids = np.repeat(np.array([f"ZTF{o:03d}" for o in range(n_objects)]), alerts_per_object)
    return StampDataset(images, labels, features, object_ids=ids,
                        tiers=np.full(n, "B"), sources=np.full(n, "test"))


def test_fine_tune_from_scratch_exports_what_the_worker_loads(tmp_path: Path) -> None:
    real, sim = tiny_real(), tiny_real(seed=1)
    config = FineTuneConfig(epochs=2, per_class=8, sim_per_epoch=10, batch_size=16,
                            first_detection_share=0.5)
    trained = fine_tune(real, config, sim)
    assert len(trained.history) == 2 and all(np.isfinite(trained.history))
    assert trained.encoding.indicators == ("distpsnr2",)  # the feature with gaps
    manifest = export(trained, config, tmp_path / "a", {"real": "tiny"}, {"x": 1})
    assert manifest["training"]["epochs"] == 2 and manifest["metrics"] == {"x": 1}
    model = StampModel.load(tmp_path / "a")
    images, _ = preprocess_images(real.images, 21)
    # The worker's loading path gives the trained model's probabilities.
    np.testing.assert_allclose(model.predict(images, real.features),
                               trained.predict(images, real.features), atol=1e-5)


def test_init_from_starts_at_the_artifact(tmp_path: Path) -> None:
    keras.utils.set_random_seed(3)
    start = _artifact(tmp_path / "start", build_rotinv(), ["image", "features"])
    real = tiny_real()
    # Learning rate 0: the weights cannot move, so the result is the artifact itself.
    trained = fine_tune(real, FineTuneConfig(epochs=1, per_class=4, learning_rate=0.0,
                                             init_from=str(start)))
    images, _ = preprocess_images(real.images, 21)
    np.testing.assert_allclose(trained.predict(images, real.features),
                               StampModel.load(start).predict(images, real.features),
                               atol=1e-5)
    assert trained.encoding.mean == (1.0,) * len(FEATURE_NAMES)  # the artifact's encoding


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"epochs": 0}, "must be positive"),
    ({"sim_weight": -1.0}, "must not be negative"),
    ({"model": "resnet"}, "model must be one of"),
    ({"first_detection_share": 1.5}, r"must be in \[0, 1\]"),
    ({"trunk_filters": (8, 16, 32)}, "four positive filter counts"),
    ({"model": "baseline", "trunk_filters": (8, 16, 32, 64)}, "new rotinv model only"),
    ({"init_from": "some/artifact", "trunk_filters": (8, 16, 32, 64)}, "new rotinv model only"),
])
def test_bad_configs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FineTuneConfig(**kwargs)


def test_simulated_examples_are_required_when_asked_for() -> None:
    with pytest.raises(ValueError, match="needs simulated examples"):
        fine_tune(tiny_real(), FineTuneConfig(epochs=1, per_class=2, sim_per_epoch=5))


def test_train_real_command_cross_validates_and_exports(tmp_path: Path, capsys) -> None:
    from training.cli import main as train_main
    from training.data import save_npz

    real = save_npz(tiny_real(), tmp_path / "real.npz")
    out = tmp_path / "artifact"
    assert train_main(["train-real", "--real", str(real), "--simulate", "50", "--epochs", "1",
                       "--per-class", "4", "--sim-per-epoch", "10", "--folds", "2",
                       "--trunk-filters", "8,16,32,64", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "object-grouped 2-fold cross-validation" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    cv = manifest["metrics"]["grouped_cv"]
    assert cv["folds"] == 2 and cv["per_object"]["n"] == 25
    assert manifest["training"]["data"]["real_objects"] == 25
    assert manifest["training"]["trunk_filters"] == [8, 16, 32, 64]
    assert (out / "report" / "cv_confusion.png").is_file()
    StampModel.load(out)


def test_train_real_stops_on_a_missing_file_before_training(tmp_path: Path) -> None:
    from training.cli import main as train_main

    with pytest.raises(SystemExit, match=r"nope\.npz: no such file"):
        train_main(["train-real", "--real", str(tmp_path / "nope.npz"),
                    "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_as_first_detection_resets_only_the_history_counts() -> None:
    from training.finetune import as_first_detection

    raw = np.full((3, len(FEATURE_NAMES)), 5.0, np.float32)
    col = {name: FEATURE_NAMES.index(name) for name in
           ("ndethist", "ncovhist", "non_detections")}
    raw[:, col["ndethist"]] = [1.0, 40.0, np.nan]
    raw[:, col["ncovhist"]] = [10.0, 100.0, 7.0]
    raw[:, col["non_detections"]] = [9.0, 60.0, np.nan]
    out = as_first_detection(raw)
    assert out[:, col["ndethist"]].tolist()[:2] == [1.0, 1.0]
    assert out[1, col["non_detections"]] == 99.0
    np.testing.assert_array_equal(out[0], raw[0])  # already a first detection
    np.testing.assert_array_equal(out[2], raw[2])  # unknown history stays unknown
    others = [i for i in range(len(FEATURE_NAMES))
              if i not in (col["ndethist"], col["non_detections"])]
    np.testing.assert_array_equal(out[:, others], raw[:, others])
    assert raw[1, col["ndethist"]] == 40.0  # a copy
