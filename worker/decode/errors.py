"""The one error type for bad input, with a machine-readable reason.

A bad alert is data, not a crash: every decoding or preprocessing failure raises
:class:`AlertError` whose :attr:`AlertError.reason` is a stable, lower-case string the
worker puts in the dead-letter record's ``reason`` header and in the
``stamp_worker_dead_lettered_total{reason=...}`` counter.  Infrastructure failures (a
schema registry that does not answer) are *not* ``AlertError``: they must stop the
worker without committing, see :class:`SchemaRegistryUnavailable`.
"""

from __future__ import annotations

import enum


class Reason(str, enum.Enum):
    """Why an input could not become a model input (values are stable identifiers)."""

    # Message / container level
    EMPTY_MESSAGE = "empty_message"
    UNKNOWN_FORMAT = "unknown_format"
    TRUNCATED_CONTAINER = "truncated_container"
    BAD_SYNC_MARKER = "bad_sync_marker"
    BAD_HEADER = "bad_container_header"
    UNSUPPORTED_CODEC = "unsupported_codec"
    CORRUPT_BLOCK = "corrupt_block"
    BLOCK_TOO_LARGE = "block_too_large"
    BAD_SCHEMA = "bad_schema"
    UNKNOWN_SCHEMA_ID = "unknown_schema_id"
    CORRUPT_RECORD = "corrupt_record"
    MISSING_FIELD = "missing_field"
    # Stamp level
    MISSING_CUTOUT = "missing_cutout"
    CORRUPT_GZIP = "corrupt_gzip"
    DECOMPRESSED_TOO_LARGE = "decompressed_too_large"
    FITS_HEADER_INVALID = "fits_header_invalid"
    FITS_TRUNCATED = "fits_truncated"
    STAMP_SHAPE = "stamp_shape"
    ALL_NAN = "all_nan"


class AlertError(ValueError):
    """An alert (or one of its stamps) cannot be turned into a model input.

    Parameters
    ----------
    reason : Reason
        Machine-readable cause, used as the dead-letter ``reason`` header.
    detail : str
        Human-readable explanation (what was found, where).

    Attributes
    ----------
    reason : Reason
    detail : str
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class SchemaRegistryUnavailable(RuntimeError):
    """The schema registry could not be reached or answered with a server error.

    Not a property of the alert: the worker must fail fast and commit nothing, so the
    message is processed again once the registry is back.
    """
