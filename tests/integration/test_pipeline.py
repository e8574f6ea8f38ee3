"""The worker on a real broker: labels out, nothing lost, failures commit nothing."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from tests.conftest import shared_data_dir
from worker.decode.alerts import Alert, AlertDecoder
from worker.decode.errors import AlertError
from worker.decode.packets import synthetic_alert
from worker.model.artifact import CLASS_NAMES, StampModel
from worker.prepare.stamps import prepare_alert
from worker.stream.config import load_config
from worker.stream.metrics import HealthState, WorkerMetrics
from worker.stream.output import decode_labels
from worker.stream.pipeline import DeliveryError, Worker


def sample_payloads() -> list[bytes]:
    """Real alert files when the shared data exists, else built ones with bad ones mixed in."""
    data = shared_data_dir()
    if data is not None:
        return [p.read_bytes() for p in sorted(data.glob("ztf-alerts*/**/*.avro"))]
    payloads = [synthetic_alert(seed) for seed in range(60)]
    payloads[7] = payloads[7][:-50]  # truncated
    payloads[13] = b"not an alert"
    payloads[21] = synthetic_alert(21, size=51, ypos=None)  # edge stamp, no position
    return payloads


def expected_outcome(payloads: list[bytes]) -> tuple[Counter[int], Counter[str]]:
    """Candids that must be labelled (a multiset: brokers re-publish the same alerts),
    and dead-letter reasons, computed offline."""
    decoder = AlertDecoder()
    candids: Counter[int] = Counter()
    reasons: Counter[str] = Counter()
    for payload in payloads:
        for item in decoder.iter_records(payload):
            if isinstance(item, Alert):
                try:
                    prepare_alert(item)
                except AlertError as err:
                    reasons[err.reason.value] += 1
                else:
                    candids[item.candid] += 1
            else:
                reasons[item.reason.value] += 1
    return candids, reasons


def produce(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "message.max.bytes": 16 * 1024 * 1024})
    for i, payload in enumerate(payloads):
        producer.produce(topic, value=payload, key=str(i).encode())
    assert producer.flush(30) == 0


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 60.0,
                isolation: str = "read_uncommitted") -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": isolation})
    consumer.subscribe([topic])
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        out += [m for m in consumer.consume(500, 0.5) if m.error() is None]
    # Read a little longer: more records than expected is a failure too.
    out += [m for m in consumer.consume(500, 1.0) if m.error() is None]
    consumer.close()
    return out


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    result = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 15)
    consumer.close()
    return [tp.offset for tp in result]


#: Consumer settings for tests that kill a worker: the restarted one waits for the killed
#: member's session to expire, so the shortest the broker allows (its
#: ``group.min.session.timeout.ms``) rather than librdkafka's 45 s.
SHORT_SESSION = {"session.timeout.ms": 6000}


def write_config(path: Path, bootstrap: str, topics: dict[str, str], group: str,
                 model_dir: Path, decode_processes: int = 0, max_messages: int = 64,
                 commit_interval_ms: int = 0, consumer: dict[str, int] | None = None,
                 producer: dict[str, int] | None = None, **extra: str) -> Path:
    """A worker configuration file; ``consumer``/``producer``: librdkafka settings."""
    lines = [
        "kafka:", f"  bootstrap_servers: '{bootstrap}'",
        *([f"  consumer: {json.dumps(consumer)}"] if consumer else []),
        *([f"  producer: {json.dumps(producer)}"] if producer else []),
        "topics:", f"  input: [{topics['input']}]", f"  output: {topics['output']}",
        f"  dead_letter: {topics['dlq']}",
        f"group_id: {group}",
        "batch:", f"  max_messages: {max_messages}", "  max_wait_ms: 100",
        f"  decode_processes: {decode_processes}",
        f"  commit_interval_ms: {commit_interval_ms}",
        f"model_path: '{model_dir}'",
        "metrics:", f"  port: {extra.pop('metrics_port', 0)}",
    ]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def topics(topic_factory) -> dict[str, str]:
    return {"input": topic_factory("alerts", partitions=3), "output": topic_factory("labels"),
            "dlq": topic_factory("dead")}


def make_worker(config_path: Path, model: StampModel | None = None) -> Worker:
    config = load_config(config_path, env={})
    return Worker(config, model or StampModel.load(config.model_path),
                  WorkerMetrics(CollectorRegistry()), HealthState())


def run_until_committed(worker: Worker, bootstrap: str, group: str, topic: str,
                        partitions: int, total: int, timeout: float = 120.0) -> None:
    """Run the worker in a thread until the group's committed offsets cover ``total``."""
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if sum(max(o, 0) for o in committed(bootstrap, group, topic, partitions)) >= total:
                break
            if not thread.is_alive():
                break
            time.sleep(0.5)
    finally:
        worker.request_stop()
        thread.join(30)
    assert not thread.is_alive()


