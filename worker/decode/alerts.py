"""Bytes of one Kafka message (or one archived file) → :class:`Alert` values.

Three encodings are read:

* **Avro object container** (ZTF's own encoding, schemas 1.8 to 4.02, one alert per
  message; also containers re-written by other brokers: Spark's ``topLevelRecord``
  writer schema, snappy/deflate/zstandard codecs, many alerts per file, extra columns).
* **Confluent wire format**: magic byte ``0``, a 4-byte big-endian schema id, then one
  schemaless Avro record whose writer schema is fetched from a schema registry.

Only the fields the classifier needs are decoded: the writer schema is *projected* onto
the names listed in ``schemas/alert_projection.avsc`` (fields are matched by name, so
record names and extra columns do not matter) and fastavro skips everything else
(``prv_candidates``, ``fp_hists``, most candidate columns).  Parsed writer schemas and
their projections are cached by the schema's bytes (or registry id): parsing an
embedded ZTF schema costs more than decoding the alert itself.

Every failure is an :class:`~worker.decode.errors.AlertError` with a machine-readable reason.
"""

from __future__ import annotations

import io
import json
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import cramjam
import fastavro

from schemas import load_schema
from worker.decode import native
from worker.decode.avro_skip import Reader, Skipper, compile_record_reader, compile_skipper
from worker.decode.errors import AlertError, Reason

