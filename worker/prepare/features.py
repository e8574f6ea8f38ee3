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
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.decode import native

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


_ROWS = {id(m): tuple(tuple(float(v) for v in row) for row in m)
         for m in (EQUATORIAL_TO_GALACTIC, EQUATORIAL_TO_ECLIPTIC)}


_ROWS_ECLIPTIC = _ROWS[id(EQUATORIAL_TO_ECLIPTIC)]
_ROWS_GALACTIC = _ROWS[id(EQUATORIAL_TO_GALACTIC)]


def _rotate(ra: float, dec: float, matrix: np.ndarray) -> tuple[float, float]:
    """Rotate an equatorial direction; return (latitude, longitude) [deg]."""
    # Plain floats: for one 3-vector, numpy's call overhead is 10x the arithmetic.
    (a0, a1, a2), (b0, b1, b2), (c0, c1, c2) = _ROWS[id(matrix)]
    a, d = math.radians(ra), math.radians(dec)
    x, y, z = math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d)
    u, v, w = a0 * x + a1 * y + a2 * z, b0 * x + b1 * y + b2 * z, c0 * x + c1 * y + c2 * z
    lat = math.degrees(math.asin(max(-1.0, min(1.0, w))))
    lon = math.degrees(math.atan2(v, u)) % 360.0
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
    if native.ENABLED:
        # The compiled twin (same libm calls and float arithmetic): None when unsure.
        raw = native.metadata_features(candidate, FEATURE_NAMES, _ROWS_ECLIPTIC, _ROWS_GALACTIC,
                                       _FLOAT32_MAX)
        if raw is not None:
            return np.frombuffer(raw, np.float32)
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


# Counts and distances spanning decades (a new source has 1 detection, a 5-year-old AGN
# hundreds): the log-indicators encoding gives them a signed log scale so standardization
# does not squeeze the informative low end into a sliver.
LOG_SCALED: tuple[str, ...] = ("ndethist", "ncovhist", "non_detections", "distnr",
                               "distpsnr1", "distpsnr2", "distpsnr3")


def signed_log1p(values: np.ndarray) -> np.ndarray:
    """``sign(x) · log(1 + |x|)``: a log scale defined for any sign; NaN stays NaN."""
    return (np.sign(values) * np.log1p(np.abs(values))).astype(np.float32, copy=False)


@dataclass(frozen=True)
class FeatureEncoding:
    """How a raw feature vector becomes the model's feature input (one per artifact).

    ``encoded = [standardize(raw with log_scaled columns through signed_log1p),
    one 0/1 column per name in indicators (1 where that raw value is missing)]``.
    With no log-scaled names and no indicators this is the plain standardization of
    artifacts made before the encoding existed.  Missing is information (no PS1
    counterpart within 30 arcsec, no reference source), which mean imputation alone hides.

    Attributes
    ----------
    mean, std : tuple of float
        Per-feature statistics of the (log-scaled) training features.
    log_scaled : tuple of str
        Features taken through :func:`signed_log1p` before standardization.
    indicators : tuple of str
        Features that get a missing-value indicator column, in this order.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    log_scaled: tuple[str, ...] = ()
    indicators: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.mean) != len(FEATURE_NAMES) or len(self.std) != len(FEATURE_NAMES):
            raise ValueError(f"feature statistics must have {len(FEATURE_NAMES)} values each")
        unknown = sorted((set(self.log_scaled) | set(self.indicators)) - set(FEATURE_NAMES))
        if unknown:
            raise ValueError(f"unknown feature names {unknown}")

    @property
    def width(self) -> int:
        """Length of the encoded vector."""
        return len(FEATURE_NAMES) + len(self.indicators)

    def scale(self, raw: np.ndarray) -> np.ndarray:
        """Raw (N, F) features with the log-scaled columns transformed (a copy)."""
        out = np.array(raw, dtype=np.float32, copy=True, ndmin=2)
        cols = [FEATURE_NAMES.index(n) for n in self.log_scaled]
        if cols:
            out[:, cols] = signed_log1p(out[:, cols])
        return out

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """The model's feature input.

        Parameters
        ----------
        raw : numpy.ndarray
            (N, F) raw features from :func:`metadata_features` (NaN where missing).

        Returns
        -------
        numpy.ndarray
            float32, (N, :attr:`width`), finite everywhere.
        """
        raw = np.asarray(raw, dtype=np.float32).reshape(-1, len(FEATURE_NAMES))
        out = standardize(self.scale(raw), self.mean, self.std)
        if not self.indicators:
            return out
        cols = [FEATURE_NAMES.index(n) for n in self.indicators]
        return np.concatenate([out, np.isnan(raw[:, cols]).astype(np.float32)], axis=1)

    def as_dict(self) -> dict[str, Any]:
        """The manifest's ``features`` block."""
        return {"names": list(FEATURE_NAMES), "mean": list(self.mean), "std": list(self.std),
                "log_scaled": list(self.log_scaled), "missing_indicators": list(self.indicators)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureEncoding:
        """Read a manifest's ``features`` block (older ones have no encoding keys).

        Raises
        ------
        ValueError
            Other feature names than this worker's, statistics of the wrong length,
            unknown names in the encoding.
        """
        if tuple(data["names"]) != FEATURE_NAMES:
            raise ValueError(f"metadata features differ from this worker's {FEATURE_NAMES}")
        return cls(mean=tuple(float(v) for v in data["mean"]),
                   std=tuple(float(v) for v in data["std"]),
                   log_scaled=tuple(data.get("log_scaled", ())),
                   indicators=tuple(data.get("missing_indicators", ())))

    @classmethod
    def fit(cls, raw: np.ndarray, log_scaled: Sequence[str] = LOG_SCALED,
            indicators: bool = True) -> FeatureEncoding:
        """Measure an encoding on training features.

        Parameters
        ----------
        raw : numpy.ndarray
            (N, F) raw training features.
        log_scaled : sequence of str
            Features to log-scale (``()`` for the plain standardization).
        indicators : bool
            Add an indicator for every feature missing in some but not all examples.
        """
        enc = cls(mean=(0.0,) * len(FEATURE_NAMES), std=(1.0,) * len(FEATURE_NAMES),
                  log_scaled=tuple(log_scaled))
        scaled = enc.scale(raw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column is expected
            mean = np.nan_to_num(np.nanmean(scaled, axis=0), nan=0.0)
            std = np.nanstd(scaled, axis=0)
        std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
        missing = np.isnan(np.asarray(raw, np.float32).reshape(-1, len(FEATURE_NAMES)))
        share = missing.mean(axis=0) if len(missing) else np.zeros(len(FEATURE_NAMES))
        names = (tuple(n for n, s in zip(FEATURE_NAMES, share, strict=True) if 0 < s < 1)
                 if indicators else ())
        return cls(mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                   log_scaled=tuple(log_scaled), indicators=names)
