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
decides when helpers stop.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import signal
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from worker.alerts import AlertDecoder
from worker.config import AsteroidPolicy
from worker.errors import AlertError, Reason
from worker.labeller import Labeller, Rejected, Work
from worker.output import Source
from worker.stamps import PreprocessConfig

# (message value, source, consumed_at_ms, tag) for each message of a chunk.
Item = tuple[bytes, Source, int, int]
# A refused record: (tag, reason value, detail, record_index).
Refusal = tuple[int, str, str, "int | None"]

_LABELLER: Labeller | None = None


def _start_helper(preprocess: PreprocessConfig, policy: AsteroidPolicy,
                  registry_url: str | None, registry_client: Mapping[str, Any]) -> None:
    """Process initializer: ignore stop signals, build the decoding half of a Labeller."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    registry = None
    if registry_url:
        from worker.registry import ConfluentSchemaRegistry

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
            initargs=(preprocess, policy, registry_url, dict(registry_client or {})))
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
