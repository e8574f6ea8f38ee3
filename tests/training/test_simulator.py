"""training.simulator: deterministic, realistic labelled stamps that flow like real alerts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from training.simulator import (
    BOGUS_KINDS,
    CLASS_NAMES,
    MEASURED,
    MEASUREMENT_TOLERANCES,
    SEED_CLASS_FRACTIONS,
    SIM_CANDID_BASE,
    SimulatedStamps,
    measure_real_statistics,
    simulate,
    simulate_with_truth,
    stamp_statistics,
    to_alert_payloads,
)
from worker.decode.alerts import AlertDecoder
from worker.decode.packets import default_candidate, object_id_for
from worker.prepare.features import FEATURE_NAMES, ecliptic_galactic, metadata_features
from worker.prepare.stamps import decode_stamp, prepare_alert, preprocess_stamps

AGN, SN, VS, ASTEROID, BOGUS = range(5)


@pytest.fixture(scope="module")
def balanced() -> tuple[SimulatedStamps, dict[str, np.ndarray]]:
    """600 alerts, 120 per class, with what each scene holds."""
    return simulate_with_truth(600, 11, None)


def _background(images: np.ndarray, channel: int) -> tuple[np.ndarray, np.ndarray]:
    flat = images[..., channel].reshape(len(images), -1).astype(np.float64)
    med = np.nanmedian(flat, axis=1)
    return med, 1.4826 * np.nanmedian(np.abs(flat - med[:, None]), axis=1)


def _centre_mean(images: np.ndarray, channel: int) -> np.ndarray:
    """Mean of the 3×3 pixels around the candidate [DN]."""
    return np.nanmean(images[:, 30:33, 30:33, channel].astype(np.float64), axis=(1, 2))


# --------------------------------------------------------------------------- API, shapes

def test_deterministic_under_seed() -> None:
    a, b = simulate(40, 5), simulate(40, 5)
    np.testing.assert_array_equal(a.images, b.images)        # NaN positions equal too
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.candidates == b.candidates
    c = simulate(40, 6)
    assert not np.array_equal(np.nan_to_num(a.images), np.nan_to_num(c.images))


def test_shapes_dtypes_and_candidate_keys(balanced) -> None:
    sim, _ = balanced
    n = len(sim)
    assert sim.images.shape == (n, 63, 63, 3) and sim.images.dtype == np.float32
    assert sim.labels.shape == (n,) and sim.labels.dtype == np.int64
    assert len(sim.candidates) == n
    keys = list(default_candidate(0, 0.0).keys())
    for cand in sim.candidates:
        assert list(cand.keys()) == keys
        assert isinstance(cand["ndethist"], int) and isinstance(cand["fid"], int)
        assert cand["isdiffpos"] in ("t", "f") and isinstance(cand["ssnamenr"], str)
    # Stamps are finite except masked regions; no stamp is empty at the candidate.
    assert np.isfinite(sim.images[:, 30:33, 30:33, :]).all()
    assert np.isinf(sim.images).sum() == 0


def test_class_fractions_are_honoured() -> None:
    sim = simulate(500, 2)
    counts = np.bincount(sim.labels, minlength=5)
    assert counts.sum() == 500
    np.testing.assert_allclose(counts / 500, SEED_CLASS_FRACTIONS, atol=1 / 500)
    assert abs(counts[SN] - 500 * SEED_CLASS_FRACTIONS[SN]) < 1       # SN ≈ 3 %
    balanced = simulate(250, 2, None)
    assert np.bincount(balanced.labels).tolist() == [50] * 5
    only = simulate(30, 2, (0, 0, 0, 1, 0))
    assert (only.labels == ASTEROID).all()


@pytest.mark.parametrize("fractions", [(1, 2, 3), (-1, 1, 1, 1, 1), (0, 0, 0, 0, 0),
                                       (1, 1, float("nan"), 1, 1)])
def test_bad_class_fractions_are_refused(fractions) -> None:
    with pytest.raises(ValueError):
        simulate(10, 0, fractions)


def test_seed_fractions_are_the_alerce_imbalance() -> None:
    assert CLASS_NAMES == ("AGN", "SN", "VS", "asteroid", "bogus")
    assert math.isclose(sum(SEED_CLASS_FRACTIONS), 1.0)
    assert 0.025 < SEED_CLASS_FRACTIONS[SN] < 0.035
    assert min(SEED_CLASS_FRACTIONS) == SEED_CLASS_FRACTIONS[SN]


# --------------------------------------------------------------------- class properties

def test_template_counterparts_by_class(balanced) -> None:
    sim, _ = balanced
    med, sigma = _background(sim.images, 1)
    excess = (_centre_mean(sim.images, 1) - med) / sigma     # template at the candidate
    by = {c: excess[sim.labels == c] for c in range(5)}
    # Asteroids: nothing in the template at their position (chance neighbours aside).
    assert abs(np.median(by[ASTEROID])) < 0.5 and np.mean(by[ASTEROID] < 3) > 0.9
    # Variable stars: a star in the template at the candidate (faint for a few).
    assert np.mean(by[VS] > 5) > 0.98 and np.median(by[VS]) > 100
    # AGN: the nucleus (and host) in the template.
    assert np.min(by[AGN]) > 5
    # SNe are new: the template holds at most host light there.
    assert np.median(by[SN]) < 5 < np.median(by[AGN])


def test_difference_shows_every_astrophysical_detection_positive(balanced) -> None:
    sim, _ = balanced
    med, sigma = _background(sim.images, 2)
    centre = (_centre_mean(sim.images, 2) - med) / sigma
    real = sim.labels != BOGUS
    assert np.mean(centre[real] > 1.5) > 0.98
    # Both signs of change exist for AGN and VS, none negative for SNe and asteroids.
    sign = np.array([c["isdiffpos"] for c in sim.candidates])
    for label in (AGN, VS):
        assert 0.25 < np.mean(sign[sim.labels == label] == "t") < 0.75
    assert (sign[np.isin(sim.labels, (SN, ASTEROID))] == "t").all()


def test_isdiffpos_is_the_sign_of_science_minus_template(balanced) -> None:
    sim, _ = balanced
    yy, xx = np.mgrid[:63, :63]
    aperture = np.hypot(yy - 31, xx - 31) <= 8
    med_s, sig_s = _background(sim.images, 0)
    med_t, sig_t = _background(sim.images, 1)
    sci = np.nansum(np.where(aperture, sim.images[..., 0] - med_s[:, None, None], 0), (1, 2))
    tmpl = np.nansum(np.where(aperture, sim.images[..., 1] - med_t[:, None, None], 0), (1, 2))
    change = sci - tmpl                      # aperture flux: robust to seeing differences
    noise = np.sqrt(aperture.sum()) * np.hypot(sig_s, sig_t)
    positive = np.array([c["isdiffpos"] == "t" for c in sim.candidates])
    real = sim.labels != BOGUS
    clear = real & (np.abs(change) > 5 * noise)
    assert clear.sum() > 200
    assert np.mean((change[clear] > 0) == positive[clear]) > 0.98
    assert np.mean((change[real] > 0) == positive[real]) > 0.93


def test_sn_are_offset_on_their_hosts(balanced) -> None:
    sim, truth = balanced
    sn = np.flatnonzero(sim.labels == SN)
    hosted = sn[np.isfinite(truth["host_x"][sn])]
    assert 0.8 < len(hosted) / len(sn) < 1.0                         # a few hostless
    ratio = truth["host_offset"][hosted] / truth["host_re"][hosted]
    assert np.mean(ratio >= 0.3 - 1e-9) > 0.7 and np.any(ratio < 0.3)  # some near the core
    assert ratio.max() <= 3.0 + 1e-9
    assert np.any(truth["host_mag"][hosted] > 21)                    # some faint hosts
    # Where the host is bright and well offset, the template is brighter at the host's
    # centre than at the candidate, while the difference peaks on the candidate.
    bright = hosted[(truth["host_mag"][hosted] < 19.5) & (truth["host_offset"][hosted] > 2.5)]
    assert len(bright) >= 10
    hx = np.clip(np.rint(truth["host_x"][bright]).astype(int), 1, 61)
    hy = np.clip(np.rint(truth["host_y"][bright]).astype(int), 1, 61)
    tmpl = np.nan_to_num(sim.images[bright, :, :, 1])
    at_host = np.array([tmpl[k, y - 1:y + 2, x - 1:x + 2].mean()
                        for k, (x, y) in enumerate(zip(hx, hy, strict=True))])
    at_candidate = tmpl[:, 30:33, 30:33].mean(axis=(1, 2))
    assert np.mean(at_host > at_candidate) > 0.9
    diff = np.nan_to_num(sim.images[bright, :, :, 2])
    diff_at_host = np.array([diff[k, y - 1:y + 2, x - 1:x + 2].mean()
                             for k, (x, y) in enumerate(zip(hx, hy, strict=True))])
    assert np.mean(diff[:, 30:33, 30:33].mean(axis=(1, 2)) > diff_at_host) > 0.9


def test_agn_sit_on_nuclei(balanced) -> None:
    sim, truth = balanced
    agn = np.flatnonzero(sim.labels == AGN)
    hosted = agn[np.isfinite(truth["host_x"][agn])]
    assert 0.7 < len(hosted) / len(agn) < 1.0
    assert np.all(truth["host_offset"][hosted] < 0.6)


def test_all_bogus_kinds_and_their_signatures(balanced) -> None:
    sim, truth = balanced
    kinds = truth["bogus_kind"]
    assert (kinds[sim.labels != BOGUS] == -1).all()
    assert set(kinds[sim.labels == BOGUS]) == set(range(len(BOGUS_KINDS)))
    fwhm = np.array([c["fwhm"] for c in sim.candidates])
    med_t, sig_t = _background(sim.images, 1)
    # Cosmic rays: sharp, science only.
    cr = kinds == BOGUS_KINDS.index("cosmic_ray")
    assert fwhm[cr].max() < 1.5
    assert np.median((_centre_mean(sim.images, 1)[cr] - med_t[cr]) / sig_t[cr]) < 3
    # NaN edges: a band of 22-28 columns or rows, the candidate itself finite.
    edge = np.flatnonzero(kinds == BOGUS_KINDS.index("nan_edge"))
    nan = np.isnan(sim.images[edge, :, :, 2]).sum(axis=(1, 2))
    assert (nan >= 22 * 63).all()
    # Saturated stars: masked cores (science and difference; a few templates keep theirs).
    sat = np.flatnonzero(kinds == BOGUS_KINDS.index("saturated_star"))
    assert (np.isnan(sim.images[sat][..., [0, 2]]).all(axis=3).sum(axis=(1, 2)) >= 25).all()
    # Dipoles: a positive and a negative lobe in the difference.
    dip = np.flatnonzero(kinds == BOGUS_KINDS.index("dipole"))
    med_d, sig_d = _background(sim.images[dip], 2)
    core = sim.images[dip, 24:39, 24:39, 2] - med_d[:, None, None]
    assert np.mean(np.nanmin(core, axis=(1, 2)) < -3 * sig_d[:, None, None].ravel()) > 0.6


def test_nan_regions_look_like_real_ones(balanced) -> None:
    sim, _ = balanced
    nan = np.isnan(sim.images)
    per_alert = nan.any(axis=(1, 2, 3))
    assert 0.08 < per_alert.mean() < 0.35
    counts = nan[..., 0].sum(axis=(1, 2))[per_alert]
    assert counts.min() >= 1 and counts.max() <= 63 * 30
    # Real NaN regions are the same in the three stamps (apart from a few templates).
    same = (nan[..., 0] == nan[..., 2]).all(axis=(1, 2))
    assert same.all()


# ---------------------------------------------------------------------------- metadata

def test_candidates_consistent_with_class(balanced) -> None:
    sim, truth = balanced
    lab = sim.labels

    def field(name):
        return np.array([c[name] for c in sim.candidates], dtype=np.float64)

    magpsf, limit = field("magpsf"), field("diffmaglim")
    assert np.isfinite(magpsf).all() and (magpsf > 10).all() and (magpsf < 23).all()
    assert np.mean(magpsf < limit + 0.3) > 0.97                      # detections
    assert (field("sigmapsf") > 0).all() and (field("fwhm") > 0).all()
    # magpsf is photometry of the difference stamp: compare with an aperture flux.
    yy, xx = np.mgrid[:63, :63]
    aperture = np.hypot(yy - 31, xx - 31) <= 6
    med, _ = _background(sim.images, 2)
    ap_flux = np.nansum(np.where(aperture, sim.images[..., 2] - med[:, None, None], 0), (1, 2))
    psf_flux = 10 ** (-0.4 * (magpsf - truth["zp"]))
    point = (lab != BOGUS) & (lab != ASTEROID)                        # untrailed
    ratio = ap_flux[point] / psf_flux[point]
    assert 0.8 < np.median(ratio) < 1.1
    assert np.corrcoef(np.log10(np.clip(ap_flux[point], 1, None)),
                       np.log10(psf_flux[point]))[0, 1] > 0.9
    assert (field("jd") >= 2458484.5).all() and (field("jd") <= 2461041.5).all()
    assert ((field("xpos") >= 0) & (field("xpos") <= 3072)).all()
    assert ((field("ypos") >= 0) & (field("ypos") <= 3080)).all()
    nd, nc = field("ndethist"), field("ncovhist")
    assert (nd >= 1).all() and (nc >= nd).all()
    assert nd[lab == ASTEROID].max() <= 2
    assert np.median(nd[lab == VS]) >= 5 and np.median(nd[lab == AGN]) >= 5
    # AGN and VS are detected in a share of their visits; SN alerts come from all along
    # the light curve (some first detections, most later).
    share = nd / nc
    assert 0.3 < np.median(share[lab == AGN]) < 0.6 and 0.25 < np.median(share[lab == VS]) < 0.5
    assert 0.05 < np.mean(nd[lab == SN] <= 2) < 0.5 and np.median(nd[lab == SN]) > 5
    # Known asteroids carry a solar-system match; nothing else does.
    ss = field("ssdistnr")
    names = np.array([c["ssnamenr"] for c in sim.candidates])
    known = ss >= 0
    assert 0.5 < known[lab == ASTEROID].mean() < 0.95
    assert not known[lab != ASTEROID].any() and (names[~known] == "null").all()
    assert (ss[known] <= 5.0).all() and all(n.isdigit() for n in names[known])
    # PS1 counterpart: a star for VS, galaxies (low scores) for SN hosts.
    sg, dist = field("sgscore1"), field("distpsnr1")
    scored = (sg != 0.5) & (sg != -999)
    assert np.median(sg[(lab == VS) & scored]) > 0.8
    assert np.median(sg[(lab == SN) & scored]) < np.median(sg[(lab == VS) & scored]) - 0.3
    assert np.median(dist[(lab == VS) & (dist >= 0)]) < 1.0
    assert np.median(dist[(lab == ASTEROID) & (dist >= 0)]) > 2.0
    assert np.any(dist[lab == ASTEROID] == -999)      # some with no PS1 source within 30″
    # Sky: asteroids near the ecliptic, VS nearer the Galactic plane than AGN and SN.
    coords = np.array([ecliptic_galactic(c["ra"], c["dec"]) for c in sim.candidates])
    assert np.median(np.abs(coords[lab == ASTEROID, 0])) < 10
    assert np.median(np.abs(coords[lab == VS, 2])) < 15 < np.median(
        np.abs(coords[np.isin(lab, (AGN, SN)), 2]))
    assert (field("dec") > -31).all()
    # Real-bogus: bogus lower on average, but overlapping.
    rb = field("rb")
    assert np.median(rb[lab == BOGUS]) < np.median(rb[lab != BOGUS])
    assert np.mean(rb[lab == BOGUS] > 0.6) > 0.15
    # The metadata feature vector builds: every feature finite for most alerts.
    features = np.stack([metadata_features(c) for c in sim.candidates])
    assert features.shape == (len(sim), len(FEATURE_NAMES))
    assert np.mean(np.isfinite(features)) > 0.95


def test_classes_overlap_in_brightness(balanced) -> None:
    sim, _ = balanced
    magpsf = np.array([c["magpsf"] for c in sim.candidates])
    ranges = [np.percentile(magpsf[sim.labels == c], [10, 90]) for c in range(5)]
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    assert hi - lo > 0.5                     # a common 10-90 % magnitude range


# ------------------------------------------------------------------------ alert packets

def test_payloads_decode_like_real_alerts() -> None:
    sim = simulate(25, 4, None)
    payloads = to_alert_payloads(sim, first_id=1000)
    assert payloads == to_alert_payloads(sim, first_id=1000)         # reproducible bytes
    decoder = AlertDecoder()
    ids, candids = set(), set()
    for i, payload in enumerate(payloads):
        (alert,) = decoder.decode(payload)
        ids.add(alert.object_id)
        candids.add(alert.candid)
        assert alert.candid == SIM_CANDID_BASE + 1000 + i
        assert alert.object_id[5:] == object_id_for(1000 + i)[5:]
        for k, blob in enumerate(alert.cutouts):
            np.testing.assert_array_equal(decode_stamp(blob), sim.images[i, :, :, k])
        model_input = prepare_alert(alert)
        assert model_input.image.shape == (21, 21, 3)
        assert np.isfinite(model_input.image).all() and not model_input.padded
        expected = preprocess_stamps([sim.images[i, :, :, k] for k in range(3)])
        np.testing.assert_array_equal(model_input.image, expected)
        for key, value in sim.candidates[i].items():
            got = alert.candidate.get(key, value)
            if isinstance(value, float):
                assert got == pytest.approx(value, rel=1e-6, abs=1e-6)  # Avro float32
            else:
                assert got == value
    assert len(ids) == len(candids) == len(payloads)
    other = to_alert_payloads(sim, first_id=1000 + len(sim))
    assert not {AlertDecoder().decode(p)[0].candid for p in other} & candids


# ---------------------------------------------------------------- measured constants

def _off_measured(got: dict) -> dict:
    """Statistics outside their tolerance: {key: (measured constant, value got)}."""
    bad = {}
    for key, value in MEASURED.items():
        kind, tol = MEASUREMENT_TOLERANCES[key]
        limit = tol * abs(value) if kind == "rel" else tol
        if abs(got[key] - value) > limit:
            bad[key] = (value, round(got[key], 4))
    return bad


def test_simulated_stamps_reproduce_the_measured_statistics() -> None:
    sim = simulate(1200, 21)
    got = stamp_statistics(sim.images, sim.candidates)
    bad = _off_measured(got)
    assert not bad, f"simulated statistics off the measured ones (measured, simulated): {bad}"


@pytest.mark.shared_data
def test_measured_constants_match_real_data(data_dir: Path) -> None:
    got = measure_real_statistics(data_dir)
    bad = _off_measured(got)
    assert not bad, f"constants no longer match the real data (constant, measured): {bad}"
