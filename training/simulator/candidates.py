"""The candidate record of each simulated alert, and the alerts as Avro payloads.

The PSF photometry of the simulated difference stamp (:func:`_photometry`), every
candidate field consistent with the class and the scene (:func:`_candidate_fields`),
the fields as the dicts of :func:`worker.decode.packets.default_candidate` (:func:`_records`)
and ZTF-style Avro containers of whole alerts (:func:`to_alert_payloads`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from training.simulator.constants import (
    _MAG_PER_SNR,
    AGN,
    ASTEROID,
    BOGUS,
    DRB_FIRST_JD,
    JD_ZTF_START,
    MEASURED,
    SEEING_FWHM,
    SN,
    VS,
)
from training.simulator.profiles import _col, _mag, _psf_fit
from training.simulator.scene import _Catalogue
from worker.decode.packets import build_record, default_candidate, encode_container, object_id_for

if TYPE_CHECKING:
    from training.simulator.simulation import SimulatedStamps

_ASTEROID_KNOWN = 0.75                 # with a known solar-system match (ssnamenr)
_REF_DEPTH = (22.6, 0.3)               # ZTF reference catalogue depth: mean, σ [mag]
# Share of its visits in which an AGN or a variable star is detected (ndethist /
# ncovhist), Beta(a, b).  Measured on the labelled real alerts: AGN median 0.47 (10-90 %:
# 0.22-0.83), VS 0.38 (0.08-0.72).  A share, not a count: ndethist grows with the time
# ZTF has been looking, as ncovhist does.
_DETECTED_SHARE = {AGN: (2.0, 2.2), VS: (1.3, 2.0)}
# SN alerts come all along the light curve, not only as first detections: a share
# _SN_EARLY are among the first few detections, the others at a uniformly random point of
# a detectable span (lognormal: median [days], ln spread; SN Ia ~80 d to SLSNe ~300 d),
# detected at each visit with probability _SN_VISIT_DETECTED.  The labelled real SN
# alerts have ndethist 17 / 67 / 227 at 10 / 50 / 90 % (per object), none below 10.
_SN_EARLY = 0.2
_SN_SPAN = (120.0, 0.5)
_SN_VISIT_DETECTED = 0.8


def _photometry(rng: np.random.Generator, images: np.ndarray, p_s: np.ndarray,
                cond: dict[str, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PSF photometry of the difference stamp, as the pipeline measures it.

    Returns
    -------
    (measured, magpsf, sigmapsf) : numpy.ndarray
        (m,) PSF-fit flux [DN] (at least 0.3 × the flux at the limit), its magnitude
        and its error [mag].
    """
    m = len(images)
    diff = images[..., 2]
    background = np.nanmedian(diff.reshape(m, -1), axis=1)
    measured = _psf_fit(diff - _col(background), p_s)
    measured = np.maximum(measured, 0.3 * cond["f5"])
    magpsf = _mag(measured, cond["zp"])
    snr = 5.0 * measured / cond["f5"]
    floor = MEASURED["sigmapsf_floor"] * np.exp(0.3 * rng.standard_normal(m))
    sigmapsf = np.sqrt((_MAG_PER_SNR / snr) ** 2 + floor ** 2)
    return measured, magpsf, sigmapsf


