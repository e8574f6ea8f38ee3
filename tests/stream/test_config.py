"""worker.stream.config: defaults, the YAML file, environment overrides, validation, redaction."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml

from worker.prepare.stamps import PreprocessConfig
from worker.stream.config import (
    BUNDLED_MODEL_BASELINE,
    REDACTED,
    AsteroidPolicy,
    BatchConfig,
    ConfigError,
    DriftConfig,
    KafkaConfig,
    MetricsConfig,
    RegistryConfig,
    TopicsConfig,
    WorkerConfig,
    default_config,
    load_config,
    to_dict,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "worker.example.yaml"

# The smallest valid file: the keys without defaults.
MINIMAL: dict[str, Any] = {
    "kafka": {"bootstrap_servers": "k1:9092"},
    "topics": {"input": "alerts", "output": "labels", "dead_letter": "dead"},
}
# The same, from the environment only.
MINIMAL_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "k1:9092",
    "STAMP_WORKER__TOPICS__INPUT": "alerts",
    "STAMP_WORKER__TOPICS__OUTPUT": "labels",
    "STAMP_WORKER__TOPICS__DEAD_LETTER": "dead",
}


def write(path: Path, data: dict[str, Any] | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``change`` written over it, section by section."""
    out = copy.deepcopy(base)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def load_error(tmp_path: Path, change: dict[str, Any] | None = None,
               env: dict[str, str] | None = None, base: dict[str, Any] = MINIMAL) -> str:
    path = write(tmp_path / "worker.yaml", merged(base, change or {}))
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return str(info.value)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "v1"
    path.mkdir(parents=True)
    return path


# ------------------------------------------------------------------------- defaults

def test_defaults_of_the_sections() -> None:
    assert BatchConfig() == BatchConfig(max_messages=256, max_wait_ms=50)
    assert MetricsConfig() == MetricsConfig(host="127.0.0.1", port=9108)
    assert AsteroidPolicy() == AsteroidPolicy(enabled=False, max_ssdistnr_arcsec=5.0,
                                              max_ssmagnr=None)
    assert RegistryConfig().url is None and dict(RegistryConfig().client) == {}


def test_default_config_is_the_demo_default() -> None:
    config = default_config()
    assert config.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert config.topics.input == ("ztf-alerts",)
    assert config.topics.output != config.topics.dead_letter
    assert config.group_id == "stamp-classifier"
    assert config.batch == BatchConfig()
    assert config.preprocessing == PreprocessConfig()
    assert config.model_path is None  # the bundled model
    assert config.exactly_once is False and config.shutdown_timeout_s == 30.0
    assert default_config("broker:29092").kafka.bootstrap_servers == "broker:29092"
    with pytest.raises(ConfigError, match="kafka.bootstrap_servers"):
        default_config("no-port")


def test_minimal_file_takes_every_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "w.yaml", MINIMAL), env={})
    assert config == WorkerConfig(kafka=KafkaConfig("k1:9092"),
                                  topics=TopicsConfig(("alerts",), "labels", "dead"))


def test_no_file_means_defaults_and_environment() -> None:
    config = load_config(None, env=MINIMAL_ENV)
    assert config.kafka.bootstrap_servers == "k1:9092"
    assert config.topics == TopicsConfig(("alerts",), "labels", "dead")
    assert config.batch == BatchConfig()


def test_nothing_given_lists_every_required_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={})
    message = str(info.value)
    for key in ("kafka.bootstrap_servers", "topics.input", "topics.output",
                "topics.dead_letter"):
        assert key in message
    assert "KAFKA_BOOTSTRAP_SERVERS" in message and "STAMP_WORKER__TOPICS__INPUT" in message
    assert len(info.value.problems) == 4


def test_empty_file_is_allowed(tmp_path: Path) -> None:
    assert load_config(write(tmp_path / "w.yaml", ""), env=MINIMAL_ENV).group_id \
        == "stamp-classifier"


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path / "w.yaml", merged(MINIMAL, {"group_id": "from-file"}))
    assert load_config(env={"STAMP_WORKER_CONFIG": str(path)}).group_id == "from-file"
    other = write(tmp_path / "other.yaml", merged(MINIMAL, {"group_id": "explicit"}))
    assert load_config(other, env={"STAMP_WORKER_CONFIG": str(path)}).group_id == "explicit"


# ------------------------------------------------------------------------ full file