@pytest.mark.parametrize("decode_processes", [0, 2])
def test_every_alert_is_labelled_or_dead_lettered(kafka_bootstrap: str, topics: dict,
                                                  model_dir: Path, tmp_path: Path,
                                                  decode_processes: int) -> None:
    payloads = sample_payloads()
    candids, reasons = expected_outcome(payloads)
    group = f"worker-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topics["input"], payloads)
    worker = make_worker(write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group,
                                      model_dir, decode_processes))
    gc.unfreeze()
    run_until_committed(worker, kafka_bootstrap, group, topics["input"], 3, len(payloads))
    # The objects alive at start (TensorFlow's) are out of the collector's full scans.
    assert gc.get_freeze_count() > 0
    labels = consume_all(kafka_bootstrap, topics["output"], sum(candids.values()))
    dead = consume_all(kafka_bootstrap, topics["dlq"], sum(reasons.values()))
    records = [r for m in labels for r in decode_labels(m.value())]
    assert Counter(r["candid"] for r in records) == candids  # each exactly once
    assert all(m.key().decode() == decode_labels(m.value())[0]["objectId"] for m in labels)
    got = Counter(dict(m.headers())["stamp.reason"].decode() for m in dead)
    assert got == reasons
    for m in dead:
        headers = dict(m.headers())
        assert headers["stamp.source.topic"].decode() == topics["input"]
        index = int(headers["stamp.source.offset"])
        assert m.value() in payloads and index >= 0
    first = records[0]
    assert abs(sum(first["probabilities"].values()) - 1) < 1e-4
    assert first["model_name"] == "rotinv" and first["method"] == "cnn"
    assert worker.metrics.consumed._value.get() == len(payloads)
    # The drift counter, fed a model call at a time (per chunk with decode helpers),
    # agrees with the labels published.
    predicted = {s.labels["class"]: s.value for family in worker.metrics.predictions.collect()
                 for s in family.samples if s.name == "stamp_worker_model_predictions_total"}
    assert {c: n for c, n in predicted.items() if n} == Counter(r["top_class"] for r in records)


@contextlib.contextmanager
def running_with_interval(bootstrap: str, topics: dict, model_dir: Path, tmp_path: Path,
                          alerts: int, commit_interval_ms: int) -> Iterator[tuple]:
    """``(worker, group, payloads)``: ``alerts`` built alerts produced and a worker on them,
    in batches of 8 and commits at most every ``commit_interval_ms``, running in a thread
    until the block ends (then stopped as SIGTERM would)."""
    payloads = [synthetic_alert(seed) for seed in range(alerts)]
    group = f"interval-{uuid.uuid4().hex[:8]}"
    produce(bootstrap, topics["input"], payloads)
    worker = make_worker(write_config(tmp_path / "w.yaml", bootstrap, topics, group,
                                      model_dir, max_messages=8,
                                      commit_interval_ms=commit_interval_ms))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker, group, payloads
        assert thread.is_alive()
    finally:
        worker.request_stop()
        thread.join(30)
    assert not thread.is_alive()


def test_commits_wait_for_the_interval_and_a_stop_commits_everything(
        kafka_bootstrap: str, topics: dict, model_dir: Path, tmp_path: Path) -> None:
    with running_with_interval(kafka_bootstrap, topics, model_dir, tmp_path, 48,
                               60000) as (worker, group, payloads):
        # Six batches labelled and delivered, and none committed: the interval holds.
        consume_all(kafka_bootstrap, topics["output"], len(payloads))
        time.sleep(1)  # delivery reports in, and an idle turn or two of the loop
        assert all(o < 0 for o in committed(kafka_bootstrap, group, topics["input"], 3))
        assert worker.metrics.commits._value.get() == 0
    # The stop committed everything delivered, in one commit.
    assert sum(max(o, 0) for o in committed(kafka_bootstrap, group, topics["input"], 3)) \
        == len(payloads)
    assert worker.metrics.commits._value.get() == 1


