"""training.sim_report: the simulator-vs-reality distance table and its command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ks_2samp

from tests.conftest import REPO
from training.cli import main as train_main
from training.data import StampDataset, save_npz
from training.sim_report import (
    PIXEL_FEATURES,
    distance_table,
    object_weights,
    pixel_statistics,
    weighted_ks,
)
from training.simulator import simulate
from worker.prepare.features import metadata_features

CLASSES = ("a", "b")


def test_identical_samples_are_at_distance_zero() -> None:
    rng = np.random.default_rng(0)
    values = {"x": rng.normal(size=40), "y": np.where(rng.random(40) < 0.2, np.nan, 1.0)}
    labels = np.repeat([0, 1], 20)
    rows = distance_table(values, labels, values, labels, class_names=CLASSES)
    assert len(rows) == 4 and all(r.ks == 0.0 for r in rows)
    assert all(r.real_median == r.sim_median for r in rows)


def test_shifted_samples_are_apart_and_the_table_is_sorted() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 200)
    real = {"same": rng.normal(size=400), "small": rng.normal(size=400),
            "large": rng.normal(size=400)}
    sim = {"same": real["same"].copy(), "small": real["small"] + 0.3,
           "large": real["large"] + np.where(labels == 1, 3.0, 1.0)}
    rows = distance_table(real, labels, sim, labels, class_names=CLASSES)
    ks = [r.ks for r in rows]
    assert ks == sorted(ks, reverse=True)
    assert (rows[0].label, rows[0].feature) == ("b", "large") and rows[0].ks > 0.8
    by = {(r.label, r.feature): r for r in rows}
    assert by["a", "same"].ks == 0.0
    assert 0.0 < by["a", "small"].ks < by["a", "large"].ks
    assert by["b", "large"].sim_median - by["b", "large"].real_median == pytest.approx(3.0)


def test_ks_is_scipys_for_equal_weights_and_counts_missing_values() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=57), rng.normal(0.4, 1.3, size=91)
    assert weighted_ks(a, b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)
    # Same present values, 30 % missing on one side only: at least 0.3 apart.
    c = np.concatenate([a, np.full(25, np.nan)])
    assert weighted_ks(a, c) >= 25 / 82 - 1e-12


def test_an_object_with_many_alerts_counts_once() -> None:
    labels = np.zeros(12, np.int64)
    objects = np.array(["busy"] * 10 + ["quiet1", "quiet2"])
    weights = object_weights(labels, objects)
    assert weights.sum() == pytest.approx(3.0)
    real = {"x": np.array([5.0] * 10 + [0.0, 1.0])}
    sim = {"x": np.array([0.0, 1.0, 5.0])}
    weighted = distance_table(real, labels, sim, np.zeros(3, np.int64), weights,
                              class_names=("a",))
    plain = distance_table(real, labels, sim, np.zeros(3, np.int64), class_names=("a",))
    assert weighted[0].ks == pytest.approx(0.0) and plain[0].ks == pytest.approx(0.5)


def test_pixel_statistics_of_a_point_source() -> None:
    crops = np.zeros((2, 21, 21, 3), np.float32)
    crops[0, 10, 10, :] = 1.0
    crops[1, 3, 10, :] = 1.0                            # peak 7 pixels above the centre
    stats = pixel_statistics(crops)
    assert set(stats) == set(PIXEL_FEATURES)
    assert stats["sci centre"].tolist() == [1.0, 0.0]
    assert stats["diff peak offset"].tolist() == [0.0, 7.0]
    assert stats["tmpl frac>0.5"][0] == pytest.approx(1 / 441)


def test_cli_refuses_a_missing_file_without_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(SystemExit, match="nowhere.csv: no such file"):
        train_main(["sim-report", "--real", str(missing), "--out", str(tmp_path / "r")])
    # As a command: one line on stderr, no traceback, and TensorFlow never imported.
    code = ("import sys\nfrom training.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "finally:\n    print('tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, "sim-report", "--real", str(missing),
                           "--out", str(tmp_path / "r")], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "no such file" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stdout.strip() == "False"
    assert not (tmp_path / "r").exists()


def test_cli_writes_the_report_from_a_dataset(tmp_path: Path, capsys) -> None:
    sim = simulate(60, seed=3, class_fractions=None)
    features = np.stack([metadata_features(c) for c in sim.candidates]).astype(np.float32)
    objects = np.array([f"obj{i // 2}" for i in range(60)])   # two alerts per object
    real = save_npz(StampDataset(sim.images, sim.labels, features, object_ids=objects),
                    tmp_path / "real.npz")
    out = tmp_path / "report"
    assert train_main(["sim-report", "--real", str(real), "--n-per-class", "12",
                       "--seed", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "60 alerts" in printed and "| 1 |" in printed
    table = json.loads((out / "sim_report.json").read_text())
    ks = [row["ks"] for row in table["rows"]]
    assert len(ks) == 5 * (26 + len(PIXEL_FEATURES)) and ks == sorted(ks, reverse=True)
    assert "per object" in table["weighting"]
    assert (out / "sim_report.md").read_text().count("\n| ") == len(ks) + 1
    for name in ("worst_features.png", "mean_stamps.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
