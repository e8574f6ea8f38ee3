"""Alert payloads from files, folders, ZTF's nightly archives and Parquet tables.

ZTF publishes each night as ``ztf_public_YYYYMMDD.tar.gz``: a gzipped tar of one
``<candid>.avro`` file per alert, tens of GB for a busy night.  :func:`iter_payloads`
reads such archives as a stream (``tarfile`` mode ``r|*``), one member at a time, so
nothing is written to disk and memory holds one alert at a time.

Brokers built on Spark (Fink) export alerts as Parquet tables, one alert per row.  Each
row is turned into a one-record Avro object container in the form Spark-based brokers
write: the writer schema (:func:`avro_schema_of`) is a record named ``topLevelRecord``
with every field a nullable union.  The worker's decoder already reads such containers
(it matches fields by name), so a row is decoded, replayed or labelled exactly like an
Avro file; the rows that the shared data's maintainers converted the same way
(``real-alerts/alerts/shared-fink-hostless``) come out with their schema and record bytes.
Tables are read in row batches, so memory holds one batch, not the table; ``pyarrow`` is
imported only when a table is met, so the worker's start-up does not pay for it.

Inputs, in the order given:

* a file ending in ``.avro`` (or any other file not named below): one payload;
* an archive (``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``): each regular
  member whose name ends in ``.avro``, in archive order;
* a Parquet table (``.parquet``): one payload per row, in table order, origin
  ``path#row<N>`` (N counted from 0);
* a folder: its ``.avro`` files, archives and Parquet tables, recursively, in sorted path
  order (Spark's ``part-*.parquet`` folders included).

A path that does not exist stops the command before anything is read
(:class:`SourceError`).  An archive or a table that turns out to be corrupt part-way is
reported through ``on_error`` and reading goes on with the next input: the payloads read
before the damage have already been yielded and are not lost.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow

ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
ALERT_SUFFIX = ".avro"
TABLE_SUFFIX = ".parquet"
TABLE_BATCH_ROWS = 64
"""Rows converted at a time: about 3 MB of Fink's ZTF rows (cutouts, history, scores)."""


class SourceError(Exception):
    """An input path is missing or unreadable (a problem of the command line)."""


@dataclass(frozen=True, slots=True)
class Payload:
    """One alert message as read from its input.

    Attributes
    ----------
    origin : str
        Where it came from: a file path, ``archive!member`` for an archive member, or
        ``table#row<N>`` for row N (from 0) of a Parquet table.
    data : bytes
        The message bytes (an Avro object container for ZTF alerts).
    key : bytes or None
        The message key it had, when it was read from a topic.
    headers : list of (str, bytes) or None
        The message headers it had, when it was read from a topic.
    """

    origin: str
    data: bytes
    key: bytes | None = None
    headers: list[tuple[str, bytes]] | None = None


def is_archive(path: Path) -> bool:
    """Whether a path names a tar archive (by its suffix)."""
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in ARCHIVE_SUFFIXES)


def is_table(path: Path) -> bool:
    """Whether a path names a Parquet table (by its suffix)."""
    return path.name.lower().endswith(TABLE_SUFFIX)


def holds_many(path: Path) -> bool:
    """Whether an input yields many payloads in a stream (an archive or a table)."""
    return is_archive(path) or is_table(path)


