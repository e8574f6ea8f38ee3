"""deploy/prometheus: the scrape configuration and the alerting rules.

The rules are checked by Prometheus's own tool (``promtool``, from Debian's
``prometheus`` package; skipped without it), and their metric names against what the
worker exports, so a renamed metric cannot leave a rule silently watching nothing.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from tests.conftest import prometheus_tool
from worker.stream.metrics import WorkerMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = DEPLOY / "stamp-worker.rules.yml"


def _exported_names() -> set[str]:
    """Every series name the worker's metrics can expose (labelled ones included)."""
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    names = set()
    for family in registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                    "gauge": ("",), "info": ("_info",)}[family.type]
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_promtool_accepts_the_configuration() -> None:
    promtool = prometheus_tool("promtool")
    result = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=DEPLOY,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_pass_their_unit_tests() -> None:
    promtool = prometheus_tool("promtool")
    result = subprocess.run([promtool, "test", "rules", "stamp-worker.rules.test.yml"],
                            cwd=DEPLOY, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_in_the_rules_is_exported() -> None:
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"]
             for rule in group["rules"]]
    used = {name for rule in rules for name in re.findall(r"stamp_worker_\w+", rule["expr"])}
    assert used, "the rules should watch the worker's metrics"
    assert used <= _exported_names(), used - _exported_names()
