"""The Grafana dashboard of the stamp classifier worker, built with the Grafana Foundation SDK.

The committed ``dashboards/stamp-worker.json`` is this script's output; after editing
the script, regenerate it (``tests/deploy/test_grafana.py`` checks that they agree, and
that every metric a panel queries is one the worker exports)::

    python deploy/grafana/dashboard.py > deploy/grafana/dashboards/stamp-worker.json

Needs the ``grafana-foundation-sdk`` package (``pip install -e '.[deploy]'``; Python
3.11 or newer).  The panels read Prometheus through a ``datasource`` variable, so the
JSON can also be imported by hand (Dashboards → New → Import) into a Grafana whose
Prometheus has another name.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

from grafana_foundation_sdk.builders.common import (
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
)
from grafana_foundation_sdk.builders.dashboard import Dashboard as DashboardBuilder
from grafana_foundation_sdk.builders.dashboard import (
    DashboardLink,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery as PrometheusQuery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
    StackingMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

UID = "stamp-worker"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SELECTOR = 'job=~"$job", instance=~"$instance"'
DRIFT_WINDOW = "1h"
"""Window of the drift panels: the one the StampWorkerClassDrift and
StampWorkerLowConfidence rules judge (deploy/prometheus/stamp-worker.rules.yml)."""
LOW_CONFIDENCE = "0.8"
"""The ``le`` bucket whose share StampWorkerLowConfidence watches."""
RATE = "$__rate_interval"


def metric(name: str, *matchers: str) -> str:
    """A selector of one worker metric, restricted to the chosen jobs and instances.

    Parameters
    ----------
    name : str
        The series name, e.g. ``stamp_worker_commits_total``.
    *matchers : str
        More label matchers, e.g. ``'le="0.8"'``.
    """
    return f"{name}{{{', '.join((SELECTOR, *matchers))}}}"


def query(expr: str, legend: str) -> PrometheusQuery:
    """A Prometheus range query; ``legend`` is Grafana's legend format (``{{label}}``)."""
    return PrometheusQuery().expr(expr).legend_format(legend).datasource(DATASOURCE)


def quantiles(histogram: str, by: str = "", levels: Sequence[float] = (0.5, 0.99)
              ) -> Iterator[PrometheusQuery]:
    """``histogram_quantile`` queries of a worker histogram, one per level.

    Parameters
    ----------
    histogram : str
        The histogram's name without ``_bucket``.
    by : str
        Label kept apart (one curve per value), e.g. ``stage``; empty: one curve.
    levels : sequence of float
        Quantiles, in (0, 1).
    """
    keep = f"{by}, le" if by else "le"
    for level in levels:
        legend = f"p{level * 100:g}" + (f" {{{{{by}}}}}" if by else "")
        yield query(f"histogram_quantile({level:g}, sum by ({keep}) "
                    f"(rate({metric(histogram + '_bucket')}[{RATE}])))", legend)


def predicted_shares(by: str) -> str:
    """Share of each top class among the predictions of the drift window, per ``by``."""
    total = f"increase({metric('stamp_worker_model_predictions_total')}[{DRIFT_WINDOW}])"
    return (f"sum by ({by}, class) ({total})\n"
            f"  / on ({by}) group_left sum by ({by}) ({total})")


def drift_distance() -> str:
    """Total variation distance of the predicted shares from the baseline, per job."""
    return (f"0.5 * sum by (job) (abs(\n  {predicted_shares('job')}\n"
            f"  - on (job, class) max by (job, class) "
            f"({metric('stamp_worker_drift_baseline_share')})\n))")


