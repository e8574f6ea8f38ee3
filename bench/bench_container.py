"""The worker's container image at work: size, time to ready, memory, drain, stop.

A real ``stamp-worker run`` in the image of ``deploy/docker/build.sh`` (podman, runc,
host network) on a topic holding ``--backlog`` alerts (the single-alert ZTF files of
``../shared/data`` cycled, or built ones), configured as deployed: a mounted file and
``STAMP_WORKER__*`` variables.  Measured:

* the image's size (``podman image inspect``);
* time to ready: ``podman run`` to ``/readyz`` answering 200, ``--starts`` times on the
  full topic (each start is stopped with SIGTERM once ready);
* memory while it drains the backlog: ``VmRSS`` of the worker (PID 1 in the container,
  read from the host's ``/proc``) after each quarter of the backlog and its peak
  (``VmHWM``), and the container's cgroup memory (``podman stats``, which counts the page
  cache too) at the end;
* the drain time (ready to every offset committed), the worker's CPU time per alert over
  it (its process and children, from the host's ``/proc``), and ``podman stop`` (SIGTERM)
  to exit, with the exit status.

``--env NAME=VALUE`` (repeatable) passes more environment to the worker container, e.g.
``--env STAMP_NATIVE=0`` to measure the pure-Python decoding path in the same image.

Run from the repository root, as root with podman and runc::

    .venv/bin/python bench/bench_container.py [--backlog 20000] [--starts 5]
        [--env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from common import (
    broker_for_run,
    children,
    cpu_model,
    cpu_seconds,
    data_dir,
    delete_topics,
    load_alerts,
    status_mib,
)
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from worker.tools.topics import TopicSpec, ensure_topics

REPO = Path(__file__).resolve().parent.parent
PARTITIONS = 4
UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def podman(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def run_options() -> list[str]:
    runtime = shutil.which("runc") or shutil.which("runc", path="/usr/sbin:/sbin") or "runc"
    return ["--runtime", runtime, "--network", "host",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


def cgroup_mib(name: str) -> float:
    """The container's cgroup memory from ``podman stats`` [MiB]; 0 when unreadable."""
    result = podman("stats", "--no-stream", "--format", "json", name)
    try:
        usage = json.loads(result.stdout)[0]["mem_usage"].split("/")[0].strip()
    except (ValueError, IndexError, KeyError):
        return 0.0
    number = usage.rstrip("".join(sorted({c for u in UNITS for c in u})))
    return float(number) * UNITS[usage[len(number):]] / 1024**2


def committed_total(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], 10)
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in parts)


def start(image: str, name: str, env: list[str]) -> float:
    """Start the worker container; returns the ``time.monotonic()`` of the start."""
    began = time.monotonic()
    result = podman("run", "--detach", "--name", name, *run_options(), "--read-only",
                    "--no-healthcheck", *env, image)
    if result.returncode != 0:
        sys.exit(f"podman run failed: {result.stderr.strip()}")
    return began


