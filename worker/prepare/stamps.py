"""Cutouts → model input: gzip-FITS decoding and THE preprocessing (serving and training).

Decoding reads the FITS header cards directly and maps the data with
:func:`numpy.frombuffer` (BITPIX 8/16/32/64/-32/-64, BZERO/BSCALE/BLANK, big-endian),
which is ~15× cheaper than opening the file with astropy (bench/bench_decode.py)
and gives identical arrays.
Decompression uses ISA-L (``isal``), about twice as fast as zlib on these stamps, with
a hard bound on the decompressed size.

The preprocessing (:func:`preprocess_stamps`) is the only one in the project: the
training module imports it from here, so a model never sees inputs prepared differently
from those it was trained on.  Its steps, in order:

1. non-square stamps (cut by a CCD edge) are padded back to ``stamp_size`` on the side the
   edge cut, located from the candidate's ``xpos``/``ypos`` (policy ``"pad"``), or
   rejected (policy ``"reject"``);
2. centre crop ``crop_size`` × ``crop_size`` (21×21 by default);
3. non-finite pixels (NaN, ±inf) → 0;
4. per-stamp min-max normalization to [0, 1] (a constant stamp becomes all zeros);
5. science, template, difference stacked as channels: shape (crop, crop, 3), float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
from isal import isal_zlib

from worker.decode import native
from worker.decode.alerts import Alert
from worker.decode.errors import AlertError, Reason
from worker.prepare.features import metadata_features

PREPROCESSING_VERSION = "1"
FITS_BLOCK = 2880
FITS_CARD = 80
GZIP_MAGIC = b"\x1f\x8b"
_BITPIX_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
CHANNELS = ("science", "template", "difference")


@dataclass(frozen=True)
class StampLimits:
    """Bounds on one cutout, so a hostile alert cannot exhaust memory.

    Parameters
    ----------
    max_decompressed_bytes : int
        Largest gunzipped FITS file [bytes]; a 63×63 float32 stamp is 20,160 B.
    max_header_blocks : int
        Largest FITS header, in 2880-byte blocks.
    max_axis : int
        Largest NAXIS1/NAXIS2 [pixels].
    """

    max_decompressed_bytes: int = 4 * 1024 * 1024
    max_header_blocks: int = 16
    max_axis: int = 1024


_DEFAULT_LIMITS = StampLimits()


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of the preprocessing; recorded in each model's manifest.

    Parameters
    ----------
    crop_size : int
        Side of the centre crop fed to the model [pixels].
    stamp_size : int
        Side of a full cutout [pixels]; ZTF cutouts are 63×63.
    non_square : {"pad", "reject"}
        What to do with a stamp cut by a CCD edge.
    limits : StampLimits
        Decoding bounds.
    """

    crop_size: int = 21
    stamp_size: int = 63
    non_square: Literal["pad", "reject"] = "pad"
    limits: StampLimits = field(default_factory=StampLimits)

    def __post_init__(self) -> None:
        if not 1 <= self.crop_size <= self.stamp_size:
            raise ValueError(f"crop_size must be in [1, stamp_size={self.stamp_size}], "
                             f"got {self.crop_size}")
        if self.non_square not in ("pad", "reject"):
            raise ValueError(f"non_square must be 'pad' or 'reject', got {self.non_square!r}")

    def as_dict(self) -> dict[str, Any]:
        """The parameters that change model inputs (for a model manifest)."""
        return {"version": PREPROCESSING_VERSION, "crop_size": self.crop_size,
                "stamp_size": self.stamp_size, "non_square": self.non_square,
                "normalization": "minmax", "nan_fill": 0.0}


@dataclass(frozen=True, slots=True)
class ModelInput:
    """One alert, ready for the model.

    Attributes
    ----------
    image : numpy.ndarray
        (crop, crop, 3) float32 in [0, 1]: science, template, difference.
    features : numpy.ndarray
        Raw metadata feature vector (float32, NaN where missing), see
        :data:`worker.prepare.features.FEATURE_NAMES`.
    padded : bool
        Whether a non-square stamp was padded back to full size.
    """

    image: np.ndarray
    features: np.ndarray
    padded: bool


