"""Prometheus metrics, liveness and readiness of the worker.

One :class:`WorkerMetrics` object holds every metric of the worker, registered on a
:class:`prometheus_client.CollectorRegistry` that the caller passes in (the worker
passes one registry, tests make their own, so two instances never clash).  Names follow
Prometheus conventions: namespace ``stamp_worker``, base units (seconds, messages) in
the name, ``_total`` on counters.

:class:`MetricsServer` serves, from a daemon thread:

``/metrics``
    the registry in the Prometheus text format;
``/healthz``
    liveness: 200 while the main loop has beaten (:meth:`HealthState.beat`) within
    ``max_silence_s``, else 503 with the reason (a stuck loop should be restarted);
``/readyz``
    readiness: 200 once the model is loaded and partitions are assigned, else 503 with
    the reason (the worker is alive but not doing useful work).

Consumer lag comes from librdkafka's statistics (``statistics.interval.ms`` > 0 and
``stats_cb=metrics.update_from_librdkafka_stats``), so it costs no broker request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from worker.decode.errors import Reason
from worker.model.artifact import CLASS_NAMES

log = logging.getLogger(__name__)

NAMESPACE = "stamp_worker"
STAGES = ("decode", "infer", "produce", "commit")
"""Stages of one micro-batch, the values of the ``stage`` label of ``stage_seconds``."""
REBALANCE_KINDS = ("assign", "revoke", "lost")
"""Values of the ``kind`` label of ``rebalances`` (the three rebalance callbacks)."""

JD_UNIX_EPOCH = 2440587.5
"""Julian date of the Unix epoch, 1970-01-01T00:00:00 UTC [days]."""
SECONDS_PER_DAY = 86400.0

BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
"""Messages per micro-batch: 1 when the topic is quiet, thousands when catching up."""
STAGE_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0, 2.5, 5.0, 10.0)
"""Stage durations [s]: decoding one alert takes ~0.5 ms, a large CNN batch seconds."""
ALERT_AGE_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                     3 * 3600.0, 6 * 3600.0, 12 * 3600.0, 86400.0, 2 * 86400.0,
                     7 * 86400.0, 30 * 86400.0)
"""Alert age at publication [s]: ZTF alerts reach brokers minutes after the exposure;
the day-to-month buckets show replays and a worker catching up after an outage."""
END_TO_END_BUCKETS = (1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                      10.0, 30.0, 60.0)
"""Kafka message timestamp → label delivered [s]."""
TOP_PROBABILITY_BUCKETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
"""Top-class probability of one model prediction (≥ 0.2 with five classes).  On the
shared real alerts the bundled model gives a median of 0.999 and 9 % under 0.8, hence
the fine steps near 1."""


def jd_to_unix(jd: float) -> float:
    """Convert a Julian date to Unix time.

    Parameters
    ----------
    jd : float
        Julian date [days], UTC-based as in ZTF's ``candidate.jd``.

    Returns
    -------
    float
        Seconds since 1970-01-01T00:00:00 UTC [s].  Leap seconds are ignored, as Unix
        time ignores them.  A double holds a current JD to ~40 µs, far below the
        1 s resolution of the alert-age buckets.
    """
    return (jd - JD_UNIX_EPOCH) * SECONDS_PER_DAY


class WorkerMetrics:
    """Every metric of the worker, registered on the registry given.

    Parameters
    ----------
    registry : prometheus_client.CollectorRegistry
        Where the metrics are registered.  Registering two ``WorkerMetrics`` on the same
        registry raises ``ValueError`` (duplicated time series); use one per registry.

    Attributes
    ----------
    consumed : Counter
        ``stamp_worker_alerts_consumed_total``: Kafka messages consumed [messages].
    classified : Counter
        ``stamp_worker_alerts_classified_total{label}``: label records published, by top
        class (``AGN``, ``SN``, ``VS``, ``asteroid``, ``bogus``).
    dead_lettered : Counter
        ``stamp_worker_alerts_dead_lettered_total{reason}``: records sent to the
        dead-letter topic, by :class:`worker.decode.errors.Reason` value.
    delivery_failures : Counter
        ``stamp_worker_delivery_failures_total``: produced records whose delivery
        failed (the batch is then not committed and the worker stops).
    consumer_errors : Counter
        ``stamp_worker_consumer_errors_total{error}``: errors librdkafka reported
        through ``consume()`` and retries by itself, by error name (e.g.
        ``UNKNOWN_TOPIC_OR_PART`` for an input topic that does not exist yet).
    commits : Counter
        ``stamp_worker_commits_total``: successful offset commits (one per batch).
    commit_failures : Counter
        ``stamp_worker_commit_failures_total``: offset commits that failed.
    rebalances : Counter
        ``stamp_worker_rebalances_total{kind}``: rebalance callbacks, ``kind`` one of
        ``assign``, ``revoke``, ``lost``.
    librdkafka_stats_errors : Counter
        ``stamp_worker_librdkafka_stats_errors_total``: statistics documents that could
        not be understood (lag gauges then keep their previous values).
    batch_size : Histogram
        ``stamp_worker_batch_size``: messages per micro-batch [messages].
    stage_seconds : Histogram
        ``stamp_worker_stage_seconds{stage}``: wall time of each stage of a batch [s].
    alert_age_seconds : Histogram
        ``stamp_worker_alert_age_seconds``: publication time − alert time (observation
        JD) [s].
    end_to_end_seconds : Histogram
        ``stamp_worker_end_to_end_seconds``: Kafka message timestamp of the alert →
        delivery of its label [s].
    consumer_lag : Gauge
        ``stamp_worker_consumer_lag{topic,partition}``: messages between the partition's
        end and this group's committed offset (librdkafka ``consumer_lag``) [messages].
        This is what a restart would have to (re)process, and what
        ``kafka-consumer-groups.sh`` reports.
    consumer_lag_stored : Gauge
        ``stamp_worker_consumer_lag_stored{topic,partition}``: messages between the
        partition's end and the consumer's stored (read) offset (librdkafka
        ``consumer_lag_stored``) [messages].  It falls before ``consumer_lag`` does:
        the difference is what has been read but not yet committed.
    assigned_partitions : Gauge
        ``stamp_worker_assigned_partitions``: partitions assigned to this consumer, from
        librdkafka's ``cgrp.assignment_size`` [partitions].
    model_info : Info
        ``stamp_worker_model_info{name,version,preprocessing} 1``: the model in use.
    predictions : PredictionCollector
        ``stamp_worker_model_predictions_total{class}`` and
        ``stamp_worker_model_top_probability{class}``: the model's predictions by top
        class, and the histogram of their top probability; fed a batch at a time by
        :meth:`observe_predictions`.
    drift_baseline_share : Gauge
        ``stamp_worker_drift_baseline_share{class}``: the share of each class expected
        from the model (configuration key ``drift.baseline``), set by :meth:`set_drift`.
    drift_max_distance : Gauge
        ``stamp_worker_drift_max_distance``: largest total variation distance between
        observed and baseline shares that is still normal (``drift.max_distance``).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, namespace=NAMESPACE, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, namespace=NAMESPACE, registry=registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...],
                      labels: tuple[str, ...] = ()) -> Histogram:
            return Histogram(name, doc, labels, namespace=NAMESPACE, registry=registry,
                             buckets=buckets)

        self.consumed = counter("alerts_consumed", "Kafka messages consumed [messages].")
        self.classified = counter(
            "alerts_classified", "Label records published, by top class.", ("label",))
        self.dead_lettered = counter(
            "alerts_dead_lettered", "Records sent to the dead-letter topic, by reason.",
            ("reason",))
        self.delivery_failures = counter(
            "delivery_failures", "Produced records whose delivery failed (batch not "
            "committed).")
        self.consumer_errors = counter(
            "consumer_errors", "Errors librdkafka reported through consume() that it "
            "recovers from itself (e.g. an input topic that does not exist yet), by "
            "error name.", ("error",))
        self.commits = counter("commits", "Successful offset commits.")
        self.commit_failures = counter("commit_failures", "Failed offset commits.")
        self.rebalances = counter(
            "rebalances", "Consumer group rebalance callbacks, by kind.", ("kind",))
        self.librdkafka_stats_errors = counter(
            "librdkafka_stats_errors", "librdkafka statistics documents not understood "
            "(lag gauges kept their previous values).")
        self.batch_size = histogram(
            "batch_size", "Messages per micro-batch [messages].", BATCH_SIZE_BUCKETS)
        self.stage_seconds = histogram(
            "stage_seconds", "Wall time of one stage of a micro-batch [s].", STAGE_BUCKETS,
            ("stage",))
        self.alert_age_seconds = histogram(
            "alert_age_seconds", "Publication time minus the alert's observation time "
            "(candidate.jd) [s].", ALERT_AGE_BUCKETS)
        self.end_to_end_seconds = histogram(
            "end_to_end_seconds", "Kafka message timestamp of the alert to delivery of "
            "its label [s].", END_TO_END_BUCKETS)
        self.consumer_lag = gauge(
            "consumer_lag", "Partition end offset minus the group's committed offset "
            "(librdkafka consumer_lag) [messages].", ("topic", "partition"))
        self.consumer_lag_stored = gauge(
            "consumer_lag_stored", "Partition end offset minus the consumer's stored "
            "offset (librdkafka consumer_lag_stored) [messages].", ("topic", "partition"))
        self.assigned_partitions = gauge(
            "assigned_partitions", "Partitions assigned to this consumer (librdkafka "
            "cgrp.assignment_size) [partitions].")
        self.model_info = Info("model", "The model in use (value always 1).",
                               namespace=NAMESPACE, registry=registry)
        self.predictions = PredictionCollector(CLASS_NAMES, TOP_PROBABILITY_BUCKETS)
        registry.register(self.predictions)
        self.drift_baseline_share = gauge(
            "drift_baseline_share", "Expected share of each top class among the model's "
            "predictions (drift.baseline).", ("class",))
        self.drift_max_distance = gauge(
            "drift_max_distance", "Largest normal total variation distance between the "
            "observed and the baseline class shares (drift.max_distance).")

        # Children created up front appear as 0 in the first scrape, so rate() and
        # increase() see the first event instead of a series that starts at 1.
        for label in CLASS_NAMES:
            self.classified.labels(label=label)
        for reason in Reason:
            self.dead_lettered.labels(reason=reason.value)
        for kind in REBALANCE_KINDS:
            self.rebalances.labels(kind=kind)
        # Looked up once: the hot path then skips the label-resolution lock.
        self._stage_children = {stage: self.stage_seconds.labels(stage=stage)
                                for stage in STAGES}

        # librdkafka calls stats_cb from poll() in the loop thread, but nothing forbids
        # a second client sharing this object; the lock keeps the series sets coherent.
        self._lag_lock = threading.Lock()
        self._lag_series: dict[str, set[tuple[str, str]]] = {
            "consumer_lag": set(), "consumer_lag_stored": set()}

    @contextlib.contextmanager
    def time_stage(self, stage: str) -> Iterator[None]:
        """Time the ``with`` block into ``stage_seconds{stage}``.

        Parameters
        ----------
        stage : str
            One of :data:`STAGES`.

        Yields
        ------
        None
            The duration [s] is measured with :func:`time.perf_counter` and observed
            when the block exits, also when it raises: the time was spent either way.

        Raises
        ------
        ValueError
            For an unknown stage: a typo must not silently create a new series.
        """
        child = self._stage_children.get(stage)
        if child is None:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        start = time.perf_counter()
        try:
            yield
        finally:
            child.observe(time.perf_counter() - start)

    def observe_batch(self, n: int) -> None:
        """Record the size of one micro-batch (``consumed`` is counted separately).

        Parameters
        ----------
        n : int
            Messages in the batch [messages], ≥ 0.
        """
        if n < 0:
            raise ValueError(f"batch size must be >= 0, got {n}")
        self.batch_size.observe(n)

    def set_model(self, name: str, version: str, preprocessing: str) -> None:
        """Publish the model in use as ``stamp_worker_model_info``.

        Parameters
        ----------
        name, version : str
            From the model artifact's manifest.
        preprocessing : str
            The preprocessing version the worker applies.
        """
        self.model_info.info({"name": name, "version": version,
                              "preprocessing": preprocessing})

    def observe_predictions(self, probabilities: np.ndarray) -> None:
        """Count one batch of model predictions (see :class:`PredictionCollector`).

        Parameters
        ----------
        probabilities : numpy.ndarray
            (N, 5) class probabilities in :data:`worker.model.artifact.CLASS_NAMES` order.
        """
        self.predictions.observe(probabilities)

    def set_drift(self, baseline: Mapping[str, float], max_distance: float) -> None:
        """Publish the drift baseline for the rules to compare the predictions with.

        Parameters
        ----------
        baseline : Mapping[str, float]
            Expected share of each class, summing to 1.
        max_distance : float
            Largest normal total variation distance, in (0, 1].
        """
        for name, share in baseline.items():
            self.drift_baseline_share.labels(name).set(share)
        self.drift_max_distance.set(max_distance)

    def update_from_librdkafka_stats(self, stats_json: str) -> None:
        """Update the lag gauges from one librdkafka statistics document.

        Meant as the consumer's ``stats_cb``.  For each ``topics.<name>.partitions.<id>``
        the gauges take ``consumer_lag`` and ``consumer_lag_stored``.  Skipped, and their
        gauges removed, are: the internal unassigned partition ``-1``; partitions with
        ``desired`` false (librdkafka keeps reporting revoked partitions, with their
        last lag, until the topic handle goes away); and lags of ``-1`` (not known yet,
        e.g. no committed offset for a new group).  A partition no longer reported at all
        loses its gauges too.  Statistics of a producer (``"type": "producer"``) are
        ignored, so a producer's ``stats_cb`` cannot wipe the consumer's lag.

        Parameters
        ----------
        stats_json : str
            The JSON document librdkafka passes to ``stats_cb`` (see librdkafka's
            ``STATISTICS.md``).

        Notes
        -----
        A document that cannot be understood does not raise: an exception here would
        surface from ``consumer.poll()`` and stop the worker over a monitoring glitch.
        It is counted in ``librdkafka_stats_errors`` and logged with its cause, and the
        gauges keep their previous values (a steady error count shows they are stale).
        """
        try:
            parsed = _parse_stats(stats_json)
        except _StatsError as exc:
            self.librdkafka_stats_errors.inc()
            log.warning("librdkafka statistics not understood, lag gauges unchanged: %s",
                        exc)
            return
        if parsed is None:
            return
        lags, assignment_size = parsed
        with self._lag_lock:
            for field, gauge in (("consumer_lag", self.consumer_lag),
                                 ("consumer_lag_stored", self.consumer_lag_stored)):
                current = {key: values[field] for key, values in lags.items()
                           if values[field] is not None}
                for key, value in current.items():
                    gauge.labels(topic=key[0], partition=key[1]).set(value)
                for key in self._lag_series[field] - current.keys():
                    gauge.remove(*key)
                self._lag_series[field] = set(current)
            if assignment_size is not None:
                self.assigned_partitions.set(assignment_size)


