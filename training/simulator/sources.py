"""The astrophysical classes: AGN, SN, variable stars and asteroids, with their hosts.

* **AGN** and **VS**: a variable point source present in the template
  (:func:`_variable_point_sources`, both classes drawn together), catalogued as a star
  (VS) or as nucleus + host galaxy (AGN, :func:`_variable_stars_and_agn`).
* **SN**: a new point source on an offset Sérsic host (:func:`_supernovae`).
* **asteroid**: a point source in the science image only, some trailed (:func:`_asteroids`).

Host galaxies (:func:`_add_hosts`, :func:`_offset_hosts`) are shared with the bogus
alerts that land on a galaxy.  Each function adds to the noise-free planes of a
:class:`~training.simulator.scene._Scene` and records what it put in the
:class:`~training.simulator.scene._Catalogue`.
"""

from __future__ import annotations

import numpy as np

from training.simulator.constants import (
    _FWHM_PER_SIGMA,
    AGN,
    ASTEROID,
    SATURATION_DN,
    SN,
    STAMP_SIZE,
    VS,
)
from training.simulator.profiles import (
    _col,
    _flux,
    _mag,
    _moffat,
    _moffat_peak,
    _sersic,
    _static_residual,
)
from training.simulator.scene import _Catalogue, _Scene

# Assumptions (not measurable from the shared data), chosen from the ZTF and ALeRCE
# literature and the 51 ALeRCE-labelled real triplets (their templates, differences and
# metadata are described in the simulator's tests and report).
#
# |Δflux| / template flux of the variable point source: median and ln spread.  VS in the
# labelled set are 1.5-3 mag brighter in the template than in the difference.
_VAR_RATIO = {AGN: (0.30, 0.7), VS: (0.12, 0.9)}
_SN_NEAR_NUCLEUS = 0.15                # SNe within 0.3 r_e of the host centre
_SN_HOST = 0.92                        # SNe with a host (the rest hostless or too faint)
_SN_FAINT_HOST = 0.30                  # of the hosts, 21-23.5 mag (barely visible)
_AGN_HOST = 0.85                       # AGN with a visible host galaxy
_ASTEROID_TRAILED = 0.15               # trailed by 1-3.5 pixels in the 30 s exposure


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


def _variable_stars_and_agn(rng: np.random.Generator, scene: _Scene,
                            cond: dict[str, np.ndarray], cat: _Catalogue, labels: np.ndarray,
                            psf: tuple[np.ndarray, ...], cx: np.ndarray, cy: np.ndarray,
                            flux: np.ndarray, sign: np.ndarray,
                            truth: dict[str, np.ndarray]) -> None:
    """Point sources that vary: VS stars, AGN nuclei (with their hosts), catalogued.

    ``flux`` (|Δflux| [DN]) may be lowered in place for fading sources whose template
    flux the saturation cap lowers (see :func:`_variable_point_sources`).
    """
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


def _supernovae(rng: np.random.Generator, scene: _Scene, cond: dict[str, np.ndarray],
                cat: _Catalogue, labels: np.ndarray, p_s: np.ndarray, cx: np.ndarray,
                cy: np.ndarray, flux: np.ndarray, truth: dict[str, np.ndarray]) -> None:
    """SNe: a new point source of ``flux`` [DN], offset on its host."""
    sn = np.flatnonzero(labels == SN)
    scene.sci[sn] += _col(flux[sn]) * p_s[sn]
    scene.diff[sn] += _col(flux[sn]) * p_s[sn]
    _offset_hosts(rng, scene, cond, cat, sn[rng.random(len(sn)) < _SN_HOST], cx, cy, truth,
                  _SN_NEAR_NUCLEUS)


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


def _asteroids(rng: np.random.Generator, scene: _Scene, cond: dict[str, np.ndarray],
               labels: np.ndarray, p_s: np.ndarray, cx: np.ndarray, cy: np.ndarray,
               flux: np.ndarray) -> np.ndarray:
    """Asteroids: science image only, some trailed.

    Returns
    -------
    numpy.ndarray
        (m,) trail length [pixels], 0 for alerts that are not trailed asteroids.
    """
    m = len(labels)
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
    return trail
