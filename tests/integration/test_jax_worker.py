"""``stamp-worker run`` with ``model_backend: jax``: spawned worker processes set Keras up
on JAX themselves and label the stream as ONNX Runtime does."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.integration.test_pipeline import committed, consume_all, produce, write_config
from worker.decode.alerts import AlertDecoder
from worker.decode.packets import synthetic_alert
from worker.model.artifact import StampModel, default_model_path
from worker.prepare.stamps import prepare_alert
from worker.stream.output import decode_labels

pytest.importorskip("jax", reason="jax is not installed (it is in the dev extra)")


def test_two_jax_worker_processes_label_the_stream_as_onnx_does(
        kafka_bootstrap: str, topic_factory, tmp_path: Path) -> None:
    topics = {"input": topic_factory("alerts", partitions=2), "output": topic_factory("labels"),
              "dlq": topic_factory("dead")}
    payloads = [synthetic_alert(seed, nan_pixels=5 * (seed % 2)) for seed in range(120)]
    produce(kafka_bootstrap, topics["input"], payloads)
    group = f"worker-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group,
                          default_model_path(), processes="2", model_backend="jax",
                          model_device="auto")
    # Nothing set by hand: each worker process must choose Keras' backend itself.
    env = {k: v for k, v in os.environ.items()
           if k not in ("KERAS_BACKEND", "JAX_PLATFORMS", "XLA_PYTHON_CLIENT_PREALLOCATE")}
    done = subprocess.run([sys.executable, "-m", "worker.cli", "run", "--config", str(config),
                           "--until-idle", "8"], env=env, capture_output=True, text=True,
                          timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert output.count("(jax backend, cpu)") == 2, output
    assert output.count("stopped cleanly") == 2, output
    assert "Traceback" not in output
    assert sum(committed(kafka_bootstrap, group, topics["input"], 2)) == len(payloads)
    records = [r for m in consume_all(kafka_bootstrap, topics["output"], len(payloads))
               for r in decode_labels(m.value())]
    assert len({r["candid"] for r in records}) == len(payloads)
    onnx = StampModel.load(backend="onnx")
    decoder = AlertDecoder()
    expected = {}
    for payload in payloads:
        alert = decoder.decode(payload)[0]
        prepared = prepare_alert(alert, onnx.preprocess)
        expected[alert.candid] = onnx.predict(prepared.image[None], prepared.features[None])[0]
    for record in records:
        want = expected[record["candid"]]
        got = [record["probabilities"][name] for name in onnx.manifest.class_names]
        assert got == pytest.approx(list(want), abs=1e-5), record["candid"]
