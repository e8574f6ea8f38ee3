"""``stamp-train``: make datasets and train model artifacts.

Subcommands
-----------
convert
    One-time conversion of the ALeRCE stamp pickle to the safe ``.npz`` format.  A
    pickle runs code when loaded: this is the only command that loads one, and only
    with ``--i-trust-this-pickle``.
dataset
    Real alerts (files, folders, tar archives, Parquet tables) and a labels CSV → a
    labelled ``.npz`` through the worker's own decoding; refused alerts listed.
simulate
    Write a simulated labelled dataset (``.npz``).
train
    Train a model on an ``.npz`` dataset (or freshly simulated data) and write the
    artifact directory (``model.keras``, ``model.onnx``, ``manifest.json``, ``report/``).
train-real
    Train on real labelled alerts (``dataset``), object-balanced, optionally from an
    artifact (``--init-from``) and mixed with simulated examples; cross-validates first.
cv
    Object-grouped k-fold cross-validation of a ``train-real`` configuration.
evaluate
    Score an artifact on real alerts + labels CSV (per alert, per object, per tier,
    with intervals), on a dataset, or on the real ALeRCE-labelled stamps.
export-onnx
    Add ``model.onnx`` to an artifact (:mod:`training.onnx_export`), which the worker
    serves with ONNX Runtime, without TensorFlow; ``train`` and ``train-real`` write it.
quantize
    Add ``model.int8.onnx``, an 8-bit copy of ``model.onnx`` calibrated and checked on
    real stamps (:mod:`training.quantize`), served with ``model_backend: onnx-int8``.
sim-report
    Where simulated alerts differ from real labelled ones (:mod:`training.sim_report`).

Every command checks its paths and numbers before TensorFlow is imported (a few
seconds), and stops with one line saying what to fix.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from training.data import (
    CLASS_NAMES,
    FEATURE_ENCODINGS,
    DatasetError,
    StampDataset,
    load_alerce_pickle,
    load_npz,
    preprocess_images,
    save_npz,
)
from worker.commandline import (
    UsageError,
    check_readable,
    check_writable,
    fraction,
    import_keras,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    quiet_tensorflow,
    use_help_formatter,
)
from worker.prepare.features import metadata_features


def simulated_dataset(n: int, seed: int, balanced: bool = False) -> StampDataset:
    """A :class:`StampDataset` from the simulator (features from its candidates)."""
    from training.simulator import SEED_CLASS_FRACTIONS, simulate

    sim = simulate(n, seed, class_fractions=None if balanced else SEED_CLASS_FRACTIONS)
    features = np.stack([metadata_features(c) for c in sim.candidates]).astype(np.float32)
    n_out = len(sim.labels)
    # Each simulated stamp is an object of its own (ids unique across seeds).
    return StampDataset(sim.images, sim.labels.astype(np.int64), features,
                        object_ids=np.array([f"sim{seed}-{i}" for i in range(n_out)]),
                        tiers=np.full(n_out, "sim"), sources=np.full(n_out, "simulator"))


def _filters(text: str) -> tuple[int, ...]:
    """``--trunk-filters``: comma-separated filter counts, e.g. ``8,16,32,64``."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected four comma-separated integers such as 8,16,32,64, got {text!r}"
        ) from None


def _convert(args: argparse.Namespace) -> int:
    _check_paths("convert", inputs=[args.pickle], files=[args.out])
    if not args.i_trust_this_pickle:
        raise SystemExit("stamp-train convert: loading a pickle runs code from the file; "
                         "add --i-trust-this-pickle if you trust it")
    dataset, dropped = load_alerce_pickle(args.pickle)
    path = save_npz(dataset, args.out)
    print(f"wrote {path}: {len(dataset)} examples {dataset.class_counts()}, "
          f"{dropped} non-square dropped")
    return 0


