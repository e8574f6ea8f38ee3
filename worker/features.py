"""The alert metadata feature vector used by the rotation-invariant model.

The features are those of the ALeRCE stamp classifier (Carrasco-Davis et al. 2021):
PS1 star/galaxy scores and distances of the three nearest sources, the sign of the
subtraction, PSF photometry, seeing, position in three frames, detection history and
the shape parameters of the nearest reference source.

Missing values are explicit: a null field, a non-finite value or ZTF's ``-999`` "no
counterpart" sentinel becomes NaN in the raw vector; :func:`standardize` maps NaN to 0
*after* standardization, i.e. to the training mean, so a missing value never looks like
an extreme one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FEATURE_NAMES: tuple[str, ...] = (
    "sgscore1", "distpsnr1", "sgscore2", "distpsnr2", "sgscore3", "distpsnr3",
    "isdiffpos", "fwhm", "magpsf", "sigmapsf", "ra", "dec", "diffmaglim", "rb",
    "distnr", "magnr", "classtar", "ndethist", "ncovhist", "ecl_lat", "ecl_long",
    "gal_lat", "gal_long", "non_detections", "chinr", "sharpnr",
)
MISSING_SENTINEL = -999.0
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_DERIVED = frozenset({"isdiffpos", "ecl_lat", "ecl_long", "gal_lat", "gal_long", "non_detections"})
_DIRECT: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if n not in _DERIVED)

# Rotation ICRS (J2000 equatorial) → Galactic, IAU 1958 definition as realised in
# Hipparcos (ESA 1997, vol. 1, eq. 1.5.11).
EQUATORIAL_TO_GALACTIC = np.array([
    [-0.0548755604162154, -0.8734370902348850, -0.4838350155487132],
    [+0.4941094278755837, -0.4448296299600112, +0.7469822444972189],
    [-0.8676661490190047, -0.1980763734312015, +0.4559837761750669],
])
# Mean obliquity of the ecliptic at J2000 (IAU 2006): 84381.406 arcsec.
_OBLIQUITY = math.radians(84381.406 / 3600.0)
EQUATORIAL_TO_ECLIPTIC = np.array([
    [1.0, 0.0, 0.0],
    [0.0, math.cos(_OBLIQUITY), math.sin(_OBLIQUITY)],
    [0.0, -math.sin(_OBLIQUITY), math.cos(_OBLIQUITY)],
])


def _rotate(ra: float, dec: float, matrix: np.ndarray) -> tuple[float, float]:
    """Rotate an equatorial direction; return (latitude, longitude) [deg]."""
    a, d = math.radians(ra), math.radians(dec)
    vec = matrix @ np.array([math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d)])
    lat = math.degrees(math.asin(max(-1.0, min(1.0, float(vec[2])))))
    lon = math.degrees(math.atan2(float(vec[1]), float(vec[0]))) % 360.0
    return lat, lon


def ecliptic_galactic(ra: float, dec: float) -> tuple[float, float, float, float]:
    """Ecliptic (J2000 mean) and Galactic coordinates of an ICRS position.

    Parameters
    ----------
    ra, dec : float
        Right ascension and declination (ICRS / J2000) [deg].

    Returns
    -------
    (float, float, float, float)
        ``ecl_lat, ecl_long, gal_lat, gal_long`` [deg]; longitudes in [0, 360).
    """
    ecl_lat, ecl_long = _rotate(ra, dec, EQUATORIAL_TO_ECLIPTIC)
    gal_lat, gal_long = _rotate(ra, dec, EQUATORIAL_TO_GALACTIC)
    return ecl_lat, ecl_long, gal_lat, gal_long


def _number(value: Any) -> float:
    """A candidate value as float, NaN when missing (null, non-finite, -999 sentinel)."""
    # A writer schema may give a field another type (string, array...): not a number.
    if not isinstance(value, (int, float)):
        return math.nan
    number = float(value)
    # Beyond float32's range a value cannot be stored: it is as good as missing.
    if not math.isfinite(number) or number == MISSING_SENTINEL or abs(number) > _FLOAT32_MAX:
        return math.nan
    return number


def encode_isdiffpos(value: Any) -> float:
    """``isdiffpos`` as 1.0 (positive subtraction: ``t``/``1``), 0.0 (``f``/``0``), or NaN."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("t", "1", "true"):
            return 1.0
        if text in ("f", "0", "false"):
            return 0.0
    return math.nan


def metadata_features(candidate: Mapping[str, Any]) -> np.ndarray:
    """Raw metadata feature vector of one alert, in :data:`FEATURE_NAMES` order.

    Parameters
    ----------
    candidate : Mapping[str, Any]
        The alert's candidate fields (``Alert.candidate``).

    Returns
    -------
    numpy.ndarray
        float32, shape (len(FEATURE_NAMES),); NaN marks a missing value.  Angles [deg],
        magnitudes [mag], distances [arcsec] (PS1) or [pixels] (``distnr``).
    """
    values = {name: _number(candidate.get(name)) for name in _DIRECT}
    values["isdiffpos"] = encode_isdiffpos(candidate.get("isdiffpos"))
    ra, dec = values["ra"], values["dec"]
    if math.isfinite(ra) and math.isfinite(dec):
        values["ecl_lat"], values["ecl_long"], values["gal_lat"], values["gal_long"] = (
            ecliptic_galactic(ra, dec))
    else:
        values.update(ecl_lat=math.nan, ecl_long=math.nan, gal_lat=math.nan, gal_long=math.nan)
    values["non_detections"] = values["ncovhist"] - values["ndethist"]
    return np.array([values[name] for name in FEATURE_NAMES], dtype=np.float32)


def standardize(features: np.ndarray, mean: Sequence[float] | np.ndarray,
                std: Sequence[float] | np.ndarray) -> np.ndarray:
    """Standardize raw features with training statistics; missing (NaN) → 0.

    Parameters
    ----------
    features : numpy.ndarray
        (N, F) or (F,) raw features from :func:`metadata_features`.
    mean, std : array-like
        Per-feature training mean and standard deviation (a zero std is treated as 1).

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape, finite everywhere.
    """
    mean_arr = np.asarray(mean, dtype=np.float32)
    std_arr = np.asarray(std, dtype=np.float32)
    std_arr = np.where(std_arr > 0, std_arr, np.float32(1.0))
    out = (np.asarray(features, dtype=np.float32) - mean_arr) / std_arr
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)
