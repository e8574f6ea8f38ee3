"""``stamp-worker replay``: archived alerts → a Kafka topic, at a chosen pace.

Broker teams test a pipeline by replaying a night (or a slice of a topic) into it.  The
alerts come from files, folders, ZTF nightly archives or Parquet tables (streamed, see
:mod:`worker.decode.sources`), or from another topic between two times, and are produced
unchanged, keyed by their ``objectId`` (ZTF's partitioning key, so one object's alerts stay
in order on one partition).  A payload that does not decode is sent anyway, without a key:
what a broken alert does to the pipeline is part of what a replay tests.

Pace (:class:`Pacer`): as fast as possible, a steady rate (alert *i* leaves at
``t0 + i / rate``, so a late start catches up and the average holds), or bursts of *N*
alerts every *S* seconds.  Time bounds (``--from``/``--to``) select on the message
timestamp for a topic, and on the observation time (``jd``) for files.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from worker.decode.alerts import Alert, AlertDecoder
from worker.decode.sources import Payload
from worker.stream.cluster import (
    ClusterError,
    check_reachable,
    command_logging,
    librdkafka_logger,
    property_problems,
)
from worker.stream.metrics import jd_to_unix

# Large enough for a ZTF alert packet (≈ 60–100 kB) and broker-rewritten containers.
_PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 5,
    "message.max.bytes": 16 * 1024 * 1024,
    "compression.type": "lz4",
    "enable.idempotence": True,
}
_CONSUMER_DEFAULTS: dict[str, Any] = {
    "fetch.max.bytes": 64 * 1024 * 1024,
    "max.partition.fetch.bytes": 16 * 1024 * 1024,
}


def parse_time(text: str) -> int:
    """An ISO 8601 time (UTC when no offset is given) → ms since the Unix epoch.

    Raises
    ------
    ValueError
        Not an ISO 8601 date or date-time; the message shows an accepted form.
    """
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time; use e.g. 2026-11-25T03:00:00Z"
                         ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(round(moment.timestamp() * 1000))


@dataclass(frozen=True)
class Pacer:
    """When each alert may leave.

    Parameters
    ----------
    rate : float or None
        Steady rate [alerts/s]; None: not rate-limited.
    burst : int or None
        Alerts per burst, sent as fast as possible; None: no bursts.
    interval : float
        Time from the start of one burst to the start of the next [s].
    """

    rate: float | None = None
    burst: int | None = None
    interval: float = 1.0

    def __post_init__(self) -> None:
        if self.rate is not None and self.burst is not None:
            raise ValueError("choose a steady rate or bursts, not both")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be a positive number of alerts/s, got {self.rate}")
        if self.burst is not None and self.burst < 1:
            raise ValueError(f"burst must be at least 1 alert, got {self.burst}")
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise ValueError(f"burst interval must be a positive number of seconds, "
                             f"got {self.interval}")

    def due(self, index: int) -> float:
        """Seconds after the first send at which alert ``index`` (0-based) may leave."""
        if self.rate is not None:
            return index / self.rate
        if self.burst is not None:
            return (index // self.burst) * self.interval
        return 0.0

    def describe(self) -> str:
        """The pace in words."""
        if self.rate is not None:
            return f"{self.rate:g} alerts/s"
        if self.burst is not None:
            return f"bursts of {self.burst} every {self.interval:g} s"
        return "as fast as possible"


@dataclass
class ReplaySummary:
    """What a replay did.

    Attributes
    ----------
    sent : int
        Messages delivered to the topic.
    failed : int
        Messages the broker did not accept (delivery errors, or not delivered in time).
    unkeyed : int
        Messages sent without a key because they do not decode to an alert.
    skipped : int
        Alerts outside the ``--from``/``--to`` bounds.
    unreadable : list of (str, str)
        Inputs that could not be read, with the error.
    seconds : float
        From the first send to the last delivery [s].
    errors : list of str
        The first delivery errors (at most 10).
    """

    sent: int = 0
    failed: int = 0
    unkeyed: int = 0
    skipped: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Delivered messages per second of the replay [alerts/s]."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def _first_alert(decoder: AlertDecoder, data: bytes) -> Alert | None:
    for item in decoder.iter_records(data):
        return item if isinstance(item, Alert) else None
    return None


def _within(moment_ms: float, start_ms: int | None, end_ms: int | None) -> bool:
    return (start_ms is None or moment_ms >= start_ms) and (end_ms is None or moment_ms < end_ms)


def replay(payloads: Iterable[Payload], producer: Producer, topic: str, pacer: Pacer,
           limit: int | None = None, start_ms: int | None = None, end_ms: int | None = None,
           progress: Any = None, flush_timeout_s: float = 60.0) -> ReplaySummary:
    """Produce payloads to a topic at the pacer's pace; wait for every delivery.

    Parameters
    ----------
    payloads : iterable of Payload
        The messages, in sending order.  A payload's own key is used when it does not
        decode to an alert; its headers are sent with it.
    producer : confluent_kafka.Producer
        A producer (its configuration decides security, compression...).
    topic : str
        Destination topic.
    pacer : Pacer
        Steady rate, bursts, or as fast as possible.
    limit : int, optional
        Stop after this many messages sent.
    start_ms, end_ms : int, optional
        Send only alerts observed in ``[start_ms, end_ms)`` (by their ``jd``) [ms since
        Unix epoch]; an alert that does not decode has no time and is skipped when
        bounds are given.
    progress : callable, optional
        Called with the number of messages handed to the producer so far.
    flush_timeout_s : float
        How long to wait for outstanding deliveries at the end [s].

    Returns
    -------
    ReplaySummary
        Counts and the achieved rate.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be ≥ 0, got {limit}")
    summary = ReplaySummary()
    decoder = AlertDecoder()
    bounded = start_ms is not None or end_ms is not None

    def on_delivery(error: Any, message: Any) -> None:
        if error is None:
            summary.sent += 1
        else:
            summary.failed += 1
            if len(summary.errors) < 10:
                summary.errors.append(str(error))

    queued = 0
    first: float | None = None
    for payload in payloads:
        if limit is not None and queued >= limit:
            break
        alert = _first_alert(decoder, payload.data)
        if bounded and (alert is None
                        or not _within(jd_to_unix(alert.jd) * 1000, start_ms, end_ms)):
            summary.skipped += 1
            continue
        key = alert.object_id.encode() if alert is not None else payload.key
        if key is None:
            summary.unkeyed += 1
        if first is None:
            first = time.perf_counter()
        due = first + pacer.due(queued)
        while (wait := due - time.perf_counter()) > 0:
            producer.poll(min(wait, 0.01))   # serve delivery callbacks while waiting
        try:
            _produce(producer, topic, payload.data, key, payload.headers, on_delivery)
        except KafkaException as exc:
            # Refused before sending (e.g. larger than message.max.bytes): count it and
            # go on; broker-level failures (unknown topic, auth) show up as deliveries.
            on_delivery(f"{payload.origin}: {exc.args[0]}", None)
        queued += 1
        if progress is not None:
            progress(queued)
    remaining = producer.flush(flush_timeout_s)
    summary.failed += remaining
    summary.seconds = time.perf_counter() - first if first is not None else 0.0
    return summary


