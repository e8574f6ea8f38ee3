"""The simulation itself: one chunk of scenes at a time, :func:`simulate`.

:func:`_simulate_chunk` draws the conditions and positions, the detection's flux and
sign, renders each class (:mod:`training.simulator.sources`,
:mod:`training.simulator.bogus`), the field (:mod:`training.simulator.artifacts`) and
builds the candidate records (:mod:`training.simulator.candidates`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.simulator.artifacts import (
    _neighbours,
    _noisy_images,
    _quadrant_position,
    _random_masks,
)
from training.simulator.bogus import _bogus
from training.simulator.candidates import _candidate_fields, _photometry, _records
from training.simulator.constants import (
    _BOGUS_KIND_FRACTIONS,
    AGN,
    ASTEROID,
    BOGUS,
    BOGUS_KINDS,
    CENTRE,
    SEED_CLASS_FRACTIONS,
    SN,
    STAMP_SIZE,
    VS,
)
from training.simulator.profiles import _moffat, _psf_fit
from training.simulator.scene import _Catalogue, _class_counts, _conditions, _Scene, _sky_positions
from training.simulator.sources import _asteroids, _supernovae, _variable_stars_and_agn
from worker.model.artifact import CLASS_NAMES  # label = index


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
        Per alert, every field of :func:`worker.decode.packets.default_candidate`, consistent
        with the class and the stamps.
    """

    images: np.ndarray
    labels: np.ndarray
    candidates: list[dict]

    def __len__(self) -> int:
        return len(self.labels)


# How far above the detection limit each class is detected, lim − mag ~ 0.02 + Gamma(k, θ)
# [mag]: AGN and asteroids are mostly faint, variable stars reach far above the limit.
# Together they reproduce the measured quartiles of diffmaglim − magpsf (0.70/1.26/2.04).
_DELTA_GAMMA = {AGN: (2.5, 0.50), SN: (2.5, 0.60), VS: (2.0, 1.10), ASTEROID: (2.5, 0.50),
                BOGUS: (2.0, 0.60)}
# Probability that the science flux is above the template's (isdiffpos 't'); first
# detections of AGN are as often fainter as brighter (7 of 10 labelled ALeRCE AGN are 'f').
_P_POSITIVE = np.array([0.45, 1.0, 0.55, 1.0, 0.7])

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

    # Each class in its own place (training.simulator.sources, .bogus); the order of
    # the calls is the order of the random draws: keep it for reproducible output.
    _variable_stars_and_agn(rng, scene, cond, cat, labels, psf, cx, cy, flux, sign, truth)
    _supernovae(rng, scene, cond, cat, labels, p_s, cx, cy, flux, truth)
    trail = _asteroids(rng, scene, cond, labels, p_s, cx, cy, flux)
    # Bogus artifacts, some on galaxies (NaN-edge alerts write their band into edge_band).
    edge_band = np.full(m, -1)
    _bogus(rng, scene, cond, cat, kind, p_s, cx, cy, flux, truth, edge_band)

    _neighbours(rng, scene, cond, cat, cx, cy, gal_lat)
    band, keep_template = _random_masks(rng, scene, skip=kind == BOGUS_KINDS.index("nan_edge"))
    band = np.where(edge_band >= 0, edge_band, band)
    xpos, ypos = _quadrant_position(rng, band)

    # The sign of the detection: drawn for astrophysical sources, what the artifact
    # gives for bogus.  The difference stamp shows it positive (ZTF cuts the negative
    # subtraction from template − science).
    fit0 = _psf_fit(scene.diff, p_s)
    sign = np.where(bog, np.where(fit0 >= 0, 1.0, -1.0), sign)

    images = _noisy_images(rng, scene, cond, sign, kind, keep_template)
    measured, magpsf, sigmapsf = _photometry(rng, images, p_s, cond)

    fields = _candidate_fields(rng, labels, kind, cond, cat, cx, cy, magpsf, sigmapsf,
                               sign, trail, ra, dec)
    fields["xpos"], fields["ypos"] = xpos, ypos
    truth.update(bogus_kind=kind, sign=sign, flux=flux, measured_flux=measured,
                 centre_x=cx, centre_y=cy, gal_lat=gal_lat, ecl_lat=ecl_lat,
                 **{key: cond[key] for key in ("zp", "sky", "sigma_s", "sigma_t", "sigma_d",
                                               "fwhm_s", "fwhm_t", "f5")})
    return images, fields, truth


_CHUNK = 512                           # alerts rendered at once (bounded memory: ~100 MB)


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
