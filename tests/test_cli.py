"""worker.cli: the inspect command on built alerts."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.cli import main
from worker.packets import synthetic_alert


def test_inspect_reports_alerts_and_reasons(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.avro").write_bytes(synthetic_alert(1))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.avro").write_bytes(synthetic_alert(2)[:-40])
    (tmp_path / "sub" / "c.avro").write_bytes(synthetic_alert(3, size=51, ypos=None))
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 files, 3 alert records" in out
    assert "truncated_container" in out and "stamp_shape" in out
    assert out.count(f"ok      {tmp_path}") == 1


def test_inspect_refuses_missing_paths_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no such file"):
        main(["inspect", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="crop_size"):
        main(["inspect", "--crop-size", "99", str(tmp_path)])
