"""The container image of ``deploy/docker/Dockerfile``, built and run with podman.

``deploy/docker/build.sh`` builds the image (on the minimal Debian base that
``deploy/docker/make-base.sh`` makes from Debian's archive, unless ``$STAMP_IMAGE_BASE``
names another), tagged with a hash of its inputs, so a second run on one machine reuses
it.  The tests run what a broker team runs: ``stamp-worker classify`` on the real alerts,
and ``topics``, ``replay`` and the worker itself against the test broker, configured by a
mounted file and environment variables, stopped with SIGTERM.

Podman runs as root with runc (``--network host``: the test broker listens on
127.0.0.1); the module skips with a message where either is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from tests.integration.net import free_port, http_get
from tests.integration.podman import build_image, missing, podman, run_options
from worker.decode.packets import synthetic_alert
from worker.stream.output import decode_labels

READY_TIMEOUT_S = 120.0
LABELS_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"container tests: {missing()}")


def podman_run(image: str, *args: str, options: tuple[str, ...] = (),
               timeout: float = 300.0) -> subprocess.CompletedProcess:
    """``podman run --rm`` as on this machine (runc, host network, the ulimits it allows)."""
    return subprocess.run(
        ["podman", "run", "--rm", *run_options(), *options, image, *args],
        capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def image() -> str:
    """The image's name, built by deploy/docker/build.sh (or kept from an earlier run)."""
    return build_image()


def test_the_image_has_no_tensorflow_and_runs_as_a_user(image: str) -> None:
    result = podman_run(image, "-c", "import os, importlib.util as u; "
                        "print(os.getuid(), u.find_spec('tensorflow') is None, "
                        "u.find_spec('keras') is None, u.find_spec('onnxruntime') is not None)",
                        options=("--no-healthcheck", "--entrypoint", "python3"))
    assert result.returncode == 0, result.stderr
    uid, no_tf, no_keras, onnx = result.stdout.split()
    assert int(uid) != 0
    assert (no_tf, no_keras, onnx) == ("True", "True", "True")


