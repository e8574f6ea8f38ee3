"""worker.stream.metrics: metrics on a private registry, librdkafka statistics, real HTTP server."""

from __future__ import annotations

import copy
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

from worker.model.artifact import CLASS_NAMES
from worker.stream.config import BUNDLED_MODEL_BASELINE
from worker.stream.metrics import (
    JD_UNIX_EPOCH,
    STAGES,
    TOP_PROBABILITY_BUCKETS,
    HealthState,
    MetricsServer,
    WorkerMetrics,
    jd_to_unix,
)

TOPIC = "ztf_20250101_programid1"


# ---------------------------------------------------------------- fixtures and helpers
@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> WorkerMetrics:
    return WorkerMetrics(registry)


@pytest.fixture
def health() -> HealthState:
    return HealthState()


@pytest.fixture
def server(registry: CollectorRegistry, health: HealthState) -> Iterator[MetricsServer]:
    # 0.5 s: long enough that a request right after beat() is answered in time on a
    # busy machine, short enough to test the silence without a slow test.
    with MetricsServer(registry, health, host="127.0.0.1", port=0,
                       max_silence_s=0.5) as srv:
        yield srv


def get(server: MetricsServer, path: str) -> tuple[int, str, str]:
    """``(status, content type, body)`` of a real GET on the server."""
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers["Content-Type"], err.read().decode()


