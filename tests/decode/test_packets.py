"""worker.decode.packets: built alerts are deterministic, unique and decode like real ones."""

from __future__ import annotations

import numpy as np

from worker.decode.alerts import AlertDecoder
from worker.decode.packets import (
    build_record,
    default_candidate,
    encode_confluent,
    object_id_for,
    synthetic_alert,
)
from worker.prepare.stamps import decode_stamp


def test_object_ids_are_unique_and_ztf_shaped() -> None:
    ids = {object_id_for(i) for i in range(5000)}
    assert len(ids) == 5000
    assert all(len(i) == 12 and i.startswith("ZTF26") and i[5:].isalpha() for i in ids)


def test_synthetic_alert_is_deterministic() -> None:
    assert synthetic_alert(4) == synthetic_alert(4)
    assert synthetic_alert(4) != synthetic_alert(5)


def test_synthetic_alert_content() -> None:
    alert = AlertDecoder().decode(synthetic_alert(9, size=63, nan_pixels=7))[0]
    for blob in alert.cutouts:
        stamp = decode_stamp(blob)
        assert stamp.shape == (63, 63) and np.isnan(stamp).sum() == 7
    diff = np.nan_to_num(decode_stamp(alert.difference))
    assert np.unravel_index(diff.argmax(), diff.shape) == (31, 31)


def test_confluent_framing_header() -> None:
    record = build_record("ZTF26aaaaaab", 5, default_candidate(5, 2460000.5), [None] * 3)
    payload = encode_confluent(record, schema_id=258)
    assert payload[0] == 0 and int.from_bytes(payload[1:5], "big") == 258
