"""worker.prepare.stamps: FITS decoding equal to astropy, the one preprocessing, bounded inputs."""

from __future__ import annotations

import gzip
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from worker.decode.alerts import Alert, AlertDecoder
from worker.decode.errors import AlertError, Reason
from worker.decode.packets import synthetic_alert
from worker.prepare.stamps import (
    PREPROCESSING_VERSION,
    PreprocessConfig,
    StampLimits,
    decode_stamp,
    encode_fits_gz,
    gunzip_stamp,
    parse_fits,
    place_on_grid,
    prepare_alert,
    preprocess_batch,
    preprocess_stamps,
    stack_inputs,
)


def _astropy_data(blob: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ZTF's SIMPLE card "doesn't respect the standard"
        with fits.open(io.BytesIO(gzip.decompress(blob)), ignore_missing_simple=True) as hdul:
            return np.array(hdul[0].data)


def _astropy_fits(data: np.ndarray, **header) -> bytes:
    hdu = fits.PrimaryHDU(data)
    for key, value in header.items():
        hdu.header[key] = value
    out = io.BytesIO()
    hdu.writeto(out)
    return gzip.compress(out.getvalue())


# --------------------------------------------------------------------------- FITS decoding

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int32, np.int64,
                                   np.uint8])
def test_decode_matches_astropy_for_every_bitpix(dtype) -> None:
    rng = np.random.default_rng(0)
    data = (rng.normal(0, 1000, (63, 51))).astype(dtype) if np.issubdtype(dtype, np.floating) \
        else rng.integers(0, 200, (63, 51)).astype(dtype)
    blob = _astropy_fits(data)
    ours = decode_stamp(blob)
    assert ours.dtype == np.float32 and ours.shape == (63, 51)
    np.testing.assert_array_equal(ours, _astropy_data(blob).astype(np.float32))


@pytest.mark.parametrize("bitpix,bscale,bzero", [(16, 0.5, 100.0), (32, 2.5, -3.0),
                                                  (16, 1.0, 32768.0), (8, 2.0, 1.0)])
def test_scaled_integers_match_astropy(bitpix: int, bscale: float, bzero: float) -> None:
    rng = np.random.default_rng(1)
    dtype = {8: ">u1", 16: ">i2", 32: ">i4"}[bitpix]
    info = np.iinfo(np.dtype(dtype))
    raw = rng.integers(info.min, info.max, (21, 17)).astype(dtype)
    header = "".join(f"{k:<8}= {v:>20}".ljust(80) for k, v in [
        ("SIMPLE", "T"), ("BITPIX", bitpix), ("NAXIS", 2), ("NAXIS1", 17), ("NAXIS2", 21),
        ("BSCALE", bscale), ("BZERO", bzero)]) + "END".ljust(80)
    body = header.ljust(2880).encode() + raw.tobytes()
    body += b"\0" * (-len(body) % 2880)
    blob = gzip.compress(body)
    np.testing.assert_array_equal(decode_stamp(blob), _astropy_data(blob).astype(np.float32))


def test_blank_integers_become_nan_like_astropy() -> None:
    data = np.arange(12, dtype=np.int16).reshape(3, 4)
    blob = _astropy_fits(data, BLANK=5, BSCALE=2.0, BZERO=1.0)
    ours = decode_stamp(blob)
    np.testing.assert_array_equal(ours, _astropy_data(blob).astype(np.float32))
    assert np.isnan(ours[1, 1]) and np.isnan(ours).sum() == 1


def test_encode_fits_gz_round_trips_through_astropy() -> None:
    image = np.random.default_rng(2).normal(size=(63, 63)).astype(np.float32)
    image[3, 4] = np.nan
    blob = encode_fits_gz(image)
    np.testing.assert_array_equal(_astropy_data(blob), image)
    np.testing.assert_array_equal(decode_stamp(blob), image)
    finite = np.nan_to_num(image) * 100
    scaled = decode_stamp(encode_fits_gz(finite, bitpix=16, bscale=0.1, bzero=5.0))
    np.testing.assert_allclose(scaled, finite, atol=0.051)
    with pytest.raises(ValueError, match="non-finite"):
        encode_fits_gz(image, bitpix=16)


def test_uncompressed_fits_is_accepted() -> None:
    raw = gzip.decompress(encode_fits_gz(np.ones((5, 5), np.float32)))
    np.testing.assert_array_equal(decode_stamp(raw), np.ones((5, 5), np.float32))


