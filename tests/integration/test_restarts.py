"""A worker killed with SIGKILL and started again at once: what the crash leaves behind.

Real ``stamp-worker run`` processes on a real broker.  With a stable identity the
restarted worker takes its predecessor's place at once: its consumer its partitions
(static membership, ``instance_id``), its producer its ``transactional.id`` (fencing the
dead one and aborting the transaction it left open).  Without one the group waits out
the dead member's ``session.timeout.ms`` and read_committed readers of the labels wait
for the broker's ``transaction.timeout.ms``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.integration.test_pipeline import _start_cli, committed, produce, write_config
from worker.decode.packets import synthetic_alert
from worker.stream.output import decode_labels

# Generous bounds for what a restart should take once the new process is up, far below
# the timeouts that a crash without a stable identity waits out (set in each test).
REJOIN_BOUND_S = 15.0
VISIBLE_BOUND_S = 20.0


class Running:
    """A ``stamp-worker run`` process whose output lines are kept with their arrival time."""

    def __init__(self, config: Path) -> None:
        self.proc = _start_cli(config)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line))

    def wait_for(self, text: str, timeout: float = 120.0) -> float:
        """When a line holding ``text`` came; fails if the process ends or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for when, line in list(self.lines):
                if text in line:
                    return when
            if self.proc.poll() is not None:
                self._reader.join(5)
                break
            time.sleep(0.05)
        pytest.fail(f"no line with {text!r}; output:\n{self.output()}")

    def value_after(self, text: str) -> str:
        """What follows ``text`` on the first line holding it."""
        self.wait_for(text)
        return next(line for _, line in self.lines if text in line).split(text, 1)[1].strip()

    def output(self) -> str:
        return "".join(line for _, line in self.lines)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        self._reader.join(5)

    def stop(self) -> int:
        """SIGTERM, and the exit status once it has drained."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(5)
        return code


def _done(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    return sum(max(o, 0) for o in committed(bootstrap, group, topic, partitions))


class LabelWatch:
    """The labels partition seen as a reader with ``isolation.level`` sees it."""

    def __init__(self, bootstrap: str, topic: str, isolation: str) -> None:
        self.partition = TopicPartition(topic, 0, 0)
        self.consumer = Consumer({"bootstrap.servers": bootstrap,
                                  "group.id": f"check-{uuid.uuid4()}",
                                  "enable.auto.commit": False, "isolation.level": isolation})
        self.consumer.assign([self.partition])
        self.records: list[tuple[int, dict]] = []  # (offset, label record)

    def end(self) -> int:
        """The high watermark, or for read_committed the last stable offset."""
        return self.consumer.get_watermark_offsets(self.partition, timeout=10,
                                                   cached=False)[1]

    def poll(self, wait: float = 0.2) -> None:
        for message in self.consumer.consume(500, wait):
            if message.error() is None:
                self.records += [(message.offset(), r) for r in decode_labels(message.value())]

    def close(self) -> None:
        self.consumer.close()


def test_a_restarted_static_member_takes_its_partitions_back_at_once(
        kafka_bootstrap: str, topic_factory, model_dir: Path, tmp_path: Path) -> None:
    """kill -9, restart at once with the same instance_id: labels flow again within
    seconds, not after the dead member's 45 s session has timed out."""
    topics = {"input": topic_factory("alerts", partitions=3),
              "output": topic_factory("labels"), "dlq": topic_factory("dead")}
    group = f"worker-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group, model_dir,
                          consumer={"session.timeout.ms": 45000},
                          instance_id="stamp-worker-0")
    first_set = [synthetic_alert(seed) for seed in range(600)]
    second_set = [synthetic_alert(seed) for seed in range(600, 700)]
    produce(kafka_bootstrap, topics["input"], first_set)
    labels = LabelWatch(kafka_bootstrap, topics["output"], "read_uncommitted")
    worker = Running(config)
    try:
        worker.wait_for("static group membership: group.instance.id stamp-worker-0")
        deadline = time.monotonic() + 120
        while (_done(kafka_bootstrap, group, topics["input"], 3) == 0
               and time.monotonic() < deadline):
            time.sleep(0.1)
        worker.kill()
        time.sleep(0.5)  # for a produce request the dead worker had sent
        before = labels.end()  # only the restarted worker writes after this
        produce(kafka_bootstrap, topics["input"], second_set)
        worker = Running(config)
        ready = worker.wait_for("consuming")
        while labels.end() == before and time.monotonic() < ready + 60:
            time.sleep(0.05)
        flowing = time.monotonic()
        assert labels.end() > before, worker.output()
        assert flowing - ready < REJOIN_BOUND_S, (
            f"labels came {flowing - ready:.1f} s after the restarted worker was up")
        # At-least-once across the kill: every alert labelled.
        total = len(first_set) + len(second_set)
        deadline = time.monotonic() + 120
        while (_done(kafka_bootstrap, group, topics["input"], 3) < total
               and time.monotonic() < deadline):
            time.sleep(0.2)
        assert worker.stop() == 0, worker.output()
    finally:
        if worker.proc.poll() is None:
            worker.kill()
    deadline = time.monotonic() + 60
    while len({r["candid"] for _, r in labels.records}) < total and time.monotonic() < deadline:
        labels.poll()
    labels.close()
    assert len({r["candid"] for _, r in labels.records}) == total


