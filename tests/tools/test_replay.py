"""worker.tools.replay without a broker: pacing, times, settings, command-line checks."""

from __future__ import annotations

import pytest

from worker.cli import main
from worker.tools.replay import Pacer, parse_settings, parse_time


def test_pacer_schedules() -> None:
    assert [Pacer(rate=4).due(i) for i in range(5)] == [0, 0.25, 0.5, 0.75, 1.0]
    assert [Pacer(burst=3, interval=2).due(i) for i in range(7)] == [0, 0, 0, 2, 2, 2, 4]
    assert Pacer().due(10_000) == 0
    assert Pacer(rate=250).describe() == "250 alerts/s"
    assert Pacer(burst=5, interval=0.5).describe() == "bursts of 5 every 0.5 s"
    for bad in ({"rate": 0}, {"rate": float("nan")}, {"burst": 0},
                {"burst": 2, "interval": -1}, {"rate": 1, "burst": 2}):
        with pytest.raises(ValueError):
            Pacer(**bad)


def test_parse_time() -> None:
    assert parse_time("1970-01-01T00:00:01Z") == 1000
    assert parse_time("1970-01-01T00:00:01") == 1000               # UTC by default
    assert parse_time("1970-01-01T01:00:01+01:00") == 1000
    assert parse_time("2026-11-25") == 1_795_564_800_000
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("yesterday")


def test_parse_settings() -> None:
    assert parse_settings(["security.protocol=SASL_SSL", "sasl.password=a=b"]) == {
        "security.protocol": "SASL_SSL", "sasl.password": "a=b"}
    with pytest.raises(ValueError, match="key=value"):
        parse_settings(["acks"])


@pytest.mark.parametrize(("argv", "message"), [
    (["--topic", "t"], "not both"),
    (["--topic", "t", "x.avro", "--source-topic", "s"], "not both"),
    (["--topic", "t", "--source-topic", "s", "--from", "tomorrow"], "ISO 8601"),
    (["--topic", "t", "--source-topic", "s", "--from", "2026-11-25",
      "--to", "2026-11-24"], "later than"),
    (["--topic", "t", "--source-topic", "s", "-X", "acks"], "key=value"),
    (["--topic", "t", "--source-topic", "s", "--rate", "-5"], "positive"),
    (["--topic", "t", "missing.avro"], "no such file"),
])
def test_command_line_errors_say_what_to_fix(argv: list[str], message: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    with pytest.raises(SystemExit, match=message):
        main(["replay", *argv])


def test_no_broker_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    with pytest.raises(SystemExit, match="KAFKA_BOOTSTRAP_SERVERS"):
        main(["replay", "--topic", "t", "x.avro"])
