"""training.feature_study: the log-scale + missing-indicator feature variant."""

from __future__ import annotations

import numpy as np

from training.feature_study import HEAVY_TAILED, log_and_indicators
from worker.features import FEATURE_NAMES


def test_log_scales_and_missing_indicators() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, len(FEATURE_NAMES))).astype(np.float32)
    nd = FEATURE_NAMES.index("ndethist")
    features[:, nd] = np.exp(rng.uniform(0, 8, 50))        # spans decades
    sg3 = FEATURE_NAMES.index("sgscore3")
    features[::5, sg3] = np.nan                            # missing in 10 of 50
    train = np.arange(40)
    out = log_and_indicators(features, train)
    assert out.shape == (50, len(FEATURE_NAMES) + 1)       # one column varies in missingness
    np.testing.assert_array_equal(out[:, -1], np.isnan(features[:, sg3]).astype(np.float32))
    assert not np.isnan(out).any()
    # The heavy-tailed count is log-scaled before standardization: linear in log(ndethist).
    assert "ndethist" in HEAVY_TAILED
    r = np.corrcoef(out[:, nd], np.log1p(features[:, nd]))[0, 1]
    assert r > 0.999
