"""Measuring stamps: the statistics behind :data:`MEASURED`, on real and simulated alerts.

The same code measures real and simulated stamps, so the simulator's constants, the
real data and the simulator's output are compared like for like.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.simulator.constants import _FWHM_PER_SIGMA, _MAG_PER_SNR, STAMP_SIZE
from worker.prepare.stamps import decode_stamp

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
    from worker.decode.alerts import Alert, AlertDecoder
    from worker.decode.errors import AlertError

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
