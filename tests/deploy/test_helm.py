"""The Helm chart (deploy/helm/stamp-worker) rendered with the real helm and checked.

For the default values and each values file in the chart's ``ci/`` folder: ``helm lint
--strict``; every rendered object validated against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields fail) or, for KEDA's and prometheus-operator's
kinds, against models generated from their CRDs (cloudcoil-models-*); the rendered
ConfigMap plus the container's environment loaded by :func:`worker.stream.config.load_config`, as
the worker does in the pod. The chart's rules (replicas within the partitions, the grace
period above the drain, one process per pod, no secrets in the ConfigMap) must fail
rendering with one line naming the value.

helm comes from ``deploy/helm/install-helm.sh`` (built from the Go module proxy, which
``.ci/run`` runs), ``$HELM`` or ``PATH``; without it these tests skip, saying so.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import background_build
from worker.stream.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "stamp-worker"
INSTALL_SCRIPT = ROOT / "deploy" / "helm" / "install-helm.sh"
# The newest Kubernetes that both the pinned helm and kubernetes-validate know.
KUBE_VERSION = "1.37.0"
VALUES_FILES = sorted(path.name for path in (CHART / "ci").glob("*.yaml"))
CASES = ["default", *VALUES_FILES]
POD_NAME = "stamp-worker-0"


def _find_helm() -> str | None:
    """The helm binary: $HELM, the one install-helm.sh installs, else helm on PATH."""
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    try:
        pinned = subprocess.run(["bash", str(INSTALL_SCRIPT), "--path"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pinned = ""
    if pinned and os.access(pinned, os.X_OK):
        return pinned
    return shutil.which("helm")


@pytest.fixture(scope="module")
def helm() -> str:
    built = background_build("helm")
    if built is not None and built[0] != 0:
        pytest.skip(f"helm could not be built (status {built[0]}); the end of its log:\n"
                    f"{built[1]}")
    path = _find_helm()
    if path is None or not os.access(path, os.X_OK):
        pytest.skip("helm not found: run deploy/helm/install-helm.sh (builds helm v3 from the "
                    "Go module proxy; .ci/run does), or set $HELM / put helm on PATH")
    return path


def _values_args(case: str) -> list[str]:
    return [] if case == "default" else ["-f", str(CHART / "ci" / case)]


def _helm_template(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, "template", "stamp-worker", str(CHART), "--namespace", "astro",
                           "--kube-version", KUBE_VERSION, *args],
                          capture_output=True, text=True, timeout=120)


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    """The objects that ``helm template`` renders with these arguments."""
    result = _helm_template(helm, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(helm: str, *args: str) -> str:
    """The error of a rendering that must fail."""
    result = _helm_template(helm, *args)
    assert result.returncode != 0, f"rendered although it should not:\n{result.stdout[:2000]}"
    return result.stderr


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def workload(objects: list[dict[str, Any]]) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] in ("Deployment", "StatefulSet")]
    assert len(found) == 1
    return found[0]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = workload(objects)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


# ------------------------------------------------------------------------ validation

def validate(obj: Mapping[str, Any]) -> None:
    """Validate one object; raise ``AssertionError`` with what is wrong.

    Core kinds: kubernetes-validate's strict JSON schemas of the Kubernetes API (unknown
    fields fail, as with ``kubectl --validate=strict``). KEDA and prometheus-operator
    kinds: the pydantic models that cloudcoil generates from those projects' CRDs; pydantic
    ignores unknown fields, so the object must also survive a round trip unchanged (a field
    the model does not have, or a value it had to convert, shows up as a difference).
    """
    group = obj["apiVersion"].split("/")[0]
    if group in ("keda.sh", "monitoring.coreos.com"):
        model = _crd_model(obj["apiVersion"], obj["kind"])
        import pydantic

        try:
            parsed = model.model_validate(obj)
        except pydantic.ValidationError as exc:
            raise AssertionError(f"{obj['kind']}: {exc}") from None
        dumped = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
        difference = _difference(obj, dumped)
        assert difference is None, f"{obj['kind']}: {difference} (unknown or converted)"
        return
    import kubernetes_validate

    try:
        kubernetes_validate.validate(dict(obj), KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(part) for part in exc.path)
        raise AssertionError(f"{obj['kind']} {path}: {exc.message}") from None


def _crd_model(api_version: str, kind: str) -> Any:
    if api_version == "keda.sh/v1alpha1":
        from cloudcoil.models.keda import v1alpha1 as keda

        return getattr(keda, kind)
    if api_version == "monitoring.coreos.com/v1":
        from cloudcoil.models.prometheus_operator import v1 as monitoring

        return getattr(monitoring, kind)
    raise AssertionError(f"no schema for {api_version} {kind}")


def _difference(given: Any, parsed: Any, path: str = "") -> str | None:
    """The first place where ``parsed`` differs from ``given``, else None."""
    if isinstance(given, Mapping):
        if not isinstance(parsed, Mapping):
            return f"{path or '.'}: a mapping became {parsed!r}"
        for key, value in given.items():
            if key not in parsed:
                return f"{path}.{key}: not in the schema"
            found = _difference(value, parsed[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(given, list):
        if not isinstance(parsed, list) or len(parsed) != len(given):
            return f"{path}: a list became {parsed!r}"
        for index, (one, other) in enumerate(zip(given, parsed, strict=True)):
            found = _difference(one, other, f"{path}[{index}]")
            if found:
                return found
        return None
    if given != parsed or type(given) is not type(parsed):
        return f"{path}: {given!r} became {parsed!r}"
    return None


# ----------------------------------------------------------------- the worker's view

def _pod_environment(objects: list[dict[str, Any]], mounts: Mapping[str, Path]
                     ) -> dict[str, str]:
    """The container's environment as the worker would see it.

    Secret values are stand-ins (``<secret>/<key>``), the downward API's pod name is
    :data:`POD_NAME`, and paths under a mounted volume are moved into ``mounts``.
    """
    env: dict[str, str] = {}
    for entry in container(objects).get("env", []):
        if "value" in entry:
            value = entry["value"]
        elif "fieldRef" in entry.get("valueFrom", {}):
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            value = POD_NAME
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            value = f"{ref['name']}/{ref['key']}"
            if "USER_INFO" in entry["name"]:
                value = "user:" + value  # basic.auth.user.info is user:password
        env[entry["name"]] = _moved(value, mounts)
    return env


def _moved(text: str, mounts: Mapping[str, Path]) -> str:
    if not mounts:
        return text
    # One pass, longest mount path first, so that a moved path is never moved again.
    pattern = "|".join(re.escape(path) for path in sorted(mounts, key=len, reverse=True))
    return re.sub(pattern, lambda match: str(mounts[match.group(0)]), text)


def _mount_volumes(objects: list[dict[str, Any]], tmp_path: Path) -> dict[str, Path]:
    """Stand-ins of the pod's mounted volumes under ``tmp_path``: mount path -> folder.

    The ConfigMap's keys become files; a Secret volume's items get a real CA bundle (the
    system's), since librdkafka opens ``ssl.ca.location`` when the configuration loads.
    """
    pod = workload(objects)["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    config_maps = {obj["metadata"]["name"]: obj for obj in by_kind(objects, "ConfigMap")}
    mounts: dict[str, Path] = {}
    for mount in container(objects)["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            continue  # /tmp: the worker finds its own
        folder = tmp_path / mount["name"]
        folder.mkdir()
        mounts[mount["mountPath"]] = folder
        if "configMap" in volume:
            for key, text in config_maps[volume["configMap"]["name"]]["data"].items():
                (folder / key).write_text(text, encoding="utf-8")
        elif "secret" in volume:
            cafile = ssl.get_default_verify_paths().cafile
            if not cafile or not Path(cafile).is_file():
                pytest.skip("no system CA bundle to stand in for the mounted CA Secret")
            for item in volume["secret"]["items"]:
                shutil.copyfile(cafile, folder / item["path"])
    return mounts


def load_pod_config(objects: list[dict[str, Any]], tmp_path: Path) -> Any:
    """The :class:`worker.stream.config.WorkerConfig` the pod's worker would load."""
    mounts = _mount_volumes(objects, tmp_path)
    env = _pod_environment(objects, mounts)
    config_file = Path(env["STAMP_WORKER_CONFIG"])
    config_file.write_text(_moved(config_file.read_text(encoding="utf-8"), mounts),
                           encoding="utf-8")
    return load_config(None, env=env)


# ------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("case", CASES)
def test_lint(helm: str, case: str) -> None:
    result = subprocess.run([helm, "lint", "--strict", str(CHART), *_values_args(case)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("case", CASES)
def test_rendered_objects_match_their_schemas(helm: str, case: str) -> None:
    objects = render(helm, *_values_args(case))
    kinds = {obj["kind"] for obj in objects}
    assert {"ConfigMap", "Service", "PodDisruptionBudget"} <= kinds
    assert kinds & {"Deployment", "StatefulSet"}
    for obj in objects:
        validate(obj)


@pytest.mark.parametrize("case", CASES)
def test_rendered_config_and_environment_load_in_the_worker(helm: str, case: str,
                                                            tmp_path: Path) -> None:
    objects = render(helm, *_values_args(case))
    config = load_pod_config(objects, tmp_path)
    assert config.processes == 1
    assert config.metrics.host == "0.0.0.0"
    assert config.metrics.port == container(objects)["ports"][0]["containerPort"]
    static = workload(objects)["kind"] == "StatefulSet"
    assert config.instance_id == (POD_NAME if static else None)
    # The drain fits in the grace period, with the margin.
    grace = workload(objects)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= config.shutdown_timeout_s + 1


def test_validation_catches_bad_objects(helm: str) -> None:
    objects = render(helm, "-f", str(CHART / "ci" / "keda-values.yaml"))
    deployment = workload(objects)
    bad_field = yaml.safe_load(yaml.safe_dump(deployment))
    bad_field["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(AssertionError, match="livenesProbe"):
        validate(bad_field)
    bad_type = yaml.safe_load(yaml.safe_dump(deployment))
    bad_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45s"
    with pytest.raises(AssertionError, match="terminationGracePeriodSeconds"):
        validate(bad_type)

    scaled = only(objects, "ScaledObject")
    validate(scaled)
    misspelt = yaml.safe_load(yaml.safe_dump(scaled))
    misspelt["spec"]["maxReplicas"] = misspelt["spec"].pop("maxReplicaCount")
    with pytest.raises(AssertionError, match="maxReplicas"):
        validate(misspelt)
    wrong_type = yaml.safe_load(yaml.safe_dump(scaled))
    wrong_type["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 15000  # must be a string
    with pytest.raises(AssertionError, match="lagThreshold"):
        validate(wrong_type)
    monitor = only(objects, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "15s"
    with pytest.raises(AssertionError, match="scrapeInterval"):
        validate(monitor)


def test_default_is_a_deployment_with_probes_resources_and_scrape_annotations(
        helm: str) -> None:
    objects = render(helm)
    deployment = workload(objects)
    assert deployment["kind"] == "Deployment"
    assert deployment["spec"]["replicas"] == 2
    # A surge pod could be a member beyond the partitions, get none and never be ready.
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0,
                                                               "maxUnavailable": 1}
    worker = container(objects)
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert worker["resources"] == {"requests": {"cpu": "1200m", "memory": "320Mi"},
                                   "limits": {"memory": "448Mi"}}
    assert not by_kind(objects, "ScaledObject") and not by_kind(objects, "ServiceMonitor")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9108"
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 45
    service = only(objects, "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    pdb = only(objects, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_static_membership_is_a_statefulset_with_the_pod_name_as_instance_id(
        helm: str) -> None:
    objects = render(helm, "-f", str(CHART / "ci" / "static-membership-values.yaml"))
    statefulset = workload(objects)
    assert statefulset["kind"] == "StatefulSet"
    assert statefulset["spec"]["serviceName"] == only(objects, "Service")["metadata"]["name"]
    env = {entry["name"]: entry for entry in container(objects)["env"]}
    assert env["STAMP_WORKER__INSTANCE_ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}}
    # shutdown_timeout_s 45 + the 15 s margin.
    assert statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60


def test_keda_scales_on_the_groups_lag_within_the_partitions(helm: str) -> None:
    objects = render(helm, "-f", str(CHART / "ci" / "keda-values.yaml"))
    deployment = workload(objects)
    assert "replicas" not in deployment["spec"]  # the ScaledObject owns the count
    scaled = only(objects, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                "name": deployment["metadata"]["name"]}
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 8)
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] == "ztf-alerts"
    assert trigger["metadata"]["consumerGroup"] == "stamp-classifier-v2"
    assert trigger["metadata"]["bootstrapServers"] == "kafka-1:9092,kafka-2:9092"
    assert trigger["metadata"]["lagThreshold"] == "15000"
    assert "authenticationRef" not in trigger and not by_kind(objects, "TriggerAuthentication")
    monitor = only(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_gpu_resources_node_selection_and_device(helm: str, tmp_path: Path) -> None:
    objects = render(helm, "-f", str(CHART / "ci" / "gpu-values.yaml"))
    worker = container(objects)
    assert worker["image"] == "registry.example.org/stamp-worker:0.1.0-gpu"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    pod = workload(objects)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists",
            "effect": "NoSchedule"} in pod["tolerations"]
    assert load_pod_config(objects, tmp_path).model_device == "cuda"


def test_secrets_come_from_secrets_never_the_configmap(helm: str, tmp_path: Path) -> None:
    objects = render(helm, "-f", str(CHART / "ci" / "secured-values.yaml"))
    config_text = only(objects, "ConfigMap")["data"]["worker.yaml"]
    assert "password" not in config_text and "user.info" not in config_text
    config = load_pod_config(objects, tmp_path)
    for role in ("consumer", "producer"):
        settings = config.kafka.client_settings(role)
        assert settings["sasl.username"] == "kafka-sasl/username"
        assert settings["sasl.password"] == "kafka-sasl/password"
        assert settings["security.protocol"] == "SASL_SSL"
        assert settings["sasl.mechanism"] == "SCRAM-SHA-512"
        assert Path(settings["ssl.ca.location"]).is_file()
    assert config.registry.client["basic.auth.user.info"] == "user:schema-registry/user-info"
    assert config.batch.max_messages == 128  # extraEnv reaches the worker
    # KEDA reads the lag with the same credentials.
    auth = only(objects, "TriggerAuthentication")
    assert {(ref["parameter"], ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]
            } == {("username", "kafka-sasl", "username"), ("password", "kafka-sasl", "password"),
                  ("ca", "kafka-ca", "ca.crt")}
    trigger = only(objects, "ScaledObject")["spec"]["triggers"][0]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert (trigger["metadata"]["sasl"], trigger["metadata"]["tls"]) == ("scram_sha512", "enable")
    assert trigger["metadata"]["topic"] == "ztf-alerts-programid1"


# Each rule: arguments that break it, and the part of the message that names the value.
BROKEN_RULES = {
    "keda above the partitions": (
        ["--set", "keda.enabled=true", "--set", "inputPartitions=4",
         "--set", "keda.maxReplicaCount=5"],
        "keda.maxReplicaCount (5) is above inputPartitions (4)"),
    "keda without the partition count": (
        ["--set", "keda.enabled=true"], "keda.enabled needs inputPartitions"),
    "keda on a pattern without a topic": (
        ["--set", "keda.enabled=true", "--set", "inputPartitions=4",
         "--set", "config.topics.input=^ztf_.*$"], "keda.topic is needed"),
    "replicas above the partitions": (
        ["--set", "replicaCount=5", "--set", "inputPartitions=4"],
        "replicaCount (5) is above inputPartitions (4)"),
    "grace period at the drain limit": (
        ["--set", "terminationGracePeriodSeconds=30"],
        "terminationGracePeriodSeconds is 30, less than config.shutdown_timeout_s (30 s)"),
    "grace period below a longer drain": (
        ["--set", "config.shutdown_timeout_s=120", "--set", "terminationGracePeriodSeconds=90"],
        "raise it to at least 135"),
    "two processes per pod": (
        ["--set", "config.processes=2"], "config.processes is 2"),
    "a shared instance id": (
        ["--set", "config.instance_id=worker"], "config.instance_id is set"),
    "a password in the ConfigMap": (
        ["--set", "config.kafka.consumer.sasl\\.password=hunter2"],
        'config.kafka.consumer["sasl.password"] is a secret'),
    "a password in kafka.common": (
        ["--set", "config.kafka.common.sasl\\.password=hunter2"],
        'config.kafka.common["sasl.password"] is a secret'),
    "registry credentials in the ConfigMap": (
        ["--set", "config.registry.url=http://registry:8081",
         "--set", "config.registry.client.basic\\.auth\\.user\\.info=u:p"],
        'config.registry.client["basic.auth.user.info"] is a secret'),
    "metrics off": (
        ["--set", "config.metrics.port=0"], "config.metrics.port is 0"),
    "metrics on loopback": (
        ["--set", "config.metrics.host=127.0.0.1"], "config.metrics.host is 127.0.0.1"),
    "SASL without its Secret": (
        ["--set", "kafkaAuth.sasl.enabled=true"], "kafkaAuth.sasl.enabled needs"),
}


@pytest.mark.parametrize("case", list(BROKEN_RULES))
def test_broken_rules_fail_rendering_with_one_line(helm: str, case: str) -> None:
    args, message = BROKEN_RULES[case]
    error = render_error(helm, *args)
    assert message in error
    lines = [line for line in error.splitlines() if "stamp-worker:" in line]
    assert len(lines) == 1, error


@pytest.mark.parametrize("args", [
    # The limits themselves are allowed.
    ["--set", "keda.enabled=true", "--set", "inputPartitions=4",
     "--set", "keda.maxReplicaCount=4"],
    ["--set", "replicaCount=4", "--set", "inputPartitions=4"],
    ["--set", "terminationGracePeriodSeconds=45"],
    ["--set", "config.shutdown_timeout_s=120"],  # the grace period follows: 135 s
    ["--set", "config.processes=1"],
], ids=["keda-at-partitions", "replicas-at-partitions", "grace-at-drain-plus-margin",
        "grace-follows-drain", "one-process"])
def test_rules_allow_their_limits(helm: str, args: list[str]) -> None:
    objects = render(helm, *args)
    grace = workload(objects)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 45


def test_chart_app_version_is_the_workers_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    version = re.search(r'^version = "([^"]+)"', project, re.MULTILINE)
    assert version is not None
    assert chart["appVersion"] == version.group(1)