def _candidate_fields(rng: np.random.Generator, labels: np.ndarray, kind: np.ndarray,
                      cond: dict[str, np.ndarray], cat: _Catalogue, cx: np.ndarray,
                      cy: np.ndarray, magpsf: np.ndarray, sigmapsf: np.ndarray,
                      sign: np.ndarray, trail: np.ndarray, ra: np.ndarray,
                      dec: np.ndarray) -> dict[str, np.ndarray]:
    """Candidate fields (arrays) consistent with the class and the scene."""
    m = len(labels)
    f: dict[str, Any] = {}
    ref_depth = rng.normal(*_REF_DEPTH, m)
    f.update(cat.nearest(m, cx, cy, ref_depth))
    f["jd"], f["fid"] = cond["jd"], cond["fid"]
    f["ra"], f["dec"] = ra, dec
    f["magpsf"], f["sigmapsf"] = magpsf, sigmapsf
    f["diffmaglim"] = cond["diffmaglim"]
    f["isdiffpos"] = np.where(sign > 0, "t", "f")
    real = labels != BOGUS
    # SExtractor FWHM of the detection: the seeing (with measurement scatter) for point
    # sources, broadened by trailing; sharp for cosmic rays, broad for extended artifacts.
    ratio = math.exp(MEASURED["fwhm_ln_median"] - 0.05) / SEEING_FWHM  # bogus add 0.05
    fwhm = cond["fwhm_s"] * ratio * np.exp(0.12 * rng.standard_normal(m))
    fwhm = np.sqrt(fwhm ** 2 + 0.5 * trail ** 2)
    by_kind = {0: (0.6, 1.4), 1: (2.5, 8.0), 3: (2.0, 8.0), 4: (2.0, 7.0)}
    for k, (lo, hi) in by_kind.items():
        sel = kind == k
        fwhm[sel] = rng.uniform(lo, hi, sel.sum())
    for k, (lo, hi) in {2: (0.8, 1.5), 5: (0.8, 2.0)}.items():
        sel = kind == k
        fwhm[sel] *= rng.uniform(lo, hi, sel.sum())
    f["fwhm"] = fwhm
    # Star/galaxy classifier of the detection (measured median 0.98, 5 % below 0.73).
    classtar = np.clip(0.995 - rng.exponential(0.025, m), 0.0, 1.0)
    extended = np.isin(kind, (1, 3, 4)) | ((kind >= 0) & (rng.random(m) < 0.3))
    classtar[extended] = rng.uniform(0.05, 0.95, extended.sum())
    f["classtar"] = classtar
    # Real-bogus scores: the random forest (rb) overlaps a lot between real and bogus;
    # the deep drb is mostly ≈1 for real sources, spread for bogus; absent before mid-2019.
    f["rb"] = np.where(real, rng.beta(4.0, 1.6, m), rng.beta(2.5, 2.5, m))
    f["rb"][labels == ASTEROID] = rng.beta(3.5, 1.8, (labels == ASTEROID).sum())
    drb_real = np.where(rng.random(m) < 0.88, 1.0 - rng.beta(0.5, 30.0, m), rng.uniform(0, 1, m))
    drb_bogus = np.where(rng.random(m) < 0.45, 1.0 - rng.beta(0.5, 30.0, m),
                         rng.beta(0.5, 2.0, m))
    f["drb"] = np.where(real, drb_real, drb_bogus)
    # Detection history: asteroids are seen once at a position; AGN and VS in a share of
    # all visits; SNe in the visits since their rise; bogus mostly once, recurring at bad
    # pixels and stars.
    days = np.maximum(cond["jd"] - JD_ZTF_START, 1.0)
    cadence = np.exp(np.log(0.6) + 0.8 * rng.standard_normal(m))   # coverages per day
    ncov = np.maximum(1, np.rint(days * cadence)).astype(np.int64)
    ndet = np.ones(m, np.int64)
    for label, (a, b) in _DETECTED_SHARE.items():
        sel = labels == label
        ndet[sel] = np.maximum(1, rng.binomial(ncov[sel], rng.beta(a, b, sel.sum())))
    sn = labels == SN
    k = int(sn.sum())
    span = np.exp(np.log(_SN_SPAN[0]) + _SN_SPAN[1] * rng.standard_normal(k))    # [days]
    visits = np.rint(rng.random(k) * np.minimum(span, days[sn]) * cadence[sn]).astype(np.int64)
    ndet[sn] = np.where(rng.random(k) < _SN_EARLY, rng.geometric(0.5, k),
                        1 + rng.binomial(visits, _SN_VISIT_DETECTED))
    ast = labels == ASTEROID
    ndet[ast] = np.where(rng.random(ast.sum()) < 0.95, 1, 2)
    bog = labels == BOGUS
    ndet[bog] = np.where(rng.random(bog.sum()) < 0.6, 1, rng.geometric(0.15, bog.sum()))
    f["ndethist"] = ndet
    f["ncovhist"] = np.maximum(ncov, ndet)
    # Known solar-system objects: ssdistnr mostly 0″ (as in the real alerts), the predicted
    # V magnitude near magpsf, a numbered designation; otherwise ZTF's sentinels.
    known = ast & (rng.random(m) < _ASTEROID_KNOWN)
    f["ssdistnr"] = np.where(known, np.where(rng.random(m) < 0.8, 0.0,
                                             np.round(rng.uniform(0.1, 5.0, m), 2)), -999.0)
    f["ssmagnr"] = np.where(known, np.round(magpsf + rng.normal(0.3, 0.35, m), 1), -999.0)
    number = np.exp(rng.uniform(0.0, math.log(700_000), m)).astype(np.int64)
    f["ssnamenr"] = np.where(known, number.astype(str), "null")
    f["programid"] = np.ones(m, np.int64)             # public survey
    f["rcid"] = rng.integers(0, 64, m)
    f["field"] = rng.integers(245, 1896, m)
    nid = (cond["jd"] - 2457754.5).astype(np.int64)   # ZTF night id: days since 2017-01-01
    f["pid"] = nid * 10 ** 9 + rng.integers(0, 10 ** 9, m)
    return f


