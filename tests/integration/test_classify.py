"""Offline classify gives the streaming worker's labels for the same alerts."""

from __future__ import annotations

import io
import json
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np

from tests.integration.test_pipeline import (
    consume_all,
    expected_outcome,
    make_worker,
    run_until_committed,
    sample_payloads,
    topics,  # noqa: F401  (fixture)
    write_config,
)
from worker.decode.sources import Payload
from worker.labeller import Labeller
from worker.model.artifact import CLASS_NAMES, StampModel
from worker.stream.output import decode_labels
from worker.tools.classify import LabelWriter, classify_payloads
from worker.tools.replay import Pacer, make_producer, replay


def test_classify_and_the_worker_give_the_same_labels(kafka_bootstrap: str, topics: dict,  # noqa: F811
                                                      model_dir: Path,
                                                      tmp_path: Path) -> None:
    payloads = [Payload(str(i), data) for i, data in enumerate(sample_payloads())]
    candids, _ = expected_outcome([p.data for p in payloads])
    # Through Kafka: replay → worker → label topic.
    producer = make_producer({"bootstrap.servers": kafka_bootstrap})
    assert replay(payloads, producer, topics["input"], Pacer()).failed == 0
    group = f"worker-{uuid.uuid4().hex[:8]}"
    worker = make_worker(write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group,
                                      model_dir))
    run_until_committed(worker, kafka_bootstrap, group, topics["input"], 3, len(payloads))
    streamed = defaultdict(list)
    for message in consume_all(kafka_bootstrap, topics["output"], sum(candids.values())):
        for record in decode_labels(message.value()):
            streamed[record["candid"]].append(record)
    # Offline: the same payloads, the same model, other batch boundaries.
    out = io.StringIO()
    summary = classify_payloads(payloads, Labeller(StampModel.load(model_dir)),
                                LabelWriter(out, "jsonl"), batch_size=100)
    offline = defaultdict(list)
    for line in out.getvalue().splitlines():
        record = json.loads(line)
        offline[record["candid"]].append(record)
    assert summary.labelled == sum(candids.values())
    assert {c: len(v) for c, v in offline.items()} == {c: len(v) for c, v in streamed.items()}
    compared = 0
    for candid, records in offline.items():
        for a, b in zip(records, streamed[candid], strict=True):
            for field in ("objectId", "jd", "top_class", "method", "flags", "model_name",
                          "model_version", "preprocessing_version"):
                assert a[field] == b[field], (candid, field)
            # The label topic stores float32 probabilities (Avro "float").
            np.testing.assert_allclose([a["probabilities"][c] for c in CLASS_NAMES],
                                       [b["probabilities"][c] for c in CLASS_NAMES],
                                       rtol=1e-5, atol=1e-7)
            compared += 1
    print(f"{compared} labels compared, all equal")
    assert compared == sum(candids.values())
