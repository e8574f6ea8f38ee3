"""training.evaluate: real labelled stamps through the worker's loading path."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from tests.test_model import _artifact
from training.cli import main as train_main
from training.evaluate import evaluate, load_alerce_test_stamps
from training.models import build_rotinv
from worker.features import FEATURE_NAMES
from worker.model import StampModel


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
