"""Fast skipping of the Avro values the classifier never reads, fast reading of flat ones.

Most of a ZTF alert's Avro body is history the stamp classifier does not use:
``prv_candidates`` (up to ~100 records of ~100 fields) and ``fp_hists``.  fastavro skips
a field at ~0.15 µs, i.e. 0.3-0.6 ms per alert, more than everything else the worker
does to an alert.  Here a writer type is compiled once (per writer schema) into
anchored regular expressions over the binary encoding, with Python steps only where
the encoding is length-prefixed (strings, bytes, arrays, maps) or a union holds such a
branch.  The regular expressions are exact: every union alternative starts with its own
index byte and varints are at most ten bytes, the last below 0x80, so a match never
backtracks across alternatives and a malformed value fails to match.

The same compiled expressions, with capture groups, read the flat ``candidate`` record
(:func:`compile_record_reader`); anything they do not cover (strings of 128 bytes or
more, nested types, logical types) is decoded by fastavro, so the result is always
fastavro's.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Any

from worker.decode.errors import AlertError, Reason

Skipper = Callable[[bytes, int, int], int]
_VARINT = rb"[\x80-\xff]{0,9}[\x00-\x7f]"
_FIXED_SIZE = {"null": b"", "boolean": rb"[\x00\x01]", "int": _VARINT, "long": _VARINT,
               "float": rb"[\s\S]{4}", "double": rb"[\s\S]{8}"}
# A string or bytes value shorter than 128 bytes as a regex: its length varint selects
# one alternative (one byte below 64, two bytes from 64 to 127).  Longer values make
# the fast program fail to match, and the exact program (Python steps) takes over.
_SHORT_BYTES = b"(?:" + b"|".join(
    [re.escape(bytes([2 * n])) + rb"[\s\S]{%d}" % n for n in range(64)]
    + [re.escape(bytes([(2 * n & 0x7F) | 0x80, 2 * n >> 7])) + rb"[\s\S]{%d}" % n
       for n in range(64, 128)]) + b")"


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


def _ops(schema: Any, fast: bool, depth: int = 0) -> list[Op]:
    """The skip program of an expanded type: regex fragments and Python steps.

    With ``fast``, strings and bytes are assumed shorter than 128 bytes (a pure regex);
    otherwise they are Python steps that accept any length.
    """
    if depth > 32:
        raise AlertError(Reason.BAD_SCHEMA, "schema nesting deeper than 32 levels")
    if isinstance(schema, str):
        if schema in _FIXED_SIZE:
            return [_FIXED_SIZE[schema]] if _FIXED_SIZE[schema] else []
        if schema in ("string", "bytes"):
            return [_SHORT_BYTES] if fast else [_skip_bytes]
        raise AlertError(Reason.BAD_SCHEMA, f"named type {schema!r} (recursive?) cannot be skipped")
    if isinstance(schema, list):
        branches = [_ops(branch, fast, depth + 1) for branch in schema]
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
        return [op for f in schema["fields"] for op in _ops(f["type"], fast, depth + 1)]
    if kind == "enum":
        return [_VARINT]
    if kind == "fixed":
        return [rb"[\s\S]{%d}" % schema["size"]]
    if kind in ("array", "map"):
        item = _compile_type(schema["items"] if kind == "array" else schema["values"], depth + 1)
        return [_block_skipper(item, with_keys=kind == "map")]
    return _ops(kind, fast, depth + 1)  # {"type": "long", "logicalType": ...} and the like


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


def _compile_type(schema: Any, depth: int = 0) -> Skipper:
    """Skip function for a type: the fast program, the exact one when it does not match."""
    exact = _compile(_ops(schema, False, depth))
    fast_ops = _ops(schema, True, depth)
    if not all(isinstance(op, bytes) for op in fast_ops):
        return exact  # holds arrays or maps: no single regex
    pattern = re.compile(b"".join(fast_ops), re.DOTALL)  # type: ignore[arg-type]

    def skip(buf: bytes, pos: int, end: int) -> int:
        match = pattern.match(buf, pos, end)
        return match.end() if match is not None else exact(buf, pos, end)

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
        :class:`~worker.decode.errors.AlertError` (``corrupt_record``) on malformed bytes.
    """
    return _compile_type(schema)


