"""worker.classify: the worker's pipeline without Kafka, JSON lines and CSV out."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.test_model import _artifact
from tests.test_sources import write_archive
from training.models import build_rotinv
from worker.classify import LabelWriter, classify_payloads, csv_columns
from worker.cli import main
from worker.labeller import Labeller
from worker.model import CLASS_NAMES, StampModel
from worker.output import LABEL_SCHEMA
from worker.packets import synthetic_alert
from worker.sources import Payload


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keras.utils.set_random_seed(2)
    return _artifact(tmp_path_factory.mktemp("m") / "rotinv", build_rotinv(),
                     ["image", "features"])


def _payloads() -> list[Payload]:
    good = [Payload(f"a{i}.avro", synthetic_alert(i, nan_pixels=5 * (i % 2))) for i in range(9)]
    bad = [Payload("cut.avro", synthetic_alert(50)[:-30]), Payload("text.avro", b"hello")]
    return good[:4] + bad[:1] + good[4:] + bad[1:]


def test_labels_in_both_formats_with_the_worker_fields(model_dir: Path) -> None:
    labeller = Labeller(StampModel.load(model_dir))
    outputs = {}
    for fmt in ("jsonl", "csv"):
        stream = io.StringIO()
        refused: list[tuple[str, str]] = []
        summary = classify_payloads(_payloads(), labeller, LabelWriter(stream, fmt),
                                    batch_size=4,
                                    on_refused=lambda o, r, d, out=refused: out.append((o, r)))
        assert (summary.inputs, summary.labelled) == (11, 9)
        assert summary.refused == Counter({"truncated_container": 1, "unknown_format": 1})
        assert refused == [("cut.avro", "truncated_container"), ("text.avro", "unknown_format")]
        assert sum(summary.by_class.values()) == 9
        outputs[fmt] = stream.getvalue()
    records = [json.loads(line) for line in outputs["jsonl"].splitlines()]
    assert [r["source_topic"] for r in records] == [f"a{i}.avro" for i in range(9)]
    assert list(records[0]) == [f["name"] for f in LABEL_SCHEMA["fields"]]
    assert {r["source_partition"] for r in records} == {-1}
    rows = list(csv.DictReader(io.StringIO(outputs["csv"])))
    assert list(rows[0]) == csv_columns()
    for record, row in zip(records, rows, strict=True):
        assert row["objectId"] == record["objectId"] and int(row["candid"]) == record["candid"]
        assert row["top_class"] == record["top_class"]
        np.testing.assert_allclose([float(row[f"p_{c}"]) for c in CLASS_NAMES],
                                   [record["probabilities"][c] for c in CLASS_NAMES], rtol=1e-5)


def test_batching_does_not_change_the_labels(model_dir: Path) -> None:
    labeller = Labeller(StampModel.load(model_dir))
    probs = {}
    for batch in (1, 3, 64):
        stream = io.StringIO()
        classify_payloads(_payloads(), labeller, LabelWriter(stream, "jsonl"), batch)
        probs[batch] = [[json.loads(line)["probabilities"][c] for c in CLASS_NAMES]
                        for line in stream.getvalue().splitlines()]
    np.testing.assert_allclose(probs[1], probs[64], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probs[3], probs[64], rtol=1e-5, atol=1e-7)


def test_cli_reads_archives_and_reports_unreadable_inputs(model_dir: Path, tmp_path: Path,
                                                          capsys) -> None:
    archive = write_archive(tmp_path / "ztf_public_20261124.tar.gz",
                            {f"{i}.avro": synthetic_alert(i) for i in range(6)})
    (tmp_path / "bad.avro").write_bytes(b"\x00\x00")
    out = tmp_path / "labels.csv"
    code = main(["classify", str(archive), str(tmp_path / "bad.avro"), "--model",
                 str(model_dir), "-f", "csv", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0
    assert len(out.read_text().splitlines()) == 1 + 6
    assert "REFUSED" in err and "7 inputs → 6 labels, 1 refused" in err
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(archive.read_bytes()[:200])
    assert main(["classify", str(broken), "--model", str(model_dir), "-q"]) == 1
    captured = capsys.readouterr()
    assert f"UNREADABLE {broken}" in captured.err and captured.out == ""
    with pytest.raises(SystemExit, match="no such file"):
        main(["classify", str(tmp_path / "nope.avro")])
    with pytest.raises(SystemExit, match="manifest.json"):
        main(["classify", str(archive), "--model", str(tmp_path)])


@pytest.mark.shared_data
def test_a_parquet_table_is_labelled_as_its_avro_rows(data_dir: Path, tmp_path: Path) -> None:
    """The bundled model gives the rows of Fink's table the labels it gives the same alerts
    converted to Avro files by the data's maintainers (13 of the table's 72 rows)."""
    table = data_dir / "labelled" / "fink-hostless" / "hostless_detection_part-0-0-435829.parquet"
    avro = data_dir / "real-alerts" / "alerts" / "shared-fink-hostless"
    labels = {}
    for name, path in (("table", table), ("avro", avro)):
        out = tmp_path / f"{name}.jsonl"
        assert main(["classify", str(path), "-o", str(out), "-q"]) == 0
        labels[name] = {r["candid"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(labels["table"]) == 72
    assert labels["avro"].keys() <= labels["table"].keys() and len(labels["avro"]) == 13
    for candid, want in labels["avro"].items():
        got = labels["table"][candid]
        assert got["source_topic"].startswith(f"{table}#row")
        assert (got["objectId"], got["top_class"]) == (want["objectId"], want["top_class"])
        # Same model input; only the batch differs (72 alerts against 13 per model call).
        np.testing.assert_allclose([got["probabilities"][c] for c in CLASS_NAMES],
                                   [want["probabilities"][c] for c in CLASS_NAMES],
                                   rtol=1e-5, atol=1e-7)