def _produce(producer: Producer, topic: str, value: bytes, key: bytes | None,
             headers: list[tuple[str, bytes]] | None, on_delivery: Any) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key, headers=headers,
                             on_delivery=on_delivery)
            producer.poll(0)
            return
        except BufferError:  # local queue full: let deliveries drain, then retry
            producer.poll(0.1)


@dataclass
class TopicSlice:
    """The messages of a topic between two times, read once without committing.

    Parameters
    ----------
    consumer_config : dict
        librdkafka settings (``bootstrap.servers`` and any security settings).
    topic : str
        The topic to read.
    start_ms, end_ms : int, optional
        Message timestamps to keep: ``[start_ms, end_ms)`` [ms since Unix epoch].
    timeout_s : float
        Give up when the broker does not answer for this long [s].

    Attributes
    ----------
    skipped : int
        Messages read but outside the time bounds.
    """

    consumer_config: dict[str, Any]
    topic: str
    start_ms: int | None = None
    end_ms: int | None = None
    timeout_s: float = 30.0
    skipped: int = 0

    def __iter__(self) -> Iterator[Payload]:
        # A throw-away group and manual assignment: replaying never moves any group's
        # committed offsets.  The end is the high watermark seen at the start, so a
        # topic that keeps growing still gives a finite replay.
        consumer = Consumer({**_CONSUMER_DEFAULTS, **self.consumer_config,
                             "group.id": f"stamp-replay-{uuid.uuid4().hex}",
                             "enable.auto.commit": False, "enable.partition.eof": False})
        try:
            yield from self._read(consumer)
        finally:
            consumer.close()

    def _read(self, consumer: Consumer) -> Iterator[Payload]:
        metadata = consumer.list_topics(self.topic, timeout=self.timeout_s)
        info = metadata.topics.get(self.topic)
        if info is None or info.error is not None:
            reason = info.error if info is not None else "not found"
            raise KafkaException(f"source topic {self.topic!r}: {reason}")
        partitions = sorted(info.partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(self.topic, p),
                                                  self.timeout_s)[1] for p in partitions}
        starts = {p: 0 for p in partitions}
        if self.start_ms is not None:
            found = consumer.offsets_for_times(
                [TopicPartition(self.topic, p, self.start_ms) for p in partitions],
                self.timeout_s)
            starts = {tp.partition: (tp.offset if tp.offset >= 0 else ends[tp.partition])
                      for tp in found}
        todo = {p for p in partitions if starts[p] < ends[p]}
        if not todo:
            return
        consumer.assign([TopicPartition(self.topic, p, starts[p]) for p in sorted(todo)])
        idle_since = time.monotonic()
        while todo:
            messages = consumer.consume(500, 0.5)
            if not messages and time.monotonic() - idle_since > self.timeout_s:
                raise KafkaException(f"source topic {self.topic!r}: no message for "
                                     f"{self.timeout_s:g} s before the end of partitions "
                                     f"{sorted(todo)}")
            for message in messages:
                if message.error() is not None:
                    raise KafkaException(message.error())
                idle_since = time.monotonic()
                p, offset = message.partition(), message.offset()
                if p not in todo or offset >= ends[p]:
                    continue
                if offset + 1 >= ends[p]:
                    todo.discard(p)
                _, ts = message.timestamp()
                if not _within(ts, self.start_ms, self.end_ms):
                    # Timestamps need not be monotonic within a partition: keep reading
                    # to the end rather than stopping at the first one past --to.
                    self.skipped += 1
                    continue
                headers = message.headers()
                yield Payload(f"{self.topic}[{p}]@{offset}", message.value() or b"",
                              message.key(), list(headers) if headers else None)


