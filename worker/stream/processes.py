"""Several worker processes from one command: ``processes: N`` in the configuration.

One worker process runs its stages one after the other (consume, decode, model, produce),
and only the model uses more than one core, so on a small machine about half a core
stays idle.  Kafka's own way to use it is more members in the consumer group: here
``stamp-worker run`` starts N copies of itself, each a complete worker with its own
consumer, model and metrics endpoint, and stands between them and the operator:

* SIGTERM/SIGINT are passed on; each process drains its batch, commits and exits, and
  the command exits 0 once all have.
* A process that fails (a non-zero exit, or killed by a signal) stops the others (each
  drains and commits) and the command exits with its status: the orchestrator restarts
  the whole step, as it would a single worker.  Nothing is committed for the failed
  process's batch in hand, so its alerts are read again.
* The processes die with the command (Linux ``PR_SET_PDEATHSIG``): a supervisor killed
  with SIGKILL leaves no orphan consuming.

Decoding stays in each process (no data crosses a process boundary), which is what makes
this cheaper than ``batch.decode_processes`` helpers, whose pickled alerts cost CPU.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the development broker imports this module without numpy or YAML
    from worker.stream.config import WorkerConfig

log = logging.getLogger("stamp_worker")
# Time for the processes to start draining after the stop before they are killed, on top
# of the configured shutdown timeout (the batch in hand may still be in the model).
STOP_GRACE_S = 30.0
POLL_S = 0.2


def die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux SIGTERM the child when ``parent`` dies.

    Parameters
    ----------
    parent : int
        The pid of the process starting the child (``os.getpid()``).

    Returns
    -------
    callable or None
        None where ``prctl`` is not available (not Linux).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)

    return preexec


def child_environment(config: WorkerConfig, index: int,
                      base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of worker process ``index``: one process, its own port and id.

    Parameters
    ----------
    config : WorkerConfig
        The configuration the command loaded (file and environment).
    index : int
        0 to ``config.processes - 1``.
    base : dict, optional
        The environment to extend (default: this process's).

    Returns
    -------
    dict
        ``base`` with ``processes`` set to 1, ``metrics.port`` to ``port + index`` (0, the
        server off, stays 0) and a set ``instance_id`` to ``<instance_id>-<index>`` (each
        live member of a group needs its own), as environment overrides, which win over
        the file.
    """
    from worker.stream.config import ENV_PREFIX

    env = dict(os.environ if base is None else base)
    port = config.metrics.port + index if config.metrics.port else 0
    overrides = {f"{ENV_PREFIX}PROCESSES": "1", f"{ENV_PREFIX}METRICS__PORT": str(port)}
    if config.instance_id is not None:
        overrides[f"{ENV_PREFIX}INSTANCE_ID"] = f"{config.instance_id}-{index}"
    # Variable names are case-insensitive: a parent's own spelling of one would clash.
    for name in [name for name in env if name.upper() in overrides]:
        del env[name]
    env.update(overrides)
    return env


def _status(code: int) -> int:
    """A child's exit status as a shell reports it (killed by signal N: 128 + N)."""
    return 128 - code if code < 0 else code


def supervise(config: WorkerConfig, command: Sequence[str]) -> int:
    """Run ``config.processes`` worker processes until all have stopped.

    Parameters
    ----------
    config : WorkerConfig
        The loaded configuration (``processes`` > 1).
    command : sequence of str
        The command line of one worker process (``python -m worker.cli run ...``); each
        gets :func:`child_environment`.

    Returns
    -------
    int
        0 when every process stopped cleanly; else the status of the first that did not
        (128 + N for a process killed by signal N).
    """
    children: list[subprocess.Popen[Any]] = []
    stopping = False
    stop_deadline = float("inf")

    def stop_all() -> None:
        nonlocal stopping, stop_deadline
        if not stopping:
            stopping = True
            stop_deadline = time.monotonic() + config.shutdown_timeout_s + STOP_GRACE_S
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("%s: stopping %d worker processes", signal.Signals(signum).name,
                 len(children))
        stop_all()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(config.processes):
            if stopping:  # a signal came while the processes were being started
                break
            children.append(subprocess.Popen(
                list(command), env=child_environment(config, index),
                preexec_fn=die_with_parent(os.getpid())))
            log.info("worker process %d: pid %d, metrics port %s", index, children[-1].pid,
                     config.metrics.port + index if config.metrics.port else "off")
        status = 0
        reported: set[int] = set()
        while len(reported) < len(children):
            for index, child in enumerate(children):
                code = child.poll()
                if code is None or index in reported:
                    continue
                reported.add(index)
                if code != 0 and status == 0:
                    status = _status(code)
                    if not stopping:
                        log.error("worker process %d (pid %d) failed with status %d: "
                                  "stopping the others", index, child.pid, status)
                        stop_all()
            if stopping and time.monotonic() > stop_deadline:
                for child in children:
                    if child.poll() is None:
                        log.error("worker process pid %d still running %.0f s after the "
                                  "stop: killing it", child.pid,
                                  config.shutdown_timeout_s + STOP_GRACE_S)
                        child.kill()
                stop_deadline = float("inf")
            time.sleep(POLL_S)
        return status
    except BaseException:
        stop_all()
        for child in children:
            try:
                child.wait(config.shutdown_timeout_s + STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