FULL_YAML = """\
kafka:
  bootstrap_servers: "k1:9092, k2:9093,[::1]:9094,SSL://k3:9095"
  consumer:
    security.protocol: SASL_SSL
    sasl.mechanism: SCRAM-SHA-512
    sasl.username: classifier
    sasl.password: 0123          # YAML 1.2: stays the string "0123"
    session.timeout.ms: 10000
    enable.auto.commit: false    # allowed (the worker's own value)
  producer:
    linger.ms: 20
    compression.type: zstd
    enable.idempotence: true
topics:
  input: ["^ztf_2024.*_programid1$", replay]
  output: no                     # YAML 1.2: the topic "no", not False
  dead_letter: stamp.dead-letter_v1
group_id: labels-v2
batch:
  max_messages: 1000
  max_wait_ms: 50
preprocessing:
  crop_size: 31
  non_square: reject
model_path: models/v1            # relative to this file
metrics:
  host: 0.0.0.0
  port: 0
asteroid_policy:
  enabled: true
  max_ssdistnr_arcsec: 3         # an integer is a number
  max_ssmagnr: 20.5
registry:
  url: https://reader:s3cret@registry:8081
  client:
    timeout: 5
    max.retries: 1
exactly_once: true
shutdown_timeout_s: 12.5
"""


def test_full_file(tmp_path: Path, model_dir: Path) -> None:
    config = load_config(write(tmp_path / "w.yaml", FULL_YAML), env={})
    assert config.kafka.bootstrap_servers == "k1:9092,k2:9093,[::1]:9094,SSL://k3:9095"
    assert dict(config.kafka.consumer) == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "classifier", "sasl.password": "0123",
        "session.timeout.ms": 10000, "enable.auto.commit": False}
    assert dict(config.kafka.producer) == {"linger.ms": 20, "compression.type": "zstd",
                                           "enable.idempotence": True}
    assert config.topics == TopicsConfig(("^ztf_2024.*_programid1$", "replay"), "no",
                                         "stamp.dead-letter_v1")
    assert config.group_id == "labels-v2"
    assert config.batch == BatchConfig(1000, 50)
    assert config.preprocessing == PreprocessConfig(crop_size=31, non_square="reject")
    assert config.model_path == model_dir
    assert config.metrics == MetricsConfig("0.0.0.0", 0)
    assert config.asteroid_policy == AsteroidPolicy(True, 3.0, 20.5)
    assert isinstance(config.asteroid_policy.max_ssdistnr_arcsec, float)
    assert config.registry.url == "https://reader:s3cret@registry:8081"
    assert dict(config.registry.client) == {"timeout": 5, "max.retries": 1}
    assert config.exactly_once is True
    assert config.shutdown_timeout_s == 12.5


def test_example_file_loads_and_documents_every_key() -> None:
    config = load_config(EXAMPLE, env={})
    assert config.topics.input == ("ztf-alerts",)
    assert config.batch == BatchConfig() and config.metrics == MetricsConfig()
    tree = yaml.safe_load(EXAMPLE.read_text())
    assert list(tree) == [f.name for f in dataclasses.fields(WorkerConfig)]
    sections = {"kafka": KafkaConfig, "topics": TopicsConfig, "batch": BatchConfig,
                "metrics": MetricsConfig, "asteroid_policy": AsteroidPolicy,
                "registry": RegistryConfig, "drift": DriftConfig}
    assert config.drift == DriftConfig()  # the example shows the defaults
    for name, cls in sections.items():
        assert list(tree[name]) == [f.name for f in dataclasses.fields(cls)], name
    assert list(tree["preprocessing"]) == ["crop_size", "non_square"]


def test_to_dict_loads_back_into_an_equal_config(tmp_path: Path, model_dir: Path) -> None:
    # Without the secrets, which to_dict redacts (SASL/OAUTHBEARER needs none here).
    config = load_config(write(tmp_path / "w.yaml", FULL_YAML.replace(
        "sasl.password: 0123", "sasl.oauthbearer.method: default").replace(
        "SCRAM-SHA-512", "OAUTHBEARER").replace("sasl.username: classifier", "").replace(
        "reader:s3cret@", "")), env={})
    again = load_config(write(tmp_path / "again.yaml", to_dict(config)), env={})
    assert again == config


# ------------------------------------------------------------------- environment