def make_producer(settings: dict[str, Any]) -> Producer:
    """A producer for replays: the given librdkafka settings over large-message defaults.

    Parameters
    ----------
    settings : dict
        librdkafka settings, at least ``bootstrap.servers``.
    """
    return Producer({**_PRODUCER_DEFAULTS, **settings})


def parse_settings(pairs: Sequence[str]) -> dict[str, str]:
    """``key=value`` strings (``-X`` options) → librdkafka settings.

    Raises
    ------
    ValueError
        An item without ``=``.
    """
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{pair!r}: librdkafka settings are given as key=value, "
                             f"e.g. -X security.protocol=SASL_SSL")
        out[key.strip()] = value
    return out


def format_summary(summary: ReplaySummary, topic: str, pacer: Pacer) -> str:
    """The end-of-run report."""
    lines = [f"replayed to {topic} ({pacer.describe()}): sent {summary.sent}, "
             f"failed {summary.failed}, in {summary.seconds:.2f} s = "
             f"{summary.rate:.1f} alerts/s"]
    extra = []
    if summary.unkeyed:
        extra.append(f"{summary.unkeyed} sent without a key (not decodable)")
    if summary.skipped:
        extra.append(f"{summary.skipped} outside --from/--to")
    if summary.unreadable:
        extra.append(f"{len(summary.unreadable)} unreadable inputs")
    if extra:
        lines.append("  " + "; ".join(extra))
    lines += [f"  delivery error: {e}" for e in summary.errors]
    lines += [f"  unreadable input {origin}: {error}" for origin, error in summary.unreadable]
    return "\n".join(lines)


