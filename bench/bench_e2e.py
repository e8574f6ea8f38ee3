"""End-to-end benchmark of the worker through a real Kafka broker.

Two measurements, each with fresh topics and a worker started as its own process
(``stamp-worker run``, the bundled model or ``--model``, as deployed):

1. **Sustained throughput**: ``--backlog`` alerts are produced, then the worker(s) start
   and drain them (a restart after an outage). Rate = labels / span of the labels'
   ``published_at`` stamps from the moment every worker process is ready (model loaded,
   partitions assigned) to the last label, so start-up and the group's rebalancing are
   excluded, and so is the backlog producer: on a 2-core machine, ingesting alerts at
   several thousand a second takes the broker 1.5 cores, which a worker at 2,000 alerts/s
   does not meet in service.  Over the same span, the cores kept busy by the whole
   machine, the worker(s) with their helpers, the broker (the one started for the run, or
   the only local Kafka JVM) and the benchmark itself, from ``/proc``.
2. **Latency at a fixed offered rate**: once the worker is ready, a producer offers
   ``--rate`` alerts/s for ``--duration`` seconds; for every label, latency = the time the
   label reached a consumer − the time its alert was produced (the alert's Kafka
   CreateTime, set by the producer). Reports p50/p99/max, the rate achieved and the
   cores each part kept busy meanwhile (here the broker ingests the alerts too).

Also printed: the CPU time per alert of the worker(s) and of the broker while draining
(cores busy × span ÷ alerts), each worker process's peak resident memory (``VmHWM``, its
decode helpers added) and, for each start of a ``stamp-worker run``, the time from the
start to every process ready (model loaded, partitions assigned: ``/readyz`` 200).

A first drain of ``--warmup`` alerts (default 20,000), not reported, warms the broker's
JVM up: a fresh one spends several times more CPU per message while it compiles; and
``--latency-warmup`` seconds (default 20) offered at ``--rate`` before the latency
measurement warm its paced-ingestion path (the first 20 s took 0.73 cores of broker,
the next 0.29–0.33, at 1,000 alerts/s).

Alerts are the single-alert ZTF files of ``../shared/data`` (or ``$STAMP_DATA_DIR``,
``--data``) cycled, or built ones when absent. Everything (broker, producer, worker,
consumer) shares this machine's cores, as in the development setup.

Run from the repository root::

    .venv/bin/python bench/bench_e2e.py [--backlog 20000] [--rate 1000] [--duration 30]
        [--workers 1]

``--processes N`` sets ``processes: N`` (one command, N worker processes); ``--workers N``
runs N commands in one consumer group, the way a deployment scales out across machines;
``--partitions`` (default 3) sets the input topic's partitions.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from common import (
    CpuSampler,
    broker_for_run,
    children,
    cpu_model,
    data_dir,
    delete_topics,
    load_alerts,
    local_broker_pid,
    status_mib,
)
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from worker.decode.alerts import Alert, AlertDecoder
from worker.decode.errors import AlertError
from worker.model.artifact import BACKENDS
from worker.prepare.stamps import prepare_alert
from worker.stream.output import decode_labels

PARTITIONS = 3  # of the input topic; set from --partitions


def labels_per_message(alerts: list[bytes]) -> list[int]:
    """How many label records each message yields (corrupt ones go to the dead letters),
    so the benchmark knows when the worker is done instead of waiting for a timeout."""
    decoder = AlertDecoder()
    counts = []
    for payload in alerts:
        n = 0
        for item in decoder.iter_records(payload):
            if isinstance(item, Alert):
                try:
                    prepare_alert(item)
                except AlertError:
                    continue
                n += 1
        counts.append(n)
    return counts


def expected_labels(counts: list[int], messages: int) -> int:
    """Labels the worker publishes for ``messages`` messages cycling through ``counts``."""
    full, rest = divmod(messages, len(counts))
    return full * sum(counts) + sum(counts[:rest])


def make_topics(admin: AdminClient) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    topics = {"input": f"bench-alerts-{suffix}", "output": f"bench-labels-{suffix}",
              "dead": f"bench-dead-{suffix}"}
    futures = admin.create_topics([NewTopic(topics["input"], PARTITIONS, 1),
                                   NewTopic(topics["output"], 1, 1),
                                   NewTopic(topics["dead"], 1, 1)])
    for future in futures.values():
        future.result(30)
    return topics


DECODE_PROCESSES = 0  # set from --decode-processes
PROCESSES = 1  # set from --processes
MODEL_PATH: Path | None = None  # set from --model
BACKEND = "auto"  # set from --backend
STARTUP_S: list[float] = []  # start of each `stamp-worker run` → every process ready [s]


def start_worker(bootstrap: str, topics: dict[str, str], workdir: Path,
                 max_messages: int, max_wait_ms: int, index: int = 0
                 ) -> tuple[subprocess.Popen, int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # With ``processes: N``, process i serves on port + i; the last one is awaited (the
    # processes start together, and a process is ready once it has partitions).
    ready_port = port + PROCESSES - 1
    config = workdir / f"worker-{topics['input']}-{index}.yaml"
    config.write_text(
        f"kafka:\n  bootstrap_servers: '{bootstrap}'\n"
        f"topics:\n  input: [{topics['input']}]\n  output: {topics['output']}\n"
        f"  dead_letter: {topics['dead']}\n"
        f"group_id: bench-{topics['input']}\n"
        f"batch:\n  max_messages: {max_messages}\n  max_wait_ms: {max_wait_ms}\n"
        f"  decode_processes: {DECODE_PROCESSES}\n"
        f"processes: {PROCESSES}\n"
        f"model_backend: {BACKEND}\n"
        f"metrics:\n  port: {port}\n"
        + (f"model_path: '{MODEL_PATH.resolve()}'\n" if MODEL_PATH else ""))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "run", "--config", str(config)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if all(urllib.request.urlopen(f"http://127.0.0.1:{p}/readyz", timeout=1).status
                   == 200 for p in range(port, ready_port + 1)):
                # Ready = model loaded and partitions assigned (the group join included).
                STARTUP_S.append(time.monotonic() - started)
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"worker exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    raise SystemExit("worker not ready within 180 s")


def start_workers(n: int, *args: object) -> list[subprocess.Popen]:
    """``n`` worker processes in one consumer group (partitions are split between them)."""
    return [start_worker(*args, index=i)[0] for i in range(n)]  # type: ignore[arg-type]


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def label_consumer(bootstrap: str, topic: str) -> Consumer:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 10})
    consumer.subscribe([topic])
    return consumer


def collect(consumer: Consumer, expected: int, timeout: float,
            on_label=None) -> list[float]:
    """Receive ``expected`` labels; return their arrival times (time.time())."""
    arrivals: list[float] = []
    deadline = time.monotonic() + timeout
    while len(arrivals) < expected and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.1):
            if message.error() is not None:
                continue
            now = time.time()
            arrivals.append(now)
            if on_label is not None:
                on_label(message, now)
    return arrivals


def cpu_groups(procs: list[subprocess.Popen], broker_pid: int | None) -> dict:
    """The process groups whose CPU time a :class:`CpuSampler` reads: the worker commands
    in ``procs`` (filled in later is fine) with their children, the broker, this script."""
    return {"worker": lambda: [q for p in procs for q in (p.pid, *children(p.pid))],
            "broker": lambda: [broker_pid] if broker_pid else [],
            "benchmark": lambda: [os.getpid()]}


def throughput(bootstrap: str, admin: AdminClient, alerts: list[bytes], backlog: int,
               workdir: Path, max_messages: int, workers: int, broker_pid: int | None
               ) -> dict:
    """Drain a backlog; the rate comes from the labels' own ``published_at`` stamps.

    The backlog is produced first, then the workers start; only labels published once
    every worker process is ready count, so start-up, rebalancing and the backlog
    producer are outside the span.  CPU time of the machine, the workers (with their
    decode helpers), the broker and this benchmark is sampled so the cores each kept
    busy over the same span are known.
    """
    topics = make_topics(admin)
    consumer = label_consumer(bootstrap, topics["output"])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "queue.buffering.max.messages": 1_000_000,
                         "queue.buffering.max.kbytes": 4_000_000})
    for i in range(backlog):
        producer.produce(topics["input"], alerts[i % len(alerts)], key=str(i).encode())
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(120)
    received: list[bytes] = []

    def on_label(message, now: float) -> None:
        received.append(message.value())  # decoded after the run: no CPU taken from it

    procs: list[subprocess.Popen] = []
    groups = cpu_groups(procs, broker_pid)
    expected = expected_labels(labels_per_message(alerts), backlog)
    try:
        with CpuSampler(groups) as sampler:
            procs.extend(start_workers(workers, bootstrap, topics, workdir, max_messages, 100))
            ready = time.time()
            collect(consumer, expected, timeout=max(120.0, backlog / 100), on_label=on_label)
        # Peak resident memory of each worker process (with processes: N, the command's
        # children; its decode helpers apart), read before the stop.
        peaks = worker_peaks_mib(procs)
    finally:
        stop_workers(procs)
        consumer.close()
        delete_topics(admin, topics)
    stamps = np.sort([r["published_at"].timestamp() for value in received
                      for r in decode_labels(value)])
    counted_stamps = stamps[stamps >= ready]
    if len(counted_stamps) < max(100, len(stamps) // 4):
        raise SystemExit(f"only {len(counted_stamps)} of {len(stamps)} labels came after "
                         f"every worker was ready: raise --backlog")
    first, last = counted_stamps[0], counted_stamps[-1]
    span = last - first
    counted = len(counted_stamps) - 1
    return {"labels": len(stamps), "seconds": span, "rate": counted / span,
            "cores": sampler.cores(first, last), "counted": counted, "peaks": peaks}


def worker_peaks_mib(procs: list[subprocess.Popen]) -> list[float]:
    """``VmHWM`` [MiB] of each worker process: the command itself when it runs one
    worker, else each of its worker processes (children), with their decode helpers'
    peaks added."""
    peaks = []
    for proc in procs:
        workers = children(proc.pid) if PROCESSES > 1 else [proc.pid]
        for pid in workers:
            peaks.append(status_mib(pid, "VmHWM")
                         + sum(status_mib(h, "VmHWM") for h in children(pid)))
    return peaks


def latency(bootstrap: str, admin: AdminClient, alerts: list[bytes], rate: float,
            duration: float, workdir: Path, max_messages: int, max_wait_ms: int,
            workers: int, linger_ms: float, broker_pid: int | None) -> dict:
    topics = make_topics(admin)
    consumer = label_consumer(bootstrap, topics["output"])
    procs = start_workers(workers, bootstrap, topics, workdir, max_messages, max_wait_ms)
    produced_at: dict[tuple[int, int], float] = {}
    lock = threading.Lock()

    def delivered(err, msg) -> None:
        if err is None:
            with lock:
                produced_at[(msg.partition(), msg.offset())] = msg.timestamp()[1] / 1000

    # The alert's CreateTime is stamped when produce() is called, so time spent lingering
    # in the producer counts in the measured latency.
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": linger_ms})
    total = int(rate * duration)
    latencies: list[float] = []

    def on_label(message, now: float) -> None:
        received.append((message.value(), now))  # decoded after the run

    received: list[tuple[bytes, float]] = []

    start = 0.0  # set when the offering starts
    done = threading.Event()

    def offer() -> None:
        for i in range(total):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            producer.produce(topics["input"], alerts[i % len(alerts)], key=str(i).encode(),
                             on_delivery=delivered)
            producer.poll(0)
        producer.flush(60)
        done.set()

    groups = cpu_groups(procs, broker_pid)
    thread = threading.Thread(target=offer, daemon=True)
    try:
        with CpuSampler(groups) as sampler:
            offering = time.time()
            start = time.perf_counter()
            thread.start()
            collect(consumer, expected_labels(labels_per_message(alerts), total),
                    timeout=duration + 120, on_label=on_label)
            thread.join(60)
        offered_s = time.perf_counter() - start
        cores = sampler.cores(offering, offering + duration)
    finally:
        stop_workers(procs)
        consumer.close()
        delete_topics(admin, topics)
    pending = [(r["source_partition"], r["source_offset"], now) for value, now in received
               for r in decode_labels(value)]
    with lock:
        for partition, offset, now in pending:
            sent = produced_at.get((partition, offset))
            if sent is not None:
                latencies.append(now - sent)
    arr = np.array(latencies)
    return {"offered": total, "labelled": len(pending), "matched": len(latencies),
            "offered_rate": total / duration,
            "elapsed": offered_s, "p50": np.percentile(arr, 50), "p99": np.percentile(arr, 99),
            "max": arr.max(), "cores": cores}


def main() -> int:
    """Run both measurements and print one Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--backlog", type=int, default=20000)
    parser.add_argument("--latency-warmup", type=float, default=20.0, metavar="S",
                        help="seconds offered at --rate before the latency measurement, not "
                        "counted (0: none): a broker warmed by a burst still spends its first "
                        "20 s of paced ingestion compiling (0.73 cores, then 0.29-0.33, "
                        "ingesting 1,000 alerts/s)")
    parser.add_argument("--warmup", type=int, default=20000,
                        help="alerts of a first drain, not reported, that warms the "
                             "broker's JVM up (0: measure a cold broker)")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--max-messages", type=int, default=256)
    parser.add_argument("--max-wait-ms", type=int, default=50)
    parser.add_argument("--producer-linger-ms", type=float, default=5.0,
                        help="linger.ms of the producer offering alerts at --rate (0 sends "
                             "each alert in a request of its own)")
    parser.add_argument("--decode-processes", type=int, default=0,
                        help="batch.decode_processes of each worker")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="model_backend of each worker (onnx-int8: the 8-bit model)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model artifact directory (default: the bundled one)")
    parser.add_argument("--workers", type=int, default=1,
                        help="`stamp-worker run` commands in the consumer group")
    parser.add_argument("--processes", type=int, default=1,
                        help="`processes` setting of each command (worker processes it "
                             "starts)")
    parser.add_argument("--partitions", type=int, default=3,
                        help="partitions of the input topic (a multiple of --workers "
                             "shares the backlog evenly)")
    args = parser.parse_args()
    global BACKEND, DECODE_PROCESSES, MODEL_PATH, PARTITIONS, PROCESSES
    BACKEND = args.backend
    PARTITIONS = args.partitions
    PROCESSES = args.processes
    if PARTITIONS % (args.processes * args.workers):
        print(f"warning: {PARTITIONS} partitions do not split evenly between "
              f"{args.processes * args.workers} worker processes: the member with the most "
              f"sets the pace (use --partitions)", file=sys.stderr)
    DECODE_PROCESSES = args.decode_processes
    MODEL_PATH = args.model
    alerts, described = load_alerts(data_dir(args.data))
    with broker_for_run("bench-e2e-") as (bootstrap, started_pid, workdir):
        admin = AdminClient({"bootstrap.servers": bootstrap})
        warmup = None
        if args.warmup:
            # A freshly started JVM compiles its hot paths during the first tens of
            # thousands of messages: the broker's CPU per ingested alert fell from
            # 480 to 145 µs over the first 40,000 here.  A broker in service is warm.
            warmup = throughput(bootstrap, admin, alerts, args.warmup, workdir,
                                args.max_messages, args.workers, local_broker_pid(started_pid))
            STARTUP_S.clear()
        tput = throughput(bootstrap, admin, alerts, args.backlog, workdir, args.max_messages,
                          args.workers, local_broker_pid(started_pid))
        lat_warmup = None
        if args.latency_warmup > 0:
            lat_warmup = latency(bootstrap, admin, alerts, args.rate, args.latency_warmup,
                                 workdir, args.max_messages, args.max_wait_ms, args.workers,
                                 args.producer_linger_ms, local_broker_pid(started_pid))
        lat = latency(bootstrap, admin, alerts, args.rate, args.duration, workdir,
                      args.max_messages, args.max_wait_ms, args.workers,
                      args.producer_linger_ms, local_broker_pid(started_pid))
    print(f"{os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}; input: "
          f"{described}; {args.workers} command(s) of {args.processes} worker process(es) "
          f"with {args.decode_processes} decode helper(s), {PARTITIONS} input partitions, "
          f"batch ≤ {args.max_messages} messages / {args.max_wait_ms} ms; offering "
          f"producer linger.ms {args.producer_linger_ms:g}; model: {args.model or 'bundled'} "
          f"({args.backend} backend)")
    if warmup is not None:
        print(f"warm-up drain of {args.warmup} alerts (not counted below): "
              f"{warmup['rate']:,.0f} alerts/s")
    if lat_warmup is not None:
        c = lat_warmup["cores"]
        print(f"warm-up offering of {args.latency_warmup:g} s at {args.rate:g} alerts/s (not "
              f"counted below): p50 / p99 {lat_warmup['p50'] * 1e3:,.0f} / "
              f"{lat_warmup['p99'] * 1e3:,.0f} ms"
              + (f"; broker {c['broker']:.2f} cores" if c else ""))
    print("\n| measurement | value |\n|---|---:|")
    print(f"| sustained throughput (backlog of {args.backlog}) | {tput['rate']:,.0f} alerts/s |")
    cores = tput["cores"]
    if cores:
        print(f"| cores busy while draining: machine / worker(s) / broker / benchmark | "
              f"{cores['machine']:.2f} / {cores['worker']:.2f} / "
              f"{cores['broker']:.2f} / {cores['benchmark']:.2f} of {os.cpu_count()} |")
        # CPU time per alert = cores busy × the span ÷ alerts labelled in it.
        per_alert = {k: cores[k] * tput["seconds"] / tput["counted"] * 1e6
                     for k in ("worker", "broker")}
        print(f"| CPU per alert while draining: worker(s) / broker | "
              f"{per_alert['worker']:,.0f} / {per_alert['broker']:,.0f} µs |")
    peaks = tput["peaks"]
    print(f"| peak resident memory per worker process (`VmHWM`, with its helpers) | "
          f"{' / '.join(f'{p:,.0f}' for p in peaks)} MiB |")
    print(f"| start → ready (model loaded, partitions assigned), each start | "
          f"{' / '.join(f'{t:.1f}' for t in STARTUP_S)} s |")
    print(f"| offered rate | {lat['offered_rate']:,.0f} alerts/s for {args.duration:.0f} s |")
    print(f"| labelled | {lat['labelled']} of {lat['offered']} "
          f"({lat['matched']} matched to their produce time) |")
    print(f"| produce → label latency p50 | {lat['p50'] * 1000:,.0f} ms |")
    print(f"| produce → label latency p99 | {lat['p99'] * 1000:,.0f} ms |")
    print(f"| produce → label latency max | {lat['max'] * 1000:,.0f} ms |")
    cores = lat["cores"]
    if cores:
        print(f"| cores busy while offered: machine / worker(s) / broker / benchmark | "
              f"{cores['machine']:.2f} / {cores['worker']:.2f} / "
              f"{cores['broker']:.2f} / {cores['benchmark']:.2f} of {os.cpu_count()} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
