"""worker.stream.cluster: librdkafka settings judged early, one bounded wait, a quiet log."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import pytest

from worker.stream.cluster import (
    ClusterError,
    _RateLimit,
    _reason,
    check_reachable,
    librdkafka_logger,
    property_problems,
    same_kind,
)


def closed_port() -> int:
    """A local port where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_each_unknown_or_malformed_property_is_reported() -> None:
    problems = dict(property_problems("consumer", {
        "sesion.timeout.ms": 45000, "session.timeout.ms": "soon",
        "auto.offset.reset": "earliest"}))
    assert set(problems) == {"sesion.timeout.ms", "session.timeout.ms"}
    assert "no such property" in problems["sesion.timeout.ms"]
    assert "Invalid value" in problems["session.timeout.ms"]


def test_a_property_of_the_other_client_is_reported_unless_shared() -> None:
    # linger.ms is an alias: librdkafka names it queue.buffering.max.ms in its warning.
    assert property_problems("consumer", {"linger.ms": 5}) == [
        ("linger.ms", "a producer property, which the consumer ignores: move it to "
                      "kafka.producer")]
    assert property_problems("producer", {"session.timeout.ms": 6000})[0][0] == \
        "session.timeout.ms"
    assert property_problems("producer", {"session.timeout.ms": 6000}, other_role=True) == []


def test_refused_combinations_are_reported_without_a_key() -> None:
    assert property_problems("producer", {"enable.idempotence": True, "acks": "all"}) == []
    problems = property_problems("producer", {"enable.idempotence": True, "acks": 1})
    assert problems == [("", "`acks` must be set to `all` when `enable.idempotence` is true")]


def test_no_problem_for_valid_settings() -> None:
    assert property_problems("consumer", {}) == []
    assert property_problems("consumer", {"session.timeout.ms": 45000,
                                          "statistics.interval.ms": 5000}) == []


def test_unreachable_address_is_named_with_librdkafkas_reason_within_the_wait() -> None:
    port = closed_port()
    start = time.monotonic()
    with pytest.raises(ClusterError) as caught:
        check_reachable("producer", {"bootstrap.servers": f"127.0.0.1:{port}"}, 1.5,
                        what="--bootstrap-servers")
    elapsed = time.monotonic() - start
    message = str(caught.value)
    assert f"127.0.0.1:{port} within 1.5 s" in message
    assert "Connection refused" in message and "--bootstrap-servers" in message
    assert "\n" not in message
    assert elapsed < 10  # bounded by the wait, with room for a slow machine


def test_unresolvable_name_is_named() -> None:
    with pytest.raises(ClusterError, match="resolve"):
        check_reachable("consumer", {"bootstrap.servers": "no-such-host.invalid:9092"}, 1.0)


def test_reason_is_the_end_of_librdkafkas_line() -> None:
    line = ("FAIL [rdkafka#consumer-2] [thrd:h:9092/bootstrap]: h:9092/bootstrap: Failed to "
            "resolve 'h:9092': Name or service not known (after 2ms in state CONNECT)")
    assert _reason(line) == "Failed to resolve 'h:9092': Name or service not known"


def test_same_kind_masks_what_changes_between_repeats() -> None:
    a = "127.0.0.1:1/bootstrap: Connect failed: Connection refused (after 0ms in state CONNECT)"
    b = "127.0.0.1:1/bootstrap: Connect failed: Connection refused (after 12ms in state CONNECT)"
    assert same_kind(a) == same_kind(b)
    assert same_kind(a) != same_kind("Failed to resolve 'kafka-1:9092'")


def test_rate_limit_lets_one_line_of_a_kind_through_and_counts_the_rest() -> None:
    limit = _RateLimit(interval_s=0.2)

    def record(text: str) -> logging.LogRecord:
        return logging.LogRecord("librdkafka", logging.ERROR, __file__, 1, text, None, None)

    shown = [limit.filter(record(f"Connect failed (after {i}ms in state CONNECT)"))
             for i in range(100)]
    assert shown.count(True) == 1
    assert limit.filter(record("another kind of line"))
    time.sleep(0.25)
    again = record("Connect failed (after 3ms in state CONNECT)")
    assert limit.filter(again)
    assert "99 more like it" in again.getMessage()


def test_librdkafka_logger_is_filtered_once() -> None:
    logger = librdkafka_logger("librdkafka.test")
    assert librdkafka_logger("librdkafka.test") is logger
    assert sum(isinstance(f, _RateLimit) for f in logger.filters) == 1


@pytest.mark.parametrize("command", ["run", "topics", "replay", "labels"])
def test_commands_stop_with_one_line_naming_an_unreachable_cluster(
        command: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    address = f"127.0.0.1:{closed_port()}"
    config = tmp_path / "w.yaml"
    config.write_text(f"kafka: {{bootstrap_servers: '{address}', connect_timeout_s: 2}}\n"
                      "topics: {input: a, output: b, dead_letter: c}\nmetrics: {port: 0}\n")
    alert = tmp_path / "x.avro"
    alert.write_bytes(b"not an alert, sent as it is")
    args = {"run": ["run", "--config", str(config)],
            "topics": ["topics", "--config", str(config)],
            "replay": ["replay", str(alert), "--topic", "a", "-b", address,
                       "--connect-timeout", "2"],
            "labels": ["labels", "--topic", "b", "-b", address, "--connect-timeout", "2"]}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "STAMP_WORKER"))}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "worker.cli", *args[command]], env=env,
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines()
             if "INFO" not in line]  # run logs its configuration first
    assert len(lines) == 1, done.stderr
    assert f"cannot reach Kafka at {address} within 2 s (" in lines[0]
    assert "Connection refused" in lines[0]
    assert elapsed < 20  # the 2 s wait plus start-up; librdkafka alone retries forever
