"""The compiled decoding path (``stamp_native``) equals the pure-Python one, bit for bit.

Every comparison runs the same bytes through the worker's per-message path twice — with
:data:`worker.decode.native.ENABLED` off (pure Python: fastavro/regex skipping, ISA-L, numpy) and
on — and requires identical outcomes: the same model image and features (compared as
bytes), or the same refusal (reason and message).  The Python path runs first, so the
FITS headers it parses are known to the native path, which then really takes over.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.decode.test_fuzz import (  # noqa: F401  (real_sources, real_regions: fixtures)
    CONFIG,
    FUZZ,
    LIMITS,
    STAMP_EDITS,
    mutate,
    real_regions,
    real_sources,
    synthetic,
)
from worker.decode import native
from worker.decode.alerts import Alert, AlertDecoder
from worker.decode.errors import AlertError
from worker.decode.packets import (
    SYNTHETIC_SCHEMA,
    build_record,
    default_candidate,
    encode_container,
)
from worker.prepare.features import FEATURE_NAMES, metadata_features
from worker.prepare.stamps import (
    _HEADER_CACHE,
    ModelInput,
    encode_fits_gz,
    native_image,
    prepare_alert,
)

needs_native = pytest.mark.skipif(
    not native.available(),
    reason="stamp_native is not built (pip install ./native needs cargo): only the "
           "pure-Python decoding path is installed")


@contextmanager
def native_enabled(flag: bool) -> Iterator[None]:
    saved = native.ENABLED
    native.ENABLED = flag
    try:
        yield
    finally:
        native.ENABLED = saved


def signature(outcome: ModelInput | AlertError | Alert) -> tuple[Any, ...]:
    """What must be equal between the paths (arrays as bytes: NaN-safe, sign-of-zero exact)."""
    if isinstance(outcome, ModelInput):
        assert outcome.image.dtype == np.float32 and outcome.image.flags.writeable
        return ("input", outcome.image.shape, outcome.image.tobytes(),
                outcome.features.tobytes(), outcome.padded)
    if isinstance(outcome, AlertError):
        return ("error", outcome.reason, outcome.detail)
    return ("alert", repr(outcome))


def pipeline(payload: bytes, decoder: AlertDecoder) -> list[tuple[Any, ...]]:
    """Decode and prepare every record; each record's signatures (alert, then input)."""
    out = []
    for item in decoder.iter_records(payload):
        out.append(signature(item))
        if isinstance(item, Alert):
            try:
                out.append(signature(prepare_alert(item, CONFIG)))
            except AlertError as err:
                out.append(signature(err))
    return out


def both_paths(payload: bytes) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with native_enabled(False):
        python = pipeline(payload, AlertDecoder(limits=LIMITS))
    with native_enabled(True):
        compiled = pipeline(payload, AlertDecoder(limits=LIMITS))
    return python, compiled


def one_alert(payload: bytes) -> Alert:
    (alert,) = AlertDecoder().decode(payload)
    return alert


def prepared_both(alert: Alert) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    results = []
    for flag in (False, True):
        with native_enabled(flag):
            try:
                results.append(signature(prepare_alert(alert, CONFIG)))
            except AlertError as err:
                results.append(signature(err))
    return results[0], results[1]


# --------------------------------------------------------------------------- real alerts

@pytest.mark.shared_data
@needs_native
def test_every_real_alert_decodes_and_prepares_identically(alert_files: list[Path]) -> None:
    python_decoder, native_decoder = AlertDecoder(), AlertDecoder()
    n_alerts = n_native_images = 0
    for path in alert_files:
        payload = path.read_bytes()
        with native_enabled(False):
            python = pipeline(payload, python_decoder)
        with native_enabled(True):
            compiled = pipeline(payload, native_decoder)
            for item in native_decoder.iter_records(payload):
                if isinstance(item, Alert):
                    n_alerts += 1
                    n_native_images += native_image(item, CONFIG) is not None
        assert compiled == python, path.name
    # The native path really ran: every real writer schema compiles to a native reader,
    # and nearly every alert's image comes from the native stamp path (the rest: stamps
    # cut by a CCD edge, corrupt cutouts).
    programs = [codec.program for codec in native_decoder._cache._data.values()]
    assert programs and all(p is not None for p in programs)
    assert n_native_images >= 0.9 * n_alerts > 0, (n_native_images, n_alerts)


# --------------------------------------------------------------------------- hostile stamps

def _raw(blob: bytes) -> bytes:
    return gzip.decompress(blob)


def _gzip_with_flags(raw: bytes, flags: int, extra: bytes = b"") -> bytes:
    """A gzip member with header flags set (FHCRC: 0x02, FEXTRA 0x04, FNAME 0x08...)."""
    body = zlib.compressobj(1, zlib.DEFLATED, -15)
    deflated = body.compress(raw) + body.flush()
    header = b"\x1f\x8b\x08" + bytes([flags]) + b"\0\0\0\0\0\xff" + extra
    return header + deflated + struct.pack("<II", zlib.crc32(raw), len(raw) & 0xFFFFFFFF)


