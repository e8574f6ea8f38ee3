"""worker.labeller: the classification core shared by the worker and classify."""

from __future__ import annotations

import io

import fastavro
import keras
import numpy as np
import pytest

from tests.model.test_artifact import _artifact
from training.models import build_rotinv
from worker.decode.alerts import AlertDecoder
from worker.decode.packets import encode_container, synthetic_alert
from worker.labeller import ASTEROID, Labeller, known_asteroid
from worker.model.artifact import CLASS_NAMES, StampModel
from worker.prepare.stamps import prepare_alert
from worker.stream.config import AsteroidPolicy
from worker.stream.output import LABEL_SCHEMA, Source, decode_labels, encode_label

SOURCE = Source("alerts", 2, 41, 1_790_000_000_000)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> StampModel:
    keras.utils.set_random_seed(1)
    path = _artifact(tmp_path_factory.mktemp("m") / "rotinv", build_rotinv(),
                     ["image", "features"])
    return StampModel.load(path)


def _records(payload: bytes) -> list[dict]:
    return list(fastavro.reader(io.BytesIO(payload)))


def test_decode_keeps_good_records_and_says_why_others_fail(model: StampModel) -> None:
    labeller = Labeller(model)
    work, rejected = labeller.decode(synthetic_alert(1), SOURCE, 123)
    assert len(work) == 1 and rejected == []
    assert work[0].source == SOURCE and work[0].consumed_at_ms == 123
    assert work[0].prepared is not None
    work, rejected = labeller.decode(b"garbage", SOURCE, 0)
    assert work == [] and [r.error.reason.value for r in rejected] == ["unknown_format"]
    assert rejected[0].record_index is None
    # A broker-written container: the bad record is named by its index, the others pass.
    good = _records(synthetic_alert(2))[0]
    edge = _records(synthetic_alert(3, size=51, ypos=None))[0]
    work, rejected = labeller.decode(encode_container([good, edge, good]), SOURCE, 0)
    assert len(work) == 2
    assert [(r.error.reason.value, r.record_index) for r in rejected] == [("stamp_shape", 1)]


def test_decode_batch_equals_decoding_each_message(model: StampModel) -> None:
    """One vectorized call per batch, the same results as one message at a time."""
    labeller = Labeller(model)
    good = _records(synthetic_alert(2))[0]
    edge = _records(synthetic_alert(3, size=51, ypos=None))[0]
    payloads = [synthetic_alert(20), b"garbage", encode_container([good, edge, good]),
                synthetic_alert(21), b"\x00junk"]
    work, refused = labeller.decode_batch(
        [(p, SOURCE, 7, tag) for tag, p in enumerate(payloads)])
    one_by_one = [labeller.decode(p, SOURCE, 7) for p in payloads]
    expected_work = [w for good_work, _ in one_by_one for w in good_work]
    assert [w.alert.candid for w in work] == [w.alert.candid for w in expected_work]
    for got, want in zip(work, expected_work, strict=True):
        np.testing.assert_array_equal(got.prepared.image, want.prepared.image)
        np.testing.assert_array_equal(got.prepared.features, want.prepared.features)
    # Refusals carry their message's position, in message order.
    assert [(tag, r.error.reason.value, r.record_index) for tag, r in refused] == [
        (tag, r.error.reason.value, r.record_index)
        for tag, (_, bad) in enumerate(one_by_one) for r in bad]
    assert [tag for tag, _ in refused] == [1, 2, 4]


def test_infer_keeps_order_and_matches_the_model(model: StampModel) -> None:
    policy = AsteroidPolicy(enabled=True, max_ssdistnr_arcsec=5.0)
    labeller = Labeller(model, asteroid_policy=policy)
    payloads = [synthetic_alert(10), synthetic_alert(11, ssnamenr="1234", ssdistnr=0.5),
                synthetic_alert(12, size=55, xpos=3.0, ypos=1500.0)]
    work = [w for p in payloads for w in labeller.decode(p, SOURCE, 0)[0]]
    outcomes = labeller.infer(work)
    assert [o.method for o in outcomes] == ["cnn", "asteroid_policy", "cnn"]
    assert [o.flags for o in outcomes] == [[], [], ["stamp_padded"]]
    np.testing.assert_array_equal(outcomes[1].probabilities, np.eye(5)[ASTEROID])
    decoder = AlertDecoder()
    inputs = [prepare_alert(decoder.decode(payloads[i])[0], model.preprocess) for i in (0, 2)]
    direct = model.predict(np.stack([i.image for i in inputs]),
                           np.stack([i.features for i in inputs]))
    np.testing.assert_allclose(outcomes[0].probabilities, direct[0], rtol=1e-6)
    np.testing.assert_allclose(outcomes[2].probabilities, direct[1], rtol=1e-6)
    assert labeller.infer([]) == []


def test_record_follows_the_label_schema(model: StampModel) -> None:
    labeller = Labeller(model)
    work, _ = labeller.decode(synthetic_alert(5), SOURCE, 1_790_000_000_100)
    outcome = labeller.infer(work)[0]
    record = labeller.record(work[0], outcome, 1_790_000_000_250)
    assert list(record) == [f["name"] for f in LABEL_SCHEMA["fields"]]
    assert record["top_class"] == CLASS_NAMES[int(np.argmax(outcome.probabilities))]
    assert (record["source_topic"], record["source_partition"], record["source_offset"]) == \
        ("alerts", 2, 41)
    back = decode_labels(encode_label(record))[0]
    assert back["objectId"] == work[0].alert.object_id and back["method"] == "cnn"


def test_known_asteroid_rules(model: StampModel) -> None:
    decoder = AlertDecoder()

    def alert(**fields: object):
        return decoder.decode(synthetic_alert(7, **fields))[0]

    assert known_asteroid(alert(ssnamenr="433", ssdistnr=1.0, ssmagnr=19.0), 5.0, None)
    assert not known_asteroid(alert(ssnamenr="433", ssdistnr=7.0), 5.0, None)
    assert not known_asteroid(alert(ssnamenr="null", ssdistnr=-999.0), 5.0, None)
    assert not known_asteroid(alert(), 5.0, None)
    assert not known_asteroid(alert(ssnamenr="433", ssdistnr=1.0, ssmagnr=21.0), 5.0, 20.0)
    assert known_asteroid(alert(ssnamenr="433", ssdistnr=1.0, ssmagnr=19.5), 5.0, 20.0)



def test_on_predictions_gets_each_model_call_not_the_policy_labels(model: StampModel) -> None:
    calls: list[np.ndarray] = []
    labeller = Labeller(model, asteroid_policy=AsteroidPolicy(enabled=True),
                        on_predictions=calls.append)
    asteroid = synthetic_alert(11, ssnamenr="1234", ssdistnr=0.5)
    work = [w for p in (synthetic_alert(10), asteroid, synthetic_alert(12))
            for w in labeller.decode(p, SOURCE, 0)[0]]
    outcomes = labeller.infer(work)
    assert len(calls) == 1 and calls[0].shape == (2, len(CLASS_NAMES))
    np.testing.assert_array_equal(calls[0], [outcomes[0].probabilities,
                                             outcomes[2].probabilities])
    only_policy = labeller.decode(asteroid, SOURCE, 0)[0]
    labeller.infer(only_policy)
    labeller.infer([])
    assert len(calls) == 1  # no model call, nothing to count