@pytest.mark.shared_data
def test_real_stamps_equal_astropy_exactly(alert_files: list[Path]) -> None:
    decoder = AlertDecoder()
    checked = 0
    for path in alert_files:
        for item in decoder.iter_records(path.read_bytes()):
            if not isinstance(item, Alert):
                continue
            for blob in item.cutouts:
                ours = decode_stamp(blob)
                ref = _astropy_data(blob)
                assert ours.shape == ref.shape
                np.testing.assert_array_equal(ours, ref)  # NaNs compare equal here
                checked += 1
    assert checked >= 3 * 400


# --------------------------------------------------------------------------- hostile stamps

def test_gzip_bomb_is_refused() -> None:
    bomb = gzip.compress(b"SIMPLE  =" + b" " * (64 * 1024 * 1024))
    with pytest.raises(AlertError) as err:
        gunzip_stamp(bomb, StampLimits(max_decompressed_bytes=1024 * 1024))
    assert err.value.reason is Reason.DECOMPRESSED_TOO_LARGE


@pytest.mark.parametrize("blob,reason", [
    (b"not a stamp", Reason.CORRUPT_GZIP),
    (b"\x1f\x8b\x08\x00garbage-garbage-garbage", Reason.CORRUPT_GZIP),
])
def test_corrupt_gzip(blob: bytes, reason: Reason) -> None:
    with pytest.raises(AlertError) as err:
        decode_stamp(blob)
    assert err.value.reason is reason


