"""Several worker processes from one command: environment and supervision.

The supervised commands here are small Python programs standing in for workers (real
processes and signals); tests/integration/test_pipeline.py runs real workers this way.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from worker.stream import processes
from worker.stream.config import KafkaConfig, MetricsConfig, TopicsConfig, WorkerConfig, load_config
from worker.stream.processes import child_environment, supervise


def config(n: int, port: int = 9108, shutdown_timeout_s: float = 30.0) -> WorkerConfig:
    return WorkerConfig(kafka=KafkaConfig("k:9092"), topics=TopicsConfig(("a",), "l", "d"),
                        metrics=MetricsConfig(port=port), processes=n,
                        shutdown_timeout_s=shutdown_timeout_s)


def test_each_process_gets_one_process_and_its_own_metrics_port(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("kafka: {bootstrap_servers: 'k:9092'}\n"
                    "topics: {input: a, output: l, dead_letter: d}\n"
                    "processes: 3\nmetrics: {port: 9200}\n")
    parent = load_config(path, env={})
    assert parent.processes == 3
    seen = []
    for index in range(3):
        env = child_environment(parent, index, base={"UNRELATED": "kept"})
        assert env["UNRELATED"] == "kept"
        child = load_config(path, env=env)  # the variables win over the file
        seen.append((child.processes, child.metrics.port))
    assert seen == [(1, 9200), (1, 9201), (1, 9202)]
    off = child_environment(config(2, port=0), 1, base={})
    assert off["STAMP_WORKER__METRICS__PORT"] == "0"  # the server stays off
    assert not any("INSTANCE_ID" in name for name in off)  # dynamic membership stays so


def test_each_process_gets_its_own_instance_id(tmp_path: Path) -> None:
    """Static members of one group need distinct ids: ``<instance_id>-<index>``."""
    path = tmp_path / "w.yaml"
    path.write_text("kafka: {bootstrap_servers: 'k:9092'}\n"
                    "topics: {input: a, output: l, dead_letter: d}\nprocesses: 2\n")
    # As Kubernetes sets it, in the parent's own spelling (names are case-insensitive).
    parent_env = {"stamp_worker__instance_id": "stamp-worker-3"}
    parent = load_config(path, env=parent_env)
    ids = [load_config(path, env=child_environment(parent, index, base=parent_env)).instance_id
           for index in range(2)]
    assert ids == ["stamp-worker-3-0", "stamp-worker-3-1"]


# A stand-in worker: its index is its metrics port − 9100; it records the signals it gets
# in a file, then behaves as the test's BEHAVIOUR variable says for its index.
CHILD = r"""
import os, signal, sys, time
from pathlib import Path
index = int(os.environ["STAMP_WORKER__METRICS__PORT"]) - 9100
log = Path(os.environ["LOG_DIR"]) / f"{index}.log"
behaviour = os.environ["BEHAVIOUR"].split(",")[index]
def on_term(signum, frame):
    with log.open("a") as f:
        f.write("TERM\n")
    if behaviour != "ignore":
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
log.write_text("started\n")
if behaviour.startswith("exit"):
    time.sleep(0.5)
    sys.exit(int(behaviour[4:]))
if behaviour == "kill":
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)
while True:
    time.sleep(0.05)
"""


def run_supervised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, behaviour: str,
                   signal_after: float | None = None, **options: float) -> tuple[int, list[str]]:
    """Supervise one stand-in per comma-separated ``behaviour``; return the status and
    what each stand-in logged."""
    n = len(behaviour.split(","))
    monkeypatch.setenv("LOG_DIR", str(tmp_path))
    monkeypatch.setenv("BEHAVIOUR", behaviour)
    if signal_after is not None:
        def send() -> None:
            deadline = time.monotonic() + 30
            while (len(list(tmp_path.glob("*.log"))) < n  # every stand-in is up
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            time.sleep(signal_after)
            os.kill(os.getpid(), signal.SIGTERM)  # to this (the supervising) process

        threading.Thread(target=send, daemon=True).start()
    status = supervise(config(n, port=9100, **options), [sys.executable, "-c", CHILD])
    return status, [(tmp_path / f"{i}.log").read_text() for i in range(n)]


def test_sigterm_reaches_every_process_and_the_command_exits_0(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status, logs = run_supervised(tmp_path, monkeypatch, "run,run,run", signal_after=0.2)
    assert status == 0
    assert logs == ["started\nTERM\n"] * 3


def test_a_failed_process_stops_the_others_and_gives_its_status(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status, logs = run_supervised(tmp_path, monkeypatch, "run,exit3,run")
    assert status == 3
    assert logs == ["started\nTERM\n", "started\n", "started\nTERM\n"]


def test_a_process_killed_by_a_signal_is_status_128_plus_the_signal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status, logs = run_supervised(tmp_path, monkeypatch, "kill,run")
    assert status == 128 + signal.SIGKILL
    assert logs == ["started\n", "started\nTERM\n"]


def test_a_process_that_does_not_stop_is_killed_after_the_grace_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "STOP_GRACE_S", 0.5)
    start = time.monotonic()
    status, logs = run_supervised(tmp_path, monkeypatch, "run,ignore", signal_after=0.2,
                                  shutdown_timeout_s=0.5)
    assert status == 128 + signal.SIGKILL
    assert logs == ["started\nTERM\n", "started\nTERM\n"]
    assert time.monotonic() - start < 20


def test_the_signal_handlers_are_given_back(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    run_supervised(tmp_path, monkeypatch, "exit0")
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before

