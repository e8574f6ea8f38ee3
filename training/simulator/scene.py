"""What every scene shares: observing conditions, sky position, catalogue, signal planes.

:func:`_conditions` draws the filter, zero point, sky, noise, seeing and limiting
magnitude of each alert; :func:`_sky_positions` its position by class; the
:class:`_Catalogue` collects the sources put in a scene and gives the PS1 and
reference-catalogue matches of the candidate; :class:`_Scene` holds the noise-free
science, template and difference planes and the NaN mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.simulator.constants import (
    AGN,
    ASTEROID,
    BOGUS,
    DIFFERENCE_NOISE_RATIO,
    JD_RANGE,
    MEASURED,
    MOFFAT_BETA,
    NOISE_LAW_INTERCEPT,
    PIXEL_SCALE,
    PS1_DEPTH,
    R_BAND_FRACTION,
    SEEING_FWHM,
    SEEING_SPREAD,
    SN,
    STAMP_SIZE,
    TEMPLATE_FWHM,
    TEMPLATE_FWHM_SPREAD,
    TEMPLATE_NOISE_RATIO,
    VS,
    ZERO_POINT,
)
from training.simulator.profiles import _moffat_alpha, _moffat_neff
from worker.model.artifact import CLASS_NAMES  # label = index

# The rotations the metadata features use, so simulated coordinates agree with them.
from worker.prepare.features import EQUATORIAL_TO_ECLIPTIC, EQUATORIAL_TO_GALACTIC

# Assumptions (not measurable from the shared data), chosen from the ZTF literature.
# Static sources never subtract perfectly: per-alert flux-scale, PSF-width and
# astrometric mismatches (σ), a few 0.1 % to 1 % of a star's flux left in the difference.
_MISMATCH_SIGMA = {"eps": 0.004, "eta": 0.015, "shift": 0.02}
_GRAIN = (0.003, 0.03)                 # range of the pixel-level residual (relative)
# Share of exposures through clouds and their extinction range [mag]: 15 of the 355
# real alerts with a zero-point fit read 24-25.5 (the clear-sky median is 26.0).
_CLOUDY = (0.05, 0.3, 2.0)


def _class_counts(n: int, fractions: Sequence[float] | None) -> np.ndarray:
    """Exact class counts for ``n`` alerts (largest remainders), fractions normalised."""
    if fractions is None:
        fractions = [1.0] * len(CLASS_NAMES)
    p = np.asarray(fractions, dtype=np.float64)
    if p.shape != (len(CLASS_NAMES),) or not np.all(np.isfinite(p)) or (p < 0).any() \
            or p.sum() <= 0:
        raise ValueError(f"class_fractions must be {len(CLASS_NAMES)} non-negative numbers "
                         f"with a positive sum, got {fractions!r}")
    share = p / p.sum() * n
    counts = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[:n - counts.sum()]] += 1
    return counts


def _conditions(rng: np.random.Generator, m: int) -> dict[str, np.ndarray]:
    """Observing conditions per alert: filter, zero point, sky, noise, seeing, limit, time."""
    c: dict[str, np.ndarray] = {}
    c["fid"] = np.where(rng.random(m) < R_BAND_FRACTION, 2, 1)
    # Clouds: some exposures lose 0.3-2 mag of transparency, zero point and sky alike
    # (real alerts with zero points of 24-25.5 have low noise; see _CLOUDY).
    cloud = np.where(rng.random(m) < _CLOUDY[0], rng.uniform(*_CLOUDY[1:], m), 0.0)
    c["zp"] = ZERO_POINT - cloud + rng.normal(0.0, 0.1, m)
    c["sky"] = 10 ** (MEASURED["sky_log10_median"] + MEASURED["sky_log10_spread"]
                      * rng.standard_normal(m) - 0.4 * cloud)
    law = np.sqrt(MEASURED["noise_law_slope"] * c["sky"] + NOISE_LAW_INTERCEPT)
    c["sigma_s"] = law * np.exp(MEASURED["noise_law_scatter"] * rng.standard_normal(m))
    c["sky_t"] = c["sky"] * MEASURED["template_sky_ratio"] * (1 + 0.01 * rng.standard_normal(m))
    c["ratio_t"] = np.exp(math.log(TEMPLATE_NOISE_RATIO)
                          + MEASURED["template_noise_ratio_spread"] * rng.standard_normal(m))
    c["sigma_t"] = c["sigma_s"] * c["ratio_t"]
    c["ratio_d"] = np.clip(DIFFERENCE_NOISE_RATIO + MEASURED[
        "difference_noise_ratio_spread"] * rng.standard_normal(m), 0.5, 1.1)
    c["sigma_d"] = c["sigma_s"] * c["ratio_d"]
    # (The sources' residuals lift the stamp median by ≈0.08 DN.)
    c["sky_d"] = MEASURED["difference_sky"] - 0.08 + 0.3 * rng.standard_normal(m)
    c["fwhm_s"] = np.clip(SEEING_FWHM * np.exp(SEEING_SPREAD * rng.standard_normal(m)), 1.0, 6.0)
    c["beta_s"] = rng.uniform(*MOFFAT_BETA, m)
    c["alpha_s"] = _moffat_alpha(c["fwhm_s"], c["beta_s"])
    c["fwhm_t"] = np.clip(TEMPLATE_FWHM * np.exp(TEMPLATE_FWHM_SPREAD * rng.standard_normal(m)),
                          1.0, 5.0)
    c["beta_t"] = rng.uniform(*MOFFAT_BETA, m)
    c["alpha_t"] = _moffat_alpha(c["fwhm_t"], c["beta_t"])
    # Flux [DN] at ZTF's 5σ limit: 5σ of a PSF fit on the stamp noise, times the
    # measured offset between ZTF's diffmaglim and that pixel-noise limit.
    c["f5"] = (5.0 * c["sigma_d"] * np.sqrt(_moffat_neff(c["alpha_s"], c["beta_s"]))
               * 10 ** (-0.4 * MEASURED["diffmaglim_offset"]))
    c["diffmaglim"] = c["zp"] - 2.5 * np.log10(c["f5"])
    c["jd"] = rng.uniform(*JD_RANGE, m)
    c["eps"] = rng.normal(0.0, _MISMATCH_SIGMA["eps"], m)
    c["eta"] = rng.normal(0.0, _MISMATCH_SIGMA["eta"], m)
    c["shift_x"] = rng.normal(0.0, _MISMATCH_SIGMA["shift"], m)
    c["shift_y"] = rng.normal(0.0, _MISMATCH_SIGMA["shift"], m)
    c["grain"] = rng.uniform(*_GRAIN, m)
    return c


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """(3, k) Cartesian unit vectors of latitude/longitude [deg]."""
    la, lo = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)])


def _sky_positions(rng: np.random.Generator, labels: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ICRS positions by class, all in ZTF's sky (dec > -30°).

    Asteroids near the ecliptic, VS concentrated to the Galactic plane (70 %),
    extragalactic sources (AGN, SN) mostly away from it (|b| > 20° for 90 %), bogus
    isotropic with 30 % in crowded low-latitude fields.

    Returns
    -------
    (ra, dec, gal_lat, ecl_lat) : numpy.ndarray
        Degrees, each (m,).
    """
    m = len(labels)
    ra, dec = np.empty(m), np.empty(m)
    todo = np.arange(m)
    while todo.size:
        lab = labels[todo]
        k = todo.size
        lon = rng.uniform(0.0, 360.0, k)
        lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, k)))          # isotropic
        plane_vs = (lab == VS) & (rng.random(k) < 0.7)
        plane_bogus = (lab == BOGUS) & (rng.random(k) < 0.3)            # crowded fields
        lat[plane_vs] = np.clip(rng.laplace(0.0, 6.0, plane_vs.sum()), -89, 89)
        lat[plane_bogus] = np.clip(rng.laplace(0.0, 10.0, plane_bogus.sum()), -89, 89)
        ast = lab == ASTEROID
        lat[ast] = np.clip(rng.normal(0.0, 8.0, ast.sum()), -40, 40)
        vec = _unit_vectors(lat, lon)
        eq = np.where(ast, EQUATORIAL_TO_ECLIPTIC.T @ vec, EQUATORIAL_TO_GALACTIC.T @ vec)
        d = np.degrees(np.arcsin(np.clip(eq[2], -1, 1)))
        extragalactic = (lab == AGN) | (lab == SN)
        # Extinction and crowding keep extragalactic discoveries out of the plane.
        ok = (d > -30.0) & ~(extragalactic & (np.abs(lat) < 20) & (rng.random(k) > 0.1))
        ra[todo[ok]] = np.degrees(np.arctan2(eq[1][ok], eq[0][ok])) % 360.0
        dec[todo[ok]] = d[ok]
        todo = todo[~ok]
    vec = _unit_vectors(dec, ra)
    gal_lat = np.degrees(np.arcsin(np.clip((EQUATORIAL_TO_GALACTIC @ vec)[2], -1, 1)))
    ecl_lat = np.degrees(np.arcsin(np.clip((EQUATORIAL_TO_ECLIPTIC @ vec)[2], -1, 1)))
    return ra, dec, gal_lat, ecl_lat


