"""training.feature_study and training.error_study, run small."""

from __future__ import annotations

from pathlib import Path

import pytest

from training import error_study, feature_study
from training.cli import main as train_main


def test_feature_study_prints_its_table(capsys) -> None:
    assert feature_study.main(["--n", "2000", "--seed", "3"]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == 4 and "log scales + missing indicators" in text


def test_error_study_splits_the_test_set_by_scene(tmp_path: Path, capsys) -> None:
    out = tmp_path / "m"
    assert train_main(["train", "--simulate", "600", "--sim-seed", "2", "--model", "rotinv",
                       "--epochs", "1", "--val-per-class", "3", "--test-per-class", "8",
                       "--batch-size", "64", "--out", str(out)]) == 0
    capsys.readouterr()
    assert error_study.main(["--model", str(out)]) == 0
    text = capsys.readouterr().out
    counts = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[1].isdigit():
            counts[cells[0]] = int(cells[1])
    # Every SN and AGN of the test set falls in exactly one scene kind, every alert in
    # one signal-to-noise bin.
    assert sum(v for k, v in counts.items() if k.startswith("SN:")) == 8
    assert sum(v for k, v in counts.items() if k.startswith("AGN:")) == 8
    assert sum(v for k, v in counts.items() if k.startswith("VS:")) == 8
    assert sum(v for k, v in counts.items() if k[0].isdigit() or k.startswith("≥")) == 40


def test_error_study_needs_a_simulated_model(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="simulated data"):
        error_study._simulation_of({"training": {"data_source": "stamps.npz"}})
