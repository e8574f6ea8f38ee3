"""``stamp-worker classify``: the worker's pipeline without Kafka.

Alert files, folders, nightly archives and Parquet tables go through the same
:class:`~worker.labeller.Labeller` as the streaming worker (same decoding, preprocessing,
policy and model) and come out as label records with the worker's fields, written as JSON
lines or CSV.  Fields that name a Kafka source say where the alert was read instead:
``source_topic`` is the file (or ``archive!member``, or ``table#row<N>``),
``source_partition`` and ``source_offset`` are -1.  Alerts that cannot be labelled are
listed on the error stream with their reasons and counted in the summary; they never stop
the run.

Exit status of the command: 0 when every input was read and each of its alerts labelled
or refused with a reason (as the worker dead-letters them); 1 when some input could not
be read (a damaged archive or table) or is not an alert at all (:data:`NOT_AN_ALERT`),
after everything else has been labelled; 2 when nothing was done because a path, an
option, the output or the model is wrong.  Paths, output and model manifest are checked
before the model is loaded, and plain files are recognized as alerts (or not) by their
first bytes before the model is loaded, too.
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from schemas import load_schema
from worker.commandline import UsageError, check_writable
from worker.decode.errors import Reason
from worker.decode.sources import Payload
from worker.labeller import Labeller, Work
from worker.model.artifact import CLASS_NAMES
from worker.stream.output import Source

FORMATS = ("jsonl", "csv")
NOT_AN_ALERT = frozenset({Reason.EMPTY_MESSAGE.value, Reason.UNKNOWN_FORMAT.value})
"""Refusal reasons that say an input is not an alert at all (no bytes, or neither an Avro
container nor Confluent framing) rather than a damaged or unusable alert."""
EXIT_OK, EXIT_PARTIAL, EXIT_NOTHING_DONE = 0, 1, 2
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
        Refused alert records per reason (inputs that are not alerts are not counted).
    unreadable : list of (str, str)
        Inputs that could not be read at all, with the error.
    not_alerts : list of (str, str)
        Inputs that are not alerts at all (:data:`NOT_AN_ALERT`), with the reason.
    seconds : float
        Wall time [s].
    """

    inputs: int = 0
    labelled: int = 0
    by_class: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    not_alerts: list[tuple[str, str]] = field(default_factory=list)
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
        Called as ``on_refused(origin, reason, detail)`` for every refused record, and
        for every input that is not an alert (reason in :data:`NOT_AN_ALERT`).
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
            reason = item.error.reason.value
            origin = payload.origin + (f"#{item.record_index}"
                                       if item.record_index is not None else "")
            if reason in NOT_AN_ALERT:
                summary.not_alerts.append((origin, f"{reason}: {item.error.detail}"))
            else:
                summary.refused[reason] += 1
            if on_refused is not None:
                on_refused(origin, reason, item.error.detail)
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
    not_alerts = len(summary.not_alerts)
    lines = [f"{summary.inputs} inputs → {summary.labelled} labels, "
             f"{sum(summary.refused.values())} refused, {len(summary.unreadable)} unreadable "
             f"inputs, {not_alerts} {'input' if not_alerts == 1 else 'inputs'} not "
             f"{'an alert' if not_alerts == 1 else 'alerts'}, in {summary.seconds:.1f} s "
             f"({rate:.0f} alerts/s)",
             f"{'class':<10}{'labels':>8}"]
    lines += [f"{c:<10}{summary.by_class[c]:>8}" for c in CLASS_NAMES]
    if summary.refused:
        lines.append(f"{'refused':<24}{'alerts':>8}")
        lines += [f"{reason:<24}{n:>8}" for reason, n in summary.refused.most_common()]
    lines += [f"unreadable input {origin}: {error}" for origin, error in summary.unreadable]
    lines += [f"not an alert {origin}: {reason}" for origin, reason in summary.not_alerts]
    return "\n".join(lines)


