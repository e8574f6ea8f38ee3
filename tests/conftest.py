"""Shared fixtures: where the real ZTF data lives, and skipping cleanly without it."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ENV = "STAMP_DATA_DIR"


def shared_data_dir() -> Path | None:
    """The real-data folder: ``$STAMP_DATA_DIR`` or ``../shared/data`` beside the repo."""
    candidates = [os.environ.get(DATA_ENV), REPO.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "alerts_manifest.csv").is_file():
            return Path(candidate)
    return None


def prometheus_tool(name: str) -> str:
    """A program of Debian's ``prometheus`` package (``prometheus``, ``promtool``):
    ``$<NAME>_BIN``, else the one on ``PATH``; skips the test with that message otherwise."""
    variable = f"{name.upper()}_BIN"
    binary = os.environ.get(variable) or shutil.which(name)
    if not binary:
        pytest.skip(f"{name} not found: set ${variable} or put `{name}` on PATH "
                    "(Debian/Ubuntu: apt-get install prometheus)")
    return binary


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared ZTF data folder; skips the test with a clear message when absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip(f"real ZTF data not found: set {DATA_ENV} or place it at "
                    f"{REPO.parent / 'shared' / 'data'}")
    return path


@pytest.fixture(scope="session")
def manifest(data_dir: Path) -> list[dict[str, str]]:
    """Rows of ``alerts_manifest.csv`` (one per alert record)."""
    with open(data_dir / "alerts_manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="session")
def alert_files(data_dir: Path) -> list[Path]:
    """Every ``.avro`` file of the shared data (raw and broker-written)."""
    return sorted(data_dir.glob("ztf-alerts*/**/*.avro"))


CORRUPT_FILES = {
    # name: reason, as measured (fastavro agrees: 3 bad sync markers, 2 undecodable records)
    "516401801315010009.avro": "bad_sync_marker",
    "516442330015015017.avro": "bad_sync_marker",
    "516476004815015005.avro": "bad_sync_marker",
    "516434762915010006.avro": "corrupt_record",
    "516442805615015004.avro": "corrupt_record",
}
