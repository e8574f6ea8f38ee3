"""worker.decodepool: decoding in helper processes gives what the worker's process gives."""

from __future__ import annotations

import pickle
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.test_model import _artifact
from training.models import build_rotinv
from worker.config import AsteroidPolicy
from worker.decodepool import DecodePool, decode_chunk, refusal_to_rejected
from worker.labeller import Labeller
from worker.model import StampModel
from worker.output import Source
from worker.packets import synthetic_alert
from worker.stamps import PreprocessConfig


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> StampModel:
    keras.utils.set_random_seed(3)
    return StampModel.load(_artifact(tmp_path_factory.mktemp("m") / "rotinv", build_rotinv(),
                                     ["image", "features"]))


def _items() -> list[tuple[bytes, Source, int, int]]:
    payloads = [synthetic_alert(i, nan_pixels=3 * (i % 3)) for i in range(6)]
    payloads.insert(2, b"junk")
    payloads.insert(5, synthetic_alert(40, size=51, ypos=None))       # refused in prepare
    payloads.append(synthetic_alert(41, ssnamenr="99", ssdistnr=0.0))  # asteroid policy
    return [(p, Source("in", 0, 100 + i, 5), 1234, i) for i, p in enumerate(payloads)]


def test_decode_chunk_matches_the_labeller_and_travels_light(model: StampModel) -> None:
    policy = AsteroidPolicy(enabled=True)
    local = Labeller(model, asteroid_policy=policy)
    helper_side = Labeller(None, asteroid_policy=policy, preprocess=model.preprocess)
    work, refused = decode_chunk(_items(), helper_side)
    expected = []
    for value, source, consumed, _ in _items():
        expected += local.decode(value, source, consumed)[0]
    assert [w.alert.candid for w in work] == [w.alert.candid for w in expected]
    assert [w.tag for w in work] == [0, 1, 3, 4, 6, 7, 8]
    for got, want in zip(work, expected, strict=True):
        assert got.source == want.source and got.consumed_at_ms == 1234
        assert got.alert.science == b"" and got.alert.candidate == {}
        if want.prepared is None:
            assert got.prepared is None
        else:
            np.testing.assert_array_equal(got.prepared.image, want.prepared.image)
            np.testing.assert_array_equal(got.prepared.features, want.prepared.features)
    assert [(tag, reason) for tag, reason, _, _ in refused] == [(2, "unknown_format"),
                                                                 (5, "stamp_shape")]
    tag, rejected = refusal_to_rejected(refused[1])
    assert tag == 5 and rejected.error.reason.value == "stamp_shape"
    # What crosses the process boundary is small (an alert message is ~47 kB here): no
    # cutouts, no candidate record; the 21×21×3 float32 image is 5.3 kB.
    assert len(pickle.dumps(work)) < 8_000 * len(work)


def test_a_pool_of_helper_processes_gives_the_same_inputs(model: StampModel) -> None:
    pool = DecodePool(1, model.preprocess, AsteroidPolicy())
    try:
        work, refused = pool.submit(_items()).result(60)
    finally:
        pool.close()
    local, local_refused = decode_chunk(_items(), Labeller(model))
    assert [w.alert.candid for w in work] == [w.alert.candid for w in local]
    assert refused == local_refused
    for a, b in zip(work, local, strict=True):
        np.testing.assert_array_equal(a.prepared.image, b.prepared.image)


def test_pool_and_labeller_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DecodePool(0, PreprocessConfig(), AsteroidPolicy())
    with pytest.raises(ValueError, match="needs a model"):
        Labeller(None)