def _header_crc(raw: bytes, good: bool) -> bytes:
    head = b"\x1f\x8b\x08\x02\0\0\0\0\0\xff"
    crc = zlib.crc32(head) & 0xFFFF
    return _gzip_with_flags(raw, 0x02, struct.pack("<H", crc if good else crc ^ 0x5555))


def _stamp(image: np.ndarray, **kwargs: Any) -> bytes:
    return encode_fits_gz(np.asarray(image, np.float64), **kwargs)


_RNG = np.random.default_rng(7)
_NOISE = _RNG.normal(100, 5, (63, 63))
# Non-negative pixels whose minimum is zero with both signs (found by fuzzing: numpy's
# min picks either, and the sign shows in the normalized image).
_SIGNED_ZEROS = np.where(_RNG.random((63, 63)) < 0.2, -0.0,
                         np.where(_RNG.random((63, 63)) < 0.2, 0.0, _NOISE))

# name → edit of the science cutout's stampData
HOSTILE: dict[str, Callable[[bytes], bytes]] = {
    **{name: edit for name, (edit, _) in STAMP_EDITS.items()},
    "trailing_garbage": lambda blob: blob + b"\x00garbage",
    "second_gzip_member": lambda blob: blob + blob,
    "isize_lies_small": lambda blob: blob[:-4] + struct.pack("<I", 100),
    "isize_lies_large": lambda blob: blob[:-4] + struct.pack("<I", 3_000_000),
    "isize_over_limit": lambda blob: blob[:-4] + struct.pack("<I", 0xFFFFFFFF),
    "header_crc_good": lambda blob: _header_crc(_raw(blob), good=True),
    "header_crc_bad": lambda blob: _header_crc(_raw(blob), good=False),
    "reserved_flag": lambda blob: _gzip_with_flags(_raw(blob), 0x20),
    "fname_flag": lambda blob: _gzip_with_flags(_raw(blob), 0x08, b"stamp.fits\0"),
    "fextra_flag": lambda blob: _gzip_with_flags(_raw(blob), 0x04, b"\x04\x00abcd"),
    "plain_fits": _raw,
    "non_square_51x63": lambda blob: _stamp(_NOISE[:51]),
    "non_square_63x44": lambda blob: _stamp(_NOISE[:, 19:]),
    "too_large_65": lambda blob: _stamp(_RNG.normal(0, 1, (65, 65))),
    "all_nan": lambda blob: _stamp(np.full((63, 63), np.nan)),
    "nan_crop_only": lambda blob: _stamp(np.where(np.abs(np.arange(63) - 31)[:, None] <= 10,
                                                  np.nan, _NOISE)),
    "some_nan_and_inf": lambda blob: _stamp(np.where(_RNG.random((63, 63)) < 0.1,
                                                     np.inf, _NOISE)),
    "constant": lambda blob: _stamp(np.full((63, 63), 5.0)),
    "extreme_range": lambda blob: _stamp(np.where(_RNG.random((63, 63)) < 0.5, 3e38, -3e38)),
    "bitpix_16_scaled": lambda blob: _stamp(np.round(_NOISE), bitpix=16, bscale=0.5,
                                            bzero=10.0),
    "bitpix_minus64": lambda blob: _stamp(_NOISE, bitpix=-64),
    "bitpix_minus32_scaled": lambda blob: _stamp(_NOISE, bitpix=-32, bscale=2.0, bzero=1.0),
    "extra_header_cards": lambda blob: _stamp(_NOISE, extra_cards={"OBJECT": "'x'"}),
    "negative_zero": lambda blob: _stamp(np.where(_NOISE > 100, -0.0, _NOISE)),
    "both_zeros_as_minimum": lambda blob: _stamp(_SIGNED_ZEROS),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("channel", ["science", "difference"])
@needs_native
def test_hostile_stamp_gives_the_same_outcome(name: str, channel: str) -> None:
    alert = one_alert(synthetic(3)[0])
    alert = dataclasses.replace(alert, **{channel: HOSTILE[name](getattr(alert, channel))})
    python, compiled = prepared_both(alert)
    assert compiled == python
    # Once more, now that the Python path has seen (and cached) every header.
    assert prepared_both(alert) == (python, python)


@needs_native
def test_the_native_stamp_path_takes_the_plain_case() -> None:
    alert = one_alert(synthetic(4)[0])
    with native_enabled(False):
        prepare_alert(alert, CONFIG)  # the Python path parses (and caches) the headers
    with native_enabled(True):
        image = native_image(alert, CONFIG)
    assert image is not None and image.shape == (21, 21, 3)


@needs_native
def test_a_negative_zero_pixel_is_left_to_the_python_path() -> None:
    alert = one_alert(synthetic(6)[0])
    alert = dataclasses.replace(alert, template=_stamp(_SIGNED_ZEROS))
    with native_enabled(False):
        prepare_alert(alert, CONFIG)  # caches the headers
    with native_enabled(True):
        assert native_image(alert, CONFIG) is None
        assert native_image(dataclasses.replace(alert, template=_stamp(np.abs(_SIGNED_ZEROS))),
                            CONFIG) is not None


@needs_native
def test_an_unseen_fits_header_is_left_to_the_python_path() -> None:
    blob = _stamp(_NOISE, extra_cards={"UNSEEN": f"'{os.getpid()}'"})
    alert = dataclasses.replace(one_alert(synthetic(5)[0]), science=blob)
    _HEADER_CACHE.pop(_raw(blob)[:2880], None)
    with native_enabled(True):
        assert native_image(alert, CONFIG) is None
        prepare_alert(alert, CONFIG)  # Python path: parses and caches the header
        assert native_image(alert, CONFIG) is not None


@needs_native
def test_stamp_native_env_switch_turns_the_native_path_off() -> None:
    code = "from worker.decode import native; print(native.available(), native.ENABLED)"
    for value, expected in (("0", "True False"), ("1", "True True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env={**os.environ, "STAMP_NATIVE": value})
        assert out.stdout.split() == expected.split()


# --------------------------------------------------------------------------- Avro types

def _rich_schema(logical_candidate_field: bool = False) -> dict[str, Any]:
    """The synthetic alert schema plus skipped fields of every Avro type."""
    schema = dict(SYNTHETIC_SCHEMA)
    extra = [
        {"name": "m", "type": {"type": "map", "values": ["null", "double", "string"]}},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}},
        {"name": "f", "type": {"type": "fixed", "name": "F", "size": 5}},
        {"name": "a", "type": {"type": "array", "items": {
            "type": "record", "name": "R", "fields": [
                {"name": "x", "type": "long"}, {"name": "s", "type": "string"},
                {"name": "b", "type": "boolean"}, {"name": "fl", "type": "float"},
                {"name": "by", "type": ["null", "bytes"]}]}}},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "long_text", "type": "string"},
    ]
    schema["fields"] = list(schema["fields"]) + extra
    if logical_candidate_field:
        fields = []
        for f in schema["fields"]:
            if f["name"] == "candidate":
                cand = dict(f["type"])
                cand["fields"] = [
                    {"name": "jd", "type": {"type": "double"}} if c["name"] == "jd" else
                    ({"name": "ndethist", "type": {"type": "int", "logicalType": "date"}}
                     if c["name"] == "ndethist" else c)
                    for c in cand["fields"]]
                f = {**f, "type": cand}
            fields.append(f)
        schema["fields"] = fields
    return schema


