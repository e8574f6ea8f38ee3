"""deploy/grafana: the dashboard generator, its committed JSON, and provisioning files.

Every metric a panel queries must be one the worker exports, and every label a panel
groups by or names in its legend one that those metrics carry, so that a renamed metric
or label cannot leave a panel silently empty.  The committed JSON must be what the
generator prints (it needs the Grafana Foundation SDK, the ``deploy`` extra; skipped
without it).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.conftest import prometheus_tool
from worker.stream.config import BUNDLED_MODEL_BASELINE
from worker.stream.metrics import WorkerMetrics

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
GENERATOR = GRAFANA / "dashboard.py"
DASHBOARD = GRAFANA / "dashboards" / "stamp-worker.json"
# Series Prometheus adds itself, and the labels it attaches to every scraped series.
PROMETHEUS_SERIES = {"up"}
TARGET_LABELS = {"job", "instance"}


def _exported_labels() -> dict[str, set[str]]:
    """Every series name the worker exports, with its label names (labelled children
    created, so that their labels show)."""
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    metrics.consumer_errors.labels(error="UNKNOWN_TOPIC_OR_PART")
    metrics.set_drift(BUNDLED_MODEL_BASELINE, 0.2)
    metrics.set_model("m", "1", "1")
    metrics.update_from_librdkafka_stats(json.dumps({
        "type": "consumer", "cgrp": {"assignment_size": 1},
        "topics": {"t": {"partitions": {"0": {"consumer_lag": 1,
                                                "consumer_lag_stored": 1}}}}}))
    labels: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def panel_targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) of every query of every panel, rows' panels included."""
    panels = list(dashboard["panels"])
    for panel in list(panels):
        panels += panel.get("panels", [])
    return [(panel["title"], target) for panel in panels
            for target in panel.get("targets", [])]


def as_grafana_sends(expr: str, rate_interval: str = "1m") -> str:
    """A panel query with the dashboard's variables replaced as Grafana does when every
    job and process is chosen (``All`` is ``.*``)."""
    for variable, value in (("$__rate_interval", rate_interval), ("$job", ".*"),
                            ("$instance", ".*")):
        expr = expr.replace(variable, value)
    return expr


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_variables_are_replaced_as_grafana_does() -> None:
    assert as_grafana_sends('rate(x{job=~"$job", instance=~"$instance"}[$__rate_interval])',
                            "5s") == 'rate(x{job=~".*", instance=~".*"}[5s])'


def test_the_committed_json_is_the_generators_output() -> None:
    if importlib.util.find_spec("grafana_foundation_sdk") is None:
        pytest.skip("grafana-foundation-sdk not installed (pip install -e '.[deploy]', "
                    "Python 3.11 or newer)")
    result = subprocess.run([sys.executable, str(GENERATOR)], capture_output=True,
                            text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout == DASHBOARD.read_text(), (
        "deploy/grafana/dashboards/stamp-worker.json is stale: run "
        "python deploy/grafana/dashboard.py > deploy/grafana/dashboards/stamp-worker.json")


def test_every_metric_a_panel_queries_is_exported(dashboard: dict[str, Any]) -> None:
    exported = _exported_labels()
    targets = panel_targets(dashboard)
    assert len(targets) >= 20, "the dashboard should query the worker's metrics"
    for title, target in targets:
        expr = target["expr"]
        used = set(re.findall(r"\bstamp_worker_\w+", expr))
        assert used or any(re.search(rf"\b{name}\{{", expr) for name in PROMETHEUS_SERIES), (
            f"{title}: {expr!r} queries none of the worker's series")
        assert used <= exported.keys(), f"{title}: not exported: {used - exported.keys()}"
    variables = [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for query in variables:
        used = set(re.findall(r"\bstamp_worker_\w+", query))
        assert used and used <= exported.keys(), query


def test_every_label_a_panel_uses_is_carried_by_its_metrics(
        dashboard: dict[str, Any]) -> None:
    exported = _exported_labels()
    for title, target in panel_targets(dashboard):
        expr = target["expr"]
        carried = set(TARGET_LABELS)
        for name in re.findall(r"\bstamp_worker_\w+", expr):
            carried |= exported.get(name, set())
        grouped = {label.strip() for group in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr)
                   for label in group.split(",")}
        matched = set(re.findall(r"(\w+)\s*=~?\s*\"", expr))
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        for kind, labels in (("groups by", grouped), ("matches", matched),
                             ("names in its legend", legend)):
            assert labels <= carried, (f"{title}: {expr!r} {kind} {labels - carried}, "
                                       f"which its series do not carry ({sorted(carried)})")


def test_promtool_parses_every_panel_query(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Each query, with Grafana's variables replaced as Grafana does, is valid PromQL."""
    promtool = prometheus_tool("promtool")
    rules = []
    for number, (title, target) in enumerate(panel_targets(dashboard)):
        expr = as_grafana_sends(target["expr"])
        assert "$" not in expr, f"{title}: a variable left in {expr!r}"
        rules.append({"record": f"dashboard:query_{number}", "expr": expr})
    file = tmp_path / "dashboard.rules.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(file)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_panels_read_the_datasource_variable_and_have_unique_ids(
        dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for title, target in panel_targets(dashboard):
        assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert target["refId"], title
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "job", "instance"]


def test_provisioning_points_grafana_at_prometheus_and_the_dashboard_folder() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    [source] = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "stamp-worker.yaml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    # The folder the comment's mount puts deploy/grafana/dashboards at.
    text = (GRAFANA / "provisioning" / "dashboards" / "stamp-worker.yaml").read_text()
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in text
