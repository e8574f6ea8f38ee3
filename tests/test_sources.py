"""worker.sources: alert payloads from files, folders and streamed tar archives."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from worker.packets import synthetic_alert
from worker.sources import Payload, SourceError, expand_paths, iter_payloads, shuffled


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