def replay_command(paths: Sequence[str], topic: str, bootstrap: str | None,
                   settings: Sequence[str], source_topic: str | None, start: str | None,
                   end: str | None, rate: float | None, burst: int | None, interval: float,
                   limit: int | None, shuffle: bool, shuffle_buffer: int, seed: int | None,
                   quiet: bool, err: TextIO, connect_timeout_s: float = 30.0) -> int:
    """Run ``stamp-worker replay``; returns the exit status.

    The cluster is asked for its metadata first, for at most ``connect_timeout_s``
    seconds: an address where no broker answers stops the command with one line.  The
    ``STAMP_WORKER__KAFKA__COMMON__*`` variables (the worker's security settings, e.g.
    from a Kubernetes Secret) are librdkafka settings too, under ``-X``.

    Returns
    -------
    int
        0 when every message was delivered and every input read; 1 otherwise.
    """
    import os

    from worker.decode.sources import SourceError, expand_paths, holds_many, read_inputs, shuffled
    from worker.stream.config import ConfigError, kafka_common_from_env

    def fail(message: str) -> SystemExit:
        return SystemExit(f"stamp-worker replay: {message}")

    bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        raise fail("no broker: give --bootstrap-servers HOST:PORT or set "
                   "KAFKA_BOOTSTRAP_SERVERS (`make kafka-start` starts a local one)")
    if bool(paths) == bool(source_topic):
        raise fail("give alert files/folders/archives, or --source-topic, not both")
    try:
        pacer = Pacer(rate, burst, interval)
        start_ms = parse_time(start) if start else None
        end_ms = parse_time(end) if end else None
        given = parse_settings(settings)
        from_env = kafka_common_from_env()
        extra = {**from_env, **given}
        if limit is not None and limit < 0:
            raise ValueError(f"--limit must be ≥ 0, got {limit}")
        if not connect_timeout_s > 0:
            raise ValueError(f"--connect-timeout must be > 0 s, got {connect_timeout_s}")
        files = expand_paths(paths) if paths else []
    except ConfigError as exc:
        raise fail(f"environment: {exc}") from exc
    except (ValueError, SourceError) as exc:
        raise fail(str(exc)) from exc
    if start_ms is not None and end_ms is not None and end_ms <= start_ms:
        raise fail(f"--to ({end}) must be later than --from ({start})")
    summary_unreadable: list[tuple[str, str]] = []
    base = {**extra, "bootstrap.servers": bootstrap}
    command_logging()
    refused = property_problems("producer", extra, other_role=True)
    if refused:
        key, message = refused[0]
        where = (f"-X {key}" if key in given else
                 f"{key} (from STAMP_WORKER__KAFKA__COMMON__*)" if key else "-X settings")
        raise fail(f"{where}: {message}")
    try:
        check_reachable("producer", base, connect_timeout_s,
                        what="--bootstrap-servers (or KAFKA_BOOTSTRAP_SERVERS)")
    except ClusterError as exc:
        raise fail(str(exc)) from exc
    base["logger"] = librdkafka_logger()
    topic_slice = None
    if source_topic:
        topic_slice = TopicSlice(base, source_topic, start_ms, end_ms)
        stream: Iterable[Payload] = topic_slice
    else:
        if shuffle and not any(holds_many(path) for path in files):
            # Plain files: shuffle the whole list, which costs no memory (an archive or a
            # Parquet table is one entry of it, so its alerts need the buffer below).
            random.Random(seed).shuffle(files)
            shuffle = False
        stream = read_inputs(files, on_error=lambda o, m: (
            summary_unreadable.append((o, m)), print(f"UNREADABLE {o}: {m}", file=err)))
    if shuffle:
        # Archives and tables are streams: mix them through a bounded buffer.
        stream = shuffled(stream, shuffle_buffer, seed)
    producer = make_producer(base)
    from rich.console import Console
    from rich.progress import Progress

    console = Console(file=err)
    with Progress(console=console, disable=quiet or not console.is_terminal,
                  transient=True) as bar:
        task = bar.add_task(f"replay → {topic}", total=limit)
        try:
            summary = replay(stream, producer, topic, pacer, limit,
                             None if topic_slice else start_ms,
                             None if topic_slice else end_ms,
                             progress=lambda n: bar.update(task, completed=n))
        except KafkaException as exc:
            raise fail(str(exc)) from exc
    summary.unreadable = summary_unreadable
    if topic_slice is not None:
        summary.skipped += topic_slice.skipped
    print(format_summary(summary, topic, pacer), file=err)
    return 0 if summary.failed == 0 and not summary.unreadable else 1
