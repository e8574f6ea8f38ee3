"""Resident memory of one ``stamp-worker run`` process while it drains a backlog.

What an operator sees in ``ps`` or in a pod's memory graph: a real ``stamp-worker run``
command (one process, the bundled model or ``--model``) is started on a topic holding
``--backlog`` alerts (the single-alert ZTF files of ``../shared/data`` cycled, or built
ones) and its ``VmRSS`` (plus its decode helpers', with ``--decode-processes``) is read
from ``/proc`` every 0.2 s: before it consumes (model loaded, TensorFlow imported), then
after each quarter of the backlog, and at its peak (``VmHWM``).  The same is then done
for a bare ``python -c "import tensorflow"`` and for loading the model without Kafka, to
split the figure into interpreter + TensorFlow, the model, and the streaming itself.

Run from the repository root::

    .venv/bin/python bench/bench_memory.py [--backlog 20000] [--decode-processes 0 2]
        [--backend keras onnx]

Each ``--backend`` (the worker's ``model_backend``) is measured in turn, with its
time to ready: process start to the worker's "consuming" log line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import (
    broker_for_run,
    children,
    cpu_model,
    data_dir,
    delete_topics,
    load_alerts,
    status_mib,
)
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 4
SAMPLE_S = 0.2


def committed(consumer: Consumer, topic: str) -> int:
    parts = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], 10)
    return sum(max(tp.offset, 0) for tp in parts)


def fill(bootstrap: str, topic: str, alerts: list[bytes], n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "message.max.bytes": 16 * 1024 * 1024})
    for i in range(n):
        while True:
            try:
                producer.produce(topic, alerts[i % len(alerts)], key=str(i).encode())
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(120)


def drain(bootstrap: str, alerts: list[bytes], backlog: int, decode_processes: int,
          model: str | None, backend: str = "auto",
          consumer: dict[str, str] | None = None) -> dict[str, float]:
    suffix = uuid.uuid4().hex[:8]
    topics = {"input": f"mem-alerts-{suffix}", "output": f"mem-labels-{suffix}",
              "dead": f"mem-dead-{suffix}"}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topics["input"], PARTITIONS, 1),
                                       NewTopic(topics["output"], PARTITIONS, 1),
                                       NewTopic(topics["dead"], 1, 1)]).values():
        future.result(30)
    fill(bootstrap, topics["input"], alerts, backlog)
    group = f"mem-{suffix}"
    config = Path(tempfile.mkdtemp()) / "w.yaml"
    settings = "".join(f", '{k}': '{v}'" for k, v in (consumer or {}).items())
    config.write_text(
        f"kafka: {{bootstrap_servers: '{bootstrap}', consumer: {{{settings[2:]}}}}}\n"
        f"topics: {{input: {topics['input']}, output: {topics['output']}, "
        f"dead_letter: {topics['dead']}}}\ngroup_id: {group}\n"
        f"batch: {{decode_processes: {decode_processes}}}\nmetrics: {{port: 0}}\n"
        f"model_backend: {backend}\n"
        + (f"model_path: {model}\n" if model else ""))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAMP_WORKER")}
    started = time.monotonic()
    worker = subprocess.Popen([sys.executable, "-m", "worker.cli", "run", "--config",
                               str(config)], env=env, stderr=subprocess.PIPE, text=True)
    check = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    out: dict[str, float] = {}
    marks = [backlog // 4, backlog // 2, 3 * backlog // 4, backlog]
    try:
        # Ready to consume: the log line after the model load and warm-up.
        for line in worker.stderr:  # type: ignore[union-attr]
            if "consuming" in line:
                break
        ready_s = time.monotonic() - started
        time.sleep(0.5)

        def total() -> float:
            return status_mib(worker.pid) + sum(status_mib(c) for c in children(worker.pid))

        out["loaded"] = total()
        out["helpers_loaded"] = sum(status_mib(c) for c in children(worker.pid))
        peak = out["loaded"]
        start = time.monotonic()
        while marks and time.monotonic() - start < 600:
            peak = max(peak, total())
            done = committed(check, topics["input"])
            while marks and done >= marks[0]:
                out[f"after {marks[0]}"] = total()
                marks.pop(0)
            time.sleep(SAMPLE_S)
        out["drain_s"] = time.monotonic() - start
        out["ready_s"] = ready_s
        out["peak sampled"] = peak
        out["VmHWM worker"] = status_mib(worker.pid, "VmHWM")
    finally:
        check.close()
        worker.terminate()
        worker.wait(60)
        delete_topics(admin, topics)
    return out


def baseline(model: str | None, backend: str = "keras") -> dict[str, float]:
    """Resident memory of the pieces: Python + the backend's library, and + the model."""
    library = "tensorflow, keras" if backend == "keras" else "onnxruntime"
    code = ("import os,sys; os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL','2');"
            f"import {library};"
            "rss=lambda: int([l for l in open('/proc/self/status') if l.startswith('VmRSS')]"
            "[0].split()[1])/1024; a=rss();"
            "from worker.model.artifact import StampModel;"
            "m=StampModel.load(sys.argv[1] or None, backend=sys.argv[2]);"
            "m.warm_up(256); print(a, rss())")
    done = subprocess.run([sys.executable, "-c", code, model or "", backend],
                          capture_output=True, text=True, check=True)
    library_only, with_model = map(float, done.stdout.split())
    return {f"python + {library.split(',')[0]}": library_only,
            "+ model loaded, batch shapes run": with_model}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backlog", type=int, default=20_000, help="alerts to drain")
    parser.add_argument("--decode-processes", type=int, nargs="+", default=[0, 2],
                        help="batch.decode_processes values to measure (default 0 2)")
    parser.add_argument("--model", help="model artifact (default: the bundled model)")
    parser.add_argument("--backend", nargs="+", choices=("keras", "onnx", "onnx-int8"),
                        default=["keras", "onnx"],
                        help="model_backend values to measure (default keras onnx)")
    parser.add_argument("--data", type=Path, help="data folder (default ../shared/data)")
    parser.add_argument("--consumer", action="append", default=[], metavar="PROP=VALUE",
                        help="a librdkafka consumer property for the worker (repeatable), "
                             "e.g. queued.max.messages.kbytes=16384")
    args = parser.parse_args()
    consumer = dict(item.split("=", 1) for item in args.consumer)
    alerts, described = load_alerts(data_dir(args.data))
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; "
          f"input: {described}, cycled to {args.backlog} alerts")
    for backend in args.backend:
        print(f"model_backend {backend}:")
        for name, value in baseline(args.model, backend).items():
            print(f"  {name:<38}{value:8.0f} MiB")
    with broker_for_run("stamp-mem-") as (bootstrap, _, _):
        for backend in args.backend:
            for helpers in args.decode_processes:
                row = drain(bootstrap, alerts, args.backlog, helpers, args.model, backend,
                            consumer)
                print(f"\nstamp-worker run, model_backend {backend}, batch.decode_processes "
                      f"{helpers} (ready {row.pop('ready_s'):.1f} s after start, "
                      f"{row.pop('drain_s'):.1f} s drain) [MiB, worker + helpers]")
                for name, value in row.items():
                    print(f"  {name:<38}{value:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
