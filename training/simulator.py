"""Simulated, labelled ZTF alert stamp triplets: tests, the demo and the default model.

Each simulated alert is a science / template / difference triplet of 63×63 float32
stamps in ZTF units (DN) plus a complete candidate record, for five classes:

* **AGN** – a variable point source at the nucleus of a galaxy (the host sometimes
  faint or absent); brighter or fainter than in the template.
* **SN** – a new point source on an extended Sérsic/exponential host, offset by 0.3–3
  effective radii (15 % near the nucleus, some hosts faint or absent).
* **VS** – a star present in the template whose flux changed (up or down).
* **asteroid** – a point source in the science image only, no template counterpart,
  some slightly trailed; most have a known solar-system match (``ssdistnr``/``ssnamenr``).
* **bogus** – real artifact kinds (:data:`BOGUS_KINDS`): cosmic rays, bad columns/rows,
  misalignment dipoles, saturated-star residuals, NaN edge regions, low-SNR blobs.

All scenes share measured observing conditions: sky and noise of the three stamps,
seeing, zero point, limiting magnitude and the NaN regions of real stamps, measured on
the real alerts of the shared data folder with :func:`measure_real_statistics` (the
numbers are :data:`MEASURED`; a test re-measures them when the data is present).  Fields
hold PS1-like neighbours (stars and galaxies, denser towards the Galactic plane), and
the candidate record is built from the same scene: PS1 and reference-catalogue matches
(``sgscore``/``distpsnr``/``distnr``/``magnr``), PSF photometry measured on the
simulated difference stamp, seeing, detection history and sky position.

As in real ZTF alerts, **the difference stamp always shows the detection positive**: a
negative subtraction (``isdiffpos = 'f'``, the source fainter than in the template) is
cut from template − science.  Measured on the shared data: the centre of the difference
stamp is positive in all 410 full-size real alerts, 141 of which are ``'f'``.  The sign of
the change is carried by ``isdiffpos`` and by science − template, not by the difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The rotations the metadata features use, so simulated coordinates agree with them.
from worker.features import EQUATORIAL_TO_ECLIPTIC, EQUATORIAL_TO_GALACTIC
from worker.model import CLASS_NAMES  # label = index
from worker.packets import build_record, default_candidate, encode_container, object_id_for
from worker.stamps import decode_stamp

AGN, SN, VS, ASTEROID, BOGUS = range(5)

# Class imbalance of the labelled set of the ALeRCE stamp classifier (Carrasco-Davis et al.
# 2021, AJ 162, 231, "Alert Classification for the ALeRCE Broker System: The Real-time
# Stamp Classifier"), in approximate counts of first-detection alerts: ~15,000 AGN,
# ~1,600 SN, ~15,000 VS, ~10,000 asteroids, ~10,700 bogus.  What matters here is the
# imbalance (SN ≈ 3 %), not the exact numbers.
_ALERCE_2020_COUNTS = (14_966, 1_620, 14_996, 9_942, 10_720)
SEED_CLASS_FRACTIONS: tuple[float, ...] = tuple(
    c / sum(_ALERCE_2020_COUNTS) for c in _ALERCE_2020_COUNTS)

BOGUS_KINDS: tuple[str, ...] = ("cosmic_ray", "bad_column", "dipole", "saturated_star",
                                "nan_edge", "low_snr")
# Share of each artifact kind among bogus alerts (an assumption: ZTF bogus is dominated
# by subtraction residuals and low-significance blobs, then cosmic rays and detector defects).
_BOGUS_KIND_FRACTIONS = (0.18, 0.14, 0.22, 0.10, 0.10, 0.26)

STAMP_SIZE = 63
CENTRE = STAMP_SIZE // 2               # the candidate's pixel (0-based row and column)
PIXEL_SCALE = 1.012                    # ZTF plate scale [arcsec / pixel]
QUADRANT_SHAPE = (3080, 3072)          # readout-quadrant image (NAXIS2, NAXIS1) [pixels]
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_MAG_PER_SNR = 2.5 / math.log(10.0)    # σ_mag = 1.0857 / SNR

# --------------------------------------------------------------------- measured constants
# Measured on the real alerts of ../shared/data with measure_real_statistics(): 414
# decodable alerts with three 63×63 cutouts (one per candid), background statistics over
# the medians of 194 exposures (jd, fid) so that fields with many alerts count once.
# Re-measured and compared by tests/test_simulator.py when the data is present.
MEASURED: dict[str, float] = {
    # Science sky: log10 of the stamp median [DN]: median and half the 16-84 % range.
    "sky_log10_median": 2.203,                 # 160 DN
    "sky_log10_spread": 0.217,
    # Science noise (1.4826 × MAD [DN]) against sky: sigma² = slope·sky + intercept
    # (Theil-Sen fit over exposures with 30 < sky < 1000 DN), and the scatter of
    # ln(sigma) about it.  slope = 1 / effective gain [DN / e-].
    "noise_law_slope": 0.1042,
    "noise_law_intercept": 35.86,              # [DN²]
    "noise_law_scatter": 0.270,
    # Template: sky-matched and flux-scaled to the science image, a deeper coadd.
    "template_sky_ratio": 0.997,               # median template / science sky
    "template_noise_ratio": 0.248,             # median template / science noise
    "template_noise_ratio_spread": 0.373,      # robust sigma of its ln
    "template_lag1_correlation": 0.307,        # neighbour-pixel noise correlation (resampling)
    # Difference (ZOGY-normalised): noise relative to the science noise, and its level.
    "difference_noise_ratio": 0.907,
    "difference_noise_ratio_spread": 0.089,
    "difference_sky": 0.132,                   # median [DN]
    # Seeing: candidate fwhm [pixels] (ln median 0.829 → 2.29 px), and Gaussian-fit
    # FWHM of the difference detections (peak > 8σ) and of bright template centres.
    "fwhm_ln_median": 0.829,
    "fwhm_ln_spread": 0.375,
    "psf_fwhm_median": 2.12,
    "template_psf_fwhm_median": 2.45,
    # Photometry: magpsf + 2.5 log10(Gaussian-fit difference flux [DN]) (same fits).
    "zero_point": 26.00,
    # diffmaglim − the 5σ limit from the stamp's pixel noise: ZTF's limit is 0.65 mag
    # brighter (1.82× the flux), so a detection at the limit has pixel S/N ≈ 9.
    "diffmaglim_offset": -0.649,
    # sigmapsf² − (1.0857 / S/N)² for detections > 1.5 mag above the limit: a floor [mag].
    "sigmapsf_floor": 0.064,
    # diffmaglim − magpsf: quartiles of how far above the limit detections are [mag].
    "lim_minus_mag_p25": 0.70,
    "lim_minus_mag_p50": 1.26,
    "lim_minus_mag_p75": 2.04,
    # NaN pixels: share of alerts with any; NaN region touching the border (CCD and
    # reference edges, 2-2149 pixels, the same in all three stamps); NaN only inside
    # (masked saturated stars and bad-pixel clusters, 7×7 to 22×22 squares).
    "nan_alert_fraction": 0.124,
    "nan_border_fraction": 0.100,
    "nan_interior_fraction": 0.024,
    # PS1 source density from the median distpsnr2 (the first source past the
    # counterpart): ln 2 / (π d²) [arcsec⁻²].
    "ps1_density": 0.0019,
    # Share of PS1 matches with sgscore exactly 0.5 (no star/galaxy score).
    "sgscore_unknown_fraction": 0.19,
}
# Relative (or, for zero-centred values, absolute) tolerances of the re-measurement
# check: the real sample is small (194 exposures), so spreads are known to ~20 %.
MEASUREMENT_TOLERANCES: dict[str, tuple[str, float]] = {
    "sky_log10_median": ("abs", 0.05), "sky_log10_spread": ("rel", 0.2),
    "noise_law_slope": ("rel", 0.25), "noise_law_intercept": ("rel", 0.25),
    "noise_law_scatter": ("rel", 0.25), "template_sky_ratio": ("abs", 0.01),
    "template_noise_ratio": ("rel", 0.1), "template_noise_ratio_spread": ("rel", 0.25),
    "template_lag1_correlation": ("abs", 0.05), "difference_noise_ratio": ("rel", 0.05),
    "difference_noise_ratio_spread": ("rel", 0.3), "difference_sky": ("abs", 0.3),
    "fwhm_ln_median": ("abs", 0.05), "fwhm_ln_spread": ("rel", 0.2),
    "psf_fwhm_median": ("rel", 0.1), "template_psf_fwhm_median": ("rel", 0.1),
    "zero_point": ("abs", 0.1), "diffmaglim_offset": ("abs", 0.1),
    "sigmapsf_floor": ("rel", 0.2), "lim_minus_mag_p25": ("abs", 0.15),
    "lim_minus_mag_p50": ("abs", 0.15), "lim_minus_mag_p75": ("abs", 0.2),
    "nan_alert_fraction": ("abs", 0.03), "nan_border_fraction": ("abs", 0.03),
    "nan_interior_fraction": ("abs", 0.015), "ps1_density": ("rel", 0.2),
    "sgscore_unknown_fraction": ("abs", 0.05),
}

# Measured in the same data, not part of MEASURED's statistics: the share of r-band
# alerts (271 of 414), the ZTF saturation (largest finite science pixel: 57,624 DN; the
# saturation mask takes pixels above ~50,000 DN), and the earliest alert carrying drb
# (deep real-bogus score, schema 3.3: JD 2458658.67; none of the 2018 alerts has it).
R_BAND_FRACTION = 0.65
SATURATION_DN = 50_000.0
DRB_FIRST_JD = 2458658.5
JD_ZTF_START = 2458194.5               # 2018-03-17, start of ZTF survey operations
JD_RANGE = (2458484.5, 2461041.5)      # 2019-01-01 to 2026-01-01
PS1_DEPTH = 23.3                       # PS1 3π 5σ depth [mag]: faintest catalogue neighbour

# Derived simulation parameters, chosen so that simulated stamps measured with
# stamp_statistics reproduce MEASURED (checked by tests/test_simulator.py).
SEEING_FWHM = 2.00                     # median Moffat FWHM of the science PSF [pixels]
SEEING_SPREAD = 0.30                   # its ln spread
TEMPLATE_FWHM = 2.17                   # median Moffat FWHM of the template PSF [pixels]
TEMPLATE_FWHM_SPREAD = 0.15
MOFFAT_BETA = (2.5, 4.5)               # range of the Moffat index (ground-based seeing)
# The stamp MAD that MEASURED's noise figures come from includes faint sources: the
# background noise put in is smaller, so that the simulated stamps measure the same.
NOISE_LAW_INTERCEPT = 0.85 * MEASURED["noise_law_intercept"]            # [DN²]
TEMPLATE_NOISE_RATIO = 0.94 * MEASURED["template_noise_ratio"]
DIFFERENCE_NOISE_RATIO = 1.04 * MEASURED["difference_noise_ratio"]
TEMPLATE_LAG1 = MEASURED["template_lag1_correlation"] - 0.03
# Zero point of the total (Moffat) flux: a Gaussian fit, as used for MEASURED, misses the
# PSF wings and reads 0.13 mag less on the simulated stamps.
ZERO_POINT = MEASURED["zero_point"] + 0.13


@dataclass(frozen=True)
class SimulatedStamps:
    """Simulated labelled alerts.

    Attributes
    ----------
    images : numpy.ndarray
        (N, 63, 63, 3) float32: science, template, difference in ZTF units [DN]; NaN
        where a stamp has masked (saturated, bad) or off-edge pixels.
    labels : numpy.ndarray
        (N,) int64 index into :data:`CLASS_NAMES`.
    candidates : list[dict]
        Per alert, every field of :func:`worker.packets.default_candidate`, consistent
        with the class and the stamps.
    """

    images: np.ndarray
    labels: np.ndarray
    candidates: list[dict]

    def __len__(self) -> int:
        return len(self.labels)


# --------------------------------------------------------------------------- rendering

_GRID_Y, _GRID_X = np.mgrid[0:STAMP_SIZE, 0:STAMP_SIZE].astype(np.float32)
_NPIX = STAMP_SIZE * STAMP_SIZE


def _col(values: np.ndarray) -> np.ndarray:
    """(m,) parameters as float32 (m, 1, 1), to broadcast against (m, S, S) images."""
    return np.asarray(values, dtype=np.float32)[:, None, None]


def _moffat_alpha(fwhm: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Moffat core width α [pixels] of a profile of given FWHM [pixels] and index β."""
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def _moffat(x0: np.ndarray, y0: np.ndarray, alpha: np.ndarray, beta: np.ndarray,
            grid_x: np.ndarray = _GRID_X, grid_y: np.ndarray = _GRID_Y
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unit-flux Moffat PSFs sampled at pixel centres.

    Parameters
    ----------
    x0, y0 : numpy.ndarray
        (m,) centres [pixels, column and row].
    alpha, beta : numpy.ndarray
        (m,) Moffat width [pixels] and index.
    grid_x, grid_y : numpy.ndarray
        Pixel coordinates, broadcastable to (m, h, w) (the full stamp by default).

    Returns
    -------
    (p, u, dx, dy)
        ``p``: (m, h, w) float32 PSF [1/pixel], summing to 1 over the grid (a source well
        inside it keeps its whole flux); ``u`` = 1 + r²/α² and the offsets ``dx``, ``dy``
        [pixels], reused for residual terms.
    """
    dx = grid_x - _col(x0)
    dy = grid_y - _col(y0)
    a2 = _col(np.asarray(alpha) ** 2)
    u = 1.0 + (dx * dx + dy * dy) / a2
    b = _col(beta)
    p = np.exp(-b * np.log(u))
    # Unit sum over the evaluation grid rather than the analytic 1/(π α²)(β-1): sampling
    # a narrow PSF at pixel centres is off by up to 6 %, which would make a static star
    # seen with different seeing look variable.
    p /= p.sum(axis=(-2, -1), keepdims=True)
    return p, u, dx, dy


def _moffat_peak(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Central value of a unit-flux Moffat [1/pixel]."""
    return (beta - 1.0) / (np.pi * alpha ** 2)


def _moffat_neff(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Noise-equivalent area 1 / Σ P² of a Moffat PSF [pixels]."""
    return np.pi * alpha ** 2 * (2.0 * beta - 1.0) / (beta - 1.0) ** 2


def _static_residual(p: np.ndarray, u: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                     alpha: np.ndarray, beta: np.ndarray, eps: np.ndarray,
                     eta: np.ndarray, shift_x: np.ndarray, shift_y: np.ndarray,
                     grain: np.ndarray | None = None,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """What an imperfect subtraction leaves of a static unit-flux Moffat source.

    First-order terms of a flux mismatch ``eps``, a PSF-width mismatch ``eta``
    (α → α(1 + eta): a ring) and a misalignment (``shift_x``, ``shift_y``) [pixels]
    (a dipole), computed from the same ``p``, ``u``: no further power evaluations.
    ``grain`` adds pixel-to-pixel errors of that relative size (undersampled PSF,
    resampling of the template), which give real residuals their checkered look.
    """
    b = _col(beta)
    width = _col(eta) * (-2.0 + 2.0 * b * (u - 1.0) / u)
    dipole = 2.0 * b * (_col(shift_x) * dx + _col(shift_y) * dy) / (_col(alpha) ** 2 * u)
    factor = _col(eps) + width + dipole
    if grain is not None and rng is not None:
        factor += _col(grain) * rng.standard_normal(p.shape, dtype=np.float32)
    return p * factor


def _sersic_b(n: np.ndarray) -> np.ndarray:
    """Sérsic b_n (Ciotti & Bertin 1999 expansion): half the light inside r_e."""
    return 2.0 * n - 1.0 / 3.0 + 0.009876 / n


def _sersic(x0: np.ndarray, y0: np.ndarray, r_e: np.ndarray, n: np.ndarray, q: np.ndarray,
            theta: np.ndarray, soft: np.ndarray,
            grid_x: np.ndarray = _GRID_X, grid_y: np.ndarray = _GRID_Y) -> np.ndarray:
    """Unit-flux elliptical Sérsic profiles, approximately seen through the PSF.

    The seeing is approximated by softening the radius, r → √(r² + s²) with ``soft`` = the
    PSF's Gaussian σ: it removes the cusp of the profile the way the PSF does, at a
    fraction of the cost of a convolution.  Normalised with the total flux of the
    softened profile: the analytic Sérsic total less the light inside radius ``soft``
    (∫ I(t) 2π q t dt from 0 to s, which the softening removes).

    Parameters
    ----------
    x0, y0 : numpy.ndarray
        (m,) centres [pixels].
    r_e : numpy.ndarray
        (m,) effective (half-light) radius along the major axis [pixels].
    n, q, theta : numpy.ndarray
        (m,) Sérsic index, axis ratio b/a, position angle [rad].
    soft : numpy.ndarray
        (m,) softening [pixels].
    grid_x, grid_y : numpy.ndarray
        Pixel coordinates, broadcastable to (m, h, w) (the full stamp by default).

    Returns
    -------
    numpy.ndarray
        (m, h, w) float32 [1/pixel].
    """
    dx = grid_x - _col(x0)
    dy = grid_y - _col(y0)
    c, s = _col(np.cos(theta)), _col(np.sin(theta))
    xr = dx * c + dy * s
    yr = (dy * c - dx * s) / _col(q)
    r = np.sqrt(xr * xr + yr * yr + _col(soft) ** 2)
    bn = _sersic_b(n)
    prof = np.exp(-_col(bn) * (np.exp(np.log(r / _col(r_e)) / _col(n)) - 1.0))
    gamma = np.array([math.gamma(2.0 * v) for v in np.asarray(n, dtype=np.float64)])
    total = 2.0 * np.pi * q * r_e ** 2 * n * np.exp(bn) * gamma / bn ** (2.0 * n)
    t = np.asarray(soft, dtype=np.float64)[:, None] * np.linspace(0.0, 1.0, 65)[None, :]
    core = np.exp(-bn[:, None] * ((t / r_e[:, None]) ** (1.0 / n[:, None]) - 1.0)) * t
    inner = ((core[:, 1:] + core[:, :-1]) / 2 * np.diff(t, axis=1)).sum(axis=1)  # trapezoid
    total = total - 2.0 * np.pi * q * inner
    return prof / _col(total)


def _scatter_add(planes: list[np.ndarray], idx: np.ndarray, px: np.ndarray, py: np.ndarray,
                 values: list[np.ndarray]) -> None:
    """Add patches of values into (m, S, S) planes at integer pixels (out-of-stamp dropped).

    ``idx`` (k,) alert of each patch; ``px``, ``py`` (k, h, w) pixel columns/rows;
    ``values`` one (k, h, w) array per plane.  Patches of one alert may overlap: the sums
    go through :func:`numpy.bincount`, which adds repeated indices.
    """
    inside = (px >= 0) & (px < STAMP_SIZE) & (py >= 0) & (py < STAMP_SIZE)
    flat = (idx[:, None, None] * _NPIX + py * STAMP_SIZE + px)[inside]
    m = planes[0].shape[0]
    for plane, value in zip(planes, values, strict=True):
        plane += np.bincount(flat, weights=value[inside].astype(np.float64),
                             minlength=m * _NPIX).reshape(plane.shape).astype(np.float32)


# ------------------------------------------------------------------ scene parameters
# Assumptions (not measurable from the shared data), chosen from the ZTF and ALeRCE
# literature and the 51 ALeRCE-labelled real triplets (their templates, differences and
# metadata are described in the module's tests and report).
#
# How far above the detection limit each class is detected, lim − mag ~ 0.02 + Gamma(k, θ)
# [mag]: AGN and asteroids are mostly faint, variable stars reach far above the limit.
# Together they reproduce the measured quartiles of diffmaglim − magpsf (0.70/1.26/2.04).
_DELTA_GAMMA = {AGN: (2.5, 0.50), SN: (2.5, 0.60), VS: (2.0, 1.10), ASTEROID: (2.5, 0.50),
                BOGUS: (2.0, 0.60)}
# Probability that the science flux is above the template's (isdiffpos 't'); first
# detections of AGN are as often fainter as brighter (7 of 10 labelled ALeRCE AGN are 'f').
_P_POSITIVE = np.array([0.45, 1.0, 0.55, 1.0, 0.7])
# |Δflux| / template flux of the variable point source: median and ln spread.  VS in the
# labelled set are 1.5-3 mag brighter in the template than in the difference.
_VAR_RATIO = {AGN: (0.30, 0.7), VS: (0.12, 0.9)}
_SN_NEAR_NUCLEUS = 0.15                # SNe within 0.3 r_e of the host centre
_SN_HOST = 0.92                        # SNe with a host (the rest hostless or too faint)
_SN_FAINT_HOST = 0.30                  # of the hosts, 21-23.5 mag (barely visible)
_AGN_HOST = 0.85                       # AGN with a visible host galaxy
_ASTEROID_TRAILED = 0.15               # trailed by 1-3.5 pixels in the 30 s exposure
_ASTEROID_KNOWN = 0.75                 # with a known solar-system match (ssnamenr)
_BOGUS_ON_GALAXY = 0.20                # cosmic rays / low-SNR blobs landing on a galaxy
# Static sources never subtract perfectly: per-alert flux-scale, PSF-width and
# astrometric mismatches (σ), a few 0.1 % to 1 % of a star's flux left in the difference.
_MISMATCH_SIGMA = {"eps": 0.004, "eta": 0.015, "shift": 0.02}
_GRAIN = (0.003, 0.03)                 # range of the pixel-level residual (relative)
# PS1 neighbours: density at high Galactic latitude [arcsec⁻²] rising ×(1 + 4 e^-|b|/10°)
# towards the plane (chosen so the simulated median distpsnr2 gives MEASURED["ps1_density"]),
# number counts d log N / dm = 0.45 from 9 to 15 mag (bright stars; sets how often a
# saturated star is masked) and 0.2 from 15 mag to the PS1 depth (so that as many sources
# are visible in simulated templates as in real ones: see the report).
_PS1_DENSITY_HIGH_LAT = 0.0007
_COUNT_SLOPES = ((9.0, 15.0, 0.45), (15.0, PS1_DEPTH, 0.2))
_NEIGHBOUR_RADIUS = 45.0               # neighbours drawn within this radius [pixels]
_RENDER_DEPTH = 22.5                   # neighbours fainter than this are catalogue-only [mag]
# Share of exposures through clouds and their extinction range [mag]: 15 of the 355
# real alerts with a zero-point fit read 24-25.5 (the clear-sky median is 26.0).
_CLOUDY = (0.05, 0.3, 2.0)
_BAD_PIXEL_CLUSTERS = 0.004           # alerts with a 7×7-9×9 NaN square inside
_REF_DEPTH = (22.6, 0.3)               # ZTF reference catalogue depth: mean, σ [mag]


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


def _psf_fit(images: np.ndarray, psf: np.ndarray, half: int = 10) -> np.ndarray:
    """PSF-fit flux at the centre, Σ P·I / Σ P² over the central (2·half+1)² finite pixels."""
    lo, hi = CENTRE - half, CENTRE + half + 1
    img = images[:, lo:hi, lo:hi]
    p = psf[:, lo:hi, lo:hi]
    ok = np.isfinite(img)
    num = np.where(ok, p * np.where(ok, img, 0.0), 0.0).sum(axis=(1, 2), dtype=np.float64)
    den = np.where(ok, p * p, 0.0).sum(axis=(1, 2), dtype=np.float64)
    return num / np.maximum(den, 1e-12)


def _mag(flux: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """Magnitude of a flux [DN] for zero points ``zp``."""
    return zp - 2.5 * np.log10(np.maximum(flux, 1e-30))


def _flux(mag: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """Flux [DN] of a magnitude for zero points ``zp``."""
    return 10 ** (-0.4 * (mag - zp))


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


def _add_hosts(rng: np.random.Generator, scene: _Scene, cond: dict[str, np.ndarray],
               cat: _Catalogue, idx: np.ndarray, x: np.ndarray, y: np.ndarray,
               mag: np.ndarray, r_e: np.ndarray, n: np.ndarray,
               catalogue: bool = True) -> None:
    """Render Sérsic galaxies in science and template, their residual in the difference.

    They are recorded in the catalogue unless ``catalogue`` is false (AGN: the caller
    records nucleus + host as one source).
    """
    if len(idx) == 0:
        return
    zp = cond["zp"][idx]
    flux = _flux(mag, zp)
    q = rng.uniform(0.35, 1.0, len(idx))
    theta = rng.uniform(0.0, np.pi, len(idx))
    gal_s = _sersic(x, y, r_e, n, q, theta, cond["fwhm_s"][idx] / _FWHM_PER_SIGMA)
    gal_t = _sersic(x, y, r_e, n, q, theta, cond["fwhm_t"][idx] / _FWHM_PER_SIGMA)
    # The same light in both images (pixel sampling of the two softenings differs).
    gal_t *= _col(gal_s.sum(axis=(1, 2)) / np.maximum(gal_t.sum(axis=(1, 2)), 1e-30))
    f = _col(flux)
    scene.sci[idx] += f * gal_s
    scene.tmpl[idx] += f * gal_t
    # PSF matching removes most of the seeing difference; a few % of it and the
    # flux-scale mismatch stay.
    kappa = _col(rng.normal(0.0, 0.04, len(idx)))
    scene.diff[idx] += f * (kappa * (gal_s - gal_t) + _col(cond["eps"][idx]) * gal_s)
    if catalogue:
        # A PSF fit to a galaxy in the reference catches only part of its light.
        cat.add(idx, x, y, mag, _Catalogue.GALAXY,
                ref_mag=mag + 0.4 + 0.15 * r_e + rng.normal(0, 0.2, len(idx)))


def _host_params(rng: np.random.Generator, k: int, faint_share: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host magnitude [mag], effective radius [pixels] and Sérsic index of k galaxies."""
    faint = rng.random(k) < faint_share
    mag = np.where(faint, rng.uniform(21.0, 23.5, k), rng.uniform(16.0, 21.0, k))
    r_e = np.clip(np.exp(np.log(3.0) + 0.5 * rng.standard_normal(k)), 0.8, 12.0)
    n = np.where(rng.random(k) < 0.65, 1.0, rng.uniform(1.5, 4.0, k))   # mostly discs
    return mag, r_e, n


def _offset_hosts(rng: np.random.Generator, scene: _Scene, cond: dict[str, np.ndarray],
                  cat: _Catalogue, idx: np.ndarray, cx: np.ndarray, cy: np.ndarray,
                  truth: dict[str, np.ndarray], near_share: float) -> None:
    """Hosts of SNe (and of bogus on galaxies), offset from the source at the centre.

    The source lies 0.3-3 r_e from the host centre, within 0.3 r_e for ``near_share``
    of them; 30 % of the hosts are faint (21-23.5 mag).
    """
    k = len(idx)
    if k == 0:
        return
    mag, r_e, n = _host_params(rng, k, _SN_FAINT_HOST)
    u = np.where(rng.random(k) < near_share, rng.uniform(0.0, 0.3, k), rng.uniform(0.3, 3.0, k))
    offset = np.minimum(u * r_e, 25.0)
    phi = rng.uniform(0.0, 2 * np.pi, k)
    hx = cx[idx] - offset * np.cos(phi)
    hy = cy[idx] - offset * np.sin(phi)
    _add_hosts(rng, scene, cond, cat, idx, hx, hy, mag, r_e, n)
    truth["host_x"][idx], truth["host_y"][idx] = hx, hy
    truth["host_mag"][idx], truth["host_re"][idx] = mag, r_e
    truth["host_offset"][idx] = offset


def _variable_point_sources(rng: np.random.Generator, scene: _Scene,
                            cond: dict[str, np.ndarray], labels: np.ndarray,
                            psf: tuple[np.ndarray, ...], cx: np.ndarray, cy: np.ndarray,
                            flux: np.ndarray, sign: np.ndarray,
                            truth: dict[str, np.ndarray]) -> np.ndarray:
    """VS stars and AGN nuclei: in the template, changed by sign·flux in the science.

    Returns the template flux [DN] of the point source (0 for other alerts).  Where the
    saturation cap lowers the template flux of a fading source, ``flux`` is lowered in
    place so the science flux stays positive.
    """
    p_s, u_s, dx_s, dy_s = psf
    static = np.zeros(len(labels))
    idx = np.flatnonzero((labels == VS) | (labels == AGN))
    if len(idx) == 0:
        return static
    med = np.array([_VAR_RATIO[label][0] for label in labels[idx]])
    spread = np.array([_VAR_RATIO[label][1] for label in labels[idx]])
    ratio = med * np.exp(spread * rng.standard_normal(len(idx)))
    # A fading source keeps some flux; the change never hides under the subtraction
    # residual of the static part (ratio ≥ 0.08).
    ratio = np.clip(ratio, 0.08, np.where(sign[idx] < 0, 0.85, 3.0))
    f_static = flux[idx] / ratio
    # Stars brighter than saturation do not make alerts: cap their peak at 80 % of it.
    peak = (np.maximum(_moffat_peak(cond["alpha_s"][idx], cond["beta_s"][idx]) * (1 + ratio),
                       _moffat_peak(cond["alpha_t"][idx], cond["beta_t"][idx])))
    f_static = np.minimum(f_static, (0.8 * SATURATION_DN - cond["sky"][idx]) / peak)
    flux[idx] = np.where(sign[idx] < 0, np.minimum(flux[idx], 0.85 * f_static), flux[idx])
    static[idx] = f_static
    ps = p_s[idx]
    p_t = _moffat(cx[idx], cy[idx], cond["alpha_t"][idx], cond["beta_t"][idx])[0]
    scene.sci[idx] += _col(f_static + sign[idx] * flux[idx]) * ps
    scene.tmpl[idx] += _col(f_static) * p_t
    scene.diff[idx] += _col(sign[idx] * flux[idx]) * ps + _col(f_static) * _static_residual(
        ps, u_s[idx], dx_s[idx], dy_s[idx], cond["alpha_s"][idx], cond["beta_s"][idx],
        cond["eps"][idx], cond["eta"][idx], cond["shift_x"][idx], cond["shift_y"][idx],
        cond["grain"][idx], rng)
    truth["template_flux"][idx] = f_static
    return static


def _trailed_psf(rng: np.random.Generator, cond: dict[str, np.ndarray], idx: np.ndarray,
                 cx: np.ndarray, cy: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Unit-flux PSFs of sources moving ``length`` pixels during the exposure."""
    angle = rng.uniform(0.0, np.pi, len(idx))
    out = np.zeros((len(idx), STAMP_SIZE, STAMP_SIZE), np.float32)
    steps = np.linspace(-0.5, 0.5, 7)
    for t in steps:
        out += _moffat(cx[idx] + t * length * np.cos(angle), cy[idx] + t * length * np.sin(angle),
                       cond["alpha_s"][idx], cond["beta_s"][idx])[0]
    return out / len(steps)


def _scale_to(art: np.ndarray, psf: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-alert factors that give ``art`` a centre PSF-fit flux of ``target`` [DN]."""
    unit = np.abs(_psf_fit(art, psf))
    return target / np.maximum(unit, 1e-9)


def _bogus(rng: np.random.Generator, scene: _Scene, cond: dict[str, np.ndarray],
           cat: _Catalogue, kind: np.ndarray, psf: np.ndarray, cx: np.ndarray,
           cy: np.ndarray, flux: np.ndarray, truth: dict[str, np.ndarray],
           edge_side: np.ndarray) -> None:
    """Render the artifacts of bogus alerts (``kind`` ≥ 0 indexes :data:`BOGUS_KINDS`).

    Each is scaled so that its centre PSF-fit flux is the detection's ``flux``; NaN-edge
    alerts write their band (``side·100 + width``) into ``edge_side``.
    """
    size = STAMP_SIZE
    # Cosmic rays: 1-5 sharp pixels (a hit or a short track), science only, no PSF.
    idx = np.flatnonzero(kind == 0)
    if len(idx):
        k = len(idx)
        art = np.zeros((k, size, size), np.float32)
        npx = rng.integers(1, 6, k)
        start = rng.integers(0, npx)
        step = np.array([(0, 1), (1, 0), (1, 1), (1, -1)])[rng.integers(0, 4, k)]
        rows = np.arange(k)
        for j in range(5):
            on = j < npx
            pos = j - start
            yy = np.clip(CENTRE + pos * step[:, 0], 0, size - 1)
            xx = np.clip(CENTRE + pos * step[:, 1], 0, size - 1)
            value = np.where(pos == 0, 1.0, rng.uniform(0.3, 1.0, k)).astype(np.float32)
            art[rows[on], yy[on], xx[on]] += value[on]
        # Charge shared with the 4 neighbours of each hit, for half of them.
        share = _col(np.where(rng.random(k) < 0.5, rng.uniform(0.05, 0.2, k), 0.0))
        halo = np.zeros_like(art)
        halo[:, 1:, :] += art[:, :-1, :]
        halo[:, :-1, :] += art[:, 1:, :]
        halo[:, :, 1:] += art[:, :, :-1]
        halo[:, :, :-1] += art[:, :, 1:]
        art += share * halo
        art *= _col(_scale_to(art, psf[idx], flux[idx]))
        scene.sci[idx] += art
        scene.diff[idx] += art
    # Bad columns / rows (hot, partly noisy) through the candidate, in the science
    # image (positive subtraction) or the template (negative).
    idx = np.flatnonzero(kind == 1)
    if len(idx):
        k = len(idx)
        vertical = rng.random(k) < 0.6
        lo = np.where(rng.random(k) < 0.4, 0, rng.integers(0, 25, k))
        hi = np.where(rng.random(k) < 0.4, size, rng.integers(38, size + 1, k))
        along = np.arange(size)[None, :]
        line = ((along >= lo[:, None]) & (along < hi[:, None])).astype(np.float32)
        line *= 1.0 + 0.2 * rng.standard_normal((k, size)).astype(np.float32)
        art = np.zeros((k, size, size), np.float32)
        second = np.where(rng.random(k) < 0.4, 0.5, 0.0).astype(np.float32)[:, None]
        art[vertical, :, CENTRE] = line[vertical]
        art[vertical, :, CENTRE + 1] = line[vertical] * second[vertical]
        art[~vertical, CENTRE, :] = line[~vertical]
        art[~vertical, CENTRE + 1, :] = line[~vertical] * second[~vertical]
        art *= _col(_scale_to(art, psf[idx], flux[idx]))
        in_sci = rng.random(k) < 0.7
        scene.sci[idx[in_sci]] += art[in_sci]
        scene.tmpl[idx[~in_sci]] += art[~in_sci]
        scene.diff[idx] += np.where(_col(in_sci) > 0, art, -art)
    # Dipoles: a static star (or galaxy core) misaligned by 0.3-1.2 pixels between the
    # science image and the template; the detection is either lobe.
    idx = np.flatnonzero(kind == 2)
    if len(idx):
        k = len(idx)
        shift = rng.uniform(0.3, 1.2, k)
        phi = rng.uniform(0.0, 2 * np.pi, k)
        ux, uy = np.cos(phi), np.sin(phi)
        lobe_sign = np.where(rng.random(k) < 0.6, 1.0, -1.0)
        lobe = np.maximum(cond["fwhm_s"][idx] / _FWHM_PER_SIGMA, shift / 2)
        mx, my = cx[idx] - lobe_sign * lobe * ux, cy[idx] - lobe_sign * lobe * uy
        sx, sy = mx + shift / 2 * ux, my + shift / 2 * uy
        tx, ty = mx - shift / 2 * ux, my - shift / 2 * uy
        a_s, b_s = cond["alpha_s"][idx], cond["beta_s"][idx]
        p_sci = _moffat(sx, sy, a_s, b_s)[0]
        unit = p_sci - _moffat(tx, ty, a_s, b_s)[0]
        f_static = _scale_to(unit, psf[idx], flux[idx])
        f_static = np.minimum(f_static, _flux(np.full(k, 13.5), cond["zp"][idx]))
        scene.sci[idx] += _col(f_static) * p_sci
        scene.tmpl[idx] += _col(f_static) * _moffat(tx, ty, cond["alpha_t"][idx],
                                                    cond["beta_t"][idx])[0]
        scene.diff[idx] += _col(f_static) * unit
        galaxy = rng.random(k) < 0.3
        kinds = np.where(galaxy, _Catalogue.GALAXY, _Catalogue.STAR)
        mag = _mag(f_static, cond["zp"][idx])
        cat.add(idx, mx, my, mag, kinds, ref_mag=mag + np.where(galaxy, 0.3, 0.0))
        truth["template_flux"][idx] = f_static
    # Saturated stars 5-12 pixels away: masked core, ring and cross (diffraction spikes)
    # left by the subtraction, and a positive residual at the candidate.
    idx = np.flatnonzero(kind == 3)
    if len(idx):
        k = len(idx)
        mag = rng.uniform(9.0, 12.5, k)
        f_star = _flux(mag, cond["zp"][idx])
        r = rng.uniform(5.0, 12.0, k)
        phi = rng.uniform(0.0, 2 * np.pi, k)
        sx, sy = cx[idx] + r * np.cos(phi), cy[idx] + r * np.sin(phi)
        a_s, b_s = cond["alpha_s"][idx], cond["beta_s"][idx]
        p_s, u, dx, dy = _moffat(sx, sy, a_s, b_s)
        p_t = _moffat(sx, sy, cond["alpha_t"][idx], cond["beta_t"][idx])[0]
        width, arm = 0.7, 4.0
        spikes = (np.exp(-np.abs(dy) / width) / (1 + np.abs(dx) / arm) ** 2
                  + np.exp(-np.abs(dx) / width) / (1 + np.abs(dy) / arm) ** 2)
        spike_s = _col(f_star * 3e-4)
        spike_t = spike_s * _col(rng.uniform(0.6, 1.4, k))
        eta = rng.choice([-1.0, 1.0], k) * rng.uniform(0.02, 0.05, k)
        resid = _col(f_star) * _static_residual(
            p_s, u, dx, dy, a_s, b_s, rng.normal(0, 0.01, k), eta,
            rng.normal(0, 0.05, k), rng.normal(0, 0.05, k)) + (spike_s - spike_t) * spikes
        scene.sci[idx] += _col(f_star) * p_s + spike_s * spikes
        scene.tmpl[idx] += _col(f_star) * p_t + spike_t * spikes
        # A halo/ghost blob makes the detection at the candidate positive.
        sigma = rng.uniform(1.0, 2.5, k)
        blob = np.exp(-((_GRID_X - _col(cx[idx])) ** 2 + (_GRID_Y - _col(cy[idx])) ** 2)
                      / _col(2 * sigma ** 2))
        need = np.maximum(flux[idx] - _psf_fit(resid, psf[idx]), 0.3 * flux[idx])
        blob *= _col(need / np.maximum(_psf_fit(blob, psf[idx]), 1e-9))
        scene.sci[idx] += blob
        scene.diff[idx] += resid + blob
        # ZTF masks the saturated core in all three stamps (a square, as in the real ones).
        half = np.clip(np.ceil(a_s * np.sqrt(np.clip(
            (f_star * _moffat_peak(a_s, b_s) / (5 * cond["sigma_s"][idx])) ** (1 / b_s) - 1,
            0, None))), 2, np.maximum(r / np.sqrt(2) - 2, 2)).astype(int)
        near = ((np.abs(_GRID_X - _col(np.round(sx))) <= _col(half))
                & (np.abs(_GRID_Y - _col(np.round(sy))) <= _col(half)))
        scene.mask[idx] |= near
        cat.add(idx, sx, sy, mag, _Catalogue.STAR)
    # NaN edge regions: the candidate 3-9 pixels from a CCD or reference-image edge, on
    # an edge glow / bleed blob, the edge ramping up into the NaN region.
    idx = np.flatnonzero(kind == 4)
    if len(idx):
        k = len(idx)
        side = rng.integers(0, 4, k)                   # 0 left, 1 right, 2 top, 3 bottom
        width = CENTRE - rng.integers(3, 10, k)         # NaN columns/rows: 22-28
        coord = np.where(_col(side < 2) > 0, _GRID_X, _GRID_Y)
        dist = np.where(_col(side % 2 == 0) > 0, coord - _col(width - 1),
                        _col(size - width) - coord)    # > 0 inside the data
        scene.mask[idx] |= dist <= 0
        sigma = rng.uniform(1.5, 3.0, k)
        blob = np.exp(-((_GRID_X - _col(cx[idx])) ** 2 + (_GRID_Y - _col(cy[idx])) ** 2)
                      / _col(2 * sigma ** 2))
        ramp = np.where(dist > 0, np.exp(-dist / 1.5), 0.0) * _col(
            rng.uniform(2.0, 6.0, k) * cond["sigma_s"][idx])
        blob *= _col(_scale_to(blob, psf[idx], flux[idx]))
        art = (blob + ramp).astype(np.float32)
        scene.sci[idx] += art
        scene.diff[idx] += art
        edge_side[idx] = np.array([0, 2, 3, 1])[side] * 100 + width   # band convention
    # Low-significance blobs: 2-3 irregular sub-blobs near the limit, in the science
    # image or (negative subtraction) in the template.
    idx = np.flatnonzero(kind == 5)
    if len(idx):
        k = len(idx)
        art = np.zeros((k, size, size), np.float32)
        psf_sigma = cond["fwhm_s"][idx] / _FWHM_PER_SIGMA
        nsub = rng.integers(2, 4, k)
        for j in range(3):
            on = _col(j < nsub)
            bx = cx[idx] + rng.normal(0, 0.8, k)
            by = cy[idx] + rng.normal(0, 0.8, k)
            width = psf_sigma * rng.uniform(0.6, 1.4, k)
            art += on * _col(rng.uniform(0.3, 1.0, k)) * np.exp(
                -((_GRID_X - _col(bx)) ** 2 + (_GRID_Y - _col(by)) ** 2) / _col(2 * width ** 2))
        art *= _col(_scale_to(art, psf[idx], flux[idx]))
        in_sci = rng.random(k) < 0.7
        scene.sci[idx[in_sci]] += art[in_sci]
        scene.tmpl[idx[~in_sci]] += art[~in_sci]
        scene.diff[idx] += np.where(_col(in_sci) > 0, art, -art)


def _count_magnitudes(rng: np.random.Generator, k: int) -> np.ndarray:
    """Magnitudes [mag] from the continuous broken power law :data:`_COUNT_SLOPES`."""
    weights, level = [], 0.0                    # log10 density at each segment's start
    for lo, hi, slope in _COUNT_SLOPES:
        g = slope * math.log(10.0)
        weights.append(10 ** level * math.expm1(g * (hi - lo)) / g)
        level += slope * (hi - lo)
    segment = rng.choice(len(weights), size=k, p=np.array(weights) / sum(weights))
    lo, hi, slope = (np.array(v)[segment] for v in zip(*_COUNT_SLOPES, strict=True))
    g = slope * math.log(10.0)
    return lo + np.log1p(rng.random(k) * np.expm1(g * (hi - lo))) / g


def _neighbours(rng: np.random.Generator, scene: _Scene, cond: dict[str, np.ndarray],
                cat: _Catalogue, cx: np.ndarray, cy: np.ndarray, gal_lat: np.ndarray) -> None:
    """PS1-like field sources: stars and galaxies, denser towards the Galactic plane.

    Rendered in science and template (with the alert's subtraction mismatch in the
    difference) down to :data:`_RENDER_DEPTH`, catalogued to the PS1 depth; stars
    saturating the science image get their core masked, as ZTF does.
    """
    m = len(cx)
    boost = 1.0 + 16.0 * np.exp(-np.abs(gal_lat) / 12.0)
    area = np.pi * (_NEIGHBOUR_RADIUS * PIXEL_SCALE) ** 2
    counts = rng.poisson(_PS1_DENSITY_HIGH_LAT * boost * area)
    idx = np.repeat(np.arange(m), counts)
    k = len(idx)
    if k == 0:
        return
    mag = _count_magnitudes(rng, k)
    flux = _flux(mag, cond["zp"][idx])
    a_s, b_s = cond["alpha_s"][idx], cond["beta_s"][idx]
    peak = flux * _moffat_peak(a_s, b_s) + cond["sky"][idx]
    r = _NEIGHBOUR_RADIUS * np.sqrt(rng.random(k))
    # Saturated stars are kept away from the candidate (no alert on a masked pixel).
    close = (peak > 0.5 * SATURATION_DN) & (r < 14.0)
    r[close] = rng.uniform(14.0, _NEIGHBOUR_RADIUS, close.sum())
    phi = rng.uniform(0.0, 2 * np.pi, k)
    x, y = cx[idx] + r * np.cos(phi), cy[idx] + r * np.sin(phi)
    star_share = np.where(mag < 17.0, 0.9, 0.35 + 0.6 * np.exp(-np.abs(gal_lat[idx]) / 15.0))
    star = rng.random(k) < star_share
    r_e = rng.uniform(0.6, 2.5, k)
    cat.add(idx, x, y, mag, np.where(star, _Catalogue.STAR, _Catalogue.GALAXY),
            ref_mag=np.where(star, mag, mag + 0.3 + 0.15 * r_e))
    for bright in (False, True):
        sel = np.flatnonzero((mag < _RENDER_DEPTH) & ((mag < 15.0) == bright))
        if len(sel) == 0:
            continue
        half = 30 if bright else 8
        offs = np.arange(-half, half + 1)
        ix, iy = np.rint(x[sel]).astype(int), np.rint(y[sel]).astype(int)
        px = ix[:, None, None] + offs[None, None, :]
        py = iy[:, None, None] + offs[None, :, None]
        gx, gy = px.astype(np.float32), py.astype(np.float32)
        s_st = sel[star[sel]]
        s_gal = sel[~star[sel]]
        for group, is_star in ((s_st, True), (s_gal, False)):
            if len(group) == 0:
                continue
            pos = np.searchsorted(sel, group)
            a = idx[group]
            f = _col(flux[group])
            if is_star:
                p_s, u, dx, dy = _moffat(x[group], y[group], cond["alpha_s"][a],
                                         cond["beta_s"][a], gx[pos], gy[pos])
                p_t = _moffat(x[group], y[group], cond["alpha_t"][a], cond["beta_t"][a],
                              gx[pos], gy[pos])[0]
                resid = _static_residual(p_s, u, dx, dy, cond["alpha_s"][a], cond["beta_s"][a],
                                         cond["eps"][a], cond["eta"][a], cond["shift_x"][a],
                                         cond["shift_y"][a], cond["grain"][a], rng)
            else:
                q = rng.uniform(0.4, 1.0, len(group))
                th = rng.uniform(0.0, np.pi, len(group))
                n = np.ones(len(group))
                p_s = _sersic(x[group], y[group], r_e[group], n, q, th,
                              cond["fwhm_s"][a] / _FWHM_PER_SIGMA, gx[pos], gy[pos])
                p_t = _sersic(x[group], y[group], r_e[group], n, q, th,
                              cond["fwhm_t"][a] / _FWHM_PER_SIGMA, gx[pos], gy[pos])
                p_t *= _col(p_s.sum(axis=(1, 2)) / np.maximum(p_t.sum(axis=(1, 2)), 1e-30))
                resid = _col(cond["eps"][a]) * p_s
            _scatter_add([scene.sci, scene.tmpl, scene.diff], a, px[pos], py[pos],
                         [f * p_s, f * p_t, f * resid])
    # Saturated cores: a NaN square reaching out to the 5σ isophote (at most 11 pixels).
    sat = np.flatnonzero(star & (peak > SATURATION_DN))
    if len(sat):
        a = idx[sat]
        ratio = flux[sat] * _moffat_peak(a_s[sat], b_s[sat]) / (5 * cond["sigma_s"][a])
        half = np.clip(np.ceil(a_s[sat] * np.sqrt(np.clip(ratio ** (1 / b_s[sat]) - 1, 0, None))),
                       3, 11)
        # Never over the candidate: r ≥ 14 pixels for these stars, half ≤ 11.
        box = ((np.abs(_GRID_X - _col(np.rint(x[sat]))) <= _col(half))
               & (np.abs(_GRID_Y - _col(np.rint(y[sat]))) <= _col(half)))
        np.logical_or.at(scene.mask, a, box)


def _random_masks(rng: np.random.Generator, scene: _Scene, skip: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """NaN regions as in real stamps: CCD/reference edges and bad-pixel clusters.

    Border regions (measured share of alerts) are full bands along one side (1-25
    rows/columns), corner rectangles or partial strips; interior clusters are 7×7 to
    9×9 squares away from the candidate.  Alerts in ``skip`` already have their own.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Per alert: the side and width of a full band, encoded ``side·100 + width`` (side
        0: first columns (low x), 1: last rows (high y), 2: last columns, 3: first rows;
        -1 for none), to put the candidate that far from the quadrant edge; and whether
        the template keeps its pixels (3 of the 56 real stamps with NaN).
    """
    m = scene.mask.shape[0]
    size = STAMP_SIZE
    band_code = np.full(m, -1)
    # Bogus NaN-edge alerts and saturated neighbours cut by the border give ≈3 % more;
    # saturated neighbours give most interior masks (≈2.5 % of alerts), bad-pixel
    # clusters the rest.
    border = (rng.random(m) < MEASURED["nan_border_fraction"] - 0.03) & ~skip
    interior = (rng.random(m) < _BAD_PIXEL_CLUSTERS) & ~skip
    for i in np.flatnonzero(border):
        what = rng.random()
        side = int(rng.integers(0, 4))
        if what < 0.4:                                   # full band along one side
            width = int(rng.integers(1, 26))
            band = np.zeros((size, size), bool)
            band[:, :width] = True                       # side 0: low column indices
            scene.mask[i] |= np.rot90(band, k=side)   # 0 low x, 1 high y, 2 high x, 3 low y
            band_code[i] = side * 100 + width
        elif what < 0.75:                                # corner rectangle
            h, w = (int(v) for v in rng.integers(2, 31, 2))
            r0 = 0 if rng.random() < 0.5 else size - h
            c0 = 0 if rng.random() < 0.5 else size - w
            scene.mask[i, r0:r0 + h, c0:c0 + w] = True
        else:                                            # partial strip on one side
            length, depth = int(rng.integers(5, 41)), int(rng.integers(2, 13))
            start = int(rng.integers(0, size - length + 1))
            strip = np.zeros((size, size), bool)
            strip[start:start + length, :depth] = True
            scene.mask[i] |= np.rot90(strip, k=side)
    for i in np.flatnonzero(interior):
        side = int(rng.integers(7, 10))
        while True:
            r0, c0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
            if max(abs(r0 + side / 2 - CENTRE), abs(c0 + side / 2 - CENTRE)) > side / 2 + 4:
                break
        scene.mask[i, r0:r0 + side, c0:c0 + side] = True
    # The candidate pixel and its 8 neighbours always have data (no alert otherwise).
    scene.mask[:, CENTRE - 1:CENTRE + 2, CENTRE - 1:CENTRE + 2] = False
    return band_code, rng.random(m) < 0.05


def _quadrant_position(rng: np.random.Generator, band: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Candidate position on the readout quadrant [pixels], at the edge a NaN band implies.

    A band of ``w`` columns on the low-x side of the stamp means the quadrant starts
    ``w`` columns left of the stamp: xpos = 31.5 - w puts exactly those columns off the
    CCD (:func:`worker.stamps.place_on_grid` pads a clipped stamp the same way).
    """
    m = len(band)
    ny, nx = QUADRANT_SHAPE
    xpos = rng.uniform(CENTRE + 1, nx - CENTRE - 1, m)
    ypos = rng.uniform(CENTRE + 1, ny - CENTRE - 1, m)
    has = band >= 0
    side, width = band // 100, band % 100
    low_x = has & (side == 0)
    high_x = has & (side == 2)
    low_y = has & (side == 3)
    high_y = has & (side == 1)
    xpos[low_x] = CENTRE + 0.5 - width[low_x]
    xpos[high_x] = nx - 1 - CENTRE - 0.5 + width[high_x]
    ypos[low_y] = CENTRE + 0.5 - width[low_y]
    ypos[high_y] = ny - 1 - CENTRE - 0.5 + width[high_y]
    return xpos.astype(np.float32), ypos.astype(np.float32)


def _smooth3(noise: np.ndarray, a: float) -> np.ndarray:
    """Separable [a, 1, a] smoothing, variance kept: correlated noise of a resampled coadd."""
    out = noise.copy()
    out[:, :, 1:] += a * noise[:, :, :-1]
    out[:, :, :-1] += a * noise[:, :, 1:]
    tmp = out.copy()
    out[:, 1:, :] += a * tmp[:, :-1, :]
    out[:, :-1, :] += a * tmp[:, 1:, :]
    return out / (1.0 + 2.0 * a * a)


def _lag1_kernel(rho: float) -> float:
    """Weight ``a`` of the [a, 1, a] kernel whose output has lag-1 correlation ``rho``."""
    # rho = 2a / (1 + 2a²)  →  2 rho a² - 2a + rho = 0, small root.
    return (1.0 - math.sqrt(1.0 - 2.0 * rho * rho)) / (2.0 * rho) if rho > 0 else 0.0


_TRUTH_KEYS = ("host_x", "host_y", "host_mag", "host_re", "host_offset", "template_flux")


def _simulate_chunk(rng: np.random.Generator, labels: np.ndarray
                    ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Simulate the alerts of one chunk.

    Returns
    -------
    (images, fields, truth)
        (m, 63, 63, 3) float32 stamps; candidate fields as arrays; what the scenes hold
        (bogus kind, host geometry, fluxes, conditions) for tests and checks.
    """
    m = len(labels)
    cond = _conditions(rng, m)
    ra, dec, gal_lat, ecl_lat = _sky_positions(rng, labels)
    scene = _Scene.empty(m)
    cat = _Catalogue(rng)
    truth = {key: np.full(m, np.nan) for key in _TRUTH_KEYS}
    truth["template_flux"][:] = 0.0
    # ZTF cuts the stamp on the pixel holding the candidate: sub-pixel offset ±0.5.
    cx = CENTRE + rng.uniform(-0.5, 0.5, m)
    cy = CENTRE + rng.uniform(-0.5, 0.5, m)
    kind = np.full(m, -1)
    bog = labels == BOGUS
    kind[bog] = rng.choice(len(BOGUS_KINDS), size=int(bog.sum()), p=_BOGUS_KIND_FRACTIONS)
    shape = np.array([_DELTA_GAMMA[label][0] for label in range(len(CLASS_NAMES))])[labels]
    scale = np.array([_DELTA_GAMMA[label][1] for label in range(len(CLASS_NAMES))])[labels]
    delta = np.minimum(0.02 + rng.gamma(shape, scale), 6.0)   # ≤ 6 mag above the limit
    low = kind == BOGUS_KINDS.index("low_snr")
    delta[low] = rng.uniform(-0.05, 0.5, int(low.sum()))          # at the limit
    flux = cond["f5"] * 10 ** (0.4 * delta)                       # |Δflux| [DN]
    sign = np.where(rng.random(m) < _P_POSITIVE[labels], 1.0, -1.0)
    psf = _moffat(cx, cy, cond["alpha_s"], cond["beta_s"])
    p_s = psf[0]

    # Point sources that vary: VS stars, AGN nuclei (with their hosts).
    f_nucleus = _variable_point_sources(rng, scene, cond, labels, psf, cx, cy, flux, sign, truth)
    vs = np.flatnonzero(labels == VS)
    cat.add(vs, cx[vs], cy[vs], _mag(f_nucleus[vs], cond["zp"][vs]), _Catalogue.STAR)
    agn = np.flatnonzero(labels == AGN)
    m_nuc = _mag(f_nucleus[agn], cond["zp"][agn])
    hosted = rng.random(len(agn)) < _AGN_HOST
    m_host = np.clip(m_nuc + rng.normal(0.3, 1.2, len(agn)), 15.5, 23.5)
    r_e = np.clip(np.exp(np.log(2.5) + 0.5 * rng.standard_normal(len(agn))), 0.7, 10.0)
    n_ser = rng.uniform(1.0, 4.0, len(agn))
    h = agn[hosted]
    hx = cx[h] + rng.normal(0, 0.1, len(h))
    hy = cy[h] + rng.normal(0, 0.1, len(h))
    _add_hosts(rng, scene, cond, cat, h, hx, hy, m_host[hosted], r_e[hosted], n_ser[hosted],
               catalogue=False)
    truth["host_x"][h], truth["host_y"][h] = hx, hy
    truth["host_mag"][h], truth["host_re"][h] = m_host[hosted], r_e[hosted]
    truth["host_offset"][h] = np.hypot(hx - cx[h], hy - cy[h])
    # One catalogue source for nucleus + host: the nucleus's share of the light a PSF
    # fit sees (the nucleus and ~30 % of the host) sets its PS1 score and magnr.
    f_nuc = _flux(m_nuc, cond["zp"][agn])
    f_host = np.where(hosted, _flux(m_host, cond["zp"][agn]), 0.0)
    share = f_nuc / (f_nuc + 0.3 * f_host)
    cat.add(agn, cx[agn], cy[agn], _mag(f_nuc + f_host, cond["zp"][agn]),
            _Catalogue.NUCLEUS, ref_mag=_mag(f_nuc + 0.3 * f_host, cond["zp"][agn]),
            nuclear_fraction=share)

    # SNe: a new point source, offset on its host.
    sn = np.flatnonzero(labels == SN)
    scene.sci[sn] += _col(flux[sn]) * p_s[sn]
    scene.diff[sn] += _col(flux[sn]) * p_s[sn]
    _offset_hosts(rng, scene, cond, cat, sn[rng.random(len(sn)) < _SN_HOST], cx, cy, truth,
                  _SN_NEAR_NUCLEUS)

    # Asteroids: science only, some trailed.
    ast = np.flatnonzero(labels == ASTEROID)
    trailed = rng.random(len(ast)) < _ASTEROID_TRAILED
    trail = np.zeros(m)
    trail[ast[trailed]] = rng.uniform(1.0, 3.5, int(trailed.sum()))
    still = ast[~trailed]
    scene.sci[still] += _col(flux[still]) * p_s[still]
    scene.diff[still] += _col(flux[still]) * p_s[still]
    moving = ast[trailed]
    if len(moving):
        p_trail = _col(flux[moving]) * _trailed_psf(rng, cond, moving, cx, cy, trail[moving])
        scene.sci[moving] += p_trail
        scene.diff[moving] += p_trail

    # Bogus artifacts, some on galaxies.
    edge_band = np.full(m, -1)
    _bogus(rng, scene, cond, cat, kind, p_s, cx, cy, flux, truth, edge_band)
    on_galaxy = np.flatnonzero(np.isin(kind, (0, 5)) & (rng.random(m) < _BOGUS_ON_GALAXY))
    _offset_hosts(rng, scene, cond, cat, on_galaxy, cx, cy, truth, 0.3)

    _neighbours(rng, scene, cond, cat, cx, cy, gal_lat)
    band, keep_template = _random_masks(rng, scene, skip=kind == BOGUS_KINDS.index("nan_edge"))
    band = np.where(edge_band >= 0, edge_band, band)
    xpos, ypos = _quadrant_position(rng, band)

    # The sign of the detection: drawn for astrophysical sources, what the artifact
    # gives for bogus.  The difference stamp shows it positive (ZTF cuts the negative
    # subtraction from template − science).
    fit0 = _psf_fit(scene.diff, p_s)
    sign = np.where(bog, np.where(fit0 >= 0, 1.0, -1.0), sign)

    # Sky and noise: Poisson noise of the sources on top of the measured background noise.
    gain_inv = MEASURED["noise_law_slope"]                 # 1 / effective gain [DN / e-]
    images = np.empty((m, STAMP_SIZE, STAMP_SIZE, 3), np.float32)
    noise = rng.standard_normal((3, m, STAMP_SIZE, STAMP_SIZE), dtype=np.float32)
    sci_pos = np.maximum(scene.sci, 0.0)
    var = _col(cond["sigma_s"] ** 2) + gain_inv * sci_pos
    images[..., 0] = _col(cond["sky"]) + scene.sci + np.sqrt(var) * noise[0]
    var = _col(cond["sigma_t"] ** 2) + gain_inv * _col(cond["ratio_t"] ** 2) * np.maximum(
        scene.tmpl, 0.0)
    template = (_col(cond["sky_t"]) + scene.tmpl + np.sqrt(var) * _smooth3(
        noise[1], _lag1_kernel(TEMPLATE_LAG1)))
    images[..., 1] = template
    var = _col(cond["sigma_d"] ** 2) + gain_inv * _col(cond["ratio_d"] ** 2) * sci_pos
    images[..., 2] = _col(cond["sky_d"]) + _col(sign) * scene.diff + np.sqrt(var) * noise[2]
    mask = scene.mask
    images[mask] = np.nan
    # In a few real alerts the template covers what the science image lacks.
    restore = np.flatnonzero(keep_template & mask.any(axis=(1, 2)) & (kind != 4))
    images[restore, :, :, 1] = template[restore]

    # PSF photometry of the difference stamp, as the pipeline measures it.
    diff = images[..., 2]
    background = np.nanmedian(diff.reshape(m, -1), axis=1)
    measured = _psf_fit(diff - _col(background), p_s)
    measured = np.maximum(measured, 0.3 * cond["f5"])
    magpsf = _mag(measured, cond["zp"])
    snr = 5.0 * measured / cond["f5"]
    floor = MEASURED["sigmapsf_floor"] * np.exp(0.3 * rng.standard_normal(m))
    sigmapsf = np.sqrt((_MAG_PER_SNR / snr) ** 2 + floor ** 2)

    fields = _candidate_fields(rng, labels, kind, cond, cat, cx, cy, magpsf, sigmapsf,
                               sign, trail, ra, dec)
    fields["xpos"], fields["ypos"] = xpos, ypos
    truth.update(bogus_kind=kind, sign=sign, flux=flux, measured_flux=measured,
                 centre_x=cx, centre_y=cy, gal_lat=gal_lat, ecl_lat=ecl_lat,
                 **{key: cond[key] for key in ("zp", "sky", "sigma_s", "sigma_t", "sigma_d",
                                               "fwhm_s", "fwhm_t", "f5")})
    return images, fields, truth


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
    # Detection history: asteroids are seen once at a position; AGN and VS many times;
    # SNe a few (first detections); bogus mostly once, recurring at bad pixels and stars.
    days = np.maximum(cond["jd"] - JD_ZTF_START, 1.0)
    cadence = np.exp(np.log(0.6) + 0.8 * rng.standard_normal(m))   # coverages per day
    ncov = np.maximum(1, np.rint(days * cadence)).astype(np.int64)
    ndet = np.ones(m, np.int64)
    many = (labels == AGN) | (labels == VS)
    ndet[many] = 1 + np.rint(np.exp(np.log(8.0) + 1.3 * rng.standard_normal(many.sum())))
    sn = labels == SN
    ndet[sn] = rng.geometric(0.5, sn.sum())
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


_CHUNK = 512                           # alerts rendered at once (bounded memory: ~100 MB)
_INT_FIELDS = frozenset({"fid", "pid", "programid", "rcid", "field", "ndethist", "ncovhist"})
_STR_FIELDS = frozenset({"isdiffpos", "ssnamenr"})


def _records(fields: dict[str, np.ndarray]) -> list[dict]:
    """Candidate dicts: the keys of :func:`worker.packets.default_candidate`, in order."""
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


def simulate_with_truth(n: int, seed: int,
                        class_fractions: Sequence[float] | None = SEED_CLASS_FRACTIONS
                        ) -> tuple[SimulatedStamps, dict[str, np.ndarray]]:
    """:func:`simulate`, also returning what each scene holds.

    Returns
    -------
    (SimulatedStamps, dict[str, numpy.ndarray])
        The alerts, and per alert: ``bogus_kind`` (index into :data:`BOGUS_KINDS`, -1
        for other classes), ``sign`` (+1 science brighter than template), ``flux`` (the
        drawn |Δflux| [DN]) and ``measured_flux`` (PSF fit on the stamp [DN]),
        ``template_flux`` (the template flux of a VS/AGN point source or a dipole's
        static source [DN]), ``host_x``/``host_y`` (host centre [pixels], NaN without a
        host), ``host_mag``, ``host_re`` [pixels], ``host_offset`` [pixels],
        ``centre_x``/``centre_y`` (the source [pixels]), ``gal_lat``/``ecl_lat`` [deg],
        ``zp`` (zero point [mag]: magnitude = zp − 2.5 log10(flux [DN])),
        ``sky``, ``sigma_s``/``sigma_t``/``sigma_d`` (background noise [DN]),
        ``fwhm_s``/``fwhm_t`` (Moffat FWHM [pixels]) and ``f5`` (flux at diffmaglim [DN]).
    """
    if n < 0:
        raise ValueError(f"n must be ≥ 0, got {n}")
    counts = _class_counts(n, class_fractions)
    seq = np.random.SeedSequence(seed)
    label_seed, *chunk_seeds = seq.spawn(1 + -(-n // _CHUNK))
    labels = np.random.default_rng(label_seed).permutation(
        np.repeat(np.arange(len(CLASS_NAMES), dtype=np.int64), counts))
    images = np.empty((n, STAMP_SIZE, STAMP_SIZE, 3), np.float32)
    candidates: list[dict] = []
    truths: list[dict[str, np.ndarray]] = []
    for c, chunk_seed in enumerate(chunk_seeds):
        lo, hi = c * _CHUNK, min(n, (c + 1) * _CHUNK)
        chunk_images, fields, truth = _simulate_chunk(np.random.default_rng(chunk_seed),
                                                      labels[lo:hi])
        images[lo:hi] = chunk_images
        candidates.extend(_records(fields))
        truths.append(truth)
    truth = ({key: np.concatenate([t[key] for t in truths]) for key in truths[0]}
             if truths else {})
    return SimulatedStamps(images=images, labels=labels, candidates=candidates), truth


def simulate(n: int, seed: int,
             class_fractions: Sequence[float] | None = SEED_CLASS_FRACTIONS) -> SimulatedStamps:
    """Simulate ``n`` labelled ZTF alert stamp triplets.

    Parameters
    ----------
    n : int
        Number of alerts.
    seed : int
        Seed: the same ``(n, seed, class_fractions)`` gives identical output.
    class_fractions : sequence of float, optional
        Relative frequency of each class of :data:`CLASS_NAMES` (normalised; the counts
        are exact to one alert).  Default: the ALeRCE 2020 imbalance
        (:data:`SEED_CLASS_FRACTIONS`); ``None``: balanced.

    Returns
    -------
    SimulatedStamps
        Images (n, 63, 63, 3) float32 [DN], labels (n,) int64, candidates.

    Notes
    -----
    About 1 ms per alert on one core of the 2-core development machine (20,000 alerts
    in 21 s); memory: 48 kB per alert for the images plus ~150 MB of working space.
    """
    return simulate_with_truth(n, seed, class_fractions)[0]


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
        :class:`worker.alerts.AlertDecoder`.
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


# ---------------------------------------------------------------- measuring real stamps
# The same code measures real and simulated stamps, so the constants above, the real
# data and the simulator's output are compared like for like.

_FIT_SIGMAS = np.linspace(0.4, 3.0, 131)  # Gaussian sigma grid of the PSF fits [pixels]
_FIT_HALF = 7                             # fit window half-side [pixels]


def _robust_sigma(values: np.ndarray, axis: Any = None) -> np.ndarray:
    """1.4826 × median absolute deviation (σ of a Gaussian), ignoring NaN."""
    med = np.nanmedian(values, axis=axis, keepdims=True)
    return 1.4826 * np.nanmedian(np.abs(values - med), axis=axis)


def _theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Robust straight line ``y = a·x + b``: median of pairwise slopes (Theil-Sen)."""
    i, j = np.triu_indices(len(x), 1)
    dx = x[j] - x[i]
    keep = np.abs(dx) > 1e-9 * max(float(np.ptp(x)), 1e-300)
    a = float(np.median((y[j] - y[i])[keep] / dx[keep]))
    return a, float(np.median(y - a * x))


def _gaussian_fits(images: np.ndarray, background: np.ndarray,
                   noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit a circular Gaussian plus constant at the centre of each stamp.

    Parameters
    ----------
    images : numpy.ndarray
        (N, S, S) stamps [DN], NaN allowed.
    background, noise : numpy.ndarray
        (N,) background level and robust noise of each stamp [DN].

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, numpy.ndarray)
        Total flux of the fitted Gaussian [DN], its FWHM [pixels] and the peak
        signal-to-noise ratio of the centre (max of the central 5×5, in noise units).
    """
    n, size = images.shape[:2]
    c = size // 2
    win = np.nan_to_num(images[:, c - _FIT_HALF:c + _FIT_HALF + 1,
                               c - _FIT_HALF:c + _FIT_HALF + 1] - background[:, None, None])
    valid = np.isfinite(images[:, c - _FIT_HALF:c + _FIT_HALF + 1,
                               c - _FIT_HALF:c + _FIT_HALF + 1])
    core = win[:, _FIT_HALF - 2:_FIT_HALF + 3, _FIT_HALF - 2:_FIT_HALF + 3]
    peak_snr = core.max(axis=(1, 2)) / np.maximum(noise, 1e-6)
    # Centroid from the positive part of the central 5×5: the fit is done around it.
    grid = np.arange(-2, 3, dtype=np.float64)
    weight = np.clip(core, 0, None)
    total = np.maximum(weight.sum(axis=(1, 2)), 1e-12)
    cy = (weight.sum(axis=2) * grid).sum(axis=1) / total
    cx = (weight.sum(axis=1) * grid).sum(axis=1) / total
    offs = np.arange(-_FIT_HALF, _FIT_HALF + 1, dtype=np.float64)
    r2 = ((offs[None, :, None] - cy[:, None, None]) ** 2
          + (offs[None, None, :] - cx[:, None, None]) ** 2)
    best_rss = np.full(n, np.inf)
    best_sigma = np.full(n, np.nan)
    best_amp = np.zeros(n)
    w = valid.astype(np.float64)
    npix = w.sum(axis=(1, 2))
    sy = (w * win).sum(axis=(1, 2))
    syy = (w * win * win).sum(axis=(1, 2))
    for sigma in _FIT_SIGMAS:
        # Linear least squares for (amplitude, constant) in closed form, every stamp at once.
        p = np.exp(-r2 / (2 * sigma * sigma)) * w
        sp = p.sum(axis=(1, 2))
        spp = (p * p).sum(axis=(1, 2))
        spy = (p * win).sum(axis=(1, 2))
        det = spp * npix - sp * sp
        amp = (spy * npix - sp * sy) / np.where(det > 0, det, np.inf)
        const = (sy - amp * sp) / np.maximum(npix, 1)
        rss = syy - 2 * amp * spy - 2 * const * sy + amp * amp * spp + 2 * amp * const * sp \
            + const * const * npix
        better = rss < best_rss
        best_rss = np.where(better, rss, best_rss)
        best_sigma = np.where(better, sigma, best_sigma)
        best_amp = np.where(better, amp, best_amp)
    flux = best_amp * 2 * np.pi * best_sigma ** 2
    return flux, _FWHM_PER_SIGMA * best_sigma, peak_snr


def _nan_kinds(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which stamps have NaN pixels touching the border, and which only inside.

    Parameters
    ----------
    images : numpy.ndarray
        (N, S, S, 3) stamps.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Boolean (N,) arrays: NaN region touching the stamp border; NaN only inside.
    """
    nan = np.isnan(images).any(axis=3)
    border = (nan[:, 0, :].any(axis=1) | nan[:, -1, :].any(axis=1)
              | nan[:, :, 0].any(axis=1) | nan[:, :, -1].any(axis=1))
    return border, nan.any(axis=(1, 2)) & ~border


def _candidate_array(candidates: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
    """One candidate field over all alerts as float64, NaN where null or -999."""
    values = np.array([c.get(name) if isinstance(c.get(name), (int, float)) else np.nan
                       for c in candidates], dtype=np.float64)
    values[values == -999.0] = np.nan
    return values


def stamp_statistics(images: np.ndarray, candidates: Sequence[Mapping[str, Any]],
                     groups: Sequence[Any] | None = None) -> dict[str, float]:
    """Background, noise, seeing, photometry and NaN statistics of stamp triplets.

    The statistics behind the simulator's measured constants; run on real alerts
    (:func:`measure_real_statistics`) and on simulated ones to compare them.

    Parameters
    ----------
    images : numpy.ndarray
        (N, 63, 63, 3) float32 science/template/difference [DN], NaN allowed.
    candidates : sequence of Mapping
        The N candidate records (``fwhm``, ``magpsf``, ``sigmapsf``, ``diffmaglim``,
        ``distpsnr2``, ``sgscore1-3`` are read).
    groups : sequence, optional
        One key per alert (e.g. the exposure: ``(jd, fid)``).  Alerts of one exposure
        share sky and noise, so the background statistics are taken over per-group
        medians, each exposure counting once.

    Returns
    -------
    dict[str, float]
        Keys as in :data:`MEASURED`; units there.
    """
    images = np.asarray(images, dtype=np.float64)
    n = len(images)
    flat = images.reshape(n, -1, 3)
    med = np.nanmedian(flat, axis=1)                   # (N, 3) background [DN]
    sig = _robust_sigma(flat, axis=1)                  # (N, 3) robust noise [DN]
    # Lag-1 correlation of the template background (resampling correlates its noise).
    tmpl = (images[..., 1] - med[:, 1, None, None]) / np.maximum(sig[:, 1], 1e-9)[:, None, None]
    tmpl = np.where(np.abs(tmpl) < 3, tmpl, np.nan)    # background pixels only
    lag1 = (np.nanmean(tmpl[:, :, 1:] * tmpl[:, :, :-1], axis=(1, 2))
            / np.nanmean(tmpl * tmpl, axis=(1, 2)))
    per_alert = np.column_stack([med, sig, lag1])
    if groups is not None:
        keys: dict[Any, list[int]] = {}
        for i, key in enumerate(groups):
            keys.setdefault(key, []).append(i)
        per_exp = np.array([np.nanmedian(per_alert[idx], axis=0) for idx in keys.values()])
    else:
        per_exp = per_alert
    sky, tsky, dsky = per_exp[:, 0], per_exp[:, 1], per_exp[:, 2]
    ssig, tsig, dsig = per_exp[:, 3], per_exp[:, 4], per_exp[:, 5]
    log_sky = np.log10(sky[sky > 1])
    # Noise law sigma² = a·sky + b over ordinary skies (a few exposures have odd scaling).
    law = (sky > 30) & (sky < 1000)
    a, b = _theil_sen(sky[law], ssig[law] ** 2)
    law_sigma = np.sqrt(np.clip(a * sky[law] + b, 1e-6, None))
    tratio, dratio = tsig / ssig, dsig / ssig

    fwhm = _candidate_array(candidates, "fwhm")
    magpsf = _candidate_array(candidates, "magpsf")
    sigmapsf = _candidate_array(candidates, "sigmapsf")
    limit = _candidate_array(candidates, "diffmaglim")
    dist2 = _candidate_array(candidates, "distpsnr2")
    sg = np.concatenate([_candidate_array(candidates, f"sgscore{k}") for k in (1, 2, 3)])

    # Photometric calibration from the difference: Gaussian PSF fit at the centre.
    flux, psf_fwhm, snr = _gaussian_fits(images[..., 2], med[:, 2], sig[:, 2])
    good = (snr > 8) & (flux > 0) & np.isfinite(magpsf)
    zp = magpsf[good] + 2.5 * np.log10(flux[good])
    zero_point = float(np.median(zp))
    psf_sigma = psf_fwhm[good] / _FWHM_PER_SIGMA
    pixel_limit = zero_point - 2.5 * np.log10(5 * sig[good, 2] * np.sqrt(4 * np.pi) * psf_sigma)
    delta = limit - magpsf
    bright = np.isfinite(delta) & (delta > 1.5) & np.isfinite(sigmapsf)
    floor = np.sqrt(np.clip(sigmapsf[bright] ** 2
                            - (_MAG_PER_SNR / (5 * 10 ** (0.4 * delta[bright]))) ** 2, 0, None))
    # Seeing of the template: Gaussian fit where the template has a bright centre.
    tflux, tfwhm, tsnr = _gaussian_fits(images[..., 1], med[:, 1], sig[:, 1])
    tgood = (tsnr > 30) & (tflux > 0)
    border, interior = _nan_kinds(images)
    finite_delta = delta[np.isfinite(delta)]
    return {
        "sky_log10_median": float(np.median(log_sky)),
        "sky_log10_spread": float((np.percentile(log_sky, 84) - np.percentile(log_sky, 16)) / 2),
        "noise_law_slope": float(a),
        "noise_law_intercept": float(b),
        "noise_law_scatter": float(_robust_sigma(np.log(ssig[law] / law_sigma))),
        "template_sky_ratio": float(np.median(tsky / sky)),
        "template_noise_ratio": float(np.median(tratio)),
        "template_noise_ratio_spread": float(_robust_sigma(np.log(tratio))),
        "template_lag1_correlation": float(np.nanmedian(per_exp[:, 6])),
        "difference_noise_ratio": float(np.median(dratio)),
        "difference_noise_ratio_spread": float(_robust_sigma(dratio)),
        "difference_sky": float(np.median(dsky)),
        "fwhm_ln_median": float(np.nanmedian(np.log(fwhm))),
        "fwhm_ln_spread": float(_robust_sigma(np.log(fwhm))),
        "psf_fwhm_median": float(np.median(psf_fwhm[good])),
        "template_psf_fwhm_median": float(np.median(tfwhm[tgood])),
        "zero_point": zero_point,
        "diffmaglim_offset": float(np.median(limit[good] - pixel_limit)),
        "sigmapsf_floor": float(np.median(floor)),
        "lim_minus_mag_p25": float(np.percentile(finite_delta, 25)),
        "lim_minus_mag_p50": float(np.percentile(finite_delta, 50)),
        "lim_minus_mag_p75": float(np.percentile(finite_delta, 75)),
        "nan_alert_fraction": float(np.isnan(images).any(axis=(1, 2, 3)).mean()),
        "nan_border_fraction": float(border.mean()),
        "nan_interior_fraction": float(interior.mean()),
        "ps1_density": float(np.log(2) / (np.pi * np.nanmedian(dist2) ** 2)),
        "sgscore_unknown_fraction": float(np.mean(sg[np.isfinite(sg)] == 0.5)),
    }


def load_real_alerts(data_dir: str | Path) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Decode the real ZTF alerts of the shared data folder.

    Parameters
    ----------
    data_dir : str or Path
        The shared data folder (``ztf-alerts*/**/*.avro`` are read).

    Returns
    -------
    (numpy.ndarray, list[dict])
        (N, 63, 63, 3) float32 stamps of every decodable alert with three full-size
        cutouts (one per candid: broker re-writes of the same alert count once), and
        their candidate records.
    """
    from worker.alerts import Alert, AlertDecoder
    from worker.errors import AlertError

    decoder = AlertDecoder()
    seen: set[int] = set()
    images, candidates = [], []
    for path in sorted(Path(data_dir).glob("ztf-alerts*/**/*.avro")):
        for item in decoder.iter_records(path.read_bytes()):
            if not isinstance(item, Alert) or item.candid in seen:
                continue
            try:
                stamps = [decode_stamp(blob) for blob in item.cutouts]
            except AlertError:
                continue
            if any(s.shape != (STAMP_SIZE, STAMP_SIZE) for s in stamps):
                continue
            # A few real templates hold float32-min placeholders (-3.4e38): bad pixels.
            stack = np.stack(stamps, axis=-1)
            stack[np.abs(stack) > 1e30] = np.nan
            seen.add(item.candid)
            images.append(stack)
            candidates.append(dict(item.candidate))
    return np.stack(images).astype(np.float32), candidates


def measure_real_statistics(data_dir: str | Path) -> dict[str, float]:
    """:func:`stamp_statistics` of the real alerts, background taken per exposure.

    Parameters
    ----------
    data_dir : str or Path
        The shared data folder.

    Returns
    -------
    dict[str, float]
        The statistics the constants of :data:`MEASURED` were taken from.
    """
    images, candidates = load_real_alerts(data_dir)
    groups = [(round(float(c["jd"]), 4), c.get("fid")) for c in candidates]
    return stamp_statistics(images, candidates, groups)
