"""deploy/compose.yaml and the container image's settings, checked without a registry.

The compose file's images (Kafka, Prometheus, Grafana) cannot be pulled here, so the
stack is not started by the tests; what can go wrong without running it is checked: the
files it mounts exist, the worker's configuration (the mounted example file plus the
compose and image environment) passes the worker's own validation, and the service
names, ports and paths that the parts use to find each other agree.  The image itself
is built and run by tests/integration/test_container.py.
"""

from __future__ import annotations

import glob
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import prometheus_tool
from worker.stream.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
CONFIG_IN_CONTAINER = "/etc/stamp-worker/worker.yaml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _image_env() -> dict[str, str]:
    """The ENV settings of the Dockerfile's final stage (KEY=value pairs)."""
    final = DOCKERFILE.read_text().split("\nFROM python\n")[-1]
    text = final.replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line[4:].split() if "=" in pair)
    return env


def _bind_mounts(service: dict) -> list[tuple[Path, str]]:
    """(host path, container path) of a service's bind mounts, host paths resolved."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts.append(((DEPLOY / source).resolve(), target))
    return mounts


def test_the_stack_has_its_services_in_order(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"kafka", "topics", "worker", "prometheus", "grafana"}
    assert "healthcheck" in services["kafka"]
    assert services["topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert services["worker"]["depends_on"] == {
        "topics": {"condition": "service_completed_successfully"}}
    assert services["topics"]["command"][0] == "topics"
    assert services["worker"]["command"] == ["run"]


def test_every_mounted_file_and_the_build_exist(compose: dict) -> None:
    for name, service in compose["services"].items():
        if name == "grafana" and not (DEPLOY / "grafana").is_dir():
            continue
        for source, _ in _bind_mounts(service):
            assert source.exists(), f"{name}: {source} is mounted but does not exist"
    build = compose["services"]["worker"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_the_worker_configuration_is_valid_as_the_container_sees_it(compose: dict) -> None:
    """The mounted file with the image's and the compose file's environment: the worker's
    own validation accepts it, the broker address is Kafka's in-network listener, and the
    metrics server listens where the port is published and Prometheus scrapes."""
    worker = compose["services"]["worker"]
    env = {**_image_env(), **worker["environment"]}
    (source, _), = [m for m in _bind_mounts(worker) if m[1] == env["STAMP_WORKER_CONFIG"]]
    try:
        config = load_config(source, env=env)
    except ConfigError as exc:
        pytest.fail(f"the compose worker's configuration is refused: {exc}")
    kafka_env = compose["services"]["kafka"]["environment"]
    advertised = kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"PLAINTEXT://{config.kafka.bootstrap_servers}" in advertised
    assert config.metrics.host == "0.0.0.0"
    assert f"{config.metrics.port}:{config.metrics.port}" in worker["ports"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.compose.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"worker:{config.metrics.port}"]


def test_the_healthcheck_asks_the_port_the_worker_serves() -> None:
    text = DOCKERFILE.read_text()
    env = _image_env()
    check = re.search(r"HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])", text)
    assert check, "no HEALTHCHECK ... CMD [...] in the Dockerfile"
    assert "/healthz" in check[1] and "STAMP_WORKER__METRICS__PORT" in check[1]
    assert f"EXPOSE {env['STAMP_WORKER__METRICS__PORT']}" in text
    # Exec form: no shell between the runtime and the worker, so SIGTERM reaches it.
    assert 'ENTRYPOINT ["stamp-worker"]' in text


def test_prometheus_in_the_stack_loads_the_worker_rules(compose: dict) -> None:
    service = compose["services"]["prometheus"]
    (source, target), = _bind_mounts(service)
    config_flag = next(a for a in service["command"] if a.startswith("--config.file="))
    config_path = config_flag.split("=", 1)[1]
    assert config_path.startswith(target + "/")
    host_config = source / config_path[len(target) + 1:]
    scrape = yaml.safe_load(host_config.read_text())
    rules = [f for pattern in scrape["rule_files"] for f in glob.glob(str(source / pattern))]
    assert any(Path(f).name == "stamp-worker.rules.yml" for f in rules), rules


def test_promtool_accepts_the_compose_prometheus_configuration() -> None:
    promtool = prometheus_tool("promtool")
    result = subprocess.run([promtool, "check", "config", "prometheus.compose.yml"],
                            cwd=DEPLOY / "prometheus", capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_the_stack_prometheus_and_dashboards(
        compose: dict) -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    if not provisioning.is_dir():
        pytest.skip("deploy/grafana/provisioning is absent: no Grafana provisioning to check")
    mounts = dict((target, source) for source, target in
                  _bind_mounts(compose["services"]["grafana"]))
    assert mounts["/etc/grafana/provisioning"] == provisioning
    sources = [d for f in sorted((provisioning / "datasources").glob("*.y*ml"))
               for d in yaml.safe_load(f.read_text())["datasources"]]
    assert "http://prometheus:9090" in [d["url"] for d in sources]
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]
    providers = [p for f in sorted((provisioning / "dashboards").glob("*.y*ml"))
                 for p in yaml.safe_load(f.read_text())["providers"]]
    for provider in providers:
        path = provider["options"]["path"]
        assert path in mounts, f"dashboards provider path {path} is not mounted"
        assert list(mounts[path].glob("*.json")), f"no dashboard in {mounts[path]}"
