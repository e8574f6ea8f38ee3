"""What the Kafka benchmarks share: their input alerts and a broker for the run.

The scripts import it as a sibling module (Python puts a script's folder first on
``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka.admin import AdminClient

from worker.decode.packets import synthetic_alert
from worker.tools import devbroker


def data_dir(given: Path | None) -> Path | None:
    """``--data``, else ``$STAMP_DATA_DIR``, else ``../shared/data``; None when absent."""
    candidates = (given, os.environ.get("STAMP_DATA_DIR"), Path.cwd().parent / "shared" / "data")
    return next((Path(p) for p in candidates if p and Path(p).is_dir()), None)


def load_alerts(data: Path | None) -> tuple[list[bytes], str]:
    """Single-alert messages: ZTF's own files (one alert each), else built ones."""
    if data is not None:
        files = sorted((data / "ztf-alerts").glob("**/*.avro"))
        if files:
            return [p.read_bytes() for p in files], f"{len(files)} real ZTF alert files"
    return [synthetic_alert(seed) for seed in range(400)], "400 built alerts"


@contextlib.contextmanager
def broker_for_run(prefix: str) -> Iterator[tuple[str, int | None, Path]]:
    """``(bootstrap, broker pid or None, workdir)``: ``$KAFKA_BOOTSTRAP_SERVERS`` or a
    development broker started for the run; the broker and its data (GBs of log segments
    after a benchmark) are removed at the end."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    try:
        if not bootstrap:
            broker = devbroker.start(workdir / "kafka")
            bootstrap = broker.bootstrap_servers
        yield bootstrap, (broker.pid if broker else None), workdir
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def delete_topics(admin: AdminClient, topics: dict[str, str]) -> None:
    """Delete a measurement's topics: a shared development broker would otherwise keep
    every run's alerts (about 3 GB a run) until its disk is full."""
    for name, future in admin.delete_topics(list(topics.values())).items():
        try:
            future.result(30)
        except Exception as exc:  # noqa: BLE001 - a leftover topic is worth a warning only
            print(f"warning: topic {name} not deleted: {exc}", file=sys.stderr)


TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(stat: Path) -> list[str]:
    """The fields of a ``/proc/<pid>/stat`` file after the command name (state first)."""
    return stat.read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far [s] (0 when it is gone)."""
    try:
        fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    """Direct children of a process (a worker's decode helpers), from ``/proc``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(_stat_fields(stat)[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def local_broker_pid(known: int | None) -> int | None:
    """The broker's pid: the one the run started, else the only local Kafka JVM (the
    development broker behind ``$KAFKA_BOOTSTRAP_SERVERS``), else None."""
    if known:
        return known
    jvms = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"kafka.Kafka" in cmdline.read_bytes():
                jvms.append(int(cmdline.parent.name))
        except OSError:
            continue
    return jvms[0] if len(jvms) == 1 else None


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy (all cores, not idle or iowait) [s]."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / TICK


class CpuSampler:
    """Samples CPU time of the machine and of groups of processes every ``interval`` s,
    so the cores each group kept busy can be read for any window afterwards (the
    end-to-end benchmark's window is only known once its labels are in).

    Parameters
    ----------
    groups : dict of str to callable
        Group name → a function returning the group's pids at sampling time.
    interval : float
        Seconds between samples.
    """

    def __init__(self, groups: dict, interval: float = 0.2) -> None:
        self.groups = groups
        self.interval = interval
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        row = {"machine": machine_busy_seconds()}
        for name, pids in self.groups.items():
            row[name] = sum(cpu_seconds(p) for p in pids())
        self.samples.append((time.time(), row))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def cores(self, start: float, end: float) -> dict[str, float]:
        """Mean cores busy per group (and ``machine``) between two ``time.time()`` stamps,
        from the first sample at or after ``start`` to the last at or before ``end``."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return {}
        (t0, first), (t1, last) = inside[0], inside[-1]
        return {name: (last[name] - first[name]) / (t1 - t0) for name in first}


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` otherwise)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def status_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory field of ``/proc/<pid>/status`` [MiB]: ``VmRSS`` (resident now) or
    ``VmHWM`` (resident at its peak); 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
