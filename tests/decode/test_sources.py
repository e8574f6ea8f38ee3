"""worker.decode.sources: alert payloads from files, folders, streamed tar archives and tables."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from worker.decode import sources
from worker.decode.alerts import Alert, AlertDecoder
from worker.decode.packets import SYNTHETIC_SCHEMA, synthetic_alert
from worker.decode.sources import (
    Payload,
    SourceError,
    avro_schema_of,
    expand_paths,
    iter_payloads,
    shuffled,
)


def write_archive(path: Path, members: dict[str, bytes]) -> Path:
    """A ZTF-style nightly archive: a gzipped tar of ``<candid>.avro`` files."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def alerts() -> dict[str, bytes]:
    return {f"{1000 + i}.avro": synthetic_alert(i) for i in range(5)}


def test_files_folders_and_archives_give_the_same_payloads(tmp_path: Path,
                                                           alerts: dict[str, bytes]) -> None:
    folder = tmp_path / "night"
    (folder / "sub").mkdir(parents=True)
    for i, (name, data) in enumerate(alerts.items()):
        (folder / ("sub" if i % 2 else "") / name).write_bytes(data)
    (folder / "README.txt").write_text("not an alert")
    archive = write_archive(tmp_path / "ztf_public_20261124.tar.gz",
                            {**{f"ztf_public_20261124/{k}": v for k, v in alerts.items()},
                             "ztf_public_20261124/index.txt": b"skip me"})
    from_folder = list(iter_payloads([folder]))
    from_archive = list(iter_payloads([archive]))
    assert sorted(p.data for p in from_folder) == sorted(alerts.values())
    # Archive order is kept, members that are not alerts are skipped.
    assert [p.data for p in from_archive] == list(alerts.values())
    assert from_archive[0].origin == f"{archive}!ztf_public_20261124/1000.avro"
    single = list(iter_payloads([folder / "1000.avro"]))
    assert single == [Payload(str(folder / "1000.avro"), alerts["1000.avro"])]
    # A folder holding an archive yields the archive's members.
    assert len(list(iter_payloads([tmp_path]))) == 2 * len(alerts)


