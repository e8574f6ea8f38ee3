"""The configuration's sections: frozen dataclasses that check themselves.

:class:`KafkaConfig`, :class:`TopicsConfig`, :class:`BatchConfig`, ...,
:class:`WorkerConfig`: a configuration built in code is held to the same rules as one
read from a file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from worker.model.artifact import BACKENDS as MODEL_BACKENDS
from worker.model.artifact import CLASS_NAMES
from worker.model.artifact import DEVICES as MODEL_DEVICES
from worker.prepare.stamps import PreprocessConfig
from worker.stream.config.values import (
    _COMMON_OWNED,
    _CONSUMER_OWNED,
    _PRODUCER_OWNED,
    _REGISTRY_OWNED,
    MAX_BATCH_MESSAGES,
    MAX_INSTANCE_ID,
    _boolean,
    _bootstrap_servers,
    _Checks,
    _consumes,
    _EnvText,
    _fail,
    _fraction,
    _got,
    _input_topics,
    _instance,
    _instance_id,
    _integer,
    _librdkafka_bool,
    _model_dir,
    _number,
    _one_of,
    _redacting_repr,
    _registry_url,
    _scalar,
    _text,
    _topic,
    _valid,
)


@dataclass(frozen=True, slots=True, repr=False)
class KafkaConfig:
    """Where the brokers are, and librdkafka settings passed through unchanged.

    Parameters
    ----------
    bootstrap_servers : str
        Comma-separated ``host:port`` list (``kafka-1:9092,kafka-2:9092``).
    connect_timeout_s : float
        How long a command waits at start for the cluster to answer [s] before it stops
        with a message naming the address (librdkafka itself would retry forever).
    consumer, producer : Mapping[str, str | int | float | bool]
        librdkafka properties for the consumer and the producer (``session.timeout.ms``,
        ``linger.ms``...), over those of ``common``. Stored read-only. Not allowed:
        ``bootstrap.servers`` and ``group.id`` (they come from the typed fields),
        ``enable.auto.commit: true`` (the worker commits an offset only once the labels of
        its batch are delivered), ``enable.partition.eof``, ``group.instance.id`` and
        ``transactional.id`` (see ``instance_id`` and ``exactly_once``).  Names and
        values are checked by librdkafka itself when the configuration is loaded, and a
        property of the other client is refused.
    common : Mapping[str, str | int | float | bool]
        librdkafka properties of both clients: how to reach and log in to the cluster
        (``security.protocol``, ``sasl.mechanism``, ``sasl.username``,
        ``sasl.password``, ``ssl.ca.location``...).  A property of one client only is
        refused (it belongs in ``consumer`` or ``producer``), and so are those refused
        there.
    """

    bootstrap_servers: str
    connect_timeout_s: float = 30.0
    consumer: Mapping[str, Any] = field(default_factory=dict)
    producer: Mapping[str, Any] = field(default_factory=dict)
    common: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = _Checks(self, "kafka")
        checks.field("bootstrap_servers", _bootstrap_servers)
        checks.field("connect_timeout_s", _number, positive=True)
        consumer = checks.passthrough("consumer", _CONSUMER_OWNED)
        producer = checks.passthrough("producer", _PRODUCER_OWNED)
        common = checks.passthrough("common", _COMMON_OWNED)
        for section, settings in (("common", common), ("consumer", consumer)):
            if not _valid(settings):
                continue
            # auto.commit.enable is librdkafka's old (topic-level) name for the same thing.
            for key in ("enable.auto.commit", "auto.commit.enable"):
                if key in settings and _librdkafka_bool(settings[key]) is not False:
                    checks.add("must not be true: the worker commits an offset only after "
                               "the labels of its batch are delivered, automatic commits "
                               "would lose alerts on a crash; remove it", section, key)
        # librdkafka itself judges names and values (a typo would otherwise surface as
        # a traceback once the model has loaded); no connection is made. Each client is
        # judged with what it gets, common and its own together (SASL_SSL in common
        # needs sasl.mechanism, wherever it is); a problem is named where it was set.
        from worker.stream.cluster import property_problems

        found: dict[tuple[str, ...], list[str]] = {}  # (section, key, message) → roles
        for role, settings in (("consumer", consumer), ("producer", producer)):
            if _valid(settings, common):
                merged = {**common, **settings}  # type: ignore[dict-item]
                for key, message in property_problems(role, merged):  # type: ignore[arg-type]
                    # Named where it was set; a combination ("" key) is the client's.
                    section = ("" if not key else role if key in settings  # type: ignore[operator]
                               or key not in common else "common")
                    found.setdefault((section, key, message), []).append(role)
        for (section, key, message), roles in found.items():
            if not key:  # refused by both clients: their common part; else the one's
                section = "common" if len(roles) == 2 else roles[0]
            checks.add(message, section, key)
        checks.done()

    def client_settings(self, role: str) -> dict[str, Any]:
        """The librdkafka settings of one client: ``common``, then the client's own.

        Parameters
        ----------
        role : {"consumer", "producer"}
            Which client.

        Returns
        -------
        dict
            A new dict with ``bootstrap.servers``; the caller adds what it owns
            (``group.id``, callbacks).
        """
        own = self.consumer if role == "consumer" else self.producer
        return {**self.common, **own, "bootstrap.servers": self.bootstrap_servers}

    def __repr__(self) -> str:
        return _redacting_repr(self)

    def __reduce__(self) -> tuple[Any, ...]:
        # A mappingproxy cannot be pickled or deep-copied; rebuild from plain dicts.
        return (type(self), (self.bootstrap_servers, self.connect_timeout_s,
                             dict(self.consumer), dict(self.producer), dict(self.common)))


@dataclass(frozen=True, slots=True)
class TopicsConfig:
    """The topics read and written.

    Parameters
    ----------
    input : tuple of str
        Topics to consume (YAML: a name, a comma-separated string or a list). A name
        starting with ``^`` is a regular expression (librdkafka subscribes to every
        matching topic, e.g. ``^ztf_.*_programid1$`` for ZTF's nightly topics).
    output : str
        Topic of the labels.
    dead_letter : str
        Topic of the alerts that cannot be classified, with the reason in headers.
        Must differ from ``output``; neither may be consumed by ``input`` (the worker
        would classify its own output).
    """

    input: tuple[str, ...]
    output: str
    dead_letter: str

    def __post_init__(self) -> None:
        checks = _Checks(self, "topics")
        inputs = checks.field("input", _input_topics)
        output = checks.field("output", _topic)
        dead_letter = checks.field("dead_letter", _topic)
        if _valid(output, dead_letter) and output == dead_letter:
            checks.add(f"is the same topic as topics.output ({output!r}); labels and bad "
                       f"alerts must go to different topics", "dead_letter")
        if _valid(inputs):
            for key, topic in (("output", output), ("dead_letter", dead_letter)):
                pattern = next((p for p in inputs if _valid(topic) and _consumes(p, topic)),
                               None)
                if pattern is not None:
                    checks.add(f"{topic!r} is also consumed (topics.input has {pattern!r}): "
                               f"the worker would read its own output", key)
        checks.done()


MAX_PROCESSES = 64  # worker processes of one `stamp-worker run`
MAX_WAIT_MS = 1000  # one consume() per batch, and SIGTERM seen within a second


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """Micro-batching: consume up to ``max_messages`` messages or for ``max_wait_ms``.

    Parameters
    ----------
    max_messages : int
        Most messages per batch (1 to 1,000,000, confluent-kafka's limit); one batch is
        one model call and one commit.  Larger batches raise latency, not throughput.
    max_wait_ms : int
        Longest wait for a batch to fill [ms], 1 to 1000; bounds the latency added at
        low rates.  At most one second, because one wait is one ``consume()`` call (a
        rebalance may only happen between batches) and SIGTERM is checked between calls.
    decode_processes : int
        Helper processes that decode and preprocess alerts (0 to 64).  0: the worker's
        own process does it.  Decoding is pure Python for a good part, so one process
        cannot use a second core for it; with helpers, chunks of a batch are decoded in
        parallel while the worker runs the model on the chunks already done.
    commit_interval_ms : int
        Least time between two asynchronous offset commits [ms], 0 to 60,000; 0 commits
        after every delivered batch.  Offsets are committed only once the batch's labels
        are delivered, whatever the interval; stopping and rebalancing commit at once.
        A longer interval means fewer commits for the broker to write, and more alerts
        labelled again after a crash (at most this long of stream).
    """

    # Measured (README, End-to-end performance): at 1,000 alerts/s offered, batches of
    # up to 256 and a 50 ms wait keep p99 produce→label latency under 0.5 s; batches of
    # 500 gave 0.6-1.4 s, since an alert waits for its whole batch and the one before
    # it.  The model's CPU time per alert is flat from 64 alerts per call up.
    max_messages: int = 256
    max_wait_ms: int = 50
    decode_processes: int = 0
    commit_interval_ms: int = 1000

    def __post_init__(self) -> None:
        checks = _Checks(self, "batch")
        checks.field("max_messages", _integer, low=1, high=MAX_BATCH_MESSAGES)
        checks.field("max_wait_ms", _integer, low=1, high=MAX_WAIT_MS, unit="ms")
        checks.field("decode_processes", _integer, low=0, high=64)
        checks.field("commit_interval_ms", _integer, low=0, high=60_000, unit="ms")
        checks.done()


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint (``/metrics``, ``/healthz``, ``/readyz``).

    Parameters
    ----------
    host : str
        Address to listen on; ``127.0.0.1`` keeps it local, ``0.0.0.0`` in a container.
    port : int
        TCP port, 0 to 65535; 0 disables the HTTP server.
    """

    host: str = "127.0.0.1"
    port: int = 9108

    def __post_init__(self) -> None:
        checks = _Checks(self, "metrics")
        checks.field("host", _text)
        checks.field("port", _integer, low=0, high=65535)
        checks.done()


@dataclass(frozen=True, slots=True)
class AsteroidPolicy:
    """Label an alert ``asteroid`` without the CNN when ZTF matched a known one.

    ZTF gives the nearest known solar-system object (``ssnamenr``), its distance
    (``ssdistnr`` [arcsec], searched within 30 arcsec, -999 for none) and magnitude
    (``ssmagnr`` [mag]). Off by default: the model's output is then the only label.

    Parameters
    ----------
    enabled : bool
        Apply the rule.
    max_ssdistnr_arcsec : float
        Largest distance to the known object [arcsec], > 0.
    max_ssmagnr : float or None
        Faintest magnitude of the known object [mag]; None: no magnitude cut.
    """

    enabled: bool = False
    max_ssdistnr_arcsec: float = 5.0
    max_ssmagnr: float | None = None

    def __post_init__(self) -> None:
        checks = _Checks(self, "asteroid_policy")
        checks.field("enabled", _boolean)
        checks.field("max_ssdistnr_arcsec", _number, positive=True, unit="arcsec")
        checks.field("max_ssmagnr", _number, optional=True, unit="mag")
        checks.done()


@dataclass(frozen=True, slots=True, repr=False)
class RegistryConfig:
    """The schema registry that Confluent-framed messages name their writer schema in.

    Parameters
    ----------
    url : str or None
        Base URL (``http://registry:8081``; a comma-separated list is tried in turn).
        None: no registry, Confluent-framed messages are dead-lettered.
    client : Mapping[str, str | int | float | bool]
        :class:`confluent_kafka.schema_registry.SchemaRegistryClient` settings
        (``basic.auth.user.info``, ``ssl.ca.location``, ``timeout`` [s]...), checked by
        building a client once. Stored read-only; needs ``url``.
    """

    url: str | None = None
    client: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = _Checks(self, "registry")
        url = checks.field("url", _registry_url)
        client = checks.passthrough("client", _REGISTRY_OWNED)
        if _valid(url, client) and client and url is None:
            checks.add("is set but registry.url is not: set registry.url, or remove "
                       "registry.client", "client")
        elif _valid(url, client) and url is not None and not checks.problems:
            problem = _registry_client_problem(url, client)
            if problem:
                checks.add(problem, "client")
        checks.done()

    def __repr__(self) -> str:
        return _redacting_repr(self)

    def __reduce__(self) -> tuple[Any, ...]:
        # A mappingproxy cannot be pickled or deep-copied; rebuild from a plain dict.
        return (type(self), (self.url, dict(self.client)))


def _registry_client_problem(url: str, client: Mapping[str, Any]) -> str | None:
    """What confluent-kafka's registry client says of these settings (it builds offline)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient  # only with a registry

    try:
        with SchemaRegistryClient({"url": url, **client}):
            pass
    except (ValueError, TypeError) as exc:  # "Unrecognized properties: ...", bad types
        return f"refused by the schema registry client: {exc}"
    except OSError as exc:  # a certificate or key file that cannot be read
        return f"refused by the schema registry client: {exc.strerror or exc}: {exc.filename}"
    return None


BUNDLED_MODEL_BASELINE: Mapping[str, float] = MappingProxyType({
    "AGN": 0.092, "SN": 0.159, "VS": 0.551, "asteroid": 0.062, "bogus": 0.136})
"""Top-class shares of the bundled model (rotinv v2) on the 1656 alerts of the shared
real data that it labels: ``stamp-worker classify ../shared/data -q -o /dev/null``
counts AGN 152, SN 264, VS 912, asteroid 102, bogus 226.  That sample is a mix of test
files and class-selected sets of other brokers, not one night's stream: measure a
normal night and set ``drift.baseline`` from it."""
BASELINE_SUM_TOLERANCE = 0.01
"""How far from 1 the baseline shares may sum (shares rounded to 2-3 decimals)."""


def _baseline(value: Any) -> Mapping[str, float]:
    """Class shares: a mapping with every class name, or ``AGN=0.1,SN=0.2,...`` text."""
    if isinstance(value, _EnvText):
        pairs: dict[str, Any] = {}
        for part in str(value).split(","):
            name, sep, share = part.partition("=")
            if not sep or not name.strip():
                return _fail(f"expected CLASS=SHARE pairs separated by commas "
                             f"(e.g. {CLASS_NAMES[0]}=0.1,{CLASS_NAMES[1]}=0.2,...), got "
                             f"{part.strip()!r}")
            pairs[name.strip()] = _scalar(share)
        value = pairs
    if not isinstance(value, Mapping):
        return _fail(f"expected a mapping of class: share for {', '.join(CLASS_NAMES)}, "
                     f"{_got(value)}")
    problems = []
    for name in value:
        if name not in CLASS_NAMES:
            same = [known for known in CLASS_NAMES if known.lower() == str(name).lower()]
            hint = f"; did you mean {same[0]!r}?" if same else ""
            problems.append(f"unknown class {name!r}{hint}")
    missing = [name for name in CLASS_NAMES if name not in value]
    if missing:
        problems.append(f"no share for {', '.join(missing)}")
    for name in CLASS_NAMES:
        share = value.get(name)
        if name in value and (isinstance(share, bool) or not isinstance(share, (int, float))
                              or not 0 <= share <= 1):
            problems.append(f"{name}: expected a share from 0 to 1, {_got(share)}")
    if problems:
        return _fail("; ".join(problems) + f" (classes: {', '.join(CLASS_NAMES)})")
    total = math.fsum(float(value[name]) for name in CLASS_NAMES)
    if abs(total - 1) > BASELINE_SUM_TOLERANCE:
        return _fail(f"the shares sum to {total:.4g}, not 1 (± {BASELINE_SUM_TOLERANCE:g})")
    return MappingProxyType({name: float(value[name]) for name in CLASS_NAMES})


def _distance(value: Any) -> float | None:
    number = _number(value, positive=True)
    if number is not None and number > 1:
        return _fail(f"expected a total variation distance > 0 and <= 1, got {number:g}")
    return number


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """What the model's predictions should look like, for the drift alert.

    Exported as ``stamp_worker_drift_baseline_share{class}`` and
    ``stamp_worker_drift_max_distance``; the Prometheus rule ``StampWorkerClassDrift``
    compares the shares of top classes predicted over the last hour with them.

    Parameters
    ----------
    baseline : Mapping[str, float]
        Expected share of each top class among the model's predictions, one per class
        of :data:`worker.model.artifact.CLASS_NAMES`, from 0 to 1, summing to 1 (± 0.01).  In
        the environment: ``STAMP_WORKER__DRIFT__BASELINE=AGN=0.1,SN=0.2,...``.  Default:
        :data:`BUNDLED_MODEL_BASELINE`, the bundled model's; set it with any other model.
    max_distance : float
        Largest total variation distance (half the sum of the absolute share
        differences: the fraction of predictions that would have to change class) still
        taken as normal, in (0, 1].
    """

    baseline: Mapping[str, float] = field(default_factory=lambda: BUNDLED_MODEL_BASELINE)
    max_distance: float = 0.2

    def __post_init__(self) -> None:
        checks = _Checks(self, "drift")
        checks.field("baseline", _baseline)
        checks.field("max_distance", _distance)
        checks.done()

    def __reduce__(self) -> tuple[Any, ...]:
        # A mappingproxy cannot be pickled or deep-copied; rebuild from a plain dict.
        return (type(self), (dict(self.baseline), self.max_distance))


_SECTION_TYPES: dict[str, type] = {
    "kafka": KafkaConfig, "topics": TopicsConfig, "batch": BatchConfig,
    "preprocessing": PreprocessConfig, "metrics": MetricsConfig,
    "asteroid_policy": AsteroidPolicy, "registry": RegistryConfig, "drift": DriftConfig}


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything the streaming worker is told; frozen, validated when built.

    Parameters
    ----------
    kafka : KafkaConfig
        Brokers and librdkafka settings.
    topics : TopicsConfig
        Input, output and dead-letter topics.
    group_id : str
        Kafka consumer group; workers sharing it share the partitions.
    instance_id : str or None
        This member's stable identity in the group, e.g. its Kubernetes pod name
        (``STAMP_WORKER__INSTANCE_ID`` from the downward API's ``metadata.name``); with
        ``processes: N`` process *i* uses ``<instance_id>-<i>``.  Set: static membership
        (``group.instance.id``), so a member restarted within ``session.timeout.ms`` takes
        its partitions back at once, without a rebalance; and, with ``exactly_once``, the
        ``transactional.id`` ``<group_id>-<instance_id>``.  A member that stops and is
        not restarted keeps its partitions unread until ``session.timeout.ms`` has
        passed, a clean stop included.  Must be unique among the live members.  None:
        dynamic membership, and with ``exactly_once`` a transactional.id from the host
        name and a slot that no live worker on the host holds.
    batch : BatchConfig
        Micro-batch size [messages] and wait [ms].
    preprocessing : worker.prepare.stamps.PreprocessConfig
        Crop size and non-square policy (YAML keys ``crop_size``, ``non_square``); must
        match the model's manifest.
    model_path : pathlib.Path or None
        Model artifact directory; None: the model bundled with the worker. In a file, a
        relative path is relative to the file's folder.
    model_backend : str
        What runs the model: ``onnx`` (ONNX Runtime on the artifact's ``model.onnx``;
        TensorFlow is never imported: a peak of about 0.4 GB resident per process
        instead of 1.2 GB, ready in about a second), ``keras`` (Keras on TensorFlow),
        ``jax`` (Keras on JAX, on the CPU or a GPU: the worker sets ``KERAS_BACKEND=jax``
        before Keras is imported), ``onnx-int8`` (ONNX Runtime on the artifact's 8-bit
        ``model.int8.onnx``, CPU only: 0.56–0.79 of the model's CPU time, top class equal
        to the float model's on the share of real alerts its manifest states; labels
        say ``+int8`` in ``model_version``), or ``auto`` (default: ``onnx`` when the
        artifact lists a ``model.onnx``, else ``keras``).
    model_device : str
        ONNX and JAX backends (``keras`` and ``onnx-int8`` run on the CPU only and
        refuse a GPU):
        ``cpu`` (default), ``gpu`` or its synonym ``cuda`` (an
        NVIDIA GPU; needs the ``gpu`` extra: onnxruntime-gpu, jax[cuda12]; without a
        usable GPU the worker stops with one line saying what is missing) or ``auto``
        (the GPU when one is usable, else the CPU).
    model_threads : int
        ONNX backends: threads per prediction; 0 (default): the CPUs this process may
        use shared out between the ``processes``, at least 1 each, capped by the
        container's CPU limit where it has one (``--cpus``, ``resources.limits.cpu``);
        with one process and no limit, ONNX Runtime's choice, one per physical core
        (:func:`worker.model.artifact.threads_per_process`).
    model_memory_fraction : float or None
        JAX backend on a GPU: share of the GPU's memory each worker process reserves
        at start (``XLA_PYTHON_CLIENT_MEM_FRACTION``), 0 < x ≤ 1; ``processes`` times it
        must not pass 1.  None (default): nothing reserved, memory taken as needed
        (``XLA_PYTHON_CLIENT_PREALLOCATE=false``), so that several processes share one
        GPU; JAX alone would take 75 % of it in the first process.
    metrics : MetricsConfig
        Prometheus endpoint.
    asteroid_policy : AsteroidPolicy
        Known-asteroid shortcut (off by default).
    registry : RegistryConfig
        Schema registry for Confluent-framed messages.
    drift : DriftConfig
        Expected class shares of the model's predictions, for the drift alert.
    exactly_once : bool
        Transactional producer: labels and offsets are committed atomically (consumers of
        the labels must read with ``isolation.level=read_committed``).
    shutdown_timeout_s : float
        Longest wait for outstanding deliveries when stopping [s], > 0.
    processes : int
        Worker processes ``stamp-worker run`` starts (1 to 64), each a full worker and a
        member of the consumer group; process *i* serves its metrics on
        ``metrics.port + i``.  One process runs its stages one after the other and so
        keeps about 1.2 cores busy; on the 2-core development machine 2 processes
        drained 1.5× as many alerts per second (README, End-to-end performance).

    Notes
    -----
    Not hashable (the librdkafka dictionaries are mappings); pickles and deep-copies.
    """

    kafka: KafkaConfig
    topics: TopicsConfig
    group_id: str = "stamp-classifier"
    instance_id: str | None = None
    batch: BatchConfig = field(default_factory=BatchConfig)
    preprocessing: PreprocessConfig = field(default_factory=PreprocessConfig)
    model_path: Path | None = None
    model_backend: str = "auto"
    model_device: str = "cpu"
    model_threads: int = 0
    model_memory_fraction: float | None = None
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    asteroid_policy: AsteroidPolicy = field(default_factory=AsteroidPolicy)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    exactly_once: bool = False
    shutdown_timeout_s: float = 30.0
    processes: int = 1

    def __post_init__(self) -> None:
        checks = _Checks(self, "")
        for name, cls in _SECTION_TYPES.items():
            checks.field(name, _instance, cls=cls)
        checks.field("group_id", _text)
        instance_id = checks.field("instance_id", _instance_id)
        checks.field("model_path", _model_dir)
        backend = checks.field("model_backend", _one_of, choices=MODEL_BACKENDS)
        device = checks.field("model_device", _one_of, choices=MODEL_DEVICES)
        checks.field("model_threads", _integer, low=0, high=256)
        # The keras backend runs on TensorFlow's CPU build: a GPU asked of it would be
        # ignored without a word, so it is refused here instead.
        if backend in ("keras", "onnx-int8") and device in ("gpu", "cuda"):
            checks.add(f"{device} is served by model_backend onnx or jax, not {backend} "
                       "(which runs on the CPU); set one of them or model_device: cpu",
                       "model_device")
        memory_fraction = checks.field("model_memory_fraction", _fraction)
        exactly_once = checks.field("exactly_once", _boolean)
        checks.field("shutdown_timeout_s", _number, positive=True, unit="s")
        processes = checks.field("processes", _integer, low=1, high=MAX_PROCESSES)
        if isinstance(memory_fraction, float):
            if isinstance(backend, str) and backend != "jax":
                checks.add(f"is used by model_backend jax only, not {backend}; remove it or "
                           "set model_backend: jax", "model_memory_fraction")
            elif isinstance(processes, int) and processes * memory_fraction > 1 + 1e-9:
                checks.add(f"{processes} processes × {memory_fraction:g} of the GPU's memory "
                           f"is more than all of it; use at most {1 / processes:.3g}",
                           "model_memory_fraction")
        if (isinstance(processes, int) and isinstance(self.metrics, MetricsConfig)
                and self.metrics.port and self.metrics.port + processes - 1 > 65535):
            checks.add(f"{processes} processes serve metrics on ports {self.metrics.port} to "
                       f"{self.metrics.port + processes - 1}, past 65535; lower metrics.port",
                       "processes")
        if (isinstance(instance_id, str) and isinstance(processes, int) and processes > 1
                and len(f"{instance_id}-{processes - 1}") > MAX_INSTANCE_ID):
            checks.add(f"with {processes} processes the last one's group.instance.id, "
                       f"'<instance_id>-{processes - 1}', is longer than {MAX_INSTANCE_ID} "
                       f"characters; shorten it", "instance_id")
        if exactly_once is True and isinstance(self.kafka, KafkaConfig):
            idempotence = self.kafka.producer.get("enable.idempotence", True)
            if _librdkafka_bool(idempotence) is not True:
                checks.add("must stay true with exactly_once (Kafka transactions need the "
                           "idempotent producer); remove it", "kafka", "producer",
                           "enable.idempotence")
        checks.done()
