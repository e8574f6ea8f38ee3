"""Helper processes that decode and preprocess alerts for the worker.

Avro decoding, the FITS cards and the feature vector are Python code holding the GIL, so
a second thread of the worker cannot use a second core for them.  A
:class:`DecodePool` of processes can: the worker sends chunks of message values, each
helper returns model inputs, and meanwhile the worker runs the model on the chunks
already back.

What crosses the process boundary is kept small and plain: message bytes one way;
the model input (21×21×3 float32 + features), the alert's identifiers and time, and
refusals as ``(reason, detail, record_index)`` the other way (cutout bytes and the
candidate record stay behind).  Helpers are started with ``spawn``, never forked from a
process that runs TensorFlow or JAX threads, and they ignore SIGINT/SIGTERM: a Ctrl-C
sent to the whole process group must let the worker drain its batch, so only the worker
decides when helpers stop.  They die with the worker all the same, also when it is killed
with SIGKILL (:func:`exit_with_parent`), and the multiprocessing resource tracker, which
exits once no process holds its pipe any more, follows them.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from worker.decode.alerts import AlertDecoder
from worker.decode.errors import AlertError, Reason
from worker.labeller import Labeller, Rejected, Work
from worker.prepare.stamps import PreprocessConfig
from worker.stream.config import AsteroidPolicy
from worker.stream.output import Source

# (message value, source, consumed_at_ms, tag) for each message of a chunk.
Item = tuple[bytes, Source, int, int]
# A refused record: (tag, reason value, detail, record_index).
Refusal = tuple[int, str, str, "int | None"]

_LABELLER: Labeller | None = None
# How often a helper checks that the worker still lives [s]: a helper outlives a worker
# killed with SIGKILL by at most this long (and each check costs one getppid call).
PARENT_CHECK_S = 0.5


def exit_with_parent(parent: int, interval_s: float = PARENT_CHECK_S) -> threading.Thread:
    """End this process (status 1) as soon as ``parent`` is no longer its parent.

    Parameters
    ----------
    parent : int
        The pid of the process that started this one.  When it dies, the kernel gives
        this process another parent (init or a subreaper); if that happened already, this
        process ends at the first check.
    interval_s : float
        Time between two checks [s].

    Returns
    -------
    threading.Thread
        The daemon thread that checks.

    Notes
    -----
    A thread watching ``os.getppid()`` is used rather than Linux ``PR_SET_PDEATHSIG``
    (what ``processes: N`` children get from :func:`worker.stream.processes.die_with_parent`):
    the death signal is sent when the *thread* that started the child ends, not the
    process, and a ``ProcessPoolExecutor`` starts its processes lazily in whichever
    thread calls ``submit()`` (and in its manager thread when it replaces one), so a
    pool built or used from a thread that ends would lose its helpers under a living
    worker.  The thread depends on the process alone and works on any POSIX system; a
    death signal would also have had to be SIGKILL, as helpers ignore SIGTERM.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        # The worker is gone and nothing will read what this helper decodes; it would
        # wait forever on the call queue, whose writing end it holds itself.
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-worker", daemon=True)
    thread.start()
    return thread


def _start_helper(parent: int, preprocess: PreprocessConfig, policy: AsteroidPolicy,
                  registry_url: str | None, registry_client: Mapping[str, Any]) -> None:
    """Process initializer: die with the worker, ignore stop signals, build a decoder."""
    exit_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    registry = None
    if registry_url:
        from worker.decode.registry import ConfluentSchemaRegistry

        registry = ConfluentSchemaRegistry(registry_url, registry_client)
    global _LABELLER
    _LABELLER = Labeller(None, AlertDecoder(registry=registry), policy, preprocess)


def decode_chunk(items: Sequence[Item], labeller: Labeller | None = None
                 ) -> tuple[list[Work], list[Refusal]]:
    """Decode and preprocess the messages of one chunk (runs in a helper process).

    Parameters
    ----------
    items : sequence of (bytes, Source, int, int)
        Message value, source, time it was consumed [ms since Unix epoch], and the
        caller's tag (its position in the batch).
    labeller : Labeller, optional
        Decoder to use (default: the helper's own, built by the initializer).

    Returns
    -------
    (list of Work, list of (int, str, str, int or None))
        Model-ready alerts (tagged with their message), lightened for the trip back, and
        refused records as (tag, reason, detail, record index).
    """
    labeller = labeller or _LABELLER
    if labeller is None:  # pragma: no cover - the initializer always runs first
        raise RuntimeError("decode_chunk called outside a DecodePool helper")
    work, rejected = labeller.decode_batch(items)
    refused: list[Refusal] = [(tag, r.error.reason.value, r.error.detail, r.record_index)
                              for tag, r in rejected]
    # The cutouts and the candidate record were used up by prepare(): leave them here.
    return [dataclasses.replace(w, alert=dataclasses.replace(
        w.alert, science=b"", template=b"", difference=b"", candidate={})) for w in work], refused


def refusal_to_rejected(refusal: Refusal) -> tuple[int, Rejected]:
    """A refusal from a helper → (tag, :class:`Rejected`) in the worker."""
    tag, reason, detail, record_index = refusal
    return tag, Rejected(AlertError(Reason(reason), detail), record_index)


class DecodePool:
    """A pool of helper processes running :func:`decode_chunk`.

    Parameters
    ----------
    processes : int
        Number of helpers, ≥ 1.
    preprocess : PreprocessConfig
        The model's preprocessing.
    policy : AsteroidPolicy
        The asteroid policy (applied where the alerts are decoded).
    registry_url : str or None
        Schema registry for Confluent-framed messages (each helper has its own client).
    registry_client : mapping
        Settings of the registry client.
    """

    def __init__(self, processes: int, preprocess: PreprocessConfig, policy: AsteroidPolicy,
                 registry_url: str | None = None,
                 registry_client: Mapping[str, Any] | None = None) -> None:
        if processes < 1:
            raise ValueError(f"a decode pool needs at least 1 process, got {processes}")
        self._executor = ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_helper,
            initargs=(os.getpid(), preprocess, policy, registry_url,
                      dict(registry_client or {})))
        # Start the helpers now (imports take ~1 s each), not on the first batch.
        for future in [self._executor.submit(decode_chunk, []) for _ in range(processes)]:
            future.result()

    def submit(self, items: Sequence[Item]) -> Future[tuple[list[Work], list[Refusal]]]:
        """Decode one chunk in a helper; the future's result is :func:`decode_chunk`'s."""
        return self._executor.submit(decode_chunk, list(items))

    @property
    def pids(self) -> list[int]:
        """Process ids of the helpers (for monitoring their CPU and memory)."""
        return sorted(self._executor._processes or {})  # noqa: SLF001 - no public accessor

    def close(self) -> None:
        """Stop the helpers (waits for chunks in progress)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