def test_missing_paths_and_empty_folders_stop_before_reading(tmp_path: Path) -> None:
    (tmp_path / "a.avro").write_bytes(synthetic_alert(1))
    with pytest.raises(SourceError, match="no such file"):
        next(iter_payloads([tmp_path / "a.avro", tmp_path / "missing.avro"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no .avro"):
        expand_paths([tmp_path / "empty"])


def test_a_damaged_archive_keeps_what_was_read_and_goes_on(tmp_path: Path,
                                                           alerts: dict[str, bytes]) -> None:
    good = write_archive(tmp_path / "a.tar.gz", alerts)
    damaged = tmp_path / "b.tar.gz"
    damaged.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    after = tmp_path / "c.avro"
    after.write_bytes(synthetic_alert(99))
    errors: list[tuple[str, str]] = []
    got = list(iter_payloads([damaged, after], on_error=lambda o, m: errors.append((o, m))))
    assert [origin for origin, _ in errors] == [str(damaged)]
    assert 1 <= len(got) - 1 < len(alerts)          # some members, then the next input
    assert got[-1].origin == str(after)
    assert all(p.data in alerts.values() for p in got[:-1])
    with pytest.raises(SourceError, match=r"b\.tar\.gz"):
        list(iter_payloads([damaged]))


def _stream(n: int) -> list[Payload]:
    return [Payload(str(i), bytes([i % 256])) for i in range(n)]


def test_shuffle_is_a_seeded_permutation_within_its_buffer() -> None:
    items = _stream(50)
    out = list(shuffled(items, 100, seed=3))
    assert sorted(p.origin for p in out) == sorted(p.origin for p in items)
    assert out != items and out == list(shuffled(items, 100, seed=3))
    assert list(shuffled(items, 1, seed=3)) == items
    # A bounded buffer of k moves no item earlier than k - 1 places before its turn.
    windowed = [int(p.origin) for p in shuffled(_stream(200), 10, seed=1)]
    assert sorted(windowed) == list(range(200))
    assert all(value <= position + 9 for position, value in enumerate(windowed))
    with pytest.raises(ValueError, match="at least 1"):
        list(shuffled(items, 0))


# --------------------------------------------------------------------------- Parquet tables

def _arrow_type(avro: Any) -> pa.DataType:
    """The Arrow type a Spark export gives an (expanded) Avro type of the ZTF schema."""
    if isinstance(avro, list):  # ["null", T]: Arrow columns are nullable anyway
        (avro,) = [branch for branch in avro if branch != "null"]
    if isinstance(avro, dict):
        if avro["type"] == "record":
            return pa.struct([(f["name"], _arrow_type(f["type"])) for f in avro["fields"]])
        if avro["type"] == "array":
            return pa.list_(_arrow_type(avro["items"]))
        return _arrow_type(avro["type"])
    return {"int": pa.int32(), "long": pa.int64(), "float": pa.float32(),
            "double": pa.float64(), "string": pa.string(), "bytes": pa.binary(),
            "boolean": pa.bool_()}[avro]


def _alert_table(path: Path, originals: list[bytes], row_group_size: int = 3) -> Path:
    """A Fink-style table of the alerts' records, with columns the worker must drop."""
    expanded = fastavro.parse_schema(SYNTHETIC_SCHEMA, expand=True)
    schema = pa.schema([(f["name"], _arrow_type(f["type"])) for f in expanded["fields"]])
    records = [next(iter(fastavro.reader(io.BytesIO(data)))) for data in originals]
    table = pa.Table.from_pylist(records, schema=schema)
    n = len(records)
    table = table.append_column("cdsxmatch", pa.array(["Unknown"] * n))
    table = table.append_column("from_upper", pa.array([i % 2 == 0 for i in range(n)]))
    table = table.append_column(  # a cross-match dictionary: map-typed, no Avro twin
        "xmatch", pa.array([[("gaia", 0.5)]] * n, pa.map_(pa.string(), pa.float64())))
    table = table.append_column("big", pa.array(range(n), pa.uint64()))
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_parquet_rows_decode_like_their_avro_originals(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    originals = [synthetic_alert(i, nan_pixels=3 * (i % 2)) for i in range(7)]
    table = _alert_table(tmp_path / "alerts.parquet", originals)
    monkeypatch.setattr(sources, "TABLE_BATCH_ROWS", 2)  # rows counted across batches
    payloads = list(iter_payloads([table]))
    assert [p.origin for p in payloads] == [f"{table}#row{i}" for i in range(7)]
    decoder = AlertDecoder()
    for payload, original in zip(payloads, originals, strict=True):
        (got,) = decoder.decode(payload.data)
        (want,) = decoder.decode(original)
        assert isinstance(got, Alert) and got == want  # ids, jd, cutouts, candidate fields
    reader = fastavro.reader(io.BytesIO(payloads[0].data))
    record = next(iter(reader))
    assert reader.writer_schema["name"] == "topLevelRecord"
    assert [f["name"] for f in reader.writer_schema["fields"]] == [
        "schemavsn", "publisher", "objectId", "candid", "candidate", "prv_candidates",
        "cutoutScience", "cutoutTemplate", "cutoutDifference", "cdsxmatch", "from_upper"]
    assert record["from_upper"] is True and record["cdsxmatch"] == "Unknown"
    # The same row gives the same bytes on every read (reproducible replays).
    assert [p.data for p in iter_payloads([table])] == [p.data for p in payloads]


def test_avro_schema_of_follows_spark() -> None:
    point = pa.struct([("ra", pa.float64()), ("M-dwarf", pa.float32())])
    arrow = pa.schema([
        ("candid", pa.int64()), ("fid", pa.int32()), ("nid", pa.int16()),
        ("flag", pa.bool_()), ("name", pa.large_string()), ("blob", pa.binary()),
        ("band", pa.dictionary(pa.int8(), pa.string())),
        ("candidate", pa.struct([("jd", pa.float64()), ("when", pa.date32()),
                                 ("pos", point)])),
        ("prv", pa.list_(point)), ("mags", pa.list_(pa.float64())),
        ("tags", pa.map_(pa.string(), pa.string())), ("n", pa.uint64()),
        ("nothing", pa.null()), ("2MASS", pa.struct([("id", pa.string())])),
    ])

    def nullable(name: str, avro: Any) -> dict[str, Any]:
        return {"default": None, "name": name, "type": ["null", avro]}

    def point_record(name: str) -> dict[str, Any]:
        return {"type": "record", "name": name,
                "fields": [nullable("ra", "double"), nullable("M-dwarf", "float")]}

    assert avro_schema_of(arrow) == {"type": "record", "name": "topLevelRecord", "fields": [
        nullable("candid", "long"), nullable("fid", "int"), nullable("nid", "int"),
        nullable("flag", "boolean"), nullable("name", "string"), nullable("blob", "bytes"),
        nullable("band", "string"),
        nullable("candidate", {"type": "record", "name": "candidate_r1", "fields": [
            nullable("jd", "double"), nullable("pos", point_record("pos_r2"))]}),
        nullable("prv", {"type": "array", "items": ["null", point_record("prv_item_r3")]}),
        nullable("mags", {"type": "array", "items": ["null", "double"]}),
        nullable("2MASS", {"type": "record", "name": "_2MASS_r4",
                           "fields": [nullable("id", "string")]}),
    ]}
    fastavro.parse_schema(avro_schema_of(arrow))  # a valid schema (unique record names)


def test_a_corrupt_table_is_reported_and_reading_goes_on(tmp_path: Path) -> None:
    good = _alert_table(tmp_path / "good.parquet", [synthetic_alert(i) for i in range(4)],
                        row_group_size=2)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text.parquet"
    text.write_text("not a table")
    errors: list[tuple[str, str]] = []
    got = list(iter_payloads([truncated, text, good],
                             on_error=lambda o, m: errors.append((o, m))))
    assert [origin for origin, _ in errors] == [str(truncated), str(text)]
    assert all(message.startswith("Arrow") for _, message in errors)
    assert [p.origin for p in got] == [f"{good}#row{i}" for i in range(4)]
    with pytest.raises(SourceError, match=r"truncated\.parquet"):
        list(iter_payloads([truncated]))


def test_folders_hold_parquet_tables(tmp_path: Path) -> None:
    # Spark writes a folder of part files beside _SUCCESS and .crc files.
    export = tmp_path / "export" / "year=2024"
    export.mkdir(parents=True)
    parts = [_alert_table(export / f"part-0000{i}-x.snappy.parquet", [synthetic_alert(i)])
             for i in range(2)]
    (export.parent / "_SUCCESS").write_bytes(b"")
    (export / ".part-00000-x.snappy.parquet.crc").write_bytes(b"crc")
    (tmp_path / "export" / "1.avro").write_bytes(synthetic_alert(9))
    assert expand_paths([tmp_path / "export"]) == [tmp_path / "export" / "1.avro", *parts]
    assert len(list(iter_payloads([tmp_path]))) == 3
    only_tables = tmp_path / "only"
    only_tables.mkdir()
    (only_tables / "t.PARQUET").write_bytes(parts[0].read_bytes())
    assert expand_paths([only_tables]) == [only_tables / "t.PARQUET"]


@pytest.mark.shared_data
def test_the_shared_table_gives_the_maintainers_avro_rows(data_dir: Path) -> None:
    """The 13 rows converted by the data's maintainers come out identical but for the
    container's sync marker (random in theirs)."""
    table = data_dir / "labelled" / "fink-hostless" / "hostless_detection_part-0-0-435829.parquet"
    theirs = {}
    for path in (data_dir / "real-alerts" / "alerts" / "shared-fink-hostless").glob("*.avro"):
        reader = fastavro.reader(io.BytesIO(path.read_bytes()))
        theirs[next(iter(reader))["candid"]] = (reader.writer_schema, path.read_bytes())

    def body(data: bytes) -> bytes:  # the data block, between the header and end syncs
        sync = data[-16:]
        return data[data.index(sync) + 16:-16]

    payloads = list(iter_payloads([table]))
    assert len(payloads) == 72
    matched = 0
    for payload in payloads:
        reader = fastavro.reader(io.BytesIO(payload.data))
        candid = next(iter(reader))["candid"]
        if candid in theirs:
            schema, data = theirs[candid]
            assert reader.writer_schema == schema
            assert body(payload.data) == body(data)
            matched += 1
    assert matched == len(theirs) == 13