def _rich_payload(schema: dict[str, Any], n: int) -> bytes:
    import datetime

    records = []
    for i in range(n):
        stamps = [_RNG.normal(100, 5, (63, 63)).astype(np.float32) for _ in range(3)]
        record = build_record(f"ZTF26aaaa{i:03d}", 10**18 + i,
                              default_candidate(10**18 + i, 2460000.5 + i,
                                                isdiffpos="f" * (i * 70)), stamps)
        record.update(
            m={"k" * (i * 50): 1.5, "n": None, "s": "é" * i},
            e="B", f=b"12345",
            a=[{"x": -(2**40) * i, "s": "x" * (i * 90), "b": i % 2 == 0, "fl": 0.1,
                "by": b"\xff" * i}] * i,
            ts=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
            long_text="z" * (300 * i))
        records.append(record)
    out = io.BytesIO()
    fastavro.writer(out, fastavro.parse_schema(schema), records, codec="null",
                    sync_interval=10**9)
    return out.getvalue()


@needs_native
def test_every_avro_type_is_skipped_or_read_like_fastavro() -> None:
    payload = _rich_payload(_rich_schema(), 4)
    python, compiled = both_paths(payload)
    assert compiled == python and len(python) == 8
    decoder = AlertDecoder()
    decoder.decode(payload)
    assert all(c.program is not None for c in decoder._cache._data.values())


@needs_native
def test_a_logical_type_in_a_read_field_leaves_the_record_to_fastavro() -> None:
    payload = _rich_payload(_rich_schema(logical_candidate_field=True), 2)
    python, compiled = both_paths(payload)
    assert compiled == python
    decoder = AlertDecoder()
    decoder.decode(payload)
    assert all(c.program is None for c in decoder._cache._data.values())


