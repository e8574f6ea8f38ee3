"""``stamp-worker classify``: the worker's pipeline without Kafka.

Alert files, folders, nightly archives and Parquet tables go through the same
:class:`~worker.labeller.Labeller` as the streaming worker (same decoding, preprocessing,
policy and model) and come out as label records with the worker's fields, written as JSON
lines or CSV.  Fields that name a Kafka source say where the alert was read instead:
``source_topic`` is the file (or ``archive!member``, or ``table#row<N>``),
``source_partition`` and ``source_offset`` are -1.  Alerts that cannot be labelled are
listed on the error stream with their reasons and counted in the summary; they never stop
the run.
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from schemas import load_schema
from worker.labeller import Labeller, Work
from worker.model import CLASS_NAMES
from worker.output import Source
from worker.sources import Payload

FORMATS = ("jsonl", "csv")
_LABEL_FIELDS = [f["name"] for f in load_schema("label.avsc")["fields"]]


def csv_columns() -> list[str]:
    """CSV header: the label record's fields, probabilities spread as ``p_<class>``."""
    out: list[str] = []
    for name in _LABEL_FIELDS:
        out += [f"p_{c}" for c in CLASS_NAMES] if name == "probabilities" else [name]
    return out


def _csv_row(record: dict[str, Any]) -> list[Any]:
    row: list[Any] = []
    for name in _LABEL_FIELDS:
        value = record[name]
        if name == "probabilities":
            row += [f"{value[c]:.6g}" for c in CLASS_NAMES]
        elif name == "flags":
            row.append(";".join(value))
        elif isinstance(value, float):
            row.append(repr(value))
        else:
            row.append(value)
    return row