OCF_MAGIC = b"Obj\x01"
CONFLUENT_MAGIC = 0
CUTOUT_FIELDS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds that keep hostile input from exhausting memory or time.

    Parameters
    ----------
    max_message_bytes : int
        Largest accepted message [bytes]; a ZTF alert is ~60-100 kB.
    max_header_bytes : int
        Largest container header (metadata map, embedded schema) [bytes].
    max_block_bytes : int
        Largest container data block after decompression [bytes].
    max_records_per_block : int
        Largest record count a container block may announce.
    schema_cache_size : int
        Number of distinct writer schemas kept parsed (least recently used evicted).
    """

    max_message_bytes: int = 64 * 1024 * 1024
    max_header_bytes: int = 1024 * 1024
    max_block_bytes: int = 256 * 1024 * 1024
    max_records_per_block: int = 100_000
    schema_cache_size: int = 64


@dataclass(frozen=True, slots=True)
class Alert:
    """The parts of one alert the classifier uses.

    Attributes
    ----------
    object_id : str
        ZTF object identifier (``objectId``), the output record's key.
    candid : int
        Candidate identifier, unique per alert.
    jd : float
        Julian date of the observation (start of exposure) [days].
    science, template, difference : bytes
        The three cutouts as stored in the alert (gzipped FITS, 63×63 pixels).
    candidate : Mapping[str, Any]
        The projected candidate fields (``schemas/alert_projection.avsc``); a field the
        writer schema lacks, or that is null, maps to ``None``.
    schema_version : str or None
        ``schemavsn`` when the writer schema carries it (absent before ZTF 3.0).
    """

    object_id: str
    candid: int
    jd: float
    science: bytes
    template: bytes
    difference: bytes
    candidate: Mapping[str, Any]
    schema_version: str | None

    @property
    def cutouts(self) -> tuple[bytes, bytes, bytes]:
        """The science, template and difference cutouts, in model-channel order."""
        return (self.science, self.template, self.difference)


class SchemaSource(Protocol):
    """Where Confluent-framed messages get their writer schema (a schema registry)."""

    def schema_for_id(self, schema_id: int) -> str:
        """Return the Avro schema JSON text for ``schema_id``.

        Raises
        ------
        AlertError
            With reason ``unknown_schema_id`` when the registry does not know the id.
        SchemaRegistryUnavailable
            When the registry cannot answer (the message must be retried, not dropped).
        """
        ...


# --------------------------------------------------------------------------- projection

def _spec_of(schema: Any) -> dict[str, Any] | None:
    """Turn an expanded projection type into a field-name tree (``None`` = keep whole)."""
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        return _spec_of(branches[0]) if len(branches) == 1 else None
    if isinstance(schema, dict) and schema.get("type") == "record":
        return {f["name"]: _spec_of(f["type"]) for f in schema["fields"]}
    return None


_PROJECTION_SPEC: dict[str, Any] = _spec_of(
    fastavro.parse_schema(load_schema("alert_projection.avsc"), expand=True)
)  # type: ignore[assignment]
CANDIDATE_FIELDS: tuple[str, ...] = tuple(_PROJECTION_SPEC["candidate"])


def _project(schema: Any, spec: dict[str, Any] | None, emitted: set[str]) -> Any:
    """Project an *expanded* writer type onto ``spec``, keeping the writer's names.

    Named types are emitted once (definition) and referenced by full name afterwards, so
    the result parses; record fields absent from ``spec`` are dropped, which makes
    fastavro skip them.
    """
    if isinstance(schema, list):
        return [_project(branch, spec, emitted) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    kind = schema["type"]
    if kind in ("record", "error", "enum", "fixed"):
        name = schema["name"]
        if name in emitted:
            return name
        emitted.add(name)
        if kind in ("enum", "fixed"):
            return schema
        fields = [
            {"name": f["name"], "type": _project(f["type"], spec.get(f["name"]) if spec else None,
                                                 emitted)}
            for f in schema["fields"]
            if spec is None or f["name"] in spec
        ]
        return {"type": "record", "name": name, "fields": fields}
    if kind == "array":
        return {"type": "array", "items": _project(schema["items"], None, emitted)}
    if kind == "map":
        return {"type": "map", "values": _project(schema["values"], None, emitted)}
    return schema


def _check_bounded(schema: Any, seen: set[str]) -> None:
    """Reject schemas whose arrays/maps can hold items that occupy zero bytes.

    An array of ``null`` lets a 10-byte message announce 2**62 items, which fastavro
    would loop over: a denial of service.  No alert schema needs one.
    """
    if isinstance(schema, list):
        for branch in schema:
            _check_bounded(branch, seen)
        return
    if not isinstance(schema, dict):
        return
    kind = schema["type"]
    if kind in ("array", "map"):
        inner = schema["items"] if kind == "array" else schema["values"]
        if _may_be_empty(inner):
            raise AlertError(Reason.BAD_SCHEMA, f"{kind} of zero-size items is not accepted")
        _check_bounded(inner, seen)
    elif kind in ("record", "error"):
        if schema["name"] in seen:
            return
        seen.add(schema["name"])
        for f in schema["fields"]:
            _check_bounded(f["type"], seen)


def _may_be_empty(schema: Any) -> bool:
    """Whether a value of this (expanded) type can be encoded in zero bytes."""
    if schema == "null" or schema == {"type": "null"}:
        return True
    if isinstance(schema, list):
        return False  # a union always writes its branch index (>= 1 byte)
    if isinstance(schema, dict):
        if schema["type"] == "fixed":
            return schema["size"] == 0
        if schema["type"] in ("record", "error"):
            return all(_may_be_empty(f["type"]) for f in schema["fields"])
    return False


@dataclass(frozen=True)
class _Codec:
    """How to read one writer schema: per top-level field, fastavro or a fast skip.

    ``steps`` holds ``(name, writer, reader, skip, fast)``: a field the classifier reads
    is decoded by fastavro with its parsed ``writer`` type projected onto ``reader`` (None
    when nothing is dropped), after trying the ``fast`` regex reader where the type
    allows one; any other field is jumped over by ``skip``.  ``program`` is the same
    reading compiled for the native extension (:mod:`worker.decode.native`), None without it.
    """

    steps: tuple[tuple[str, Any, Any, Skipper | None, Reader | None], ...]
    program: Any = None


def _build_codec(schema_json: str | bytes) -> _Codec:
    try:
        raw = json.loads(schema_json)
        expanded = fastavro.parse_schema(raw, expand=True)
    except Exception as exc:  # fastavro raises many types for a bad schema
        raise AlertError(Reason.BAD_SCHEMA, f"writer schema does not parse: {exc}") from exc
    if not isinstance(expanded, dict) or expanded.get("type") != "record":
        raise AlertError(Reason.BAD_SCHEMA, "writer schema is not a record")
    _check_bounded(expanded, set())
    top = {f["name"] for f in expanded["fields"]}
    # ALeRCE's pipeline writes the candid only inside the candidate record.
    missing = [n for n in ("objectId", "candidate") if n not in top]
    if missing:
        raise AlertError(Reason.MISSING_FIELD, f"writer schema has no field(s) {missing}")
    steps = []
    for f in expanded["fields"]:
        name = f["name"]
        if name not in _PROJECTION_SPEC:
            steps.append((name, None, None, compile_skipper(f["type"]), None))
            continue
        # Each field is parsed on its own: re-collapse repeated named types first.
        writer_type = _project(f["type"], None, set())
        reader_type = _project(f["type"], _PROJECTION_SPEC[name], set())
        try:
            writer = fastavro.parse_schema(writer_type)
            reader = None if reader_type == writer_type else fastavro.parse_schema(reader_type)
        except Exception as exc:
            raise AlertError(Reason.BAD_SCHEMA,
                             f"field {name!r} of the writer schema cannot be projected: "
                             f"{exc}") from exc
        spec = _PROJECTION_SPEC[name]
        fast = compile_record_reader(f["type"], frozenset(spec)) if spec else None
        steps.append((name, writer, reader, None, fast))
    return _Codec(steps=tuple(steps), program=native.compile_program(expanded, _PROJECTION_SPEC))


class _LRU:
    """A small least-recently-used cache (bounded so hostile schemas cannot grow it)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[Any, _Codec] = OrderedDict()

    def get(self, key: Any, build: Callable[[], _Codec]) -> _Codec:
        codec = self._data.get(key)
        if codec is None:
            codec = build()
            self._data[key] = codec
            if len(self._data) > self._size:
                self._data.popitem(last=False)
        else:
            self._data.move_to_end(key)
        return codec


