"""Fuzzing the full decode → preprocess path: bad bytes give AlertError, never a crash.

Every mutated payload goes through exactly what the worker runs per message::

    for r in AlertDecoder().iter_records(payload):
        if isinstance(r, Alert): prepare_alert(r)

and the only exception allowed out of that is :class:`worker.decode.errors.AlertError` (as a
raised error from ``prepare_alert`` or a yielded value from ``iter_records``).  The
Python-heap peak of each example is measured with :mod:`tracemalloc` and must stay under
:data:`PEAK_LIMIT`: hostile input (gzip bombs, huge FITS axes, compressed-block bombs)
must be refused before it is materialised.
"""

from __future__ import annotations

import copy
import functools
import gzip
import io
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cramjam
import fastavro
import numpy as np
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from tests.conftest import CORRUPT_FILES
from worker.decode.alerts import Alert, AlertDecoder, DecodeLimits
from worker.decode.errors import AlertError, Reason
from worker.decode.packets import (
    SYNTHETIC_SCHEMA,
    build_record,
    default_candidate,
    encode_container,
    synthetic_alert,
)
from worker.prepare.features import FEATURE_NAMES
from worker.prepare.stamps import ModelInput, PreprocessConfig, StampLimits, prepare_alert

MiB = 1024 * 1024
PEAK_LIMIT = 64 * MiB
LIMITS = DecodeLimits(max_message_bytes=8 * MiB, max_header_bytes=256 * 1024,
                      max_block_bytes=8 * MiB, max_records_per_block=10_000,
                      schema_cache_size=16)
CONFIG = PreprocessConfig(limits=StampLimits(max_decompressed_bytes=4 * MiB,
                                             max_header_blocks=16, max_axis=1024))
CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")

# Reused across examples on purpose: its schema cache sees every mutated schema, and it
# must keep decoding clean alerts afterwards.
DECODER = AlertDecoder(limits=LIMITS)

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])

Outcome = ModelInput | AlertError


# --------------------------------------------------------------------------- helpers

def run_pipeline(payload: bytes, decoder: AlertDecoder = DECODER) -> list[Outcome]:
    """The worker's per-message path; anything but AlertError propagates (= test fails)."""
    outcomes: list[Outcome] = []
    for item in decoder.iter_records(payload):
        if isinstance(item, Alert):
            try:
                outcomes.append(prepare_alert(item, CONFIG))
            except AlertError as err:
                outcomes.append(err)
        else:
            assert isinstance(item, AlertError), f"iter_records yielded {type(item)}"
            outcomes.append(item)
    return outcomes


