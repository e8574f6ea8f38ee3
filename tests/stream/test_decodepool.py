"""worker.stream.decodepool: decoding in helper processes gives what the worker's process gives."""

from __future__ import annotations

import os
import pickle
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.model.test_artifact import _artifact
from training.models import build_rotinv
from worker.decode.packets import synthetic_alert
from worker.labeller import Labeller
from worker.model.artifact import StampModel
from worker.prepare.stamps import PreprocessConfig
from worker.stream.config import AsteroidPolicy
from worker.stream.decodepool import PARENT_CHECK_S, DecodePool, decode_chunk, refusal_to_rejected
from worker.stream.output import Source


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> StampModel:
    keras.utils.set_random_seed(3)
    return StampModel.load(_artifact(tmp_path_factory.mktemp("m") / "rotinv", build_rotinv(),
                                     ["image", "features"]))


def _items() -> list[tuple[bytes, Source, int, int]]:
    payloads = [synthetic_alert(i, nan_pixels=3 * (i % 3)) for i in range(6)]
    payloads.insert(2, b"junk")
    payloads.insert(5, synthetic_alert(40, size=51, ypos=None))       # refused in prepare
    payloads.append(synthetic_alert(41, ssnamenr="99", ssdistnr=0.0))  # asteroid policy
    return [(p, Source("in", 0, 100 + i, 5), 1234, i) for i, p in enumerate(payloads)]


def test_decode_chunk_matches_the_labeller_and_travels_light(model: StampModel) -> None:
    policy = AsteroidPolicy(enabled=True)
    local = Labeller(model, asteroid_policy=policy)
    helper_side = Labeller(None, asteroid_policy=policy, preprocess=model.preprocess)
    work, refused = decode_chunk(_items(), helper_side)
    expected = []
    for value, source, consumed, _ in _items():
        expected += local.decode(value, source, consumed)[0]
    assert [w.alert.candid for w in work] == [w.alert.candid for w in expected]
    assert [w.tag for w in work] == [0, 1, 3, 4, 6, 7, 8]
    for got, want in zip(work, expected, strict=True):
        assert got.source == want.source and got.consumed_at_ms == 1234
        assert got.alert.science == b"" and got.alert.candidate == {}
        if want.prepared is None:
            assert got.prepared is None
        else:
            np.testing.assert_array_equal(got.prepared.image, want.prepared.image)
            np.testing.assert_array_equal(got.prepared.features, want.prepared.features)
    assert [(tag, reason) for tag, reason, _, _ in refused] == [(2, "unknown_format"),
                                                                 (5, "stamp_shape")]
    tag, rejected = refusal_to_rejected(refused[1])
    assert tag == 5 and rejected.error.reason.value == "stamp_shape"
    # What crosses the process boundary is small (an alert message is ~47 kB here): no
    # cutouts, no candidate record; the 21×21×3 float32 image is 5.3 kB.
    assert len(pickle.dumps(work)) < 8_000 * len(work)


def test_a_pool_of_helper_processes_gives_the_same_inputs(model: StampModel) -> None:
    pool = DecodePool(1, model.preprocess, AsteroidPolicy())
    try:
        work, refused = pool.submit(_items()).result(60)
    finally:
        pool.close()
    local, local_refused = decode_chunk(_items(), Labeller(model))
    assert [w.alert.candid for w in work] == [w.alert.candid for w in local]
    assert refused == local_refused
    for a, b in zip(work, local, strict=True):
        np.testing.assert_array_equal(a.prepared.image, b.prepared.image)


def test_pool_and_labeller_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DecodePool(0, PreprocessConfig(), AsteroidPolicy())
    with pytest.raises(ValueError, match="needs a model"):
        Labeller(None)


# -- Helpers die with the worker ------------------------------------------------------

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="reads processes from /proc (Linux)")
# A worker with two helpers that decoded a chunk: prints the helpers' pids, then waits.
_WORKER = """
import time
from worker.stream.config import AsteroidPolicy
from worker.stream.decodepool import DecodePool
from worker.stream.output import Source
from worker.decode.packets import synthetic_alert
from worker.prepare.stamps import PreprocessConfig

pool = DecodePool(2, PreprocessConfig(), AsteroidPolicy())
work, _ = pool.submit([(synthetic_alert(0), Source("in", 0, 0, 0), 0, 0)]).result(60)
assert len(work) == 1
print(*pool.pids, flush=True)
time.sleep(600)
"""


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (command) "
    return fields[0], int(fields[1]), int(fields[19])


def process_children(parent: int) -> dict[int, tuple[int, str]]:
    """The children of ``parent``: pid → (start time, command line)."""
    out: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is None or stat[1] != parent:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        out[int(entry.name)] = (stat[2], cmdline)
    return out


def still_running(processes: dict[int, tuple[int, str]]) -> list[int]:
    """Those of ``processes`` that still run: the same process (same start time, not a
    reused pid) and not a zombie (a dead process that its new parent has not reaped)."""
    running = []
    for pid, (start, _) in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[2] == start and stat[0] != "Z":
            running.append(pid)
    return running


def kill_survivors(processes: dict[int, tuple[int, str]]) -> None:
    """SIGKILL those of ``processes`` still running (a failed test leaves none behind)."""
    for pid in still_running(processes):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_until_gone(processes: dict[int, tuple[int, str]], timeout: float) -> list[int]:
    """Wait up to ``timeout`` [s] for ``processes`` to end; the pids still running."""
    deadline = time.monotonic() + timeout
    while still_running(processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    return still_running(processes)


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    """A line of ``proc``'s output, '' if none came within ``timeout`` [s]."""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return proc.stdout.readline()


@needs_proc
def test_helpers_and_the_resource_tracker_die_with_a_worker_killed_by_sigkill() -> None:
    worker = subprocess.Popen([sys.executable, "-c", _WORKER], stdout=subprocess.PIPE,
                              text=True)
    children: dict[int, tuple[int, str]] = {}
    try:
        line = _read_line(worker, 120)
        helpers = [int(pid) for pid in line.split()]
        assert len(helpers) == 2, f"no helper pids from the worker: {line!r}"
        children = process_children(worker.pid)
        assert set(helpers) < set(children), children
        assert [cmd for _, cmd in children.values() if "resource_tracker" in cmd], children
        # While the worker lives its helpers check it and stay.
        time.sleep(3 * PARENT_CHECK_S)
        assert sorted(still_running(children)) == sorted(children)
        worker.kill()
        worker.wait(30)
        survivors = wait_until_gone(children, 5.0)
        assert not survivors, {pid: children[pid][1] for pid in survivors}
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(30)
        kill_survivors(children)


@pytest.mark.parametrize("parent_alive", [True, False])
def test_a_helper_ends_itself_once_its_parent_is_not_its_parent(parent_alive: bool) -> None:
    """The check passes while the parent lives; a helper started after the worker died
    (its parent is already another process) ends at the first check, with status 1."""
    parent = "os.getppid()" if parent_alive else str(os.getppid())  # the test's parent
    code = ("import os, time\n"
            "from worker.stream.decodepool import exit_with_parent\n"
            f"exit_with_parent({parent}, 0.05)\n"
            "time.sleep(1.0)\n")
    done = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert done.returncode == (0 if parent_alive else 1)
