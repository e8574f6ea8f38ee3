"""``stamp-worker labels`` reads a real label topic back as the worker wrote it."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

from confluent_kafka import Producer

from worker.stream.output import CLASS_NAMES, encode_label
from worker.tools.read_labels import labels_command


def record(i: int, top: str) -> dict:
    probs = {name: (0.5 if name == top else 0.125) for name in CLASS_NAMES}  # float32-exact
    return {"objectId": f"ZTF24obj{i:04d}", "candid": 1000 + i, "jd": 2460428.5 + i,
            "probabilities": probs, "top_class": top, "top_probability": 0.5,
            "method": "cnn", "model_name": "m", "model_version": "1",
            "preprocessing_version": "1", "flags": [], "consumed_at": 1_700_000_000_000 + i,
            "published_at": 1_700_000_000_100 + i, "source_topic": "alerts",
            "source_partition": 0, "source_offset": i}


def test_labels_reads_every_record_as_written(kafka_bootstrap: str,
                                              topic_factory: Callable[..., str]) -> None:
    topic = topic_factory("labels", partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    written = [record(i, CLASS_NAMES[i % 5]) for i in range(7)]
    for i, rec in enumerate(written):
        producer.produce(topic, key=rec["objectId"].encode(), value=encode_label(rec),
                         partition=i % 2)
    assert producer.flush(20) == 0
    out, err = io.StringIO(), io.StringIO()
    assert labels_command(topic, kafka_bootstrap, "jsonl", None, False, 10, out, err) == 0
    read = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sorted(read, key=lambda r: r["candid"]) == written  # timestamps as ms again
    assert err.getvalue().startswith(f"7 labels from {topic}")
    assert "AGN 2, SN 2, VS 1, asteroid 1, bogus 1" in err.getvalue()

    out = io.StringIO()
    assert labels_command(topic, kafka_bootstrap, "csv", 3, False, 10, out, io.StringIO()) == 0
    assert len(out.getvalue().splitlines()) == 1 + 3  # header and the --limit


def test_labels_of_a_missing_topic_is_one_line_and_status_1(kafka_bootstrap: str) -> None:
    err = io.StringIO()
    assert labels_command("no-such-topic-x1", kafka_bootstrap, "jsonl", None, False, 5,
                          io.StringIO(), err) == 1
    assert err.getvalue().count("\n") == 1 and "no-such-topic-x1" in err.getvalue()