class _StatsError(ValueError):
    """A librdkafka statistics document that does not have the documented shape."""


def _lag_value(partition: dict[str, Any], field: str, where: str) -> int | None:
    """One lag field of a partition object: ``None`` when absent or unknown (< 0)."""
    value = partition.get(field)
    if value is None:
        return None  # older librdkafka has no consumer_lag_stored
    # bool is an int subclass; a true/false lag would be a corrupt document.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _StatsError(f"{where}.{field} is {value!r}, not an integer")
    return value if value >= 0 else None


def _parse_stats(
    stats_json: str | bytes,
) -> tuple[dict[tuple[str, str], dict[str, int | None]], int | None] | None:
    """Lags per ``(topic, partition)`` and the assignment size, or ``None`` (producer).

    Raises
    ------
    _StatsError
        When the document is not JSON or not shaped as librdkafka documents it.
    """
    try:
        stats = json.loads(stats_json)
    except (TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise _StatsError(f"not JSON: {exc}") from exc
    if not isinstance(stats, dict):
        raise _StatsError(f"top level is {type(stats).__name__}, not an object")
    if stats.get("type", "consumer") != "consumer":
        return None
    topics = stats.get("topics", {})
    if not isinstance(topics, dict):
        raise _StatsError("'topics' is not an object")
    lags: dict[tuple[str, str], dict[str, int | None]] = {}
    for topic, topic_stats in topics.items():
        if not isinstance(topic_stats, dict):
            raise _StatsError(f"topics.{topic} is not an object")
        partitions = topic_stats.get("partitions", {})
        if not isinstance(partitions, dict):
            raise _StatsError(f"topics.{topic}.partitions is not an object")
        for partition_id, partition in partitions.items():
            where = f"topics.{topic}.partitions.{partition_id}"
            if not isinstance(partition, dict):
                raise _StatsError(f"{where} is not an object")
            # "-1" is librdkafka's internal UA (unassigned) partition, not a real one.
            if partition_id == "-1" or partition.get("desired", True) is False:
                continue
            lags[(topic, partition_id)] = {
                "consumer_lag": _lag_value(partition, "consumer_lag", where),
                "consumer_lag_stored": _lag_value(partition, "consumer_lag_stored", where),
            }
    cgrp = stats.get("cgrp")
    size = cgrp.get("assignment_size") if isinstance(cgrp, dict) else None
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
        raise _StatsError(f"cgrp.assignment_size is {size!r}, not an integer")
    return lags, size


class PredictionCollector(Collector):
    """Predictions by top class and their top probability, counted a batch at a time.

    Exposes ``stamp_worker_model_predictions_total{class}`` (a counter) and
    ``stamp_worker_model_top_probability{class}`` (a histogram).  A
    :class:`prometheus_client.Histogram` takes one value per call, a few microseconds
    each under its lock; here a batch costs two :func:`numpy.bincount` calls whatever
    its size, the same per-alert price as the model's own array work.

    Parameters
    ----------
    class_names : Sequence[str]
        The values of the ``class`` label, in the order of the probability columns.
    buckets : Sequence[float]
        Upper bounds of the histogram buckets, increasing; ``+Inf`` is added.
    """

    def __init__(self, class_names: Iterable[str], buckets: Iterable[float]) -> None:
        self._names = tuple(class_names)
        self._bounds = np.asarray(tuple(buckets), dtype=np.float64)
        if self._bounds.size == 0 or np.any(np.diff(self._bounds) <= 0):
            raise ValueError(f"buckets must increase, got {tuple(self._bounds)}")
        self._n_buckets = self._bounds.size + 1  # the last is +Inf
        self._les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        # Observations per class and bucket (not cumulative), and sums of probability.
        self._counts = np.zeros((len(self._names), self._n_buckets), np.int64)
        self._sums = np.zeros(len(self._names), np.float64)
        self._lock = threading.Lock()

    def observe(self, probabilities: np.ndarray) -> None:
        """Count a batch of predictions.

        Parameters
        ----------
        probabilities : numpy.ndarray
            (N, C) class probabilities, one column per class name.  A row whose top
            probability is not finite is counted in its class and the ``+Inf`` bucket,
            and adds nothing to the sum (one NaN would spoil the sum for good).
        """
        probs = np.asarray(probabilities)
        if probs.ndim != 2 or probs.shape[1] != len(self._names):
            raise ValueError(f"expected (N, {len(self._names)}) probabilities, "
                             f"got shape {probs.shape}")
        if probs.shape[0] == 0:
            return
        top = probs.argmax(axis=1)
        p = probs[np.arange(probs.shape[0]), top].astype(np.float64)
        finite = np.isfinite(p)
        # Prometheus buckets count values <= le: the first bound >= p ("left").
        bucket = np.searchsorted(self._bounds, np.where(finite, p, np.inf), side="left")
        counts = np.bincount(top * self._n_buckets + bucket,
                             minlength=self._counts.size).reshape(self._counts.shape)
        sums = np.bincount(top, weights=np.where(finite, p, 0.0), minlength=len(self._names))
        with self._lock:
            self._counts += counts
            self._sums += sums

    def describe(self) -> Iterable[Metric]:
        """The two families without samples (for the registry's duplicate check)."""
        return [CounterMetricFamily(*self._counter_name_doc(), labels=["class"]),
                HistogramMetricFamily(*self._histogram_name_doc(), labels=["class"])]

    def collect(self) -> Iterable[Metric]:
        """The two families with their current samples."""
        with self._lock:
            cumulative = self._counts.cumsum(axis=1)
            sums = self._sums.copy()
        counter = CounterMetricFamily(*self._counter_name_doc(), labels=["class"])
        histogram = HistogramMetricFamily(*self._histogram_name_doc(), labels=["class"])
        for i, name in enumerate(self._names):
            counter.add_metric([name], float(cumulative[i, -1]))
            histogram.add_metric([name], list(zip(self._les, cumulative[i].tolist(),
                                                  strict=True)), float(sums[i]))
        return [counter, histogram]

    @staticmethod
    def _counter_name_doc() -> tuple[str, str]:
        return (f"{NAMESPACE}_model_predictions",
                "Alerts the model classified, by top class (counted when the model runs).")

    @staticmethod
    def _histogram_name_doc() -> tuple[str, str]:
        return (f"{NAMESPACE}_model_top_probability",
                "Top-class probability of the model's predictions, by top class.")


class HealthState:
    """Liveness and readiness of the worker, shared between the loop and the HTTP thread.

    The loop calls :meth:`beat` every turn (its poll timeout is ≤ 1 s, so a live loop
    beats at least once a second) and :meth:`set_ready` when it gains or loses the
    ability to do work.  The clock is :func:`time.monotonic`, so wall-clock steps
    (NTP) neither kill nor revive the worker.  The first heartbeat counts from
    construction: start-up (loading the model) must end within ``max_silence_s`` or be
    covered by the orchestrator's start-up delay.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = False
        self._reason = "starting"
        self._last_beat = time.monotonic()

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Set readiness.

        Parameters
        ----------
        ready : bool
            True when the model is loaded and partitions are assigned.
        reason : str
            Why not ready (shown by ``/readyz``); ignored when ``ready``.
        """
        with self._lock:
            self._ready = ready
            self._reason = "ready" if ready else (reason or "not ready")

    def beat(self) -> None:
        """Record that the main loop is turning (now, monotonic clock)."""
        with self._lock:
            self._last_beat = time.monotonic()

    def healthy(self, max_silence_s: float) -> tuple[bool, str]:
        """Whether the loop beat within the last ``max_silence_s``.

        Parameters
        ----------
        max_silence_s : float
            Longest silence tolerated [s].

        Returns
        -------
        tuple of (bool, str)
            ``(True, "ok")``, or ``(False, reason)`` with the silence measured.
        """
        with self._lock:
            silence = time.monotonic() - self._last_beat
        if silence <= max_silence_s:
            return True, "ok"
        return False, (f"main loop silent for {silence:.3f} s "
                       f"(limit {max_silence_s:g} s)")

    def ready(self) -> tuple[bool, str]:
        """Readiness and its reason.

        Returns
        -------
        tuple of (bool, str)
            ``(True, "ready")``, or ``(False, reason)``.
        """
        with self._lock:
            return self._ready, self._reason


class _Server(ThreadingHTTPServer):
    """The HTTP server, carrying what the request handler needs."""

    daemon_threads = True  # a hung scraper must not keep the process alive

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry,
                 health: HealthState, max_silence_s: float) -> None:
        super().__init__(address, _Handler)
        self.registry = registry
        self.health = health
        self.max_silence_s = max_silence_s


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics, /healthz, /readyz; 404 for anything else."""

    server: _Server
    timeout = 10.0  # [s] per socket operation: a stalled client frees its thread

    def do_GET(self) -> None:  # noqa: N802 (name fixed by http.server)
        """Answer one GET request."""
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._reply(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok, reason = self.server.health.healthy(self.server.max_silence_s)
            self._text(200 if ok else 503, reason)
        elif path == "/readyz":
            ok, reason = self.server.health.ready()
            self._text(200 if ok else 503, reason)
        else:
            self._text(404, f"not found: {path}")

    def _text(self, status: int, text: str) -> None:
        self._reply(status, (text + "\n").encode(), "text/plain; charset=utf-8")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: Any) -> None:
        # Probes and scrapes arrive every few seconds: keep them out of the default
        # stderr access log, at debug level.
        log.debug("%s %s", self.address_string(), fmt % args)


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP, in a daemon thread.

    Parameters
    ----------
    registry : prometheus_client.CollectorRegistry
        The registry exposed on ``/metrics``.
    health : HealthState
        Source of ``/healthz`` and ``/readyz``.
    host : str
        Address to bind; ``0.0.0.0`` to be scraped from other hosts or pods.
    port : int
        TCP port; 0 picks a free one (see :attr:`port`).
    max_silence_s : float
        ``/healthz`` fails when the loop has not beaten for longer than this [s].

    Examples
    --------
    >>> with MetricsServer(registry, health, port=9108) as server:  # doctest: +SKIP
    ...     pipeline.run()
    """

    def __init__(self, registry: CollectorRegistry, health: HealthState,
                 host: str = "127.0.0.1", port: int = 0, max_silence_s: float = 60.0) -> None:
        self._registry = registry
        self._health = health
        self._address = (host, port)
        self._max_silence_s = max_silence_s
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve in a daemon thread (``OSError`` if the port is taken)."""
        if self._httpd is not None:
            raise RuntimeError("metrics server already started")
        self._httpd = _Server(self._address, self._registry, self._health,
                              self._max_silence_s)
        # serve_forever checks for shutdown every poll_interval [s]: 0.1 s keeps stop()
        # (and the worker's exit) quick for ten idle wake-ups a second.
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="metrics-http", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        """The TCP port bound (the actual one when 0 was asked for)."""
        if self._httpd is None:
            raise RuntimeError("metrics server not started")
        return int(self._httpd.server_address[1])

    def stop(self) -> None:
        """Stop serving and close the socket (does nothing if not started)."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
