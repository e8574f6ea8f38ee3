"""``stamp-worker demo``: the whole job end to end on an embedded default.

Starts the development Kafka broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` names one),
creates fresh topics, replays the real sample alerts of ``../shared/data`` (or
``$STAMP_DATA_DIR``; simulated alerts when neither exists) with :mod:`worker.tools.replay`,
runs the worker with the bundled model until every alert is committed, then prints the
labels per class, the dead letters per reason and the latency figures, and stops
everything it started.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from worker.decode.sources import Payload, iter_payloads
from worker.model.artifact import StampModel
from worker.stream.cluster import command_logging, librdkafka_logger
from worker.stream.config import MetricsConfig, TopicsConfig, default_config
from worker.stream.metrics import HealthState, MetricsServer, WorkerMetrics
from worker.stream.output import CLASS_NAMES, decode_labels
from worker.stream.pipeline import Worker
from worker.tools import devbroker
from worker.tools.replay import Pacer, make_producer, replay
from worker.tools.replay import format_summary as format_replay
from worker.tools.topics import admin_client, ensure_topics, specs_for

PARTITIONS = 3


def sample_alerts(data_dir: Path | None) -> tuple[list[Payload], str]:
    """The demo's input: real alert files when available, else simulated alerts."""
    if data_dir is not None:
        folders = sorted(p for p in data_dir.glob("ztf-alerts*") if p.is_dir())
        if folders:
            payloads = list(iter_payloads(folders))
            return payloads, f"{len(payloads)} real alert files in {data_dir}"
    from training.simulator import simulate, to_alert_payloads

    payloads = [Payload(f"simulated-{i}", data)
                for i, data in enumerate(to_alert_payloads(simulate(300, seed=7)))]
    return payloads, "300 simulated alerts (no real data found)"


