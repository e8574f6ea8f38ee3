"""Bogus alerts: the artifact kinds of :data:`~training.simulator.constants.BOGUS_KINDS`.

Cosmic rays, bad columns/rows, misalignment dipoles, saturated-star residuals, NaN
edge regions and low-SNR blobs, each scaled so that the PSF-fit flux at the candidate
is the detection's flux; some cosmic rays and blobs land on a galaxy.
"""

from __future__ import annotations

import numpy as np

from training.simulator.constants import _FWHM_PER_SIGMA, CENTRE, STAMP_SIZE
from training.simulator.profiles import (
    _GRID_X,
    _GRID_Y,
    _col,
    _flux,
    _mag,
    _moffat,
    _moffat_peak,
    _psf_fit,
    _static_residual,
)
from training.simulator.scene import _Catalogue, _Scene
from training.simulator.sources import _offset_hosts

_BOGUS_ON_GALAXY = 0.20                # cosmic rays / low-SNR blobs landing on a galaxy


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
    Cosmic rays and low-SNR blobs then land on a galaxy (an offset host) for a share
    :data:`_BOGUS_ON_GALAXY` of them.
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
    # Some cosmic rays and low-SNR blobs land on a galaxy.
    m = len(kind)
    on_galaxy = np.flatnonzero(np.isin(kind, (0, 5)) & (rng.random(m) < _BOGUS_ON_GALAXY))
    _offset_hosts(rng, scene, cond, cat, on_galaxy, cx, cy, truth, 0.3)