def _dataset(args: argparse.Namespace) -> int:
    from training.realdata import BuildReport, dataset_from_alerts

    _check_paths("dataset", inputs=[*args.alerts, args.labels], files=[args.out, args.refused])
    report = BuildReport()
    dataset = dataset_from_alerts(args.alerts, args.labels, report=report)
    if len(dataset) == 0:
        raise SystemExit(f"stamp-train dataset: no labelled alert found in {len(args.alerts)} "
                         f"input(s) ({report.records} records read; refused: "
                         f"{report.reasons()}); do the labels' candids or objectIds match?")
    path = save_npz(dataset, args.out)
    objects = {name: len(set(dataset.object_ids[dataset.labels == k].tolist()))
               for k, name in enumerate(CLASS_NAMES)}
    print(f"wrote {path}: {len(dataset)} alerts of {len(set(dataset.object_ids.tolist()))} "
          f"objects from {report.records} records read")
    print(f"{'class':<10}{'alerts':>8}{'objects':>9}")
    for name, count in dataset.class_counts().items():
        print(f"{name:<10}{count:>8}{objects[name]:>9}")
    tiers = sorted(set(dataset.tiers.tolist()))
    print("tiers: " + ", ".join(f"{t or '(none)'} {int((dataset.tiers == t).sum())}"
                                for t in tiers))
    print(f"refused {len(report.refused)}: " + ", ".join(
        f"{reason} {n}" for reason, n in report.reasons().items()))
    if args.refused:
        import csv

        with open(args.refused, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["origin", "reason", "detail"])
            writer.writerows(report.refused)
        print(f"refused alerts listed in {args.refused}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    _check_paths("simulate", files=[args.out])
    dataset = simulated_dataset(args.n, args.seed, args.balanced)
    path = save_npz(dataset, args.out)
    print(f"wrote {path}: {len(dataset)} examples {dataset.class_counts()}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from training.models import TRUNK_FILTERS
    from training.train import TrainConfig, print_summary, train
    from worker.prepare.stamps import PreprocessConfig

    # --data is read below, before TensorFlow: its own error says how to make one.
    _check_paths("train", folders=[args.out])
    try:
        PreprocessConfig(crop_size=args.crop_size)
        config = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                             seed=args.seed, patience=args.patience,
                             val_per_class=args.val_per_class,
                             test_per_class=args.test_per_class, crop_size=args.crop_size,
                             entropy_beta=args.entropy_beta, learning_rate=args.learning_rate,
                             feature_encoding=args.feature_encoding,
                             metadata_branch=args.metadata_branch,
                             trunk_filters=args.trunk_filters or TRUNK_FILTERS,
                             version=args.version)
    except ValueError as exc:
        raise SystemExit(f"stamp-train train: {exc}") from exc
    if args.data:
        dataset = load_npz(args.data)
        source = str(args.data)
    else:
        dataset = simulated_dataset(args.simulate, args.sim_seed)
        source = f"training.simulator.simulate(n={args.simulate}, seed={args.sim_seed})"
    print(f"data: {source}: {len(dataset)} examples {dataset.class_counts()}")
    import_keras()
    verbose = 1 if sys.stderr.isatty() else 2
    manifest = train(dataset, config, args.out, data_source=source, verbose=verbose)
    print_summary(manifest)
    _write_onnx("train", args.out)
    print(f"artifact: {args.out} (report in {args.out}/report/)")
    return 0


def _write_onnx(command: str, artifact: str | Any) -> None:
    """Add ``model.onnx`` to an artifact (a few seconds), or stop with one line."""
    from training.onnx_export import export_onnx
    from worker.model.artifact import ModelError

    try:
        entry = export_onnx(artifact)
    except ModelError as exc:
        if command == "export-onnx":
            raise SystemExit(f"stamp-train {command}: {exc}") from exc
        # The trained artifact is complete without it: served by Keras, convertible later.
        print(f"onnx: not written ({exc}); the worker serves the artifact with Keras")
        return
    print(f"onnx: {artifact}/{entry['file']} (opset {entry['opset']}, largest probability "
          f"difference to Keras {entry['max_abs_diff']:.1e} on {entry['check_batch']} "
          "examples)")


def _export_onnx(args: argparse.Namespace) -> int:
    _check_paths("export-onnx", inputs=[args.artifact], folders=[args.artifact])
    _check_artifact("export-onnx", args.artifact)
    _write_onnx("export-onnx", args.artifact)
    return 0


def _quantize(args: argparse.Namespace) -> int:
    _check_paths("quantize", inputs=[args.artifact, args.data, *(args.alerts or [])],
                 folders=[args.artifact])
    _check_artifact("quantize", args.artifact)
    from training.quantize import quantize_onnx
    from worker.model.artifact import ModelError

    try:
        if args.data:
            dataset = load_npz(args.data)
        else:
            from training.realdata import BuildReport, dataset_from_alerts

            report = BuildReport()
            dataset = dataset_from_alerts(args.alerts, None, report=report)
            print(f"{len(dataset)} stamps from {report.records} alert records "
                  f"({len(report.refused)} refused: {report.reasons()})")
        entry = quantize_onnx(args.artifact, dataset, examples=args.examples,
                              min_agreement=args.min_agreement, seed=args.seed)
    except (DatasetError, ModelError) as exc:
        raise SystemExit(f"stamp-train quantize: {exc}") from exc
    check = entry["check"]
    print(f"onnx-int8: {args.artifact}/{entry['file']} calibrated on "
          f"{entry['calibration']['examples']} stamps of {entry['calibration']['objects']} "
          f"objects; on {check['examples']} stamps of {check['objects']} other objects its "
          f"top class equals the float model's on {check['top_class_agreement']:.2%} "
          f"(largest probability difference {check['max_abs_diff']:.3f}, mean "
          f"{check['mean_abs_diff']:.4f})")
    return 0


def _check_paths(command: str, inputs: Sequence[str | None] = (),
                 files: Sequence[str | None] = (), folders: Sequence[str | None] = ()) -> None:
    """Stop with one line naming a bad path, before anything slow is imported.

    ``inputs`` must exist and be readable; ``files`` and ``folders`` are outputs that
    must be writable (created with their parents if needed; existing ones are
    overwritten, as the commands always did).  None entries (options not given) are
    skipped.
    """
    try:
        for path in inputs:
            if path:
                check_readable(path)
        for path in files:
            if path:
                check_writable(path)
        for path in folders:
            if path:
                check_writable(path, directory=True)
    except UsageError as exc:
        raise SystemExit(f"stamp-train {command}: {exc}") from exc


def _real_config(args: argparse.Namespace, command: str) -> tuple[Any, StampDataset,
                                                                  StampDataset | None]:
    """The FineTuneConfig, the real dataset and the simulated one of ``train-real``/``cv``."""
    from training.finetune import FineTuneConfig
    from training.models import TRUNK_FILTERS

    _check_paths(command, inputs=[args.real, args.sim, args.init_from],
                 folders=[getattr(args, "out", None), getattr(args, "report", None)])
    if args.init_from:
        _check_artifact(command, args.init_from)
    try:
        config = FineTuneConfig(epochs=args.epochs, per_class=args.per_class,
                                sim_per_epoch=args.sim_per_epoch if (args.sim or args.simulate)
                                else 0,
                                sim_weight=args.sim_weight,
                                first_detection_share=args.first_detection_share,
                                batch_size=args.batch_size,
                                learning_rate=args.learning_rate, seed=args.seed,
                                init_from=args.init_from, model=args.model,
                                metadata_branch=args.metadata_branch,
                                feature_encoding=args.feature_encoding,
                                trunk_filters=args.trunk_filters or TRUNK_FILTERS,
                                version=args.version)
    except ValueError as exc:
        raise SystemExit(f"stamp-train {command}: {exc}") from exc
    real = load_npz(args.real)
    sim = None
    if args.sim:
        sim = load_npz(args.sim)
    elif args.simulate:
        sim = simulated_dataset(args.simulate, args.sim_seed, balanced=True)
    counts = ", ".join(f"{name} {n}" for name, n in real.class_counts().items())
    print(f"real: {args.real}: {len(real)} alerts of {len(set(real.object_ids.tolist()))} "
          f"objects ({counts})")
    if sim is not None and config.sim_per_epoch:
        print(f"simulated: {args.sim or f'{args.simulate} fresh (seed {args.sim_seed})'}: "
              f"{len(sim)} examples, {config.sim_per_epoch} a epoch at weight "
              f"{config.sim_weight}")
    import_keras()
    return config, real, sim


def _check_artifact(command: str, path: str) -> None:
    """Stop with one line if ``path`` is not a model artifact, before Keras is imported."""
    import json

    from worker.model.artifact import MANIFEST, MODEL_FILE, Manifest, ModelError

    folder = check_readable(path)
    manifest = folder / MANIFEST
    try:
        if not (folder / MODEL_FILE).is_file() or not manifest.is_file():
            raise ModelError(f"{folder}: not a model artifact (a folder with {MODEL_FILE} "
                             f"and {MANIFEST}, made by `stamp-train train`)")
        Manifest.from_dict(json.loads(manifest.read_text(encoding="utf-8")), str(manifest))
    except (OSError, ValueError, ModelError) as exc:
        raise SystemExit(f"stamp-train {command}: {exc}") from exc


def _cross_validate(args: argparse.Namespace, config: Any, real: StampDataset,
                    sim: StampDataset | None, report_dir: Any) -> dict[str, Any]:
    """Run and print one grouped CV, and write its report files.

    ``cv.json`` and ``cv_confusion.png`` go to ``report_dir`` unless it is None.
    Returns the ``grouped_cv`` record that ``train-real`` also keeps in its manifest.
    """
    import json
    import time
    from pathlib import Path

    from training.cv import cross_validate
    from training.evaluate import format_real, plot_confusion

    start = time.perf_counter()
    result = cross_validate(real, config, args.folds, sim, args.fold_seed, verbose=True)
    spread = [f["balanced_accuracy"] for f in result.per_fold]
    print(format_real(f"object-grouped {args.folds}-fold cross-validation "
                      f"({time.perf_counter() - start:.0f} s; per-fold per-object balanced "
                      f"accuracy {min(spread):.1%}–{max(spread):.1%})", result.figures))
    record = {"grouped_cv": {"folds": args.folds, "fold_seed": args.fold_seed,
                             **result.figures, "per_fold": result.per_fold}}
    if report_dir is None:
        return record
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cv.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    plot_confusion(result.figures, out / "cv_confusion.png",
                   f"object-grouped {args.folds}-fold CV on {args.real}")
    print(f"wrote {out}/cv.json and {out}/cv_confusion.png")
    return record


def _cv(args: argparse.Namespace) -> int:
    config, real, sim = _real_config(args, "cv")
    _cross_validate(args, config, real, sim, args.report)
    return 0


def _train_real(args: argparse.Namespace) -> int:
    from pathlib import Path

    from training.finetune import export, fine_tune

    config, real, sim = _real_config(args, "train-real")
    out = Path(args.out)
    metrics = _cross_validate(args, config, real, sim, out / "report") if args.folds else {}
    print("training on every real alert...", flush=True)
    trained = fine_tune(real, config, sim)
    data = {"real": str(args.real), "real_fingerprint_sha256": real.fingerprint(),
            "real_alerts": len(real), "real_objects": len(set(real.object_ids.tolist())),
            "real_class_counts": real.class_counts(),
            "simulated": (str(args.sim) if args.sim else
                          f"training.simulator.simulate(n={args.simulate}, "
                          f"seed={args.sim_seed}, balanced)" if args.simulate else None)}
    export(trained, config, out, data, metrics)
    _write_onnx("train-real", str(out))
    print(f"artifact: {out} ({trained.seconds:.0f} s of training)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from training.evaluate import evaluate, format_result, load_alerce_test_stamps
    from worker.model.artifact import ModelError, StampModel

    _check_paths("evaluate", inputs=[args.model, args.data, args.alerce_test_stamps,
                                     *(args.alerts or []), args.labels],
                 files=[args.confusion],
                 folders=[str(Path(args.model) / "report") if args.write else None])
    if bool(args.alerts) != bool(args.labels):
        raise SystemExit("stamp-train evaluate: --alerts and --labels go together")
    if not (args.alerts or args.data or args.alerce_test_stamps):
        raise SystemExit("stamp-train evaluate: give --alerts with --labels, --data and/or "
                         "--alerce-test-stamps")
    if args.confusion and not args.alerts:
        raise SystemExit("stamp-train evaluate: --confusion needs --alerts and --labels")
    _check_artifact("evaluate", args.model)
    real = None
    if args.alerts:
        from training.realdata import BuildReport, dataset_from_alerts

        report = BuildReport()
        real = dataset_from_alerts(args.alerts, args.labels, report=report)
        if len(real) == 0:
            raise SystemExit("stamp-train evaluate: no labelled alert found in --alerts "
                             f"({report.records} records; refused: {report.reasons()})")
    try:
        model = StampModel.load(args.model, backend=args.backend)
    except ModelError as exc:
        raise SystemExit(f"stamp-train evaluate: {exc}") from exc
    results = {}
    if args.data:
        results["data"] = evaluate(model, load_npz(args.data))
        print(format_result(f"{args.data}", results["data"]))
    if args.alerce_test_stamps:
        dataset, has_meta, _ = load_alerce_test_stamps(args.alerce_test_stamps)
        results["alerce_test_stamps"] = evaluate(model, dataset)
        results["alerce_test_stamps_with_metadata"] = evaluate(
            model, dataset.subset(np.flatnonzero(has_meta)))
        print(format_result("real ALeRCE-labelled stamps",
                            results["alerce_test_stamps"]))
        print(format_result("  of which with ALeRCE metadata",
                            results["alerce_test_stamps_with_metadata"]))
    if real is not None:
        from training.evaluate import evaluate_real, format_real, plot_confusion

        images, _ = preprocess_images(real.images, model.preprocess.crop_size)
        results["real"] = evaluate_real(model.predict(images, real.features), real)
        print(format_real(f"{model.name} v{model.version} on {len(real)} real alerts "
                          f"({', '.join(args.alerts)}; labels {args.labels})",
                          results["real"]))
        if args.confusion:
            print(f"wrote {plot_confusion(results['real'], args.confusion, model.name)}")
    if args.write:
        out = Path(args.model) / "report" / "evaluation.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0


def _folds(allow_none: bool) -> Any:
    """``--folds`` type: at least 2 (k-fold), or 0 for no cross-validation."""
    def parse(text: str) -> int:
        value = non_negative_int(text)
        if value == 1 or (value == 0 and not allow_none):
            raise argparse.ArgumentTypeError(
                f"expected {'0 or ' if allow_none else ''}at least 2 folds, got {text!r}")
        return value
    return parse


def _real_options(p: argparse.ArgumentParser, command: str) -> None:
    """The options ``train-real`` and ``cv`` share (one training configuration).

    The defaults are the bundled model's recipe, chosen by object-grouped
    cross-validation (``bench/cv_sweep.py``; README "The bundled model").
    """
    p.add_argument("--real", required=True, metavar="NPZ",
                   help="real labelled alerts (made by stamp-train dataset)")
    sim = p.add_mutually_exclusive_group()
    sim.add_argument("--sim", metavar="NPZ", help="simulated examples to mix in")
    sim.add_argument("--simulate", type=non_negative_int, metavar="N", default=4000,
                     help="mix in N freshly simulated examples (balanced classes; 0: none)")
    p.add_argument("--sim-seed", type=int, default=1, help="simulator seed for --simulate")
    p.add_argument("--sim-per-epoch", type=non_negative_int, default=1000, metavar="N",
                   help="simulated examples drawn per epoch")
    p.add_argument("--sim-weight", type=non_negative_float, default=0.3, metavar="W",
                   help="loss weight of a simulated example relative to a real draw")
    p.add_argument("--first-detection-share", type=fraction, default=0.5, metavar="F",
                   help="share of real draws with a history shown as first detections "
                        "(ndethist 1)")
    p.add_argument("--init-from", metavar="DIR",
                   help="artifact to start from (weights and feature encoding)")
    p.add_argument("--model", choices=("rotinv", "baseline"), default="rotinv",
                   help="architecture when not starting from an artifact")
    p.add_argument("--metadata-branch", action=argparse.BooleanOptionalAction, default=True,
                   help="rotinv: dense layers of its own for the metadata features")
    p.add_argument("--feature-encoding", choices=FEATURE_ENCODINGS, default="log-indicators",
                   help="metadata encoding when not starting from an artifact")
    p.add_argument("--trunk-filters", type=_filters, default=None, metavar="A,B,C,D",
                   help="rotinv when not starting from an artifact: filters of the trunk's "
                        "four convolutions (default 16,32,64,128)")
    p.add_argument("--epochs", type=positive_int, default=45,
                   help="epochs (fixed; choose them by cv)")
    p.add_argument("--per-class", type=positive_int, default=None, metavar="N",
                   help="object draws per class per epoch (default: the largest class's "
                        "object count)")
    p.add_argument("--batch-size", type=positive_int, default=128,
                   help="examples per gradient step")
    p.add_argument("--learning-rate", type=positive_float, default=5e-4,
                   help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="draws, augmentation, initialization")
    p.add_argument("--fold-seed", type=int, default=0, help="assignment of objects to folds")
    if command == "cv":
        p.add_argument("--folds", type=_folds(False), default=5, help="number of folds (≥ 2)")
        p.add_argument("--report", metavar="DIR", help="write cv.json and cv_confusion.png "
                       "into this folder (created if needed)")
    else:
        p.add_argument("--folds", type=_folds(True), default=5,
                       help="cross-validate first and record it in the manifest (0: skip)")
        p.add_argument("--version", default="2", help="artifact version string")
        p.add_argument("--out", required=True, metavar="DIR",
                       help="artifact folder to write (created if needed, files in it "
                       "overwritten)")
    if command == "cv":
        p.set_defaults(version="cv")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stamp-train`` command line; returns the exit status."""
    quiet_tensorflow()  # before anything imports TensorFlow
    parser = argparse.ArgumentParser(
        prog="stamp-train", description="Make labelled datasets of ZTF alert stamps, train "
        "the classifier on them and evaluate model artifacts. Each command checks its "
        "files and numbers before TensorFlow is loaded and stops with one line saying "
        "what to fix (exit status 1; 2 for a malformed command line).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("convert", help="ALeRCE pickle → safe .npz (loads a pickle: runs its "
                       "code; needs --i-trust-this-pickle)",
                       description="Convert the ALeRCE stamp pickle (ALERCE_stamps_2020.pkl) "
                       "once to the .npz dataset format, which loads without running code. "
                       "Loading a pickle runs code from the file: this is the only command "
                       "that does, and only with --i-trust-this-pickle. Non-square stamps "
                       "are dropped and counted.")
    p.add_argument("pickle", help="ALERCE_stamps_2020.pkl or a file of the same layout")
    p.add_argument("--out", required=True, metavar="NPZ", help="output .npz")
    p.add_argument("--i-trust-this-pickle", action="store_true",
                   help="confirm that the pickle comes from a source you trust")
    p.set_defaults(run=_convert)
    p = sub.add_parser("dataset", help="real alerts + labels CSV → labelled .npz (the "
                       "worker's decoding and preprocessing)",
                       description="Read alert files, folders, tar archives and Parquet "
                       "tables, label them from a CSV (columns label and candid and/or "
                       "objectId; optional tier, source) and write a dataset for training "
                       "and evaluation. Alerts without a label or refused by the worker "
                       "are counted and can be listed with --refused.")
    p.add_argument("alerts", nargs="+", help="alert files, folders, archives or Parquet tables")
    p.add_argument("--labels", required=True, metavar="CSV", help="labels CSV")
    p.add_argument("--out", required=True, metavar="NPZ", help="output .npz")
    p.add_argument("--refused", metavar="CSV", help="write the refused alerts and reasons here")
    p.set_defaults(run=_dataset)
    p = sub.add_parser("simulate", help="write a simulated labelled dataset (.npz)",
                       description="Simulate labelled ZTF-like alerts (stamps and the "
                       "candidate fields the features use) and write them as a .npz "
                       "dataset, with the seed's class imbalance or balanced classes.")
    p.add_argument("--n", type=positive_int, default=30000, help="number of examples")
    p.add_argument("--seed", type=int, default=1, help="simulator seed")
    p.add_argument("--balanced", action="store_true",
                   help="equal classes instead of the seed's imbalance (SN ≈ 3 %%)")
    p.add_argument("--out", required=True, metavar="NPZ", help="output .npz")
    p.set_defaults(run=_simulate)
    p = sub.add_parser("train", help="train and export a model artifact",
                       description="Train a classifier on a .npz dataset (or on freshly "
                       "simulated alerts) with balanced validation and test sets and early "
                       "stopping, and write the artifact folder the worker loads "
                       "(model.keras, manifest.json with the test metrics, report/ with "
                       "curves and confusion matrices).")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="NPZ", help=".npz dataset (from convert, dataset "
                        "or simulate)")
    source.add_argument("--simulate", type=positive_int, metavar="N",
                        help="train on N freshly simulated examples")
    p.add_argument("--sim-seed", type=int, default=1, help="simulator seed for --simulate")
    p.add_argument("--model", choices=("baseline", "rotinv"), default="rotinv",
                   help="architecture: the seed's baseline CNN, or the rotation-invariant "
                   "CNN with the metadata features")
    p.add_argument("--epochs", type=positive_int, default=100,
                   help="most epochs (early stopping usually ends sooner)")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="examples per gradient step")
    p.add_argument("--seed", type=int, default=0, help="split/augmentation/initialization")
    p.add_argument("--patience", type=positive_int, default=10,
                   help="epochs without a better validation accuracy before stopping")
    p.add_argument("--val-per-class", type=positive_int, default=100, metavar="N",
                   help="validation examples per class")
    p.add_argument("--test-per-class", type=positive_int, default=200, metavar="N",
                   help="test examples per class")
    p.add_argument("--crop-size", type=positive_int, default=21, metavar="PIXELS",
                   help="centre crop side of the stamps")
    p.add_argument("--entropy-beta", type=non_negative_float, default=0.0, metavar="BETA",
                   help="entropy regularization weight (0 = plain cross-entropy)")
    p.add_argument("--learning-rate", type=positive_float, default=1e-3,
                   help="Adam learning rate")
    p.add_argument("--feature-encoding", choices=FEATURE_ENCODINGS, default="standard",
                   help="metadata features: plain standardization (default), or log scales "
                        "for counts and distances plus missing-value indicators")
    p.add_argument("--metadata-branch", action="store_true",
                   help="rotinv: two dense layers of their own for the metadata features")
    p.add_argument("--trunk-filters", type=_filters, default=None, metavar="A,B,C,D",
                   help="rotinv: filters of the trunk's four convolutions (default "
                        "16,32,64,128; 8,16,32,64 needs 40%% of its CPU time per alert)")
    p.add_argument("--version", default="1", help="artifact version string")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="artifact folder to write (created if needed, files in it "
                   "overwritten)")
    p.set_defaults(run=_train)
    p = sub.add_parser("evaluate", help="evaluate an artifact (through the worker's "
                       "loading and preprocessing) on a dataset or the real labelled stamps",
                       description="Score a model artifact through the worker's own loading "
                       "and preprocessing: on real alerts with a labels CSV (per alert, per "
                       "object, per tier, with intervals; optionally a confusion PNG), on a "
                       ".npz dataset, and/or on the real ALeRCE-labelled stamps. Give at "
                       "least one of --alerts with --labels, --data, --alerce-test-stamps.")
    p.add_argument("--model", required=True, metavar="DIR", help="artifact folder")
    p.add_argument("--data", metavar="NPZ", help=".npz dataset")
    p.add_argument("--alerce-test-stamps", metavar="DIR",
                   help="folder labelled/alerce-test-stamps of the shared real data")
    p.add_argument("--alerts", nargs="+", metavar="PATH",
                   help="real alert files, folders, archives or Parquet tables (with --labels)")
    p.add_argument("--labels", metavar="CSV", help="labels CSV for --alerts (label, candid "
                   "and/or objectId, optional tier)")
    p.add_argument("--confusion", metavar="PNG", help="write the real alerts' confusion "
                   "matrices (per object and per alert) to this PNG")
    p.add_argument("--backend", choices=("auto", "onnx", "onnx-int8", "keras"),
                   default="auto", help="what runs the model, as the worker's "
                   "model_backend (auto: onnx when the artifact has model.onnx)")
    p.add_argument("--write", action="store_true",
                   help="also write report/evaluation.json into the artifact")
    p.set_defaults(run=_evaluate)
    p = sub.add_parser("export-onnx", help="add model.onnx to an artifact (served by the "
                       "worker without TensorFlow)",
                       description="Convert an artifact's model.keras to model.onnx, check "
                       "that its probabilities match Keras' within 1e-5 on a fixed batch, "
                       "and list it (file, SHA-256, opset, measured difference) in "
                       "manifest.json. train and train-real do this themselves; this "
                       "command converts artifacts made before.")
    p.add_argument("artifact", metavar="DIR", help="artifact folder")
    p.set_defaults(run=_export_onnx)
    p = sub.add_parser("quantize", help="add model.int8.onnx to an artifact (0.56-0.79 "
                       "of the model's CPU time; model_backend: onnx-int8)",
                       description="Write an 8-bit copy of the artifact's model.onnx "
                       "(the convolutions, dense layers, ReLUs and poolings), "
                       "calibrated on real stamps of half of the objects and "
                       "checked against the float model on the other half; list it and "
                       "what the check measured in manifest.json. Nothing is written when "
                       "the top classes agree on less than --min-agreement of the check "
                       "stamps.")
    p.add_argument("artifact", metavar="DIR", help="artifact folder with a model.onnx")
    stamps = p.add_mutually_exclusive_group(required=True)
    stamps.add_argument("--alerts", nargs="+", metavar="PATH",
                        help="real alert files, folders, archives or Parquet tables "
                        "(no labels needed)")
    stamps.add_argument("--data", metavar="NPZ",
                        help="or real stamps as a .npz from `stamp-train dataset` (its labels "
                        "are not used)")
    p.add_argument("--examples", type=positive_int, default=512, metavar="N",
                   help="most calibration stamps")
    p.add_argument("--min-agreement", type=fraction, default=0.99, metavar="F",
                   help="least share of check stamps whose top class must equal the float "
                   "model's")
    p.add_argument("--seed", type=int, default=0, help="object split and calibration draw")
    p.set_defaults(run=_quantize)
    __import__("training.sim_report").sim_report.register(sub)  # stamp-train sim-report
    for name, run, text in (
            ("train-real", _train_real, "train on real labelled alerts (object-balanced, "
             "rotations/flips), optionally from an artifact and mixed with simulated ones"),
            ("cv", _cv, "object-grouped k-fold cross-validation of a train-real "
             "configuration on real alerts (the model-selection number)")):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        _real_options(p, name)
        p.set_defaults(run=run)
    use_help_formatter(parser)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except DatasetError as exc:
        raise SystemExit(f"stamp-train {args.command}: {exc}") from exc


if __name__ == "__main__":
    sys.exit(main())
