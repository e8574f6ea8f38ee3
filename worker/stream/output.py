"""Label records and dead-letter records: what the worker writes to Kafka.

Label records follow ``schemas/label.avsc`` and are written as single-record Avro object
containers (schema embedded, like ZTF's alerts), so any Avro reader decodes them without
a registry.  The container header is built once; each record costs one fastavro
``schemaless_writer`` call.

Dead-letter records keep the original message bytes as their value (so they can be
replayed once the cause is fixed) and say why in headers: ``stamp.reason`` (the
machine-readable :class:`~worker.decode.errors.Reason`), ``stamp.detail``, and the source
``stamp.source.topic`` / ``.partition`` / ``.offset`` / ``.timestamp_ms``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import fastavro

from schemas import load_schema
from worker import __version__
from worker.decode.alerts import Alert
from worker.decode.errors import AlertError
from worker.model.artifact import CLASS_NAMES

LABEL_SCHEMA = load_schema("label.avsc")
_PARSED = fastavro.parse_schema(LABEL_SCHEMA)


def _container_header(schema: dict, sync: bytes) -> bytes:
    """An Avro object container header: magic, metadata map (schema, codec), sync marker."""
    out = io.BytesIO()
    out.write(b"Obj\x01")
    meta = {"avro.schema": json.dumps(schema, separators=(",", ":")).encode(),
            "avro.codec": b"null"}
    fastavro.schemaless_writer(out, {"type": "map", "values": "bytes"}, meta)
    out.write(sync)
    return out.getvalue()


_SYNC = os.urandom(16)
_HEADER = _container_header(LABEL_SCHEMA, _SYNC)


def _zigzag(value: int) -> bytes:
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from.

    Attributes
    ----------
    topic : str
    partition : int
    offset : int
    timestamp_ms : int
        Kafka message timestamp [ms since Unix epoch] (-1 when unknown).
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int


def label_record(alert: Alert, probabilities: Sequence[float], method: str, model_name: str,
                 model_version: str, preprocessing_version: str, flags: Sequence[str],
                 consumed_at_ms: int, published_at_ms: int, source: Source) -> dict:
    """The label record of one alert as a dict of ``schemas/label.avsc``.

    Parameters
    ----------
    alert : Alert
        The classified alert.
    probabilities : sequence of float
        Five probabilities in :data:`CLASS_NAMES` order.
    method : {"cnn", "asteroid_policy"}
        What produced the probabilities.
    model_name, model_version, preprocessing_version : str
        Provenance.
    flags : sequence of str
        Caveats (``stamp_padded``...).
    consumed_at_ms, published_at_ms : int
        Timestamps [ms since Unix epoch].
    source : Source
        The input message.
    """
    probs = [float(p) for p in probabilities]
    top = max(range(len(probs)), key=probs.__getitem__)  # the first maximum, as argmax
    return {
        "objectId": alert.object_id, "candid": alert.candid, "jd": alert.jd,
        "probabilities": dict(zip(CLASS_NAMES, probs, strict=True)),
        "top_class": CLASS_NAMES[top], "top_probability": probs[top],
        "method": method, "model_name": model_name, "model_version": model_version,
        "preprocessing_version": preprocessing_version, "flags": list(flags),
        "consumed_at": int(consumed_at_ms), "published_at": int(published_at_ms),
        "source_topic": source.topic, "source_partition": source.partition,
        "source_offset": source.offset,
    }


def encode_label(record: dict) -> bytes:
    """Serialize one label record as a single-record Avro object container."""
    body = io.BytesIO()
    fastavro.schemaless_writer(body, _PARSED, record)
    data = body.getvalue()
    return b"".join((_HEADER, _zigzag(1), _zigzag(len(data)), data, _SYNC))


def decode_labels(payload: bytes) -> list[dict]:
    """Read label records back (for consumers, tests and tools)."""
    return list(fastavro.reader(io.BytesIO(payload)))


def dead_letter_headers(error: AlertError, source: Source,
                        record_index: int | None = None) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead-letter record: the reason and where the message came from."""
    headers = [
        ("stamp.reason", error.reason.value.encode()),
        ("stamp.detail", error.detail.encode("utf-8", "replace")[:4096]),
        ("stamp.source.topic", source.topic.encode()),
        ("stamp.source.partition", str(source.partition).encode()),
        ("stamp.source.offset", str(source.offset).encode()),
        ("stamp.source.timestamp_ms", str(source.timestamp_ms).encode()),
        ("stamp.worker.version", __version__.encode()),
    ]
    if record_index is not None:
        headers.append(("stamp.record_index", str(record_index).encode()))
    return headers