# --------------------------------------------------------------------------- decoding

def gunzip_stamp(blob: bytes, limits: StampLimits | None = None) -> bytes:
    """Decompress one cutout; plain (uncompressed) FITS passes through.

    Parameters
    ----------
    blob : bytes
        The ``stampData`` of a cutout.
    limits : StampLimits, optional
        Bound on the decompressed size.

    Returns
    -------
    bytes
        The FITS file.

    Raises
    ------
    AlertError
        ``corrupt_gzip`` (bad or truncated stream, neither gzip nor FITS) or
        ``decompressed_too_large`` (gzip bomb).
    """
    limits = limits or _DEFAULT_LIMITS
    if blob[:2] != GZIP_MAGIC:
        if blob[:9] == b"SIMPLE  =":
            return bytes(blob)
        raise AlertError(Reason.CORRUPT_GZIP, f"cutout is neither gzip nor FITS: {blob[:6]!r}")
    inflater = isal_zlib.decompressobj(31)  # wbits 31: gzip header and CRC32 checked
    try:
        raw = inflater.decompress(blob, limits.max_decompressed_bytes + 1)
    except isal_zlib.error as exc:
        raise AlertError(Reason.CORRUPT_GZIP, f"cutout does not gunzip: {exc}") from exc
    if len(raw) > limits.max_decompressed_bytes:
        raise AlertError(Reason.DECOMPRESSED_TOO_LARGE,
                         f"cutout inflates past {limits.max_decompressed_bytes} B")
    if not inflater.eof:
        raise AlertError(Reason.CORRUPT_GZIP, "gzip stream is truncated")
    return raw


def _card_value(card: str) -> str:
    """The value field of a FITS card (between ``= `` and an optional ``/`` comment)."""
    value = card[10:]
    if value.lstrip().startswith("'"):
        return value.strip()
    return value.split("/", 1)[0].strip()


class _Header(NamedTuple):
    """The keywords of a stamp's header that decoding needs."""

    end: int
    bitpix: int
    nx: int
    ny: int
    bscale: float
    bzero: float
    blank: int | None


# Stamps of one survey share a handful of headers (ZTF: one per shape), so parsed
# single-block headers are kept by their bytes; bounded against hostile variety.
_HEADER_CACHE: dict[bytes, _Header] = {}
_HEADER_CACHE_SIZE = 256