def test_environment_overrides_the_file_with_typed_values(tmp_path: Path) -> None:
    path = write(tmp_path / "w.yaml", merged(MINIMAL, {
        "batch": {"max_messages": 10}, "asteroid_policy": {"enabled": True},
        "kafka": {"consumer": {"session.timeout.ms": 45000}}}))
    config = load_config(path, env={
        "STAMP_WORKER__BATCH__MAX_MESSAGES": "100",
        "STAMP_WORKER__ASTEROID_POLICY__ENABLED": "false",
        "STAMP_WORKER__ASTEROID_POLICY__MAX_SSDISTNR_ARCSEC": "2.5",
        "STAMP_WORKER__ASTEROID_POLICY__MAX_SSMAGNR": "1e1",
        "STAMP_WORKER__SHUTDOWN_TIMEOUT_S": "5",
        "STAMP_WORKER__EXACTLY_ONCE": "TRUE",
        "STAMP_WORKER__KAFKA__CONSUMER__SESSION.TIMEOUT.MS": "10000",
        "STAMP_WORKER__KAFKA__CONSUMER__MAX_POLL_INTERVAL_MS": "600000",  # '_' for '.'
        "STAMP_WORKER__KAFKA__PRODUCER__ENABLE.IDEMPOTENCE": "true",
        "STAMP_WORKER__KAFKA__CONSUMER__SASL.PASSWORD": "0123",
        "STAMP_WORKER__TOPICS__INPUT": "a, b",
        "STAMP_WORKER__GROUP_ID": "123",
        "STAMP_WORKER__PREPROCESSING__CROP_SIZE": "15",
    })
    assert config.batch.max_messages == 100
    assert config.asteroid_policy == AsteroidPolicy(False, 2.5, 10.0)
    assert config.shutdown_timeout_s == 5.0 and config.exactly_once is True
    assert config.kafka.consumer["session.timeout.ms"] == 10000
    assert config.kafka.consumer["max.poll.interval.ms"] == 600000
    assert config.kafka.producer["enable.idempotence"] is True
    # Text that is not a lossless number stays text; a string key keeps it verbatim.
    assert config.kafka.consumer["sasl.password"] == "0123"
    assert config.group_id == "123"
    assert config.topics.input == ("a", "b")
    assert config.preprocessing.crop_size == 15


def test_environment_names_are_case_insensitive() -> None:
    config = load_config(None, env={**MINIMAL_ENV, "stamp_worker__Batch__Max_Wait_MS": "7"})
    assert config.batch.max_wait_ms == 7


def test_bootstrap_servers_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path / "w.yaml", MINIMAL)
    assert load_config(path, env={"KAFKA_BOOTSTRAP_SERVERS": "env:1"}) \
        .kafka.bootstrap_servers == "env:1"
    # The worker's own variable is more specific than the conventional one.
    both = {"KAFKA_BOOTSTRAP_SERVERS": "env:1", "STAMP_WORKER__KAFKA__BOOTSTRAP_SERVERS": "w:2"}
    assert load_config(path, env=both).kafka.bootstrap_servers == "w:2"
    # An empty variable (compose files leave them) counts as unset.
    assert load_config(path, env={"KAFKA_BOOTSTRAP_SERVERS": ""}) \
        .kafka.bootstrap_servers == "k1:9092"


def test_empty_or_null_environment_value_restores_optional_defaults(tmp_path: Path,
                                                                    model_dir: Path) -> None:
    path = write(tmp_path / "w.yaml", merged(MINIMAL, {
        "model_path": str(model_dir), "registry": {"url": "http://r:8081"}}))
    config = load_config(path, env={"STAMP_WORKER__MODEL_PATH": "",
                                    "STAMP_WORKER__REGISTRY__URL": "null"})
    assert config.model_path is None and config.registry.url is None


def test_instance_id_from_the_environment_as_kubernetes_sets_it(tmp_path: Path) -> None:
    path = write(tmp_path / "w.yaml", MINIMAL)
    assert load_config(path, env={}).instance_id is None  # dynamic membership
    pod = {"STAMP_WORKER__INSTANCE_ID": "stamp-worker-0"}
    assert load_config(path, env=pod).instance_id == "stamp-worker-0"
    # A number stays the text it was; an empty value (an unset field ref) means none.
    assert load_config(path, env={"STAMP_WORKER__INSTANCE_ID": "007"}).instance_id == "007"
    assert load_config(path, env={"STAMP_WORKER__INSTANCE_ID": ""}).instance_id is None
    message = load_error(tmp_path, env={"STAMP_WORKER__INSTANCE_ID": "pod 0"})
    assert "instance_id (from STAMP_WORKER__INSTANCE_ID): 'pod 0' is not a Kafka " \
           "group.instance.id" in message


def test_environment_never_reads_yaml_1_1_booleans() -> None:
    config = load_config(None, env={**MINIMAL_ENV, "STAMP_WORKER__TOPICS__OUTPUT": "no"})
    assert config.topics.output == "no"
    with pytest.raises(ConfigError, match="asteroid_policy.enabled"):
        load_config(None, env={**MINIMAL_ENV, "STAMP_WORKER__ASTEROID_POLICY__ENABLED": "yes"})


# -------------------------------------------------------------------- validation
# Each case: a change to the minimal file, the key path the message must name, and a
# fragment of what it must say.

INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    ("typo at the top", {"bacth": {"max_messages": 1}}, "bacth", "did you mean 'batch'"),
    ("typo in a section", {"batch": {"max_mesages": 1}}, "batch.max_mesages",
     "did you mean 'max_messages'"),
    ("section not a mapping", {"batch": 5}, "batch", "expected a mapping"),
    ("string for an integer", {"batch": {"max_messages": "many"}}, "batch.max_messages",
     "got string 'many'"),
    ("boolean for an integer", {"batch": {"max_messages": True}}, "batch.max_messages",
     "got boolean true"),
    ("zero batch", {"batch": {"max_messages": 0}}, "batch.max_messages", "from 1 to 1000000"),
    ("batch above consume()'s limit", {"batch": {"max_messages": 1_000_001}},
     "batch.max_messages", "from 1 to 1000000"),
    ("zero wait", {"batch": {"max_wait_ms": 0}}, "batch.max_wait_ms", "[ms]"),
    ("wait beyond one consume() call", {"batch": {"max_wait_ms": 1500}}, "batch.max_wait_ms",
     "from 1 to 1000 [ms]"),
    ("no input topic", {"topics": {"input": []}}, "topics.input", "at least one topic"),
    ("empty name in the input list", {"topics": {"input": "a,,b"}}, "topics.input",
     "empty topic name"),
    ("input listed twice", {"topics": {"input": ["a", "a"]}}, "topics.input", "twice"),
    ("bad topic name", {"topics": {"output": "my labels"}}, "topics.output",
     "not a Kafka topic name"),
    ("bad input pattern", {"topics": {"input": "^ztf_("}}, "topics.input",
     "not a valid regular expression"),
    ("output equals dead letter", {"topics": {"dead_letter": "labels"}}, "topics.dead_letter",
     "same topic as topics.output"),
    ("output consumed", {"topics": {"input": ["alerts", "labels"]}}, "topics.output",
     "also consumed"),
    ("dead letter matched by a pattern", {"topics": {"input": "^de"}}, "topics.dead_letter",
     "also consumed"),
    ("number as a topic", {"topics": {"output": 42}}, "topics.output", "quote it"),
    ("bootstrap without port", {"kafka": {"bootstrap_servers": "localhost"}},
     "kafka.bootstrap_servers", "not host:port"),
    ("bootstrap port out of range", {"kafka": {"bootstrap_servers": "k:99999"}},
     "kafka.bootstrap_servers", "not host:port"),
    ("metrics port negative", {"metrics": {"port": -1}}, "metrics.port", "from 0 to 65535"),
    ("metrics port too large", {"metrics": {"port": 65536}}, "metrics.port", "from 0 to 65535"),
    ("empty metrics host", {"metrics": {"host": " "}}, "metrics.host", "must not be empty"),
    ("crop too large (PreprocessConfig)", {"preprocessing": {"crop_size": 64}},
     "preprocessing.crop_size", "stamp_size=63"),
    ("crop zero (PreprocessConfig)", {"preprocessing": {"crop_size": 0}},
     "preprocessing.crop_size", "got 0"),
    ("crop not an integer", {"preprocessing": {"crop_size": "21px"}}, "preprocessing.crop_size",
     "expected an integer"),
    ("bad non-square policy", {"preprocessing": {"non_square": "pda"}},
     "preprocessing.non_square", "'pad' or 'reject'"),
    ("stamp size is not configurable", {"preprocessing": {"stamp_size": 51}},
     "preprocessing.stamp_size", "unknown key"),
    ("auto commit on", {"kafka": {"consumer": {"enable.auto.commit": True}}},
     'kafka.consumer["enable.auto.commit"]', "must not be true"),
    ("auto commit on, as text", {"kafka": {"consumer": {"enable.auto.commit": "True"}}},
     'kafka.consumer["enable.auto.commit"]', "must not be true"),
    ("auto commit on, old name", {"kafka": {"consumer": {"auto.commit.enable": 1}}},
     'kafka.consumer["auto.commit.enable"]', "must not be true"),
    ("group id in librdkafka", {"kafka": {"consumer": {"group.id": "x"}}},
     'kafka.consumer["group.id"]', "set that key instead"),
    ("brokers in librdkafka", {"kafka": {"producer": {"bootstrap.servers": "k:1"}}},
     'kafka.producer["bootstrap.servers"]', "kafka.bootstrap_servers"),
    ("transactional id", {"kafka": {"producer": {"transactional.id": "t"}}},
     'kafka.producer["transactional.id"]', "exactly_once"),
    ("group instance id in librdkafka", {"kafka": {"consumer": {"group.instance.id": "p"}}},
     'kafka.consumer["group.instance.id"]', "from instance_id"),
    ("instance id with a slash", {"instance_id": "pod/0"}, "instance_id",
     "not a Kafka group.instance.id"),
    ("instance id too long", {"instance_id": "p" * 250}, "instance_id", "at most 249"),
    ("instance id empty", {"instance_id": " "}, "instance_id", "must not be empty"),
    ("instance id as a number", {"instance_id": 7}, "instance_id", "quote it in YAML"),
    ("instance id too long for its processes", {"instance_id": "p" * 248, "processes": 2},
     "instance_id", "'<instance_id>-1', is longer than 249"),
    ("list as a librdkafka value", {"kafka": {"consumer": {"debug": ["a", "b"]}}},
     "kafka.consumer.debug", "string, number or boolean"),
    ("null as a librdkafka value", {"kafka": {"producer": {"acks": None}}},
     "kafka.producer.acks", "got null"),
    ("upper-case librdkafka name", {"kafka": {"consumer": {"Session.Timeout.Ms": 1}}},
     'kafka.consumer["Session.Timeout.Ms"]', "did you mean 'session.timeout.ms'"),
    ("negative distance", {"asteroid_policy": {"max_ssdistnr_arcsec": -1}},
     "asteroid_policy.max_ssdistnr_arcsec", "positive number [arcsec]"),
    ("YAML 1.1 boolean", {"asteroid_policy": {"enabled": "yes"}}, "asteroid_policy.enabled",
     "expected true or false"),
    ("magnitude as text", {"asteroid_policy": {"max_ssmagnr": "faint"}},
     "asteroid_policy.max_ssmagnr", "number or null [mag]"),
    ("registry URL scheme", {"registry": {"url": "ftp://r:21"}}, "registry.url",
     "not an http(s) URL"),
    ("registry client without URL", {"registry": {"client": {"timeout": 5}}},
     "registry.client", "registry.url is not"),
    ("registry client property unknown",
     {"registry": {"url": "http://r:8081", "client": {"timeout": 5, "retries": 3}}},
     "registry.client", "Unrecognized properties: retries"),
    ("registry url in the client", {"registry": {"client": {"url": "http://r:1"}}},
     "registry.client.url", "set registry.url"),
    ("exactly once without idempotence",
     {"exactly_once": True, "kafka": {"producer": {"enable.idempotence": False}}},
     'kafka.producer["enable.idempotence"]', "idempotent producer"),
    ("exactly once as text", {"exactly_once": "on"}, "exactly_once", "true or false"),
    ("zero shutdown timeout", {"shutdown_timeout_s": 0}, "shutdown_timeout_s",
     "positive number [s]"),
    ("group id as a number", {"group_id": 123}, "group_id", "quote it in YAML"),
    ("model path missing", {"model_path": "/no/such/model"}, "model_path", "does not exist"),
    ("zero processes", {"processes": 0}, "processes", "from 1 to 64"),
    ("unknown model backend", {"model_backend": "torch"}, "model_backend",
     "one of auto, onnx, onnx-int8, keras, jax"),
    ("unknown model device", {"model_device": "tpu"}, "model_device",
     "one of cpu, gpu, cuda, auto"),
    ("gpu asked of the keras backend", {"model_backend": "keras", "model_device": "gpu"},
     "model_device", "served by model_backend onnx or jax, not keras"),
    ("cuda asked of the 8-bit model", {"model_backend": "onnx-int8", "model_device": "cuda"},
     "model_device", "served by model_backend onnx or jax, not onnx-int8"),
    ("memory fraction above one", {"model_backend": "jax", "model_memory_fraction": 1.5},
     "model_memory_fraction", "a number > 0 and ≤ 1 or null, got 1.5"),
    ("memory fraction zero", {"model_backend": "jax", "model_memory_fraction": 0},
     "model_memory_fraction", "a number > 0 and ≤ 1 or null, got 0"),
    ("memory fraction as text", {"model_backend": "jax", "model_memory_fraction": "half"},
     "model_memory_fraction", "got string 'half'"),
    ("memory fraction without jax", {"model_backend": "onnx", "model_memory_fraction": 0.5},
     "model_memory_fraction", "model_backend jax only, not onnx"),
    ("memory fractions past the GPU",
     {"model_backend": "jax", "model_memory_fraction": 0.3, "processes": 4},
     "model_memory_fraction", "4 processes × 0.3 of the GPU's memory is more than all of it; "
     "use at most 0.25"),
    ("negative model threads", {"model_threads": -1}, "model_threads", "from 0 to 256"),
    ("processes as text", {"processes": "two"}, "processes", "got string 'two'"),
    ("metrics ports past 65535", {"processes": 4, "metrics": {"port": 65534}}, "processes",
     "ports 65534 to 65537, past 65535"),
    ("drift baseline without most classes", {"drift": {"baseline": {"AGN": 1.0}}},
     "drift.baseline", "no share for SN, VS, asteroid, bogus"),
    ("drift baseline class in the wrong case",
     {"drift": {"baseline": {"agn": 0.2, "SN": 0.2, "VS": 0.2, "asteroid": 0.2, "bogus": 0.2}}},
     "drift.baseline", "unknown class 'agn'; did you mean 'AGN'?"),
    ("drift baseline not summing to 1",
     {"drift": {"baseline": {"AGN": 0.5, "SN": 0.2, "VS": 0.2, "asteroid": 0.2, "bogus": 0.2}}},
     "drift.baseline", "the shares sum to 1.3, not 1"),
    ("drift share as text",
     {"drift": {"baseline": {"AGN": 0.2, "SN": "a fifth", "VS": 0.2, "asteroid": 0.2,
                             "bogus": 0.2}}},
     "drift.baseline", "SN: expected a share from 0 to 1, got string 'a fifth'"),
    ("drift baseline as a list", {"drift": {"baseline": [0.2] * 5}}, "drift.baseline",
     "expected a mapping of class: share"),
    ("drift distance above 1", {"drift": {"max_distance": 1.5}}, "drift.max_distance",
     "a total variation distance > 0 and <= 1, got 1.5"),
]


