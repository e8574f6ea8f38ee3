"""The pod that the Helm chart describes, run with podman against a SASL_SSL broker.

``helm template`` renders the chart (static membership, exactly-once, SASL/SCRAM over TLS
from Secrets); the StatefulSet's pod spec is then run as Kubernetes would run it, as far
as podman can: the rendered ConfigMap and the CA Secret mounted read-only at their mount
paths, the environment with the Secrets' values and the downward API's pod name, the
security context (user, read-only root, no capabilities, no privilege escalation), the
``/tmp`` emptyDir as a tmpfs, the container's ``args``. The worker must become ready on
the readiness probe's path, label every alert, stay within the memory limit, and stop
cleanly on SIGTERM within ``terminationGracePeriodSeconds`` (``podman stop --time``).

Needs helm (``deploy/helm/install-helm.sh``), podman and runc as root, and the image of
``deploy/docker/build.sh`` (built, or reused by its hash); skips, saying which is missing.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from tests.conftest import REPO
from tests.deploy.test_helm import (
    CHART,
    _find_helm,
    by_kind,
    container,
    helm,  # noqa: F401  (fixture)
    render,
    workload,
)
from tests.integration.net import free_port, http_get
from tests.integration.podman import build_image, missing, podman, run_options
from worker.decode.packets import synthetic_alert
from worker.tools import devbroker

USER = "stamp-classifier"
ALERTS = 200
READY_TIMEOUT_S = 120.0
LABELS_TIMEOUT_S = 120.0
POD_NAME = "stamp-worker-0"  # what the StatefulSet calls its first pod
SECRET_NAMES = {"sasl": "kafka-sasl", "ca": "kafka-ca"}


def _why_not() -> str | None:
    """Why the pod cannot be run here, or None."""
    if _find_helm() is None:
        return "helm not found (deploy/helm/install-helm.sh builds it; .ci/run does)"
    return missing()


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=f"Helm pod test: {_why_not()}")


@pytest.fixture(scope="module")
def image() -> str:
    """The worker image, built by deploy/docker/build.sh or kept from an earlier build."""
    return build_image()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[devbroker.Broker, str]]:
    """A broker with a SASL_SSL listener (one SCRAM user), and that user's password."""
    folder = tmp_path_factory.mktemp("kafka-helm-pod")
    password = secrets.token_urlsafe(24)
    try:
        started = devbroker.start(folder / "broker", sasl_ssl=devbroker.SaslSsl(USER, password))
    except devbroker.DevBrokerError as exc:
        pytest.fail(f"cannot start the development Kafka broker with its SASL_SSL listener: "
                    f"{exc}", pytrace=False)
    try:
        yield started, password
    finally:
        started.stop()


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"stamp-worker-helm-{uuid.uuid4().hex[:10]}"
    yield name
    podman("rm", "--force", "--time", "0", name)


