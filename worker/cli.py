"""``stamp-worker``: the command-line entry point.

Subcommands
-----------
topics [--config FILE]
    Create (or ``--describe``) the input, label and dead-letter topics of a
    configuration, sized for alerts; existing topics are left as they are.
run [--config FILE]
    The streaming worker: consume alerts, publish labels, serve metrics, until SIGTERM
    (``processes: N`` runs N worker processes in the consumer group).
demo [--data DIR] [--timeout S]
    The whole job end to end on an embedded default (local broker, sample alerts,
    bundled model), then a table of labels per class and latencies.
replay PATH... --topic T | --source-topic S --topic T
    Produce archived alerts (files, folders, ZTF nightly tar archives, Parquet tables,
    or a slice of another topic) to a topic, keyed by objectId, at a chosen rate or in
    bursts.
labels --topic T
    Print the label records of a topic as JSON lines or CSV.
classify PATH...
    The worker's pipeline without Kafka: label records as JSON lines or CSV.  Exit
    status 0 when every input was read, 1 when some input is unreadable or not an alert
    at all, 2 when nothing was done (see :data:`CLASSIFY_EXIT_STATUS`).
inspect PATH...
    Decode and preprocess alert files (``.avro``), archives, Parquet tables or folders
    of them, without Kafka or a model, and print one line per alert (or the reason it is
    refused) and a summary by reason.  The tool to ask "why does this alert fail?".
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from worker.commandline import (
    UsageError,
    check_readable,
    positive_float,
    positive_int,
    quiet_tensorflow,
    use_help_formatter,
)
from worker.decode.alerts import Alert, AlertDecoder
from worker.decode.errors import AlertError
from worker.decode.sources import SourceError, expand_paths, read_inputs
from worker.model.artifact import BACKENDS, DEVICES, threads_per_process
from worker.prepare.stamps import PreprocessConfig, prepare_alert


def inspect(paths: Sequence[str], crop_size: int, non_square: str, quiet: bool) -> int:
    """Decode + preprocess files and print what happens to each alert.

    Parameters
    ----------
    paths : sequence of str
        Files, archives, Parquet tables or folders (searched recursively).
    crop_size : int
        Centre crop side [pixels].
    non_square : str
        ``"pad"`` or ``"reject"``.
    quiet : bool
        Print only the summary.

    Returns
    -------
    int
        Exit status: 0 when every input was read (refused alerts are reported, not
        failures of the command); 1 when some input could not be read or is not an
        alert at all (:data:`worker.tools.classify.NOT_AN_ALERT`); 2 when nothing was done
        (a missing path, a bad option: one line on stderr).
    """
    from worker.tools.classify import NOT_AN_ALERT

    try:
        config = PreprocessConfig(crop_size=crop_size, non_square=non_square)  # type: ignore[arg-type]
        for path in paths:
            check_readable(path)
        files = expand_paths(paths)
    except (ValueError, SourceError, UsageError) as exc:
        print(f"stamp-worker inspect: {exc}", file=sys.stderr)
        return 2
    decoder = AlertDecoder()
    outcomes: Counter[str] = Counter()
    n_files = 0
    start = time.perf_counter()
    failed = 0

    def unreadable(origin: str, message: str) -> None:
        nonlocal failed
        failed += 1
        outcomes["unreadable_input"] += 1
        print(f"UNREADABLE {origin}: {message}")

    for payload in read_inputs(files, on_error=unreadable):
        n_files += 1
        path = payload.origin
        for item in decoder.iter_records(payload.data):
            if isinstance(item, Alert):
                try:
                    prepared = prepare_alert(item, config)
                except AlertError as err:
                    item = err
                else:
                    outcomes["ok"] += 1
                    if not quiet:
                        flag = " padded" if prepared.padded else ""
                        print(f"ok      {path}  {item.object_id} {item.candid}{flag}")
                    continue
            outcomes[item.reason.value] += 1
            if item.reason.value in NOT_AN_ALERT:
                failed += 1
                print(f"NOT AN ALERT {path}  {item.reason.value}: {item.detail}")
            elif not quiet:
                print(f"REFUSED {path}  {item.reason.value}: {item.detail}")
    elapsed = time.perf_counter() - start
    total = sum(outcomes.values())
    print(f"\n{n_files} files, {total} alert records in {elapsed:.2f} s")
    print(f"{'outcome':<24}{'alerts':>8}")
    for outcome, count in outcomes.most_common():
        print(f"{outcome:<24}{count:>8}")
    return 1 if failed else 0


def run(config_path: str | None, until_idle_s: float | None = None) -> int:
    """Run the streaming worker until SIGTERM/SIGINT (exit 0) or a failure (exit 1).

    With ``processes: N`` > 1 in the configuration, start N worker processes (each this
    command with one process) and watch them (:func:`worker.stream.processes.supervise`).

    Parameters
    ----------
    config_path : str or None
        YAML configuration; None uses ``$STAMP_WORKER_CONFIG`` or the defaults, with
        ``STAMP_WORKER__SECTION__KEY`` environment overrides either way.
    until_idle_s : float, optional
        Stop cleanly (exit 0) once no message has arrived for this long [s].

    Returns
    -------
    int
        Exit status.
    """
    import logging

    from worker.stream.config import ENV_BOOTSTRAP, ConfigError, load_config, to_dict

    # The pid tells the lines of several worker processes apart (``processes: N``).
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    log = logging.getLogger("stamp_worker")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise SystemExit(f"stamp-worker run: configuration: {exc}") from exc
    if config.processes > 1:
        # Before the model is imported: this process only starts and watches the workers.
        from worker.stream.processes import supervise

        log.info("starting %d worker processes", config.processes)
        command = [sys.executable, "-m", "worker.cli", "run"]
        if config_path:
            command += ["--config", config_path]
        if until_idle_s is not None:
            command += ["--until-idle", str(until_idle_s)]
        return supervise(config, command)
    log.info("configuration: %s", to_dict(config))

    from prometheus_client import CollectorRegistry

    from worker.decode.registry import ConfluentSchemaRegistry
    from worker.model.artifact import ModelError, StampModel
    from worker.stream.identity import IdentityError
    from worker.stream.metrics import HealthState, MetricsServer, WorkerMetrics
    from worker.stream.pipeline import Worker

    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    health = HealthState()
    server = None
    if config.metrics.port:
        server = MetricsServer(registry, health, config.metrics.host, config.metrics.port)
        server.start()
        log.info("metrics on http://%s:%d/metrics", config.metrics.host, server.port)
    try:
        # Before the model (5 s): a wrong address or a cluster that is down is named at
        # once, in one line, instead of librdkafka retrying it forever.
        from worker.stream.cluster import ClusterError, check_reachable

        health.set_ready(False, f"connecting to Kafka at {config.kafka.bootstrap_servers}")
        try:
            check_reachable("consumer", config.kafka.client_settings("consumer"),
                            config.kafka.connect_timeout_s,
                            what=f"kafka.bootstrap_servers (or {ENV_BOOTSTRAP})")
        except ClusterError as exc:
            raise SystemExit(f"stamp-worker run: {exc}") from exc
        threads = threads_per_process(config.model_threads, config.processes)
        try:
            model = StampModel.load(config.model_path, backend=config.model_backend,
                                    device=config.model_device, threads=threads,
                                    memory_fraction=config.model_memory_fraction)
        except ModelError as exc:
            raise SystemExit(f"stamp-worker run: model: {exc}") from exc
        log.info("model %s v%s from %s (%s backend, %s%s)", model.name, model.version,
                 model.path, model.backend, model.device,
                 f", {threads} thread{'s' * (threads > 1)} per prediction"
                 if threads and model.backend.startswith("onnx") else "")
        schema_registry = (ConfluentSchemaRegistry(config.registry.url, config.registry.client)
                           if config.registry.url else None)
        try:
            worker = Worker(config, model, metrics, health,
                            AlertDecoder(registry=schema_registry))
            worker.install_signal_handlers()
            log.info("consuming %s as group %s → labels %s, dead letters %s",
                     ",".join(config.topics.input), config.group_id, config.topics.output,
                     config.topics.dead_letter)
            code = worker.run(until_idle_s)
        except IdentityError as exc:  # another live worker has this one's id
            raise SystemExit(f"stamp-worker run: {exc}") from exc
        log.info("stopped cleanly after %s", _processed(registry))
        return code
    finally:
        if server is not None:
            server.stop()


def _processed(registry: Any) -> str:
    """What the worker did, from its metrics: messages, labels by class, dead letters."""
    totals: dict[str, float] = {}
    by_class: list[str] = []
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and not sample.name.endswith("created"):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
                if sample.name == "stamp_worker_alerts_classified_total" and sample.value:
                    by_class.append(f"{sample.labels['label']} {sample.value:.0f}")
    consumed = totals.get("stamp_worker_alerts_consumed_total", 0.0)
    labels = totals.get("stamp_worker_alerts_classified_total", 0.0)
    dead = totals.get("stamp_worker_alerts_dead_lettered_total", 0.0)
    return (f"{consumed:.0f} messages: {labels:.0f} labels"
            + (f" ({', '.join(by_class)})" if by_class else "") + f", {dead:.0f} dead letters")


PATHS_HELP = ("alert files (.avro), ZTF nightly archives (.tar.gz) and Parquet tables "
              "(.parquet, one alert per row), both read as a stream, or folders of them")

CLASSIFY_EXIT_STATUS = """exit status:
  0  every input was read; each of its alerts labelled or refused with its reason
  1  some input could not be read (a damaged archive or table) or is not an alert
     at all (empty, or neither an Avro container nor Confluent framing); the labels
     of all the other inputs were written
  2  nothing was done: a path, an option, the output or the model is wrong (one
     line on stderr says which)"""
INSPECT_EXIT_STATUS = """exit status:
  0  every input was read (refused alerts are results, listed with their reasons)
  1  some input could not be read or is not an alert at all; the others were
     inspected
  2  nothing was done: a path or an option is wrong (one line on stderr)"""


def _add_replay(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay", help="archived alerts (files, folders, tar archives, Parquet tables, a "
        "topic) → a topic",
        description="Produce alerts to a Kafka topic, keyed by objectId, at a chosen pace. "
        "Payloads are sent unchanged, undecodable ones too (without a key).")
    p.add_argument("paths", nargs="*", help=PATHS_HELP)
    p.add_argument("--topic", required=True, help="destination topic")
    p.add_argument("-b", "--bootstrap-servers",
                   help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("-X", action="append", default=[], metavar="KEY=VALUE",
                   help="librdkafka setting for the producer (and the source consumer), "
                   "e.g. -X security.protocol=SASL_SSL; repeatable. Over those of the "
                   "STAMP_WORKER__KAFKA__COMMON__* variables, the worker's security "
                   "settings (give a password there, not here)")
    p.add_argument("--connect-timeout", type=positive_float, default=30.0, metavar="S",
                   help="seconds to wait for the cluster to answer before giving up "
                   "(default 30)")
    p.add_argument("--source-topic", help="replay this topic's messages instead of files")
    p.add_argument("--from", dest="start", metavar="TIME",
                   help="ISO 8601 time (UTC unless an offset is given): only alerts from "
                   "then on (message timestamp for --source-topic, jd for files)")
    p.add_argument("--to", dest="end", metavar="TIME",
                   help="ISO 8601 time: only alerts before then")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, help="steady rate [alerts/s] "
                      "(default: as fast as possible)")
    pace.add_argument("--burst", type=int, metavar="N",
                      help="send N alerts at once every --burst-interval seconds")
    p.add_argument("--burst-interval", type=float, default=1.0, metavar="S",
                   help="seconds between the starts of bursts (default 1)")
    p.add_argument("--limit", type=int, help="stop after this many alerts")
    p.add_argument("--shuffle", action="store_true",
                   help="random order (archives, tables: mixed within --shuffle-buffer alerts)")
    p.add_argument("--shuffle-buffer", type=int, default=10_000, metavar="N",
                   help="alerts held for --shuffle (default 10000, ≈ 0.7 GB of ZTF alerts)")
    p.add_argument("--seed", type=int, help="seed of --shuffle")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_topics(sub: argparse._SubParsersAction) -> None:
    from worker.tools import topics

    p = sub.add_parser(
        "topics", help="create (or describe) the input, label and dead-letter topics of a "
        "configuration",
        description="Create the topics a worker configuration names, sized for alerts "
        "(max.message.bytes 16 MiB for the input and the dead letters), and print what the "
        "cluster has. Existing topics are left as they are (differences are noted), so "
        "running it again changes nothing. Exit status 0 when every topic exists.")
    p.add_argument("--config", help="YAML configuration, as for run (default: "
                   "$STAMP_WORKER_CONFIG); STAMP_WORKER__SECTION__KEY and "
                   "KAFKA_BOOTSTRAP_SERVERS override it")
    p.add_argument("--describe", action="store_true",
                   help="only describe the topics; create nothing (exit 1 if one is missing)")
    p.add_argument("--partitions", type=positive_int, default=topics.DEFAULT_PARTITIONS,
                   help="partitions of the input and label topics, a multiple of the "
                   "worker processes (default %(default)s)")
    p.add_argument("--replication-factor", type=positive_int,
                   help="replicas of each partition (default: 3, or the number of brokers "
                   "if fewer)")
    p.add_argument("--retention-days", type=positive_float,
                   default=topics.DEFAULT_RETENTION_DAYS,
                   help="how long the input and label topics keep messages "
                   "(default %(default)g)")
    p.add_argument("--dead-letter-retention-days", type=positive_float,
                   default=topics.DEFAULT_DEAD_LETTER_RETENTION_DAYS,
                   help="how long the dead-letter topic keeps messages (default %(default)g)")


def _add_labels(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "labels", help="print the label records of a topic as JSON lines or CSV",
        description="Read a label topic from its start to its end as seen at the start "
        "(or --follow it) with a throw-away consumer group, and write its records as "
        "classify does; a count per class goes to standard error. The "
        "STAMP_WORKER__KAFKA__COMMON__* variables (security settings, as the worker "
        "reads them) are the consumer's librdkafka settings.")
    p.add_argument("--topic", required=True, help="label topic")
    p.add_argument("-b", "--bootstrap-servers",
                   help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("-f", "--format", choices=("jsonl", "csv"), default="jsonl",
                   help="JSON lines (default) or CSV")
    p.add_argument("--limit", type=positive_int, help="stop after this many records")
    p.add_argument("--follow", action="store_true",
                   help="keep printing new records until interrupted")
    p.add_argument("--connect-timeout", type=positive_float, default=30.0, metavar="S",
                   help="seconds to wait for the cluster to answer (default 30)")


def _add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify", help="label alert files offline (no Kafka): JSON lines or CSV",
        description="Run the worker's pipeline on files, archives, Parquet tables and "
        "folders and write its label records. Refused alerts are listed on stderr with "
        "their reasons, as the worker dead-letters them; inputs that cannot be read or "
        "are not alerts at all are listed even with --quiet. The paths, the output and "
        "the model's manifest are checked before the model loads.",
        epilog=CLASSIFY_EXIT_STATUS)
    p.add_argument("paths", nargs="+", help=PATHS_HELP)
    p.add_argument("-o", "--output", metavar="FILE",
                   help="output file, overwritten (default: standard output)")
    p.add_argument("-f", "--format", choices=("jsonl", "csv"), default="jsonl",
                   help="JSON lines (default) or CSV")
    p.add_argument("--model", metavar="DIR",
                   help="model artifact directory (default: the bundled model)")
    p.add_argument("--batch-size", type=positive_int, default=256, metavar="N",
                   help="alerts per model call")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="what runs the model: onnx (ONNX Runtime, no TensorFlow), onnx-int8 "
                   "(ONNX Runtime on the artifact's 8-bit model.int8.onnx, CPU), keras "
                   "(Keras on TensorFlow), jax (Keras on JAX), or auto (default: onnx when "
                   "the artifact has model.onnx)")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where the onnx and jax backends run: cpu (default), gpu or cuda "
                   "(an NVIDIA GPU: pip install 'stamp-classifier-worker[gpu]'), or auto "
                   "(the GPU when usable)")
    p.add_argument("--asteroid-policy", action="store_true",
                   help="label alerts within 5 arcsec of a known solar-system object "
                   "asteroid without the model (as the worker's asteroid_policy)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="summary only on stderr, not one line per refused alert")


def _demo(data: str | None, timeout_s: float) -> int:
    """``stamp-worker demo``: check ``--data``, then run :func:`worker.tools.demo.run_demo`."""
    from pathlib import Path

    data_dir = None
    if data is not None:
        data_dir = Path(data)
        if not data_dir.is_dir():
            print(f"stamp-worker demo: {data}: no such folder", file=sys.stderr)
            return 2
        if not any(p.is_dir() for p in data_dir.glob("ztf-alerts*")):
            print(f"stamp-worker demo: {data}: holds no ztf-alerts* folder of alert files "
                  "(the layout of the shared data)", file=sys.stderr)
            return 2
    from worker.tools.demo import run_demo

    return run_demo(timeout_s, data_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stamp-worker`` command line; returns the exit status."""
    # TensorFlow's C++ start-up notices (oneDNN, CPU features) are not for operators.
    quiet_tensorflow()
    parser = argparse.ArgumentParser(
        prog="stamp-worker", description="Label ZTF alerts with the stamp classifier: the "
        "streaming Kafka worker, an end-to-end demo, and the tools around them. "
        "'stamp-worker COMMAND --help' describes each command.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser(
        "run", help="the streaming worker (Kafka in, labels out)",
        description="Consume alerts from Kafka, label them with the model and publish the "
        "label records; alerts that cannot be labelled go to the dead-letter topic with "
        "their reason. Serves Prometheus metrics and health checks, and runs until "
        "SIGTERM or SIGINT (exit 0, after draining and committing) or a failure (exit 1, "
        "one line on stderr). processes: N in the configuration runs N worker processes.")
    p_run.add_argument("--config", help="YAML configuration (default: $STAMP_WORKER_CONFIG); "
                       "STAMP_WORKER__SECTION__KEY variables override it "
                       "(see deploy/worker.example.yaml)")
    p_run.add_argument("--until-idle", type=positive_float, metavar="S",
                       help="stop cleanly once no alert has arrived for S seconds (a "
                       "replayed backlog drained); default: run until SIGTERM/SIGINT")
    p_demo = sub.add_parser(
        "demo", help="end to end on an embedded default: local broker, sample "
        "alerts, bundled model; prints labels and latencies",
        description="Start a local Kafka broker (unless KAFKA_BOOTSTRAP_SERVERS names one), "
        "replay the real sample alerts (the ztf-alerts* folders of the data folder; "
        "simulated alerts when there is none) into fresh topics, run the worker with the "
        "bundled model until every alert is committed, print labels per class, dead "
        "letters per reason and latencies, and stop what it started. Exit status 0 when "
        "every alert was labelled or dead-lettered.")
    p_demo.add_argument("--data", metavar="DIR",
                        help="data folder whose ztf-alerts* folders are replayed (default: "
                        "$STAMP_DATA_DIR, else ../shared/data; simulated alerts when "
                        "neither exists)")
    p_demo.add_argument("--timeout", type=positive_float, default=300.0, metavar="S",
                        help="give up waiting for the worker this many seconds after the "
                        "start")
    _add_topics(sub)
    _add_replay(sub)
    _add_classify(sub)
    _add_labels(sub)
    p_inspect = sub.add_parser(
        "inspect", help="decode + preprocess alert files, no Kafka",
        description="Decode and preprocess alert files, archives, Parquet tables or folders "
        "of them as the worker would, without Kafka or a model, and print one line per "
        "alert (ok, or the reason it is refused) and a count per outcome: the tool to ask "
        "why an alert fails.", epilog=INSPECT_EXIT_STATUS)
    p_inspect.add_argument("paths", nargs="+", help=PATHS_HELP)
    p_inspect.add_argument("--crop-size", type=positive_int, default=21, metavar="PIXELS",
                           help="centre crop side")
    p_inspect.add_argument("--non-square", choices=("pad", "reject"), default="pad",
                           help="policy for stamps cut by a CCD edge")
    p_inspect.add_argument("-q", "--quiet", action="store_true",
                           help="summary only (and the inputs that make the exit status 1)")
    use_help_formatter(parser)
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return run(args.config, args.until_idle)
        if args.command == "demo":
            return _demo(args.data, args.timeout)
        if args.command == "inspect":
            return inspect(args.paths, args.crop_size, args.non_square, args.quiet)
        if args.command == "labels":
            from worker.tools.read_labels import labels_command

            return labels_command(args.topic, args.bootstrap_servers, args.format,
                                  args.limit, args.follow, args.connect_timeout,
                                  sys.stdout, sys.stderr)
        if args.command == "topics":
            from worker.tools.topics import topics_command

            return topics_command(args.config, args.describe, args.partitions,
                                  args.replication_factor, args.retention_days,
                                  args.dead_letter_retention_days, sys.stdout)
        if args.command == "replay":
            from worker.tools.replay import replay_command

            return replay_command(args.paths, args.topic, args.bootstrap_servers, args.X,
                                  args.source_topic, args.start, args.end, args.rate,
                                  args.burst, args.burst_interval, args.limit, args.shuffle,
                                  args.shuffle_buffer, args.seed, args.quiet, sys.stderr,
                                  args.connect_timeout)
        if args.command == "classify":
            from worker.tools.classify import classify_command

            return classify_command(args.paths, args.output, args.format, args.model,
                                    args.batch_size, args.asteroid_policy, sys.stderr,
                                    args.quiet, args.backend, args.device)
    except BrokenPipeError:  # output piped into `head`: stop quietly
        sys.stderr.close()
        return 0
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