def _kill_inside_a_transaction(worker: Running, committed_view: LabelWatch,
                               everything: LabelWatch, timeout: float = 120.0) -> None:
    """SIGKILL the worker while a transaction of labels is open on the labels partition.

    An open transaction shows as a last stable offset below the high watermark.  Seen
    from here it may commit a moment later, so the worker is frozen (SIGSTOP), given time
    for requests already sent, checked again, and only then killed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.proc.poll() is None:
        if committed_view.end() >= everything.end():
            continue
        os.kill(worker.proc.pid, signal.SIGSTOP)
        time.sleep(0.5)
        if committed_view.end() < everything.end():
            worker.kill()
            return
        os.kill(worker.proc.pid, signal.SIGCONT)
    pytest.fail(f"never killed inside a transaction; output:\n{worker.output()}")


@pytest.mark.parametrize("instance_id", [None, "stamp-worker-0"])
def test_exactly_once_restart_releases_the_killed_workers_transaction_at_once(
        kafka_bootstrap: str, topic_factory, model_dir: Path, tmp_path: Path,
        instance_id: str | None) -> None:
    """kill -9 inside an open transaction, restart at once: read_committed readers see the
    restarted worker's labels within seconds, not after the 120 s transaction timeout;
    each alert labelled once.  Without an instance_id the transactional.id comes from the
    host name (the same after a restart here); the dead member's session is short then,
    for the restarted dynamic member to get the partitions."""
    topics = {"input": topic_factory("alerts", partitions=3),
              "output": topic_factory("labels"), "dlq": topic_factory("dead")}
    group = f"worker-{uuid.uuid4().hex[:8]}"
    extra = {"exactly_once": "true"}
    if instance_id is not None:
        extra["instance_id"] = instance_id
    config = write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group, model_dir,
                          max_messages=500,
                          consumer={"session.timeout.ms": 45000 if instance_id else 6000},
                          producer={"transaction.timeout.ms": 120000}, **extra)
    payloads = [synthetic_alert(seed) for seed in range(1500)]
    produce(kafka_bootstrap, topics["input"], payloads)
    visible = LabelWatch(kafka_bootstrap, topics["output"], "read_committed")
    everything = LabelWatch(kafka_bootstrap, topics["output"], "read_uncommitted")
    worker = Running(config)
    try:
        dead_id = worker.value_after("exactly-once: transactional.id")
        _kill_inside_a_transaction(worker, visible, everything)
        written = everything.end()
        stuck = visible.end()
        assert stuck < written, "the killed worker left no open transaction"
        worker = Running(config)
        ready = worker.wait_for("consuming")
        # The same id, so init_transactions() fenced the dead worker.
        assert worker.value_after("exactly-once: transactional.id") == dead_id
        # The restarted worker's first committed labels, seen by a read_committed reader.
        while (not any(offset >= written for offset, _ in visible.records)
               and time.monotonic() < ready + 60):
            visible.poll()
        seen = time.monotonic()
        assert any(offset >= written for offset, _ in visible.records), worker.output()
        assert seen - ready < VISIBLE_BOUND_S, (
            f"read_committed saw the restarted worker's labels {seen - ready:.1f} s after "
            f"it was up")
        deadline = time.monotonic() + 120
        while len(visible.records) < len(payloads) and time.monotonic() < deadline:
            visible.poll()
        visible.poll(1.0)  # more than expected would be duplicates
        assert worker.stop() == 0, worker.output()
    finally:
        if worker.proc.poll() is None:
            worker.kill()
        visible.close()
        everything.close()
    candids = Counter(r["candid"] for _, r in visible.records)
    assert len(candids) == len(payloads) and set(candids.values()) == {1}
    assert _done(kafka_bootstrap, group, topics["input"], 3) == len(payloads)


@pytest.mark.parametrize("exactly_once", ["false", "true"])
def test_a_second_live_worker_with_the_same_instance_id_stops_the_first_with_one_line(
        kafka_bootstrap: str, topic_factory, model_dir: Path, tmp_path: Path,
        exactly_once: str) -> None:
    """Two live members with one id fence each other (in the group; with exactly_once in
    the transactions too): the older one stops (status 1) with a line naming the cause,
    no traceback; the newer one carries on."""
    topics = {"input": topic_factory("alerts", partitions=2),
              "output": topic_factory("labels"), "dlq": topic_factory("dead")}
    group = f"worker-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path / "w.yaml", kafka_bootstrap, topics, group, model_dir,
                          instance_id="stamp-worker-0", exactly_once=exactly_once)
    produce(kafka_bootstrap, topics["input"], [synthetic_alert(seed) for seed in range(50)])
    first = Running(config)
    second = None
    try:
        deadline = time.monotonic() + 120
        while (_done(kafka_bootstrap, group, topics["input"], 2) < 50
               and time.monotonic() < deadline and first.proc.poll() is None):
            time.sleep(0.2)
        second = Running(config)
        second.wait_for("consuming")
        produce(kafka_bootstrap, topics["input"],
                [synthetic_alert(seed) for seed in range(50, 100)])
        assert first.proc.wait(60) == 1, first.output()
        first._reader.join(5)
        # librdkafka's own lines go to stderr from its threads, in any order with the
        # worker's: the worker's last word is its one "stamp-worker run:" line.
        said = [line for line in first.output().splitlines()
                if line.startswith("stamp-worker run: ")]
        assert len(said) == 1 and said[0].startswith("stamp-worker run: another worker "), \
            first.output()
        assert "'stamp-worker-0'" in said[0] and "its own instance_id" in said[0], said[0]
        assert "Traceback" not in first.output()
        deadline = time.monotonic() + 120
        while (_done(kafka_bootstrap, group, topics["input"], 2) < 100
               and time.monotonic() < deadline):
            time.sleep(0.2)
        assert _done(kafka_bootstrap, group, topics["input"], 2) == 100
        assert second.stop() == 0, second.output()
    finally:
        for worker in (first, second):
            if worker is not None and worker.proc.poll() is None:
                worker.kill()
