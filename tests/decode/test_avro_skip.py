"""worker.decode.avro_skip: skipping lands exactly where fastavro's decoding ends."""

from __future__ import annotations

import io

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.decode.avro_skip import compile_record_reader, compile_skipper
from worker.decode.errors import AlertError, Reason

SCHEMA = {
    "type": "record", "name": "everything", "fields": [
        {"name": "n", "type": "null"},
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "s", "type": "string"},
        {"name": "y", "type": "bytes"},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}},
        {"name": "x", "type": {"type": "fixed", "name": "F", "size": 3}},
        {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "u1", "type": ["null", "float"]},
        {"name": "u2", "type": ["null", "string", "long"]},
        {"name": "arr", "type": {"type": "array", "items": {
            "type": "record", "name": "inner", "fields": [
                {"name": "a", "type": ["null", "double"]},
                {"name": "b", "type": ["null", "string"]}]}}},
        {"name": "m", "type": {"type": "map", "values": ["null", "int"]}},
        {"name": "opt", "type": ["null", {"type": "array", "items": "inner"}]},
    ]}
PARSED = fastavro.parse_schema(SCHEMA)
SKIP = compile_skipper(fastavro.parse_schema(SCHEMA, expand=True))

i32 = st.integers(-(2**31), 2**31 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
inner = st.fixed_dictionaries({"a": st.none() | st.floats(allow_nan=False),
                               "b": st.none() | st.text(max_size=40)})
records = st.fixed_dictionaries({
    "n": st.none(), "b": st.booleans(), "i": i32, "l": i64,
    "f": st.floats(width=32, allow_nan=False), "d": st.floats(allow_nan=False),
    "s": st.text(max_size=300), "y": st.binary(max_size=300),
    "e": st.sampled_from(["A", "B", "C"]), "x": st.binary(min_size=3, max_size=3),
    "t": st.integers(0, 2**40), "u1": st.none() | st.floats(width=32, allow_nan=False),
    "u2": st.none() | st.text(max_size=20) | i64,
    "arr": st.lists(inner, max_size=70), "m": st.dictionaries(st.text(max_size=8),
                                                              st.none() | i32, max_size=5),
    "opt": st.none() | st.lists(inner, max_size=3),
})


def _encode(rec: dict) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, PARSED, rec)
    return out.getvalue()


@settings(max_examples=300, deadline=None)
@given(st.lists(records, min_size=1, max_size=3))
def test_skip_ends_where_the_value_ends(recs: list[dict]) -> None:
    encoded = [_encode(r) for r in recs]
    buf = b"".join(encoded)
    pos = 0
    for chunk in encoded:
        new = SKIP(buf, pos, len(buf))
        assert new - pos == len(chunk)
        pos = new
    assert pos == len(buf)


@settings(max_examples=200, deadline=None)
@given(records, st.data())
def test_truncated_or_damaged_values_raise_only_alert_errors(rec: dict, data) -> None:
    buf = _encode(rec)
    cut = data.draw(st.integers(0, len(buf) - 1))
    with pytest.raises(AlertError) as err:
        SKIP(buf[:cut], 0, cut)
    assert err.value.reason is Reason.CORRUPT_RECORD
    damaged = bytearray(buf)
    where = data.draw(st.integers(0, len(buf) - 1))
    damaged[where] = data.draw(st.integers(0, 255))
    try:
        SKIP(bytes(damaged), 0, len(damaged))
    except AlertError as exc:
        assert exc.reason is Reason.CORRUPT_RECORD


def test_sized_array_blocks_are_jumped() -> None:
    skip = compile_skipper({"type": "array", "items": "long"})
    # One block written with a negative count and its byte size (-2 items, 2 bytes),
    # then a plain block of one item, then the terminating zero.
    buf = bytes([0x03, 0x04, 0x02, 0x04, 0x02, 0x06, 0x00])
    assert skip(buf, 0, len(buf)) == len(buf)


def test_union_index_out_of_range() -> None:
    skip = compile_skipper(["null", "string"])
    with pytest.raises(AlertError):
        skip(b"\x04abc", 0, 4)
    regex_union = compile_skipper(["null", "float"])
    with pytest.raises(AlertError):
        regex_union(b"\x04abcd", 0, 5)


def test_array_count_beyond_the_buffer_is_refused_quickly() -> None:
    skip = compile_skipper({"type": "array", "items": "long"})
    huge = bytes([0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])  # ~2**62 items
    with pytest.raises(AlertError, match="announces"):
        skip(huge + b"\x00" * 10, 0, len(huge) + 10)


def test_recursive_names_are_refused() -> None:
    with pytest.raises(AlertError) as err:
        compile_skipper("some.named.Type")
    assert err.value.reason is Reason.BAD_SCHEMA


# --------------------------------------------------------------------------- fast reader

FLAT = {"type": "record", "name": "flat", "fields": [
    {"name": "jd", "type": "double"}, {"name": "fid", "type": "int"},
    {"name": "pid", "type": "long"}, {"name": "flag", "type": "boolean"},
    {"name": "name", "type": "string"}, {"name": "mag", "type": ["null", "float"]},
    {"name": "skipme", "type": ["null", "string"]}, {"name": "note", "type": ["string", "null"]},
    {"name": "ra", "type": ["null", "double"]}, {"name": "n", "type": ["null", "long"]},
    {"name": "x", "type": "float"},
]}
FLAT_PARSED = fastavro.parse_schema(FLAT)
WANTED = frozenset({"jd", "fid", "pid", "flag", "name", "mag", "note", "ra", "n", "x"})
FAST = compile_record_reader(fastavro.parse_schema(FLAT, expand=True), WANTED)
FAST_OPTIONAL = compile_record_reader(["null", fastavro.parse_schema(FLAT, expand=True)], WANTED)
texts = st.text(max_size=150)
flat_records = st.fixed_dictionaries({
    "jd": st.floats(), "fid": i32, "pid": i64, "flag": st.booleans(), "name": texts,
    "mag": st.none() | st.floats(width=32), "skipme": st.none() | texts,
    "note": st.none() | texts, "ra": st.none() | st.floats(), "n": st.none() | i64,
    "x": st.floats(width=32),
})


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


@settings(max_examples=400, deadline=None)
@given(flat_records)
def test_fast_reader_equals_fastavro(rec: dict) -> None:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, FLAT_PARSED, rec)
    buf = out.getvalue() + b"tail"
    expected = fastavro.schemaless_reader(io.BytesIO(buf), FLAT_PARSED)
    found, value, end = FAST(buf, 0, len(buf))
    long_text = any(len(str(rec[k] or "").encode()) >= 128 for k in ("name", "skipme", "note"))
    if not found:
        assert long_text  # the only reason to defer to fastavro
        return
    assert end == len(buf) - 4
    assert set(value) == WANTED
    assert all(_same(value[k], expected[k]) for k in WANTED), (value, expected)
    assert all(type(value[k]) is type(expected[k]) for k in WANTED)


def test_fast_reader_union_with_null() -> None:
    assert FAST_OPTIONAL(b"\x00rest", 0, 5) == (True, None, 1)
    assert FAST_OPTIONAL(b"\x04", 0, 1)[0] is False  # index 2: not ours to judge
    assert compile_record_reader({"type": "array", "items": "long"}, WANTED) is None
    nested = {"type": "record", "name": "r", "fields": [
        {"name": "a", "type": {"type": "array", "items": "long"}}]}
    assert compile_record_reader(nested, frozenset({"a"})) is None


def test_fast_reader_union_that_defers_leaves_the_position_at_the_union() -> None:
    # A record of the union too long for the regex (a 200-byte string): the caller must
    # decode the whole union with fastavro, from its index byte.
    rec = {"jd": 1.0, "fid": 1, "pid": 2, "flag": True, "name": "x" * 200, "mag": None,
           "skipme": None, "note": None, "ra": None, "n": None, "x": 0.5}
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(["null", FLAT]), rec)
    assert FAST_OPTIONAL(out.getvalue(), 0, len(out.getvalue())) == (False, None, 0)
