"""The development broker against real confluent-kafka clients (no mocks)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from worker.tools import devbroker


def _produce(bootstrap: str, topic: str, values: list[bytes], partition: int = 0) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True})
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    for i, value in enumerate(values):
        producer.produce(topic, value=value, key=str(i).encode(), partition=partition,
                         on_delivery=on_delivery)
    assert producer.flush(15) == 0
    assert errors == []


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})


def _consume(consumer: Consumer, count: int, timeout: float = 20.0) -> list[Message]:
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        messages.append(msg)
    return messages


def test_produce_consume(kafka_bootstrap: str, topic_factory) -> None:
    topic = topic_factory("roundtrip", partitions=3)
    values = [f"alert-{i}".encode() for i in range(5)]
    _produce(kafka_bootstrap, topic, values, partition=1)
    consumer = _consumer(kafka_bootstrap, f"g-{uuid.uuid4().hex[:8]}")
    try:
        consumer.subscribe([topic])
        got = _consume(consumer, len(values))
    finally:
        consumer.close()
    assert [m.value() for m in got] == values
    assert {m.partition() for m in got} == {1}
    assert [m.offset() for m in got] == list(range(len(values)))
    assert [m.key() for m in got] == [str(i).encode() for i in range(len(values))]


def test_committed_offset_survives_a_new_consumer(kafka_bootstrap: str, topic_factory) -> None:
    topic = topic_factory("commit")
    group = f"g-{uuid.uuid4().hex[:8]}"
    _produce(kafka_bootstrap, topic, [f"m{i}".encode() for i in range(6)])

    first = _consumer(kafka_bootstrap, group)
    try:
        first.subscribe([topic])
        got = _consume(first, 3)
        assert [m.value() for m in got] == [b"m0", b"m1", b"m2"]
        first.commit(message=got[-1], asynchronous=False)  # commits offset 3
        committed = first.committed([TopicPartition(topic, 0)], timeout=10)
        assert committed[0].offset == 3
    finally:
        first.close()

    second = _consumer(kafka_bootstrap, group)
    try:
        second.subscribe([topic])
        rest = _consume(second, 3)
    finally:
        second.close()
    assert [m.value() for m in rest] == [b"m3", b"m4", b"m5"]
    assert rest[0].offset() == 3


def test_topics_are_not_auto_created(kafka_bootstrap: str, kafka_admin) -> None:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("an external broker may auto-create topics")
    name = f"never-created-{uuid.uuid4().hex[:8]}"
    consumer = _consumer(kafka_bootstrap, f"g-{uuid.uuid4().hex[:8]}")
    try:
        metadata = consumer.list_topics(name, timeout=10)
    finally:
        consumer.close()
    assert metadata.topics[name].error is not None
    assert metadata.topics[name].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    assert name not in kafka_admin.list_topics(timeout=10).topics


def test_stop_is_idempotent_and_the_process_is_gone(tmp_path: Path) -> None:
    """A second broker of its own (in a folder of its own), stopped twice."""
    broker = devbroker.start(tmp_path / "kafka")
    pid = broker.pid
    assert broker.is_running()
    assert (tmp_path / "kafka" / "kafka.pid").read_text().strip() == str(pid)
    assert devbroker.Broker.attach(tmp_path / "kafka") is not None

    t0 = time.monotonic()
    broker.stop(timeout=30)
    assert time.monotonic() - t0 < 30  # a clean SIGTERM shutdown, not the SIGKILL fallback
    broker.stop()  # idempotent
    with broker:  # and the context manager's stop too
        pass
    assert not broker.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (tmp_path / "kafka" / "kafka.pid").exists()
    assert devbroker.Broker.attach(tmp_path / "kafka") is None
    assert "shut down completed" in broker.log_file.read_text() or \
        "shutdown completed" in broker.log_file.read_text()


def test_stop_wipe_deletes_the_broker_folder_and_nothing_else(tmp_path: Path) -> None:
    """``kafka.py stop --wipe``: the broker's topics and logs go; a folder that is not a
    broker's, or one a broker still runs from, is left as it is."""
    other = tmp_path / "not-a-broker"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert devbroker.main(["stop", "--wipe", "--dir", str(other)]) == 1
    assert (other / "keep.txt").read_text() == "mine"
    folder = tmp_path / "kafka"
    broker = devbroker.start(folder)
    try:
        with pytest.raises(devbroker.DevBrokerError, match="still runs"):
            devbroker.wipe(folder)
        assert (folder / "server.properties").is_file()
    finally:
        assert devbroker.main(["stop", "--wipe", "--dir", str(folder)]) == 0
    # `stop` returns once the JVM's command line is gone; the exiting process may take a
    # moment more to end (and be reaped here, its parent).
    deadline = time.monotonic() + 10
    while broker.is_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not broker.is_running()
    assert not folder.exists()
    assert devbroker.main(["stop", "--wipe", "--dir", str(folder)]) == 0  # nothing left
