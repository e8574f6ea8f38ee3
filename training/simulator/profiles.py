"""PSF and galaxy profiles (Moffat, Sérsic), subtraction residuals and PSF photometry.

Every profile is evaluated for many alerts at once: parameters are (m,) arrays and the
images (m, 63, 63) float32, or (m, h, w) patches on a given pixel grid.
"""

from __future__ import annotations

import math

import numpy as np

from training.simulator.constants import CENTRE, STAMP_SIZE

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
