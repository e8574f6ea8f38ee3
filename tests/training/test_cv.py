"""training.cv: object-grouped cross-validation fills every example from a held-out fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.training.test_finetune import tiny_real
from training.cv import cross_validate
from training.finetune import FineTuneConfig
from training.grouped import grouped_folds


def test_every_example_is_predicted_by_a_model_that_did_not_see_its_object() -> None:
    real = tiny_real(n_objects=20, alerts_per_object=3)
    result = cross_validate(real, FineTuneConfig(epochs=1, per_class=4, batch_size=8), k=4,
                            fold_seed=2)
    assert np.array_equal(result.folds, grouped_folds(real.labels, real.object_ids, 4, 2))
    np.testing.assert_allclose(result.probs.sum(axis=1), 1.0, atol=1e-5)
    assert [f["fold"] for f in result.per_fold] == [0, 1, 2, 3]
    assert sum(f["objects"] for f in result.per_fold) == 20
    assert result.figures["per_object"]["n"] == 20 and result.figures["per_alert"]["n"] == 60
    assert result.figures["as_first_detection"]["n"] == 20


def test_cv_command_writes_its_report(tmp_path: Path, capsys) -> None:
    from training.cli import main as train_main
    from training.data import save_npz

    real = save_npz(tiny_real(), tmp_path / "real.npz")
    assert train_main(["cv", "--real", str(real), "--simulate", "0", "--epochs", "1",
                       "--per-class", "3", "--folds", "3", "--report",
                       str(tmp_path / "rep")]) == 0
    assert "object-grouped 3-fold" in capsys.readouterr().out
    assert (tmp_path / "rep" / "cv.json").is_file()
    assert (tmp_path / "rep" / "cv_confusion.png").is_file()