# --------------------------------------------------------------------------- fast reading

Reader = Callable[[bytes, int, int], "tuple[bool, Any, int]"]
_FLOAT = struct.Struct("<f").unpack
_DOUBLE = struct.Struct("<d").unpack


def _zigzag(raw: bytes) -> int:
    value = 0
    for shift, byte in enumerate(raw):
        value |= (byte & 0x7F) << (7 * shift)
    return (value >> 1) ^ -(value & 1)


def _string(raw: bytes) -> str:
    # The regex matched a length varint of 1 byte (< 64 chars) or 2 bytes (64-127).
    return raw[1 if raw[0] < 0x80 else 2:].decode("utf-8")


_PRIMITIVE_DECODERS: dict[str, Callable[[bytes], Any]] = {
    "null": lambda raw: None, "boolean": lambda raw: raw[0] == 1, "int": _zigzag,
    "long": _zigzag, "float": lambda raw: _FLOAT(raw)[0], "double": lambda raw: _DOUBLE(raw)[0],
    "string": _string,
}


def _value_decoder(schema: Any) -> Callable[[bytes], Any] | None:
    """Decoder of one matched value, or None where fastavro must decide.

    Logical types, enums, bytes and nested records are left to fastavro.
    """
    if isinstance(schema, str):
        return _PRIMITIVE_DECODERS.get(schema)
    if isinstance(schema, list):
        branches = [_value_decoder(branch) for branch in schema]
        if len(branches) >= 64 or any(b is None for b in branches):
            return None

        def union(raw: bytes) -> Any:
            return branches[raw[0] >> 1](raw[1:])  # type: ignore[misc]

        return union
    return None


def compile_record_reader(schema: Any, wanted: frozenset[str]) -> Reader | None:
    """Compile a reader of some fields of a flat record (or a union of it with null).

    For records made of primitives and unions of primitives (the ZTF ``candidate``), one
    regular expression matches the whole record and captures the wanted fields, which
    are then converted exactly as fastavro converts them.  It assumes strings shorter
    than 128 bytes; when the bytes do not match, ``read`` reports ``found=False`` and
    the caller decodes with fastavro, which either succeeds or names the corruption.

    Parameters
    ----------
    schema : Any
        Expanded writer type of the field.
    wanted : frozenset of str
        Field names to return.

    Returns
    -------
    callable or None
        ``read(buf, pos, end) -> (found, value, new_pos)``, value being a dict of the
        wanted fields (or None for a null union branch); None when the type does not
        qualify.
    """
    if isinstance(schema, list):
        if len(schema) != 2 or "null" not in schema:
            return None
        null_index = schema.index("null")
        inner = compile_record_reader(schema[1 - null_index], wanted)
        if inner is None:
            return None

        def read_union(buf: bytes, pos: int, end: int) -> tuple[bool, Any, int]:
            if pos >= end or buf[pos] not in (0, 2):
                return False, None, pos
            if buf[pos] >> 1 == null_index:
                return True, None, pos + 1
            found, value, after = inner(buf, pos + 1, end)
            # Not found: the caller decodes from the union's index byte, not past it.
            return (True, value, after) if found else (False, None, pos)

        return read_union
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    parts: list[bytes] = []
    decoders: list[tuple[str, Callable[[bytes], Any]]] = []
    for f in schema["fields"]:
        ops = _ops(f["type"], True)
        if not all(isinstance(op, bytes) for op in ops):
            return None
        fragment = b"".join(ops)  # type: ignore[arg-type]
        if f["name"] in wanted:
            decoder = _value_decoder(f["type"])
            if decoder is None:
                return None
            parts.append(b"(" + fragment + b")")
            decoders.append((f["name"], decoder))
        else:
            parts.append(fragment)
    pattern = re.compile(b"".join(parts), re.DOTALL)
    names = tuple(name for name, _ in decoders)
    converters = tuple(decoder for _, decoder in decoders)

    def read(buf: bytes, pos: int, end: int) -> tuple[bool, Any, int]:
        match = pattern.match(buf, pos, end)
        if match is None:
            return False, None, pos
        values = {name: convert(raw) for name, convert, raw
                  in zip(names, converters, match.groups(), strict=True)}
        return True, values, match.end()

    return read