def test_the_image_decodes_with_the_compiled_path_where_cargo_is(image: str) -> None:
    """build.sh builds native/ into a wheel the image installs, where cargo is on PATH;
    the worker in the image then uses it (same inputs, a third of the decoding CPU)."""
    if shutil.which("cargo") is None:
        pytest.skip("no cargo on PATH: build.sh built the image without the compiled "
                    "decoding path")
    result = podman_run(image, "-c", "import worker.decode.native as n; "
                        "print(n.available(), n.ENABLED)",
                        options=("--no-healthcheck", "--entrypoint", "python3"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


def test_model_threads_follow_the_containers_cpu_limit(image: str) -> None:
    """``--cpus 1.5`` on this machine: one ONNX Runtime thread, not one per core."""
    script = ("from worker.model.artifact import cpu_limit, threads_per_process; "
              "print(cpu_limit(), threads_per_process(0, 1))")
    limited = podman_run(image, "-c", script, options=(
        "--no-healthcheck", "--cpus", "1.5", "--entrypoint", "python3"))
    assert limited.returncode == 0, limited.stderr
    assert limited.stdout.split() == ["1.5", "1"]
    free = podman_run(image, "-c", script,
                      options=("--no-healthcheck", "--entrypoint", "python3"))
    assert free.returncode == 0, free.stderr
    assert free.stdout.split() == ["None", "0"]  # ONNX Runtime's own default


def _by_alert(jsonl: str) -> dict[tuple[str, int], dict]:
    records = [json.loads(line) for line in jsonl.splitlines() if line.strip()]
    return {(r["objectId"], r["candid"]): r for r in records}


def test_classify_in_the_container_labels_the_real_alerts_as_on_the_host(
        image: str, data_dir: Path) -> None:
    """The image's ``classify`` (read-only root, the data mounted read-only) gives every
    real alert the label the installed worker gives it."""
    inside = podman_run(image, "classify", "/data", "--quiet",
                        options=("--no-healthcheck", "--read-only",
                                 "--volume", f"{data_dir}:/data:ro"))
    assert inside.returncode == 0, inside.stderr
    host = subprocess.run([sys.executable, "-m", "worker.cli", "classify", str(data_dir),
                           "--quiet"], capture_output=True, text=True, check=False)
    assert host.returncode == 0, host.stderr
    got, expected = _by_alert(inside.stdout), _by_alert(host.stdout)
    assert len(expected) > 1000
    assert got.keys() == expected.keys()
    for key, record in expected.items():
        assert got[key]["top_class"] == record["top_class"], key
        for name, p in record["probabilities"].items():
            # Same model and runtime family; builds of ONNX Runtime may round differently.
            assert got[key]["probabilities"][name] == pytest.approx(p, abs=1e-4), key
    # The summary on stderr counts the same refused alerts.
    assert inside.stderr.split(" in ")[0] == host.stderr.split(" in ")[0]


@pytest.fixture
def container_name() -> Iterator[str]:
    """A container name, the container removed after the test whatever happened."""
    name = f"stamp-worker-test-{uuid.uuid4().hex[:10]}"
    yield name
    podman("rm", "--force", "--time", "0", name)


def test_the_worker_container_labels_the_stream_and_drains_on_sigterm(
        image: str, kafka_bootstrap: str, kafka_admin: AdminClient, tmp_path: Path,
        container_name: str) -> None:
    """The image as deployed: ``topics`` makes the topics of the mounted configuration,
    ``replay`` sends alerts, the worker (environment overriding the file) labels every
    one, reports ready and healthy, and SIGTERM stops it with status 0 with every offset
    committed."""
    suffix = uuid.uuid4().hex[:12]
    topics = {"input": f"ctr-alerts-{suffix}", "output": f"ctr-labels-{suffix}",
              "dlq": f"ctr-dead-{suffix}"}
    group = f"ctr-worker-{suffix}"
    port = free_port()
    config = tmp_path / "worker.yaml"
    config.write_text("\n".join([
        "kafka:", "  bootstrap_servers: 'set-by-the-environment:9092'",
        "topics:", f"  input: [{topics['input']}]", f"  output: {topics['output']}",
        f"  dead_letter: {topics['dlq']}",
        "group_id: overridden-by-the-environment",
        "batch:", "  max_messages: 64",
    ]) + "\n")
    config.chmod(0o644)
    env = ["--env", f"KAFKA_BOOTSTRAP_SERVERS={kafka_bootstrap}",
           "--env", f"STAMP_WORKER__GROUP_ID={group}",
           "--env", f"STAMP_WORKER__METRICS__PORT={port}",
           "--env", "STAMP_WORKER_CONFIG=/etc/stamp-worker/worker.yaml",
           "--volume", f"{config}:/etc/stamp-worker/worker.yaml:ro"]
    alerts = tmp_path / "alerts"
    alerts.mkdir()
    count = 300
    for seed in range(count):
        (alerts / f"alert-{seed:04d}.avro").write_bytes(synthetic_alert(seed))
    alerts.chmod(0o755)
    try:
        made = podman_run(image, "topics", "--partitions", "2", "--replication-factor", "1",
                          options=("--no-healthcheck", *env))
        assert made.returncode == 0, made.stdout + made.stderr
        assert made.stdout.count("created") == 3, made.stdout

        sent = podman_run(image, "replay", "/alerts", "--topic", topics["input"], "--quiet",
                          options=("--no-healthcheck", *env, "--volume", f"{alerts}:/alerts:ro"))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert f"sent {count}, failed 0" in sent.stdout + sent.stderr

        start = time.monotonic()
        started = podman("run", "--detach", "--name", container_name, *run_options(),
                          "--read-only", *env, image)
        assert started.returncode == 0, started.stderr
        status, body = 0, ""
        while time.monotonic() - start < READY_TIMEOUT_S:
            status, body = http_get(f"http://127.0.0.1:{port}/readyz")
            if status == 200:
                break
            time.sleep(0.1)
        ready_s = time.monotonic() - start
        assert status == 200, f"/readyz: {status} {body}\n{_logs(container_name)}"

        # One label per alert: synthetic alert `seed` has candid 2e18 + seed.
        candids = _read_labels(kafka_bootstrap, topics["output"], count)
        assert sorted(candids) == [2_000_000_000_000_000_000 + seed for seed in range(count)]

        health = podman("healthcheck", "run", container_name)
        assert health.returncode == 0, health.stdout + health.stderr
        assert http_get(f"http://127.0.0.1:{port}/metrics")[1].count(
            "stamp_worker_alerts_consumed_total") > 0
        memory = podman("exec", container_name, "sh", "-c",
                         "grep -E 'VmRSS|VmHWM' /proc/1/status").stdout.split()

        stopped = podman("stop", "--time", str(STOP_TIMEOUT_S), container_name,
                          timeout=STOP_TIMEOUT_S + 30)
        assert stopped.returncode == 0, stopped.stderr
        exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", container_name)
        logs = _logs(container_name)
        assert exit_code.stdout.strip() == "0", logs
        assert "stopped cleanly" in logs, logs
        print(f"\nworker container ready in {ready_s:.1f} s after `podman run`; "
              f"stamp-worker (PID 1): {' '.join(memory)}")

        consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
        committed = consumer.committed([TopicPartition(topics["input"], p) for p in (0, 1)],
                                       15)
        ends = [consumer.get_watermark_offsets(tp, 15)[1] for tp in committed]
        consumer.close()
        assert [tp.offset for tp in committed] == ends
        assert sum(ends) == count
    finally:
        futures = kafka_admin.delete_topics(list(topics.values()), operation_timeout=10,
                                            request_timeout=15)
        for future in futures.values():
            try:
                future.result(timeout=20)
            except Exception:  # noqa: BLE001 - a topic the test did not get to create
                pass


def _logs(name: str) -> str:
    result = podman("logs", name)
    return result.stdout + result.stderr


def _read_labels(bootstrap: str, topic: str, expected: int) -> list[int]:
    """The candids of the label records on ``topic``, once ``expected`` have arrived (and
    a second more, for records beyond them)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    found: list[int] = []
    deadline = time.monotonic() + LABELS_TIMEOUT_S
    try:
        while len(found) < expected and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                if message.error() is None:
                    found += [record["candid"] for record in decode_labels(message.value())]
        found += [record["candid"] for message in consumer.consume(500, 1.0)
                  if message.error() is None for record in decode_labels(message.value())]
    finally:
        consumer.close()
    return found