def test_an_idle_worker_commits_what_it_delivered_once_the_interval_passes(
        kafka_bootstrap: str, topics: dict, model_dir: Path, tmp_path: Path) -> None:
    with running_with_interval(kafka_bootstrap, topics, model_dir, tmp_path, 24,
                               1500) as (_, group, payloads):
        consume_all(kafka_bootstrap, topics["output"], len(payloads))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = sum(max(o, 0) for o in committed(kafka_bootstrap, group,
                                                      topics["input"], 3))
            if done == len(payloads):
                break
            time.sleep(0.5)
        assert done == len(payloads)  # committed with no new message and no stop


class FailingModel:
    """A model whose inference fails: the batch must not be committed."""

    def __init__(self, real: StampModel) -> None:
        self._real = real
        self.name, self.version, self.preprocess = real.name, real.version, real.preprocess

    def predict(self, images: np.ndarray, features: np.ndarray) -> np.ndarray:
        raise RuntimeError("inference failed (test)")


def test_processing_failure_commits_nothing(kafka_bootstrap: str, topics: dict,
                                            model_dir: Path, tmp_path: Path) -> None:
    payloads = [synthetic_alert(seed) for seed in range(20)]
    group = f"worker-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topics["input"], payloads)
    config = write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group, model_dir)
    failing = make_worker(config, FailingModel(StampModel.load(model_dir)))
    with pytest.raises(RuntimeError, match="inference failed"):
        failing.run()
    assert all(o < 0 for o in committed(kafka_bootstrap, group, topics["input"], 3))
    # A restarted worker processes the same alerts: nothing was lost.
    worker = make_worker(config)
    run_until_committed(worker, kafka_bootstrap, group, topics["input"], 3, len(payloads))
    labels = consume_all(kafka_bootstrap, topics["output"], len(payloads))
    assert len({r["candid"] for m in labels for r in decode_labels(m.value())}) == 20


class FailingOnCall(FailingModel):
    """A model whose n-th inference fails; the calls before it succeed."""

    def __init__(self, real: StampModel, failing_call: int) -> None:
        super().__init__(real)
        self.calls, self.failing_call = 0, failing_call

    def predict(self, images: np.ndarray, features: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == self.failing_call:
            raise RuntimeError("inference failed (test)")
        return self._real.predict(images, features)


@pytest.mark.parametrize("decode_processes", [0, 1])
def test_a_failed_batch_commits_neither_itself_nor_the_batch_consumed_after_it(
        kafka_bootstrap: str, topic_factory, model_dir: Path, tmp_path: Path,
        decode_processes: int) -> None:
    """Batches overlap by one: batch 3 is consumed (and, with a helper, decoded) before
    batch 2 is finished.  When batch 2 fails, only batch 1's offsets may be committed."""
    topics = {"input": topic_factory("alerts", partitions=1), "output": topic_factory("labels"),
              "dlq": topic_factory("dead")}
    payloads = [synthetic_alert(seed) for seed in range(40)]
    group = f"worker-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topics["input"], payloads)
    config = write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group, model_dir,
                          decode_processes=decode_processes, max_messages=8)
    # One chunk per batch (one helper, or none): predict call n is batch n.
    worker = make_worker(config, FailingOnCall(StampModel.load(model_dir), failing_call=2))
    sizes: list[int] = []
    real_start = worker.start_batch

    def recording_start(messages):
        sizes.append(len(messages))
        return real_start(messages)

    worker.start_batch = recording_start
    with pytest.raises(RuntimeError, match="inference failed"):
        worker.run()
    assert len(sizes) >= 3, f"batch 3 was not in flight when batch 2 failed: {sizes}"
    assert committed(kafka_bootstrap, group, topics["input"], 1) == [sizes[0]]
    labels = consume_all(kafka_bootstrap, topics["output"], sizes[0], timeout=5)
    assert len(labels) == sizes[0]
    # A restarted worker labels the rest: nothing was skipped.
    worker = make_worker(config)
    run_until_committed(worker, kafka_bootstrap, group, topics["input"], 1, len(payloads))
    labels = consume_all(kafka_bootstrap, topics["output"], len(payloads))
    assert len({r["candid"] for m in labels for r in decode_labels(m.value())}) == 40


