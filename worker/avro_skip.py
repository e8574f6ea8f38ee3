"""Fast skipping of the Avro values the classifier never reads.

Most of a ZTF alert's Avro body is history the stamp classifier does not use:
``prv_candidates`` (up to ~100 records of ~100 fields) and ``fp_hists``.  fastavro skips
a field at ~0.15 µs, i.e. 0.3-0.6 ms per alert, more than everything else the worker
does to an alert.  Here a writer type is compiled once (per writer schema) into
anchored regular expressions over the binary encoding, with Python steps only where
the encoding is length-prefixed (strings, bytes, arrays, maps) or a union holds such a
branch.  The regular expressions are exact: every union alternative starts with its own
index byte and varints are at most ten bytes, the last below 0x80, so a match never
backtracks across alternatives and a malformed value fails to match.

Only *skipping* is done here; every value the classifier reads is decoded by fastavro.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from worker.errors import AlertError, Reason

Skipper = Callable[[bytes, int, int], int]
_VARINT = rb"[\x80-\xff]{0,9}[\x00-\x7f]"
_FIXED_SIZE = {"null": b"", "boolean": rb"[\x00\x01]", "int": _VARINT, "long": _VARINT,
               "float": rb"[\s\S]{4}", "double": rb"[\s\S]{8}"}


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read an Avro ``long`` (zig-zag varint) inside a record; return (value, position)."""
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise AlertError(Reason.CORRUPT_RECORD, f"bad varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def _skip_bytes(buf: bytes, pos: int, end: int) -> int:
    size, pos = read_varint(buf, pos, end)
    if size < 0 or pos + size > end:
        raise AlertError(Reason.CORRUPT_RECORD, f"length {size} at byte {pos} runs past the end")
    return pos + size


Op = bytes | Skipper


def _ops(schema: Any, depth: int = 0) -> list[Op]:
    """The skip program of an expanded type: regex fragments and Python steps."""
    if depth > 32:
        raise AlertError(Reason.BAD_SCHEMA, "schema nesting deeper than 32 levels")
    if isinstance(schema, str):
        if schema in _FIXED_SIZE:
            return [_FIXED_SIZE[schema]] if _FIXED_SIZE[schema] else []
        if schema in ("string", "bytes"):
            return [_skip_bytes]
        raise AlertError(Reason.BAD_SCHEMA, f"named type {schema!r} (recursive?) cannot be skipped")
    if isinstance(schema, list):
        branches = [_ops(branch, depth + 1) for branch in schema]
        if len(branches) < 64 and all(isinstance(op, bytes) for ops in branches for op in ops):
            # Union index i is the varint 2i: one byte that selects the alternative.
            alternatives = [re.escape(bytes([2 * i])) + b"".join(ops)  # type: ignore[arg-type]
                            for i, ops in enumerate(branches)]
            return [b"(?:" + b"|".join(alternatives) + b")"]
        steps = [_compile(ops) for ops in branches]

        def skip_union(buf: bytes, pos: int, end: int) -> int:
            index, pos = read_varint(buf, pos, end)
            if not 0 <= index < len(steps):
                raise AlertError(Reason.CORRUPT_RECORD, f"union index {index} out of range")
            return steps[index](buf, pos, end)

        return [skip_union]
    kind = schema["type"]
    if kind in ("record", "error"):
        return [op for f in schema["fields"] for op in _ops(f["type"], depth + 1)]
    if kind == "enum":
        return [_VARINT]
    if kind == "fixed":
        return [rb"[\s\S]{%d}" % schema["size"]]
    if kind in ("array", "map"):
        item = _compile(_ops(schema["items"] if kind == "array" else schema["values"], depth + 1))
        return [_block_skipper(item, with_keys=kind == "map")]
    return _ops(kind, depth + 1)  # {"type": "long", "logicalType": ...} and the like


def _block_skipper(item: Skipper, with_keys: bool) -> Skipper:
    def skip_blocks(buf: bytes, pos: int, end: int) -> int:
        while True:
            count, pos = read_varint(buf, pos, end)
            if count == 0:
                return pos
            if count < 0:  # a block that carries its byte size can be jumped over
                size, pos = read_varint(buf, pos, end)
                if size < 0 or pos + size > end:
                    raise AlertError(Reason.CORRUPT_RECORD, f"array block of {size} B runs past "
                                     "the end")
                pos += size
                continue
            # Each item takes at least one byte (schemas with empty items are refused), so
            # a count larger than what is left is corrupt: this bounds the loop.
            if count > end - pos:
                raise AlertError(Reason.CORRUPT_RECORD, f"array announces {count} items in "
                                 f"{end - pos} B")
            for _ in range(count):
                if with_keys:
                    pos = _skip_bytes(buf, pos, end)
                pos = item(buf, pos, end)
    return skip_blocks


def _compile(ops: list[Op]) -> Skipper:
    """Merge adjacent regex fragments into compiled patterns; return one skip function."""
    steps: list[tuple[bool, Any]] = []
    pending: list[bytes] = []
    for op in ops:
        if isinstance(op, bytes):
            pending.append(op)
            continue
        if pending:
            steps.append((True, re.compile(b"".join(pending), re.DOTALL)))
            pending = []
        steps.append((False, op))
    if pending:
        steps.append((True, re.compile(b"".join(pending), re.DOTALL)))
    program = tuple(steps)

    def skip(buf: bytes, pos: int, end: int) -> int:
        for is_regex, step in program:
            if is_regex:
                match = step.match(buf, pos, end)
                if match is None:
                    raise AlertError(Reason.CORRUPT_RECORD, f"malformed value at byte {pos}")
                pos = match.end()
            else:
                pos = step(buf, pos, end)
        return pos

    return skip


def compile_skipper(schema: Any) -> Skipper:
    """Compile an *expanded* Avro type (fastavro ``parse_schema(..., expand=True)``).

    Parameters
    ----------
    schema : Any
        The type of the value to skip, with named types inlined.

    Returns
    -------
    Callable[[bytes, int, int], int]
        ``skip(buf, pos, end)`` → position just after the value.  Raises
        :class:`~worker.errors.AlertError` (``corrupt_record``) on malformed bytes.
    """
    return _compile(_ops(schema))