_INT_FIELDS = frozenset({"fid", "pid", "programid", "rcid", "field", "ndethist", "ncovhist"})
_STR_FIELDS = frozenset({"isdiffpos", "ssnamenr"})


def _records(fields: dict[str, np.ndarray]) -> list[dict]:
    """Candidate dicts: the keys of :func:`worker.decode.packets.default_candidate`, in order."""
    keys = list(default_candidate(0, 0.0).keys())
    missing = [key for key in keys if key not in fields]
    if missing:
        raise RuntimeError(f"simulator does not set candidate fields {missing}")
    columns = [fields[key].tolist() for key in keys]
    kinds = [int if key in _INT_FIELDS else str if key in _STR_FIELDS else float
             for key in keys]
    out = []
    for row in zip(*columns, strict=True):
        record = {key: kind(value) for key, kind, value in zip(keys, kinds, row, strict=True)}
        if record["jd"] < DRB_FIRST_JD:
            record["drb"] = None
        out.append(record)
    return out


SIM_CANDID_BASE = 3_000_000_000_000_000_000   # above real ZTF candids (~2.5e18 by 2026)


def to_alert_payloads(sim: SimulatedStamps, first_id: int = 0) -> list[bytes]:
    """One ZTF-style Avro container per simulated alert.

    Parameters
    ----------
    sim : SimulatedStamps
        Simulated alerts.
    first_id : int
        Number of the first alert: alert ``i`` gets ``objectId = object_id_for(first_id
        + i, year)`` (year of its jd) and ``candid = SIM_CANDID_BASE + first_id + i``, so
        disjoint ranges give distinct alerts.

    Returns
    -------
    list[bytes]
        Avro object containers (synthetic ZTF schema, stamps as gzipped float32 FITS),
        byte-identical for identical input, decodable by
        :class:`worker.decode.alerts.AlertDecoder`.
    """
    payloads = []
    for i, candidate in enumerate(sim.candidates):
        number = first_id + i
        candid = SIM_CANDID_BASE + number
        year = int(2000 + (candidate["jd"] - 2451544.5) / 365.25) % 100
        stamps = [sim.images[i, :, :, k] for k in range(3)]
        record = build_record(object_id_for(number, year), candid, candidate, stamps)
        # A sync marker derived from the candid keeps the bytes reproducible.
        payloads.append(encode_container([record], sync_marker=candid.to_bytes(8, "big") * 2))
    return payloads
