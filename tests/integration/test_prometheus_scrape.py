"""A real Prometheus scrapes the worker's MetricsServer and answers queries about it.

Needs the ``prometheus`` binary (``$PROMETHEUS_BIN``, else ``prometheus`` on ``PATH``;
Debian/Ubuntu: ``apt-get install prometheus``); skipped with that message otherwise.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import prometheus_tool
from tests.deploy.test_grafana import DASHBOARD, as_grafana_sends, panel_targets
from worker.model.artifact import CLASS_NAMES
from worker.stream.config import BUNDLED_MODEL_BASELINE
from worker.stream.metrics import STAGES, HealthState, MetricsServer, WorkerMetrics

DEADLINE_S = 60.0  # Prometheus start + first scrapes; generous for a loaded CI machine


def _free_port() -> int:
    # Prometheus cannot report a port it picked itself, so pick one here (a tiny race
    # with other processes; a lost race shows up as a bind error in the log below).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Prometheus:
    """One Prometheus process scraping one target, with its data and log in ``tmp_path``."""

    def __init__(self, binary: str, tmp_path: Path) -> None:
        self.binary = binary
        self.tmp_path = tmp_path
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, target_port: int) -> None:
        config_path = self.tmp_path / "prometheus.yml"
        config_path.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: stamp_worker\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [self.binary, f"--config.file={config_path}",
                 f"--storage.tsdb.path={self.tmp_path / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() \
            else ""

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            pytest.fail(f"prometheus exited with status {self.process.returncode}:\n"
                        f"{self.log()}", pytrace=False)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[_Prometheus]:
    """A Prometheus ready to :meth:`_Prometheus.start`; stopped after the test."""
    instance = _Prometheus(prometheus_tool("prometheus"), tmp_path)
    try:
        yield instance
    finally:
        instance.stop()


def _query(prom: _Prometheus, promql: str) -> list[dict[str, Any]]:
    url = f"{prom.base_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def _wait_for_value(prom: _Prometheus, promql: str, expected: float) -> dict[str, Any]:
    """Poll the query API until ``promql`` returns ``expected`` (bounded wait)."""
    deadline = time.monotonic() + DEADLINE_S
    last: object = "no answer yet"
    while time.monotonic() < deadline:
        prom.check_alive()
        try:
            result = _query(prom, promql)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc  # not listening yet
        else:
            last = result
            if result and float(result[0]["value"][1]) == expected:
                return result[0]
        time.sleep(0.25)
    pytest.fail(f"{promql} did not reach {expected} within {DEADLINE_S} s (last: {last})\n"
                f"prometheus log:\n{prom.log()}", pytrace=False)


def test_prometheus_scrapes_the_worker_metrics(prometheus: _Prometheus) -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    metrics.consumed.inc(7)
    with metrics.time_stage("infer"):
        pass
    metrics.set_model("stamp-cnn", "1.2.0", "stamps-v1")
    with MetricsServer(registry, HealthState()) as server:
        prometheus.start(server.port)
        sample = _wait_for_value(prometheus, "stamp_worker_alerts_consumed_total", 7)
        assert sample["metric"]["job"] == "stamp_worker"
        assert sample["metric"]["instance"] == f"127.0.0.1:{server.port}"
        _wait_for_value(prometheus, 'up{job="stamp_worker"}', 1)
        # A later change reaches Prometheus on a following scrape.
        metrics.consumed.inc(3)
        _wait_for_value(prometheus, "stamp_worker_alerts_consumed_total", 10)
        _wait_for_value(prometheus, 'stamp_worker_stage_seconds_count{stage="infer"}', 1)
        info = _wait_for_value(prometheus, "stamp_worker_model_info", 1)
        assert info["metric"]["version"] == "1.2.0"
        assert info["metric"]["preprocessing"] == "stamps-v1"


def _keep_busy(metrics: WorkerMetrics, stop: threading.Event) -> None:
    """Move every metric of the worker a little, five times a second, until ``stop``."""
    rng = np.random.default_rng(0)
    stats = {"type": "consumer", "cgrp": {"assignment_size": 2},
             "topics": {"alerts": {"partitions": {
                 str(i): {"consumer_lag": 40 + i, "consumer_lag_stored": 30 + i}
                 for i in range(2)}}}}
    metrics.set_drift(BUNDLED_MODEL_BASELINE, 0.2)
    metrics.set_model("rotinv", "2", "1")
    while not stop.is_set():
        metrics.consumed.inc(10)
        for label in CLASS_NAMES:
            metrics.classified.labels(label=label).inc(2)
        metrics.dead_lettered.labels(reason="corrupt_gzip").inc()
        metrics.delivery_failures.inc()
        metrics.commits.inc()
        metrics.commit_failures.inc()
        metrics.consumer_errors.labels(error="UNKNOWN_TOPIC_OR_PART").inc()
        metrics.rebalances.labels(kind="assign").inc()
        metrics.observe_batch(10)
        for stage in STAGES:
            with metrics.time_stage(stage):
                pass
        metrics.alert_age_seconds.observe(90.0)
        metrics.end_to_end_seconds.observe(0.2)
        metrics.observe_predictions(rng.dirichlet(np.ones(len(CLASS_NAMES)), size=10))
        metrics.update_from_librdkafka_stats(json.dumps(stats))
        stop.wait(0.2)


def test_every_dashboard_query_returns_series(prometheus: _Prometheus) -> None:
    """Each query of the Grafana dashboard, as Grafana sends it, is accepted by a real
    Prometheus scraping a busy worker and returns series: no panel stays empty, and
    none fails at evaluation (a vector matching that PromQL's parser cannot judge)."""
    queries = {title + ": " + target["refId"]: as_grafana_sends(target["expr"], "5s")
               for title, target in panel_targets(json.loads(DASHBOARD.read_text()))}
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    stop = threading.Event()
    busy = threading.Thread(target=_keep_busy, args=(metrics, stop), daemon=True)
    busy.start()
    pending, errors = dict(queries), {}
    try:
        with MetricsServer(registry, HealthState()) as server:
            prometheus.start(server.port)
            deadline = time.monotonic() + DEADLINE_S
            while pending and time.monotonic() < deadline:
                prometheus.check_alive()
                for name, promql in list(pending.items()):
                    try:
                        result = _query(prometheus, promql)
                    except urllib.error.HTTPError as exc:  # refused: the query is wrong
                        errors[name] = exc.read().decode(errors="replace")
                        del pending[name]
                        continue
                    except (urllib.error.URLError, ConnectionError, TimeoutError):
                        break  # not listening yet
                    if result:
                        del pending[name]
                time.sleep(0.5)
    finally:
        stop.set()
        busy.join(10)
    assert not errors, errors
    assert not pending, (f"no series within {DEADLINE_S} s: {pending}\n"
                         f"prometheus log:\n{prometheus.log()}")
