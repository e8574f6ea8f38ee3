"""``stamp-worker demo``, the README's first command, as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO, shared_data_dir
from worker.decode.packets import synthetic_alert
from worker.model.artifact import CLASS_NAMES


def test_demo_labels_every_sample_alert(kafka_bootstrap: str) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    done = subprocess.run([sys.executable, "-m", "worker.cli", "demo"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    out = done.stdout
    print(out)
    assert done.returncode == 0, done.stderr[-3000:]
    labels, dead = map(int, re.search(r"accounted for: (\d+) labels \+ (\d+) dead letters",
                                      out).groups())
    sent = int(re.search(r"sent (\d+), failed 0", out).group(1))
    if shared_data_dir() is not None:
        # 380 files, 422 alert records: 416 labelled, 6 refused (see tests/conftest.py).
        assert (sent, labels, dead) == (380, 416, 6)
    else:
        assert sent == 300 and labels + dead == 300
    table = {m.group(1): int(m.group(2))
             for m in re.finditer(r"^(\w+)\s+(\d+)\s+(?:[\d.]+|-)$", out, re.M)}
    assert set(table) == set(CLASS_NAMES) and sum(table.values()) == labels
    assert "consumed → label published, per alert: p50" in out


def test_demo_replays_the_data_folder_it_is_given(kafka_bootstrap: str, tmp_path) -> None:
    alerts = tmp_path / "ztf-alerts-mine"
    alerts.mkdir()
    for i in range(5):
        (alerts / f"{i}.avro").write_bytes(synthetic_alert(i))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    done = subprocess.run([sys.executable, "-m", "worker.cli", "demo", "--data", str(tmp_path),
                           "--timeout", "120"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    print(done.stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"input: 5 real alert files in {tmp_path}" in done.stdout
    assert "accounted for: 5 labels + 0 dead letters" in done.stdout
    # The worker's model load is the first TensorFlow import: none of its notices.
    assert "oneDNN" not in done.stderr and "absl::InitializeLog" not in done.stderr
