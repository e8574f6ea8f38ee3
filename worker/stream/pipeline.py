"""The streaming loop: consume → decode → micro-batch → infer → produce → commit.

The only module that knows Kafka's commit rules:

* ``enable.auto.commit`` is off.  Per micro-batch: produce every label and dead-letter
  record; the batch's offsets (``offset + 1`` per partition) are committed once every
  one of its outputs, and of every earlier batch's, is confirmed delivered.  The loop
  does not wait for that: it checks confirmations between batches and commits
  asynchronously what is confirmed, in batch order, keeping at most
  :data:`MAX_UNCONFIRMED` batches unconfirmed.  A delivery error stops the worker
  with nothing committed from that batch on.  Stopping, ``on_revoke`` and a failure
  ``flush()`` and commit synchronously what is delivered (each partition's error
  checked).  Nothing is ever committed for a batch whose outputs were not all
  delivered (at-least-once; with ``exactly_once`` the outputs and offsets go in one
  producer transaction per batch instead).
* A bad alert is data: it goes to the dead-letter topic with its reason and its offset
  is committed.  A broker, model or registry failure is not: it propagates, nothing of
  the batch is committed, and a restarted worker processes the batch again.  Consumer
  errors that librdkafka retries by itself and that concern no message (an input topic
  not there yet) are counted and logged, and the loop goes on.
* SIGTERM/SIGINT only set a flag; the batch in hand is finished, committed, and the
  consumer closed (exit status 0).  Poll timeouts stay ≤ 1 s so the flag is seen.
* With ``batch.decode_processes`` > 0, helper processes (:mod:`worker.stream.decodepool`)
  decode chunks of the batch in parallel while this process runs the model on the
  chunks already back; the batch still produces and commits only when every chunk is
  done, so the commit rules above do not change.
* Batches overlap by one: batch k+1 is consumed (and handed to the helpers) before
  batch k is classified, produced and committed, so the helpers decode k+1 while this
  process works on k.  Commits stay in batch order and cover only the finished batch;
  if batch k fails, k+1 is dropped uncommitted too.  When a batch is in flight the
  next ``consume()`` does not wait, so a quiet stream adds no latency.
* Rebalances happen inside ``consume()``: ``on_revoke`` finishes and commits the batch
  in flight (the last moment its offsets may be committed); ``on_lost`` drops it
  uncommitted (another member may own those partitions; a re-assignment starts again
  from the committed offsets).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from worker.decode.alerts import AlertDecoder
from worker.labeller import Labeller, Outcome, Rejected, Work
from worker.model.artifact import StampModel
from worker.prepare.stamps import PREPROCESSING_VERSION
from worker.stream.cluster import librdkafka_logger, same_kind
from worker.stream.config import BUNDLED_MODEL_BASELINE, WorkerConfig
from worker.stream.decodepool import DecodePool, refusal_to_rejected
from worker.stream.identity import (
    IdentityError,
    TransactionalId,
    claim_transactional_id,
    fenced_reason,
)
from worker.stream.metrics import HealthState, WorkerMetrics, jd_to_unix
from worker.stream.output import Source, dead_letter_headers, encode_label

log = logging.getLogger("stamp_worker")
# Most messages per chunk sent to a decode helper: small enough that the model can work
# on the first chunks while the helpers decode the next, large enough to amortize IPC.
DECODE_CHUNK = 128
# Batches produced whose deliveries are not yet all confirmed: waiting for delivery
# reports after every batch (flush) idled the loop ~10-20 ms per batch, which at 1,000
# alerts/s and 50 ms batches is a third of the time; a few in the air bound the
# duplicates a crash can cause.
MAX_UNCONFIRMED = 4
# Seconds between two log lines for the same recoverable consumer error.
CONSUMER_ERROR_LOG_S = 60.0
# Error codes that say the cluster (or one of its brokers) cannot be reached.
_UNREACHABLE = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                          KafkaError._RESOLVE})


class DeliveryError(RuntimeError):
    """Outputs of a batch were not all delivered: the batch must not be committed."""


class CommitError(RuntimeError):
    """The broker refused an offset commit."""


@dataclass
class _Pending:
    """The outputs of one batch awaiting delivery."""

    errors: list[str] = field(default_factory=list)
    delivered: int = 0
    expected: int = 0
    produced_at: float = field(default_factory=time.monotonic)

    @property
    def confirmed(self) -> bool:
        """Every output of the batch is delivered."""
        return self.delivered >= self.expected


@dataclass
class _Batch:
    """A consumed micro-batch between :meth:`Worker.start_batch` and ``finish_batch``."""

    messages: Sequence[Message]
    offsets: dict[tuple[str, int], int]
    items: list[tuple[bytes, Source, int, int]]
    futures: list[Future] | None = None


def _next_offsets(offsets: dict[tuple[str, int], int]) -> list[TopicPartition]:
    """What to commit for the last processed offset of each partition: ``offset + 1``."""
    return [TopicPartition(t, p, o + 1) for (t, p), o in offsets.items()]


def _some_broker_up(stats_json: str) -> bool:
    """Whether a librdkafka statistics document shows a broker in state ``UP``."""
    try:
        brokers = json.loads(stats_json).get("brokers", {})
        return any(b.get("state") == "UP" and b.get("nodeid", -1) >= 0
                   for b in brokers.values())
    except (ValueError, AttributeError):
        return False


def _source(message: Message) -> Source:
    kind, ts = message.timestamp()
    return Source(message.topic(), message.partition(), message.offset(),
                  ts if kind != 0 else -1)


class Worker:
    """The stamp classifier as a broker pipeline step.

    Parameters
    ----------
    config : WorkerConfig
        Topics, group, batch size, Kafka settings, policies.
    model : StampModel
        The loaded, warmed-up model.
    metrics : WorkerMetrics
        Where counters and latencies go.
    health : HealthState
        Heartbeat and readiness for ``/healthz`` and ``/readyz``.
    decoder : AlertDecoder, optional
        Alert decoder (give one with a schema registry for Confluent-framed input).
    """

    def __init__(self, config: WorkerConfig, model: StampModel, metrics: WorkerMetrics,
                 health: HealthState, decoder: AlertDecoder | None = None) -> None:
        self.config = config
        self.model = model
        self.metrics = metrics
        self.health = health
        self.labeller = Labeller(model, decoder or AlertDecoder(), config.asteroid_policy,
                                 on_predictions=metrics.observe_predictions)
        self._pool = (DecodePool(config.batch.decode_processes, model.preprocess,
                                 config.asteroid_policy, config.registry.url,
                                 config.registry.client)
                      if config.batch.decode_processes > 0 else None)
        self._stop = threading.Event()
        self._assigned: set[tuple[str, int]] = set()
        self._pending = _Pending()
        self._in_flight: _Batch | None = None
        # Produced batches awaiting delivery reports: (offsets, deliveries), oldest first.
        self._unconfirmed: deque[tuple[dict[tuple[str, int], int], _Pending]] = deque()
        # Offsets committed asynchronously since the last synchronous commit, which
        # repeats them: an asynchronous commit may still be in the air at a stop.
        self._committed_async: dict[tuple[str, int], int] = {}
        # Offsets of delivered batches not committed yet: asynchronous commits go out at
        # most every batch.commit_interval_ms (each is a write to __consumer_offsets).
        self._delivered: dict[tuple[str, int], int] = {}
        self._last_commit = time.monotonic()
        self._error_logged: dict[str, float] = {}  # consumer error kind → when logged
        self._cluster_down = False  # librdkafka said all brokers are down; not yet back
        self._fenced = False  # another live worker took this one's id: it stops
        kafka = config.kafka
        consumer_conf: dict[str, Any] = {
            "session.timeout.ms": 45000,
            "auto.offset.reset": "earliest",
            "statistics.interval.ms": 5000,
            # A fetch response is held whole while librdkafka splits it into messages:
            # responses of up to 64 MiB (16 MiB per partition) took a process's peak to
            # 359 MiB, 8 MiB (1 MiB per partition) to 265 MiB, at the same drain rate
            # (bench_memory.py; README, Performance).  Larger messages still come: a
            # first batch larger than these limits is returned whole (KIP-74).
            "fetch.max.bytes": 8 * 1024 * 1024,
            "max.partition.fetch.bytes": 1024 * 1024,
            # librdkafka's pre-fetch queue stays at its default, 64 MiB (~900 alerts): at
            # 16 or 32 MiB the fetcher waited (fetch.queue.backoff.ms) and one process
            # drained 742-799 alerts/s instead of 1,152 (bench_e2e.py; README, Performance).
            **kafka.client_settings("consumer"),
            "group.id": config.group_id,
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "stats_cb": self._on_stats,
            "on_commit": self._on_commit,
            # Without an error_cb librdkafka's client-level errors (all brokers down)
            # reach no one; its log goes through Python logging, rate-limited.
            "error_cb": self._consumer_error,
            "logger": librdkafka_logger(),
        }
        producer_conf: dict[str, Any] = {
            "linger.ms": 5,
            # Dead letters carry the original message, which may be a large container.
            "message.max.bytes": 16 * 1024 * 1024,
            "compression.type": "lz4",
            "enable.idempotence": True,
            **kafka.client_settings("producer"),
            "error_cb": self._producer_error,
            "logger": librdkafka_logger(),
        }
        if config.instance_id is not None:
            # Static membership: a restarted member takes its partitions back at once,
            # instead of the group waiting out the dead one's session.timeout.ms.
            consumer_conf["group.instance.id"] = config.instance_id
            log.info("static group membership: group.instance.id %s", config.instance_id)
        self._transactional_id: TransactionalId | None = None
        if config.exactly_once:
            # The same id after a restart: init_transactions() then fences the dead
            # predecessor and aborts the transaction it left open.
            self._transactional_id = claim_transactional_id(config)
            producer_conf["transactional.id"] = self._transactional_id.value
            consumer_conf["isolation.level"] = "read_committed"
            log.info("exactly-once: transactional.id %s", self._transactional_id.value)
        self.consumer = Consumer(consumer_conf)
        self.producer = Producer(producer_conf)
        if config.exactly_once:
            self.producer.init_transactions(30)
        metrics.set_model(model.name, model.version, PREPROCESSING_VERSION)
        metrics.set_drift(config.drift.baseline, config.drift.max_distance)
        if config.model_path is not None and config.drift.baseline == BUNDLED_MODEL_BASELINE:
            log.warning("drift.baseline holds the bundled model's class shares, not those of "
                        "the model in %s: measure them (stamp-worker classify) and set "
                        "drift.baseline, or the drift alert compares two models",
                        config.model_path)
        if hasattr(model, "warm_up"):
            # A batch shape traced mid-stream stalls the loop ~0.3 s: trace them all first.
            model.warm_up(config.batch.max_messages)

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self, *_: Any) -> None:
        """Ask the loop to finish the batch in hand and exit (safe from a signal handler)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT request a clean stop (drain, commit, close)."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self, until_idle_s: float | None = None) -> int:
        """Run until stopped; return the exit status (0 after a clean stop).

        Failures (broker, model, registry, delivery, commit) propagate after the
        consumer is closed without committing the failed batch.

        Parameters
        ----------
        until_idle_s : float, optional
            Also stop cleanly once partitions are assigned and no message has arrived
            for this long [s]: a backlog (a replayed night) drained, then exit 0.
        """
        self.consumer.subscribe(list(self.config.topics.input), on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        timeout = self.config.batch.max_wait_ms / 1000.0  # ≤ 1 s (validated)
        # TensorFlow and Keras leave ~400,000 objects to the garbage collector, and a
        # full collection walks them all (~160 ms on the development machine): a stall
        # of the stream every few seconds.  They live as long as the process, so take
        # them out of the collector's scans (reference counting still frees them).
        gc.collect()
        gc.freeze()
        last_message = time.monotonic()
        try:
            while not self._stop.is_set():
                # With a batch in flight, take only what is already fetched: waiting
                # would hold back that batch's labels in a quiet stream.
                messages = self.consumer.consume(self.config.batch.max_messages,
                                                 0 if self._in_flight else timeout)
                self.health.beat()
                if messages or not self._assigned:
                    last_message = time.monotonic()
                elif until_idle_s is not None and time.monotonic() - last_message >= until_idle_s:
                    log.info("no message for %g s: stopping (--until-idle)", until_idle_s)
                    self._stop.set()
                if self._unconfirmed or self._delivered:
                    # Idle or not, delivered batches get committed (this polls too),
                    # once the commit interval has passed.
                    self._commit_delivered()
                else:
                    self.producer.poll(0)
                batch = self.start_batch(messages) if messages else None
                previous, self._in_flight = self._in_flight, batch
                if previous is not None:
                    self.finish_batch(previous)
            # Stopping: the batch in hand is finished and committed.
            last, self._in_flight = self._in_flight, None
            if last is not None:
                self.finish_batch(last)
            self._commit_delivered(final=True)
        except BaseException as exc:
            # Batch k failed: k+1 must not be committed later (by on_revoke in close()),
            # or the restart would skip k.  Batches before k whose outputs are all
            # delivered may still be committed.
            self._in_flight = None
            self._commit_what_is_safe()
            reason = fenced_reason(exc, self.config, self._transactional_id and
                                   self._transactional_id.value)
            if reason is not None:
                self._fenced = True
                raise IdentityError(reason) from exc
            raise
        finally:
            self.health.set_ready(False, "stopping")
            self._close()
        return 0

    def _close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        # A fenced worker may commit nothing, and a fenced producer's next poll or flush
        # would raise its fatal error again from inside the delivery callbacks.
        remaining = 0 if self._fenced else self.producer.flush(self.config.shutdown_timeout_s)
        if remaining:
            log.error("%d produced records were not delivered before shutdown", remaining)
        self.consumer.close()
        if self._transactional_id is not None:
            self._transactional_id.release()

    # ------------------------------------------------------------------ rebalance
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.update((p.topic, p.partition) for p in partitions)
        self.metrics.rebalances.labels(kind="assign").inc()
        self._cluster_down = False  # the group coordinator just answered
        self.health.set_ready(True)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The last moment the batch in flight may commit these partitions' offsets
        # (none when another worker with this one's id has taken over).
        batch, self._in_flight = self._in_flight, None
        if batch is not None:
            self.finish_batch(batch)
        if not self._fenced:
            self._commit_delivered(final=True)
        self._assigned.difference_update((p.topic, p.partition) for p in partitions)
        self.metrics.rebalances.labels(kind="revoke").inc()
        if not self._assigned:
            self.health.set_ready(False, "no partitions assigned")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member may own these partitions already: commit nothing, and drop
        # the batch in flight (its messages are read again from the committed offsets
        # by whoever is assigned them next, this worker included).
        self._in_flight = None
        self._unconfirmed.clear()
        self._committed_async.clear()
        self._delivered = {}
        self._assigned.difference_update((p.topic, p.partition) for p in partitions)
        self.metrics.rebalances.labels(kind="lost").inc()
        if not self._assigned:
            self.health.set_ready(False, "partitions lost")

    # ------------------------------------------------------------------ one batch
    def start_batch(self, messages: Sequence[Message]) -> _Batch:
        """Take a consumed micro-batch in.

        It is counted, its offsets noted, and its messages handed to the decode helpers
        when there are some; nothing is produced or committed yet.
        """
        consumed_at_ms = int(time.time() * 1000)
        self._cluster_back()
        self.metrics.observe_batch(len(messages))
        offsets: dict[tuple[str, int], int] = {}
        items: list[tuple[bytes, Source, int, int]] = []
        for position, message in enumerate(messages):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                if (error.fatal() or error.code() == KafkaError._FATAL
                        or message.offset() is not None):
                    # The client is unusable, or a message at an offset could not be
                    # read: stop with nothing of this batch committed (a restart reads
                    # the message again) rather than step over an alert.
                    raise KafkaException(error)
                self._consumer_error(error)
                continue
            self.metrics.consumed.inc()
            key = (message.topic(), message.partition())
            offsets[key] = max(offsets.get(key, -1), message.offset())
            items.append((message.value() or b"", _source(message), consumed_at_ms, position))
        batch = _Batch(messages, offsets, items)
        if self._pool is not None:
            size = max(1, min(DECODE_CHUNK,
                              -(-len(items) // self.config.batch.decode_processes)))
            batch.futures = [self._pool.submit(items[i:i + size])
                             for i in range(0, len(items), size)]
        return batch

    def _consumer_error(self, error: KafkaError) -> None:
        """Count, log and show an error that librdkafka recovers from by itself.

        Such errors are an input topic that does not exist yet or is not authorized, or
        brokers down (these come through ``error_cb``).  Each kind is logged at most
        once a minute and shown by ``/readyz`` while no partition is assigned, or while
        every broker is down.  Stopping instead would turn a topic created a moment
        after the worker, or a broker restart, into a crash loop.

        A fatal error (this static member fenced by another with its id) is raised
        instead: the consumer is unusable, and waiting would hide it.
        """
        if error.fatal() or error.code() == KafkaError._FATAL:
            raise KafkaException(error)
        self.metrics.consumer_errors.labels(error=error.name()).inc()
        self._client_error("consumer", error)
        if not self._assigned:
            self.health.set_ready(False, f"no partitions assigned: {error.str()}")

    def _producer_error(self, error: KafkaError) -> None:
        """The producer's client-level errors (brokers down): logged and shown alike.

        A fatal one (the idempotent producer's state lost) also fails the next delivery
        or flush, which stops the worker with nothing of the batch committed.
        """
        self._client_error("producer", error)

    def _client_error(self, role: str, error: KafkaError) -> None:
        now = time.monotonic()
        # A cluster that cannot be reached is one event, whichever of its connections
        # (bootstrap, each broker, the group coordinator) reports it first: one line per
        # client and error code.  Other errors name what they are about (a topic), so
        # their text, less numbers, tells them apart.
        kind = (f"{role}:{error.name()}" if error.code() in _UNREACHABLE
                else f"{role}:{same_kind(error.str())}")
        if now - self._error_logged.get(kind, -math.inf) >= CONSUMER_ERROR_LOG_S:
            self._error_logged[kind] = now
            log.warning("%s: %s (librdkafka retries; repeats are counted in "
                        "stamp_worker_consumer_errors_total)", role, error.str())
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._cluster_down = True
            self.health.set_ready(False, f"cannot reach Kafka at "
                                  f"{self.config.kafka.bootstrap_servers}: {error.str()}")

    def _cluster_back(self) -> None:
        """Messages or a broker seen again after an outage: ready if partitions are."""
        if self._cluster_down:
            self._cluster_down = False
            log.info("Kafka at %s reachable again", self.config.kafka.bootstrap_servers)
            if self._assigned:
                self.health.set_ready(True)

    def _on_stats(self, stats_json: str) -> None:
        self.metrics.update_from_librdkafka_stats(stats_json)
        if self._cluster_down and _some_broker_up(stats_json):
            self._cluster_back()

    def finish_batch(self, batch: _Batch) -> None:
        """Classify, publish and commit a batch from :meth:`start_batch` (all or nothing)."""
        messages, offsets = batch.messages, batch.offsets
        if batch.futures is not None:
            work, outcomes, refused = self._classify_in_pool(batch)
        else:
            work, outcomes, refused = self._classify_here(batch.items)
        dead = [(messages[tag], rejected) for tag, rejected in refused]
        if self.config.exactly_once:
            self.producer.begin_transaction()
        self._pending = _Pending()
        try:
            with self.metrics.time_stage("produce"):
                for item, outcome in zip(work, outcomes, strict=True):
                    self._produce_label(item, outcome)
                for message, rejected in dead:
                    self._produce(self.config.topics.dead_letter, message.key(),
                                  message.value(),
                                  dead_letter_headers(rejected.error, _source(message),
                                                      rejected.record_index))
                    self.metrics.dead_lettered.labels(reason=rejected.error.reason.value).inc()
            with self.metrics.time_stage("commit"):
                if self.config.exactly_once:
                    self._commit_transaction(offsets)
                else:
                    self._pending.expected = len(work) + len(dead)
                    self._unconfirmed.append((offsets, self._pending))
                    self._commit_delivered()
        except BaseException as exc:
            if self.config.exactly_once and fenced_reason(
                    exc, self.config, self._transactional_id and self._transactional_id.value
            ) is None:  # a fenced producer aborts nothing: its successor has done it
                self._abort_transaction()
            raise

    def _abort_transaction(self) -> None:
        # Left open, the transaction would hold back read_committed consumers of the
        # label topic until the broker times it out (transaction.timeout.ms).
        try:
            self.producer.abort_transaction(self.config.shutdown_timeout_s)
        except KafkaException as exc:
            if fenced_reason(exc, self.config, self._transactional_id and
                             self._transactional_id.value) is not None:
                # The cause of the failure (a produce() of a fenced producer only says
                # "fatal error"): another worker took this one's transactional.id.
                raise
            log.error("could not abort the batch's transaction: %s", exc)

    def _classify_here(self, items: list[tuple[bytes, Source, int, int]]
                       ) -> tuple[list[Work], list[Outcome], list[tuple[int, Rejected]]]:
        """Decode in this process, then one model call for the batch."""
        with self.metrics.time_stage("decode"):
            work, refused = self.labeller.decode_batch(items)
        with self.metrics.time_stage("infer"):
            outcomes = self.labeller.infer(work)
        return work, outcomes, refused

    def _classify_in_pool(self, batch: _Batch
                          ) -> tuple[list[Work], list[Outcome], list[tuple[int, Rejected]]]:
        """Helpers decode chunks in parallel; the model runs on each chunk as it arrives."""
        assert batch.futures is not None
        start = time.perf_counter()
        work: list[Work] = []
        outcomes: list[Outcome] = []
        refused: list[tuple[int, Rejected]] = []
        model_seconds = 0.0
        for future in batch.futures:
            chunk_work, chunk_refused = future.result()  # a helper's failure: no commit
            refused += [refusal_to_rejected(r) for r in chunk_refused]
            began = time.perf_counter()
            outcomes += self.labeller.infer(chunk_work)
            model_seconds += time.perf_counter() - began
            work += chunk_work
        # Decoding overlaps inference and the previous batch: "decode" is the time this
        # batch waited for its helpers, not in the model.
        self.metrics.stage_seconds.labels(stage="decode").observe(
            time.perf_counter() - start - model_seconds)
        self.metrics.stage_seconds.labels(stage="infer").observe(model_seconds)
        return work, outcomes, refused

    def _produce_label(self, item: Work, outcome: Outcome) -> None:
        now = time.time()
        record = self.labeller.record(item, outcome, int(now * 1000))
        self.metrics.alert_age_seconds.observe(max(0.0, now - jd_to_unix(item.alert.jd)))
        self.metrics.classified.labels(label=record["top_class"]).inc()
        self._produce(self.config.topics.output, item.alert.object_id.encode(),
                      encode_label(record), None, item.source.timestamp_ms)

    def _produce(self, topic: str, key: bytes | None, value: bytes | None,
                 headers: list[tuple[str, bytes]] | None, source_ts_ms: int = -1) -> None:
        callback = self._delivery_callback(source_ts_ms)
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers,
                                      on_delivery=callback)
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self.producer.poll(0.1)

    def _delivery_callback(self, source_ts_ms: int) -> Callable[[Any, Message], None]:
        pending = self._pending
        metrics = self.metrics

        def on_delivery(error: KafkaError | None, message: Message) -> None:
            # Only record: the loop raises after flush().
            if error is not None:
                pending.errors.append(f"{message.topic()}: {error}")
                metrics.delivery_failures.inc()
                return
            pending.delivered += 1
            if source_ts_ms > 0:
                metrics.end_to_end_seconds.observe(max(0.0, time.time() - source_ts_ms / 1000))

        return on_delivery

    def _flush_or_raise(self) -> None:
        remaining = self.producer.flush(self.config.shutdown_timeout_s)
        if remaining:
            raise DeliveryError(f"{remaining} records not delivered within "
                                f"{self.config.shutdown_timeout_s} s; batch not committed")
        if self._pending.errors:
            raise DeliveryError(f"{len(self._pending.errors)} records failed delivery "
                                f"(first: {self._pending.errors[0]}); batch not committed")

    def _commit_delivered(self, final: bool = False) -> None:
        """Commit the oldest batches whose outputs are all delivered, in order.

        Parameters
        ----------
        final : bool
            Wait for every delivery report (``flush()``) and commit synchronously,
            checking each partition (stopping, rebalancing).  Otherwise take the
            reports that have arrived, wait only while more than
            :data:`MAX_UNCONFIRMED` batches are unconfirmed, and commit asynchronously.

        Raises
        ------
        DeliveryError
            An output failed delivery, or reports did not come within the shutdown
            timeout: nothing from that batch on is committed.
        """
        if final:
            remaining = self.producer.flush(self.config.shutdown_timeout_s)
            if remaining and self._unconfirmed:
                raise DeliveryError(f"{remaining} records not delivered within "
                                    f"{self.config.shutdown_timeout_s} s; not committed")
        else:
            self.producer.poll(0)
            while len(self._unconfirmed) > MAX_UNCONFIRMED:
                head = self._unconfirmed[0][1]
                if head.confirmed or head.errors or self._overdue(head):
                    break
                self.producer.poll(0.05)
        failure = ""
        while self._unconfirmed:
            offsets, pending = self._unconfirmed[0]
            if pending.errors:
                failure = (f"{len(pending.errors)} records failed delivery "
                           f"(first: {pending.errors[0]}); batch not committed")
            elif not pending.confirmed and self._overdue(pending):
                failure = (f"{pending.expected - pending.delivered} records not delivered "
                           f"within {self.config.shutdown_timeout_s} s; batch not committed")
            if failure or not pending.confirmed:
                break
            for key, offset in offsets.items():
                self._delivered[key] = max(self._delivered.get(key, -1), offset)
            self._unconfirmed.popleft()
        if failure or final:
            # Synchronously, repeating the asynchronous commits that may still be in the
            # air; after a failure, the batches before it are delivered: commit them
            # before stopping.
            ready = dict(self._committed_async)
            for key, offset in self._delivered.items():
                ready[key] = max(ready.get(key, -1), offset)
            self._delivered = {}
            self._commit(ready)
            if failure:
                raise DeliveryError(failure)
        elif self._delivered and (time.monotonic() - self._last_commit
                                  >= self.config.batch.commit_interval_ms / 1000):
            ready, self._delivered = self._delivered, {}
            self._commit(ready, asynchronous=True)

    def _overdue(self, pending: _Pending) -> bool:
        """A batch still waiting for delivery reports after the shutdown timeout."""
        return time.monotonic() - pending.produced_at > self.config.shutdown_timeout_s

    def _commit_what_is_safe(self) -> None:
        """After a failure: commit the batches before it that are all delivered."""
        if self.config.exactly_once or not self._unconfirmed:
            return
        try:
            self._commit_delivered(final=True)
        except (DeliveryError, CommitError, KafkaException) as exc:
            log.error("after the failure, earlier batches were not committed either: %s", exc)
        self._unconfirmed.clear()

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        # Asynchronous commits report here.  A failed one is not data loss: a later
        # commit covers its partitions, or a restart reads those alerts again.
        failed = [tp for tp in partitions or [] if tp.error is not None]
        if error is not None or failed:
            self.metrics.commit_failures.inc()
            log.warning("offset commit failed (%s); a later commit or a restart covers it",
                        error or ", ".join(f"{tp.topic}[{tp.partition}]: {tp.error}"
                                           for tp in failed))

    def _commit_transaction(self, offsets: dict[tuple[str, int], int]) -> None:
        partitions = _next_offsets(offsets)
        if partitions:
            self.producer.send_offsets_to_transaction(
                partitions, self.consumer.consumer_group_metadata(), 30)
        self.producer.commit_transaction(60)
        self._flush_or_raise()
        self.metrics.commits.inc()

    def _commit(self, offsets: dict[tuple[str, int], int], asynchronous: bool = False) -> None:
        partitions = _next_offsets(offsets)
        if not partitions:
            return
        self._last_commit = time.monotonic()
        if asynchronous:
            self.consumer.commit(offsets=partitions, asynchronous=True)
            self._committed_async.update(offsets)
            self.metrics.commits.inc()
            return
        result = self.consumer.commit(offsets=partitions, asynchronous=False)
        failed = [tp for tp in result or [] if tp.error is not None]
        if failed:
            self.metrics.commit_failures.inc()
            raise CommitError("offset commit failed for "
                              + ", ".join(f"{tp.topic}[{tp.partition}]: {tp.error}"
                                          for tp in failed))
        self._committed_async.clear()  # repeated by this commit
        self.metrics.commits.inc()