def _mebibytes(quantity: str) -> float:
    """A Kubernetes memory quantity (``512Mi``, ``1Gi``, ``500M``) in MiB."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|K|M|G)?", quantity)
    assert match is not None, quantity
    factor = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20,
              "G": 1e9 / 2**20, None: 1 / 2**20}[match.group(2)]
    return float(match.group(1)) * factor


def pod_options(objects: list[dict[str, Any]], secret_data: dict[tuple[str, str], str],
                folder: Path) -> list[str]:
    """``podman run`` options for the rendered pod: mounts, environment, security context.

    ``secret_data`` maps (Secret name, key) to the value a Secret would hold.
    """
    pod = workload(objects)["spec"]["template"]["spec"]
    worker = container(objects)
    options: list[str] = []
    user = pod["securityContext"]
    options += ["--user", f"{user['runAsUser']}:{user['runAsGroup']}"]
    context = worker["securityContext"]
    if context.get("readOnlyRootFilesystem"):
        options.append("--read-only")
    options += [f"--cap-drop={cap}" for cap in context.get("capabilities", {}).get("drop", [])]
    if context.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    for entry in worker["env"]:
        if "value" in entry:
            value = entry["value"]
        elif "fieldRef" in entry["valueFrom"]:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            value = POD_NAME
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            value = secret_data[(ref["name"], ref["key"])]
        options += ["--env", f"{entry['name']}={value}"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    config_maps = {obj["metadata"]["name"]: obj for obj in by_kind(objects, "ConfigMap")}
    for mount in worker["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            size = round(_mebibytes(volume["emptyDir"].get("sizeLimit", "64Mi")))
            options += ["--tmpfs", f"{mount['mountPath']}:size={size}m"]
            continue
        local = folder / mount["name"]
        local.mkdir()
        if "configMap" in volume:
            files = config_maps[volume["configMap"]["name"]]["data"]
        else:
            name = volume["secret"]["secretName"]
            files = {item["path"]: secret_data[(name, item["key"])]
                     for item in volume["secret"]["items"]}
        for key, text in files.items():
            (local / key).write_text(text, encoding="utf-8")
            (local / key).chmod(0o644)  # Kubernetes' default mode for these volumes
        local.chmod(0o755)
        options += ["--volume", f"{local}:{mount['mountPath']}:ro"]
    return options


def test_the_rendered_pod_runs_labels_and_drains_within_its_grace_period(
        helm: str, image: str, broker: tuple[devbroker.Broker, str],  # noqa: F811
        tmp_path: Path, container_name: str) -> None:
    kafka, password = broker
    assert kafka.sasl_ssl_bootstrap_servers is not None
    suffix = uuid.uuid4().hex[:10]
    topics = {"input": f"helm-alerts-{suffix}", "output": f"helm-labels-{suffix}",
              "dead_letter": f"helm-dead-{suffix}"}
    group = f"helm-worker-{suffix}"
    port = free_port()
    objects = render(
        helm, "-f", str(CHART / "ci" / "static-membership-values.yaml"),
        "--set", f"config.kafka.bootstrap_servers={kafka.sasl_ssl_bootstrap_servers}",
        "--set", f"config.topics.input={{{topics['input']}}}",
        "--set", f"config.topics.output={topics['output']}",
        "--set", f"config.topics.dead_letter={topics['dead_letter']}",
        "--set", f"config.group_id={group}", "--set", f"config.metrics.port={port}",
        "--set", "inputPartitions=2", "--set", "replicaCount=1",
        "--set", "kafkaAuth.sasl.enabled=true",
        "--set", f"kafkaAuth.sasl.secretName={SECRET_NAMES['sasl']}",
        "--set", "kafkaAuth.tls.enabled=true",
        "--set", f"kafkaAuth.tls.secretName={SECRET_NAMES['ca']}")
    secret_data = {(SECRET_NAMES["sasl"], "username"): USER,
                   (SECRET_NAMES["sasl"], "password"): password,
                   (SECRET_NAMES["ca"], "ca.crt"): kafka.ca_file.read_text(encoding="utf-8")}
    options = pod_options(objects, secret_data, tmp_path)
    # The topics and the alerts, from the host over the plaintext listener.
    admin_env = {**{k: v for k, v in os.environ.items() if not k.startswith("STAMP_WORKER")},
                 "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
    config_file = tmp_path / "topics.yaml"
    config_file.write_text(f"topics: {topics}\n", encoding="utf-8")
    alerts = tmp_path / "alerts"
    alerts.mkdir()
    for seed in range(ALERTS):
        (alerts / f"alert-{seed:04d}.avro").write_bytes(synthetic_alert(seed))
    for args in (["topics", "--config", str(config_file), "--partitions", "2",
                  "--replication-factor", "1"],
                 ["replay", str(alerts), "--topic", topics["input"], "--quiet"]):
        done = subprocess.run([sys.executable, "-m", "worker.cli", *args], env=admin_env,
                              cwd=REPO, capture_output=True, text=True, timeout=300,
                              check=False)
        assert done.returncode == 0, done.stdout + done.stderr

    worker = container(objects)
    pod = workload(objects)["spec"]["template"]["spec"]
    started = podman("run", "--detach", "--name", container_name, *run_options(),
                     "--no-healthcheck", *options, image, *worker["args"])
    assert started.returncode == 0, started.stderr
    ready_path = worker["readinessProbe"]["httpGet"]["path"]
    live_path = worker["livenessProbe"]["httpGet"]["path"]
    deadline = time.monotonic() + READY_TIMEOUT_S
    status, body = 0, ""
    while time.monotonic() < deadline:
        status, body = http_get(f"http://127.0.0.1:{port}{ready_path}")
        if status == 200:
            break
        time.sleep(0.2)
    logs = podman("logs", container_name)
    assert status == 200, f"{ready_path}: {status} {body}\n{logs.stdout}{logs.stderr}"
    assert http_get(f"http://127.0.0.1:{port}{live_path}")[0] == 200

    labels = _count_labels(kafka.bootstrap_servers, topics["output"], ALERTS)
    assert labels == ALERTS
    peak = podman("exec", container_name, "sh", "-c", "grep VmHWM /proc/1/status").stdout
    peak_mib = int(peak.split()[1]) / 1024
    limit_mib = _mebibytes(worker["resources"]["limits"]["memory"])
    grace = pod["terminationGracePeriodSeconds"]
    start = time.monotonic()
    stopped = podman("stop", "--time", str(grace), container_name, timeout=grace + 60)
    stop_s = time.monotonic() - start
    assert stopped.returncode == 0, stopped.stderr
    exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", container_name)
    logs = podman("logs", container_name)
    text = logs.stdout + logs.stderr
    print(f"\nrendered pod: ready, {labels} labels, peak resident {peak_mib:.0f} MiB "
          f"(limit {limit_mib:.0f} MiB), stopped by SIGTERM in {stop_s:.1f} s "
          f"(grace {grace} s)")
    assert exit_code.stdout.strip() == "0", text  # 137 would be a SIGKILL at the grace's end
    assert "stopped cleanly" in text, text
    assert f"transactional.id {group}-{POD_NAME}" in text, text  # the instance id
    assert password not in text
    assert peak_mib < limit_mib


def _count_labels(bootstrap: str, topic: str, expected: int) -> int:
    """Committed label records in ``topic``, read until ``expected`` or the timeout."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    count = 0
    deadline = time.monotonic() + LABELS_TIMEOUT_S
    try:
        while count < expected and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=1.0):
                if message.error() is None:
                    count += 1
    finally:
        consumer.close()
    return count
