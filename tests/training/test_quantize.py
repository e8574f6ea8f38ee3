"""training.quantize: the 8-bit copy of an artifact's ONNX model, checked and listed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.model.test_artifact import _prepared
from training import quantize
from training.cli import main, simulated_dataset
from training.data import StampDataset, preprocess_images, save_npz
from worker.model.artifact import INT8_ONNX_FILE, ModelError, StampModel, default_model_path


def _float_copy(tmp_path: Path) -> Path:
    """The bundled artifact without its 8-bit model (a trained model: near-ties are rare)."""
    artifact = shutil.copytree(default_model_path(), tmp_path / "a",
                               ignore=shutil.ignore_patterns(INT8_ONNX_FILE, "report"))
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest.pop("onnx_int8", None)
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    return artifact


@pytest.fixture(scope="module")
def stamps() -> StampDataset:
    """Simulated stamps, three per object."""
    data = simulated_dataset(300, seed=3, balanced=True)
    return StampDataset(data.images, data.labels, data.features,
                        object_ids=np.array([f"obj{i // 3}" for i in range(len(data))]))


def test_split_by_object_puts_each_object_on_one_side() -> None:
    ids = np.array(["a", "b", "a", "c", "d", "b", "e", "c"])
    first, second = quantize.split_by_object(ids, seed=1)
    assert sorted(np.concatenate([first, second]).tolist()) == list(range(len(ids)))
    assert not set(ids[first]) & set(ids[second])
    assert len(set(ids[first])) == 3 and len(set(ids[second])) == 2


def test_quantize_writes_lists_and_serves_the_int8_model(tmp_path: Path,
                                                         stamps: StampDataset) -> None:
    artifact = _float_copy(tmp_path)
    before = json.loads((artifact / "manifest.json").read_text())
    entry = quantize.quantize_onnx(artifact, stamps, examples=64, min_agreement=0.9)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["onnx_int8"] == entry
    assert {k: v for k, v in manifest.items() if k != "onnx_int8"} == before
    blob = (artifact / INT8_ONNX_FILE).read_bytes()
    assert entry["sha256"] == hashlib.sha256(blob).hexdigest()
    assert len(blob) < 0.6 * (artifact / "model.onnx").stat().st_size  # 8-bit weights
    assert entry["calibration"]["examples"] == 64
    assert entry["check"]["examples"] + 150 == len(stamps)  # half of the 100 objects

    on_float = StampModel.load(artifact, backend="onnx")
    on_int8 = StampModel.load(artifact, backend="onnx-int8")
    assert (on_int8.backend, on_int8.device) == ("onnx-int8", "cpu")
    assert on_int8.version == on_float.version + "+int8"
    # The check figures are what the served model gives on the check half.
    _, check = quantize.split_by_object(stamps.object_ids)
    images, _ = preprocess_images(stamps.images[check], 21)
    expected = on_float.predict(images, stamps.features[check])
    got = on_int8.predict(images, stamps.features[check])
    assert np.mean(expected.argmax(1) == got.argmax(1)) == entry["check"]["top_class_agreement"]
    assert np.abs(expected - got).max() == pytest.approx(entry["check"]["max_abs_diff"])
    assert 0 < entry["check"]["max_abs_diff"] < 0.1


def test_a_copy_that_disagrees_too_often_is_not_written(
        tmp_path: Path, stamps: StampDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    artifact = _float_copy(tmp_path)
    before = (artifact / "manifest.json").read_text()
    run = quantize._run

    def reversed_classes(session, inputs):  # type: ignore[no-untyped-def]
        return run(session, inputs)[:, ::-1]  # the int8 model's probabilities

    monkeypatch.setattr(quantize, "_run", reversed_classes)
    with pytest.raises(ModelError, match="not written"):
        quantize.quantize_onnx(artifact, stamps, examples=64)
    assert not (artifact / INT8_ONNX_FILE).exists()
    assert (artifact / "manifest.json").read_text() == before
    assert sorted(p.name for p in artifact.iterdir()) == ["manifest.json", "model.keras",
                                                          "model.onnx"]


def test_an_artifact_without_the_int8_model_names_the_command(tmp_path: Path) -> None:
    artifact = _float_copy(tmp_path)
    with pytest.raises(ModelError, match="stamp-train quantize"):
        StampModel.load(artifact, backend="onnx-int8")
    with pytest.raises(ModelError, match="runs on the CPU"):
        StampModel.load(backend="onnx-int8", device="gpu")


def test_cli_quantize(tmp_path: Path, stamps: StampDataset,
                      capsys: pytest.CaptureFixture[str]) -> None:
    artifact = _float_copy(tmp_path)
    data = save_npz(stamps, tmp_path / "s.npz")
    assert main(["quantize", str(artifact), "--data", str(data), "--examples", "64",
                 "--min-agreement", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "calibrated on 64 stamps" in out and "other objects" in out
    with pytest.raises(SystemExit, match="stamp-train quantize: .*missing.npz"):
        main(["quantize", str(artifact), "--data", str(tmp_path / "missing.npz")])


def test_bundled_int8_model_agrees_with_the_float_one_on_the_shared_real_alerts(
        data_dir: Path) -> None:
    """The bundled 8-bit model, on every alert of the shared real data the worker labels
    (half of these objects calibrated it): the top class of at least 99 % of the alerts
    is the float model's, and its manifest's own check (other objects) says as much."""
    from worker.decode.sources import expand_paths, read_inputs

    on_float = StampModel.load(backend="onnx")
    on_int8 = StampModel.load(backend="onnx-int8")
    payloads = [p.data for p in read_inputs(expand_paths([data_dir]), on_error=lambda *_: None)]
    images, features = _prepared(payloads, on_float)
    assert len(images) > 400
    expected, got = on_float.predict(images, features), on_int8.predict(images, features)
    agreement = float(np.mean(expected.argmax(1) == got.argmax(1)))
    print(f"{len(images)} alerts: top class agreement {agreement:.4f}, largest probability "
          f"difference {np.abs(expected - got).max():.3f}")
    assert agreement >= 0.99
    check = on_int8.manifest.raw["onnx_int8"]["check"]
    assert check["top_class_agreement"] >= 0.99 and check["objects"] >= 100


def test_cli_quantize_on_alert_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Alerts need no labels: every one the worker would label calibrates or checks."""
    from worker.decode.packets import synthetic_alert

    artifact = _float_copy(tmp_path)
    folder = tmp_path / "alerts"
    folder.mkdir()
    for i in range(60):
        (folder / f"{i}.avro").write_bytes(synthetic_alert(i))
    (folder / "junk.avro").write_bytes(b"not an alert")
    assert main(["quantize", str(artifact), "--alerts", str(folder), "--examples", "16",
                 "--min-agreement", "0"]) == 0
    out = capsys.readouterr().out
    assert "60 stamps from 61 alert records (1 refused" in out
    assert json.loads((artifact / "manifest.json").read_text())["onnx_int8"]["check"][
        "examples"] + json.loads((artifact / "manifest.json").read_text())["onnx_int8"][
        "calibration"]["examples"] <= 60
