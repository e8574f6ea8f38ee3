"""training.realdata: real alerts + labels CSV → dataset, bit-identical to the worker."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from training.cli import main as train_main
from training.data import DatasetError, load_npz, preprocess_images
from training.realdata import BuildReport, dataset_from_alerts, read_labels
from worker.decode.packets import object_id_for, synthetic_alert
from worker.labeller import Labeller
from worker.prepare.stamps import PreprocessConfig
from worker.stream.output import Source

LABELS = ["AGN", "SN", "VS", "asteroid", "bogus"]


def _write_alerts(folder: Path, seeds: range, nan_pixels: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        path = folder / f"{seed}.avro"
        path.write_bytes(synthetic_alert(seed, nan_pixels=nan_pixels, ra=10.0 + seed))
        paths.append(path)
    return paths


def _write_labels(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = ["candid", "objectId", "label", "tier", "source"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


def _candid(seed: int) -> str:
    return str(2_000_000_000_000_000_000 + seed)


def test_dataset_inputs_are_bit_identical_to_the_worker(tmp_path: Path) -> None:
    paths = _write_alerts(tmp_path / "alerts", range(1, 9), nan_pixels=20)
    labels = _write_labels(tmp_path / "labels.csv", [
        {"candid": _candid(s), "label": LABELS[s % 5], "tier": "A"} for s in range(1, 9)])
    report = BuildReport()
    dataset = dataset_from_alerts([tmp_path / "alerts"], labels, report=report)
    assert len(dataset) == 8 and report.refused == []
    images, kept = preprocess_images(dataset.images, 21)
    assert kept.all()
    labeller = Labeller(None, preprocess=PreprocessConfig())
    by_candid = {int(c): i for i, c in enumerate(dataset.candids)}
    for path in paths:
        work, rejected = labeller.decode(path.read_bytes(), Source("", 0, 0, 0), 0)
        assert rejected == []
        i = by_candid[work[0].alert.candid]
        # The very bytes the worker would hand the model.
        assert images[i].tobytes() == work[0].prepared.image.tobytes()
        assert np.array_equal(dataset.features[i], work[0].prepared.features, equal_nan=True)
        assert dataset.object_ids[i] == work[0].alert.object_id
        assert LABELS[dataset.labels[i]] == LABELS[work[0].alert.candid % 5]
    assert set(dataset.tiers.tolist()) == {"A"}
    assert set(dataset.sources.tolist()) == {"alerts"}  # the folder, when the CSV has none


def test_labels_by_object_and_refusals_are_listed(tmp_path: Path) -> None:
    _write_alerts(tmp_path / "a", range(1, 5))
    (tmp_path / "a" / "junk.avro").write_bytes(b"not an alert")
    (tmp_path / "a" / "copy").mkdir()
    (tmp_path / "a" / "copy" / "1.avro").write_bytes((tmp_path / "a" / "1.avro").read_bytes())
    labels = _write_labels(tmp_path / "l.csv", [
        {"objectId": object_id_for(1), "label": "SN", "source": "tns"},  # by object
        {"candid": _candid(2), "label": "VS"},
        {"candid": _candid(3), "label": ""},                            # unlabelled
    ])
    report = BuildReport()
    dataset = dataset_from_alerts([tmp_path / "a"], labels, report=report)
    assert sorted(dataset.labels.tolist()) == [1, 2]
    assert dataset.sources[dataset.labels == 1][0] == "tns"
    reasons = report.reasons()
    assert reasons == {"unlabelled": 2, "duplicate": 1, "unknown_format": 1}
    assert report.records == 6


@pytest.mark.parametrize(("text", "message"), [
    ("candid,label\n1,Supernova\n", "unknown label 'Supernova'"),
    ("candid,label\nabc,SN\n", "not an integer"),
    ("objectId,label\nZTF1,SN\nZTF1,VS\n", "labelled VS here and SN"),
    ("name,label\nx,SN\n", "needs a 'label' column and a 'candid'"),
])
def test_bad_labels_csv_is_refused_with_its_line(tmp_path: Path, text: str, message: str
                                                 ) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message):
        read_labels(path)


def test_cli_writes_the_dataset_and_the_refused_list(tmp_path: Path, capsys) -> None:
    _write_alerts(tmp_path / "a", range(1, 4))
    labels = _write_labels(tmp_path / "l.csv", [
        {"candid": _candid(1), "label": "AGN", "tier": "B"},
        {"candid": _candid(2), "label": "bogus", "tier": "C"}])
    out = tmp_path / "real.npz"
    assert train_main(["dataset", str(tmp_path / "a"), "--labels", str(labels),
                       "--out", str(out), "--refused", str(tmp_path / "r.csv")]) == 0
    printed = capsys.readouterr().out
    assert "2 alerts of 2 objects from 3 records read" in printed
    dataset = load_npz(out)
    assert sorted(dataset.tiers.tolist()) == ["B", "C"]
    assert sorted(dataset.candids.tolist()) == [int(_candid(1)), int(_candid(2))]
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [r["reason"] for r in rows] == ["unlabelled"]


def test_cli_stops_on_missing_inputs_with_one_line(tmp_path: Path) -> None:
    labels = _write_labels(tmp_path / "l.csv", [{"candid": "1", "label": "SN"}])
    with pytest.raises(SystemExit, match="no such file or directory"):
        train_main(["dataset", str(tmp_path / "nowhere"), "--labels", str(labels),
                    "--out", str(tmp_path / "o.npz")])
    with pytest.raises(SystemExit, match=r"none\.csv: no such file or directory"):
        train_main(["dataset", str(tmp_path), "--labels", str(tmp_path / "none.csv"),
                    "--out", str(tmp_path / "o.npz")])
    _write_alerts(tmp_path / "a", range(1, 2))
    with pytest.raises(SystemExit, match="no labelled alert found"):
        train_main(["dataset", str(tmp_path / "a"), "--labels", str(labels),
                    "--out", str(tmp_path / "o.npz")])


@pytest.mark.shared_data
def test_shared_real_alerts_all_labelled_rows_are_read(data_dir: Path) -> None:
    labels_csv = data_dir / "real-alerts" / "labels.csv"
    report = BuildReport()
    dataset = dataset_from_alerts([data_dir], labels_csv, report=report)
    with open(labels_csv, newline="") as fh:
        labelled = {int(r["candid"]) for r in csv.DictReader(fh) if r["label"]}
    # Every labelled alert of the shared data decodes (ALeRCE's candid-less records too).
    assert set(dataset.candids.tolist()) == labelled
    assert len(set(dataset.object_ids.tolist())) == 470
