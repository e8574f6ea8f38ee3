"""worker.prepare.features: the metadata vector, its coordinates and its missing values."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from worker.decode.alerts import AlertDecoder
from worker.decode.packets import default_candidate, synthetic_alert
from worker.prepare.features import (
    FEATURE_NAMES,
    LOG_SCALED,
    FeatureEncoding,
    ecliptic_galactic,
    encode_isdiffpos,
    metadata_features,
    signed_log1p,
    standardize,
)


@pytest.mark.parametrize("ra,dec", [(0.0, 0.0), (276.0071593, 65.2938518), (92.6, -6.15),
                                    (266.405, -28.936), (359.9, -89.5), (10.0, 89.9)])
def test_galactic_and_ecliptic_agree_with_astropy(ra: float, dec: float) -> None:
    ecl_lat, ecl_long, gal_lat, gal_long = ecliptic_galactic(ra, dec)
    coord = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
    gal = coord.galactic
    ecl = coord.barycentricmeanecliptic
    assert gal_lat == pytest.approx(gal.b.deg, abs=1e-5)
    assert ecl_lat == pytest.approx(ecl.lat.deg, abs=1e-5)
    if abs(dec) < 89:  # longitudes are ill-defined at the poles (1e-5 deg ~ 0.04 arcsec)
        assert (gal_long - gal.l.deg + 180) % 360 - 180 == pytest.approx(0, abs=3e-4)
        assert (ecl_long - ecl.lon.deg + 180) % 360 - 180 == pytest.approx(0, abs=3e-4)


@pytest.mark.shared_data
def test_coordinates_match_alerce_features(data_dir: Path) -> None:
    """The ALeRCE feature table's ecliptic/galactic columns are reproduced."""
    path = data_dir / "labelled" / "alerce-test-stamps" / "small_test_metadata_features.csv"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        ecl_lat, ecl_long, gal_lat, gal_long = ecliptic_galactic(float(row["ra"]),
                                                                 float(row["dec"]))
        assert gal_lat == pytest.approx(float(row["gal_lat"]), abs=1e-3)
        assert gal_long == pytest.approx(float(row["gal_long"]), abs=1e-3)
        assert ecl_lat == pytest.approx(float(row["ecl_lat"]), abs=0.01)
        assert ecl_long == pytest.approx(float(row["ecl_long"]), abs=0.05)
        values = dict(zip(FEATURE_NAMES, metadata_features({
            k: (float(v) if k != "isdiffpos" else v) for k, v in row.items()
            if k not in ("class", "oid")}), strict=True))
        assert values["non_detections"] == float(row["non_detections"])
        assert values["isdiffpos"] == (1.0 if row["isdiffpos"] == "t" else 0.0)


def test_vector_order_and_values() -> None:
    cand = default_candidate(1, 2460000.5, ra=150.0, dec=2.0, ndethist=4, ncovhist=10)
    vec = metadata_features(cand)
    assert vec.shape == (len(FEATURE_NAMES),) and vec.dtype == np.float32
    values = dict(zip(FEATURE_NAMES, vec.tolist(), strict=True))
    assert values["ra"] == 150.0 and values["dec"] == 2.0
    assert values["non_detections"] == 6.0
    assert values["magpsf"] == pytest.approx(18.5)


def test_missing_values_are_nan_then_mean() -> None:
    cand = default_candidate(1, 2460000.5, sgscore1=-999.0, distpsnr1=None, fwhm=float("nan"),
                             isdiffpos=None)
    values = dict(zip(FEATURE_NAMES, metadata_features(cand).tolist(), strict=True))
    for name in ("sgscore1", "distpsnr1", "fwhm", "isdiffpos"):
        assert math.isnan(values[name]), name
    assert not math.isnan(values["sgscore2"])
    no_position = metadata_features(default_candidate(1, 2460000.5, ra=None, dec=None))
    assert np.isnan(no_position[[FEATURE_NAMES.index(n) for n in
                                 ("ecl_lat", "ecl_long", "gal_lat", "gal_long")]]).all()
    raw = np.stack([metadata_features(cand)] * 2)
    mean = np.ones(len(FEATURE_NAMES), np.float32)
    std = np.full(len(FEATURE_NAMES), 2.0, np.float32)
    std[0] = 0.0
    out = standardize(raw, mean, std)
    assert np.isfinite(out).all()
    assert out[0, FEATURE_NAMES.index("sgscore1")] == 0.0  # missing → the mean
    assert out[0, FEATURE_NAMES.index("sgscore2")] == pytest.approx((0.9 - 1) / 2)