def classify_command(paths: Sequence[str], output: str | None, fmt: str,
                     model_path: str | None, batch_size: int, asteroid_policy: bool,
                     err: TextIO, quiet: bool = False, backend: str = "auto",
                     device: str = "cpu") -> int:
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
    backend : {"auto", "onnx", "keras", "jax"}
        What runs the model (:meth:`worker.model.artifact.StampModel.load`).
    device : {"cpu", "gpu", "cuda", "auto"}
        Where the ONNX and JAX backends run it.

    Returns
    -------
    int
        :data:`EXIT_OK` (0) when every input was read and each of its alerts labelled or
        refused with a reason; :data:`EXIT_PARTIAL` (1) when some input could not be
        read or is not an alert at all, the other inputs labelled; and
        :data:`EXIT_NOTHING_DONE` (2), after one line on ``err``, when a path, an
        option, the output or the model is wrong (checked before the model loads).
    """
    import sys

    from worker.decode.sources import SourceError, expand_paths, read_inputs
    from worker.model.artifact import ModelError, StampModel
    from worker.stream.config import AsteroidPolicy

    summary = ClassifySummary()

    def refused(origin: str, reason: str, detail: str) -> None:
        if reason in NOT_AN_ALERT:  # the exit status depends on it: shown even with -q
            print(f"NOT AN ALERT {origin}: {reason}: {detail}", file=err)
        elif not quiet:
            print(f"REFUSED {origin}: {reason}: {detail}", file=err)

    def unreadable(origin: str, message: str) -> None:
        summary.unreadable.append((origin, message))
        print(f"UNREADABLE {origin}: {message}", file=err)

    to_stdout = output in (None, "-")
    try:
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
        # Every check that needs no model comes first: the model takes seconds to load.
        files = _alert_inputs(expand_paths(paths), summary, refused)
        if not to_stdout:
            check_writable(str(output), parents=False)
        if not files:  # nothing left that could hold an alert: no model needed
            print(format_summary(summary), file=err)
            return EXIT_PARTIAL
        model = StampModel.load(model_path, backend=backend, device=device)
    except (SourceError, ModelError, UsageError) as exc:
        print(f"stamp-worker classify: {exc}", file=err)
        return EXIT_NOTHING_DONE
    labeller = Labeller(model, asteroid_policy=AsteroidPolicy(enabled=asteroid_policy))
    try:
        stream = (sys.stdout if to_stdout
                  else open(str(output), "w", encoding="utf-8", newline=""))  # noqa: SIM115
    except OSError as exc:
        print(f"stamp-worker classify: {output}: cannot be written ({exc.strerror})", file=err)
        return EXIT_NOTHING_DONE
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
    return EXIT_PARTIAL if summary.unreadable or summary.not_alerts else EXIT_OK


def _alert_inputs(files: list[Path], summary: ClassifySummary,
                  on_refused: Callable[[str, str, str], None]) -> list[Path]:
    """The inputs that may hold alerts; the others are counted as not alerts.

    Every file is opened (an unreadable one stops the command: :class:`UsageError`) and
    a plain file's first bytes go through the decoder's own test of the framing, so a
    file that is not an alert is reported before the model loads.  Archives and tables
    are judged member by member as they are read.
    """
    from worker.decode.alerts import AlertDecoder
    from worker.decode.errors import AlertError
    from worker.decode.sources import holds_many

    decoder = AlertDecoder()
    kept = []
    for path in files:
        try:
            with open(path, "rb") as fh:
                head = fh.read(5)  # Avro magic (4 B) or Confluent magic + schema id (5 B)
        except OSError as exc:
            raise UsageError(f"{path}: cannot be read ({exc.strerror})") from exc
        if not holds_many(path):
            first = next(iter(decoder.iter_records(head)), None)
            if isinstance(first, AlertError) and first.reason.value in NOT_AN_ALERT:
                summary.inputs += 1
                summary.not_alerts.append((str(path), f"{first.reason.value}: {first.detail}"))
                on_refused(str(path), first.reason.value, first.detail)
                continue
        kept.append(path)
    return kept