@pytest.mark.parametrize(("change", "key", "fragment"), [case[1:] for case in INVALID],
                         ids=[case[0] for case in INVALID])
def test_invalid_values_name_their_key(tmp_path: Path, change: dict[str, Any], key: str,
                                       fragment: str) -> None:
    message = load_error(tmp_path, change)
    assert f"{key}: " in message or f"{key} (from" in message, message
    assert fragment in message, message
    assert str(tmp_path / "worker.yaml") in message  # the file is named


def test_drift_defaults_to_the_bundled_models_shares_and_reads_the_environment() -> None:
    config = load_config(None, env=MINIMAL_ENV)
    assert config.drift.baseline == BUNDLED_MODEL_BASELINE
    assert sum(BUNDLED_MODEL_BASELINE.values()) == pytest.approx(1.0)
    config = load_config(None, env={
        **MINIMAL_ENV, "STAMP_WORKER__DRIFT__MAX_DISTANCE": "0.3",
        "STAMP_WORKER__DRIFT__BASELINE": "AGN=0.1, SN=0.3,VS=0.4,asteroid=0.1,bogus=.1"})
    assert dict(config.drift.baseline) == {"AGN": 0.1, "SN": 0.3, "VS": 0.4,
                                           "asteroid": 0.1, "bogus": 0.1}
    assert config.drift.max_distance == 0.3
    assert pickle.loads(pickle.dumps(config)) == config
    with pytest.raises(TypeError):
        config.drift.baseline["SN"] = 1.0  # type: ignore[index]