def timeseries(title: str, description: str, unit: str, queries: Sequence[PrometheusQuery],
               *, stacked: bool = False, width: int = 12, height: int = 8) -> Timeseries:
    """A time-series panel with its legend as a table (mean and last values).

    Parameters
    ----------
    title, description : str
        Shown on the panel and in its (i) tooltip.
    unit : str
        Grafana unit id (``s``, ``percentunit``, ``short``...).
    queries : sequence of PrometheusQuery
        The curves; their ``refId`` are set here, A, B, C...
    stacked : bool
        Stack the curves (parts of a whole: classes, reasons).
    width, height : int
        Grid size (the grid is 24 wide).
    """
    panel = (Timeseries().title(title).description(description).unit(unit)
             .datasource(DATASOURCE).span(width).height(height).fill_opacity(10)
             .legend(VizLegendOptions().display_mode(LegendDisplayMode.TABLE)
                     .placement(LegendPlacement.BOTTOM).show_legend(True)
                     .calcs(["mean", "lastNotNull"])))
    if stacked:
        panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(40)
    for ref, target in zip("ABCDEFGH", queries, strict=False):
        panel = panel.with_target(target.ref_id(ref))
    return panel


def stat(title: str, description: str, unit: str, expr: str, legend: str,
         steps: Sequence[tuple[float | None, str]]) -> Stat:
    """A single-value panel coloured by thresholds.

    Parameters
    ----------
    title, description, unit : str
        As for :func:`timeseries`.
    expr, legend : str
        The query and its legend format.
    steps : sequence of (float or None, str)
        Threshold steps: from each value up, the colour; the first value is None (from
        minus infinity).
    """
    return (Stat().title(title).description(description).unit(unit).datasource(DATASOURCE)
            .span(6).height(4).graph_mode(BigValueGraphMode.AREA)
            .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .color_mode(BigValueColorMode.BACKGROUND)
            .thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE)
                        .steps([Threshold(value=value, color=color)
                                for value, color in steps]))
            .with_target(query(expr, legend).ref_id("A")))