class LabelWriter:
    """Writes label records to a text stream as JSON lines or CSV.

    Parameters
    ----------
    stream : TextIO
        Destination.
    fmt : {"jsonl", "csv"}
        JSON lines (one label record per line, the worker's field names) or CSV (a
        header, then one row per label; probabilities as ``p_<class>`` columns,
        flags joined by ``;``).
    """

    def __init__(self, stream: TextIO, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        self.stream = stream
        self.fmt = fmt
        self._csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(csv_columns())

    def write(self, record: dict[str, Any]) -> None:
        """Write one label record (a dict of ``schemas/label.avsc``)."""
        if self._csv is not None:
            self._csv.writerow(_csv_row(record))
        else:
            self.stream.write(json.dumps(record, separators=(",", ":")) + "\n")


@dataclass
class ClassifySummary:
    """What a classify run did.

    Attributes
    ----------
    inputs : int
        Payloads read (files or archive members).
    labelled : int
        Label records written.
    by_class : Counter
        Labels per top class.
    refused : Counter
        Refused alert records per reason.
    unreadable : list of (str, str)
        Inputs that could not be read at all, with the error.
    seconds : float
        Wall time [s].
    """

    inputs: int = 0
    labelled: int = 0
    by_class: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def classify_payloads(payloads: Iterable[Payload], labeller: Labeller, writer: LabelWriter,
                      batch_size: int = 256,
                      on_refused: Callable[[str, str, str], None] | None = None,
                      summary: ClassifySummary | None = None) -> ClassifySummary:
    """Label a stream of alert payloads in batches of ``batch_size`` alerts.

    Parameters
    ----------
    payloads : iterable of Payload
        Alert messages and where they came from.
    labeller : Labeller
        The worker's classification core.
    writer : LabelWriter
        Where label records go, in input order.
    batch_size : int
        Alerts per model call.
    on_refused : callable, optional
        Called as ``on_refused(origin, reason, detail)`` for every refused record.
    summary : ClassifySummary, optional
        Counts to add to (a new one by default).

    Returns
    -------
    ClassifySummary
        Counts and timing.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    summary = summary if summary is not None else ClassifySummary()
    start = time.perf_counter()
    batch: list[Work] = []

    def flush() -> None:
        outcomes = labeller.infer(batch)
        now_ms = int(time.time() * 1000)
        for item, outcome in zip(batch, outcomes, strict=True):
            record = labeller.record(item, outcome, now_ms)
            writer.write(record)
            summary.labelled += 1
            summary.by_class[record["top_class"]] += 1
        batch.clear()

    for payload in payloads:
        summary.inputs += 1
        work, rejected = labeller.decode(payload.data, Source(payload.origin, -1, -1, -1),
                                         int(time.time() * 1000))
        for item in rejected:
            summary.refused[item.error.reason.value] += 1
            if on_refused is not None:
                origin = payload.origin + (f"#{item.record_index}"
                                           if item.record_index is not None else "")
                on_refused(origin, item.error.reason.value, item.error.detail)
        batch += work
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    summary.seconds += time.perf_counter() - start
    return summary


def format_summary(summary: ClassifySummary) -> str:
    """The end-of-run report: labels per class, refusals per reason, rate."""
    rate = summary.labelled / summary.seconds if summary.seconds > 0 else 0.0
    lines = [f"{summary.inputs} inputs → {summary.labelled} labels, "
             f"{sum(summary.refused.values())} refused, {len(summary.unreadable)} unreadable "
             f"inputs, in {summary.seconds:.1f} s ({rate:.0f} alerts/s)",
             f"{'class':<10}{'labels':>8}"]
    lines += [f"{c:<10}{summary.by_class[c]:>8}" for c in CLASS_NAMES]
    if summary.refused:
        lines.append(f"{'refused':<24}{'alerts':>8}")
        lines += [f"{reason:<24}{n:>8}" for reason, n in summary.refused.most_common()]
    lines += [f"unreadable input {origin}: {error}" for origin, error in summary.unreadable]
    return "\n".join(lines)


def classify_command(paths: Sequence[str], output: str | None, fmt: str,
                     model_path: str | None, batch_size: int, asteroid_policy: bool,
                     err: TextIO, quiet: bool = False) -> int:
    """Run ``stamp-worker classify``; returns the exit status.

    Parameters
    ----------
    paths : sequence of str
        Alert files, folders, archives, Parquet tables.
    output : str or None
        File to write; None or ``"-"`` for standard output.
    fmt : {"jsonl", "csv"}
        Output format.
    model_path : str or None
        Model artifact directory (None: the bundled model).
    batch_size : int
        Alerts per model call.
    asteroid_policy : bool
        Label known solar-system objects (within 5″) asteroid without the model.
    err : TextIO
        Where refusals and the summary go.
    quiet : bool
        Only the summary on ``err``, not one line per refusal.

    Returns
    -------
    int
        0 when every input could be read (refused alerts are results, not failures);
        1 when some input was unreadable.
    """
    import sys

    from worker.config import AsteroidPolicy
    from worker.model import ModelError, StampModel
    from worker.sources import SourceError, expand_paths, read_inputs

    try:
        files = expand_paths(paths)  # a typo in a path stops it before the model loads
        model = StampModel.load(model_path)
    except (SourceError, ModelError) as exc:
        raise SystemExit(f"stamp-worker classify: {exc}") from exc
    labeller = Labeller(model, asteroid_policy=AsteroidPolicy(enabled=asteroid_policy))
    summary = ClassifySummary()

    def refused(origin: str, reason: str, detail: str) -> None:
        if not quiet:
            print(f"REFUSED {origin}: {reason}: {detail}", file=err)

    def unreadable(origin: str, message: str) -> None:
        summary.unreadable.append((origin, message))
        print(f"UNREADABLE {origin}: {message}", file=err)

    stream = (sys.stdout if output in (None, "-")
              else open(output, "w", encoding="utf-8", newline=""))  # noqa: SIM115
    from rich.console import Console
    from rich.progress import Progress

    console = Console(file=err)
    try:
        with Progress(console=console, disable=quiet or not console.is_terminal,
                      transient=True) as bar:
            task = bar.add_task("classify", total=None)

            def counted(items: Iterable[Payload]) -> Iterable[Payload]:
                for item in items:
                    yield item
                    bar.advance(task)

            writer = LabelWriter(stream, fmt)
            classify_payloads(counted(read_inputs(files, on_error=unreadable)), labeller,
                              writer, batch_size, refused, summary)
    finally:
        if stream is not sys.stdout:
            stream.close()
        else:
            stream.flush()
    print(format_summary(summary), file=err)
    return 1 if summary.unreadable else 0
