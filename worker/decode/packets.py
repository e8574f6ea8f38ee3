"""Build ZTF-style alert packets from arrays and candidate values.

Tests, the simulator and the demo need alerts that go through exactly the decoding
path of real ones.  Packets use ``schemas/ztf_alert_synthetic.avsc`` (a subset of the
ZTF 4.02 fields with the same names and types) and are written either as ZTF writes
them (an Avro object container, schema embedded, one alert per message) or in the
Confluent wire format (magic byte, schema id, schemaless record).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import fastavro
import numpy as np

from schemas import load_schema
from worker.prepare.stamps import encode_fits_gz

SYNTHETIC_SCHEMA: dict[str, Any] = load_schema("ztf_alert_synthetic.avsc")
_PARSED = fastavro.parse_schema(SYNTHETIC_SCHEMA)


def default_candidate(candid: int, jd: float, ra: float = 150.0, dec: float = 2.0,
                      **overrides: Any) -> dict[str, Any]:
    """A complete, plausible candidate record; ``overrides`` replace any field.

    Parameters
    ----------
    candid : int
        Candidate identifier.
    jd : float
        Julian date of the observation [days].
    ra, dec : float
        Position, ICRS [deg].
    **overrides
        Candidate fields to set (``None`` for a null union).

    Returns
    -------
    dict
        Every candidate field of the synthetic schema.
    """
    candidate = {
        "jd": jd, "fid": 1, "pid": candid // 1000, "programid": 1, "rcid": 10, "field": 600,
        "isdiffpos": "t", "ra": ra, "dec": dec, "xpos": 1500.0, "ypos": 1500.0,
        "magpsf": 18.5, "sigmapsf": 0.08, "fwhm": 2.1, "diffmaglim": 20.3,
        "classtar": 0.97, "ndethist": 3, "ncovhist": 40, "chinr": 1.1, "sharpnr": 0.01,
        "distnr": 0.4, "magnr": 17.9, "sgscore1": 0.2, "distpsnr1": 0.5, "sgscore2": 0.9,
        "distpsnr2": 8.2, "sgscore3": 0.5, "distpsnr3": 14.0, "rb": 0.8, "drb": 0.95,
        "ssdistnr": None, "ssmagnr": None, "ssnamenr": None,
    }
    candidate.update(overrides)
    return candidate


def build_record(object_id: str, candid: int, candidate: Mapping[str, Any],
                 stamps: Sequence[np.ndarray | bytes | None],
                 prv_candidates: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Assemble an alert record for the synthetic schema.

    Parameters
    ----------
    object_id : str
        ZTF-style object identifier.
    candid : int
        Candidate identifier.
    candidate : Mapping[str, Any]
        Candidate fields (see :func:`default_candidate`).
    stamps : sequence of (numpy.ndarray or bytes or None)
        Science, template, difference: 2-D images (written as gzipped float32 FITS),
        ready ``stampData`` bytes, or ``None`` for a missing cutout.
    prv_candidates : sequence of Mapping, optional
        Previous detections.

    Returns
    -------
    dict
        A record that :func:`encode_container` / :func:`encode_confluent` accept.
    """
    cutouts = []
    for name, stamp in zip(("Science", "Template", "Difference"), stamps, strict=True):
        if stamp is None:
            cutouts.append(None)
            continue
        data = stamp if isinstance(stamp, bytes) else encode_fits_gz(np.asarray(stamp))
        cutouts.append({"fileName": f"candid{candid}_{name.lower()}.fits.gz",
                        "stampData": data})
    return {
        "schemavsn": "synthetic-1", "publisher": "stamp-classifier-worker",
        "objectId": object_id, "candid": int(candid), "candidate": dict(candidate),
        "prv_candidates": list(prv_candidates) if prv_candidates is not None else None,
        "cutoutScience": cutouts[0], "cutoutTemplate": cutouts[1],
        "cutoutDifference": cutouts[2],
    }