def _is_input(path: Path) -> bool:
    return path.is_file() and (path.name.lower().endswith(ALERT_SUFFIX) or holds_many(path))


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Resolve files and folders into the list of inputs to read.

    Parameters
    ----------
    paths : sequence of str or Path
        Files, archives, Parquet tables or folders.

    Returns
    -------
    list of Path
        Files, archives and tables, folders expanded recursively in sorted order.

    Raises
    ------
    SourceError
        A path does not exist, or a folder holds no alert file, archive or table.
    """
    out: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if _is_input(p))
            if not found:
                raise SourceError(f"{path}: folder holds no .avro file, tar archive "
                                  "or .parquet table")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise SourceError(f"{path}: no such file or directory")
    return out


def _iter_archive(path: Path) -> Iterator[Payload]:
    # Mode "r|*": a forward-only stream with transparent gzip/bz2/xz; members are read in
    # order and never extracted.
    with tarfile.open(path, mode="r|*") as archive:
        for member in archive:
            if not member.isfile() or not member.name.lower().endswith(ALERT_SUFFIX):
                continue
            handle = archive.extractfile(member)
            if handle is None:  # pragma: no cover - isfile() members always have data
                continue
            yield Payload(f"{path}!{member.name}", handle.read())


class _UnreadableTable(Exception):
    """A Parquet table (or its schema) that cannot be read; the message is the reason."""


def _valid_name(base: str) -> str:
    # Avro *type* names must match [A-Za-z_][A-Za-z0-9_]* (a dot would even start a
    # namespace); field names are kept as Arrow has them, as Spark and the data's own
    # conversion do (Fink's ``t2`` has ``M-dwarf``), since the decoder matches by name.
    name = re.sub(r"[^A-Za-z0-9_]", "_", base)
    return name if name[:1].isalpha() or name[:1] == "_" else f"_{name}"


def _avro_type(arrow_type: pyarrow.DataType, base: str, counter: list[int]) -> Any:
    """The Avro type of one Arrow type, Spark-style; None when it has no Avro twin."""
    import pyarrow as pa

    t = pa.types
    if t.is_dictionary(arrow_type):  # dictionary-encoded columns read as their values
        return _avro_type(arrow_type.value_type, base, counter)
    if t.is_boolean(arrow_type):
        return "boolean"
    if t.is_int8(arrow_type) or t.is_int16(arrow_type) or t.is_int32(arrow_type) \
            or t.is_uint8(arrow_type) or t.is_uint16(arrow_type):
        return "int"
    if t.is_int64(arrow_type) or t.is_uint32(arrow_type):
        return "long"  # uint64 does not fit a long: dropped below
    if t.is_float32(arrow_type):
        return "float"
    if t.is_float64(arrow_type):
        return "double"
    if t.is_string(arrow_type) or t.is_large_string(arrow_type) \
            or t.is_string_view(arrow_type):
        return "string"
    if t.is_binary(arrow_type) or t.is_large_binary(arrow_type) \
            or t.is_binary_view(arrow_type) or t.is_fixed_size_binary(arrow_type):
        return "bytes"
    if t.is_list(arrow_type) or t.is_large_list(arrow_type) \
            or t.is_fixed_size_list(arrow_type):
        items = _avro_type(arrow_type.value_type, f"{base}_item", counter)
        return None if items is None else {"type": "array", "items": ["null", items]}
    if t.is_struct(arrow_type):
        # Nested records are named after their field and numbered in schema order, as in
        # the data's converted rows (``candidate_r1``, ``prv_candidates_item_r2``...):
        # unique, as Avro requires of named types.
        counter[0] += 1
        name = f"{_valid_name(base)}_r{counter[0]}"
        fields = _avro_fields([arrow_type.field(i) for i in range(arrow_type.num_fields)],
                              counter)
        return {"type": "record", "name": name, "fields": fields}
    # Maps, dates, times, decimals, all-null columns, unions: nothing the classifier
    # reads, and no single Avro form the decoder could count on; dropped, as the data's
    # converted rows dropped their map-typed columns.
    return None


def _avro_fields(fields: Iterable[pyarrow.Field], counter: list[int]) -> list[dict[str, Any]]:
    out = []
    for field in fields:
        avro = _avro_type(field.type, field.name, counter)
        if avro is not None:
            out.append({"default": None, "name": field.name, "type": ["null", avro]})
    return out


def avro_schema_of(arrow_schema: pyarrow.Schema) -> dict[str, Any]:
    """The Spark-style Avro schema of rows of an Arrow (Parquet) schema.

    A record named ``topLevelRecord``; every field a nullable union ``["null", T]`` with
    default null; structs become records named ``<field>_r<N>`` (N counts records in
    schema order, so names are unique), lists become arrays of nullable items, and
    binary → bytes, string → string, int8/16/32 → int, int64 → long, float32 → float,
    float64 → double, bool → boolean.  Columns of other types (maps, dates, decimals,
    uint64...) and struct members of such types are dropped.

    Parameters
    ----------
    arrow_schema : pyarrow.Schema
        The table's schema.

    Returns
    -------
    dict
        The Avro writer schema (JSON-ready).
    """
    counter = [0]
    return {"type": "record", "name": "topLevelRecord",
            "fields": _avro_fields(arrow_schema, counter)}


def _iter_table(path: Path) -> Iterator[Payload]:
    import fastavro
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as table:  # closed also when the reader stops early
            schema = avro_schema_of(table.schema_arrow)
            parsed = fastavro.parse_schema(schema)
            columns = [f["name"] for f in schema["fields"]]
            # A sync marker drawn from the schema, not at random: the same row gives the
            # same bytes on every run (replays and datasets are reproducible).
            sync = hashlib.md5(json.dumps(schema).encode(), usedforsecurity=False).digest()
            row = 0
            for batch in table.iter_batches(batch_size=TABLE_BATCH_ROWS, columns=columns):
                for record in batch.to_pylist():
                    out = io.BytesIO()
                    fastavro.writer(out, parsed, [record], sync_marker=sync)
                    yield Payload(f"{path}#row{row}", out.getvalue())
                    row += 1
    except pa.ArrowException as exc:
        # ArrowInvalid for a damaged file; ArrowIOError is also an OSError, kept apart so
        # that every Arrow failure reads the same way.
        raise _UnreadableTable(f"{type(exc).__name__}: {exc}") from exc
    except fastavro.schema.SchemaParseException as exc:  # e.g. two columns of one name
        raise _UnreadableTable(f"no Avro schema for its columns: {exc}") from exc


def iter_payloads(paths: Sequence[str | Path],
                  on_error: Callable[[str, str], None] | None = None) -> Iterator[Payload]:
    """Yield the alert payloads of files, folders, archives and tables, as a stream.

    Parameters
    ----------
    paths : sequence of str or Path
        Inputs (see the module docstring).
    on_error : callable, optional
        Called as ``on_error(origin, message)`` for an input that cannot be read
        (corrupt archive or table, I/O error); reading goes on with the next input.  Without
        one, such errors raise :class:`SourceError`.

    Yields
    ------
    Payload
        One per alert file, archive member or table row.

    Raises
    ------
    SourceError
        A path does not exist (before anything is yielded), or an input is unreadable
        and no ``on_error`` was given.
    """
    yield from read_inputs(expand_paths(paths), on_error)


def read_inputs(files: Iterable[Path], on_error: Callable[[str, str], None] | None = None
                ) -> Iterator[Payload]:
    """Yield the payloads of inputs already listed by :func:`expand_paths`.

    For commands that check the paths first (and may reorder them): the folders are
    walked once.  ``on_error`` and the errors raised are those of :func:`iter_payloads`.
    """
    for path in files:
        try:
            if is_archive(path):
                yield from _iter_archive(path)
            elif is_table(path):
                yield from _iter_table(path)
            else:
                yield Payload(str(path), path.read_bytes())
        except (OSError, tarfile.TarError, EOFError, _UnreadableTable) as exc:
            # gzip raises EOFError/BadGzipFile (an OSError) on a truncated archive.
            message = (str(exc) if isinstance(exc, _UnreadableTable)
                       else f"{type(exc).__name__}: {exc}")
            if on_error is None:
                raise SourceError(f"{path}: {message}") from exc
            on_error(str(path), message)


def shuffled(items: Iterable[Payload], buffer_size: int, seed: int | None = None
             ) -> Iterator[Payload]:
    """Shuffle a stream with a bounded buffer (memory: ``buffer_size`` payloads).

    Each output is drawn uniformly from the next ``buffer_size`` inputs, so a stream no
    longer than the buffer comes out in a uniformly random order and a longer one is
    mixed over windows of that size (a streamed archive cannot be shuffled globally
    without holding all of it).

    Parameters
    ----------
    items : iterable of Payload
        The stream.
    buffer_size : int
        Payloads held at once, ≥ 1.
    seed : int, optional
        Seed of the random order (None: different each run).
    """
    if buffer_size < 1:
        raise ValueError(f"shuffle buffer must hold at least 1 payload, got {buffer_size}")
    rng = random.Random(seed)
    buffer: list[Payload] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        i = rng.randrange(len(buffer))
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer
