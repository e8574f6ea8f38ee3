"""worker.decode.alerts: every encoding decodes, every failure has its reason."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import fastavro
import numpy as np
import pytest

import worker.decode.alerts as alerts_mod
from tests.conftest import CORRUPT_FILES
from worker.decode.alerts import CANDIDATE_FIELDS, Alert, AlertDecoder, DecodeLimits
from worker.decode.errors import AlertError, Reason
from worker.decode.packets import (
    SYNTHETIC_SCHEMA,
    build_record,
    default_candidate,
    encode_container,
    synthetic_alert,
)


def _record(i: int, **overrides):
    rng = np.random.default_rng(i)
    stamps = [rng.normal(size=(63, 63)).astype(np.float32) for _ in range(3)]
    return build_record(f"ZTF26obj{i:04d}", 1000 + i, default_candidate(1000 + i, 2460000.5 + i,
                                                                         **overrides), stamps)


def _reasons(payload: bytes, decoder: AlertDecoder | None = None) -> list[str]:
    return [r.reason.value if isinstance(r, AlertError) else "ok"
            for r in (decoder or AlertDecoder()).iter_records(payload)]


# --------------------------------------------------------------------------- built alerts

@pytest.mark.parametrize("codec", ["null", "deflate", "snappy", "zstandard"])
def test_container_codecs_decode(codec: str) -> None:
    records = [_record(i) for i in range(3)]
    alerts = AlertDecoder().decode(encode_container(records, codec=codec))
    assert [a.candid for a in alerts] == [1000, 1001, 1002]
    assert [a.object_id for a in alerts] == ["ZTF26obj0000", "ZTF26obj0001", "ZTF26obj0002"]
    assert alerts[1].jd == 2460001.5
    assert alerts[0].science == records[0]["cutoutScience"]["stampData"]
    assert alerts[0].difference == records[0]["cutoutDifference"]["stampData"]


def test_alert_fields_and_candidate_projection() -> None:
    alert = AlertDecoder().decode(synthetic_alert(7, ssnamenr="1234", ssdistnr=2.5))[0]
    assert isinstance(alert, Alert)
    assert set(alert.candidate) == set(CANDIDATE_FIELDS)
    assert alert.candidate["ssnamenr"] == "1234"
    assert alert.candidate["ssdistnr"] == 2.5
    assert alert.schema_version == "synthetic-1"
    assert "pid" not in alert.candidate  # not in the projection: never decoded
    with pytest.raises(TypeError):
        alert.candidate["jd"] = 0.0  # read-only view


def _spark_schema() -> dict:
    """The synthetic schema as Spark would re-write it: other record names, extra
    columns before and after, every field nullable."""
    schema = copy.deepcopy(SYNTHETIC_SCHEMA)
    schema["name"], schema["namespace"] = "topLevelRecord", ""
    fields = schema["fields"]
    for f in fields:
        t = f["type"]
        if isinstance(t, dict) and t.get("type") == "record":
            t["name"], t["namespace"] = f["name"], "topLevelRecord"
            f["type"] = [t, "null"]
        if isinstance(t, list) and isinstance(t[1], dict) and t[1].get("type") == "record":
            t[1]["name"], t[1]["namespace"] = f["name"], "topLevelRecord"
    # Spark gives each cutout its own record type, not a shared named one.
    cut = next(f for f in fields if f["name"] == "cutoutScience")["type"][1]
    for name in ("cutoutTemplate", "cutoutDifference"):
        own = copy.deepcopy(cut)
        own["name"] = name
        next(f for f in fields if f["name"] == name)["type"] = ["null", own]
    fields.insert(0, {"name": "timestamp", "type": ["long", "null"]})
    fields.append({"name": "cdsxmatch", "type": ["string", "null"]})
    fields.append({"name": "finkclass", "type": ["string", "null"]})
    return schema


def test_broker_rewritten_container_matches_fields_by_name() -> None:
    schema = _spark_schema()
    records = []
    for i in range(4):
        rec = _record(i)
        rec.update(timestamp=123, cdsxmatch="Unknown", finkclass="SN candidate")
        records.append(rec)
    payload = encode_container(records, codec="snappy", schema=schema)
    alerts = AlertDecoder().decode(payload)
    assert [a.candid for a in alerts] == [1000, 1001, 1002, 1003]
    assert alerts[3].candidate["magpsf"] == pytest.approx(18.5)


def test_fields_missing_from_writer_read_as_none() -> None:
    schema = copy.deepcopy(SYNTHETIC_SCHEMA)
    cand = next(f for f in schema["fields"] if f["name"] == "candidate")["type"]
    cand["fields"] = [f for f in cand["fields"] if f["name"] not in ("drb", "ssnamenr")]
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "schemavsn"]
    rec = _record(1)
    del rec["candidate"]["drb"], rec["candidate"]["ssnamenr"], rec["schemavsn"]
    alert = AlertDecoder().decode(encode_container([rec], schema=schema))[0]
    assert alert.candidate["drb"] is None and alert.candidate["ssnamenr"] is None
    assert alert.schema_version is None


def test_missing_cutout_is_a_record_level_error() -> None:
    good, bad = _record(1), _record(2)
    bad["cutoutTemplate"] = None
    payload = encode_container([good, bad, _record(3)])
    assert _reasons(payload) == ["ok", "missing_cutout", "ok"]
    with pytest.raises(AlertError) as err:
        AlertDecoder().decode(payload)
    assert err.value.reason is Reason.MISSING_CUTOUT
    assert "ZTF26obj0002" in err.value.detail and "cutoutTemplate" in err.value.detail


def test_writer_without_candidate_is_rejected() -> None:
    schema = copy.deepcopy(SYNTHETIC_SCHEMA)
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "candidate"]
    rec = _record(1)
    del rec["candidate"]
    assert _reasons(encode_container([rec], schema=schema)) == ["missing_field"]


def test_array_of_nulls_schema_is_refused() -> None:
    schema = copy.deepcopy(SYNTHETIC_SCHEMA)
    schema["fields"].append({"name": "bomb", "type": {"type": "array", "items": "null"}})
    rec = _record(1)
    rec["bomb"] = [None] * 3
    assert _reasons(encode_container([rec], schema=schema)) == ["bad_schema"]


# --------------------------------------------------------------------------- damaged bytes

def test_truncation_anywhere_gives_a_typed_error() -> None:
    payload = synthetic_alert(1)
    decoder = AlertDecoder()
    for cut in [0, 3, 4, 10, 200, len(payload) // 2, len(payload) - 17, len(payload) - 1]:
        reasons = _reasons(payload[:cut], decoder)
        assert len(reasons) == 1 and reasons[0] != "ok", (cut, reasons)
    assert _reasons(payload[: len(payload) - 5], decoder) == ["truncated_container"]
    assert _reasons(payload[:2], decoder) == ["unknown_format"]


def test_bad_sync_marker() -> None:
    payload = bytearray(synthetic_alert(1))
    payload[-3] ^= 0xFF
    assert _reasons(bytes(payload)) == ["bad_sync_marker"]


def test_bad_sync_after_first_block_keeps_the_first_blocks_alerts() -> None:
    one = encode_container([_record(1)])
    # A second block for the same container: the bytes after the header's sync marker.
    sync = one[-16:]
    first_block = one[one.index(sync) + 16:]
    damaged = bytearray(first_block)
    damaged[-1] ^= 0x01
    payload = one + bytes(damaged)
    assert _reasons(payload) == ["ok", "bad_sync_marker"]


def test_empty_and_unknown_messages() -> None:
    assert _reasons(b"") == ["empty_message"]
    assert _reasons(b"{\"objectId\": 1}") == ["unknown_format"]
    assert _reasons(b"\x00\x00\x00\x00\x07" + b"x" * 10) == ["unknown_schema_id"]


def test_message_size_limit() -> None:
    payload = synthetic_alert(1)
    decoder = AlertDecoder(limits=DecodeLimits(max_message_bytes=len(payload) - 1))
    assert _reasons(payload, decoder) == ["block_too_large"]


def test_unsupported_codec() -> None:
    payload = encode_container([_record(1)], codec="deflate")
    # Same length as "deflate" so the header stays well formed.
    payload = payload.replace(b"deflate", b"lzmaxyz", 1)
    assert _reasons(payload) == ["unsupported_codec"]


def test_corrupt_deflate_block() -> None:
    payload = bytearray(encode_container([_record(1)], codec="deflate"))
    mid = len(payload) // 2
    payload[mid:mid + 64] = b"\xff" * 64
    assert _reasons(bytes(payload))[-1] in ("corrupt_block", "corrupt_record",
                                            "truncated_container")


# --------------------------------------------------------------------------- schema cache

def test_schema_is_parsed_once_per_distinct_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = alerts_mod._build_codec

    def counting(schema_json):
        calls.append(1)
        return real(schema_json)

    monkeypatch.setattr(alerts_mod, "_build_codec", counting)
    decoder = AlertDecoder()
    for seed in range(20):
        decoder.decode(synthetic_alert(seed))
    assert len(calls) == 1
    decoder.decode(encode_container([_record(1)], schema=_spark_schema()))
    assert len(calls) == 2


def test_schema_cache_is_bounded() -> None:
    decoder = AlertDecoder(limits=DecodeLimits(schema_cache_size=2))
    for i in range(5):
        schema = copy.deepcopy(SYNTHETIC_SCHEMA)
        schema["doc"] = f"variant {i}"
        decoder.decode(encode_container([_record(i)], schema=schema))
    assert len(decoder._cache._data) == 2


# --------------------------------------------------------------------------- real data

@pytest.mark.shared_data
def test_every_real_alert_decodes(data_dir: Path, alert_files: list[Path],
                                  manifest: list[dict[str, str]]) -> None:
    decoder = AlertDecoder()
    expected = {(r["path"], int(r["rec_index"])): r for r in manifest}
    decoded: dict[tuple[str, int], Alert] = {}
    failures: dict[str, list[str]] = {}
    for path in alert_files:
        rel = str(path.relative_to(data_dir))
        for index, item in enumerate(decoder.iter_records(path.read_bytes())):
            if isinstance(item, AlertError):
                failures.setdefault(path.name, []).append(item.reason.value)
            else:
                decoded[(rel, index)] = item
    assert failures == {name: [reason] for name, reason in CORRUPT_FILES.items()} | {
        "ZTF20abyfpze.avro": ["missing_cutout"]}
    cutout_less = {k for k, r in expected.items() if r["sci_shape"] == "MISSING"}
    assert set(decoded) == set(expected) - cutout_less
    for key, alert in decoded.items():
        row = expected[key]
        assert alert.object_id == row["objectId"]
        assert alert.candid == int(row["candid"])
        assert alert.jd == pytest.approx(float(row["jd"]), abs=1e-7)
    assert len(decoded) >= 400


@pytest.mark.shared_data
def test_real_schema_versions_are_all_seen(alert_files: list[Path]) -> None:
    decoder = AlertDecoder()
    versions = set()
    for path in alert_files:
        for item in decoder.iter_records(path.read_bytes()):
            if isinstance(item, Alert):
                versions.add(item.schema_version)
    assert {None, "3.0", "3.2", "3.3", "4.01", "4.02"} <= versions


@pytest.mark.shared_data
def test_official_schemas_project(data_dir: Path) -> None:
    """Every official ZTF schema (3.3 to 4.02) yields a projection with all fields."""
    for folder in sorted((data_dir / "ztf-schema").iterdir()):
        named = {}
        for part in ("cutout", "candidate", "prv_candidate", "fp_hist"):
            path = folder / f"{part}.avsc"
            if path.exists():
                named[part] = json.loads(path.read_text())
        alert = json.loads((folder / "alert.avsc").read_text())
        # Inline the named parts so the schema stands alone, as in an alert container.
        text = json.dumps(alert)
        for part, body in named.items():
            text = text.replace(f'"ztf.alert.{part}"', json.dumps(body), 1)
        codec = alerts_mod._build_codec(text)
        steps = {name: (reader, skip) for name, _, reader, skip, _ in codec.steps}
        assert {f["name"] for f in steps["candidate"][0]["fields"]} == set(CANDIDATE_FIELDS)
        assert steps["prv_candidates"][1] is not None  # skipped, never decoded
        assert steps["cutoutScience"][1] is None


@pytest.mark.shared_data
def test_real_candidates_equal_fastavro_decoding(alert_files: list[Path]) -> None:
    """The projected candidate (fast regex reader or fastavro) equals a plain
    fastavro decode of the whole record, field by field, for every real alert."""
    decoder = AlertDecoder()
    compared = 0
    for path in alert_files:
        payload = path.read_bytes()
        ours = [a for a in decoder.iter_records(payload) if isinstance(a, Alert)]
        if not ours:
            continue
        full = list(fastavro.reader(io.BytesIO(payload)))
        assert len(full) == len(ours)
        for alert, record in zip(ours, full, strict=True):
            for name in CANDIDATE_FIELDS:
                assert alert.candidate[name] == record["candidate"].get(name), (path, name)
            assert alert.cutouts == tuple(record[k]["stampData"] for k in
                                          ("cutoutScience", "cutoutTemplate", "cutoutDifference"))
            compared += 1
    assert compared >= 400