def test_truncated_gzip() -> None:
    blob = encode_fits_gz(np.zeros((63, 63), np.float32))
    with pytest.raises(AlertError) as err:
        gunzip_stamp(blob[: len(blob) // 2])
    assert err.value.reason is Reason.CORRUPT_GZIP


def test_gzip_crc_is_checked() -> None:
    blob = bytearray(encode_fits_gz(np.zeros((63, 63), np.float32)))
    blob[-6] ^= 0xFF  # inside the CRC32 trailer
    with pytest.raises(AlertError) as err:
        gunzip_stamp(bytes(blob))
    assert err.value.reason is Reason.CORRUPT_GZIP


def _raw_fits(cards: list[tuple[str, str]], data: bytes = b"", end: bool = True) -> bytes:
    header = "".join(f"{k:<8}= {v:>20}".ljust(80) for k, v in cards)
    if end:
        header += "END".ljust(80)
    return header.ljust(-(-len(header) // 2880) * 2880).encode() + data


BASE = [("SIMPLE", "T"), ("BITPIX", "-32"), ("NAXIS", "2"), ("NAXIS1", "4"), ("NAXIS2", "4")]


@pytest.mark.parametrize("cards,reason", [
    ([("SIMPLE", "F")] + BASE[1:], Reason.FITS_HEADER_INVALID),
    ([BASE[0], ("BITPIX", "12")] + BASE[2:], Reason.FITS_HEADER_INVALID),
    (BASE[:2] + [("NAXIS", "3")] + BASE[3:], Reason.FITS_HEADER_INVALID),
    (BASE[:3] + [("NAXIS1", "999999999"), BASE[4]], Reason.FITS_HEADER_INVALID),
    (BASE[:3] + [("NAXIS1", "0"), BASE[4]], Reason.FITS_HEADER_INVALID),
    (BASE[:3] + [("NAXIS1", "abc"), BASE[4]], Reason.FITS_HEADER_INVALID),
    ([c for c in BASE if c[0] != "BITPIX"], Reason.FITS_HEADER_INVALID),
    (BASE + [("BSCALE", "0.0")], Reason.FITS_HEADER_INVALID),
])
def test_absurd_headers(cards, reason) -> None:
    with pytest.raises(AlertError) as err:
        parse_fits(_raw_fits(cards, b"\0" * 2880))
    assert err.value.reason is reason


def test_fits_without_end_or_data() -> None:
    with pytest.raises(AlertError) as err:
        parse_fits(_raw_fits(BASE, end=False))
    assert err.value.reason is Reason.FITS_TRUNCATED
    with pytest.raises(AlertError) as err:  # an endless header hits the block limit
        parse_fits(_raw_fits(BASE * 200, end=False), StampLimits(max_header_blocks=4))
    assert err.value.reason is Reason.FITS_HEADER_INVALID
    with pytest.raises(AlertError) as err:
        parse_fits(_raw_fits(BASE, b"\0" * 63))  # 4×4 float32 needs 64 bytes
    assert err.value.reason is Reason.FITS_TRUNCATED


# --------------------------------------------------------------------------- geometry

def test_pad_side_follows_the_candidate_position() -> None:
    stamp = np.arange(51 * 63, dtype=np.float32).reshape(51, 63)
    low, padded = place_on_grid(stamp, 63, xpos=1500.0, ypos=19.8)  # cut by the y=0 edge
    assert padded and low.shape == (63, 63)
    assert np.isnan(low[:12]).all() and (low[12:] == stamp).all()
    high, _ = place_on_grid(stamp, 63, xpos=1500.0, ypos=3070.0)  # cut by the top edge
    assert (high[:51] == stamp).all() and np.isnan(high[51:]).all()
    cols = np.ones((63, 55), np.float32)
    right, _ = place_on_grid(cols, 63, xpos=3048.6, ypos=700.0)
    assert np.isnan(right[:, 55:]).all() and not np.isnan(right[:, :55]).any()


def test_shape_policies_and_refusals() -> None:
    square = np.zeros((63, 63), np.float32)
    assert place_on_grid(square, 63, None, None) == (square, False)
    for stamp, kwargs in [(np.zeros((51, 63)), {"policy": "reject", "xpos": 1.0, "ypos": 1.0}),
                          (np.zeros((51, 63)), {"xpos": 1.0, "ypos": None}),
                          (np.zeros((70, 63)), {"xpos": 1.0, "ypos": 1.0})]:
        with pytest.raises(AlertError) as err:
            place_on_grid(stamp, 63, **kwargs)
        assert err.value.reason is Reason.STAMP_SHAPE


@pytest.mark.shared_data
def test_real_edge_stamps_are_padded_with_the_source_centred(alert_files: list[Path]) -> None:
    """For each real CCD-edge alert, padding on the side given by xpos/ypos puts the
    candidate's flux (7×7 core of the difference image) at the centre."""
    decoder = AlertDecoder()
    padded = 0
    for path in alert_files:
        for item in decoder.iter_records(path.read_bytes()):
            if not isinstance(item, Alert):
                continue
            diff = decode_stamp(item.difference)
            if diff.shape == (63, 63):
                continue
            full, was_padded = place_on_grid(diff, 63, item.candidate["xpos"],
                                             item.candidate["ypos"])
            assert was_padded
            # Padding on the other side must put much less signal at the centre.
            other, _ = place_on_grid(diff, 63,
                                     3072 - item.candidate["xpos"] if diff.shape[1] < 63 else 0,
                                     3080 - item.candidate["ypos"] if diff.shape[0] < 63 else 0)
            core = abs(np.nansum(full[28:35, 28:35]))
            assert core > 2 * abs(np.nansum(other[28:35, 28:35])), path.name
            prepared = prepare_alert(item)
            assert prepared.padded and prepared.image.shape == (21, 21, 3)
            padded += 1
    assert padded == 4


# --------------------------------------------------------------------------- preprocessing

def test_crop_is_centred_and_normalized() -> None:
    stamp = np.zeros((63, 63), np.float32)
    stamp[31, 31] = 10.0  # the candidate pixel
    stamp[0, 0] = 99.0  # outside the crop: must not affect normalization
    out = preprocess_stamps([stamp, stamp * 2 - 5, -stamp], crop_size=21)
    assert out.shape == (21, 21, 3) and out.dtype == np.float32
    assert out[10, 10, 0] == 1.0 and out[0, 0, 0] == 0.0
    assert out[10, 10, 1] == 1.0
    assert out[10, 10, 2] == 0.0 and out[0, 0, 2] == 1.0
    assert ((out >= 0) & (out <= 1)).all()


def test_nan_becomes_zero_before_normalization() -> None:
    stamp = np.full((63, 63), 5.0, np.float32)
    stamp[30, 30] = np.nan
    stamp[31, 31] = 7.0
    stamp[32, 32] = np.inf
    out = preprocess_stamps([stamp] * 3)
    # min is the NaN→0 pixel, max is 7: plain pixels map to 5/7.
    assert out[9, 9, 0] == 0.0 and out[10, 10, 0] == 1.0 and out[11, 11, 0] == 0.0
    assert out[0, 0, 0] == pytest.approx(5 / 7)
    assert np.isfinite(out).all()


def test_constant_stamp_is_zeros_and_input_untouched() -> None:
    stamp = np.full((63, 63), 3.0, np.float32)
    before = stamp.copy()
    out = preprocess_stamps([stamp, stamp, stamp])
    assert (out == 0).all()
    np.testing.assert_array_equal(stamp, before)


def test_all_nan_crop_is_an_error() -> None:
    good = np.ones((63, 63), np.float32)
    bad = good.copy()
    bad[21:42, 21:42] = np.nan
    with pytest.raises(AlertError) as err:
        preprocess_stamps([good, bad, good])
    assert err.value.reason is Reason.ALL_NAN and "template" in err.value.detail


def _one_by_one(stamps: list[np.ndarray], crop: int) -> np.ndarray:
    """The preprocessing written plainly for one alert, as the reference."""
    lo = (stamps[0].shape[0] - crop) // 2
    image = np.stack([s[lo:lo + crop, lo:lo + crop] for s in stamps], axis=-1).astype(np.float32)
    image[~np.isfinite(image)] = 0.0
    low = image.min(axis=(0, 1))
    with np.errstate(over="ignore"):
        span = image.max(axis=(0, 1)) - low
    if not np.isfinite(span).all():
        wide = image.astype(np.float64)
        low64 = wide.min(axis=(0, 1))
        span64 = wide.max(axis=(0, 1)) - low64
        return ((wide - low64) / np.where(span64 > 0, span64, 1.0)).astype(np.float32)
    image -= low
    np.divide(image, span, out=image, where=span > 0)
    return image


def test_a_batch_is_bit_identical_to_each_alert_alone() -> None:
    rng = np.random.default_rng(7)
    triplets = []
    for i in range(40):
        stamps = [rng.normal(100, 20, (63, 63)).astype(">f4" if i % 2 else np.float32)
                  for _ in range(3)]
        if i % 5 == 1:
            stamps[0][rng.random((63, 63)) < 0.2] = np.nan      # NaN pixels
        if i % 7 == 2:
            stamps[1][:] = 3.0                                   # constant stamp
        if i % 9 == 3:
            stamps[2][30, 30], stamps[2][31, 31] = 3e38, -3e38   # float32 range overflows
        if i % 11 == 4:
            stamps = [s.astype(np.float64) for s in stamps]      # BITPIX -64
        triplets.append(stamps)
    all_nan = [np.ones((63, 63), np.float32), np.full((63, 63), np.nan, np.float32),
               np.ones((63, 63), np.float32)]
    triplets.insert(17, all_nan)
    images, errors = preprocess_batch(triplets, 21)
    assert images.shape == (41, 21, 21, 3) and images.dtype == np.float32
    assert [i for i, e in enumerate(errors) if e is not None] == [17]
    assert errors[17].reason is Reason.ALL_NAN and "template" in errors[17].detail
    for i, stamps in enumerate(triplets):
        if i != 17:
            np.testing.assert_array_equal(images[i], _one_by_one(stamps, 21), err_msg=str(i))
            assert images[i].tobytes() == _one_by_one(stamps, 21).tobytes()
    assert preprocess_batch([], 21)[0].shape == (0, 21, 21, 3)


@pytest.mark.parametrize("crop", [5, 21, 33, 63])
def test_configurable_crop(crop: int) -> None:
    alert = AlertDecoder().decode(synthetic_alert(3))[0]
    prepared = prepare_alert(alert, PreprocessConfig(crop_size=crop))
    assert prepared.image.shape == (crop, crop, 3)


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="crop_size"):
        PreprocessConfig(crop_size=64)
    with pytest.raises(ValueError, match="non_square"):
        PreprocessConfig(non_square="stretch")  # type: ignore[arg-type]


def test_prepare_alert_and_batch() -> None:
    decoder = AlertDecoder()
    inputs = [prepare_alert(decoder.decode(synthetic_alert(s, nan_pixels=20))[0])
              for s in range(4)]
    images, features = stack_inputs(inputs)
    assert images.shape == (4, 21, 21, 3) and features.shape[0] == 4
    assert np.isfinite(images).all()
    # The synthetic source sits at the centre of the difference image.
    assert all(np.unravel_index(i.image[..., 2].argmax(), (21, 21)) == (10, 10) for i in inputs)
    assert PreprocessConfig().as_dict()["version"] == PREPROCESSING_VERSION


@pytest.mark.shared_data
def test_labelled_real_stamps_flow_through(data_dir: Path) -> None:
    npz = np.load(data_dir / "labelled" / "alerce-test-stamps" / "stamps_63x63_float32.npz")
    images = npz["images"]
    out = np.stack([preprocess_stamps([img[..., c] for c in range(3)]) for img in images])
    assert out.shape == (len(images), 21, 21, 3)
    assert np.isfinite(out).all() and out.min() == 0.0 and out.max() == 1.0