def test_a_message_larger_than_the_fetch_limits_still_comes_through(
        kafka_bootstrap: str, topics: dict, model_dir: Path, tmp_path: Path) -> None:
    """Fetches are capped at 8 MiB (1 MiB per partition); a 12 MiB message is still
    fetched whole and goes, byte for byte, to the dead-letter topic."""
    big = np.random.default_rng(1).bytes(12 << 20)
    payloads = ([synthetic_alert(seed) for seed in range(4)] + [big]
                + [synthetic_alert(seed) for seed in range(4, 8)])
    group = f"large-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topics["input"], payloads)
    worker = make_worker(write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group,
                                      model_dir))
    run_until_committed(worker, kafka_bootstrap, group, topics["input"], 3, len(payloads))
    dead = consume_all(kafka_bootstrap, topics["dlq"], 1)
    assert [m.value() == big for m in dead] == [True]
    labels = consume_all(kafka_bootstrap, topics["output"], 8)
    assert len({r["candid"] for m in labels for r in decode_labels(m.value())}) == 8


def test_a_failed_delivery_commits_nothing_from_its_batch_on(
        kafka_bootstrap: str, topic_factory, model_dir: Path, tmp_path: Path) -> None:
    """At-least-once: the dead letter of a 2 MB message exceeds the dead-letter topic's
    1 MB limit, the broker refuses it, and no offset at or after it is committed."""
    topics = {"input": topic_factory("alerts"), "output": topic_factory("labels"),
              "dlq": topic_factory("dead", config={"max.message.bytes": str(1 << 20)})}
    # Random bytes: compression (lz4) cannot bring the dead letter under the limit.
    payloads = ([synthetic_alert(seed) for seed in range(16)]
                + [np.random.default_rng(0).bytes(2 << 20)]
                + [synthetic_alert(seed) for seed in range(16, 40)])
    group = f"worker-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topics["input"], payloads)
    worker = make_worker(write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group,
                                      model_dir, max_messages=8, shutdown_timeout_s=10))
    with pytest.raises(DeliveryError, match="failed delivery.*MSG_SIZE_TOO_LARGE"):
        worker.run()
    assert worker.metrics.delivery_failures._value.get() == 1
    done = committed(kafka_bootstrap, group, topics["input"], 1)[0]
    assert 0 < done <= 16, done  # earlier batches committed, never the refused one
    labels = consume_all(kafka_bootstrap, topics["output"], done)
    assert {r["candid"] for m in labels for r in decode_labels(m.value())} >= {
        AlertDecoder().decode(p)[0].candid for p in payloads[:done]}


def test_on_revoke_publishes_and_commits_the_batch_in_flight(
        kafka_bootstrap: str, topic_factory, model_dir: Path, tmp_path: Path) -> None:
    topics = {"input": topic_factory("alerts", partitions=1), "output": topic_factory("labels"),
              "dlq": topic_factory("dead")}
    produce(kafka_bootstrap, topics["input"], [synthetic_alert(seed) for seed in range(10)])
    group = f"worker-{uuid.uuid4().hex[:8]}"
    worker = make_worker(write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group,
                                      model_dir, decode_processes=1))
    worker.consumer.subscribe([topics["input"]])
    messages: list = []
    deadline = time.monotonic() + 30
    while len(messages) < 10 and time.monotonic() < deadline:
        messages += worker.consumer.consume(10, 0.5)
    worker._in_flight = worker.start_batch(messages)  # noqa: SLF001 - as run() leaves it
    worker._on_revoke(worker.consumer, worker.consumer.assignment())  # noqa: SLF001
    assert worker._in_flight is None  # noqa: SLF001
    assert committed(kafka_bootstrap, group, topics["input"], 1) == [10]
    assert len(consume_all(kafka_bootstrap, topics["output"], 10)) == 10
    worker._close()  # noqa: SLF001


