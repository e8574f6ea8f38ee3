"""The README's "Running the worker" walk-through, run as written in a copy of the repository.

The block starts its own development broker (in the copy's ``.cache``), creates the
topics of ``deploy/worker.example.yaml``, replays ``../shared/data``, drains it with the
worker and prints labels.  The copy holds the repository's files (tracked and new, not
ignored ones), ``../shared/data`` beside it and the project's ``.venv``; nothing of it
touches the developer's own broker folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SECTION = "## Running the worker"


def walkthrough() -> str:
    """The first ``bash`` block of the README's "Running the worker" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION):]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, f"no bash block under {SECTION!r}"
    return match.group(1)


def copy_of_repository(dest: Path) -> None:
    """The files a clone has (with this checkout's changes), mtimes kept, plus ``.venv``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)  # mtimes kept: make sees .venv up to date
    (dest / ".venv").symlink_to(REPO / ".venv")
    # The broker's resolved jar list: what a first run gets from Maven, cached (it names
    # jars in ~/.m2, which the test session's broker has just resolved).
    cache = REPO / ".cache" / "kafka"
    for listing in cache.glob("classpath-*.txt"):
        (dest / ".cache" / "kafka").mkdir(parents=True, exist_ok=True)
        shutil.copy2(listing, dest / ".cache" / "kafka" / listing.name)


def test_running_the_worker_steps_work_as_written(tmp_path: Path, data_dir: Path) -> None:
    if not (REPO / ".venv" / "bin" / "stamp-worker").exists():
        pytest.skip("the walk-through uses .venv/bin/stamp-worker: run `make venv` first")
    clone = tmp_path / "clone"
    clone.mkdir()
    copy_of_repository(clone)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(data_dir)
    up_to_date = subprocess.run(["make", "-q", ".venv/.installed"], cwd=clone)
    if up_to_date.returncode != 0:
        pytest.skip("make would reinstall .venv (pyproject.toml newer than it): run `make "
                    "venv` first")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("KAFKA_", "STAMP_WORKER"))}
    # The example configuration serves metrics on 9108, which another worker on this
    # machine may hold; the walk-through does not look at them.
    env["STAMP_WORKER__METRICS__PORT"] = "0"
    # The broker folder: the copy's own, not the one of the checkout whose .venv runs
    # (the project is installed from there, and devbroker's default follows it).
    env["STAMP_KAFKA_CACHE"] = str(clone / ".cache" / "kafka")
    script = walkthrough()
    try:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run([sys.executable, "deploy/kafka/kafka.py", "stop"], cwd=clone, env=env,
                       capture_output=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert re.search(r"ztf-alerts\s+input\s+created\s+4\b", output), output
    assert re.search(r"stamp-classifier-dead-letter\s+dead letters\s+created\s+1\b", output)
    sent = re.search(r"sent (\d+), failed 0", output)
    assert sent and int(sent.group(1)) > 0, output
    stopped = re.search(r"stopped cleanly after (\d+) messages: (\d+) labels .*, (\d+) dead "
                        r"letters", output)
    assert stopped, output
    assert int(stopped.group(1)) == int(sent.group(1))  # every replayed message drained
    assert int(stopped.group(2)) > 0
    labels = [line for line in done.stdout.splitlines() if line.startswith('{"objectId"')]
    assert len(labels) == 2, done.stdout
    assert "stopped Kafka broker" in output  # make kafka-stop found the broker it started