def _parse_header(raw: bytes, limits: StampLimits) -> _Header:
    first_block = raw[:FITS_BLOCK]
    cached = _HEADER_CACHE.get(first_block)
    if cached is not None:
        return cached
    cards: dict[str, str] = {}
    header_end = 0
    first = ""
    # Decode one 2880-byte block at a time: a stamp's header is one block, its data many.
    for block_start in range(0, limits.max_header_blocks * FITS_BLOCK, FITS_BLOCK):
        block = raw[block_start:block_start + FITS_BLOCK]
        if len(block) < FITS_BLOCK:
            raise AlertError(Reason.FITS_TRUNCATED, f"no END card in {len(raw)} B")
        text = block.decode("latin-1")
        if block_start == 0:
            first = text[:FITS_CARD]
        for start in range(0, FITS_BLOCK, FITS_CARD):
            card = text[start:start + FITS_CARD]
            key = card[:8].rstrip()
            if key == "END":
                header_end = block_start + FITS_BLOCK
                break
            if card[8:10] == "= " and key not in cards:
                cards[key] = _card_value(card)
        if header_end:
            break
    else:
        raise AlertError(Reason.FITS_HEADER_INVALID,
                         f"no END card in the first {limits.max_header_blocks} header blocks")
    if not first.startswith("SIMPLE") or cards.get("SIMPLE") != "T":
        raise AlertError(Reason.FITS_HEADER_INVALID, "first card is not SIMPLE = T")
    try:
        header = _Header(
            end=header_end,
            bitpix=int(cards["BITPIX"]),
            nx=int(cards.get("NAXIS1", "0")),
            ny=int(cards.get("NAXIS2", "0")),
            bscale=float(cards.get("BSCALE", "1").replace("D", "E")),
            bzero=float(cards.get("BZERO", "0").replace("D", "E")),
            blank=int(cards["BLANK"]) if "BLANK" in cards else None,
        )
        naxis = int(cards["NAXIS"])
    except (KeyError, ValueError) as exc:
        raise AlertError(Reason.FITS_HEADER_INVALID, f"bad or missing keyword: {exc}") from exc
    if header.bitpix not in _BITPIX_DTYPES:
        raise AlertError(Reason.FITS_HEADER_INVALID,
                         f"BITPIX = {header.bitpix} is not a FITS value")
    if naxis != 2:
        raise AlertError(Reason.FITS_HEADER_INVALID, f"NAXIS = {naxis}, a stamp has 2 axes")
    if (header.bscale == 0.0 or not math.isfinite(header.bscale)
            or not math.isfinite(header.bzero)):
        raise AlertError(Reason.FITS_HEADER_INVALID,
                         f"BSCALE = {header.bscale}, BZERO = {header.bzero}")
    if header_end == FITS_BLOCK:
        if len(_HEADER_CACHE) >= _HEADER_CACHE_SIZE:
            _HEADER_CACHE.clear()
        _HEADER_CACHE[first_block] = header
    return header


def parse_fits(raw: bytes, limits: StampLimits | None = None) -> np.ndarray:
    """Read the primary image of a FITS file into a float32 array.

    Parameters
    ----------
    raw : bytes
        An uncompressed FITS file whose primary HDU is a 2-D image.
    limits : StampLimits, optional
        Bounds on header size and image axes.

    Returns
    -------
    numpy.ndarray
        Shape (NAXIS2, NAXIS1), float32, physical values ``BZERO + BSCALE × raw``;
        integer pixels equal to ``BLANK`` become NaN (as astropy does).

    Raises
    ------
    AlertError
        ``fits_header_invalid`` or ``fits_truncated``.
    """
    limits = limits or _DEFAULT_LIMITS
    header_end, bitpix, nx, ny, bscale, bzero, blank = _parse_header(raw, limits)
    if not (1 <= nx <= limits.max_axis and 1 <= ny <= limits.max_axis):
        raise AlertError(Reason.FITS_HEADER_INVALID,
                         f"NAXIS1 × NAXIS2 = {nx} × {ny} outside [1, {limits.max_axis}]")
    nbytes = nx * ny * abs(bitpix) // 8
    if header_end + nbytes > len(raw):
        raise AlertError(Reason.FITS_TRUNCATED,
                         f"{nx}×{ny} BITPIX {bitpix} needs {nbytes} B of data, "
                         f"{len(raw) - header_end} B present")
    data = np.frombuffer(raw, dtype=_BITPIX_DTYPES[bitpix], count=nx * ny,
                         offset=header_end).reshape(ny, nx)
    if bitpix < 0:
        if bscale != 1.0 or bzero != 0.0:
            # Scaled values beyond float32 become ±inf, which preprocessing treats as NaN.
            with np.errstate(over="ignore", invalid="ignore"):
                return (data.astype(np.float64) * bscale + bzero).astype(np.float32)
        return data.astype(np.float32)
    # Same arithmetic as astropy: float32 for 8/16-bit, float64 for 32/64-bit integers.
    work = data.astype(np.float32 if bitpix in (8, 16) else np.float64)
    if bscale != 1.0:
        work *= bscale
    if bzero != 0.0:
        work += bzero
    if blank is not None:
        work[data == blank] = np.nan
    return work.astype(np.float32, copy=False)


def decode_stamp(blob: bytes, limits: StampLimits | None = None) -> np.ndarray:
    """Gunzip and read one cutout: ``stampData`` → float32 (NAXIS2, NAXIS1) array."""
    return parse_fits(gunzip_stamp(blob, limits), limits)


