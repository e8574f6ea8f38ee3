"""A running worker whose only broker goes away and comes back: named in /readyz, a few
log lines rather than hundreds, and ready again once the broker is back.

The test starts a broker of its own (the session's must stay up for the other tests).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.test_pipeline import make_worker, write_config
from worker.tools import devbroker
from worker.tools.topics import TopicSpec, admin_client, ensure_topics


def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"not within {timeout:g} s: {what}")


def test_all_brokers_down_is_shown_in_readyz_and_logged_briefly(
        tmp_path: Path, model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    broker = devbroker.start(tmp_path / "kafka")
    port = broker.port
    address = broker.bootstrap_servers
    suffix = uuid.uuid4().hex[:8]
    topics = {"input": f"o-alerts-{suffix}", "output": f"o-labels-{suffix}",
              "dlq": f"o-dead-{suffix}"}
    ensure_topics(admin_client(address), [TopicSpec(name, "test", 1, 1)
                                          for name in topics.values()])
    worker = make_worker(write_config(tmp_path / "w.yaml", address, topics,
                                      f"outage-{suffix}", model_dir))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: worker.health.ready()[0], 60, "ready (partitions assigned)")
        caplog.set_level(logging.INFO)
        caplog.clear()
        broker.stop()
        wait_for(lambda: "cannot reach Kafka" in worker.health.ready()[1], 60,
                 "/readyz naming the unreachable cluster")
        ready, reason = worker.health.ready()
        assert not ready and address in reason
        time.sleep(10)  # librdkafka reconnects several times a second meanwhile
        from_librdkafka = [r for r in caplog.records if r.name == "librdkafka"]
        worker_lines = [r for r in caplog.records if r.name == "stamp_worker"]
        assert len(from_librdkafka) <= 10, [r.getMessage() for r in from_librdkafka]
        assert len(worker_lines) <= 6, [r.getMessage() for r in worker_lines]
        broker = devbroker.start(tmp_path / "kafka", port)
        wait_for(lambda: worker.health.ready()[0], 60, "ready again after the restart")
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        worker.request_stop()
        thread.join(60)
        broker.stop()
    assert not thread.is_alive()
    assert port == broker.port
