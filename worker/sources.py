"""Alert payloads from files, folders and ZTF's nightly archives, without unpacking.

ZTF publishes each night as ``ztf_public_YYYYMMDD.tar.gz``: a gzipped tar of one
``<candid>.avro`` file per alert, tens of GB for a busy night.  :func:`iter_payloads`
reads such archives as a stream (``tarfile`` mode ``r|*``), one member at a time, so
nothing is written to disk and memory holds one alert at a time.

Inputs, in the order given:

* a file ending in ``.avro`` (or any other non-archive file): one payload;
* an archive (``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``): each regular
  member whose name ends in ``.avro``, in archive order;
* a folder: its ``.avro`` files and archives, recursively, in sorted path order.

A path that does not exist stops the command before anything is read
(:class:`SourceError`).  An archive that turns out to be corrupt part-way is reported
through ``on_error`` and reading goes on with the next input: the payloads read before
the damage have already been yielded and are not lost.
"""

from __future__ import annotations

import random
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
ALERT_SUFFIX = ".avro"


class SourceError(Exception):
    """An input path is missing or unreadable (a problem of the command line)."""


@dataclass(frozen=True, slots=True)
class Payload:
    """One alert message as read from its input.

    Attributes
    ----------
    origin : str
        Where it came from: a file path, or ``archive!member`` for an archive member.
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


def _is_input(path: Path) -> bool:
    return path.is_file() and (path.name.lower().endswith(ALERT_SUFFIX) or is_archive(path))


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Resolve files and folders into the list of inputs to read.

    Parameters
    ----------
    paths : sequence of str or Path
        Files, archives or folders.

    Returns
    -------
    list of Path
        Files and archives, folders expanded recursively in sorted order.

    Raises
    ------
    SourceError
        A path does not exist, or a folder holds no alert file or archive.
    """
    out: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if _is_input(p))
            if not found:
                raise SourceError(f"{path}: folder holds no .avro file or tar archive")
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


def iter_payloads(paths: Sequence[str | Path],
                  on_error: Callable[[str, str], None] | None = None) -> Iterator[Payload]:
    """Yield the alert payloads of files, folders and archives, streaming archives.

    Parameters
    ----------
    paths : sequence of str or Path
        Inputs (see the module docstring).
    on_error : callable, optional
        Called as ``on_error(origin, message)`` for an input that cannot be read
        (corrupt archive, I/O error); reading goes on with the next input.  Without
        one, such errors raise :class:`SourceError`.

    Yields
    ------
    Payload
        One per alert file or archive member.

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
            else:
                yield Payload(str(path), path.read_bytes())
        except (OSError, tarfile.TarError, EOFError) as exc:
            # gzip raises EOFError/BadGzipFile (an OSError) on a truncated archive.
            message = f"{type(exc).__name__}: {exc}"
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