@pytest.mark.parametrize(("env", "fragment"), [
    ({"STAMP_WORKER__DRIFT__BASELINE": "AGN:0.2"},
     "drift.baseline (from STAMP_WORKER__DRIFT__BASELINE): expected CLASS=SHARE pairs"),
    ({"STAMP_WORKER__DRIFT__BASELINE__SN": "0.2"},
     "drift.baseline is one value, not a section; use STAMP_WORKER__DRIFT__BASELINE"),
])
def test_drift_baseline_from_the_environment_in_the_wrong_form(env: dict[str, str],
                                                               fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={**MINIMAL_ENV, **env})
    assert fragment in str(info.value)


def test_missing_required_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, base={"kafka": {"bootstrap_servers": "k:1"},
                                         "topics": {"input": "a", "output": "b"}})
    assert "topics.dead_letter: required" in message


def test_model_backend_defaults_to_auto_and_comes_from_the_environment(tmp_path: Path
                                                                     ) -> None:
    config = load_config(write(tmp_path / "worker.yaml", MINIMAL), env={})
    assert (config.model_backend, config.model_device, config.model_threads) == ("auto", "cpu", 0)
    config = load_config(write(tmp_path / "worker.yaml", MINIMAL),
                         env={"STAMP_WORKER__MODEL_BACKEND": "keras",
                              "STAMP_WORKER__MODEL_THREADS": "1"})
    assert (config.model_backend, config.model_threads) == ("keras", 1)


def test_jax_backend_keys(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "worker.yaml", MINIMAL), env={})
    assert config.model_memory_fraction is None
    config = load_config(write(tmp_path / "worker.yaml", merged(MINIMAL, {
        "model_backend": "jax", "model_device": "gpu", "model_memory_fraction": 0.25,
        "processes": 4})), env={})
    assert (config.model_backend, config.model_device, config.model_memory_fraction,
            config.processes) == ("jax", "gpu", 0.25, 4)
    assert isinstance(config.model_memory_fraction, float)
    config = load_config(write(tmp_path / "worker.yaml", MINIMAL),
                         env={"STAMP_WORKER__MODEL_BACKEND": "jax",
                              "STAMP_WORKER__MODEL_DEVICE": "auto",
                              "STAMP_WORKER__MODEL_MEMORY_FRACTION": "0.5"})
    assert (config.model_backend, config.model_device, config.model_memory_fraction) == (
        "jax", "auto", 0.5)
    # An environment override can take the fraction away again (null: nothing reserved).
    config = load_config(write(tmp_path / "worker.yaml", merged(MINIMAL, {
        "model_backend": "jax", "model_memory_fraction": 0.5})),
        env={"STAMP_WORKER__MODEL_MEMORY_FRACTION": "null"})
    assert config.model_memory_fraction is None


def test_model_path_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "model.keras").write_text("")
    message = load_error(tmp_path, {"model_path": "model.keras"})
    assert "model_path: " in message and "is not a directory" in message


def test_relative_model_path_is_relative_to_the_file(tmp_path: Path, model_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(model_dir)  # elsewhere than the file's folder
    config = load_config(write(tmp_path / "w.yaml", merged(MINIMAL, {
        "model_path": "models/v1"})), env={})
    assert config.model_path == model_dir


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    message = load_error(tmp_path, {"batch": {"max_messages": 0, "max_wait_ms": "x"},
                                    "metrics": {"port": 1e9}, "group_id": ""})
    assert "4 problems" in message
    for key in ("batch.max_messages", "batch.max_wait_ms", "metrics.port", "group_id"):
        assert f"{key}: " in message


def test_environment_problems_name_the_variable(tmp_path: Path) -> None:
    message = load_error(tmp_path, env={
        "STAMP_WORKER__BATCH__MAX_MESAGES": "1",
        "STAMP_WORKER__BACH__MAX_MESSAGES": "1",
        "STAMP_WORKER__BATCH": "1",
        "STAMP_WORKER__GROUP_ID__X": "1",
        "STAMP_WORKER__KAFKA__CONSUMER": "1",
        "STAMP_WORKER__METRICS__PORT": "http",
    })
    assert ("STAMP_WORKER__BATCH__MAX_MESAGES: unknown key batch.max_mesages; did you mean "
            "'max_messages'?") in message
    assert "STAMP_WORKER__BACH__MAX_MESSAGES: unknown key 'bach'; did you mean 'batch'?" \
        in message
    assert "STAMP_WORKER__BATCH: batch is a section" in message
    assert "STAMP_WORKER__GROUP_ID__X: group_id is one value" in message
    assert "STAMP_WORKER__KAFKA__CONSUMER: kafka.consumer takes one property" in message
    assert ("metrics.port (from STAMP_WORKER__METRICS__PORT): expected an integer from 0 to "
            "65535, got string 'http'") in message


def test_two_variables_for_one_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, env={
        "STAMP_WORKER__KAFKA__CONSUMER__SESSION.TIMEOUT.MS": "1",
        "STAMP_WORKER__KAFKA__CONSUMER__SESSION_TIMEOUT_MS": "2"})
    assert 'kafka.consumer["session.timeout.ms"]' in message and "keep one" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml not found"):
        load_config(tmp_path / "nope.yaml", env={})


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "w.yaml", "kafka:\n  bootstrap_servers: k:1\n   consumer: {}\n")
    with pytest.raises(ConfigError, match=r"w\.yaml, line 3, column 12: not valid YAML"):
        load_config(path, env={})


def test_duplicate_key_is_an_error_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "w.yaml", yaml.safe_dump(MINIMAL) + "batch: {}\nbatch: {}\n")
    with pytest.raises(ConfigError, match=r"line 8, column 1: .*key 'batch' twice"):
        load_config(path, env={})


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(write(tmp_path / "w.yaml", "- kafka\n"), env={})


def test_secret_values_stay_out_of_error_messages(tmp_path: Path) -> None:
    message = load_error(tmp_path, {"kafka": {"consumer": {"sasl.password": ["hunter2"]}}})
    assert 'kafka.consumer["sasl.password"]' in message
    assert "hunter2" not in message and "value hidden" in message


def test_sections_validate_themselves() -> None:
    with pytest.raises(ConfigError, match=r"^batch\.max_messages: "):
        BatchConfig(max_messages=0)
    with pytest.raises(ConfigError, match=r'kafka\.consumer\["group\.id"\]'):
        KafkaConfig("k:1", consumer={"group.id": "g"})
    with pytest.raises(ConfigError, match=r"^kafka: expected a KafkaConfig"):
        WorkerConfig(kafka={"bootstrap_servers": "k:1"},  # type: ignore[arg-type]
                     topics=TopicsConfig(("a",), "b", "c"))


# ---------------------------------------------------------------------- redaction

SECRETS = {
    "sasl.password": "pw-1", "ssl.key.password": "pw-2", "ssl.keystore.password": "pw-3",
    "sasl.oauthbearer.client.secret": "pw-4", "ssl.key.pem": "pw-5",
}


def secret_config() -> WorkerConfig:
    return WorkerConfig(
        kafka=KafkaConfig("k:1", consumer={**SECRETS, "sasl.username": "me"},
                          producer={"sasl.password": "pw-6", "linger.ms": 5}),
        topics=TopicsConfig(("a",), "b", "c"),
        registry=RegistryConfig(url="https://registry:8081",
                                client={"basic.auth.user.info": "user:pw-8",
                                        "proxy": "http://u:pw-9@proxy:3128"}))


def test_to_dict_redacts_secrets() -> None:
    config = secret_config()
    data = to_dict(config)
    # A URL's own credentials (the registry client refuses them with basic.auth.user.info).
    in_url = dataclasses.replace(config, registry=RegistryConfig(
        url="https://reader:pw-7@registry:8081,https://token-pw-7@registry-2:8081"))
    text = (yaml.safe_dump(data) + repr(config) + str(config) + yaml.safe_dump(to_dict(in_url))
            + repr(in_url))
    for i in range(1, 10):
        assert f"pw-{i}" not in text
    assert all(data["kafka"]["consumer"][key] == REDACTED for key in SECRETS)
    assert data["kafka"]["consumer"]["sasl.username"] == "me"  # not a secret
    assert data["kafka"]["producer"] == {"sasl.password": REDACTED, "linger.ms": 5}
    assert to_dict(in_url)["registry"]["url"] == (f"https://reader:{REDACTED}@registry:8081,"
                                                  f"https://{REDACTED}@registry-2:8081")
    assert data["registry"]["client"] == {"basic.auth.user.info": REDACTED,
                                          "proxy": f"http://u:{REDACTED}@proxy:3128"}
    # The configuration itself keeps the real values, for the clients.
    assert config.kafka.consumer["sasl.password"] == "pw-1"
    assert in_url.registry.url.startswith("https://reader:pw-7@registry:8081")


def test_to_dict_is_plain_data() -> None:
    data = to_dict(default_config())
    assert yaml.safe_load(yaml.safe_dump(data)) == data
    assert data["topics"]["input"] == ["ztf-alerts"]
    assert data["preprocessing"] == {"crop_size": 21, "non_square": "pad"}


# ------------------------------------------------------------------------- frozen

def test_config_is_frozen() -> None:
    config = secret_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.group_id = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch.max_messages = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.kafka.consumer = {}  # type: ignore[misc]
    assert isinstance(config.kafka.consumer, MappingProxyType)
    with pytest.raises(TypeError):
        config.kafka.consumer["sasl.password"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        config.registry.client["timeout"] = 1  # type: ignore[index]
    assert isinstance(config.topics.input, tuple)


def test_config_pickles_and_copies() -> None:
    config = secret_config()
    assert pickle.loads(pickle.dumps(config)) == config
    assert copy.deepcopy(config) == config
    error = ConfigError([("batch.max_messages", "expected a positive integer")], "w.yaml")
    again = pickle.loads(pickle.dumps(error))
    assert again.problems == error.problems and str(again) == str(error)


def test_environment_values_are_stored_as_plain_types() -> None:
    config = load_config(None, env={**MINIMAL_ENV, "STAMP_WORKER__GROUP_ID": "g",
                                    "STAMP_WORKER__KAFKA__CONSUMER__CLIENT_ID": "c"})
    assert type(config.group_id) is str and type(config.topics.output) is str
    assert type(config.kafka.consumer["client.id"]) is str


def test_config_does_not_share_the_callers_dicts() -> None:
    consumer = {"session.timeout.ms": 1000}
    config = KafkaConfig("k:1", consumer=consumer)
    consumer["session.timeout.ms"] = 5
    assert config.consumer["session.timeout.ms"] == 1000
    topics = TopicsConfig(["a", "b"], "c", "d")  # type: ignore[arg-type]
    assert topics.input == ("a", "b")


def test_librdkafka_judges_passthrough_names_and_values_with_the_other_problems(
        tmp_path: Path) -> None:
    path = write(tmp_path / "w.yaml", merged(MINIMAL, {
        "batch": {"max_messages": 0},
        "kafka": {"consumer": {"sesion.timeout.ms": 45000, "linger.ms": 5,
                               "session.timeout.ms": "soon"},
                  "producer": {"enable.idempotence": True, "acks": 1}}}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    problems = dict(caught.value.problems)
    assert "librdkafka has no such property" in problems['kafka.consumer["sesion.timeout.ms"]']
    assert "move it to kafka.producer" in problems['kafka.consumer["linger.ms"]']
    assert "Invalid value" in problems['kafka.consumer["session.timeout.ms"]']
    assert "acks" in problems["kafka.producer"]
    assert "batch.max_messages" in problems  # reported together, not one at a time


def test_librdkafka_settings_that_need_each_other_are_judged_together() -> None:
    KafkaConfig("k:1", consumer={"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
                                 "sasl.username": "u", "sasl.password": "p"})
    with pytest.raises(ConfigError, match=r"kafka\.consumer: .*sasl"):
        KafkaConfig("k:1", consumer={"security.protocol": "SASL_SSL",
                                     "sasl.mechanism": "PLAIN"})


def test_connect_timeout_must_be_positive() -> None:
    assert KafkaConfig("k:1").connect_timeout_s == 30.0
    with pytest.raises(ConfigError, match="kafka.connect_timeout_s"):
        KafkaConfig("k:1", connect_timeout_s=0)
