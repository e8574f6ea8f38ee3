"""``stamp-worker labels``: read the label records of a topic as JSON lines or CSV.

Label records are Avro (``schemas/label.avsc``), which generic console consumers print as
bytes; this reads a label topic from its start up to its end as seen when the command
starts (or keeps following it), with a throw-away consumer group, so reading never moves
any group's offsets.  Records are written as ``stamp-worker classify`` writes them, and a
count per class goes to standard error.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaException, TopicPartition

from worker.stream.output import CLASS_NAMES, decode_labels
from worker.tools.classify import LabelWriter

POLL_S = 0.5


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    """Timestamps back to [ms since Unix epoch], as the worker wrote them."""
    return {key: (round(value.timestamp() * 1000) if isinstance(value, dt.datetime) else value)
            for key, value in record.items()}


def read_labels(settings: dict[str, Any], topic: str, follow: bool, timeout_s: float
                ) -> Iterator[dict[str, Any]]:
    """Label records of ``topic``, oldest first per partition.

    Parameters
    ----------
    settings : dict
        librdkafka settings with ``bootstrap.servers``.
    topic : str
        A label topic.
    follow : bool
        Keep waiting for new records instead of stopping at the end seen at the start.
    timeout_s : float
        Longest wait for the cluster's answers [s].

    Raises
    ------
    KafkaException
        The topic does not exist, or a message could not be read.
    """
    consumer = Consumer({**settings, "group.id": f"stamp-labels-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": False,
                         "auto.offset.reset": "earliest"})
    try:
        info = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if info is None or info.error is not None:
            raise KafkaException(f"topic {topic!r}: {info.error if info else 'not found'}")
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout_s)[1]
                for p in info.partitions}
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in sorted(info.partitions)])
        while follow or todo:
            for message in consumer.consume(500, POLL_S):
                if message.error() is not None:
                    raise KafkaException(message.error())
                if message.offset() + 1 >= ends[message.partition()]:
                    todo.discard(message.partition())
                for record in decode_labels(message.value() or b""):
                    yield _plain(record)
    finally:
        consumer.close()


def labels_command(topic: str, bootstrap: str | None, fmt: str, limit: int | None,
                   follow: bool, connect_timeout_s: float, out: TextIO, err: TextIO) -> int:
    """Run ``stamp-worker labels``; returns the exit status (0, or 1 on a Kafka error).

    Parameters
    ----------
    topic : str
        Label topic.
    bootstrap : str or None
        ``host:port`` list; None: ``$KAFKA_BOOTSTRAP_SERVERS``.
    fmt : {"jsonl", "csv"}
        Output format.
    limit : int or None
        Stop after this many records.
    follow : bool
        Keep reading new records until interrupted.
    connect_timeout_s : float
        Longest wait for the cluster [s].
    out, err : TextIO
        Records, and the per-class summary.

    The ``STAMP_WORKER__KAFKA__COMMON__*`` variables (the worker's security settings)
    are the consumer's librdkafka settings.
    """
    from worker.stream.cluster import (
        ClusterError,
        check_reachable,
        command_logging,
        librdkafka_logger,
        property_problems,
    )
    from worker.stream.config import ConfigError, kafka_common_from_env

    command_logging()
    bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        raise SystemExit("stamp-worker labels: no broker: give --bootstrap-servers "
                         "HOST:PORT or set KAFKA_BOOTSTRAP_SERVERS")
    try:
        settings = {**kafka_common_from_env(), "bootstrap.servers": bootstrap}
    except ConfigError as exc:
        raise SystemExit(f"stamp-worker labels: environment: {exc}") from exc
    refused = property_problems("consumer", {k: v for k, v in settings.items()
                                             if k != "bootstrap.servers"})
    if refused:
        key, message = refused[0]
        raise SystemExit(f"stamp-worker labels: {key or 'settings'} (from "
                         f"STAMP_WORKER__KAFKA__COMMON__*): {message}")
    try:
        check_reachable("consumer", settings, connect_timeout_s,
                        what="--bootstrap-servers (or KAFKA_BOOTSTRAP_SERVERS)")
    except ClusterError as exc:
        raise SystemExit(f"stamp-worker labels: {exc}") from exc
    writer = LabelWriter(out, fmt)
    by_class: Counter[str] = Counter()
    start = time.monotonic()
    try:
        for record in read_labels({**settings, "logger": librdkafka_logger()}, topic, follow,
                                  connect_timeout_s):
            writer.write(record)
            by_class[record["top_class"]] += 1
            if limit is not None and sum(by_class.values()) >= limit:
                break
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        print(f"stamp-worker labels: {getattr(error, 'str', lambda: error)()}", file=err)
        return 1
    except KeyboardInterrupt:
        pass
    counts = ", ".join(f"{name} {by_class[name]}" for name in CLASS_NAMES)
    print(f"{sum(by_class.values())} labels from {topic} in {time.monotonic() - start:.1f} s: "
          f"{counts}", file=err)
    return 0