def encode_fits_gz(image: np.ndarray, bitpix: int = -32, bscale: float = 1.0,
                   bzero: float = 0.0, extra_cards: Mapping[str, str] | None = None) -> bytes:
    """Write a 2-D image as a gzipped FITS cutout, the way ZTF stores stamps.

    Used to build alerts for tests, the simulator and the demo.

    Parameters
    ----------
    image : numpy.ndarray
        2-D array of physical values; integer BITPIX stores ``(image - bzero) / bscale``
        rounded.
    bitpix : int
        FITS BITPIX (-32 for ZTF stamps).
    bscale, bzero : float
        Linear scaling written to the header when not (1, 0).
    extra_cards : Mapping[str, str], optional
        More ``KEY: value`` cards (values written verbatim).

    Returns
    -------
    bytes
        gzip-compressed FITS file.
    """
    if bitpix not in _BITPIX_DTYPES:
        raise ValueError(f"BITPIX {bitpix} is not a FITS value")
    ny, nx = image.shape
    cards = [("SIMPLE", "T"), ("BITPIX", str(bitpix)), ("NAXIS", "2"),
             ("NAXIS1", str(nx)), ("NAXIS2", str(ny))]
    if bscale != 1.0 or bzero != 0.0:
        cards += [("BSCALE", repr(float(bscale))), ("BZERO", repr(float(bzero)))]
    cards += list((extra_cards or {}).items())
    header = "".join(f"{k:<8}= {v:>20}".ljust(FITS_CARD) for k, v in cards)
    header += "END".ljust(FITS_CARD)
    header = header.ljust(-(-len(header) // FITS_BLOCK) * FITS_BLOCK)
    values = np.asarray(image, dtype=np.float64)
    if bitpix > 0 and not np.isfinite(values).all():
        raise ValueError("integer BITPIX cannot store non-finite pixels")
    if bitpix > 0:
        values = np.round((values - bzero) / bscale)
    elif bscale != 1.0 or bzero != 0.0:
        values = (values - bzero) / bscale
    data = values.astype(_BITPIX_DTYPES[bitpix]).tobytes()
    data += b"\0" * (-len(data) % FITS_BLOCK)
    compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
    return compressor.compress(header.encode("ascii") + data) + compressor.flush()


# --------------------------------------------------------------------------- preprocessing

def place_on_grid(stamp: np.ndarray, size: int, xpos: float | None, ypos: float | None,
                  policy: Literal["pad", "reject"] = "pad") -> tuple[np.ndarray, bool]:
    """Bring a cutout clipped by a CCD edge back to ``size`` × ``size`` pixels.

    ZTF cuts stamps centred on the candidate; near a readout-quadrant edge the part
    outside the CCD is simply missing (51×63, 44×63...).  The missing rows (columns) are
    on the side where the candidate's ``ypos`` (``xpos``) is within ``size/2`` of the
    image origin, else on the far side; padding with NaN there puts the candidate back
    at the centre.

    Parameters
    ----------
    stamp : numpy.ndarray
        (NAXIS2, NAXIS1) image.
    size : int
        Full cutout side [pixels].
    xpos, ypos : float or None
        Candidate position on the readout quadrant [pixels] (``candidate.xpos/ypos``).
    policy : {"pad", "reject"}
        ``"reject"`` refuses every stamp that is not ``size`` × ``size``.

    Returns
    -------
    (numpy.ndarray, bool)
        The (size, size) image and whether it was padded.

    Raises
    ------
    AlertError
        ``stamp_shape`` when rejected, larger than ``size``, or the cut side is unknown.
    """
    ny, nx = stamp.shape
    if (ny, nx) == (size, size):
        return stamp, False
    if policy == "reject" or ny > size or nx > size:
        raise AlertError(Reason.STAMP_SHAPE,
                         f"stamp is {ny}×{nx}, expected {size}×{size} (policy {policy!r})")
    pads = []
    for have, pos, axis in ((ny, ypos, "ypos"), (nx, xpos, "xpos")):
        missing = size - have
        if missing == 0:
            pads.append((0, 0))
            continue
        if not isinstance(pos, (int, float)) or not math.isfinite(pos):
            raise AlertError(Reason.STAMP_SHAPE,
                             f"stamp is {ny}×{nx} and {axis} is unknown: cannot tell which "
                             "side the CCD edge cut")
        near_origin = pos <= size / 2
        pads.append((missing, 0) if near_origin else (0, missing))
    return np.pad(stamp, pads, constant_values=np.nan), True


def preprocess_batch(triplets: Sequence[Sequence[np.ndarray]], crop_size: int = 21
                     ) -> tuple[np.ndarray, list[AlertError | None]]:
    """Centre-crop, NaN→0 and min-max normalize the stamps of many alerts at once.

    The one implementation of the preprocessing (:func:`preprocess_stamps` is this on a
    batch of one): the same element-wise steps and exact min/max reductions, so a stamp
    gives bit-identical model input alone or in any batch.  Vectorizing over the batch
    saves the ~15 small numpy calls per alert that dominated this step.

    Parameters
    ----------
    triplets : sequence of (science, template, difference)
        Full-size stamps, each (S, S); S may differ between alerts, not within one.
    crop_size : int
        Side of the centre crop [pixels].

    Returns
    -------
    (numpy.ndarray, list of AlertError or None)
        (N, crop_size, crop_size, 3) float32 in [0, 1], and per alert ``None`` or the
        ``all_nan`` error of a stamp whose crop holds no finite pixel (its image is
        then meaningless).
    """
    images = np.empty((len(triplets), crop_size, crop_size, 3), np.float32)
    for i, stamps in enumerate(triplets):
        lo = (stamps[0].shape[0] - crop_size) // 2
        hi = lo + crop_size
        # Assignment copies the crop into native float32, so the in-place steps below
        # never touch the decoded stamps.
        for channel, stamp in enumerate(stamps):
            images[i, :, :, channel] = stamp[lo:hi, lo:hi]
    errors: list[AlertError | None] = [None] * len(triplets)
    finite = np.isfinite(images)
    if not finite.all():
        empty = ~finite.any(axis=(1, 2))
        for i in np.flatnonzero(empty.any(axis=1)):
            names = [CHANNELS[c] for c in np.flatnonzero(empty[i])]
            errors[i] = AlertError(Reason.ALL_NAN, f"{'/'.join(names)} crop has no finite pixel")
        images[~finite] = 0.0
    low = images.min(axis=(1, 2), keepdims=True)
    with np.errstate(over="ignore"):
        span = images.max(axis=(1, 2), keepdims=True) - low
    wide = np.flatnonzero(~np.isfinite(span).all(axis=(1, 2, 3)))
    if len(wide):
        # Finite pixels near ±3.4e38 (a corrupt but well-formed stamp): the range
        # overflows float32, so normalize those stamps in float64.
        wide64 = images[wide].astype(np.float64)
        low64 = wide64.min(axis=(1, 2), keepdims=True)
        span64 = wide64.max(axis=(1, 2), keepdims=True) - low64
        normalized = ((wide64 - low64) / np.where(span64 > 0, span64, 1.0)).astype(np.float32)
        span[wide] = 1.0
        low[wide] = 0.0
    else:
        normalized = None
    images -= low
    # A constant stamp has span 0: leave it all zeros instead of dividing by zero.
    np.divide(images, span, out=images, where=span > 0)
    if normalized is not None:
        images[wide] = normalized
    return images, errors


def preprocess_stamps(stamps: Sequence[np.ndarray], crop_size: int = 21) -> np.ndarray:
    """Centre-crop, NaN→0 and min-max normalize three full-size stamps.

    Parameters
    ----------
    stamps : sequence of numpy.ndarray
        Science, template and difference, each (S, S) with the same S.
    crop_size : int
        Side of the centre crop [pixels].

    Returns
    -------
    numpy.ndarray
        (crop_size, crop_size, 3) float32 in [0, 1].

    Raises
    ------
    AlertError
        ``all_nan`` when a stamp's crop holds no finite pixel.
    """
    images, errors = preprocess_batch([stamps], crop_size)
    if errors[0] is not None:
        raise errors[0]
    return images[0]


def decode_stamps(alert: Alert, config: PreprocessConfig | None = None
                  ) -> tuple[list[np.ndarray], bool]:
    """The three cutouts of an alert as full-size images.

    Parameters
    ----------
    alert : Alert
        A decoded alert.
    config : PreprocessConfig, optional
        Stamp size, non-square policy and limits.

    Returns
    -------
    (list of numpy.ndarray, bool)
        Science, template and difference, each (stamp_size, stamp_size), and whether
        any was padded back to full size.

    Raises
    ------
    AlertError
        Any stamp-level reason (corrupt gzip, FITS, shape).
    """
    config = config or PreprocessConfig()
    xpos = alert.candidate.get("xpos")
    ypos = alert.candidate.get("ypos")
    full = []
    padded = False
    for blob in alert.cutouts:
        stamp, was_padded = place_on_grid(decode_stamp(blob, config.limits), config.stamp_size,
                                          xpos, ypos, config.non_square)
        padded |= was_padded
        full.append(stamp)
    return full, padded


def native_image(alert: Alert, config: PreprocessConfig) -> np.ndarray | None:
    """The model image of an alert by the compiled path (:mod:`worker.decode.native`), if it can.

    The compiled path does gunzip, FITS, crop, NaN→0 and normalization in one call, and
    only for the plain case: full-size BITPIX -32 stamps whose header
    :func:`parse_fits` has already seen, with finite crops.  For anything else — and
    without the extension — it returns None and the caller runs
    :func:`decode_stamps` + :func:`preprocess_batch`, which give the same image
    (bit for bit) or refuse the alert.

    Returns
    -------
    numpy.ndarray or None
        (crop, crop, 3) float32 in [0, 1], writable, never padded.
    """
    if not native.ENABLED:
        return None
    raw = native.prepare_cutouts(alert.science, alert.template, alert.difference,
                                 _HEADER_CACHE, config.limits.max_decompressed_bytes,
                                 config.limits.max_axis, config.stamp_size, config.crop_size)
    if raw is None:
        return None
    return np.frombuffer(raw, np.float32).reshape(config.crop_size, config.crop_size, 3)


def native_input(alert: Alert, config: PreprocessConfig) -> ModelInput | None:
    """The model input of an alert by the compiled path, or None (see :func:`native_image`)."""
    image = native_image(alert, config)
    if image is None:
        return None
    return ModelInput(image=image, features=metadata_features(alert.candidate), padded=False)


def prepare_alert(alert: Alert, config: PreprocessConfig | None = None) -> ModelInput:
    """Decode and preprocess one alert into the model's input.

    Parameters
    ----------
    alert : Alert
        A decoded alert.
    config : PreprocessConfig, optional
        Crop size, non-square policy and limits (defaults: 21×21, pad).

    Returns
    -------
    ModelInput

    Raises
    ------
    AlertError
        Any stamp-level reason (corrupt gzip, FITS, shape, all-NaN).
    """
    config = config or PreprocessConfig()
    prepared = native_input(alert, config)
    if prepared is not None:
        return prepared
    full, padded = decode_stamps(alert, config)
    image = preprocess_stamps(full, config.crop_size)
    return ModelInput(image=image, features=metadata_features(alert.candidate), padded=padded)


def stack_inputs(inputs: Sequence[ModelInput]) -> tuple[np.ndarray, np.ndarray]:
    """Stack model inputs into batch arrays: images (N, c, c, 3), features (N, F)."""
    return (np.stack([i.image for i in inputs]), np.stack([i.features for i in inputs]))