class _Catalogue:
    """Sources of the scenes (counterparts and neighbours).

    They give the PS1 (``sgscore``/``distpsnr``) and reference-catalogue (``distnr``,
    ``magnr``, ``chinr``, ``sharpnr``) fields of the candidates.
    """

    STAR, GALAXY, NUCLEUS = 0, 1, 2

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, idx: np.ndarray, x: np.ndarray, y: np.ndarray, mag: np.ndarray,
            kind: np.ndarray | int, ref_mag: np.ndarray | None = None,
            nuclear_fraction: np.ndarray | None = None) -> None:
        """Record sources of alerts ``idx`` at stamp pixels (x, y) with magnitude ``mag``.

        ``kind`` star / galaxy / nucleus (AGN: nucleus + host, scored by
        ``nuclear_fraction``); ``ref_mag`` the PSF magnitude in the reference catalogue
        (default ``mag``: extended sources look fainter to a PSF fit).
        """
        k = len(idx)
        if k == 0:
            return
        rng = self.rng
        kind = np.broadcast_to(np.asarray(kind), (k,)).copy()
        mag = np.asarray(mag, dtype=np.float64)
        # PS1 star/galaxy score: near 1 for stars, near 0 for galaxies, noisy when faint,
        # exactly 0.5 where PS1 has no score (measured share).
        star_sg = 1.0 - 0.15 * rng.beta(1.0, 4.0, k)
        gal_sg = 0.15 * rng.beta(1.0, 4.0, k)
        sg = np.where(kind == self.STAR, star_sg, gal_sg)
        if nuclear_fraction is not None:
            nuc = kind == self.NUCLEUS
            sg[nuc] = np.clip(nuclear_fraction[nuc] ** 0.5 + rng.normal(0, 0.12, nuc.sum()),
                              0.0, 1.0)
        faint = (mag > 21.5) & (rng.random(k) < 0.5)
        sg[faint] = rng.random(faint.sum())
        sg[rng.random(k) < MEASURED["sgscore_unknown_fraction"]] = 0.5
        # Reference-catalogue PSF-fit shape: chi ~1 and sharp ~0 for stars, larger for
        # galaxies, sharp < 0 for faint noise-dominated sources (as measured on asteroids'
        # neighbours in the real alerts: sharpnr -0.6 to 0 at magnr ~22).
        extended = np.where(kind == self.GALAXY, 1.0,
                            1.0 - nuclear_fraction if nuclear_fraction is not None else 0.0)
        extended = np.where(kind == self.STAR, 0.0, extended)
        chi = np.exp(np.log(0.8 + 1.5 * extended) + 0.4 * rng.standard_normal(k))
        sharp = np.where(mag > 21.0, rng.normal(-0.2, 0.2, k), rng.normal(0.0, 0.04, k))
        sharp = sharp + extended * rng.uniform(0.1, 0.6, k)
        self.parts.append({
            "idx": np.asarray(idx), "x": np.asarray(x, np.float64),
            "y": np.asarray(y, np.float64), "mag": mag,
            "ref_mag": mag if ref_mag is None else np.asarray(ref_mag, np.float64),
            "sg": sg, "chi": chi, "sharp": sharp})

    def nearest(self, m: int, cx: np.ndarray, cy: np.ndarray, ref_depth: np.ndarray
                ) -> dict[str, np.ndarray]:
        """PS1 (three nearest within 30″) and reference (nearest within 30″) matches."""
        rng = self.rng
        out = {f"{key}{k}": np.full(m, -999.0) for key in ("sgscore", "distpsnr")
               for k in (1, 2, 3)}
        for key in ("distnr", "magnr", "chinr", "sharpnr"):
            out[key] = np.full(m, -999.0)
        if not self.parts:
            return out
        cat = {key: np.concatenate([p[key] for p in self.parts]) for key in self.parts[0]}
        idx = cat["idx"]
        # Catalogue astrometry is good to ~0.1 pixel.
        dist = np.hypot(cat["x"] - cx[idx] + rng.normal(0, 0.1, len(idx)),
                        cat["y"] - cy[idx] + rng.normal(0, 0.1, len(idx)))
        arcsec = dist * PIXEL_SCALE
        ps1 = (cat["mag"] < PS1_DEPTH) & (arcsec <= 30.0)
        sel = np.flatnonzero(ps1)
        sel = sel[np.lexsort((arcsec[sel], idx[sel]))]
        first = np.r_[True, idx[sel][1:] != idx[sel][:-1]]
        start = np.maximum.accumulate(np.where(first, np.arange(len(sel)), 0))
        rank = np.arange(len(sel)) - start
        for k in (1, 2, 3):
            take = sel[rank == k - 1]
            out[f"sgscore{k}"][idx[take]] = cat["sg"][take]
            out[f"distpsnr{k}"][idx[take]] = arcsec[take]
        ref = (cat["ref_mag"] < ref_depth[idx]) & (arcsec <= 30.0)
        sel = np.flatnonzero(ref)
        sel = sel[np.lexsort((dist[sel], idx[sel]))]
        first = np.r_[True, idx[sel][1:] != idx[sel][:-1]] if len(sel) else np.zeros(0, bool)
        take = sel[first]
        out["distnr"][idx[take]] = dist[take]
        out["magnr"][idx[take]] = cat["ref_mag"][take]
        out["chinr"][idx[take]] = cat["chi"][take]
        out["sharpnr"][idx[take]] = cat["sharp"][take]
        return out


@dataclass
class _Scene:
    """Noise-free signal planes of one chunk of alerts, and what was put in them."""

    sci: np.ndarray
    tmpl: np.ndarray
    diff: np.ndarray
    mask: np.ndarray                   # NaN pixels (all three stamps)

    @classmethod
    def empty(cls, m: int) -> _Scene:
        shape = (m, STAMP_SIZE, STAMP_SIZE)
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32),
                   np.zeros(shape, np.float32), np.zeros(shape, bool))
