"""training.onnx_export and ``stamp-train export-onnx``: model.onnx in an artifact."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.model.test_artifact import _artifact
from training import onnx_export
from training.cli import main
from training.models import build_rotinv
from worker.model.artifact import ModelError, StampModel


@pytest.fixture(scope="module")
def keras_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keras.utils.set_random_seed(4)
    return _artifact(tmp_path_factory.mktemp("m") / "rotinv", build_rotinv(),
                     ["image", "features"])


def test_export_writes_model_onnx_and_lists_it(keras_only: Path, tmp_path: Path) -> None:
    artifact = shutil.copytree(keras_only, tmp_path / "a")
    before = json.loads((artifact / "manifest.json").read_text())
    entry = onnx_export.export_onnx(artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["onnx"] == entry
    assert {k: v for k, v in manifest.items() if k != "onnx"} == before  # nothing else moves
    blob = (artifact / "model.onnx").read_bytes()
    assert entry["file"] == "model.onnx" and entry["sha256"] == hashlib.sha256(blob).hexdigest()
    assert entry["opset"] == onnx_export.ONNX_OPSET and entry["check_batch"] == 64
    assert 0 <= entry["max_abs_diff"] <= 1e-5
    assert entry["exporter"].startswith("tf2onnx ")
    assert [p.name for p in artifact.iterdir() if p.name.startswith("tmp")] == []
    # The measured difference is the one the worker sees on the same batch.
    on_keras = StampModel.load(artifact, backend="keras")
    on_onnx = StampModel.load(artifact, backend="onnx")
    images, features = onnx_export.check_batch(on_keras)
    assert np.isnan(features).any()  # the missing-value indicators are exercised
    diff = np.abs(on_onnx.predict(images, features) - on_keras.predict(images, features))
    assert float(diff.max()) == pytest.approx(entry["max_abs_diff"], abs=1e-6)


def test_export_refuses_a_model_outside_the_tolerance(keras_only: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    artifact = shutil.copytree(keras_only, tmp_path / "a")
    before = (artifact / "manifest.json").read_text()
    monkeypatch.setattr(onnx_export, "TOLERANCE", -1.0)  # no difference is small enough
    with pytest.raises(ModelError, match="not written"):
        onnx_export.export_onnx(artifact)
    assert not (artifact / "model.onnx").exists()
    assert (artifact / "manifest.json").read_text() == before
    assert sorted(p.name for p in artifact.iterdir()) == ["manifest.json", "model.keras"]


def test_cli_exports_an_artifact(keras_only: Path, tmp_path: Path, capsys) -> None:
    artifact = shutil.copytree(keras_only, tmp_path / "a")
    assert main(["export-onnx", str(artifact)]) == 0
    out = capsys.readouterr().out
    assert "model.onnx (opset 17, largest probability difference to Keras" in out
    assert StampModel.load(artifact).backend == "onnx"


@pytest.mark.parametrize(("setup", "fragment"), [
    ("missing", "no such file or directory"),
    ("empty", "not a model artifact"),
])
def test_cli_refuses_what_is_not_an_artifact(tmp_path: Path, capsys, setup: str,
                                             fragment: str) -> None:
    target = tmp_path / "x"
    if setup == "empty":
        target.mkdir()
    with pytest.raises(SystemExit) as stop:
        main(["export-onnx", str(target)])
    message = str(stop.value.code)
    assert message.startswith("stamp-train export-onnx: ") and fragment in message
    assert "\n" not in message
