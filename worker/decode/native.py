"""The compiled fast path of decoding (``stamp_native``, built from ``native/``), when installed.

Two steps of the worker's per-alert decoding have a Rust twin (PyO3, ``native/src/lib.rs``):

* reading one Avro record of a writer schema (the fields of
  ``schemas/alert_projection.avsc`` become Python values, the rest is skipped), twin of
  :meth:`worker.decode.alerts.AlertDecoder._read_record`;
* the three cutouts → the (crop, crop, 3) float32 model image (gunzip with libdeflate,
  FITS data, centre crop, non-finite → 0, min-max normalization), twin of
  :func:`worker.prepare.stamps.decode_stamps` + :func:`worker.prepare.stamps.preprocess_batch`.

The native functions only ever accept: on anything corrupt or unusual (a FITS header not
yet parsed by :func:`worker.prepare.stamps.parse_fits`, BITPIX other than -32 or a scaled one, a
stamp cut by a CCD edge, an all-NaN crop, a gzip member with a header CRC...) they return
``None`` and the caller runs the pure-Python code, which gives the same result or refuses
with its own reason.  Results are bit-identical (tests/decode/test_native.py).

Without the extension (``pip install ./native`` not run, no Rust toolchain) or with
``STAMP_NATIVE=0`` in the environment, the pure-Python path runs alone.
"""

from __future__ import annotations

import os
from typing import Any

try:
    import stamp_native as _ext
except ImportError:  # not built: the pure-Python path does everything
    _ext = None

#: Whether the compiled path is used (tests switch it off to exercise the Python path).
ENABLED: bool = _ext is not None and os.environ.get("STAMP_NATIVE", "1") != "0"

_PRIMITIVES = {"null": 0, "boolean": 1, "int": 2, "long": 2, "float": 3, "double": 4,
               "string": 5, "bytes": 6}
_MAX_DEPTH = 32


def available() -> bool:
    """Whether the extension is installed (whatever :data:`ENABLED` says)."""
    return _ext is not None


def _encode(schema: Any, spec: dict[str, Any] | None, reading: bool, code: list[int],
            names: list[str], depth: int) -> bool:
    """Append the program of one expanded type to ``code``; False when not supported.

    ``reading``: the value becomes a Python value (only primitives, unions of them and
    records are read natively; enums, fixed, arrays, maps and logical types are left
    to fastavro by returning False).  ``spec`` restricts a read record to some fields.
    """
    if depth > _MAX_DEPTH:
        return False
    if isinstance(schema, str):
        if schema not in _PRIMITIVES:
            return False  # a named reference (recursive type)
        code.append(_PRIMITIVES[schema])
        return True
    if isinstance(schema, list):
        code += [9, len(schema)]
        return all(_encode(branch, spec, reading, code, names, depth + 1) for branch in schema)
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    if reading and "logicalType" in schema:
        return False  # fastavro converts these (datetime, Decimal, UUID...)
    if kind in ("record", "error"):
        code += [10, len(schema["fields"])]
        for f in schema["fields"]:
            wanted = reading and (spec is None or f["name"] in spec)
            if wanted:
                names.append(f["name"])
                code.append(len(names) - 1)
            else:
                code.append(-1)
            sub = spec.get(f["name"]) if (wanted and spec is not None) else None
            if not _encode(f["type"], sub, wanted, code, names, depth + 1):
                return False
        return True
    if reading and kind in ("enum", "fixed", "array", "map"):
        return False
    if kind == "enum":
        code.append(8)
        return True
    if kind == "fixed":
        code += [7, int(schema["size"])]
        return True
    if kind in ("array", "map"):
        code.append(11 if kind == "array" else 12)
        inner = schema["items"] if kind == "array" else schema["values"]
        return _encode(inner, None, False, code, names, depth + 1)
    return _encode(kind, spec, reading, code, names, depth + 1)


def compile_program(expanded: dict[str, Any], spec: dict[str, Any]) -> Any | None:
    """Compile a writer schema for :meth:`stamp_native.Program.read`.

    Parameters
    ----------
    expanded : dict
        The writer schema, a record with named types inlined (fastavro
        ``parse_schema(..., expand=True)``), already checked by the caller.
    spec : dict
        Projection: field name → sub-spec (dict) or None (read whole).

    Returns
    -------
    stamp_native.Program or None
        None without the extension or when a field read by the classifier has a type the
        native reader leaves to fastavro.
    """
    if _ext is None:
        return None
    code: list[int] = []
    names: list[str] = []
    if not _encode(expanded, spec, True, code, names, 0):
        return None
    return _ext.Program(code, names)


def prepare_cutouts(science: bytes, template: bytes, difference: bytes,
                    headers: dict[bytes, Any], max_decompressed: int, max_axis: int,
                    stamp_size: int, crop: int) -> bytearray | None:
    """The native cutouts → model image step (see ``native/src/lib.rs``), or None.

    Parameters
    ----------
    science, template, difference : bytes
        The ``stampData`` of the three cutouts (gzipped FITS).
    headers : dict
        :data:`worker.prepare.stamps._HEADER_CACHE` (first FITS block → parsed header).
    max_decompressed : int
        Largest gunzipped cutout [bytes].
    max_axis : int
        Largest NAXIS1/NAXIS2 [pixels].
    stamp_size, crop : int
        Full stamp side and crop side [pixels].

    Returns
    -------
    bytearray or None
        ``crop × crop × 3`` native-endian float32 values (row, column, channel), or None
        when the pure-Python path must handle the alert.
    """
    if _ext is None:
        return None
    return _ext.prepare_cutouts(science, template, difference, headers, max_decompressed,
                                max_axis, stamp_size, crop)


def metadata_features(candidate: Any, names: tuple[str, ...], ecliptic: Any, galactic: Any,
                      float32_max: float) -> bytearray | None:
    """The native twin of :func:`worker.prepare.features.metadata_features`, or None.

    Parameters
    ----------
    candidate : Mapping
        The alert's candidate fields.
    names : tuple of str
        :data:`worker.prepare.features.FEATURE_NAMES`.
    ecliptic, galactic : 3×3 nested tuples of float
        Rotation matrices from equatorial coordinates.
    float32_max : float
        Largest float32 value; larger magnitudes count as missing.

    Returns
    -------
    bytearray or None
        ``len(names)`` native-endian float32 values, or None when the Python code must
        compute them (e.g. a non-ASCII ``isdiffpos``).
    """
    if _ext is None:
        return None
    return _ext.metadata_features(candidate, names, ecliptic, galactic, float32_max)