def _data_dir() -> Path | None:
    for candidate in (os.environ.get("STAMP_DATA_DIR"), Path.cwd().parent / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def _quantiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    p50, p99 = np.percentile(values, [50, 99])
    return f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"


def run_demo(timeout_s: float = 300.0, data_dir: Path | None = None) -> int:
    """Run the demo; returns 0 when every alert was labelled or dead-lettered.

    Parameters
    ----------
    timeout_s : float
        Stop waiting for the worker this long after the start [s].
    data_dir : Path, optional
        Data folder whose ``ztf-alerts*`` folders are replayed (default:
        ``$STAMP_DATA_DIR``, else ``../shared/data``; simulated alerts when none exists).
    """
    started = time.monotonic()
    command_logging()  # librdkafka: its errors only, as lines of Python logging
    payloads, described = sample_alerts(data_dir if data_dir is not None else _data_dir())
    print(f"input: {described}")
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    workdir = Path(tempfile.mkdtemp(prefix="stamp-demo-"))
    if not bootstrap:
        first = "" if devbroker.classpath_cached() else " (first run: Maven resolves its jars)"
        print(f"starting the local Kafka broker{first}...")
        broker = devbroker.start(workdir / "kafka")
        bootstrap = broker.bootstrap_servers
    print(f"broker: {bootstrap}")
    try:
        return _demo(bootstrap, payloads, started, timeout_s)
    finally:
        if broker is not None:
            # The worker's consumer callbacks refer back to it: collect that cycle so its
            # Kafka clients close now, not after the broker is gone (connection noise).
            gc.collect()
            broker.stop()
            print("local broker stopped")
        shutil.rmtree(workdir, ignore_errors=True)  # the broker's log segments


def _demo(bootstrap: str, payloads: list[Payload], started: float, timeout_s: float) -> int:
    suffix = uuid.uuid4().hex[:8]
    topics = {"input": f"demo-alerts-{suffix}", "output": f"demo-labels-{suffix}",
              "dead": f"demo-dead-letter-{suffix}"}
    # As `stamp-worker topics` makes them for a configuration.
    ensure_topics(admin_client(bootstrap), specs_for(
        [topics["input"]], topics["output"], topics["dead"], brokers=1,
        partitions=PARTITIONS, retention_days=1, dead_letter_retention_days=1))
    pacer = Pacer()
    sent = replay(payloads, make_producer({"bootstrap.servers": bootstrap,
                                           "logger": librdkafka_logger()}), topics["input"],
                  pacer)
    print(format_replay(sent, topics["input"], pacer))
    if sent.failed:
        return 1
    base = default_config(bootstrap)
    config = dataclasses.replace(
        base, group_id=f"demo-{suffix}", metrics=MetricsConfig(port=0),
        topics=TopicsConfig(input=(topics["input"],), output=topics["output"],
                            dead_letter=topics["dead"]))
    model = StampModel.load(config.model_path, backend=config.model_backend,
                            device=config.model_device,
                            threads=config.model_threads,
                            memory_fraction=config.model_memory_fraction)
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    health = HealthState()
    server = MetricsServer(registry, health, port=0)
    server.start()
    metrics_url = f"http://127.0.0.1:{server.port}/metrics"
    worker = Worker(config, model, metrics, health)
    thread = threading.Thread(target=worker.run, daemon=True)
    run_start = time.monotonic()
    thread.start()
    check = Consumer({"bootstrap.servers": bootstrap, "group.id": config.group_id,
                      "logger": librdkafka_logger()})
    try:
        while time.monotonic() - started < timeout_s:
            done = check.committed([TopicPartition(topics["input"], p)
                                    for p in range(PARTITIONS)], 10)
            if sum(max(tp.offset, 0) for tp in done) >= len(payloads):
                break
            if not thread.is_alive():
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - run_start
    finally:
        check.close()
        worker.request_stop()
        thread.join(60)
        server.stop()
    labels = _read(bootstrap, topics["output"])
    dead = _read(bootstrap, topics["dead"])
    records = [(m, r) for m in labels for r in decode_labels(m.value())]
    print(f"\nworker: {len(payloads)} messages in {elapsed:.1f} s with model "
          f"{model.name} v{model.version} (metrics were on {metrics_url})")
    print(f"\n{'class':<10}{'labels':>8}{'mean p':>9}")
    by_class = Counter(r["top_class"] for _, r in records)
    for name in CLASS_NAMES:
        probs = [r["top_probability"] for _, r in records if r["top_class"] == name]
        mean = f"{np.mean(probs):.2f}" if probs else "-"
        print(f"{name:<10}{by_class[name]:>8}{mean:>9}")
    print(f"{'total':<10}{len(records):>8}")
    reasons = Counter(dict(m.headers() or [])["stamp.reason"].decode() for m in dead)
    print(f"\ndead letters: {sum(reasons.values())}"
          + "".join(f"\n  {reason:<24}{n:>4}" for reason, n in reasons.most_common()))
    # The alerts were all produced before the worker started, so the time they waited in
    # the topic says nothing; what the worker adds is consumed → published.
    in_worker = [(r["published_at"] - r["consumed_at"]).total_seconds() for _, r in records]
    print("\nlatency (bench/ measures end-to-end latency at a fixed offered rate)")
    print(f"  consumed → label published, per alert: {_quantiles(in_worker)}")
    for stage in ("decode", "infer", "produce", "commit"):
        total = registry.get_sample_value("stamp_worker_stage_seconds_sum", {"stage": stage})
        count = registry.get_sample_value("stamp_worker_stage_seconds_count", {"stage": stage})
        if count:
            print(f"  {stage:<8} {total / count * 1000:8.1f} ms per batch ({count:.0f} batches)")
    accounted = len(records) + sum(reasons.values())
    print(f"\naccounted for: {len(records)} labels + {sum(reasons.values())} dead letters")
    return 0 if accounted >= len(payloads) else 1


def _read(bootstrap: str, topic: str) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4()}",
                         "logger": librdkafka_logger(),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "fetch.max.bytes": 64 * 1024 * 1024,
                         "max.partition.fetch.bytes": 16 * 1024 * 1024})
    consumer.subscribe([topic])
    out: list = []
    idle = 0
    while idle < 3:
        batch = [m for m in consumer.consume(1000, 0.5) if m.error() is None]
        out += batch
        idle = 0 if batch else idle + 1
    consumer.close()
    return out
