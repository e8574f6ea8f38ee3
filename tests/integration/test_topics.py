"""``stamp-worker topics`` against the real broker: created as specified, idempotent."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from worker.cli import main


@pytest.fixture
def names(kafka_admin: AdminClient) -> Iterator[dict[str, str]]:
    """Unique topic names for one test; whatever of them exists is deleted after it."""
    suffix = uuid.uuid4().hex[:10]
    out = {"input": f"t-alerts-{suffix}", "output": f"t-labels-{suffix}",
           "dead_letter": f"t-dead-{suffix}"}
    yield out
    existing = set(kafka_admin.list_topics(timeout=10).topics)
    made = [name for name in out.values() if name in existing]
    if made:
        for future in kafka_admin.delete_topics(made, operation_timeout=10).values():
            future.result(20)


def write_config(path: Path, bootstrap: str, names: dict[str, str]) -> str:
    path.write_text(f"kafka: {{bootstrap_servers: '{bootstrap}'}}\n"
                    f"topics: {{input: {names['input']}, output: {names['output']}, "
                    f"dead_letter: {names['dead_letter']}}}\n")
    return str(path)


def topic_config(admin: AdminClient, name: str) -> dict[str, str]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    entries = admin.describe_configs([resource])[resource].result(20)
    return {key: entry.value for key, entry in entries.items()}


def test_topics_creates_the_three_topics_sized_for_alerts_once(
        tmp_path: Path, kafka_bootstrap: str, kafka_admin: AdminClient,
        names: dict[str, str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    config = write_config(tmp_path / "w.yaml", kafka_bootstrap, names)

    assert main(["topics", "--config", config, "--describe"]) == 1  # nothing there yet
    assert capsys.readouterr().out.count("missing") == 3

    assert main(["topics", "--config", config, "--partitions", "2",
                 "--retention-days", "2", "--dead-letter-retention-days", "10"]) == 0
    out = capsys.readouterr().out
    assert out.count("created") == 3
    topics = kafka_admin.list_topics(timeout=10).topics
    assert len(topics[names["input"]].partitions) == 2
    assert len(topics[names["output"]].partitions) == 2
    assert len(topics[names["dead_letter"]].partitions) == 1
    alerts = topic_config(kafka_admin, names["input"])
    assert alerts["max.message.bytes"] == str(16 * 1024 * 1024)
    assert alerts["retention.ms"] == str(2 * 86_400_000)
    dead = topic_config(kafka_admin, names["dead_letter"])
    assert dead["retention.ms"] == str(10 * 86_400_000)
    assert dead["max.message.bytes"] == str(16 * 1024 * 1024)

    # Again, with other sizes: nothing changes, the differences are noted.
    assert main(["topics", "--config", config, "--partitions", "4"]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r" exists +\d", out)) == 3 and "created" not in out
    assert f"note: {names['input']} exists with 2 partitions (wanted 4)" in out
    assert len(kafka_admin.list_topics(timeout=10).topics[names["input"]].partitions) == 2


def test_topics_refuses_more_replicas_than_brokers(
        tmp_path: Path, kafka_bootstrap: str, names: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    config = write_config(tmp_path / "w.yaml", kafka_bootstrap, names)
    with pytest.raises(SystemExit, match="--replication-factor 3 needs 3 brokers, the "
                                         "cluster has 1"):
        main(["topics", "--config", config, "--replication-factor", "3"])


def test_a_pattern_input_is_listed_not_created(
        tmp_path: Path, kafka_bootstrap: str, names: dict[str, str],
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    names_with_pattern = {**names, "input": "^ztf_.*_programid1$"}
    config = write_config(tmp_path / "w.yaml", kafka_bootstrap, names_with_pattern)
    assert main(["topics", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "^ztf_.*_programid1$" in out and "is a pattern" in out
    assert out.count("created") == 2
