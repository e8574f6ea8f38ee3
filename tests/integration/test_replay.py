"""stamp-worker replay on a real broker: pace, archives, keys, time bounds."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer

from tests.decode.test_sources import write_archive
from worker.cli import main
from worker.decode.alerts import AlertDecoder
from worker.decode.packets import object_id_for, synthetic_alert
from worker.decode.sources import Payload
from worker.stream.metrics import jd_to_unix
from worker.tools.replay import Pacer, make_producer, replay


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list:
    """Every message of a topic (waits for ``expected``, then reads 1 s more)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out: list = []
    idle = 0
    while (len(out) < expected and idle < timeout) or idle < 2:
        batch = [m for m in consumer.consume(1000, 0.5) if m.error() is None]
        out += batch
        idle = 0 if batch else idle + 0.5
    consumer.close()
    return out


def test_a_steady_rate_is_honoured_within_10_percent_over_10_s(
        kafka_bootstrap: str, topic_factory) -> None:
    topic = topic_factory("replay-rate", partitions=3)
    rate, seconds = 200.0, 10.0
    payloads = [Payload(str(i), synthetic_alert(i)) for i in range(int(rate * seconds))]
    producer = make_producer({"bootstrap.servers": kafka_bootstrap})
    summary = replay(payloads, producer, topic, Pacer(rate=rate))
    assert (summary.sent, summary.failed, summary.unkeyed) == (len(payloads), 0, 0)
    messages = read_topic(kafka_bootstrap, topic, len(payloads))
    assert len(messages) == len(payloads)
    # The broker's record timestamps (set when each message was produced) say when it left.
    stamps = np.sort([m.timestamp()[1] for m in messages]) / 1000.0
    span = stamps[-1] - stamps[0]
    achieved = (len(stamps) - 1) / span
    print(f"offered {rate:.0f}/s for {seconds:.0f} s: achieved {achieved:.1f}/s over "
          f"{span:.2f} s; summary {summary.rate:.1f}/s")
    assert abs(achieved - rate) <= 0.1 * rate
    assert abs(summary.rate - rate) <= 0.1 * rate
    # Steady, not bunched: every whole second carries its share (±10 %).
    per_second = np.bincount(((stamps - stamps[0]) // 1.0).astype(int))[:int(seconds)]
    assert per_second.min() >= 0.9 * rate and per_second.max() <= 1.1 * rate, per_second


def test_bursts_leave_together_at_the_interval(kafka_bootstrap: str, topic_factory) -> None:
    topic = topic_factory("replay-burst")
    payloads = [Payload(str(i), synthetic_alert(i)) for i in range(90)]
    producer = make_producer({"bootstrap.servers": kafka_bootstrap})
    replay(payloads, producer, topic, Pacer(burst=30, interval=1.5))
    stamps = np.sort([m.timestamp()[1] for m in read_topic(kafka_bootstrap, topic, 90)])
    groups = [stamps[i:i + 30] for i in (0, 30, 60)]
    assert all(g[-1] - g[0] < 500 for g in groups), [g[-1] - g[0] for g in groups]
    starts = np.diff([g[0] for g in groups])
    assert np.all(np.abs(starts - 1500) < 150), starts


def test_archive_replay_keys_by_object_id_and_sends_bad_alerts_too(
        kafka_bootstrap: str, topic_factory, tmp_path: Path, capsys) -> None:
    members = {f"ztf_public_20261124/{2000 + i}.avro": synthetic_alert(i) for i in range(20)}
    members["ztf_public_20261124/9999.avro"] = b"Obj\x01 truncated"
    archive = write_archive(tmp_path / "ztf_public_20261124.tar.gz", members)
    topic = topic_factory("replay-archive", partitions=2)
    code = main(["replay", str(archive), "--topic", topic, "-b", kafka_bootstrap, "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "sent 21, failed 0" in err and "1 sent without a key" in err
    messages = read_topic(kafka_bootstrap, topic, 21)
    keys = Counter(m.key() for m in messages)
    assert keys == Counter({object_id_for(i).encode(): 1 for i in range(20)} | {None: 1})
    assert sorted(m.value() for m in messages) == sorted(members.values())

    limited = topic_factory("replay-limit")
    assert main(["replay", str(archive), "--topic", limited, "-b", kafka_bootstrap, "-q",
                 "--limit", "5", "--shuffle", "--seed", "1"]) == 0
    assert "sent 5, failed 0" in capsys.readouterr().err
    assert len(read_topic(kafka_bootstrap, limited, 5)) == 5


def test_file_time_bounds_select_on_the_observation_time(
        kafka_bootstrap: str, topic_factory, tmp_path: Path, capsys) -> None:
    from datetime import datetime, timezone

    decoder = AlertDecoder()
    jds = {}
    for i in range(40):          # jd = 2460000.5 + i / 1000: one alert every 86.4 s
        payload = synthetic_alert(i)
        (tmp_path / f"{i}.avro").write_bytes(payload)
        jds[i] = decoder.decode(payload)[0].jd

    def iso(jd: float) -> str:
        return datetime.fromtimestamp(jd_to_unix(jd), timezone.utc).isoformat()

    topic = topic_factory("replay-jd")
    assert main(["replay", str(tmp_path), "--topic", topic, "-b", kafka_bootstrap, "-q",
                 "--from", iso((jds[9] + jds[10]) / 2), "--to", iso((jds[24] + jds[25]) / 2)]
                ) == 0
    assert "25 outside --from/--to" in capsys.readouterr().err
    keys = sorted(m.key() for m in read_topic(kafka_bootstrap, topic, 15))
    assert keys == sorted(object_id_for(i).encode() for i in range(10, 25))


def test_topic_to_topic_between_two_times(kafka_bootstrap: str, topic_factory,
                                          capsys) -> None:
    source = topic_factory("replay-src", partitions=3)
    producer = make_producer({"bootstrap.servers": kafka_bootstrap})
    t0 = 1_790_000_000_000
    for i in range(30):
        value = synthetic_alert(i) if i % 5 else b"not an alert %d" % i
        producer.produce(source, value=value, key=b"orig-%d" % i, timestamp=t0 + 1000 * i,
                         headers=[("n", str(i).encode())], partition=i % 3)
    assert producer.flush(30) == 0
    target = topic_factory("replay-dst")
    start = "2026-09-21T14:13:30Z"        # t0 + 10 s
    end = "2026-09-21T14:13:40Z"          # t0 + 20 s
    assert main(["replay", "--source-topic", source, "--topic", target, "-b", kafka_bootstrap,
                 "--from", start, "--to", end, "-q"]) == 0
    err = capsys.readouterr().err
    assert "sent 10, failed 0" in err, err
    messages = read_topic(kafka_bootstrap, target, 10)
    index = {int(dict(m.headers())["n"]): m for m in messages}
    assert sorted(index) == list(range(10, 20))
    for i, message in index.items():
        # Decodable alerts are keyed by objectId; the others keep their original key.
        assert message.key() == (object_id_for(i).encode() if i % 5 else b"orig-%d" % i)
        assert message.value() == (synthetic_alert(i) if i % 5 else b"not an alert %d" % i)


def test_a_missing_source_topic_is_an_error(kafka_bootstrap: str) -> None:
    with pytest.raises(SystemExit, match="source topic"):
        main(["replay", "--source-topic", f"no-such-topic-{uuid.uuid4().hex[:6]}",
              "--topic", "x", "-b", kafka_bootstrap, "-q"])


def test_a_message_the_producer_refuses_is_counted_and_the_rest_go(
        kafka_bootstrap: str, topic_factory, tmp_path: Path, capsys) -> None:
    for i in range(3):
        (tmp_path / f"{i}.avro").write_bytes(synthetic_alert(i))
    (tmp_path / "huge.avro").write_bytes(b"Obj\x01" + bytes(300_000))
    topic = topic_factory("replay-big")
    code = main(["replay", str(tmp_path), "--topic", topic, "-b", kafka_bootstrap, "-q",
                 "-X", "message.max.bytes=200000"])
    err = capsys.readouterr().err
    assert code == 1
    assert "sent 3, failed 1" in err and "huge.avro" in err and "too large" in err.lower()
    assert len(read_topic(kafka_bootstrap, topic, 3)) == 3