# --------------------------------------------------------------------------- OCF reading

def _read_long(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read one zig-zag varint (Avro ``long``) at ``pos``; return (value, new position)."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise AlertError(Reason.TRUNCATED_CONTAINER, f"varint runs past the end at {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise AlertError(Reason.BAD_HEADER, f"varint longer than 10 bytes at {pos}")


def _decompress_block(codec: str, data: bytes, limit: int) -> bytes:
    """Decompress one container block with the codec named in its header."""
    try:
        if codec == "null":
            return data
        if codec == "deflate":
            inflater = zlib.decompressobj(-15)
            out = inflater.decompress(data, limit + 1)
            if len(out) > limit:
                raise AlertError(Reason.BLOCK_TOO_LARGE, f"deflate block inflates past {limit} B")
            return out
        if codec == "snappy":
            # Avro's snappy blocks end with the big-endian CRC32 of the uncompressed data.
            if len(data) < 4:
                raise AlertError(Reason.CORRUPT_BLOCK, "snappy block shorter than its CRC")
            size = cramjam.snappy.decompress_raw_len(data[:-4])
            if size > limit:
                raise AlertError(Reason.BLOCK_TOO_LARGE, f"snappy block inflates to {size} B")
            out = bytes(cramjam.snappy.decompress_raw(data[:-4]))
            if zlib.crc32(out) != int.from_bytes(data[-4:], "big"):
                raise AlertError(Reason.CORRUPT_BLOCK, "snappy block CRC32 mismatch")
            return out
        if codec == "zstandard":
            return _inflate_zstd(data, limit)
    except AlertError:
        raise
    except Exception as exc:  # zlib.error, cramjam.DecompressionError, ...
        raise AlertError(Reason.CORRUPT_BLOCK, f"{codec} block does not decompress: {exc}") from exc
    raise AlertError(Reason.UNSUPPORTED_CODEC, f"container codec {codec!r} is not supported")


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_UNDECLARED_RATIO = 64


def _zstd_content_size(data: bytes) -> int | None:
    """The content size a zstandard frame header declares (None when it declares none)."""
    if len(data) < 6 or data[:4] != _ZSTD_MAGIC:
        raise AlertError(Reason.CORRUPT_BLOCK, "zstandard block does not start with a frame")
    descriptor = data[4]
    fcs_flag, single_segment, dict_flag = descriptor >> 6, descriptor >> 5 & 1, descriptor & 3
    fcs_bytes = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if fcs_bytes == 0:
        return None
    start = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    field = data[start:start + fcs_bytes]
    if len(field) < fcs_bytes:
        raise AlertError(Reason.CORRUPT_BLOCK, "zstandard frame header is truncated")
    return int.from_bytes(field, "little") + (256 if fcs_bytes == 2 else 0)


def _inflate_zstd(data: bytes, limit: int) -> bytes:
    """Inflate a zstandard block into a buffer sized before any byte is produced.

    The buffer is the size the frame declares, or — for streams that declare none — at
    most 64 times the compressed size: a bomb fails to fit instead of filling memory.
    """
    declared = _zstd_content_size(data)
    capacity = declared if declared is not None else min(
        limit, max(1 << 20, _ZSTD_UNDECLARED_RATIO * len(data)))
    if capacity > limit:
        raise AlertError(Reason.BLOCK_TOO_LARGE,
                         f"zstandard block declares {capacity} B, limit {limit} B")
    buffer = bytearray(capacity)
    try:
        size = cramjam.zstd.decompress_into(data, buffer)
    except cramjam.DecompressionError as exc:
        if "whole buffer" in str(exc):
            raise AlertError(Reason.BLOCK_TOO_LARGE,
                             f"zstandard block inflates past {capacity} B") from exc
        raise
    return bytes(memoryview(buffer)[:size])


# --------------------------------------------------------------------------- decoder

class AlertDecoder:
    """Decode alert messages; reuse one instance (it caches parsed schemas).

    Parameters
    ----------
    registry : SchemaSource, optional
        Schema registry for Confluent-framed messages; without one such messages are
        rejected with reason ``unknown_schema_id``.
    limits : DecodeLimits, optional
        Size limits applied to every message.
    """

    def __init__(self, registry: SchemaSource | None = None,
                 limits: DecodeLimits | None = None) -> None:
        self.registry = registry
        self.limits = limits or DecodeLimits()
        self._cache = _LRU(self.limits.schema_cache_size)
        self._last_schema: tuple[bytes, _Codec] | None = None

    # ---- public API
    def decode(self, payload: bytes) -> list[Alert]:
        """Decode every alert in one message; any bad record fails the whole message.

        Parameters
        ----------
        payload : bytes
            A Kafka message value or the content of one ``.avro`` file.

        Returns
        -------
        list of Alert
            One alert for ZTF messages; several for broker-written containers.

        Raises
        ------
        AlertError
            The first problem found, with its reason.
        """
        alerts = []
        for item in self.iter_records(payload):
            if isinstance(item, AlertError):
                raise item
            alerts.append(item)
        return alerts

    def iter_records(self, payload: bytes) -> Iterator[Alert | AlertError]:
        """Yield each record of a message as an :class:`Alert` or the error it raised.

        Record-level errors (a missing cutout) are yielded and decoding continues with
        the next record; container-level errors (truncation, bad sync marker) are
        yielded last, after the records that could be read before them.
        """
        try:
            if len(payload) == 0:
                raise AlertError(Reason.EMPTY_MESSAGE, "message has no bytes")
            if len(payload) > self.limits.max_message_bytes:
                raise AlertError(Reason.BLOCK_TOO_LARGE,
                                 f"message of {len(payload)} B exceeds "
                                 f"{self.limits.max_message_bytes} B")
            if payload[:4] == OCF_MAGIC:
                yield from self._iter_container(payload)
            elif payload[0] == CONFLUENT_MAGIC and len(payload) >= 5:
                yield self._decode_confluent(payload)
            else:
                raise AlertError(Reason.UNKNOWN_FORMAT,
                                 "neither an Avro container (b'Obj\\x01') nor Confluent "
                                 f"wire format (0x00 + schema id); starts with {payload[:4]!r}")
        except AlertError as err:
            yield err

    # ---- encodings
    def _decode_confluent(self, payload: bytes) -> Alert:
        schema_id = int.from_bytes(payload[1:5], "big")
        if self.registry is None:
            raise AlertError(Reason.UNKNOWN_SCHEMA_ID,
                             f"schema id {schema_id}: no schema registry configured")
        registry = self.registry
        codec = self._cache.get(("id", schema_id),
                                lambda: _build_codec(registry.schema_for_id(schema_id)))
        try:
            record, pos = self._read_record(payload, io.BytesIO(payload), 5, codec)
        except _RecordError as err:
            raise err.error from None
        if pos != len(payload):
            raise AlertError(Reason.CORRUPT_RECORD,
                             f"{len(payload) - pos} trailing bytes after the record")
        return _to_alert(record)

    def _iter_container(self, buf: bytes) -> Iterator[Alert | AlertError]:
        end = len(buf)
        meta, pos = self._read_header(buf)
        schema_bytes = meta.get("avro.schema")
        if schema_bytes is None:
            raise AlertError(Reason.BAD_HEADER, "container header has no avro.schema")
        codec_name = meta.get("avro.codec", b"null").decode("ascii", "replace") or "null"
        if pos + 16 > end:
            raise AlertError(Reason.TRUNCATED_CONTAINER, "container ends inside the sync marker")
        sync = buf[pos:pos + 16]
        pos += 16
        # Consecutive messages mostly embed the same schema: comparing bytes with the
        # last one is several times cheaper than hashing them for the cache.
        last = self._last_schema
        if last is not None and last[0] == schema_bytes:
            codec = last[1]
        else:
            codec = self._cache.get(schema_bytes, lambda: _build_codec(schema_bytes))
            self._last_schema = (schema_bytes, codec)
        n_blocks = 0
        while pos < end:
            count, pos = _read_long(buf, pos, end)
            size, pos = _read_long(buf, pos, end)
            if count < 0 or size < 0 or count > self.limits.max_records_per_block:
                raise AlertError(Reason.CORRUPT_BLOCK,
                                 f"block {n_blocks} announces {count} records / {size} B")
            if pos + size > end:
                raise AlertError(Reason.TRUNCATED_CONTAINER,
                                 f"block {n_blocks} announces {size} B, {end - pos} B left")
            # Decode the whole block before yielding any of it: if its sync marker turns
            # out to be wrong, none of its records can be trusted.
            records = None
            if codec_name == "null" and codec.program is not None and native.ENABLED:
                # In place: no copy of the block (most of the message) for the native reader.
                records = self._read_block_native(buf, pos, pos + size, count, codec)
            if records is None:
                block = _decompress_block(codec_name, buf[pos:pos + size],
                                          self.limits.max_block_bytes)
                records = self._read_block(block, count, codec, n_blocks)
            pos += size
            marker = buf[pos:pos + 16]
            if marker != sync:
                if len(marker) < 16 and sync.startswith(marker):
                    raise AlertError(Reason.TRUNCATED_CONTAINER,
                                     f"container ends inside the sync marker of block {n_blocks}")
                raise AlertError(Reason.BAD_SYNC_MARKER,
                                 f"sync marker after block {n_blocks} does not match the header")
            pos += 16
            yield from records
            n_blocks += 1
        if n_blocks == 0:
            raise AlertError(Reason.TRUNCATED_CONTAINER, "container holds no data block")

    @staticmethod
    def _read_block_native(buf: bytes, start: int, end: int, count: int,
                           codec: _Codec) -> list[Alert | AlertError] | None:
        """The records of an uncompressed block ``buf[start:end]`` by the native reader.

        None when any record is malformed or the records do not fill the block exactly:
        :meth:`_read_block` then reads it and reports the problem.
        """
        dicts = codec.program.read_block(buf, start, end, count)
        if dicts is None:
            return None
        records: list[Alert | AlertError] = []
        for record in dicts:
            try:
                records.append(_to_alert(record))
            except AlertError as err:
                records.append(err)  # record-level problem, e.g. a missing cutout
        return records

    def _read_block(self, block: bytes, count: int, codec: _Codec,
                    index: int) -> list[Alert | AlertError]:
        stream = io.BytesIO(block)
        pos = 0
        records: list[Alert | AlertError] = []
        for _ in range(count):
            try:
                record, pos = self._read_record(block, stream, pos, codec)
            except _RecordError as err:
                # The position in the block is lost: the rest of the block is unreadable.
                if err.at_end:
                    raise AlertError(Reason.TRUNCATED_CONTAINER,
                                     f"a record of block {index} runs past the block's end "
                                     f"({err.error.detail})") from err.error
                raise err.error from None
            try:
                records.append(_to_alert(record))
            except AlertError as err:
                records.append(err)  # record-level problem, e.g. a missing cutout
        if pos != len(block):
            raise AlertError(Reason.CORRUPT_BLOCK,
                             f"block {index} has {len(block) - pos} bytes beyond "
                             f"its {count} records")
        return records

    def _read_header(self, buf: bytes) -> tuple[dict[str, bytes], int]:
        end = min(len(buf), 4 + self.limits.max_header_bytes)
        pos = 4
        meta: dict[str, bytes] = {}
        while True:
            count, pos = _read_long(buf, pos, end)
            if count == 0:
                return meta, pos
            if count < 0:  # negative count: block byte size follows
                count = -count
                _, pos = _read_long(buf, pos, end)
            for _ in range(count):
                key_len, pos = _read_long(buf, pos, end)
                if key_len < 0 or pos + key_len > end:
                    raise AlertError(Reason.TRUNCATED_CONTAINER if end == len(buf)
                                     else Reason.BAD_HEADER, "header key runs past its limit")
                key = buf[pos:pos + key_len].decode("utf-8", "replace")
                pos += key_len
                val_len, pos = _read_long(buf, pos, end)
                if val_len < 0 or pos + val_len > end:
                    raise AlertError(Reason.TRUNCATED_CONTAINER if end == len(buf)
                                     else Reason.BAD_HEADER, f"header value {key!r} runs past "
                                     "its limit")
                meta[key] = buf[pos:pos + val_len]
                pos += val_len

    def _read_record(self, buf: bytes, stream: io.BytesIO, pos: int,
                     codec: _Codec) -> tuple[dict[str, Any], int]:
        """Read one record at ``pos``: (projected fields, next position).

        Malformed bytes raise :class:`_RecordError`.  The native reader, when built,
        reads well-formed records; anything else is left to the steps below, which name
        the problem.
        """
        if codec.program is not None and native.ENABLED:
            done = codec.program.read(buf, pos)
            if done is not None:
                return done
        end = len(buf)
        record: dict[str, Any] = {}
        try:
            for name, writer, reader, skip, fast in codec.steps:
                if skip is not None:
                    pos = skip(buf, pos, end)
                    continue
                if fast is not None:
                    found, value, pos = fast(buf, pos, end)
                    if found:
                        record[name] = value
                        continue
                stream.seek(pos)
                record[name] = fastavro.schemaless_reader(stream, writer, reader)
                pos = stream.tell()
        except AlertError as err:
            raise _RecordError(err, at_end=pos >= end) from None
        except Exception as exc:  # EOFError, UnicodeDecodeError, IndexError, ValueError...
            err = AlertError(Reason.CORRUPT_RECORD,
                             f"record does not decode: {type(exc).__name__}: {exc}")
            raise _RecordError(err, at_end=stream.tell() >= end) from None
        return record, pos


class _RecordError(Exception):
    """A record's bytes are malformed (carries the AlertError and where it happened)."""

    def __init__(self, error: AlertError, at_end: bool) -> None:
        super().__init__(error.detail)
        self.error = error
        self.at_end = at_end


def _to_alert(record: Mapping[str, Any]) -> Alert:
    """Check a projected record and build the :class:`Alert` (typed errors on gaps)."""
    object_id = record.get("objectId")
    candid = record.get("candid")
    candidate = record.get("candidate")
    if not isinstance(object_id, str) or not object_id:
        raise AlertError(Reason.MISSING_FIELD, "objectId is missing or empty")
    if not isinstance(candidate, Mapping):
        raise AlertError(Reason.MISSING_FIELD, f"{object_id}/{candid}: candidate is missing")
    if not isinstance(candid, int):
        candid = candidate.get("candid")  # records without a top-level candid (ALeRCE)
    if not isinstance(candid, int):
        raise AlertError(Reason.MISSING_FIELD, f"{object_id}: candid is missing")
    jd = candidate.get("jd")
    if not isinstance(jd, float):
        raise AlertError(Reason.MISSING_FIELD, f"{object_id}/{candid}: candidate.jd is missing")
    stamps = []
    for name in CUTOUT_FIELDS:
        cutout = record.get(name)
        data = cutout.get("stampData") if isinstance(cutout, Mapping) else None
        if not data:
            raise AlertError(Reason.MISSING_CUTOUT, f"{object_id}/{candid}: {name} is missing")
        stamps.append(data)
    return Alert(
        object_id=object_id,
        candid=candid,
        jd=jd,
        science=stamps[0],
        template=stamps[1],
        difference=stamps[2],
        # map() over the bound method: half the cost of a dict comprehension here.
        candidate=MappingProxyType(dict(zip(CANDIDATE_FIELDS, map(candidate.get, CANDIDATE_FIELDS),
                                            strict=True))),
        schema_version=record.get("schemavsn"),
    )