def wait_ready(port: int, name: str, timeout: float = 120.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready(port):
            return time.monotonic()
        time.sleep(0.02)
    logs = podman("logs", name)
    sys.exit(f"the worker was not ready within {timeout:.0f} s:\n{logs.stdout}{logs.stderr}")


def stop(name: str) -> tuple[float, str]:
    """``podman stop`` (SIGTERM, 60 s grace): seconds to exit and the exit status."""
    began = time.monotonic()
    podman("stop", "--time", "60", name, timeout=90)
    took = time.monotonic() - began
    status = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    podman("rm", "--force", name)
    return took, status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=20_000, help="alerts to drain")
    parser.add_argument("--starts", type=int, default=5, help="starts timed to ready")
    parser.add_argument("--data", type=Path, help="shared data folder (default ../shared/data)")
    parser.add_argument("--image", help="image (default: the one deploy/docker/build.sh "
                        "builds or keeps)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="more environment for the worker container, e.g. "
                             "STAMP_NATIVE=0 (the pure-Python decoding path)")
    args = parser.parse_args()
    for item in args.env:
        if "=" not in item or not item.split("=", 1)[0]:
            parser.error(f"--env {item!r}: expected NAME=VALUE")
    if shutil.which("podman") is None:
        sys.exit("bench_container.py: podman is not installed (apt-get install podman runc "
                 "debootstrap)")
    image = args.image
    if image is None:
        built = subprocess.run([str(REPO / "deploy/docker/build.sh")], capture_output=True,
                               text=True, check=False)
        if built.returncode != 0:
            sys.exit(f"deploy/docker/build.sh failed:\n{built.stderr[-3000:]}")
        image = built.stdout.strip().splitlines()[-1]
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
    payloads, source = load_alerts(data_dir(args.data))

    with broker_for_run("bench-container-") as (bootstrap, _, workdir):
        suffix = uuid.uuid4().hex[:8]
        topics = {"input": f"bc-alerts-{suffix}", "output": f"bc-labels-{suffix}",
                  "dlq": f"bc-dead-{suffix}"}
        admin = AdminClient({"bootstrap.servers": bootstrap})
        ensure_topics(admin, [TopicSpec(topics["input"], "input", PARTITIONS, 1,
                                        {"max.message.bytes": str(16 * 1024 * 1024)}),
                              TopicSpec(topics["output"], "labels", PARTITIONS, 1, {}),
                              TopicSpec(topics["dlq"], "dead letters", 1, 1,
                                        {"max.message.bytes": str(16 * 1024 * 1024)})],
                      timeout_s=30)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                             "message.max.bytes": 16 * 1024 * 1024})
        for i in range(args.backlog):
            while True:
                try:
                    producer.produce(topics["input"], payloads[i % len(payloads)],
                                     str(i).encode())
                    break
                except BufferError:  # the local queue (1 GB) is full: let it drain
                    producer.poll(0.5)
            producer.poll(0)
        producer.flush(120)
        config = workdir / "worker.yaml"
        config.write_text("\n".join([
            f"kafka: {{bootstrap_servers: '{bootstrap}'}}",
            f"topics: {{input: [{topics['input']}], output: {topics['output']}, "
            f"dead_letter: {topics['dlq']}}}"]) + "\n")
        config.chmod(0o644)
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]

        def env(group: str) -> list[str]:
            return ["--env", "STAMP_WORKER_CONFIG=/etc/stamp-worker/worker.yaml",
                    "--volume", f"{config}:/etc/stamp-worker/worker.yaml:ro",
                    "--env", f"STAMP_WORKER__GROUP_ID={group}",
                    "--env", f"STAMP_WORKER__METRICS__PORT={port}",
                    *(option for item in args.env for option in ("--env", item))]

        # Time to ready: each start on the full topic, a group of its own, stopped at once.
        ready_s = []
        for i in range(args.starts):
            name = f"bench-ready-{suffix}-{i}"
            began = start(image, name, env(f"bc-ready-{suffix}-{i}"))
            ready_s.append(wait_ready(port, name) - began)
            stop(name)

        # The drain, memory sampled from the host's /proc.
        group = f"bc-drain-{suffix}"
        name = f"bench-drain-{suffix}"
        began = start(image, name, env(group))
        at_ready = wait_ready(port, name)
        pid = int(podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip())
        rss_ready = status_mib(pid)

        def worker_cpu_s() -> float:
            return sum(cpu_seconds(p) for p in (pid, *children(pid)))

        cpu_at_ready = worker_cpu_s()
        quarters: dict[int, float] = {}
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                total = committed_total(bootstrap, group, topics["input"])
                for q in (1, 2, 3, 4):
                    if total >= args.backlog * q // 4 and q not in quarters:
                        quarters[q] = status_mib(pid)
                if total >= args.backlog:
                    done.set()
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        if not done.wait(600):
            sys.exit("the worker did not commit the whole backlog within 600 s")
        drained = time.monotonic() - at_ready
        cpu_drain = worker_cpu_s() - cpu_at_ready
        peak = status_mib(pid, "VmHWM")
        cgroup = cgroup_mib(name)
        stop_s, status = stop(name)
        delete_topics(admin, topics)
        # Closed before the broker stops, so that they log no lost connection.
        del producer, admin

    print(f"image {image}: {size / 1e6:.0f} MB ({size / 1024**2:.0f} MiB); {cpu_model()}")
    print(f"backlog: {args.backlog} alerts ({source}), {PARTITIONS} partitions; worker "
          f"environment added: {' '.join(args.env) or 'none'}")
    print(f"ready after `podman run`: median {statistics.median(ready_s):.2f} s "
          f"(min {min(ready_s):.2f}, max {max(ready_s):.2f}; {len(ready_s)} starts); "
          f"drain run {at_ready - began:.2f} s")
    print(f"worker VmRSS [MiB]: ready {rss_ready:.0f}; after each quarter of the backlog "
          + " / ".join(f"{quarters[q]:.0f}" for q in sorted(quarters))
          + f"; peak (VmHWM) {peak:.0f}")
    print(f"container cgroup memory at the end (podman stats, page cache included): "
          f"{cgroup:.0f} MiB")
    print(f"drain: {args.backlog} alerts committed {drained:.1f} s after ready "
          f"({args.backlog / drained:.0f} alerts/s); worker CPU {cpu_drain:.1f} s, "
          f"{cpu_drain / args.backlog * 1e6:,.0f} µs per alert")
    print(f"podman stop (SIGTERM): exited in {stop_s:.1f} s with status {status}")
    return 0 if status == "0" else 1


if __name__ == "__main__":
    sys.exit(main())