@pytest.fixture(scope="module")
def tracing() -> Iterator[None]:
    """Trace Python allocations for the whole module (start/stop per example is slow)."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    yield
    if not was_tracing:
        tracemalloc.stop()


def measured(payload: bytes, decoder: AlertDecoder = DECODER) -> tuple[list[Outcome], int]:
    """Run the pipeline; return its outcomes and its peak of new Python-heap bytes."""
    assert tracemalloc.is_tracing()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    outcomes = run_pipeline(payload, decoder)
    peak = tracemalloc.get_traced_memory()[1] - base
    return outcomes, peak


def check_outcomes(outcomes: list[Outcome], peak: int) -> None:
    """Properties every outcome must have, whatever the input was."""
    assert peak < PEAK_LIMIT, f"peak Python heap {peak / MiB:.1f} MiB >= {PEAK_LIMIT // MiB}"
    for out in outcomes:
        if currently_in_test_context():  # outcome statistics: --hypothesis-show-statistics
            event(out.reason.value if isinstance(out, AlertError) else "prepared")
        if isinstance(out, AlertError):
            assert isinstance(out.reason, Reason)
            continue
        assert out.image.shape == (CONFIG.crop_size, CONFIG.crop_size, 3)
        assert out.image.dtype == np.float32
        assert np.isfinite(out.image).all()
        assert out.image.min() >= 0.0 and out.image.max() <= 1.0
        assert out.features.shape == (len(FEATURE_NAMES),)
        assert out.features.dtype == np.float32


def sync_marker_end(payload: bytes) -> int:
    """End of the container header: the file ends with the sync marker, which also closes
    the header."""
    sync = payload[-16:]
    return payload.index(sync) + 16


def regions_of(payload: bytes) -> dict[str, tuple[int, int]]:
    """Byte ranges to aim mutations at: whole message, header, and each cutout."""
    header_end = sync_marker_end(payload)
    regions = {"any": (0, len(payload)), "header": (0, header_end),
               "magic_and_meta": (0, min(64, header_end)),
               "first_block": (header_end, min(len(payload), header_end + 64)),
               "tail": (max(0, len(payload) - 64), len(payload))}
    first_cutout = len(payload)
    for i, item in enumerate(AlertDecoder().iter_records(payload)):
        if not isinstance(item, Alert):
            continue
        for name, blob in zip(CUTOUTS, item.cutouts, strict=True):
            start = payload.find(blob)
            if start >= 0:  # visible only in uncompressed containers
                regions[f"{i}.{name}"] = (start, start + len(blob))
                regions[f"{i}.{name}.gzip_header"] = (start, start + 16)
                first_cutout = min(first_cutout, start)
    if first_cutout < len(payload):
        # objectId, candid, candidate, prv_candidates...: the skipped / fast-read fields
        regions["record_fields"] = (header_end, first_cutout)
    return regions


# In-place changes weigh more: length changes mostly end in truncated_container.
MUTATION_KINDS = ("flip", "flip", "flip", "overwrite", "overwrite", "truncate", "insert", "delete")


def mutate(data: st.DataObject, payload: bytes, regions: dict[str, tuple[int, int]]) -> bytes:
    """Apply 1-3 random byte-level mutations, each aimed at a drawn region."""
    buf = bytearray(payload)
    names = sorted(regions)
    for _ in range(data.draw(st.integers(1, 3), label="n_mutations")):
        kind = data.draw(st.sampled_from(MUTATION_KINDS), label="kind")
        region = data.draw(st.sampled_from(names), label="region")
        lo, hi = regions[region]
        hi = min(hi, len(buf))
        lo = min(lo, max(hi - 1, 0))
        if not buf:
            break
        pos = data.draw(st.integers(lo, max(lo, hi - 1)), label="pos")
        if kind == "flip":
            buf[pos] ^= data.draw(st.integers(1, 255), label="mask")
        elif kind == "overwrite":
            run = data.draw(st.one_of(
                st.binary(min_size=1, max_size=32),
                st.sampled_from([b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff" * 10,
                                 b"\x01", b"\xfe\xff\xff\xff\x0f"])), label="bytes")
            buf[pos:pos + len(run)] = run
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=64), label="inserted")
        else:
            del buf[pos:pos + data.draw(st.integers(1, 64), label="deleted")]
    return bytes(buf)


def gzip_bytes(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=1, mtime=0)


@functools.cache
def gzip_bomb() -> bytes:
    """gzip of 50 MB of zeros: about 50 kB that inflate 12x past the 4 MiB stamp limit."""
    return gzip.compress(bytes(50_000_000), compresslevel=9, mtime=0)


def rewrite(payload: bytes, edit: Callable[[list[dict[str, Any]]], None]) -> bytes:
    """Decode a container with its own writer schema, edit the records, write it back."""
    reader = fastavro.reader(io.BytesIO(payload))
    schema = reader.writer_schema
    codec = reader.codec
    records = list(reader)
    edit(records)
    out = io.BytesIO()
    fastavro.writer(out, fastavro.parse_schema(schema), records, codec=codec)
    return out.getvalue()


def fits_cards(raw: bytes) -> list[str]:
    text = raw[:2880 * 4].decode("latin-1")
    return [text[i:i + 80] for i in range(0, len(text), 80)]


def set_card(raw: bytes, key: str, value: str) -> bytes:
    """Replace the card ``key`` of a FITS header (must exist) with ``key = value``."""
    for i, card in enumerate(fits_cards(raw)):
        if card[:8].rstrip() == key:
            new = f"{key:<8}= {value:>20}".ljust(80).encode("ascii")
            return raw[:i * 80] + new + raw[(i + 1) * 80:]
        if card[:8].rstrip() == "END":
            break
    raise AssertionError(f"no {key} card")


def drop_end_card(raw: bytes) -> bytes:
    for i, card in enumerate(fits_cards(raw)):
        if card.rstrip() == "END":
            return raw[:i * 80] + b" " * 80 + raw[(i + 1) * 80:]
    raise AssertionError("no END card")


def _stamp_raw(blob: bytes) -> bytes:
    return gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob


# Targeted edits of one cutout's stampData → the reason that edit must produce.
STAMP_EDITS: dict[str, tuple[Callable[[bytes], bytes], set[Reason]]] = {
    "gzip_bomb": (lambda blob: gzip_bomb(), {Reason.DECOMPRESSED_TOO_LARGE}),
    "gzip_crc_corrupted": (lambda blob: blob[:-8] + bytes(b ^ 0xFF for b in blob[-8:-4])
                           + blob[-4:], {Reason.CORRUPT_GZIP}),
    "gzip_truncated": (lambda blob: blob[:len(blob) // 2], {Reason.CORRUPT_GZIP}),
    "gzip_body_smashed": (lambda blob: blob[:20] + b"\xff" * 32 + blob[52:],
                          {Reason.CORRUPT_GZIP}),
    "not_gzip_not_fits": (lambda blob: b"PK\x03\x04" + blob[4:], {Reason.CORRUPT_GZIP}),
    "naxis1_huge": (lambda blob: gzip_bytes(set_card(_stamp_raw(blob), "NAXIS1", "999999999")),
                    {Reason.FITS_HEADER_INVALID}),
    "naxis1_huge_plain_fits": (lambda blob: set_card(_stamp_raw(blob), "NAXIS1", "999999999"),
                               {Reason.FITS_HEADER_INVALID}),
    "naxis2_negative": (lambda blob: gzip_bytes(set_card(_stamp_raw(blob), "NAXIS2", "-63")),
                        {Reason.FITS_HEADER_INVALID}),
    "bitpix_bogus": (lambda blob: gzip_bytes(set_card(_stamp_raw(blob), "BITPIX", "12")),
                     {Reason.FITS_HEADER_INVALID}),
    "no_end_card": (lambda blob: gzip_bytes(drop_end_card(_stamp_raw(blob))),
                    {Reason.FITS_TRUNCATED, Reason.FITS_HEADER_INVALID}),
    "no_end_card_padded": (lambda blob: gzip_bytes(drop_end_card(_stamp_raw(blob))
                                                   + b" " * (2880 * 20)),
                           {Reason.FITS_HEADER_INVALID}),
    "fits_data_truncated": (lambda blob: gzip_bytes(_stamp_raw(blob)[:2880 + 100]),
                            {Reason.FITS_TRUNCATED}),
    "empty_fits": (lambda blob: gzip_bytes(b""), {Reason.FITS_TRUNCATED}),
}


def edit_cutout(payload: bytes, record_index: int, cutout: str, edit: Callable[[bytes], bytes]
                ) -> bytes:
    def apply(records: list[dict[str, Any]]) -> None:
        stamp = records[record_index][cutout]
        stamp["stampData"] = edit(stamp["stampData"])
    return rewrite(payload, apply)


def prepared_ok(outcomes: list[Outcome]) -> list[bool]:
    return [isinstance(o, ModelInput) for o in outcomes]


# --------------------------------------------------------------------------- sources

def _pick(manifest: list[dict[str, str]], data_dir: Path,
          keep: Callable[[dict[str, str]], bool]) -> Path | None:
    paths = {row["path"] for row in manifest if keep(row)
             and Path(row["path"]).name not in CORRUPT_FILES}
    files = [data_dir / p for p in paths if (data_dir / p).is_file()]
    return min(files, key=lambda p: p.stat().st_size) if files else None


def _cutouts_present(row: dict[str, str]) -> bool:
    return all(row[k] not in ("", "MISSING") for k in ("sci_shape", "tmpl_shape", "diff_shape"))


@pytest.fixture(scope="module")
def real_sources(data_dir: Path, manifest: list[dict[str, str]]) -> dict[str, bytes]:
    """A few small real alerts: a raw ZTF one, a broker-written one (non-square stamps when
    there is one), and a snappy container of several broker-written alerts."""
    sources: dict[str, bytes] = {}
    raw = _pick(manifest, data_dir, lambda r: r["writer_schema"] == "ztf.alert"
                and r["n_records_in_file"] == "1" and r["codec"] == "null"
                and r["path"].startswith("ztf-alerts/") and _cutouts_present(r))
    if raw is not None:
        sources["raw_ztf"] = raw.read_bytes()
    broker = (_pick(manifest, data_dir, lambda r: r["writer_schema"] != "ztf.alert"
                    and r["sci_shape"] != "63x63" and _cutouts_present(r))
              or _pick(manifest, data_dir, lambda r: r["writer_schema"] != "ztf.alert"
                       and _cutouts_present(r)))
    if broker is not None:
        sources["broker"] = broker.read_bytes()
    multi = _pick(manifest, data_dir, lambda r: r["writer_schema"] != "ztf.alert"
                  and int(r["n_records_in_file"]) > 1 and _cutouts_present(r))
    if multi is not None:
        reader = fastavro.reader(io.BytesIO(multi.read_bytes()))
        records = [rec for _, rec in zip(range(3), reader, strict=False)]
        out = io.BytesIO()
        fastavro.writer(out, fastavro.parse_schema(reader.writer_schema), records,
                        codec="snappy")
        sources["broker_snappy_multi"] = out.getvalue()
    if not sources:
        pytest.skip("no suitable real alert files in the shared data")
    return sources


@pytest.fixture(scope="module")
def real_regions(real_sources: dict[str, bytes]) -> dict[str, dict[str, tuple[int, int]]]:
    return {name: regions_of(payload) for name, payload in real_sources.items()}


@functools.cache
def synthetic(seed: int) -> tuple[bytes, dict[str, tuple[int, int]]]:
    payload = synthetic_alert(seed, nan_pixels=seed % 3 * 40)
    return payload, regions_of(payload)


CLEAN = synthetic_alert(10_000)


def assert_decoder_still_healthy(decoder: AlertDecoder = DECODER) -> None:
    """After any garbage, a clean alert still decodes and prepares."""
    outcomes = run_pipeline(CLEAN, decoder)
    assert prepared_ok(outcomes) == [True], outcomes


# --------------------------------------------------------------------------- sanity

def test_clean_synthetic_sources_prepare(tracing: None) -> None:
    for seed in range(5):
        outcomes, peak = measured(synthetic(seed)[0])
        check_outcomes(outcomes, peak)
        assert prepared_ok(outcomes) == [True]
        # cutouts are visible in an uncompressed container: mutations can aim at them
        assert {f"0.{c}" for c in CUTOUTS} <= set(synthetic(seed)[1])


def test_clean_real_sources_prepare(tracing: None, real_sources: dict[str, bytes]) -> None:
    for name, payload in real_sources.items():
        outcomes, peak = measured(payload)
        check_outcomes(outcomes, peak)
        assert outcomes and all(prepared_ok(outcomes)), (name, outcomes)
    if "broker_snappy_multi" in real_sources:
        assert len(run_pipeline(real_sources["broker_snappy_multi"])) > 1


def test_mutation_helpers_do_what_they_say() -> None:
    blob = next(fastavro.reader(io.BytesIO(CLEAN)))["cutoutScience"]["stampData"]
    raw = _stamp_raw(blob)
    assert "NAXIS1  =            999999999" in set_card(raw, "NAXIS1", "999999999").decode(
        "latin-1")
    assert b"END" + b" " * 77 not in drop_end_card(raw)[:2880]
    assert len(gzip_bomb()) < 200_000
    assert zlib.decompressobj(31).decompress(gzip_bomb(), 60_000_000) == bytes(50_000_000)


# --------------------------------------------------------------------------- byte fuzzing

@settings(FUZZ, max_examples=400)
@given(seed=st.integers(0, 15), data=st.data())
def test_mutated_synthetic_alerts_only_raise_alert_error(tracing: None, seed: int,
                                                         data: st.DataObject) -> None:
    payload, regions = synthetic(seed)
    outcomes, peak = measured(mutate(data, payload, regions))
    check_outcomes(outcomes, peak)
    assert_decoder_still_healthy()


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_mutated_real_alerts_only_raise_alert_error(tracing: None, real_sources: dict[str, bytes],
                                                    real_regions: dict[str, dict[str, tuple]],
                                                    data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(real_sources)), label="source")
    outcomes, peak = measured(mutate(data, real_sources[name], real_regions[name]))
    check_outcomes(outcomes, peak)
    assert_decoder_still_healthy()


@settings(FUZZ, max_examples=150)
@given(seed=st.integers(0, 15), data=st.data())
def test_mutated_header_with_a_fresh_decoder(tracing: None, seed: int,
                                             data: st.DataObject) -> None:
    """A new decoder has an empty schema cache: the mutated embedded schema is parsed."""
    payload, regions = synthetic(seed)
    header_only = {k: v for k, v in regions.items() if k in ("header", "magic_and_meta")}
    decoder = AlertDecoder(limits=LIMITS)
    outcomes, peak = measured(mutate(data, payload, header_only), decoder)
    check_outcomes(outcomes, peak)
    assert_decoder_still_healthy(decoder)


@settings(FUZZ, max_examples=60)
@given(seed=st.integers(0, 15), length=st.integers(0, 10**6))
def test_truncation_never_yields_an_alert_from_a_partial_container(tracing: None, seed: int,
                                                                   length: int) -> None:
    payload = synthetic(seed)[0]
    cut = payload[:length % len(payload)]
    outcomes, peak = measured(cut)
    check_outcomes(outcomes, peak)
    assert len(outcomes) == 1 and isinstance(outcomes[0], AlertError)


# --------------------------------------------------------------------------- targeted stamps

@settings(FUZZ, max_examples=40)
@given(seed=st.integers(0, 15), edit=st.sampled_from(sorted(STAMP_EDITS)),
       cutout=st.sampled_from(CUTOUTS))
def test_targeted_stamp_corruption_synthetic(tracing: None, seed: int, edit: str,
                                             cutout: str) -> None:
    change, reasons = STAMP_EDITS[edit]
    payload = edit_cutout(synthetic(seed)[0], 0, cutout, change)
    outcomes, peak = measured(payload)
    check_outcomes(outcomes, peak)
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], AlertError), f"{edit} on {cutout} was accepted"
    assert outcomes[0].reason in reasons, outcomes[0]


@pytest.mark.parametrize("edit", sorted(STAMP_EDITS))
def test_targeted_stamp_corruption_real(tracing: None, real_sources: dict[str, bytes],
                                        edit: str) -> None:
    change, reasons = STAMP_EDITS[edit]
    for name, payload in real_sources.items():
        for cutout in CUTOUTS:
            outcomes, peak = measured(edit_cutout(payload, 0, cutout, change))
            check_outcomes(outcomes, peak)
            first = outcomes[0]
            assert isinstance(first, AlertError), (name, cutout, edit)
            assert first.reason in reasons, (name, cutout, first)
            # the other alerts of a multi-alert container are not affected
            assert all(prepared_ok(outcomes[1:])), (name, outcomes)


def test_gzip_bomb_in_every_cutout_stays_bounded(tracing: None) -> None:
    def bomb_all(records: list[dict[str, Any]]) -> None:
        for cutout in CUTOUTS:
            records[0][cutout]["stampData"] = gzip_bomb()
    outcomes, peak = measured(rewrite(synthetic(1)[0], bomb_all))
    check_outcomes(outcomes, peak)
    assert [o.reason for o in outcomes if isinstance(o, AlertError)] == [
        Reason.DECOMPRESSED_TOO_LARGE]
    assert peak < 2 * CONFIG.limits.max_decompressed_bytes + 4 * MiB


FITS_KEYS = ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "BSCALE", "BZERO", "BLANK")
FITS_VALUES = ("T", "F", "'T'", "0", "1", "2", "3", "-1", "8", "16", "32", "64", "-32", "-64",
               "12", "21", "62", "64", "1024", "1025", "999999999", "-999999999", "63.0", "6_3",
               "1D5", "1e400", "-1e400", "nan", "inf", "1e-320", "99999999999999999999", "",
               "/ comment", "'text'")


def put_card(raw: bytes, key: str, value: str) -> bytes:
    """Set ``key = value`` in a FITS header: replace the card, or insert it before END."""
    cards = fits_cards(raw)
    new = f"{key:<8}= {value:>20}".ljust(80)[:80].encode("latin-1")
    for i, card in enumerate(cards):
        if card[:8].rstrip() == key:
            return raw[:i * 80] + new + raw[(i + 1) * 80:]
        if card.rstrip() == "END":
            return raw[:i * 80] + new + raw[i * 80:]
    return new + raw


@settings(FUZZ, max_examples=200)
@given(seed=st.integers(0, 15), cutout=st.sampled_from(CUTOUTS), gzipped=st.booleans(),
       data=st.data())
def test_mutated_fits_inside_a_valid_gzip(tracing: None, seed: int, cutout: str, gzipped: bool,
                                          data: st.DataObject) -> None:
    """Byte-level mutations of a cutout are mostly caught by the gzip CRC; mutate the FITS
    file itself (cards and bytes) and re-compress it, so the FITS reader sees the damage."""
    def change(blob: bytes) -> bytes:
        raw = _stamp_raw(blob)
        for _ in range(data.draw(st.integers(0, 3), label="n_cards")):
            raw = put_card(raw, data.draw(st.sampled_from(FITS_KEYS), label="key"),
                           data.draw(st.one_of(st.sampled_from(FITS_VALUES),
                                               st.text(st.characters(max_codepoint=255),
                                                       max_size=30)), label="value"))
        header_end = raw.find(b"END" + b" " * 77) + 80
        regions = {"header": (0, max(header_end, 80)), "keywords": (0, 800),
                   "data": (header_end, len(raw)), "any": (0, len(raw))}
        raw = mutate(data, raw, regions) if data.draw(st.booleans(), label="bytes") else raw
        return gzip_bytes(raw) if gzipped else raw

    outcomes, peak = measured(edit_cutout(synthetic(seed)[0], 0, cutout, change))
    check_outcomes(outcomes, peak)
    assert len(outcomes) == 1
    assert_decoder_still_healthy()


@pytest.mark.parametrize("extreme", [3e38, 1e38])
def test_finite_but_extreme_pixels_give_a_finite_input_or_alert_error(tracing: None,
                                                                      extreme: float) -> None:
    """Finite float32 pixels whose range overflows float32 (max - min > 3.4e38), as a
    misaligned or corrupt FITS data unit produces: the model input must still be finite
    and in [0, 1], or the alert refused with an AlertError."""
    rng = np.random.default_rng(3)
    stamps = [rng.normal(size=(63, 63)).astype(np.float32) for _ in range(3)]
    stamps[0][31, 31], stamps[0][31, 32] = extreme, -extreme
    payload = encode_container([build_record("ZTF26aaaaaac", 3, default_candidate(3, 2.46e6),
                                             stamps)])
    outcomes, peak = measured(payload)
    check_outcomes(outcomes, peak)


# --------------------------------------------------------------------------- targeted blocks

def _varint(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


BLOCK_BOMB_BYTES = 128 * MiB


@functools.cache
def block_bomb(codec: str) -> bytes:
    """One container block whose payload inflates to 128 MiB (16x LIMITS.max_block_bytes)."""
    zeros = bytes(BLOCK_BOMB_BYTES)
    if codec == "deflate":
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        return packer.compress(zeros) + packer.flush()
    if codec == "snappy":
        return bytes(cramjam.snappy.compress_raw(zeros)) + zlib.crc32(zeros).to_bytes(4, "big")
    return bytes(cramjam.zstd.compress(zeros))


@pytest.mark.parametrize("codec", ["deflate", "snappy", "zstandard"])
def test_container_block_bomb_is_refused_before_inflating(tracing: None, codec: str) -> None:
    """A small compressed block announcing far more than max_block_bytes must be refused
    without materialising it (a zstandard frame of 128 MiB of zeros is ~4 kB)."""
    container = encode_container([build_record("ZTF26aaaaaaa", 1, default_candidate(1, 2.46e6),
                                               [np.ones((63, 63), np.float32)] * 3)],
                                 codec=codec)
    header = container[:sync_marker_end(container)]
    bomb = block_bomb(codec)
    payload = header + _varint(1) + _varint(len(bomb)) + bomb + container[-16:]
    assert len(payload) < LIMITS.max_message_bytes
    outcomes, peak = measured(payload)
    assert [o.reason for o in outcomes if isinstance(o, AlertError)] == [Reason.BLOCK_TOO_LARGE]
    assert peak < 2 * LIMITS.max_block_bytes + 4 * MiB, (
        f"{codec}: a {len(bomb)} B block was inflated to {peak / MiB:.0f} MiB of Python heap "
        f"before the {LIMITS.max_block_bytes // MiB} MiB limit was applied")


# --------------------------------------------------------------------------- hostile schemas

def _retyped(field: str, avro_type: Any) -> dict[str, Any]:
    schema = copy.deepcopy(SYNTHETIC_SCHEMA)
    candidate = next(f for f in schema["fields"] if f["name"] == "candidate")["type"]
    next(f for f in candidate["fields"] if f["name"] == field)["type"] = avro_type
    return schema


@pytest.mark.parametrize(("field", "avro_type", "value", "shape"), [
    ("magpsf", ["null", "string"], "18.5", (63, 63)),
    ("magpsf", {"type": "array", "items": "int"}, [18, 5], (63, 63)),
    ("magpsf", {"type": "map", "values": "int"}, {"a": 1}, (63, 63)),
    ("ypos", ["null", "string"], "1500", (51, 63)),
    ("ra", {"type": "array", "items": "double"}, [150.0], (63, 63)),
])
def test_candidate_field_of_another_type_gives_alert_error_or_input(
        tracing: None, field: str, avro_type: Any, value: Any, shape: tuple[int, int]) -> None:
    """A writer schema (embedded or from a registry) is input too: a candidate field of an
    unexpected Avro type must not crash the worker."""
    rng = np.random.default_rng(0)
    stamps = [rng.normal(size=shape).astype(np.float32) for _ in range(3)]
    record = build_record("ZTF26aaaaaab", 2, default_candidate(2, 2.46e6, **{field: value}),
                          stamps)
    payload = encode_container([record], schema=_retyped(field, avro_type))
    outcomes, peak = measured(payload)
    check_outcomes(outcomes, peak)
    assert len(outcomes) == 1