def test_a_second_worker_joining_mid_run_loses_nothing(kafka_bootstrap: str, topics: dict,
                                                       model_dir: Path, tmp_path: Path) -> None:
    """A rebalance with batches in flight: between the two workers every alert is
    labelled and every offset committed."""
    payloads = [synthetic_alert(seed) for seed in range(600)]
    group = f"worker-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topics["input"], payloads)
    config = write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group, model_dir,
                          decode_processes=1, max_messages=8)
    first, second = make_worker(config), make_worker(config)
    thread = threading.Thread(target=first.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while first.metrics.consumed._value.get() < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.metrics.consumed._value.get() < len(payloads), "no backlog left to share"
    revoked = first.metrics.rebalances.labels(kind="revoke")
    run_until_committed(second, kafka_bootstrap, group, topics["input"], 3, len(payloads))
    first.request_stop()
    thread.join(30)
    assert not thread.is_alive()
    assert revoked._value.get() >= 1
    labels = consume_all(kafka_bootstrap, topics["output"], len(payloads))
    candids = {r["candid"] for m in labels for r in decode_labels(m.value())}
    assert len(candids) == len(payloads)  # at-least-once: duplicates allowed, no loss
    assert sum(max(o, 0) for o in committed(kafka_bootstrap, group, topics["input"], 3)) \
        == len(payloads)


def test_exactly_once_aborts_a_failed_batch_and_publishes_each_label_once(
        kafka_bootstrap: str, topics: dict, model_dir: Path, tmp_path: Path) -> None:
    payloads = [synthetic_alert(seed) for seed in range(60)] + [b"not an alert"]
    group = f"worker-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topics["input"], payloads)
    config = write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group, model_dir,
                          exactly_once="true")
    worker = make_worker(config)
    real_record = worker.labeller.record
    calls = Counter()

    def fail_on_the_tenth(*args, **kwargs):
        calls["record"] += 1
        if calls["record"] == 10:  # nine labels are already in the open transaction
            raise RuntimeError("publishing failed (test)")
        return real_record(*args, **kwargs)

    worker.labeller.record = fail_on_the_tenth
    with pytest.raises(RuntimeError, match="publishing failed"):
        worker.run()
    assert all(o < 0 for o in committed(kafka_bootstrap, group, topics["input"], 3))
    assert consume_all(kafka_bootstrap, topics["output"], 0, timeout=3,
                       isolation="read_committed") == []
    # A restarted worker: every alert once for read_committed consumers, offsets committed
    # in the same transactions.
    worker = make_worker(config)
    run_until_committed(worker, kafka_bootstrap, group, topics["input"], 3, len(payloads))
    labels = consume_all(kafka_bootstrap, topics["output"], 60, isolation="read_committed")
    candids = Counter(r["candid"] for m in labels for r in decode_labels(m.value()))
    assert len(candids) == 60 and set(candids.values()) == {1}
    dead = consume_all(kafka_bootstrap, topics["dlq"], 1, isolation="read_committed")
    assert [dict(m.headers())["stamp.reason"] for m in dead] == [b"unknown_format"]
    assert sum(max(o, 0) for o in committed(kafka_bootstrap, group, topics["input"], 3)) \
        == len(payloads)


def _start_cli(config: Path, new_session: bool = False) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-m", "worker.cli", "run", "--config", str(config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=new_session)