@needs_native
def test_malformed_programs_are_refused() -> None:
    ext = native._ext
    for code in ([], [10], [10, 1, 5, 5], [99], [5], [10, 1, 3, 5], [9, 2, 0]):
        with pytest.raises(ValueError):
            ext.Program(code, [])


# --------------------------------------------------------------------------- fuzzing

@settings(FUZZ, max_examples=150)
@given(seed=st.integers(0, 15), data=st.data())
@needs_native
def test_mutated_synthetic_alerts_same_outcome(seed: int, data: st.DataObject) -> None:
    payload, regions = synthetic(seed)
    python, compiled = both_paths(mutate(data, payload, regions))
    assert compiled == python


@settings(FUZZ, max_examples=100)
@given(data=st.data())
@needs_native
def test_mutated_real_alerts_same_outcome(real_sources: dict[str, bytes],  # noqa: F811
                                          real_regions: dict[str, Any],  # noqa: F811
                                          data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(real_sources)), label="source")
    payload = mutate(data, real_sources[name], real_regions[name])
    python, compiled = both_paths(payload)
    assert compiled == python


@settings(FUZZ, max_examples=150)
@given(seed=st.integers(0, 15), channel=st.sampled_from(["science", "template", "difference"]),
       data=st.data())
@needs_native
def test_mutated_cutout_bytes_same_outcome(seed: int, channel: str, data: st.DataObject) -> None:
    alert = one_alert(synthetic(seed)[0])
    blob = bytearray(getattr(alert, channel))
    for _ in range(data.draw(st.integers(1, 3), label="n")):
        pos = data.draw(st.integers(0, len(blob) - 1), label="pos")
        blob[pos] ^= data.draw(st.integers(1, 255), label="mask")
    python, compiled = prepared_both(dataclasses.replace(alert, **{channel: bytes(blob)}))
    assert compiled == python


@needs_native
def test_encode_container_round_trip_uses_the_native_reader() -> None:
    stamps = [np.ones((63, 63), np.float32)] * 3
    record = build_record("ZTF26aaaaaab", 5, default_candidate(5, 2460001.5), stamps)
    python, compiled = both_paths(encode_container([record] * 3))
    assert compiled == python and len(python) == 6


# --------------------------------------------------------------------------- features

def features_both(candidate: dict[str, Any]) -> tuple[bytes, bytes]:
    out = []
    for flag in (False, True):
        with native_enabled(flag):
            features = metadata_features(candidate)
            assert features.dtype == np.float32 and features.shape == (len(FEATURE_NAMES),)
            out.append(features.tobytes())
    return out[0], out[1]


@pytest.mark.shared_data
@needs_native
def test_real_candidates_give_identical_features(alert_files: list[Path]) -> None:
    decoder = AlertDecoder()
    n = 0
    for path in alert_files:
        for item in decoder.iter_records(path.read_bytes()):
            if isinstance(item, Alert):
                python, compiled = features_both(item.candidate)
                assert compiled == python, path.name
                n += 1
    assert n > 0


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-999, -999.0, 3.5e38, -3.4028234663852886e38, 0.0, -0.0, 1e-310]),
    st.text(max_size=3), st.lists(st.integers(), max_size=2))
_ISDIFFPOS = st.one_of(
    _VALUES, st.sampled_from(["t", "f", "1", "0", "TRUE", " false\n", "\x1ct\x1f", "\u2003t",
                              "\u0130", "T\u00a0", "tt", ""]),
    st.text(alphabet=" \t\x1ctfTFrue01\u00a0\u2028", max_size=6))


@settings(deadline=None, max_examples=400)
@given(values=st.fixed_dictionaries({}, optional={name: _VALUES for name in FEATURE_NAMES}),
       ra=st.one_of(st.floats(-720, 720), _VALUES), dec=st.one_of(st.floats(-90, 90), _VALUES),
       isdiffpos=_ISDIFFPOS)
@needs_native
def test_generated_candidates_give_identical_features(values: dict[str, Any], ra: Any, dec: Any,
                                                       isdiffpos: Any) -> None:
    candidate = {**values, "ra": ra, "dec": dec, "isdiffpos": isdiffpos}
    python, compiled = features_both(candidate)
    assert compiled == python


def test_without_the_extension_the_python_path_runs_alone() -> None:
    # A fresh interpreter where importing stamp_native fails, as on a machine without cargo.
    code = """
import sys
sys.modules["stamp_native"] = None
from worker.decode import native
from worker.decode.alerts import AlertDecoder
from worker.decode.packets import synthetic_alert
from worker.prepare.stamps import prepare_alert
assert not native.available() and not native.ENABLED
(alert,) = AlertDecoder().decode(synthetic_alert(1))
assert all(c.program is None for c in AlertDecoder()._cache._data.values())
print(prepare_alert(alert).image.shape)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "STAMP_NATIVE": "1"})
    assert out.stdout.split() == ["(21,", "21,", "3)"]
