"""What the Kafka benchmarks share: their input alerts and a broker for the run.

The scripts import it as a sibling module (Python puts a script's folder first on
``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka.admin import AdminClient

from worker import devbroker
from worker.packets import synthetic_alert


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