@pytest.mark.parametrize("value,expected", [("t", 1.0), ("1", 1.0), ("f", 0.0), ("0", 0.0),
                                            (" T ", 1.0)])
def test_isdiffpos_encodings(value: str, expected: float) -> None:
    assert encode_isdiffpos(value) == expected


@pytest.mark.parametrize("value", [None, "", "x", 1])
def test_isdiffpos_unknown_is_missing(value) -> None:
    assert math.isnan(encode_isdiffpos(value))


def test_features_from_a_decoded_alert() -> None:
    alert = AlertDecoder().decode(synthetic_alert(5, ssdistnr=3.0))[0]
    vec = metadata_features(alert.candidate)
    assert np.isfinite(vec).sum() == len(FEATURE_NAMES)


def _raw_features(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.normal(10, 3, size=(n, len(FEATURE_NAMES))).astype(np.float32)
    raw[:, FEATURE_NAMES.index("ndethist")] = rng.integers(1, 500, n)
    raw[::3, FEATURE_NAMES.index("distpsnr1")] = np.nan   # no PS1 counterpart
    raw[:, FEATURE_NAMES.index("chinr")] = np.nan         # never present
    return raw


def test_log_indicator_encoding_fit_and_apply() -> None:
    raw = _raw_features(300, 0)
    enc = FeatureEncoding.fit(raw)
    # Indicators only for features missing in some, not all, training examples.
    assert enc.indicators == ("distpsnr1",) and enc.log_scaled == LOG_SCALED
    assert enc.width == len(FEATURE_NAMES) + 1
    out = enc.encode(raw)
    assert out.shape == (300, enc.width) and out.dtype == np.float32 and np.isfinite(out).all()
    nd = FEATURE_NAMES.index("ndethist")
    # Log-scaled then standardized with statistics of the log-scaled training values.
    logged = np.log1p(raw[:, nd])
    np.testing.assert_allclose(out[:, nd], (logged - logged.mean()) / logged.std(), atol=1e-4)
    np.testing.assert_array_equal(out[:, -1], np.isnan(raw[:, FEATURE_NAMES.index("distpsnr1")]))
    assert (out[::3, FEATURE_NAMES.index("distpsnr1")] == 0).all()  # missing → the mean
    # One vector and a batch of one encode alike.
    np.testing.assert_array_equal(enc.encode(raw[5]), out[5:6])
    assert signed_log1p(np.array([-9.0, 0.0, np.nan]))[0] == pytest.approx(-math.log(10))


def test_encoding_round_trips_through_the_manifest_block() -> None:
    enc = FeatureEncoding.fit(_raw_features(100, 1))
    block = enc.as_dict()
    assert block["names"] == list(FEATURE_NAMES)
    assert FeatureEncoding.from_dict(block) == enc
    # Manifests older than the encoding: plain standardization, no indicators.
    old = FeatureEncoding.from_dict({"names": list(FEATURE_NAMES), "mean": block["mean"],
                                     "std": block["std"]})
    assert old.width == len(FEATURE_NAMES) and not old.log_scaled
    raw = _raw_features(4, 2)
    np.testing.assert_array_equal(old.encode(raw), standardize(raw, block["mean"], block["std"]))


@pytest.mark.parametrize("change,message", [
    ({"names": ["x"]}, "differ"),
    ({"mean": [0.0]}, "statistics"),
    ({"log_scaled": ["nope"]}, "unknown feature names"),
    ({"missing_indicators": ["nope"]}, "unknown feature names"),
])
def test_bad_encoding_blocks_are_refused(change: dict, message: str) -> None:
    block = {**FeatureEncoding.fit(_raw_features(50, 3)).as_dict(), **change}
    with pytest.raises(ValueError, match=message):
        FeatureEncoding.from_dict(block)


def test_training_statistics_ignore_missing() -> None:
    f = np.zeros((2, len(FEATURE_NAMES)), np.float32)
    f[:, :3] = [[1.0, np.nan, 5.0], [3.0, np.nan, 5.0]]
    enc = FeatureEncoding.fit(f, log_scaled=(), indicators=False)
    assert list(enc.mean[:3]) == [2.0, 0.0, 5.0] and list(enc.std[:3]) == [1.0, 1.0, 1.0]
    assert enc.indicators == ()  # a feature missing everywhere gets no indicator either
