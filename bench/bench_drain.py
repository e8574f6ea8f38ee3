"""CPU cost of the worker per alert, and what decode helper processes change.

For each ``--decode-processes`` value: a fresh topic (3 partitions) is filled with
``--backlog`` alerts (the single-alert ZTF files of ``../shared/data`` cycled, or built
ones), then a :class:`worker.stream.pipeline.Worker` (the bundled model or ``--model``, batches
of ``--max-messages``) drains it in this process; the clock runs from the assignment of
the partitions until the group's committed offsets cover the backlog, so model loading,
helper start-up and the group join are excluded, and no load generator shares the
cores. CPU time is read from ``/proc`` for the worker, its helpers and the broker (the one
this script started, or the only local Kafka JVM), and for the whole machine ("machine
busy": everything, this script's own threads and other tenants included) [cores].

Run from the repository root::

    .venv/bin/python bench/bench_drain.py [--backlog 6000] [--decode-processes 0 1 2 3]
        [--repeat 2] [--max-messages 256] [--model DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
import time
import uuid
from pathlib import Path

from common import (
    broker_for_run,
    cpu_seconds,
    data_dir,
    delete_topics,
    load_alerts,
    local_broker_pid,
    machine_busy_seconds,
)
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import CollectorRegistry

from worker.model.artifact import StampModel
from worker.stream.config import BatchConfig, MetricsConfig, TopicsConfig, default_config
from worker.stream.metrics import HealthState, WorkerMetrics
from worker.stream.pipeline import Worker

PARTITIONS = 3


def drain(bootstrap: str, alerts: list[bytes], backlog: int, processes: int,
          model: StampModel, broker_pid: int | None, max_messages: int = 256
          ) -> dict[str, float]:
    suffix = uuid.uuid4().hex[:8]
    topics = {"input": f"drain-in-{suffix}", "output": f"drain-out-{suffix}",
              "dead": f"drain-dead-{suffix}"}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topics["input"], PARTITIONS, 1),
                                       NewTopic(topics["output"], 1, 1),
                                       NewTopic(topics["dead"], 1, 1)]).values():
        future.result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "message.max.bytes": 16 * 1024 * 1024})
    for i in range(backlog):
        producer.produce(topics["input"], alerts[i % len(alerts)], key=str(i).encode())
        if i % 500 == 0:
            producer.poll(0)
    producer.flush(120)
    config = dataclasses.replace(
        default_config(bootstrap), group_id=f"drain-{suffix}", metrics=MetricsConfig(port=0),
        topics=TopicsConfig(input=(topics["input"],), output=topics["output"],
                            dead_letter=topics["dead"]),
        batch=BatchConfig(max_messages=max_messages, max_wait_ms=50,
                          decode_processes=processes))
    health = HealthState()
    worker = Worker(config, model, WorkerMetrics(CollectorRegistry()), health)
    helpers = worker._pool.pids if worker._pool is not None else []  # noqa: SLF001
    pids = {"worker": [os.getpid()], "helpers": helpers,
            "broker": [broker_pid] if broker_pid else []}
    thread = threading.Thread(target=worker.run)
    thread.start()
    # The clock starts when the group has assigned the partitions: joining takes 0.5-3 s,
    # which would otherwise weigh on a drain of a few seconds.
    while not health.ready()[0]:
        time.sleep(0.001)
    before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
    machine_before = machine_busy_seconds()
    start = time.perf_counter()
    check = Consumer({"bootstrap.servers": bootstrap, "group.id": config.group_id})
    while True:
        done = check.committed([TopicPartition(topics["input"], p) for p in range(PARTITIONS)],
                               10)
        if sum(max(tp.offset, 0) for tp in done) >= backlog:
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    after = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
    machine = (machine_busy_seconds() - machine_before) / elapsed
    worker.request_stop()
    thread.join()
    check.close()
    delete_topics(admin, topics)
    out = {"rate": backlog / elapsed}
    out.update({f"{k}_us": (after[k] - before[k]) / backlog * 1e6 for k in pids})
    out["cores"] = sum(after[k] - before[k] for k in pids) / elapsed
    out["machine"] = machine
    return out


def main() -> int:
    """Drain a backlog for each helper count; print one Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--backlog", type=int, default=6000)
    parser.add_argument("--decode-processes", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--max-messages", type=int, default=256, help="batch.max_messages")
    parser.add_argument("--model", type=Path, default=None,
                        help="model artifact directory (default: the bundled one)")
    args = parser.parse_args()
    alerts, _ = load_alerts(data_dir(args.data))
    model = StampModel.load(args.model)
    model.warm_up(args.max_messages)
    rows = []
    with broker_for_run("bench-drain-") as (bootstrap, started_pid, _):
        broker_pid = local_broker_pid(started_pid)
        for _ in range(args.repeat):
            for processes in args.decode_processes:
                rows.append((processes, drain(bootstrap, alerts, args.backlog, processes, model,
                                              broker_pid, args.max_messages)))
    print(f"{os.cpu_count()} cores; model {model.manifest.name} {model.manifest.version}; "
          f"backlog {args.backlog} alerts, batches of {args.max_messages}; CPU per alert [µs]")
    print("\n| decode_processes | alerts/s | worker | helpers | broker | cores busy | "
          "machine busy |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for processes, r in rows:
        broker_us = f"{r['broker_us']:,.0f}" if broker_pid else "n/a"
        print(f"| {processes} | {r['rate']:,.0f} | {r['worker_us']:,.0f} | "
              f"{r['helpers_us']:,.0f} | {broker_us} | {r['cores']:.2f} | "
              f"{r['machine']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
