"""Shared fixtures: where the real ZTF data lives, and skipping cleanly without it."""

from __future__ import annotations

import csv
import os
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ENV = "STAMP_DATA_DIR"
#: A folder where ``.ci/run`` keeps the state of builds it runs beside the tests (helm, the
#: worker image): ``<name>.started`` when one begins, ``<name>.status`` (its exit status)
#: and ``<name>.log`` when it ends.
BACKGROUND_ENV = "STAMP_BACKGROUND_BUILDS"
# The longest wait for such a build: helm's first build took 4.5 min alone on 2 cores.
BACKGROUND_TIMEOUT_S = 1200.0
# Fixtures of the tests that need a background build: they run last, so that the build
# overlaps the rest of the tests.
_BACKGROUND_FIXTURES = {"helm", "image"}


def background_build(name: str) -> tuple[int, str] | None:
    """Wait for the background build ``name`` (``helm``, ``image``) if one was started.

    Returns
    -------
    tuple of (int, str) or None
        Its exit status and the end of its log; None when no such build was started
        (outside ``.ci/run``).
    """
    folder = os.environ.get(BACKGROUND_ENV)
    if not folder or not (Path(folder) / f"{name}.started").exists():
        return None
    status = Path(folder) / f"{name}.status"
    deadline = time.monotonic() + BACKGROUND_TIMEOUT_S
    while not status.exists():
        if time.monotonic() > deadline:
            return 1, f"still running after {BACKGROUND_TIMEOUT_S:.0f} s"
        time.sleep(1.0)
    log = Path(folder) / f"{name}.log"
    tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
    return int(status.read_text().strip() or 1), "\n".join(tail)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With builds running beside the tests, the tests that need them go last."""
    if not os.environ.get(BACKGROUND_ENV):
        return
    waiting = [item for item in items
               if _BACKGROUND_FIXTURES & set(getattr(item, "fixturenames", ()))]
    rest = [item for item in items if item not in waiting]
    items[:] = rest + waiting


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
