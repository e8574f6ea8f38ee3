"""``stamp-worker topics``: create, or describe, the three topics a worker configuration names.

A broker that does not create topics on first use (the development broker, and most
production clusters) leaves a new worker waiting on an input topic that is not there
and a replay failing with ``UNKNOWN_TOPIC_OR_PART``.  This module makes the topics of a
configuration, sized for alerts, and leaves existing ones as they are:

* **input**: ``--partitions`` partitions, ``--retention-days``, ``max.message.bytes``
  16 MiB (a ZTF alert is 50-100 kB; broker-rewritten alerts run larger);
* **labels**: ``--partitions`` partitions, ``--retention-days``, the broker's message
  size (a label record is ~300 bytes);
* **dead letters**: one partition, ``--dead-letter-retention-days`` (time to look at a
  refused alert), 16 MiB: a dead letter carries the refused message unchanged.

The replication factor is ``min(3, brokers)`` unless given, with
``min.insync.replicas = 2`` from three replicas on, so that the worker's ``acks=all``
producer survives one broker down without losing a label.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

ALERT_MESSAGE_BYTES = 16 * 1024 * 1024  # the worker's fetch and produce limits too
DEFAULT_PARTITIONS = 4  # a multiple of 1, 2 and 4 worker processes
DEFAULT_RETENTION_DAYS = 7.0
DEFAULT_DEAD_LETTER_RETENTION_DAYS = 30.0  # time to look at a refused alert
_DAY_MS = 86_400_000
_TIMEOUT_S = 30.0
# Client settings an admin client shares with the worker's consumer: how to reach and
# authenticate to the cluster (other consumer settings would only draw warnings).
_CONNECTION_PREFIXES = ("security.", "sasl.", "ssl.", "socket.", "broker.address.",
                        "client.", "enable.ssl.", "https.")


class TopicsError(RuntimeError):
    """A topic could not be created or described (the message says which and why)."""


@dataclass(frozen=True)
class TopicSpec:
    """One topic to have: its name, role and the settings it is created with.

    Parameters
    ----------
    name : str
        Topic name.
    role : str
        ``input``, ``labels`` or ``dead letters`` (shown in the table).
    partitions : int
        Partitions when created.
    replication_factor : int
        Replicas of each partition when created.
    config : Mapping[str, str]
        Topic-level settings when created (``retention.ms``, ``max.message.bytes``...).
    """

    name: str
    role: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass
class TopicState:
    """What the cluster has for one :class:`TopicSpec` after :func:`ensure_topics`.

    ``status`` is ``created``, ``exists`` or ``pattern`` (an input given as a regular
    expression: nothing to create); ``note`` says where an existing topic differs from
    the spec (it is left as it is).
    """

    spec: TopicSpec
    status: str
    partitions: int | None = None
    replication_factor: int | None = None
    config: dict[str, str] = field(default_factory=dict)
    note: str = ""


def admin_client(bootstrap_servers: str, settings: Mapping[str, Any] | None = None
                 ) -> AdminClient:
    """An admin client with the connection and security settings of ``settings``.

    Parameters
    ----------
    bootstrap_servers : str
        ``host:port`` list.
    settings : Mapping[str, Any], optional
        The worker's consumer settings; only those on how to reach and authenticate to
        the cluster (``security.*``, ``sasl.*``, ``ssl.*``...) are used.
    """
    from worker.stream.cluster import librdkafka_logger

    conf = {key: value for key, value in (settings or {}).items()
            if key.startswith(_CONNECTION_PREFIXES)}
    return AdminClient({**conf, "bootstrap.servers": bootstrap_servers,
                        "logger": librdkafka_logger()})


def specs_for(input_topics: Iterable[str], output: str, dead_letter: str, brokers: int,
              partitions: int = DEFAULT_PARTITIONS, replication_factor: int | None = None,
              retention_days: float = DEFAULT_RETENTION_DAYS,
              dead_letter_retention_days: float = DEFAULT_DEAD_LETTER_RETENTION_DAYS
              ) -> list[TopicSpec]:
    """The topics of one worker configuration, sized for alerts (see the module doc).

    Parameters
    ----------
    input_topics : iterable of str
        Input topics; those starting with ``^`` are patterns and are only listed.
    output, dead_letter : str
        Label and dead-letter topics.
    brokers : int
        Brokers in the cluster (bounds the default replication factor).
    partitions : int
        Partitions of the input and label topics.
    replication_factor : int, optional
        Replicas; default ``min(3, brokers)``.
    retention_days, dead_letter_retention_days : float
        How long the input and label topics, and the dead letters, keep messages [days].

    Raises
    ------
    ValueError
        A count or duration out of range.
    """
    replicas = replication_factor if replication_factor is not None else min(3, max(brokers, 1))
    if partitions < 1:
        raise ValueError(f"--partitions must be ≥ 1, got {partitions}")
    if replicas < 1:
        raise ValueError(f"--replication-factor must be ≥ 1, got {replicas}")
    if replicas > brokers:
        raise ValueError(f"--replication-factor {replicas} needs {replicas} brokers, the "
                         f"cluster has {brokers}")
    for option, days in (("--retention-days", retention_days),
                         ("--dead-letter-retention-days", dead_letter_retention_days)):
        if not days > 0:
            raise ValueError(f"{option} must be > 0, got {days}")
    common = {"min.insync.replicas": "2"} if replicas >= 3 else {}

    def retention(days: float) -> dict[str, str]:
        return {"retention.ms": str(round(days * _DAY_MS)), **common}

    big = {"max.message.bytes": str(ALERT_MESSAGE_BYTES)}
    specs = [TopicSpec(name, "input", partitions, replicas, {**retention(retention_days), **big})
             for name in input_topics]
    specs.append(TopicSpec(output, "labels", partitions, replicas, retention(retention_days)))
    specs.append(TopicSpec(dead_letter, "dead letters", 1, replicas,
                           {**retention(dead_letter_retention_days), **big}))
    return specs


def broker_count(admin: AdminClient, timeout_s: float = _TIMEOUT_S) -> int:
    """Brokers in the cluster (a metadata request).

    Raises
    ------
    TopicsError
        No answer within ``timeout_s`` seconds.
    """
    try:
        return len(admin.list_topics(timeout=timeout_s).brokers)
    except KafkaException as exc:
        raise TopicsError(f"no metadata from the cluster: {exc.args[0].str()}") from exc


def ensure_topics(admin: AdminClient, specs: Sequence[TopicSpec], create: bool = True,
                  timeout_s: float = _TIMEOUT_S) -> list[TopicState]:
    """Create the topics that do not exist (``create``) and describe all of them.

    Existing topics are never changed, only compared with their spec; running it
    twice is the same as running it once.

    Parameters
    ----------
    admin : AdminClient
        Client of the cluster.
    specs : sequence of TopicSpec
        Topics to have.
    create : bool
        False only describes (missing topics get status ``missing``).
    timeout_s : float
        Longest wait for each request [s].

    Returns
    -------
    list of TopicState
        One per spec, in order.

    Raises
    ------
    TopicsError
        The cluster refused to create or describe a topic (not authorized, a setting
        the broker does not accept...), or did not answer in time.
    """
    existing = admin.list_topics(timeout=timeout_s).topics
    states = {spec.name: TopicState(spec, "pattern" if spec.name.startswith("^") else
                                    "exists" if spec.name in existing else "missing")
              for spec in specs}
    missing = [spec for spec in specs if states[spec.name].status == "missing"]
    if create and missing:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.config))
             for s in missing], operation_timeout=timeout_s, request_timeout=timeout_s)
        for spec in missing:
            try:
                futures[spec.name].result(timeout_s)
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() != error.TOPIC_ALREADY_EXISTS:  # made by someone else now
                    raise TopicsError(f"cannot create topic {spec.name}: {error.str()}") \
                        from exc
                states[spec.name].status = "exists"
            else:
                states[spec.name].status = "created"
    _describe(admin, [s for s in states.values() if s.status in ("created", "exists")],
              timeout_s)
    return [states[spec.name] for spec in specs]


def _describe(admin: AdminClient, states: list[TopicState], timeout_s: float) -> None:
    if not states:
        return
    # A topic just created reaches the metadata of every broker a moment later: until
    # then it may be listed without partitions, and describing it may fail.
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = admin.list_topics(timeout=timeout_s).topics
        settled = all(metadata.get(s.spec.name) is not None and metadata[s.spec.name].error
                      is None and metadata[s.spec.name].partitions for s in states)
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for state in states:
        topic = metadata.get(state.spec.name)
        if topic is not None and topic.partitions:
            state.partitions = len(topic.partitions)
            state.replication_factor = len(next(iter(topic.partitions.values())).replicas)
        resource = ConfigResource(ConfigResource.Type.TOPIC, state.spec.name)
        while True:
            try:
                entries = admin.describe_configs(
                    [resource], request_timeout=timeout_s)[resource].result(timeout_s)
                break
            except KafkaException as exc:
                error = exc.args[0]
                if (error.code() != error.UNKNOWN_TOPIC_OR_PART
                        or time.monotonic() > deadline):
                    raise TopicsError(f"cannot describe topic {state.spec.name}: "
                                      f"{error.str()}") from exc
                time.sleep(0.1)
        state.config = {key: entry.value for key, entry in entries.items()
                        if key in ("retention.ms", "max.message.bytes", "min.insync.replicas")}
        differences = [f"{key} {state.config.get(key)} (wanted {value})"
                       for key, value in state.spec.config.items()
                       if state.config.get(key) != value]
        if state.partitions is not None and state.partitions != state.spec.partitions:
            differences.insert(0, f"{state.partitions} partitions (wanted "
                                  f"{state.spec.partitions})")
        state.note = "; ".join(differences)


def _days(ms: str | None) -> str:
    if ms is None:
        return "-"
    value = int(ms)
    return "forever" if value < 0 else f"{value / _DAY_MS:g} d"


def _mib(size: str | None) -> str:
    return "-" if size is None else f"{int(size) / 1024 / 1024:.3g} MiB"


def format_states(states: Sequence[TopicState]) -> str:
    """The table ``stamp-worker topics`` prints: one line per topic, then differences."""
    width = max([len(s.spec.name) for s in states] + [5])
    lines = [f"{'topic':<{width}}  {'role':<14}{'status':<9}{'partitions':>11}{'replicas':>9}"
             f"{'retention':>11}{'max message':>13}"]
    for s in states:
        lines.append(f"{s.spec.name:<{width}}  {s.spec.role:<14}{s.status:<9}"
                     f"{s.partitions if s.partitions is not None else '-':>11}"
                     f"{s.replication_factor if s.replication_factor is not None else '-':>9}"
                     f"{_days(s.config.get('retention.ms')):>11}"
                     f"{_mib(s.config.get('max.message.bytes')):>13}")
    for s in states:
        if s.note:
            lines.append(f"note: {s.spec.name} exists with {s.note}; left as it is")
        if s.status == "pattern":
            lines.append(f"note: {s.spec.name} is a pattern: the worker consumes every "
                         "topic it matches, create those with your alert source")
    return "\n".join(lines)


def topics_command(config_path: str | None, describe: bool, partitions: int,
                   replication_factor: int | None, retention_days: float,
                   dead_letter_retention_days: float, out: TextIO) -> int:
    """Run ``stamp-worker topics``; returns the exit status.

    Parameters
    ----------
    config_path : str or None
        Worker configuration (as ``run``; None: ``$STAMP_WORKER_CONFIG`` or defaults and
        ``STAMP_WORKER__*`` variables).
    describe : bool
        Only describe; create nothing.
    partitions, replication_factor, retention_days, dead_letter_retention_days
        See :func:`specs_for`.
    out : TextIO
        Where the table goes.

    Returns
    -------
    int
        0 when every topic exists (or was created); 1 when ``describe`` finds one missing.
    """
    from worker.stream.cluster import ClusterError, check_reachable
    from worker.stream.config import ENV_BOOTSTRAP, ConfigError, load_config

    def fail(message: str) -> SystemExit:
        return SystemExit(f"stamp-worker topics: {message}")

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise fail(f"configuration: {exc}") from exc
    kafka = config.kafka
    try:
        settings = kafka.client_settings("consumer")
        brokers = check_reachable("consumer", settings, kafka.connect_timeout_s,
                                  what=f"kafka.bootstrap_servers (or {ENV_BOOTSTRAP})")
        specs = specs_for(config.topics.input, config.topics.output,
                          config.topics.dead_letter, brokers, partitions,
                          replication_factor, retention_days, dead_letter_retention_days)
        states = ensure_topics(admin_client(kafka.bootstrap_servers, settings), specs,
                               create=not describe)
    except (ClusterError, TopicsError, ValueError) as exc:
        raise fail(str(exc)) from exc
    print(format_states(states), file=out)
    return 1 if any(s.status == "missing" for s in states) else 0
