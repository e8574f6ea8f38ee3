"""``stamp-worker``: the command-line entry point.

Subcommands
-----------
run [--config FILE]
    The streaming worker: consume alerts, publish labels, serve metrics, until SIGTERM.
demo
    The whole job end to end on an embedded default (local broker, sample alerts,
    bundled model), then a table of labels per class and latencies.
inspect PATH...
    Decode and preprocess alert files (``.avro``) or folders of them, without Kafka or
    a model, and print one line per alert (or the reason it is refused) and a summary
    by reason.  The tool to ask "why does this alert fail?".
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from worker.alerts import Alert, AlertDecoder
from worker.errors import AlertError
from worker.stamps import PreprocessConfig, prepare_alert


def _alert_paths(paths: Sequence[str]) -> Iterator[Path]:
    for name in paths:
        path = Path(name)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*.avro") if p.is_file())
        elif path.is_file():
            yield path
        else:
            raise SystemExit(f"stamp-worker: {name}: no such file or directory")


def inspect(paths: Sequence[str], crop_size: int, non_square: str, quiet: bool) -> int:
    """Decode + preprocess files and print what happens to each alert.

    Parameters
    ----------
    paths : sequence of str
        Files or folders (searched recursively for ``*.avro``).
    crop_size : int
        Centre crop side [pixels].
    non_square : str
        ``"pad"`` or ``"reject"``.
    quiet : bool
        Print only the summary.

    Returns
    -------
    int
        Exit status: 0 (refused alerts are reported, not failures of the command).
    """
    try:
        config = PreprocessConfig(crop_size=crop_size, non_square=non_square)  # type: ignore[arg-type]
    except ValueError as exc:
        raise SystemExit(f"stamp-worker inspect: {exc}") from exc
    decoder = AlertDecoder()
    outcomes: Counter[str] = Counter()
    n_files = 0
    start = time.perf_counter()
    for path in _alert_paths(paths):
        n_files += 1
        for item in decoder.iter_records(path.read_bytes()):
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
            if not quiet:
                print(f"REFUSED {path}  {item.reason.value}: {item.detail}")
    elapsed = time.perf_counter() - start
    total = sum(outcomes.values())
    print(f"\n{n_files} files, {total} alert records in {elapsed:.2f} s")
    print(f"{'outcome':<24}{'alerts':>8}")
    for outcome, count in outcomes.most_common():
        print(f"{outcome:<24}{count:>8}")
    return 0


def run(config_path: str | None) -> int:
    """Run the streaming worker until SIGTERM/SIGINT (exit 0) or a failure (exit 1).

    Parameters
    ----------
    config_path : str or None
        YAML configuration; None uses ``$STAMP_WORKER_CONFIG`` or the defaults, with
        ``STAMP_WORKER__SECTION__KEY`` environment overrides either way.

    Returns
    -------
    int
        Exit status.
    """
    import logging

    from prometheus_client import CollectorRegistry

    from worker.config import ConfigError, load_config, to_dict
    from worker.metrics import HealthState, MetricsServer, WorkerMetrics
    from worker.model import ModelError, StampModel
    from worker.pipeline import Worker
    from worker.registry import ConfluentSchemaRegistry

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("stamp_worker")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise SystemExit(f"stamp-worker run: configuration: {exc}") from exc
    log.info("configuration: %s", to_dict(config))
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    health = HealthState()
    server = None
    if config.metrics.port:
        server = MetricsServer(registry, health, config.metrics.host, config.metrics.port)
        server.start()
        log.info("metrics on http://%s:%d/metrics", config.metrics.host, server.port)
    try:
        try:
            model = StampModel.load(config.model_path)
        except ModelError as exc:
            raise SystemExit(f"stamp-worker run: model: {exc}") from exc
        log.info("model %s v%s from %s", model.name, model.version, model.path)
        schema_registry = (ConfluentSchemaRegistry(config.registry.url, config.registry.client)
                           if config.registry.url else None)
        worker = Worker(config, model, metrics, health, AlertDecoder(registry=schema_registry))
        worker.install_signal_handlers()
        log.info("consuming %s as group %s → labels %s, dead letters %s",
                 ",".join(config.topics.input), config.group_id, config.topics.output,
                 config.topics.dead_letter)
        code = worker.run()
        log.info("stopped cleanly")
        return code
    finally:
        if server is not None:
            server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stamp-worker`` command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="stamp-worker", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="the streaming worker (Kafka in, labels out)")
    p_run.add_argument("--config", help="YAML configuration (default: $STAMP_WORKER_CONFIG); "
                       "STAMP_WORKER__SECTION__KEY variables override it "
                       "(see deploy/worker.example.yaml)")
    sub.add_parser("demo", help="end to end on an embedded default: local broker, sample "
                   "alerts, bundled model; prints labels and latencies")
    p_inspect = sub.add_parser("inspect", help="decode + preprocess alert files, no Kafka")
    p_inspect.add_argument("paths", nargs="+", help="alert files or folders of .avro files")
    p_inspect.add_argument("--crop-size", type=int, default=21, help="centre crop [pixels]")
    p_inspect.add_argument("--non-square", choices=("pad", "reject"), default="pad",
                           help="policy for stamps cut by a CCD edge")
    p_inspect.add_argument("-q", "--quiet", action="store_true", help="summary only")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return run(args.config)
        if args.command == "demo":
            from worker.demo import run_demo

            return run_demo()
        if args.command == "inspect":
            return inspect(args.paths, args.crop_size, args.non_square, args.quiet)
    except BrokenPipeError:  # output piped into `head`: stop quietly
        sys.stderr.close()
        return 0
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
