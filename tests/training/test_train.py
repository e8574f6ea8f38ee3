"""training.train: end to end on tiny data, export, reload in the worker, parity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.training.test_train_data import alerce_like_pickle
from training.cli import main as train_main
from training.data import load_npz, preprocess_images
from training.train import TrainConfig, predict_batches, train
from worker.decode.alerts import AlertDecoder
from worker.decode.packets import build_record, default_candidate, encode_container
from worker.model.artifact import StampModel
from worker.prepare.features import FEATURE_NAMES, LOG_SCALED, FeatureEncoding, metadata_features
from worker.prepare.stamps import prepare_alert

TINY = dict(epochs=2, batch_size=16, val_per_class=2, test_per_class=3, patience=2)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tiny")
    pkl = alerce_like_pickle(tmp / "stamps.pkl", n_per_class=14)
    out = tmp / "stamps.npz"
    assert train_main(["convert", str(pkl), "--out", str(out), "--i-trust-this-pickle"]) == 0
    return out


def test_convert_refuses_without_trust(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="runs code"):
        train_main(["convert", str(alerce_like_pickle(tmp_path / "p.pkl")),
                    "--out", str(tmp_path / "o.npz")])
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("model", ["baseline", "rotinv"])
def test_train_export_reload_identical(tiny_npz: Path, tmp_path: Path, model: str) -> None:
    dataset = load_npz(tiny_npz)
    out = tmp_path / model
    manifest = train(dataset, TrainConfig(model=model, **TINY), out, data_source="tiny",
                     verbose=0)
    for name in ("model.keras", "manifest.json", "report/metrics.json",
                 "report/confusion_matrix.png", "report/learning_curves.png",
                 "report/report.md"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["metrics"]["test"]["n"] == 15
    assert on_disk["training"]["data_fingerprint_sha256"] == dataset.fingerprint()
    assert on_disk["preprocessing"]["crop_size"] == 21
    assert manifest["name"] == model
    # Reload through the worker and compare with the exported model's own outputs.
    loaded = StampModel.load(out)
    images, kept = preprocess_images(dataset.images[:20])
    features = dataset.features[:20][kept]
    probs = loaded.predict(images, features)
    assert probs.shape == (len(images), 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    import keras

    raw = keras.saving.load_model(out / "model.keras", compile=False)
    expected = predict_batches(raw, loaded.model_inputs(images, features))
    np.testing.assert_array_equal(probs, expected)


def test_log_indicator_features_and_metadata_branch(tiny_npz: Path, tmp_path: Path) -> None:
    dataset = load_npz(tiny_npz)
    dataset.features[::4, FEATURE_NAMES.index("distpsnr1")] = np.nan  # no PS1 counterpart
    config = TrainConfig(model="rotinv", feature_encoding="log-indicators",
                         metadata_branch=True, **TINY)
    manifest = train(dataset, config, tmp_path / "m", data_source="tiny", verbose=0)
    block = manifest["features"]
    assert block["log_scaled"] == list(LOG_SCALED)
    assert "distpsnr1" in block["missing_indicators"]
    loaded = StampModel.load(tmp_path / "m")
    assert loaded.manifest.features == FeatureEncoding.from_dict(block)
    images, kept = preprocess_images(dataset.images[:8])
    inputs = loaded.model_inputs(images, dataset.features[:8][kept])
    assert inputs["features"].shape == (len(images), 26 + len(block["missing_indicators"]))
    assert loaded.predict(images, dataset.features[:8][kept]).shape == (len(images), 5)
    with pytest.raises(ValueError, match="metadata_branch"):
        TrainConfig(model="baseline", metadata_branch=True)
    with pytest.raises(ValueError, match="feature_encoding"):
        TrainConfig(feature_encoding="raw")


def test_narrow_rotinv_trunk(tiny_npz: Path, tmp_path: Path) -> None:
    """``--trunk-filters``: the narrow trunk trains, exports and reloads in the worker."""
    assert train_main(["train", "--data", str(tiny_npz), "--model", "rotinv", "--epochs", "1",
                       "--batch-size", "16", "--val-per-class", "2", "--test-per-class", "3",
                       "--trunk-filters", "8,16,32,64", "--out", str(tmp_path / "m")]) == 0
    loaded = StampModel.load(tmp_path / "m", backend="keras")
    trunk = loaded.keras_model.get_layer("shared_trunk")
    assert [layer.filters for layer in trunk.layers if hasattr(layer, "filters")] == [8, 16, 32, 64]
    # 224 + 1,168 + 4,640 + 18,496 (convolutions) + 16,448 (FC64) in the trunk, then
    # 5,824 + 4,160 + 325 in the head (64 pooled + 26 features in).
    assert loaded.keras_model.count_params() == 51_285
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    # Training also writes model.onnx, which the worker serves by default.
    assert manifest["onnx"]["max_abs_diff"] <= 1e-5
    assert StampModel.load(tmp_path / "m").backend == "onnx"
    assert manifest["training"]["trunk_filters"] == [8, 16, 32, 64]
    assert manifest["parameters"] == 51_285
    with pytest.raises(ValueError, match="four positive"):
        TrainConfig(trunk_filters=(8, 16, 32))
    with pytest.raises(ValueError, match="rotinv model only"):
        TrainConfig(model="baseline", trunk_filters=(8, 16, 32, 64))
    with pytest.raises(SystemExit):
        train_main(["train", "--data", str(tiny_npz), "--trunk-filters", "8;16",
                    "--out", str(tmp_path / "x")])


def test_cli_train_on_simulated_data(tmp_path: Path, capsys) -> None:
    pytest.importorskip("training.simulator")
    out = tmp_path / "sim"
    assert train_main(["train", "--simulate", "400", "--model", "baseline", "--epochs", "1",
                       "--val-per-class", "3", "--test-per-class", "5", "--batch-size", "32",
                       "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "confusion matrix" in text
    assert StampModel.load(out).name == "baseline"


def test_cli_errors_say_what_to_fix(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit, match="no such dataset"):
        train_main(["train", "--data", str(tmp_path / "none.npz"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        train_main(["train", "--data", "x.npz", "--epochs", "0", "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert "argument --epochs: expected an integer ≥ 1, got '0'" in capsys.readouterr().err


_CHECKS = """
import json, sys
from training.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    try:
        status = main(argv)
    except SystemExit as stop:  # as the interpreter ends with it: message, status 1
        status = stop.code
        if isinstance(status, str):
            print(status, file=sys.stderr)
            status = 1
    out.append([status, "tensorflow" in sys.modules or "keras" in sys.modules])
