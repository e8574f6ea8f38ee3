"""worker.stream.identity without a broker: the worker's transactional.id and fencing messages.

The loop itself runs against a real broker in tests/integration/test_pipeline.py and
tests/integration/test_restarts.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from worker.stream.config import KafkaConfig, TopicsConfig, WorkerConfig
from worker.stream.identity import claim_transactional_id, fenced_reason


def config(group: str = "labels", instance_id: str | None = None) -> WorkerConfig:
    return WorkerConfig(kafka=KafkaConfig("k:9092"), topics=TopicsConfig(("a",), "l", "d"),
                        group_id=group, instance_id=instance_id, exactly_once=True)


def test_an_instance_id_makes_the_transactional_id() -> None:
    claimed = claim_transactional_id(config(instance_id="stamp-worker-2"))
    assert claimed.value == "labels-stamp-worker-2" and claimed.lock is None


def test_default_ids_are_stable_and_never_shared_by_live_workers(tmp_path: Path) -> None:
    host = socket.gethostname()
    first = claim_transactional_id(config(), tmp_path)
    second = claim_transactional_id(config(), tmp_path)  # a second live worker, this host
    other_group = claim_transactional_id(config("other"), tmp_path)
    assert (first.value, second.value) == (f"labels-{host}-0", f"labels-{host}-1")
    assert other_group.value == f"other-{host}-0"
    first.release()
    # A restart takes the slot its predecessor left: the same id, which fences it.
    again = claim_transactional_id(config(), tmp_path)
    assert again.value == f"labels-{host}-0"
    for claimed in (second, other_group, again):
        claimed.release()


# Claims an id in another process, prints it, and waits to be killed.
HOLDER = """
import sys, time
from pathlib import Path
from worker.stream.config import KafkaConfig, TopicsConfig, WorkerConfig
from worker.stream.identity import claim_transactional_id
config = WorkerConfig(kafka=KafkaConfig("k:9092"), topics=TopicsConfig(("a",), "l", "d"),
                      group_id="labels", exactly_once=True)
claimed = claim_transactional_id(config, Path(sys.argv[1]))  # held while it lives
print(claimed.value, flush=True)
time.sleep(600)
"""


def test_a_killed_workers_id_goes_to_its_restart(tmp_path: Path) -> None:
    """The lock of a slot dies with its process, SIGKILL included."""
    host = socket.gethostname()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == f"labels-{host}-0"
        alongside = claim_transactional_id(config(), tmp_path)
        assert alongside.value == f"labels-{host}-1"  # not the live holder's
        alongside.release()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
    assert claim_transactional_id(config(), tmp_path).value == f"labels-{host}-0"


def test_without_a_lock_folder_the_first_slot_is_used_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    claimed = claim_transactional_id(config(), tmp_path / "missing")
    assert claimed.value == f"labels-{socket.gethostname()}-0" and claimed.lock is None
    assert "give each its own instance_id" in caplog.text


def _exception(code: int, text: str) -> KafkaException:
    return KafkaException(KafkaError(code, text))


def test_fencing_is_told_apart_from_other_failures() -> None:
    static = _exception(KafkaError._FATAL, "Fatal error: Broker: Static consumer fenced by "
                        "other consumer with same group.instance.id")
    message = fenced_reason(static, config(instance_id="pod-1"), None)
    assert message is not None and "'pod-1'" in message and "its own instance_id" in message
    producer = _exception(KafkaError._FENCED, "transactional producer fenced by newer "
                          "producer instance")
    message = fenced_reason(producer, config(), "labels-host-0")
    assert message is not None and "'labels-host-0'" in message
    assert "hosts with the same name" in message  # no instance id: the host name clashed
    message = fenced_reason(producer, config(instance_id="pod-1"), "labels-pod-1")
    assert message is not None and "each live worker needs its own instance_id" in message
    # Anything else is not fencing.
    assert fenced_reason(producer, config(), None) is None  # no transactions, no fencing
    assert fenced_reason(_exception(KafkaError._TRANSPORT, "down"), config(), "t") is None
    assert fenced_reason(RuntimeError("fenced"), config(), "t") is None
