"""worker.tools.classify: the worker's pipeline without Kafka, JSON lines and CSV out."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.conftest import REPO
from tests.decode.test_sources import write_archive
from tests.model.test_artifact import _artifact
from training.models import build_rotinv
from worker.cli import main
from worker.decode.packets import synthetic_alert
from worker.decode.sources import Payload
from worker.labeller import Labeller
from worker.model.artifact import CLASS_NAMES, StampModel
from worker.stream.output import LABEL_SCHEMA
from worker.tools.classify import LabelWriter, classify_payloads, csv_columns


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
        # A damaged alert is refused; a file that is no alert at all is counted apart.
        assert summary.refused == Counter({"truncated_container": 1})
        assert [origin for origin, _ in summary.not_alerts] == ["text.avro"]
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
    (tmp_path / "cut.avro").write_bytes(synthetic_alert(7)[:-30])
    out = tmp_path / "labels.csv"
    code = main(["classify", str(archive), str(tmp_path / "cut.avro"), "--model",
                 str(model_dir), "-f", "csv", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0  # a damaged alert is refused with its reason: a result
    assert len(out.read_text().splitlines()) == 1 + 6
    assert f"REFUSED {tmp_path / 'cut.avro'}: truncated_container" in err
    assert "7 inputs → 6 labels, 1 refused, 0 unreadable inputs, 0 inputs not alerts" in err
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(archive.read_bytes()[:200])
    assert main(["classify", str(broken), "--model", str(model_dir), "-q"]) == 1
    captured = capsys.readouterr()
    assert f"UNREADABLE {broken}" in captured.err and captured.out == ""


def test_cli_exit_status_1_for_an_input_that_is_not_an_alert(model_dir: Path, tmp_path: Path,
                                                            capsys) -> None:
    (tmp_path / "a.avro").write_bytes(synthetic_alert(1))
    (tmp_path / "bad.avro").write_bytes(b"\x00\x00")
    assert main(["classify", str(tmp_path), "--model", str(model_dir), "-q"]) == 1
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1  # the alert's label is written all the same
    assert f"NOT AN ALERT {tmp_path / 'bad.avro'}: unknown_format" in captured.err
    assert "2 inputs → 1 labels, 0 refused, 0 unreadable inputs, 1 input not an alert" \
        in captured.err


def test_cli_checks_inputs_and_output_before_the_model(tmp_path: Path, capsys,
                                                       monkeypatch) -> None:
    """Nothing to label, or a wrong path: answered without loading the model."""
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(StampModel, "load", no_model)
    good = tmp_path / "a.avro"
    good.write_bytes(synthetic_alert(1))
    notes = tmp_path / "notes.txt"
    notes.write_text("not an alert\n")
    assert main(["classify", str(notes)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and f"NOT AN ALERT {notes}: unknown_format" in captured.err
    for argv, message in (
            ([str(tmp_path / "nope.avro"), str(good)],
             f"{tmp_path / 'nope.avro'}: no such file or directory"),
            ([str(good), "-o", str(tmp_path / "no" / "labels.csv")],
             f"{tmp_path / 'no' / 'labels.csv'}: folder {tmp_path / 'no'} does not exist"),
            ([str(good), "-o", str(tmp_path)], f"{tmp_path}: is a folder; give a file name")):
        assert main(["classify", *argv]) == 2
        captured = capsys.readouterr()
        assert captured.err == f"stamp-worker classify: {message}\n" and captured.out == ""


def test_cli_a_bad_model_is_one_line_and_status_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.avro").write_bytes(synthetic_alert(1))
    assert main(["classify", str(tmp_path / "a.avro"), "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stamp-worker classify: {tmp_path / 'manifest.json'}: missing")
    assert len(err.splitlines()) == 1


def test_cli_backend_option(model_dir: Path, tmp_path: Path, capsys) -> None:
    """--backend onnx needs the artifact's model.onnx (one line, status 2); the bundled
    model gives the same labels on both backends."""
    alert = tmp_path / "a.avro"
    alert.write_bytes(synthetic_alert(1))
    assert main(["classify", str(alert), "--model", str(model_dir), "--backend", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "stamp-train export-onnx" in err and len(err.splitlines()) == 1
    out = {}
    for backend in ("keras", "onnx"):
        assert main(["classify", str(alert), "--backend", backend, "-q"]) == 0
        out[backend] = json.loads(capsys.readouterr().out)
    assert out["keras"]["top_class"] == out["onnx"]["top_class"]
    assert out["keras"]["probabilities"] == pytest.approx(out["onnx"]["probabilities"],
                                                          abs=1e-5)
    # The bundled 8-bit model: labels say so in model_version.
    assert main(["classify", str(alert), "--backend", "onnx-int8", "-q"]) == 0
    int8 = json.loads(capsys.readouterr().out)
    assert int8["model_version"] == out["onnx"]["model_version"] + "+int8"
    assert int8["probabilities"] == pytest.approx(out["onnx"]["probabilities"], abs=0.05)
    assert main(["classify", str(alert), "--model", str(model_dir), "--backend",
                 "onnx-int8"]) == 2
    err = capsys.readouterr().err
    assert "stamp-train quantize" in err and len(err.splitlines()) == 1


def test_cli_prints_no_tensorflow_notices(model_dir: Path, tmp_path: Path) -> None:
    """A run as a user starts it: stderr holds the summary, nothing from TensorFlow."""
    (tmp_path / "a.avro").write_bytes(synthetic_alert(1))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "worker.cli", "classify",
                           str(tmp_path / "a.avro"), "--model", str(model_dir)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("1 inputs → 1 labels, 0 refused"), done.stderr
    assert "oneDNN" not in done.stderr and "absl" not in done.stderr


def test_cli_missing_path_in_a_fresh_process(tmp_path: Path) -> None:
    """Status 2, one line, and TensorFlow never imported."""
    code = ("import sys\nfrom worker.cli import main\nstatus = main(sys.argv[1:])\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)\nsys.exit(status)\n")
    done = subprocess.run([sys.executable, "-c", code, "classify", str(tmp_path / "x.avro")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    missing = tmp_path / "x.avro"
    assert done.stderr == f"stamp-worker classify: {missing}: no such file or directory\n"
    assert done.stdout == "False False\n"


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