def encode_container(records: Sequence[Mapping[str, Any]],
                     codec: Literal["null", "deflate", "snappy", "zstandard"] = "null",
                     schema: Mapping[str, Any] | None = None,
                     sync_marker: bytes | None = None) -> bytes:
    """Write records as an Avro object container (ZTF's encoding: schema embedded).

    Parameters
    ----------
    records : sequence of Mapping
        Alert records (one for a ZTF-style message).
    codec : str
        Container block codec.
    schema : Mapping, optional
        Writer schema; the synthetic ZTF schema by default.
    sync_marker : bytes, optional
        The container's 16-byte sync marker (random by default; fix it for
        byte-identical output).

    Returns
    -------
    bytes
    """
    out = io.BytesIO()
    parsed = _PARSED if schema is None else fastavro.parse_schema(dict(schema))
    fastavro.writer(out, parsed, list(records), codec=codec, sync_marker=sync_marker)
    return out.getvalue()


def encode_confluent(record: Mapping[str, Any], schema_id: int,
                     schema: Mapping[str, Any] | None = None) -> bytes:
    """Write one record in the Confluent wire format (``0x00`` + schema id + record).

    Parameters
    ----------
    record : Mapping
        One alert record.
    schema_id : int
        Registry id of ``schema``.
    schema : Mapping, optional
        Writer schema; the synthetic ZTF schema by default.

    Returns
    -------
    bytes
    """
    out = io.BytesIO()
    out.write(b"\x00" + int(schema_id).to_bytes(4, "big"))
    parsed = _PARSED if schema is None else fastavro.parse_schema(dict(schema))
    fastavro.schemaless_writer(out, parsed, dict(record))
    return out.getvalue()


def object_id_for(number: int, year: int = 26) -> str:
    """A ZTF-style object identifier (``ZTF`` + year + 7 letters) unique per ``number``."""
    letters = []
    for _ in range(7):
        number, digit = divmod(number, 26)
        letters.append(chr(ord("a") + digit))
    return f"ZTF{year:02d}{''.join(reversed(letters))}"


def synthetic_alert(seed: int, size: int = 63, nan_pixels: int = 0,
                    **candidate_overrides: Any) -> bytes:
    """One complete ZTF-style alert message with a point source on noise.

    Parameters
    ----------
    seed : int
        Seeds the image noise and the identifiers (deterministic).
    size : int
        Stamp side [pixels].
    nan_pixels : int
        Number of NaN pixels scattered over each stamp.
    **candidate_overrides
        Candidate fields to set.

    Returns
    -------
    bytes
        An Avro object container holding one alert.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.5**2))
    template = 100.0 + rng.normal(0, 5, (size, size)) + 300 * psf
    science = template + rng.normal(0, 5, (size, size)) + 800 * psf
    difference = science - template
    stamps = []
    for image in (science, template, difference):
        image = image.astype(np.float32)
        if nan_pixels:
            flat = image.reshape(-1)
            flat[rng.choice(flat.size, nan_pixels, replace=False)] = np.nan
        stamps.append(image)
    candid = 2_000_000_000_000_000_000 + seed
    candidate = default_candidate(candid, jd=2460000.5 + seed / 1000.0, **candidate_overrides)
    record = build_record(object_id_for(seed), candid, candidate, stamps)
    return encode_container([record], sync_marker=rng.bytes(16))


def _write_demo_alerts(argv: Sequence[str]) -> None:
    """``python -m worker.decode.packets OUTDIR N``: write N built alerts as .avro files."""
    from pathlib import Path

    if len(argv) != 2 or not argv[1].isdigit():
        raise SystemExit("usage: python -m worker.decode.packets OUTDIR N")
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for seed in range(int(argv[1])):
        # Some with NaN pixels, as real stamps have near bad pixels and edges.
        payload = synthetic_alert(seed, nan_pixels=30 if seed % 7 == 0 else 0)
        (out / f"{object_id_for(seed)}.avro").write_bytes(payload)
    print(f"wrote {argv[1]} alerts to {out}")


if __name__ == "__main__":
    import sys

    _write_demo_alerts(sys.argv[1:])
