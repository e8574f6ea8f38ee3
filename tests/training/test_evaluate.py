"""training.evaluate: real labelled stamps through the worker's loading path."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from tests.model.test_artifact import _artifact
from training.cli import main as train_main
from training.evaluate import evaluate, load_alerce_test_stamps
from training.models import build_rotinv
from worker.model.artifact import StampModel
from worker.prepare.features import FEATURE_NAMES


@pytest.mark.shared_data
def test_real_labelled_stamps(data_dir: Path, tmp_path: Path, capsys) -> None:
    folder = data_dir / "labelled" / "alerce-test-stamps"
    dataset, has_meta, oids = load_alerce_test_stamps(folder)
    assert len(dataset) == 51 and has_meta.sum() == 21 and len(set(oids)) == 51
    assert dataset.class_counts() == {"AGN": 13, "SN": 1, "VS": 21, "asteroid": 14,
                                      "bogus": 2}
    col = FEATURE_NAMES.index("magpsf")
    assert np.isfinite(dataset.features[has_meta, col]).all()
    assert np.isnan(dataset.features[~has_meta, col]).all()
    keras.utils.set_random_seed(0)
    model_dir = _artifact(tmp_path / "m", build_rotinv(), ["image", "features"])
    result = evaluate(StampModel.load(model_dir), dataset)
    assert result["n"] == 51 and np.sum(result["confusion_matrix"]) == 51
    assert train_main(["evaluate", "--model", str(model_dir), "--alerce-test-stamps",
                       str(folder), "--write"]) == 0
    assert "real ALeRCE-labelled stamps: accuracy" in capsys.readouterr().out
    assert (model_dir / "report" / "evaluation.json").is_file()


def test_missing_folder_says_where_to_point(tmp_path: Path) -> None:
    from training.data import DatasetError

    with pytest.raises(DatasetError, match="alerce-test-stamps"):
        load_alerce_test_stamps(tmp_path)


# --------------------------------------------------------------------------- real alerts

def _one_hot(classes: list[int]) -> np.ndarray:
    probs = np.full((len(classes), 5), 0.05, np.float32)
    probs[np.arange(len(classes)), classes] = 0.8
    return probs


def test_wilson_interval_known_values() -> None:
    from training.evaluate import wilson_interval

    # Reference values (Wilson 1927; e.g. statsmodels proportion_confint method="wilson").
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 14) == pytest.approx((0.0, 0.2153), abs=1e-4)
    assert wilson_interval(14, 14) == pytest.approx((0.7847, 1.0), abs=1e-4)
    assert all(np.isnan(wilson_interval(0, 0)))


def test_real_figures_on_a_tiny_hand_labelled_set() -> None:
    from training.data import StampDataset
    from training.evaluate import evaluate_real, format_real

    # Objects: A (SN, 3 alerts: 2 right, 1 called AGN), B (SN, 1 alert called VS),
    # C (VS, right), D (VS, called AGN), E (AGN, right).
    objects = ["A", "A", "A", "B", "C", "D", "E"]
    labels = [1, 1, 1, 1, 2, 2, 0]
    predicted = [1, 1, 0, 2, 2, 0, 0]
    n = len(labels)
    dataset = StampDataset(np.zeros((n, 63, 63, 3), np.float32), np.array(labels),
                           np.zeros((n, len(FEATURE_NAMES)), np.float32),
                           object_ids=np.array(objects),
                           tiers=np.array(["A", "A", "A", "A", "B", "B", "B"]))
    result = evaluate_real(_one_hot(predicted), dataset)
    alert = result["per_alert"]
    assert alert["n"] == 7 and alert["accuracy"] == pytest.approx(4 / 7)
    assert alert["classes"]["SN"]["recall"] == pytest.approx(2 / 4)
    assert alert["classes"]["SN"]["precision"] == pytest.approx(1.0)
    assert alert["classes"]["AGN"]["precision"] == pytest.approx(1 / 3)
    assert alert["balanced_accuracy"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    obj = result["per_object"]
    # Object A's mean probability is SN (2 of 3 alerts): per object, SN recall is 1/2.
    assert obj["n"] == 5
    assert obj["confusion_matrix"][1] == [0, 1, 1, 0, 0]
    assert obj["confusion_matrix"][2] == [1, 0, 1, 0, 0]
    assert obj["classes"]["AGN"]["precision"] == pytest.approx(1 / 2)
    assert obj["classes"]["SN"]["recall_95"] == pytest.approx((0.0945, 0.9055), abs=1e-4)
    lo, hi = obj["balanced_accuracy_95"]
    assert 0 <= lo <= obj["balanced_accuracy"] <= hi <= 1
    assert result["per_tier"]["A"]["n"] == 2 and result["per_tier"]["B"]["n"] == 3
    text = format_real("tiny", result)
    assert "per object: balanced accuracy" in text and "SN            2" in text


def test_evaluate_command_on_real_alerts(tmp_path: Path, capsys) -> None:
    from tests.training.test_realdata import _candid, _write_alerts, _write_labels

    _write_alerts(tmp_path / "alerts", range(1, 6))
    labels = _write_labels(tmp_path / "labels.csv", [
        {"candid": _candid(s), "label": ["AGN", "SN", "VS", "asteroid", "bogus"][s % 5],
         "tier": "A"} for s in range(1, 6)])
    keras.utils.set_random_seed(0)
    model_dir = _artifact(tmp_path / "m", build_rotinv(), ["image", "features"])
    png = tmp_path / "confusion.png"
    assert train_main(["evaluate", "--model", str(model_dir), "--alerts",
                       str(tmp_path / "alerts"), "--labels", str(labels),
                       "--confusion", str(png)]) == 0
    out = capsys.readouterr().out
    assert "per object: balanced accuracy" in out and "on 5 real alerts" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="go together"):
        train_main(["evaluate", "--model", str(model_dir), "--alerts", str(tmp_path)])