def test_sigint_to_the_process_group_drains_with_decode_helpers(
        kafka_bootstrap: str, topics: dict, model_dir: Path, tmp_path: Path) -> None:
    """Ctrl-C reaches the worker and its helpers alike: the helpers must not die under
    the batch in hand; the worker drains, commits and exits 0."""
    payloads = [synthetic_alert(seed) for seed in range(600)]
    group = f"worker-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topics["input"], payloads)
    config = write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group, model_dir,
                          decode_processes=2)
    proc = _start_cli(config, new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if sum(max(o, 0) for o in committed(kafka_bootstrap, group, topics["input"], 3)) > 0:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "stopped cleanly" in output
    done = sum(max(o, 0) for o in committed(kafka_bootstrap, group, topics["input"], 3))
    labelled = consume_all(kafka_bootstrap, topics["output"], done, timeout=20)
    assert len({r["candid"] for m in labelled for r in decode_labels(m.value())}) >= done > 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stopped_worker_loses_nothing(kafka_bootstrap: str, topics: dict, model_dir: Path,
                                      tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM drains and commits (exit 0); SIGKILL commits nothing in flight; either way
    a restarted worker labels every alert (at-least-once: duplicates allowed)."""
    payloads = [synthetic_alert(seed) for seed in range(400)]
    group = f"worker-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topics["input"], payloads)
    # The restarted worker gets the killed one's partitions once its session expires:
    # the shortest session the broker allows, not the default 45 s.
    config = write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group, model_dir,
                          consumer=SHORT_SESSION if sig == signal.SIGKILL else None)
    proc = _start_cli(config)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # stop it mid-run, once some batches are committed
        if sum(max(o, 0) for o in committed(kafka_bootstrap, group, topics["input"], 3)) > 0:
            break
        time.sleep(0.2)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 0, output
        done = sum(max(o, 0) for o in committed(kafka_bootstrap, group, topics["input"], 3))
        labelled = consume_all(kafka_bootstrap, topics["output"], done, timeout=20)
        # Everything committed was delivered before the commit.
        assert len({r["candid"] for m in labelled for r in decode_labels(m.value())}) >= done
    worker = make_worker(config)
    run_until_committed(worker, kafka_bootstrap, group, topics["input"], 3, len(payloads))
    labels = consume_all(kafka_bootstrap, topics["output"], len(payloads))
    assert len({r["candid"] for m in labels for r in decode_labels(m.value())}) == 400


def test_metrics_move_during_a_run(kafka_bootstrap: str, topics: dict, model_dir: Path,
                                   tmp_path: Path) -> None:
    port = _free_ports(1)
    payloads = [synthetic_alert(seed) for seed in range(300)] + [b"junk"]
    group = f"worker-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topics["input"], payloads)
    config = write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group, model_dir,
                          metrics_port=port)
    proc = _start_cli(config)
    samples = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                              timeout=2).read().decode()
            except OSError:
                time.sleep(0.3)
                continue
            samples.append(text)
            # Consumed is counted when a batch is taken in, dead letters and
            # predictions when it is finished (batches overlap by one): wait for all.
            if ("stamp_worker_alerts_consumed_total 301.0" in text
                    and 'dead_lettered_total{reason="unknown_format"} 1.0' in text
                    and sum(_predicted(text)) == 300):
                break
            time.sleep(0.3)
        ready = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert ready == 200
    final = samples[-1]
    assert "stamp_worker_alerts_consumed_total 301.0" in final
    assert 'stamp_worker_alerts_dead_lettered_total{reason="unknown_format"} 1.0' in final
    for stage in ("decode", "infer", "produce", "commit"):
        assert f'stamp_worker_stage_seconds_count{{stage="{stage}"}}' in final
    assert "stamp_worker_end_to_end_seconds_count" in final
    assert "stamp_worker_alert_age_seconds_count" in final
    # Drift: each model prediction counted once by its top class, as the labels are;
    # the configured (here the default) baseline exported.
    predicted = _predicted(final)
    labelled = [_value(final, f'stamp_worker_alerts_classified_total{{label="{c}"}}')
                for c in CLASS_NAMES]
    assert sum(predicted) == 300 and predicted == labelled
    assert _value(final, 'stamp_worker_model_top_probability_count{class="SN"}') == predicted[1]
    assert _value(final, 'stamp_worker_drift_baseline_share{class="VS"}') == 0.551
    assert _value(final, "stamp_worker_drift_max_distance") == 0.2
    counts = [_value(s, "stamp_worker_alerts_consumed_total") for s in samples]
    assert len(set(counts)) > 1, "the counter should be seen moving during the run"


def _predicted(text: str) -> list[float]:
    """``stamp_worker_model_predictions_total`` of each class, in CLASS_NAMES order."""
    return [_value(text, f'stamp_worker_model_predictions_total{{class="{c}"}}')
            for c in CLASS_NAMES]


def _value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _free_ports(n: int) -> int:
    """A port p with p … p + n − 1 free now (for ``processes: n`` metrics servers)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + n - 1 > 65535:
            continue
        try:
            for offset in range(1, n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    raise RuntimeError("no run of free ports")


def _ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
    except OSError:
        return False


@pytest.mark.parametrize("stop", ["sigterm", "one_killed"])
def test_two_processes_share_the_partitions_and_stop_together(
        kafka_bootstrap: str, topic_factory, model_dir: Path, tmp_path: Path,
        stop: str) -> None:
    """``processes: 2``: both workers get partitions and serve metrics on ports p and
    p + 1; SIGTERM drains both (exit 0); a worker killed with SIGKILL stops the other
    (exit 137) and a restart labels what was left."""
    topics = {"input": topic_factory("alerts", partitions=4), "output": topic_factory("labels"),
              "dlq": topic_factory("dead")}
    payloads = [synthetic_alert(seed) for seed in range(400)]
    group = f"worker-{uuid.uuid4().hex[:8]}"
    port = _free_ports(2)
    config = write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group, model_dir,
                          consumer=SHORT_SESSION if stop == "one_killed" else None,
                          metrics_port=port, processes="2")
    proc = _start_cli(config)
    try:
        deadline = time.monotonic() + 180
        while not (_ready(port) and _ready(port + 1)) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert _ready(port) and _ready(port + 1), "each process is assigned partitions"
        produce(kafka_bootstrap, topics["input"], payloads)
        if stop == "sigterm":
            while (sum(max(o, 0) for o in committed(kafka_bootstrap, group, topics["input"], 4))
                   < len(payloads) and time.monotonic() < deadline):
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
        else:
            while (sum(max(o, 0) for o in committed(kafka_bootstrap, group, topics["input"], 4))
                   == 0 and time.monotonic() < deadline):
                time.sleep(0.1)
            children = [int(line.rsplit("pid ", 1)[1].split(",")[0])
                        for line in _lines_so_far(proc) if ": pid " in line]
            os.kill(children[0], signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if stop == "sigterm":
        assert proc.returncode == 0, output
        assert output.count("stopped cleanly") == 2, output
    else:
        assert proc.returncode == 128 + signal.SIGKILL, output
        assert "failed with status 137: stopping the others" in output
        assert output.count("stopped cleanly") == 1, output  # the other drained
        worker = make_worker(config)
        run_until_committed(worker, kafka_bootstrap, group, topics["input"], 4, len(payloads))
    assert sum(committed(kafka_bootstrap, group, topics["input"], 4)) == len(payloads)
    labels = consume_all(kafka_bootstrap, topics["output"], len(payloads))
    assert len({r["candid"] for m in labels for r in decode_labels(m.value())}) == 400


def _lines_so_far(proc: subprocess.Popen) -> list[str]:
    """The supervisor's log lines up to the two "worker process N: pid P" lines."""
    lines: list[str] = []
    while sum(": pid " in line for line in lines) < 2:
        lines.append(proc.stdout.readline())
    return lines


def test_an_input_topic_created_after_the_worker_starts_is_consumed(
        kafka_bootstrap: str, kafka_admin, topic_factory, model_dir: Path,
        tmp_path: Path) -> None:
    """librdkafka reports a subscribed topic that does not exist as an error it retries:
    the worker counts it, says so in /readyz, and labels the alerts once the topic is
    there (it used to stop with a traceback)."""
    from confluent_kafka.admin import NewTopic

    topics = {"input": f"alerts-later-{uuid.uuid4().hex[:12]}",
              "output": topic_factory("labels"), "dlq": topic_factory("dead")}
    group = f"worker-{uuid.uuid4().hex[:8]}"
    config = load_config(write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group,
                                      model_dir), env={})
    registry = CollectorRegistry()
    health = HealthState()
    worker = Worker(config, StampModel.load(config.model_path), WorkerMetrics(registry), health)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()

    def errors() -> float:
        return registry.get_sample_value("stamp_worker_consumer_errors_total",
                                         {"error": "UNKNOWN_TOPIC_OR_PART"}) or 0.0

    try:
        deadline = time.monotonic() + 30
        while errors() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert errors() > 0 and thread.is_alive()
        ready, reason = health.ready()
        assert not ready and "Unknown topic or partition" in reason, reason
        kafka_admin.create_topics([NewTopic(topics["input"], 2, 1)])[topics["input"]].result(20)
        payloads = [synthetic_alert(seed) for seed in range(50)]
        produce(kafka_bootstrap, topics["input"], payloads)
        deadline = time.monotonic() + 60
        while (sum(max(o, 0) for o in committed(kafka_bootstrap, group, topics["input"], 2))
               < len(payloads) and time.monotonic() < deadline):
            time.sleep(0.2)
        assert health.ready()[0]
    finally:
        worker.request_stop()
        thread.join(30)
        kafka_admin.delete_topics([topics["input"]])
    assert not thread.is_alive()
    labels = consume_all(kafka_bootstrap, topics["output"], len(payloads))
    assert len({r["candid"] for m in labels for r in decode_labels(m.value())}) == 50
