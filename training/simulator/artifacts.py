"""What every field adds around the candidate: neighbours, NaN masks and noise.

PS1-like neighbour stars and galaxies (:func:`_neighbours`), the NaN regions of real
stamps and the candidate's position on the readout quadrant they imply
(:func:`_random_masks`, :func:`_quadrant_position`), and the sky, background and
Poisson noise that turn the noise-free planes into stamps (:func:`_noisy_images`).
"""

from __future__ import annotations

import math

import numpy as np

from training.simulator.constants import (
    _FWHM_PER_SIGMA,
    BOGUS_KINDS,
    CENTRE,
    MEASURED,
    PIXEL_SCALE,
    PS1_DEPTH,
    QUADRANT_SHAPE,
    SATURATION_DN,
    STAMP_SIZE,
    TEMPLATE_LAG1,
)
from training.simulator.profiles import (
    _GRID_X,
    _GRID_Y,
    _col,
    _flux,
    _moffat,
    _moffat_peak,
    _scatter_add,
    _sersic,
    _static_residual,
)
from training.simulator.scene import _Catalogue, _Scene

# PS1 neighbours: density at high Galactic latitude [arcsec⁻²] rising ×(1 + 4 e^-|b|/10°)
# towards the plane (chosen so the simulated median distpsnr2 gives MEASURED["ps1_density"]),
# number counts d log N / dm = 0.45 from 9 to 15 mag (bright stars; sets how often a
# saturated star is masked) and 0.2 from 15 mag to the PS1 depth (so that as many sources
# are visible in simulated templates as in real ones: see the report).
_PS1_DENSITY_HIGH_LAT = 0.0007
_COUNT_SLOPES = ((9.0, 15.0, 0.45), (15.0, PS1_DEPTH, 0.2))
_NEIGHBOUR_RADIUS = 45.0               # neighbours drawn within this radius [pixels]
_RENDER_DEPTH = 22.5                   # neighbours fainter than this are catalogue-only [mag]
_BAD_PIXEL_CLUSTERS = 0.004           # alerts with a 7×7-9×9 NaN square inside


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
    CCD (:func:`worker.prepare.stamps.place_on_grid` pads a clipped stamp the same way).
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


def _noisy_images(rng: np.random.Generator, scene: _Scene, cond: dict[str, np.ndarray],
                  sign: np.ndarray, kind: np.ndarray, keep_template: np.ndarray
                  ) -> np.ndarray:
    """Sky and noise: Poisson noise of the sources on top of the measured background noise.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random numbers.
    scene : _Scene
        The noise-free planes [DN] and the NaN mask.
    cond : dict[str, numpy.ndarray]
        The conditions of :func:`training.simulator.scene._conditions`.
    sign : numpy.ndarray
        (m,) +1 or -1: the difference shows ``sign`` × the difference plane, so that the
        detection is positive.
    kind : numpy.ndarray
        (m,) bogus kind (index into :data:`BOGUS_KINDS`, -1 for other classes).
    keep_template : numpy.ndarray
        (m,) bool: the template keeps its pixels where the science image is masked.

    Returns
    -------
    numpy.ndarray
        (m, 63, 63, 3) float32 science, template, difference [DN], NaN where masked.
    """
    m = len(sign)
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
    restore = np.flatnonzero(keep_template & mask.any(axis=(1, 2))
                             & (kind != BOGUS_KINDS.index("nan_edge")))
    images[restore, :, :, 1] = template[restore]
    return images