def build() -> DashboardBuilder:
    """The dashboard: overview, throughput, latency, failures and drift rows."""
    consumed = metric("stamp_worker_alerts_consumed_total")
    classified = metric("stamp_worker_alerts_classified_total")
    dead = metric("stamp_worker_alerts_dead_lettered_total")
    tvd = drift_distance()
    dashboard = (
        DashboardBuilder("Stamp classifier worker")
        .uid(UID)
        .description("Throughput, lag, latency, failures and prediction drift of the "
                     "stamp classifier (metrics of worker/stream/metrics.py, alerts of "
                     "deploy/prometheus/stamp-worker.rules.yml).")
        .tags(["stamp-classifier", "kafka", "ztf"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("utc")
        .link(DashboardLink("Alert rules").type(DashboardLinkType.LINK)
              .url("/alerting/list?search=StampWorker").icon("bell").target_blank(True))
        .with_variable(DatasourceVariable("datasource").label("Prometheus")
                       .type("prometheus"))
        .with_variable(QueryVariable("job").label("Job").datasource(DATASOURCE)
                       .query("label_values(stamp_worker_alerts_consumed_total, job)")
                       .refresh(VariableRefresh.ON_DASHBOARD_LOAD).sort(VariableSort.ALPHABETICAL_ASC)
                       .multi(True).include_all(True).all_value(".*"))
        .with_variable(QueryVariable("instance").label("Process").datasource(DATASOURCE)
                       .query('label_values(stamp_worker_alerts_consumed_total{job=~"$job"}, '
                              "instance)")
                       .refresh(VariableRefresh.ON_DASHBOARD_LOAD).sort(VariableSort.ALPHABETICAL_ASC)
                       .multi(True).include_all(True).all_value(".*"))
    )

    dashboard = (
        dashboard.with_row(Row("Overview"))
        .with_panel(stat(
            "Processes up", "Worker processes Prometheus scrapes successfully (up == 1). "
            "Alert: StampWorkerDown.", "short",
            f"sum(up{{{SELECTOR}}})", "up", [(None, "red"), (1, "green")]))
        .with_panel(stat(
            "Assigned partitions", "Input partitions assigned to the chosen processes. "
            "Alert: StampWorkerNoPartitions.", "short",
            f"sum({metric('stamp_worker_assigned_partitions')})", "partitions",
            [(None, "red"), (1, "green")]))
        .with_panel(stat(
            "Consumer lag", "Alerts between the partitions' ends and the committed "
            "offsets, all partitions. Alert: StampWorkerLagHigh (100,000 for 15 min).",
            "short", f"sum({metric('stamp_worker_consumer_lag')})", "lag",
            [(None, "green"), (10000, "yellow"), (100000, "red")]))
        .with_panel(stat(
            "Class drift", f"Total variation distance between the top-class shares of "
            f"the last {DRIFT_WINDOW} and the baseline (drift.baseline): the fraction of "
            f"predictions that would have to change class. Alert: StampWorkerClassDrift "
            f"(above drift.max_distance).", "percentunit", f"max({tvd})", "distance",
            [(None, "green"), (0.1, "yellow"), (0.2, "red")]))
    )

    dashboard = (
        dashboard.with_row(Row("Throughput"))
        .with_panel(timeseries(
            "Alerts consumed and labelled", "Kafka messages consumed, label records "
            "published and records sent to the dead-letter topic, per second.", "short", [
                query(f"sum(rate({consumed}[{RATE}]))", "consumed"),
                query(f"sum(rate({classified}[{RATE}]))", "labelled"),
                query(f"sum(rate({dead}[{RATE}]))", "dead-lettered"),
            ]))
        .with_panel(timeseries(
            "Labels by class", "Label records published per second, by top class "
            "(asteroid-policy labels included).", "short", [
                query(f"sum by (label) (rate({classified}[{RATE}]))", "{{label}}"),
            ], stacked=True))
        .with_panel(timeseries(
            "Consumer lag per partition", "Messages between each partition's end and the "
            "group's committed offset (what a restart would read again).", "short", [
                query(f"sum by (topic, partition) ({metric('stamp_worker_consumer_lag')})",
                      "{{topic}} [{{partition}}]"),
            ]))
        .with_panel(timeseries(
            "Processes and partitions", "Scrape status (1: up) and input partitions "
            "assigned, per process.", "short", [
                query(f"up{{{SELECTOR}}}", "up {{instance}}"),
                query(f"sum by (instance) ({metric('stamp_worker_assigned_partitions')})",
                      "partitions {{instance}}"),
            ]))
    )

    dashboard = (
        dashboard.with_row(Row("Latency"))
        .with_panel(timeseries(
            "Stage time per batch", "Wall time of each stage of a micro-batch (decode, "
            "infer, produce, commit), median and 99th percentile.", "s",
            list(quantiles("stamp_worker_stage_seconds", by="stage"))))
        .with_panel(timeseries(
            "End-to-end latency", "Kafka timestamp of the alert to delivery of its label. "
            "Alert: StampWorkerSlowLabels (p99 over 30 s).", "s",
            list(quantiles("stamp_worker_end_to_end_seconds"))))
        .with_panel(timeseries(
            "Alert age at publication", "Label publication time minus the alert's "
            "observation time (candidate.jd): the survey's delay plus the worker's.", "s",
            list(quantiles("stamp_worker_alert_age_seconds"))))
        .with_panel(timeseries(
            "Batch size", "Messages per micro-batch: small when the topic is quiet, "
            "batch.max_messages when catching up.", "short",
            list(quantiles("stamp_worker_batch_size"))))
    )

    dashboard = (
        dashboard.with_row(Row("Failures"))
        .with_panel(timeseries(
            "Dead letters by reason", "Records sent to the dead-letter topic per second, "
            "by reason. Alert: StampWorkerDeadLetterRatioHigh (over 5 % of consumed).",
            "short", [query(f"sum by (reason) (rate({dead}[{RATE}])) > 0", "{{reason}}")],
            stacked=True))
        .with_panel(timeseries(
            "Commits and commit failures", "Offset commits per second, and failed ones. "
            "Alert: StampWorkerCommitFailures.", "short", [
                query(f"sum(rate({metric('stamp_worker_commits_total')}[{RATE}]))",
                      "commits"),
                query(f"sum(rate({metric('stamp_worker_commit_failures_total')}[{RATE}]))",
                      "failures"),
            ]).override_by_name("failures", [DynamicConfigValue(
                id_val="color", value={"mode": "fixed", "fixedColor": "red"})]))
        .with_panel(timeseries(
            "Delivery failures", "Label or dead-letter records Kafka did not accept, per "
            "process; the batch is not committed and the worker stops. Alert: "
            "StampWorkerDeliveryFailures.", "short", [
                query(f"sum by (instance) (increase("
                      f"{metric('stamp_worker_delivery_failures_total')}[{RATE}]))",
                      "{{instance}}"),
            ]))
        .with_panel(timeseries(
            "Consumer errors and rebalances", "Errors librdkafka recovers from by itself "
            "(e.g. a missing input topic), and rebalance callbacks, per second.", "short", [
                query(f"sum by (error) (rate({metric('stamp_worker_consumer_errors_total')}"
                      f"[{RATE}])) > 0", "{{error}}"),
                query(f"sum by (kind) (rate({metric('stamp_worker_rebalances_total')}"
                      f"[{RATE}])) > 0", "rebalance {{kind}}"),
            ]))
    )

    low_bucket = metric("stamp_worker_model_top_probability_bucket", f'le="{LOW_CONFIDENCE}"')
    shares_description = (
        f"Share of each top class among the model's predictions of the last "
        f"{DRIFT_WINDOW} (solid), and the configured baseline (dashed, drift.baseline).")
    dashboard = (
        dashboard.with_row(Row("Drift"))
        .with_panel(timeseries(
            f"Class shares ({DRIFT_WINDOW}) and baseline", shares_description,
            "percentunit", [
                query(predicted_shares("job"), "{{class}}"),
                query(f"max by (class) ({metric('stamp_worker_drift_baseline_share')})",
                      "baseline {{class}}"),
            ]).override_by_regexp("^baseline .*", [DynamicConfigValue(
                id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})]))
        .with_panel(timeseries(
            f"Distance from the baseline ({DRIFT_WINDOW})", "Total variation distance "
            "between the predicted shares and the baseline (0: the same, 1: no class in "
            "common), and the alert threshold drift.max_distance. Alert: "
            "StampWorkerClassDrift, above the threshold for 30 min with 1,000 "
            "predictions or more in the window.", "percentunit", [
                query(tvd, "distance {{job}}"),
                query(f"max by (job) ({metric('stamp_worker_drift_max_distance')})",
                      "threshold {{job}}"),
            ]).override_by_regexp("^threshold .*", [
                DynamicConfigValue(id_val="custom.lineStyle",
                                   value={"fill": "dash", "dash": [10, 10]}),
                DynamicConfigValue(id_val="color", value={"mode": "fixed",
                                                          "fixedColor": "red"})]))
        .with_panel(timeseries(
            "Predictions by class", "The model's predictions per second, by top class "
            "(asteroid-policy labels are not predictions).", "short", [
                query(f"sum by (class) (rate("
                      f"{metric('stamp_worker_model_predictions_total')}[{RATE}]))",
                      "{{class}}"),
            ], stacked=True))
        .with_panel(timeseries(
            "Top probability", f"Median top-class probability by class, and the share of "
            f"predictions at or under {LOW_CONFIDENCE} over the last {DRIFT_WINDOW} "
            f"(alert: StampWorkerLowConfidence, over 30 %).", "percentunit", [
                *quantiles("stamp_worker_model_top_probability", by="class", levels=(0.5,)),
                query(f"sum(increase({low_bucket}[{DRIFT_WINDOW}]))\n"
                      f"  / sum(increase({metric('stamp_worker_model_top_probability_count')}"
                      f"[{DRIFT_WINDOW}]))", f"at or under {LOW_CONFIDENCE}"),
            ]))
    )
    return dashboard


def render() -> str:
    """The dashboard as the JSON that Grafana imports (keys sorted, two-space indent)."""
    dashboard = build().build()
    # Ids in order: Grafana needs one per panel (links, "view panel"), the SDK sets none.
    for number, panel in enumerate(dashboard.panels or [], start=1):
        panel.id_val = number
    return JSONEncoder(sort_keys=True, indent=2).encode(dashboard) + "\n"


def main() -> int:
    """Print the dashboard JSON on standard output."""
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
