"""Integration fixtures: a real Kafka broker for the session, and throwaway topics.

``kafka_bootstrap`` uses the broker named by ``$KAFKA_BOOTSTRAP_SERVERS`` when set (e.g.
one started with ``make kafka-start``), else starts the development broker of
``worker.tools.devbroker`` once for the whole session (about 5 s once its jars are cached) and
stops it at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from worker.tools import devbroker
from worker.tools.topics import TopicSpec, ensure_topics


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained rotation-invariant artifact, with its ``model.onnx``.

    Worker processes serve it with ONNX Runtime: one that loads Keras and TensorFlow
    instead spends about 8 s of CPU starting, and the tests start dozens.
    """
    import keras

    from tests.model.test_artifact import _artifact
    from training.models import build_rotinv
    from training.onnx_export import export_onnx

    keras.utils.set_random_seed(0)
    folder = _artifact(tmp_path_factory.mktemp("model") / "rotinv", build_rotinv(),
                       ["image", "features"])
    export_onnx(folder)
    return folder


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``bootstrap.servers`` of a running broker."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    data_dir: Path = tmp_path_factory.mktemp("kafka")
    try:
        broker = devbroker.start(data_dir)
    except devbroker.DevBrokerError as exc:
        error = str(exc)
    else:
        try:
            yield broker.bootstrap_servers
        finally:
            broker.stop()
        return
    pytest.fail(f"cannot start the development Kafka broker: {error}", pytrace=False)


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def topic_factory(kafka_admin: AdminClient) -> Iterator[Callable[..., str]]:
    """``make(prefix="test", partitions=1, config=None) -> name``: a new topic (with
    topic-level settings), deleted after the test."""
    created: list[str] = []

    def make(prefix: str = "test", partitions: int = 1,
             config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        # Made as `stamp-worker topics` makes topics.
        ensure_topics(kafka_admin, [TopicSpec(name, prefix, partitions, 1, config or {})],
                      timeout_s=20)
        created.append(name)
        return name

    yield make
    if created:
        futures = kafka_admin.delete_topics(created, operation_timeout=10, request_timeout=15)
        for future in futures.values():
            future.result(timeout=20)
