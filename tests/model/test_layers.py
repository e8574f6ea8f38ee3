"""worker.model.layers: the rotations match numpy's, whatever way they are computed."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from worker.model.layers import RotationStack, rot90  # noqa: E402


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rot90_is_numpys_rotation(k: int) -> None:
    images = np.random.default_rng(k).random((2, 5, 5, 3)).astype(np.float32)
    got = keras.ops.convert_to_numpy(rot90(keras.ops.convert_to_tensor(images), k))
    np.testing.assert_array_equal(got, np.rot90(images, k, axes=(1, 2)))


def test_rotation_stack_is_rotation_major() -> None:
    images = np.random.default_rng(0).random((3, 4, 4, 1)).astype(np.float32)
    stacked = keras.ops.convert_to_numpy(RotationStack()(images))
    expected = np.concatenate([np.rot90(images, k, axes=(1, 2)) for k in range(4)])
    np.testing.assert_array_equal(stacked, expected)