def scrape(server: MetricsServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics``, keyed by ``(name, labels)``, parsed by the client's
    own text-format parser (what Prometheus reads, not what the Python objects hold)."""
    status, content_type, body = get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def sample(samples: dict, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def partition_stats(partition: int, **values: Any) -> dict[str, Any]:
    """One ``topics.*.partitions.*`` object with every field librdkafka 2.x emits.

    The fields and defaults are those of a consumer captured from librdkafka 2.16 (via
    confluent-kafka) against the development broker; ``values`` overrides them.
    """
    fields: dict[str, Any] = {
        "partition": partition, "broker": 1, "leader": 1, "desired": True, "unknown": False,
        "msgq_cnt": 0, "msgq_bytes": 0, "xmit_msgq_cnt": 0, "xmit_msgq_bytes": 0,
        "fetchq_cnt": 0, "fetchq_size": 0, "fetch_state": "active", "query_offset": -2,
        "next_offset": 12, "app_offset": 12, "stored_offset": 12, "stored_leader_epoch": 0,
        "commited_offset": 10, "committed_offset": 10, "committed_leader_epoch": 0,
        "eof_offset": -1001, "lo_offset": 0, "hi_offset": 25, "ls_offset": 25,
        "consumer_lag": 15, "consumer_lag_stored": 13, "leader_epoch": 0, "txmsgs": 0,
        "txbytes": 0, "rxmsgs": 25, "rxbytes": 70, "msgs": 25, "rx_ver_drops": 0,
        "msgs_inflight": 0, "next_ack_seq": 0, "next_err_seq": 0, "acked_msgid": 0,
    }
    fields.update(values)
    return fields


WINDOW = {"min": 0, "max": 0, "avg": 0, "sum": 0, "stddev": 0, "p50": 0, "p75": 0, "p90": 0,
          "p95": 0, "p99": 0, "p99_99": 0, "outofrange": 0, "hdrsize": 8304, "cnt": 0}

# A consumer's statistics document as librdkafka emits it (the broker section trimmed to
# one broker): two assigned partitions with known lags, and the internal "-1" partition.
STATS_SAMPLE: dict[str, Any] = {
    "name": "rdkafka#consumer-4", "client_id": "rdkafka", "type": "consumer",
    "ts": 4966983986, "time": 1795566945, "age": 1804497, "replyq": 0, "msg_cnt": 0,
    "msg_size": 0, "msg_max": 0, "msg_size_max": 0, "simple_cnt": 0,
    "metadata_cache_cnt": 1,
    "brokers": {
        "127.0.0.1:40739/1": {
            "name": "127.0.0.1:40739/1", "nodeid": 1, "nodename": "127.0.0.1:40739",
            "source": "learned", "state": "UP", "stateage": 1797420, "outbuf_cnt": 0,
            "outbuf_msg_cnt": 0, "waitresp_cnt": 1, "waitresp_msg_cnt": 0, "tx": 14,
            "txbytes": 1401, "txerrs": 0, "txretries": 0, "txidle": 3162,
            "req_timeouts": 0, "rx": 13, "rxbytes": 3054, "rxerrs": 0, "rxcorriderrs": 0,
            "rxpartial": 0, "rxidle": 3248, "zbuf_grow": 0, "buf_grow": 0, "wakeups": 61,
            "connects": 1, "disconnects": 0, "int_latency": WINDOW,
            "outbuf_latency": WINDOW, "rtt": WINDOW, "throttle": WINDOW,
            "req": {"Fetch": 8, "OffsetCommit": 1, "Metadata": 2},
            "toppars": {
                f"{TOPIC}-0": {"topic": TOPIC, "partition": 0},
                f"{TOPIC}-1": {"topic": TOPIC, "partition": 1},
            },
        },
    },
    "topics": {
        TOPIC: {
            "topic": TOPIC, "age": 1790, "metadata_age": 1770,
            "batchsize": WINDOW, "batchcnt": WINDOW,
            "partitions": {
                "0": partition_stats(0, next_offset=7, app_offset=7, stored_offset=7,
                                     commited_offset=5, committed_offset=5,
                                     consumer_lag=20, consumer_lag_stored=18),
                "1": partition_stats(1),
                "-1": partition_stats(-1, broker=-1, leader=-1, desired=False,
                                      fetch_state="none", query_offset=-1001,
                                      next_offset=-1001, app_offset=-1001,
                                      stored_offset=-1001, commited_offset=-1001,
                                      committed_offset=-1001, lo_offset=-1001,
                                      hi_offset=-1001, ls_offset=-1001, consumer_lag=-1,
                                      consumer_lag_stored=-1, rxmsgs=0, msgs=0),
            },
        },
    },
    "cgrp": {"state": "up", "stateage": 1782, "join_state": "steady", "rebalance_age": 1667,
             "rebalance_cnt": 1, "rebalance_reason": "", "assignment_size": 2},
    "tx": 17, "tx_bytes": 1688, "rx": 17, "rx_bytes": 3442, "txmsgs": 0, "txmsg_bytes": 0,
    "rxmsgs": 50, "rxmsg_bytes": 140,
}


def stats_sample() -> dict[str, Any]:
    return copy.deepcopy(STATS_SAMPLE)


def partitions_of(stats: dict[str, Any]) -> dict[str, Any]:
    return stats["topics"][TOPIC]["partitions"]


def lag(registry: CollectorRegistry, partition: str, stored: bool = False) -> float | None:
    name = "stamp_worker_consumer_lag_stored" if stored else "stamp_worker_consumer_lag"
    return registry.get_sample_value(name, {"topic": TOPIC, "partition": partition})


# ---------------------------------------------------------------- metrics over HTTP
def test_counters_and_histograms_appear_in_metrics_text(metrics: WorkerMetrics,
                                                        server: MetricsServer) -> None:
    metrics.consumed.inc(3)
    metrics.classified.labels(label="SN").inc(2)
    metrics.dead_lettered.labels(reason="corrupt_gzip").inc()
    metrics.delivery_failures.inc()
    metrics.commits.inc(4)
    metrics.commit_failures.inc()
    metrics.rebalances.labels(kind="assign").inc()
    metrics.observe_batch(7)
    with metrics.time_stage("infer"):
        pass
    metrics.alert_age_seconds.observe(90.0)
    metrics.end_to_end_seconds.observe(0.2)
    metrics.set_model("stamp-cnn", "1.2.0", "stamps-v1")

    got = scrape(server)
    assert sample(got, "stamp_worker_alerts_consumed_total") == 3
    assert sample(got, "stamp_worker_alerts_classified_total", label="SN") == 2
    assert sample(got, "stamp_worker_alerts_dead_lettered_total", reason="corrupt_gzip") == 1
    assert sample(got, "stamp_worker_delivery_failures_total") == 1
    assert sample(got, "stamp_worker_commits_total") == 4
    assert sample(got, "stamp_worker_commit_failures_total") == 1
    assert sample(got, "stamp_worker_rebalances_total", kind="assign") == 1
    assert sample(got, "stamp_worker_batch_size_count") == 1
    assert sample(got, "stamp_worker_batch_size_sum") == 7
    assert sample(got, "stamp_worker_batch_size_bucket", le="5.0") == 0
    assert sample(got, "stamp_worker_batch_size_bucket", le="10.0") == 1
    assert sample(got, "stamp_worker_stage_seconds_count", stage="infer") == 1
    assert sample(got, "stamp_worker_alert_age_seconds_bucket", le="60.0") == 0
    assert sample(got, "stamp_worker_alert_age_seconds_bucket", le="120.0") == 1
    assert sample(got, "stamp_worker_end_to_end_seconds_bucket", le="0.1") == 0
    assert sample(got, "stamp_worker_end_to_end_seconds_bucket", le="0.25") == 1
    assert sample(got, "stamp_worker_model_info", name="stamp-cnn", version="1.2.0",
                  preprocessing="stamps-v1") == 1


def test_known_label_values_are_exported_at_zero(metrics: WorkerMetrics,
                                                 server: MetricsServer) -> None:
    # Series that exist before their first event let rate()/increase() see that event.
    got = scrape(server)
    for label in ("AGN", "SN", "VS", "asteroid", "bogus"):
        assert sample(got, "stamp_worker_alerts_classified_total", label=label) == 0
    for kind in ("assign", "revoke", "lost"):
        assert sample(got, "stamp_worker_rebalances_total", kind=kind) == 0
    for stage in STAGES:
        assert sample(got, "stamp_worker_stage_seconds_count", stage=stage) == 0
    assert sample(got, "stamp_worker_alerts_dead_lettered_total", reason="all_nan") == 0


def test_metric_types_and_help_in_exposition(metrics: WorkerMetrics,
                                             server: MetricsServer) -> None:
    _, _, body = get(server, "/metrics")
    for line in ("# TYPE stamp_worker_alerts_consumed_total counter",
                 "# TYPE stamp_worker_stage_seconds histogram",
                 "# TYPE stamp_worker_batch_size histogram",
                 "# TYPE stamp_worker_alert_age_seconds histogram",
                 "# TYPE stamp_worker_end_to_end_seconds histogram",
                 "# TYPE stamp_worker_consumer_lag gauge",
                 "# TYPE stamp_worker_assigned_partitions gauge",
                 "# HELP stamp_worker_stage_seconds Wall time of one stage of a "
                 "micro-batch [s]."):
        assert line in body.splitlines()


@pytest.mark.parametrize(("name", "lowest", "highest"), [
    ("stamp_worker_batch_size_bucket", 1.0, 5000.0),
    ("stamp_worker_stage_seconds_bucket", 1e-4, 10.0),
    ("stamp_worker_alert_age_seconds_bucket", 1.0, 30 * 86400.0),
    ("stamp_worker_end_to_end_seconds_bucket", 1e-3, 60.0),
])
def test_histogram_bucket_ranges(registry: CollectorRegistry, metrics: WorkerMetrics,
                                 name: str, lowest: float, highest: float) -> None:
    bounds = sorted({float(s.labels["le"]) for family in registry.collect()
                     for s in family.samples if s.name == name})
    assert bounds[0] == pytest.approx(lowest)
    assert bounds[-2] == pytest.approx(highest)  # the last finite bound, before +Inf
    assert bounds[-1] == float("inf")


def test_time_stage_observes_seconds_even_when_the_block_raises(
        registry: CollectorRegistry, metrics: WorkerMetrics) -> None:
    with metrics.time_stage("decode"):
        time.sleep(0.05)
    with pytest.raises(RuntimeError), metrics.time_stage("decode"):
        raise RuntimeError("model failed")
    labels = {"stage": "decode"}
    assert registry.get_sample_value("stamp_worker_stage_seconds_count", labels) == 2
    total = registry.get_sample_value("stamp_worker_stage_seconds_sum", labels)
    assert 0.05 <= total < 5.0  # seconds, not milliseconds
    with pytest.raises(ValueError, match="unknown stage"), metrics.time_stage("decoding"):
        pass


def test_observe_batch_rejects_negative(metrics: WorkerMetrics) -> None:
    with pytest.raises(ValueError):
        metrics.observe_batch(-1)


def test_set_model_replaces_the_info(registry: CollectorRegistry,
                                     metrics: WorkerMetrics) -> None:
    metrics.set_model("a", "1", "p1")
    metrics.set_model("b", "2", "p1")
    infos = [s for family in registry.collect() for s in family.samples
             if s.name == "stamp_worker_model_info"]
    assert [(s.labels, s.value) for s in infos] == [
        ({"name": "b", "version": "2", "preprocessing": "p1"}, 1.0)]


def test_two_instances_on_two_registries_do_not_clash() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    m1, m2 = WorkerMetrics(first), WorkerMetrics(second)
    m1.consumed.inc(5)
    m2.consumed.inc(1)
    assert first.get_sample_value("stamp_worker_alerts_consumed_total") == 5
    assert second.get_sample_value("stamp_worker_alerts_consumed_total") == 1
    with pytest.raises(ValueError, match="Duplicated"):
        WorkerMetrics(first)  # one registry, one WorkerMetrics


# ---------------------------------------------------------------- drift metrics
def _prediction_samples(registry: CollectorRegistry) -> dict:
    return {(s.name, frozenset(s.labels.items())): s.value for family in registry.collect()
            for s in family.samples if "model_predictions" in s.name
            or "model_top_probability" in s.name}


def test_a_batch_of_predictions_counts_as_one_observation_per_alert_would() -> None:
    """The batch collector exposes what prometheus_client's own Counter and Histogram
    give when fed one alert at a time, bucket bounds hit exactly included."""
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.full(len(CLASS_NAMES), 0.3), size=500).astype(np.float32)
    # Top probabilities exactly on bounds (a value equal to le is in that bucket),
    # and certain predictions (above the last finite bound).
    for row, (top, value) in enumerate([(1, 0.8), (2, 0.5), (0, 0.999), (3, 1.0)]):
        probs[row] = (1 - value) / (len(CLASS_NAMES) - 1)
        probs[row, top] = value
    batched = CollectorRegistry()
    metrics = WorkerMetrics(batched)
    metrics.observe_predictions(probs[:123])
    metrics.observe_predictions(probs[123:])
    metrics.observe_predictions(probs[:0])  # an empty batch changes nothing

    reference = CollectorRegistry()
    count = Counter("stamp_worker_model_predictions", "", ["class"], registry=reference)
    hist = Histogram("stamp_worker_model_top_probability", "", ["class"],
                     buckets=TOP_PROBABILITY_BUCKETS, registry=reference)
    for row in probs:
        top = int(row.argmax())
        count.labels(CLASS_NAMES[top]).inc()
        hist.labels(CLASS_NAMES[top]).observe(float(row[top]))
    expected = {key: value for key, value in _prediction_samples(reference).items()
                if not key[0].endswith("_created")}
    got = _prediction_samples(batched)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
    assert sum(v for (name, _), v in got.items()
               if name == "stamp_worker_model_predictions_total") == 500


def test_prediction_series_exist_at_zero_and_in_the_exposition(
        metrics: WorkerMetrics, server: MetricsServer) -> None:
    got = scrape(server)
    for name in CLASS_NAMES:
        assert sample(got, "stamp_worker_model_predictions_total", **{"class": name}) == 0
        assert sample(got, "stamp_worker_model_top_probability_bucket",
                      **{"class": name, "le": "+Inf"}) == 0
    metrics.observe_predictions(np.array([[0.05, 0.9, 0.03, 0.01, 0.01]]))
    got = scrape(server)
    assert sample(got, "stamp_worker_model_predictions_total", **{"class": "SN"}) == 1
    assert sample(got, "stamp_worker_model_top_probability_bucket",
                  **{"class": "SN", "le": "0.8"}) == 0
    assert sample(got, "stamp_worker_model_top_probability_bucket",
                  **{"class": "SN", "le": "0.9"}) == 1
    assert sample(got, "stamp_worker_model_top_probability_sum",
                  **{"class": "SN"}) == pytest.approx(0.9)
    _, _, body = get(server, "/metrics")
    assert "# TYPE stamp_worker_model_predictions_total counter" in body.splitlines()
    assert "# TYPE stamp_worker_model_top_probability histogram" in body.splitlines()


def test_a_prediction_that_is_not_a_number_spoils_no_sum(registry: CollectorRegistry,
                                                         metrics: WorkerMetrics) -> None:
    metrics.observe_predictions(np.array([[np.nan, 0.1, 0.1, 0.1, 0.1],
                                          [0.1, 0.6, 0.1, 0.1, 0.1]]))
    name = "stamp_worker_model_top_probability"
    assert registry.get_sample_value(f"{name}_count", {"class": "AGN"}) == 1
    assert registry.get_sample_value(f"{name}_bucket", {"class": "AGN", "le": "0.999"}) == 0
    assert registry.get_sample_value(f"{name}_sum", {"class": "AGN"}) == 0
    assert registry.get_sample_value(f"{name}_sum", {"class": "SN"}) == pytest.approx(0.6)


def test_predictions_of_the_wrong_shape_are_refused(metrics: WorkerMetrics) -> None:
    with pytest.raises(ValueError, match=r"expected \(N, 5\) probabilities"):
        metrics.observe_predictions(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="expected"):
        metrics.observe_predictions(np.zeros(5))


def test_set_drift_exports_the_baseline(registry: CollectorRegistry,
                                        metrics: WorkerMetrics) -> None:
    metrics.set_drift(BUNDLED_MODEL_BASELINE, 0.25)
    for name, share in BUNDLED_MODEL_BASELINE.items():
        assert registry.get_sample_value("stamp_worker_drift_baseline_share",
                                         {"class": name}) == share
    assert registry.get_sample_value("stamp_worker_drift_max_distance") == 0.25


# ---------------------------------------------------------------- librdkafka statistics
def test_lag_gauges_from_a_librdkafka_stats_document(registry: CollectorRegistry,
                                                     metrics: WorkerMetrics,
                                                     server: MetricsServer) -> None:
    metrics.update_from_librdkafka_stats(json.dumps(STATS_SAMPLE))
    assert lag(registry, "0") == 20
    assert lag(registry, "1") == 15
    assert lag(registry, "0", stored=True) == 18
    assert lag(registry, "1", stored=True) == 13
    assert lag(registry, "-1") is None  # librdkafka's internal unassigned partition
    assert registry.get_sample_value("stamp_worker_assigned_partitions") == 2
    got = scrape(server)
    assert sample(got, "stamp_worker_consumer_lag", topic=TOPIC, partition="1") == 15
    assert sample(got, "stamp_worker_librdkafka_stats_errors_total") == 0


def test_partition_no_longer_reported_loses_its_gauge(registry: CollectorRegistry,
                                                      metrics: WorkerMetrics,
                                                      server: MetricsServer) -> None:
    metrics.update_from_librdkafka_stats(json.dumps(STATS_SAMPLE))
    later = stats_sample()
    del partitions_of(later)["0"]
    partitions_of(later)["1"].update(consumer_lag=3, consumer_lag_stored=1)
    later["cgrp"]["assignment_size"] = 1
    metrics.update_from_librdkafka_stats(json.dumps(later))
    assert lag(registry, "0") is None
    assert lag(registry, "0", stored=True) is None
    assert lag(registry, "1") == 3
    assert lag(registry, "1", stored=True) == 1
    assert registry.get_sample_value("stamp_worker_assigned_partitions") == 1
    _, _, body = get(server, "/metrics")
    assert 'partition="0"' not in body
    assert f'stamp_worker_consumer_lag{{partition="1",topic="{TOPIC}"}} 3.0' in body


def test_revoked_partition_still_reported_by_librdkafka_loses_its_gauge(
        registry: CollectorRegistry, metrics: WorkerMetrics) -> None:
    # After a revoke librdkafka keeps the partition, desired=false, with its last lag.
    metrics.update_from_librdkafka_stats(json.dumps(STATS_SAMPLE))
    later = stats_sample()
    partitions_of(later)["0"].update(desired=False, fetch_state="stopped")
    metrics.update_from_librdkafka_stats(json.dumps(later))
    assert lag(registry, "0") is None
    assert lag(registry, "1") == 15


def test_unknown_lag_is_not_exported(registry: CollectorRegistry,
                                     metrics: WorkerMetrics) -> None:
    metrics.update_from_librdkafka_stats(json.dumps(STATS_SAMPLE))
    # A new group has no committed offset: librdkafka says consumer_lag -1 (unknown).
    fresh = stats_sample()
    partitions_of(fresh)["0"].update(commited_offset=-1001, committed_offset=-1001,
                                     consumer_lag=-1)
    metrics.update_from_librdkafka_stats(json.dumps(fresh))
    assert lag(registry, "0") is None
    assert lag(registry, "0", stored=True) == 18


def test_producer_statistics_leave_the_consumer_lag_alone(registry: CollectorRegistry,
                                                          metrics: WorkerMetrics) -> None:
    metrics.update_from_librdkafka_stats(json.dumps(STATS_SAMPLE))
    producer = {"name": "rdkafka#producer-1", "type": "producer", "topics": {}}
    metrics.update_from_librdkafka_stats(json.dumps(producer))
    assert lag(registry, "0") == 20


@pytest.mark.parametrize("document", [
    "{not json",
    "",
    "[1, 2]",
    '{"type": "consumer", "topics": []}',
    '{"type": "consumer", "topics": {"t": {"partitions": {"0": {"consumer_lag": "7"}}}}}',
    '{"type": "consumer", "topics": {"t": {"partitions": {"0": {"consumer_lag": true}}}}}',
    '{"type": "consumer", "topics": {"t": 5}}',
    '{"type": "consumer", "topics": {}, "cgrp": {"assignment_size": "2"}}',
])
def test_malformed_statistics_are_counted_and_logged_not_raised(
        registry: CollectorRegistry, metrics: WorkerMetrics,
        caplog: pytest.LogCaptureFixture, document: str) -> None:
    metrics.update_from_librdkafka_stats(json.dumps(STATS_SAMPLE))
    with caplog.at_level(logging.WARNING, logger="worker.stream.metrics"):
        metrics.update_from_librdkafka_stats(document)
    assert registry.get_sample_value("stamp_worker_librdkafka_stats_errors_total") == 1
    assert "librdkafka statistics not understood" in caplog.text
    assert lag(registry, "0") == 20  # the previous values stay


# ---------------------------------------------------------------- health and readiness
def test_healthz_ok_after_a_beat_then_503_after_silence(health: HealthState,
                                                        server: MetricsServer) -> None:
    health.beat()
    status, content_type, body = get(server, "/healthz")
    assert (status, body) == (200, "ok\n")
    assert content_type.startswith("text/plain")
    time.sleep(0.7)  # > max_silence_s = 0.5
    status, _, body = get(server, "/healthz")
    assert status == 503
    assert "main loop silent for" in body
    health.beat()
    assert get(server, "/healthz")[0] == 200


def test_health_state_silence_directly() -> None:
    health = HealthState()
    assert health.healthy(60.0) == (True, "ok")
    time.sleep(0.02)
    ok, reason = health.healthy(0.001)
    assert not ok
    assert "limit 0.001 s" in reason


def test_readyz_503_until_ready(health: HealthState, server: MetricsServer) -> None:
    assert get(server, "/readyz")[::2] == (503, "starting\n")
    health.set_ready(True)
    assert get(server, "/readyz")[::2] == (200, "ready\n")
    health.set_ready(False, "partitions revoked")
    assert get(server, "/readyz")[::2] == (503, "partitions revoked\n")
    health.set_ready(False)
    assert get(server, "/readyz")[::2] == (503, "not ready\n")


def test_unknown_paths_are_404_and_query_strings_ignored(server: MetricsServer) -> None:
    assert get(server, "/")[0] == 404
    assert get(server, "/metricsx")[0] == 404
    assert get(server, "/metrics?name[]=x")[0] == 200


# ---------------------------------------------------------------- server lifecycle
def test_server_port_lifecycle(registry: CollectorRegistry, health: HealthState) -> None:
    srv = MetricsServer(registry, health)
    with pytest.raises(RuntimeError):
        _ = srv.port
    srv.start()
    try:
        port = srv.port
        assert port > 0
        with pytest.raises(RuntimeError):
            srv.start()
        assert get(srv, "/metrics")[0] == 200
    finally:
        srv.stop()
    srv.stop()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_two_servers_serve_their_own_registry() -> None:
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    m1, _ = WorkerMetrics(r1), WorkerMetrics(r2)
    m1.consumed.inc(9)
    with MetricsServer(r1, HealthState()) as s1, MetricsServer(r2, HealthState()) as s2:
        assert s1.port != s2.port
        assert sample(scrape(s1), "stamp_worker_alerts_consumed_total") == 9
        assert sample(scrape(s2), "stamp_worker_alerts_consumed_total") == 0


# ---------------------------------------------------------------- time conversion
def test_jd_to_unix_at_j2000() -> None:
    j2000 = datetime(2000, 1, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()
    assert j2000 == 946728000.0
    assert jd_to_unix(2451545.0) == j2000
    assert jd_to_unix(JD_UNIX_EPOCH) == 0.0


def test_jd_to_unix_of_a_ztf_alert() -> None:
    # candidate.jd 2460676.5 is 2025-01-01T00:00:00Z; a ZTF exposure ~0.75 d later.
    assert jd_to_unix(2460676.5) == datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp()
    expected = datetime(2025, 1, 1, 18, 0, 0, tzinfo=timezone.utc).timestamp()
    assert jd_to_unix(2460677.25) == pytest.approx(expected, abs=1e-3)