print(json.dumps(out))
"""


def test_cli_checks_paths_and_numbers_before_tensorflow(tmp_path: Path, tiny_npz: Path
                                                        ) -> None:
    """Each command answers a wrong path or number with one line, TensorFlow unloaded."""
    nope, a_file, folder = tmp_path / "nope", tmp_path / "a.txt", tmp_path / "folder"
    a_file.write_text("x")
    folder.mkdir()
    data = str(tiny_npz)
    cases = [
        (["convert", str(nope), "--out", str(tmp_path / "o.npz"), "--i-trust-this-pickle"],
         f"{nope}: no such file or directory"),
        (["dataset", str(nope), "--labels", str(a_file), "--out", str(tmp_path / "o.npz")],
         f"{nope}: no such file or directory"),
        (["dataset", str(folder), "--labels", str(a_file), "--out", str(a_file / "o.npz")],
         f"{a_file / 'o.npz'}: {a_file} is a file, not a folder"),
        (["simulate", "--n", "10", "--out", str(folder)], f"{folder}: is a folder"),
        (["train", "--data", str(nope), "--out", str(folder)], f"{nope}: no such dataset"),
        (["train", "--data", data, "--out", str(a_file)], f"{a_file}: exists and is not a"),
        (["train", "--data", data, "--model", "baseline", "--metadata-branch",
          "--out", str(folder)], "metadata_branch needs a model with features"),
        (["train", "--data", data, "--crop-size", "99", "--out", str(folder)],
         "crop_size must be in [1, stamp_size=63]"),
        (["train-real", "--real", str(nope), "--out", str(folder)],
         f"{nope}: no such file or directory"),
        (["train-real", "--real", data, "--init-from", str(folder), "--out", str(folder)],
         f"{folder}: not a model artifact"),
        (["cv", "--real", data, "--report", str(a_file)], f"{a_file}: exists and is not a"),
        (["evaluate", "--model", str(folder), "--data", data], f"{folder}: not a model"),
        (["evaluate", "--model", str(folder), "--data", str(nope)],
         f"{nope}: no such file or directory"),
        (["evaluate", "--model", str(folder)], "give --alerts with --labels, --data"),
        (["train", "--data", data, "--epochs", "0", "--out", str(folder)],
         "argument --epochs: expected an integer ≥ 1"),
        (["cv", "--real", data, "--folds", "1"], "argument --folds: expected at least 2"),
        (["train-real", "--real", data, "--first-detection-share", "1.5", "--out",
          str(folder)], "argument --first-detection-share: expected a number in [0, 1]"),
    ]
    done = subprocess.run([sys.executable, "-c", _CHECKS, json.dumps([a for a, _ in cases])],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    lines = [line for line in done.stderr.splitlines() if not line.startswith("usage:")
             and not line.startswith(" ")]  # argparse's usage lines, then its one error
    assert len(lines) == len(cases), done.stderr
    for (argv, expected), (status, tensorflow), line in zip(cases, results, lines, strict=True):
        assert expected in line, (argv, line)
        assert line.startswith(f"stamp-train {argv[0]}: "), line
        assert status == (2 if "argument --" in expected else 1), (argv, status)
        assert not tensorflow, f"{argv}: TensorFlow imported before the checks"


def test_train_serve_parity_bit_identical() -> None:
    """One alert: the training path (raw arrays → preprocess_images, candidate →
    metadata_features) and the worker path (Avro bytes → decode → prepare_alert) give
    bit-identical model inputs."""
    rng = np.random.default_rng(11)
    stamps = [rng.normal(200, 20, (63, 63)).astype(np.float32) for _ in range(3)]
    stamps[1][5:9, 40:50] = np.nan
    candidate = default_candidate(77, 2460100.25, ra=12.5, dec=-33.0, sgscore1=-999.0)
    payload = encode_container([build_record("ZTF26parityaa", 77, candidate, stamps)])
    served = prepare_alert(AlertDecoder().decode(payload)[0])
    trained, kept = preprocess_images(np.stack(stamps, axis=-1)[None])
    assert kept.all()
    assert served.image.tobytes() == trained[0].tobytes()
    assert served.features.tobytes() == metadata_features(candidate).tobytes()
