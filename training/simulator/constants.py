"""The simulator's constants: classes, stamp geometry, measured and derived parameters.

:data:`MEASURED` holds the statistics of the real alerts of the shared data folder
(re-measured by :func:`training.simulator.statistics.measure_real_statistics`); the
derived parameters below it are what the simulator puts in so that its stamps measure
the same.
"""

from __future__ import annotations

import math

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
# Re-measured and compared by tests/training/test_simulator.py when the data is present.
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
# stamp_statistics reproduce MEASURED (checked by tests/training/test_simulator.py).
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

