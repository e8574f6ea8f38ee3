"""Confluent wire format against a local schema registry speaking the REST API.

The fixture serves ``GET /schemas/ids/{id}`` from an in-memory table on 127.0.0.1 (a free
port, a thread) and counts requests per id, so the tests see exactly what the worker asks
the registry and how each answer maps onto the error policy: an unknown id or a bad
schema is an :class:`AlertError` (dead-letter the message), a registry that is down or
failing is :class:`SchemaRegistryUnavailable` (stop, commit nothing, retry later).
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from worker.decode.alerts import Alert, AlertDecoder
from worker.decode.errors import AlertError, Reason, SchemaRegistryUnavailable
from worker.decode.packets import (
    SYNTHETIC_SCHEMA,
    build_record,
    default_candidate,
    encode_confluent,
    encode_container,
)
from worker.decode.registry import ConfluentSchemaRegistry
from worker.prepare.stamps import prepare_alert

# Fail fast: confluent-kafka's client retries 5xx and connection errors with a backoff of
# 1 s, 2 s, 4 s by default.
FAST_CLIENT = {"max.retries": 1, "retries.wait.ms": 1, "retries.max.wait.ms": 5, "timeout": 5}
ID_PATH = re.compile(r"^/schemas/ids/(\d+)$")


@dataclass
class RegistryState:
    """What the fake registry serves, and what it was asked."""

    schemas: dict[int, str] = field(default_factory=dict)
    schema_types: dict[int, str] = field(default_factory=dict)
    requests: Counter[int] = field(default_factory=Counter)
    other_requests: list[str] = field(default_factory=list)
    fail_status: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class FakeRegistry:
    url: str
    state: RegistryState

    def register(self, schema_id: int, schema: Any, schema_type: str | None = None) -> None:
        text = schema if isinstance(schema, str) else json.dumps(schema)
        self.state.schemas[schema_id] = text
        if schema_type is not None:
            self.state.schema_types[schema_id] = schema_type

    def client(self) -> ConfluentSchemaRegistry:
        return ConfluentSchemaRegistry(self.url, FAST_CLIENT)


def _handler(state: RegistryState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            match = ID_PATH.match(path)
            if match is None:
                with state.lock:
                    state.other_requests.append(self.path)
                self._reply(404, {"error_code": 404, "message": "HTTP 404 Not Found"})
                return
            schema_id = int(match.group(1))
            with state.lock:
                state.requests[schema_id] += 1
            if state.fail_status is not None:
                self._reply(state.fail_status, {"error_code": state.fail_status * 100 + 1,
                                                "message": "Internal Server Error"})
            elif schema_id not in state.schemas:
                self._reply(404, {"error_code": 40403, "message": "Schema not found"})
            else:
                body: dict[str, Any] = {"schema": state.schemas[schema_id]}
                if schema_id in state.schema_types:
                    body["schemaType"] = state.schema_types[schema_id]
                self._reply(200, body)

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # keep pytest output clean

    return Handler


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    state = RegistryState()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              name="fake-schema-registry", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield FakeRegistry(url=f"http://{host}:{port}", state=state)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _record(i: int, **overrides: Any) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    stamps = [(100 + rng.normal(0, 5, (63, 63))).astype(np.float32) for _ in range(3)]
    candid = 3_000_000 + i
    return build_record(f"ZTF26reg{i:04d}", candid,
                        default_candidate(candid, 2460100.5 + i / 10, **overrides), stamps)


def _all_reasons(decoder: AlertDecoder, payload: bytes) -> list[Reason | None]:
    return [item.reason if isinstance(item, AlertError) else None
            for item in decoder.iter_records(payload)]


# --------------------------------------------------------------------------- happy path

def test_confluent_message_decodes_through_the_registry(registry: FakeRegistry) -> None:
    registry.register(7, SYNTHETIC_SCHEMA)
    record = _record(1, magpsf=17.25, ssnamenr="4321")
    decoder = AlertDecoder(registry=registry.client())
    alerts = decoder.decode(encode_confluent(record, 7))
    assert len(alerts) == 1
    alert = alerts[0]
    assert isinstance(alert, Alert)
    assert (alert.object_id, alert.candid) == ("ZTF26reg0001", 3_000_001)
    assert alert.jd == pytest.approx(2460100.6)
    assert alert.candidate["magpsf"] == 17.25
    assert alert.candidate["ssnamenr"] == "4321"
    assert alert.schema_version == "synthetic-1"
    assert alert.science == record["cutoutScience"]["stampData"]
    assert alert.difference == record["cutoutDifference"]["stampData"]
    assert prepare_alert(alert).image.shape == (21, 21, 3)
    assert registry.state.requests == Counter({7: 1})
    assert registry.state.other_requests == []


def test_schema_is_fetched_once_per_id(registry: FakeRegistry) -> None:
    spark = copy.deepcopy(SYNTHETIC_SCHEMA)
    spark["name"], spark["namespace"] = "topLevelRecord", ""
    spark["fields"].append({"name": "finkclass", "type": ["null", "string"], "default": None})
    registry.register(7, SYNTHETIC_SCHEMA)
    registry.register(8, spark)
    decoder = AlertDecoder(registry=registry.client())
    candids = []
    for i in range(60):
        record = _record(i)
        if i % 3 == 0:
            record["finkclass"] = "SN candidate"
            payload = encode_confluent(record, 8, schema=spark)
        else:
            payload = encode_confluent(record, 7)
        candids += [a.candid for a in decoder.decode(payload)]
    assert candids == [3_000_000 + i for i in range(60)]
    assert registry.state.requests == Counter({7: 1, 8: 1})


def test_a_second_decoder_fetches_again(registry: FakeRegistry) -> None:
    """The request counter really counts: separate clients do not share a cache."""
    registry.register(7, SYNTHETIC_SCHEMA)
    payload = encode_confluent(_record(0), 7)
    for _ in range(2):
        AlertDecoder(registry=registry.client()).decode(payload)
    assert registry.state.requests == Counter({7: 2})


# --------------------------------------------------------------------------- bad messages

def test_unknown_schema_id_is_an_alert_error(registry: FakeRegistry) -> None:
    registry.register(7, SYNTHETIC_SCHEMA)
    decoder = AlertDecoder(registry=registry.client())
    payload = encode_confluent(_record(2), 99)
    assert _all_reasons(decoder, payload) == [Reason.UNKNOWN_SCHEMA_ID]
    with pytest.raises(AlertError) as info:
        decoder.decode(payload)
    assert info.value.reason is Reason.UNKNOWN_SCHEMA_ID
    assert "99" in info.value.detail
    assert registry.state.requests[99] >= 1


def test_a_schema_registered_later_is_picked_up(registry: FakeRegistry) -> None:
    """A 404 is not cached: once the id exists, the next message with it decodes."""
    decoder = AlertDecoder(registry=registry.client())
    payload = encode_confluent(_record(3), 12)
    assert _all_reasons(decoder, payload) == [Reason.UNKNOWN_SCHEMA_ID]
    registry.register(12, SYNTHETIC_SCHEMA)
    assert _all_reasons(decoder, payload) == [None]


def test_decoder_without_registry_rejects_confluent_messages() -> None:
    payload = encode_confluent(_record(4), 7)
    assert _all_reasons(AlertDecoder(), payload) == [Reason.UNKNOWN_SCHEMA_ID]
    with pytest.raises(AlertError) as info:
        AlertDecoder().decode(payload)
    assert info.value.reason is Reason.UNKNOWN_SCHEMA_ID


def test_trailing_bytes_after_the_record(registry: FakeRegistry) -> None:
    registry.register(7, SYNTHETIC_SCHEMA)
    decoder = AlertDecoder(registry=registry.client())
    payload = encode_confluent(_record(5), 7)
    assert _all_reasons(decoder, payload) == [None]
    assert _all_reasons(decoder, payload + b"\x00") == [Reason.CORRUPT_RECORD]
    assert _all_reasons(decoder, payload + b"trailing garbage") == [Reason.CORRUPT_RECORD]


@pytest.mark.parametrize("keep", [5, 6, 40, -1])
def test_truncated_record(registry: FakeRegistry, keep: int) -> None:
    registry.register(7, SYNTHETIC_SCHEMA)
    payload = encode_confluent(_record(6), 7)
    reasons = _all_reasons(AlertDecoder(registry=registry.client()), payload[:keep])
    assert reasons == [Reason.CORRUPT_RECORD]


_NOT_A_RECORD = '"string"'
_NO_CANDIDATE = {"type": "record", "name": "alert", "fields": [
    {"name": "objectId", "type": "string"}, {"name": "candid", "type": "long"}]}
_UNION_TOP = ["null", SYNTHETIC_SCHEMA]


@pytest.mark.parametrize(("schema", "schema_type", "reason"), [
    (_NOT_A_RECORD, None, Reason.BAD_SCHEMA),
    (_UNION_TOP, None, Reason.BAD_SCHEMA),
    ({"type": "array", "items": "long"}, None, Reason.BAD_SCHEMA),
    (_NO_CANDIDATE, None, Reason.MISSING_FIELD),
    ("{not json", None, Reason.BAD_SCHEMA),
    ({"type": "record", "name": "x", "fields": [{"name": "a", "type": "nosuchtype"}]}, None,
     Reason.BAD_SCHEMA),
    ('syntax = "proto3"; message Alert { string objectId = 1; }', "PROTOBUF",
     Reason.BAD_SCHEMA),
    (SYNTHETIC_SCHEMA, "JSON", Reason.BAD_SCHEMA),
], ids=["string", "union", "array", "no_candidate", "not_json", "bad_type", "protobuf",
        "json_schema"])
def test_registered_schema_unusable_for_alerts(registry: FakeRegistry, schema: Any,
                                               schema_type: str | None, reason: Reason) -> None:
    registry.register(21, schema, schema_type)
    decoder = AlertDecoder(registry=registry.client())
    payload = encode_confluent(_record(7), 21)
    assert _all_reasons(decoder, payload) == [reason]
    assert registry.state.requests[21] >= 1


# --------------------------------------------------------------------------- outages

def test_registry_server_error_is_unavailable_not_alert_error(registry: FakeRegistry) -> None:
    registry.register(7, SYNTHETIC_SCHEMA)
    registry.state.fail_status = 500
    decoder = AlertDecoder(registry=registry.client())
    payload = encode_confluent(_record(8), 7)
    with pytest.raises(SchemaRegistryUnavailable) as info:
        list(decoder.iter_records(payload))
    assert not isinstance(info.value, AlertError)
    assert "500" in str(info.value)
    with pytest.raises(SchemaRegistryUnavailable):
        decoder.decode(payload)
    assert registry.state.requests[7] >= 2
    # The outage is not remembered: once the registry answers, the same message decodes.
    registry.state.fail_status = None
    assert [a.candid for a in decoder.decode(payload)] == [3_000_008]


@pytest.mark.parametrize("status", [502, 503])
def test_registry_gateway_errors_are_unavailable(registry: FakeRegistry, status: int) -> None:
    registry.register(7, SYNTHETIC_SCHEMA)
    registry.state.fail_status = status
    with pytest.raises(SchemaRegistryUnavailable):
        AlertDecoder(registry=registry.client()).decode(encode_confluent(_record(9), 7))


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nothing_listening_is_unavailable_not_alert_error() -> None:
    url = f"http://127.0.0.1:{_unused_port()}"
    decoder = AlertDecoder(registry=ConfluentSchemaRegistry(url, FAST_CLIENT))
    payload = encode_confluent(_record(10), 7)
    with pytest.raises(SchemaRegistryUnavailable) as info:
        list(decoder.iter_records(payload))
    assert not isinstance(info.value, AlertError)
    assert "unreachable" in str(info.value)


def test_ocf_messages_never_ask_the_registry(registry: FakeRegistry) -> None:
    decoder = AlertDecoder(registry=registry.client())
    assert len(decoder.decode(encode_container([_record(11)]))) == 1
    assert registry.state.requests == Counter()
