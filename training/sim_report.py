"""Simulator versus reality: where simulated alerts differ from real labelled ones.

``stamp-train sim-report`` compares, class by class, real labelled alerts with ``N``
simulated alerts per class on what a model sees:

* the 26 raw metadata features (:data:`worker.prepare.features.FEATURE_NAMES`, from
  :func:`worker.prepare.features.metadata_features`), missing values included;
* pixel statistics of the preprocessed 21×21 crops (:func:`worker.prepare.stamps.preprocess_batch`,
  the worker's own preprocessing: min-max normalized to [0, 1]), per channel science /
  template / difference: the centre pixel, the median (where the background lands after
  the normalization), the share of pixels above 0.5, the standard deviation and the
  distance of the brightest pixel from the centre [pixels].

The distance of each (class, feature) pair is the two-sample Kolmogorov–Smirnov statistic
(largest gap between the two cumulative distributions, 0 to 1) with missing values
counted as a value below all others: a feature missing in 30 % of the real alerts and
never in the simulated ones is at least 0.3 apart even where the present values agree.
Real alerts are **weighted per object**: each alert of an object that has k alerts of
that class weighs 1/k, so an object seen 34 times (SN 2021rhu) counts once.

The report (``--out``) holds ``sim_report.md`` and ``sim_report.json`` (every pair,
worst first, with the real and simulated medians and missing shares),
``worst_features.png`` (histogram overlays of the 12 worst pairs) and
``mean_stamps.png`` (mean preprocessed crop per class, real beside simulated).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data import CLASS_NAMES, StampDataset
from worker.prepare.features import FEATURE_NAMES, metadata_features
from worker.prepare.stamps import CHANNELS, preprocess_batch

CROP_SIZE = 21                          # the worker's default crop [pixels]
PIXEL_STATISTICS: tuple[str, ...] = ("centre", "median", "frac>0.5", "std", "peak offset")
_SHORT = {"science": "sci", "template": "tmpl", "difference": "diff"}
PIXEL_FEATURES: tuple[str, ...] = tuple(f"{_SHORT[channel]} {stat}" for channel in CHANNELS
                                        for stat in PIXEL_STATISTICS)
WORST_PLOTTED = 12


@dataclass(frozen=True)
class Sample:
    """Labelled alerts reduced to what the comparison needs.

    Attributes
    ----------
    labels : numpy.ndarray
        (N,) int64 class index into :data:`CLASS_NAMES`.
    features : numpy.ndarray
        (N, 26) float32 raw metadata features, NaN where missing.
    crops : numpy.ndarray
        (N, 21, 21, 3) float32 preprocessed crops in [0, 1].
    weights : numpy.ndarray
        (N,) float64 weight of each alert (1 / alerts of its object in its class).
    """

    labels: np.ndarray
    features: np.ndarray
    crops: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Distance:
    """One row of the table: how far apart one feature is in one class.

    Attributes
    ----------
    label : str
        The class.
    feature : str
        A metadata feature name or a pixel statistic (``"diff centre"``, ...).
    ks : float
        Kolmogorov–Smirnov statistic, 0 (same distribution) to 1 (disjoint).
    ks_chance : float
        The distance two samples of these sizes from one distribution exceed 5 % of the
        time (1.358 √(1/n + 1/m), with n, m the summed weights: objects for real alerts
        weighted per object).  Alerts of one exposure are not independent either, so
        below this a gap is noise, and only well above it a finding.
    real_median, sim_median : float
        Median of the present values (weighted for real alerts), in the feature's
        units; NaN where none is present.
    real_missing, sim_missing : float
        Share of alerts (weighted for real ones) where the feature is missing.
    n_real, n_sim : int
        Alerts compared.
    """

    label: str
    feature: str
    ks: float
    ks_chance: float
    real_median: float
    sim_median: float
    real_missing: float
    sim_missing: float
    n_real: int
    n_sim: int


# ---------------------------------------------------------------------- statistics

def weighted_ks(a: np.ndarray, b: np.ndarray, wa: np.ndarray | None = None,
                wb: np.ndarray | None = None) -> float:
    """Two-sample Kolmogorov–Smirnov statistic with per-value weights, NaN included.

    Parameters
    ----------
    a, b : numpy.ndarray
        (n,) and (m,) values, NaN for missing (treated as below every present value).
    wa, wb : numpy.ndarray, optional
        Non-negative weights (default: equal); each sample's weights are normalized.

    Returns
    -------
    float
        max |F_a(x) − F_b(x)| over x, 0 to 1; equal to
        ``scipy.stats.ks_2samp(a, b).statistic`` for equal weights and no NaN.
    """
    a = np.where(np.isnan(a), -np.inf, np.asarray(a, np.float64))
    b = np.where(np.isnan(b), -np.inf, np.asarray(b, np.float64))
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    grid = np.unique(np.concatenate([a, b]))
    cdfs = []
    for values, weights in ((a, wa), (b, wb)):
        w = np.ones(len(values)) if weights is None else np.asarray(weights, np.float64)
        order = np.argsort(values, kind="stable")
        cumulative = np.concatenate([[0.0], np.cumsum(w[order])]) / w.sum()
        cdfs.append(cumulative[np.searchsorted(values[order], grid, side="right")])
    return float(np.max(np.abs(cdfs[0] - cdfs[1])))


def weighted_median(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Median of the present (non-NaN) values, each counting its weight; NaN if none."""
    values = np.asarray(values, np.float64)
    w = np.ones(len(values)) if weights is None else np.asarray(weights, np.float64)
    ok = ~np.isnan(values)
    if not ok.any():
        return float("nan")
    order = np.argsort(values[ok], kind="stable")
    v, cw = values[ok][order], np.cumsum(w[ok][order])
    return float(v[np.searchsorted(cw, 0.5 * cw[-1])])


def _missing(values: np.ndarray, weights: np.ndarray | None) -> float:
    w = np.ones(len(values)) if weights is None else weights
    return float((w * np.isnan(values)).sum() / w.sum()) if len(values) else float("nan")


def pixel_statistics(crops: np.ndarray) -> dict[str, np.ndarray]:
    """What a CNN sees in the preprocessed crops, a few numbers per channel.

    Parameters
    ----------
    crops : numpy.ndarray
        (N, s, s, 3) preprocessed crops in [0, 1] (min-max normalized per stamp).

    Returns
    -------
    dict[str, numpy.ndarray]
        (N,) arrays named as :data:`PIXEL_FEATURES`: centre pixel value, median,
        share of pixels above 0.5, standard deviation (all in normalized units) and
        the distance of the brightest pixel from the centre [pixels].
    """
    n, size = crops.shape[:2]
    c = size // 2
    flat = crops.reshape(n, size * size, 3).astype(np.float64)
    peak = flat.argmax(axis=1)                                     # (N, 3) flat index
    offset = np.hypot(peak // size - c, peak % size - c)
    out: dict[str, np.ndarray] = {}
    for k, channel in enumerate(CHANNELS):
        stats = {"centre": flat[:, c * size + c, k], "median": np.median(flat[:, :, k], axis=1),
                 "frac>0.5": (flat[:, :, k] > 0.5).mean(axis=1), "std": flat[:, :, k].std(axis=1),
                 "peak offset": offset[:, k]}
        out.update({f"{_SHORT[channel]} {name}": stats[name] for name in PIXEL_STATISTICS})
    return out


def feature_values(sample: Sample) -> dict[str, np.ndarray]:
    """The 26 metadata features and the pixel statistics of a sample, (N,) each."""
    values = {name: sample.features[:, j].astype(np.float64)
              for j, name in enumerate(FEATURE_NAMES)}
    values.update(pixel_statistics(sample.crops))
    return values


def distance_table(real: Mapping[str, np.ndarray], real_labels: np.ndarray,
                   sim: Mapping[str, np.ndarray], sim_labels: np.ndarray,
                   real_weights: np.ndarray | None = None,
                   sim_weights: np.ndarray | None = None,
                   class_names: Sequence[str] = CLASS_NAMES) -> list[Distance]:
    """Per class and feature, the KS distance between real and simulated values.

    Parameters
    ----------
    real, sim : Mapping[str, numpy.ndarray]
        Feature name → (N,) values (NaN = missing) of the real / simulated alerts; the
        features of ``real`` that ``sim`` also has are compared.
    real_labels, sim_labels : numpy.ndarray
        (N,) class indices into ``class_names``.
    real_weights, sim_weights : numpy.ndarray, optional
        (N,) weights (e.g. 1 / alerts per object); default equal.
    class_names : sequence of str
        Class names by index.

    Returns
    -------
    list[Distance]
        One row per (class present in both, feature), largest distance first (ties by
        class and feature name, so the order is reproducible).
    """
    rows = []
    for k, label in enumerate(class_names):
        r, s = np.asarray(real_labels) == k, np.asarray(sim_labels) == k
        if not r.any() or not s.any():
            continue
        wr = None if real_weights is None else np.asarray(real_weights, np.float64)[r]
        ws = None if sim_weights is None else np.asarray(sim_weights, np.float64)[s]
        n_r = r.sum() if wr is None else wr.sum()
        n_s = s.sum() if ws is None else ws.sum()
        chance = float(1.358 * np.sqrt(1.0 / n_r + 1.0 / n_s))
        for name, values in real.items():
            if name not in sim:
                continue
            a = np.asarray(values, np.float64)[r]
            b = np.asarray(sim[name], np.float64)[s]
            rows.append(Distance(label, name, weighted_ks(a, b, wr, ws), chance,
                                 weighted_median(a, wr), weighted_median(b, ws),
                                 _missing(a, wr), _missing(b, ws), int(r.sum()), int(s.sum())))
    return sorted(rows, key=lambda d: (-d.ks, d.label, d.feature))


# ---------------------------------------------------------------------- samples

def object_weights(labels: np.ndarray, object_ids: np.ndarray) -> np.ndarray:
    """1 / (alerts of the same object and class): each object counts once per class."""
    keys = [f"{label}\x00{obj}" for label, obj in zip(labels.tolist(), object_ids.tolist(),
                                                       strict=True)]
    _, inverse, counts = np.unique(np.array(keys), return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


def _preprocess(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The worker's preprocessing of (N, 63, 63, 3) stamps; also which alerts it accepts."""
    crops, errors = preprocess_batch([(im[..., 0], im[..., 1], im[..., 2]) for im in images],
                                     CROP_SIZE)
    return crops, np.array([e is None for e in errors], bool)


def sample_from_dataset(dataset: StampDataset) -> Sample:
    """A :class:`Sample` of a real dataset, weighted per object (see :func:`object_weights`)."""
    crops, ok = _preprocess(dataset.images)
    weights = object_weights(dataset.labels, dataset.object_ids)
    return Sample(dataset.labels[ok], dataset.features[ok], crops[ok], weights[ok])


def simulated_sample(n_per_class: int, seed: int) -> Sample:
    """``n_per_class`` simulated alerts of each class (balanced), each weighing 1."""
    from training.simulator import simulate

    sim = simulate(n_per_class * len(CLASS_NAMES), seed, class_fractions=None)
    features = np.stack([metadata_features(c) for c in sim.candidates]).astype(np.float32)
    crops, ok = _preprocess(sim.images)
    return Sample(sim.labels[ok], features[ok], crops[ok], np.ones(int(ok.sum())))


def _labelled_files(labels_csv: Path) -> list[Path]:
    """The alert files the labelled rows of a labels CSV name (``file`` column).

    Paths are relative to the CSV's folder (``../`` rows reach sibling folders); a file
    named by several rows is read once.
    """
    with open(labels_csv, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if "file" not in (reader.fieldnames or []):
            raise SystemExit(f"stamp-train sim-report: {labels_csv} has no 'file' column: "
                             "give the alerts' .npz from `stamp-train dataset` instead")
        names = {row["file"] for row in reader if (row.get("label") or "").strip()}
    files = sorted({(labels_csv.parent / name).resolve() for name in names})
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"stamp-train sim-report: {len(missing)} alert file(s) named in "
                         f"{labels_csv} not found, e.g. {missing[0]}")
    return files


def load_real(path: str | Path) -> StampDataset:
    """Real labelled alerts from a ``stamp-train dataset`` .npz or from a labels CSV.

    A labels CSV (see :mod:`training.realdata`) is read with the alert files its
    ``file`` column names, through the worker's decoding; an alert whose candid is in
    several files is taken once.
    """
    from training.data import load_npz

    path = Path(path)
    if path.suffix == ".npz":
        return load_npz(path)
    from training.realdata import dataset_from_alerts

    return dataset_from_alerts(_labelled_files(path), path)


# ---------------------------------------------------------------------- report

def _fmt(value: float) -> str:
    if np.isnan(value):
        return "–"
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.6g}"


def format_table(rows: Sequence[Distance], limit: int | None = None) -> str:
    """The distance table as markdown, worst first (``limit`` rows, default all)."""
    lines = ["| # | class | feature | KS | chance | real median | sim median | real missing "
             "| sim missing |", "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for i, d in enumerate(rows[:limit], start=1):
        lines.append(f"| {i} | {d.label} | {d.feature} | {d.ks:.3f} | {d.ks_chance:.2f} "
                     f"| {_fmt(d.real_median)} "
                     f"| {_fmt(d.sim_median)} | {d.real_missing:.0%} | {d.sim_missing:.0%} |")
    return "\n".join(lines)


def _plot_worst(rows: Sequence[Distance], real: Sample, sim: Sample,
                real_values: Mapping[str, np.ndarray], sim_values: Mapping[str, np.ndarray],
                path: Path) -> None:
    """Histogram overlays (real weighted per object) of the worst pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worst = list(rows[:WORST_PLOTTED])
    cols = 4
    nrows = max(1, -(-len(worst) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
    for ax in axes.flat[len(worst):]:
        ax.axis("off")
    for ax, d in zip(axes.flat, worst, strict=False):
        k = CLASS_NAMES.index(d.label)
        r, s = real.labels == k, sim.labels == k
        a, b = real_values[d.feature][r], sim_values[d.feature][s]
        wa = real.weights[r]
        present = np.concatenate([a[~np.isnan(a)], b[~np.isnan(b)]])
        if len(present):
            lo, hi = np.percentile(present, [0.5, 99.5])
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            bins = np.linspace(lo, hi, 31)
            ax.hist(np.clip(b[~np.isnan(b)], lo, hi), bins=bins, density=True, alpha=0.5,
                    color="tab:orange", label=f"simulated ({len(b)})")
            ax.hist(np.clip(a[~np.isnan(a)], lo, hi), bins=bins, weights=wa[~np.isnan(a)],
                    density=True, histtype="step", lw=2, color="tab:blue",
                    label=f"real ({len(a)} alerts, {wa.sum():.0f} objects)")
        missing = (f"\nmissing: real {d.real_missing:.0%}, sim {d.sim_missing:.0%}"
                   if d.real_missing or d.sim_missing else "")
        ax.set_title(f"{d.label}: {d.feature}  KS {d.ks:.2f}{missing}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_mean_stamps(real: Sample, sim: Sample, path: Path) -> None:
    """Mean preprocessed crop per class and channel, real (per-object weights) and simulated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(CLASS_NAMES), 6, figsize=(12, 2.1 * len(CLASS_NAMES)),
                             squeeze=False)
    for k, label in enumerate(CLASS_NAMES):
        for j, (name, sample) in enumerate((("real", real), ("sim", sim))):
            sel = sample.labels == k
            for c, channel in enumerate(CHANNELS):
                ax = axes[k, 3 * j + c]
                ax.set_xticks([])
                ax.set_yticks([])
                if sel.any():
                    mean = np.average(sample.crops[sel, :, :, c], axis=0,
                                      weights=sample.weights[sel])
                    ax.imshow(mean, vmin=0.0, vmax=1.0, cmap="viridis")
                ax.set_title(f"{label} {name} {_SHORT[channel]} ({int(sel.sum())})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(rows: Sequence[Distance], real: Sample, sim: Sample, out: str | Path,
                 meta: Mapping[str, Any]) -> dict[str, Path]:
    """Write the table (markdown, JSON) and the plots into ``out``.

    Returns
    -------
    dict[str, Path]
        ``markdown``, ``json``, ``worst``, ``mean_stamps`` → the files written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "sim_report.md", "json": out / "sim_report.json",
             "worst": out / "worst_features.png", "mean_stamps": out / "mean_stamps.png"}
    counts = ", ".join(f"{name} {int((real.labels == k).sum())} alerts / "
                       f"{real.weights[real.labels == k].sum():.0f} objects"
                       for k, name in enumerate(CLASS_NAMES))
    header = [
        "# Simulator versus reality",
        "",
        f"Real: {meta.get('real')} ({counts}). Simulated: {meta.get('n_per_class')} per "
        f"class, seed {meta.get('seed')}.",
        "",
        "Distance: two-sample Kolmogorov–Smirnov statistic (0 same, 1 disjoint), missing "
        "values counted below all others. Real alerts are weighted per object (each alert "
        "1 / alerts of its object in its class); medians are of the present values, "
        "weighted likewise. Chance: the KS that two samples of these sizes (objects) from "
        "one distribution exceed 5 % of the time. Pixel statistics are of the worker's "
        "preprocessed 21×21 crops (min-max normalized to [0, 1]); peak offset in pixels.",
        "",
        "![worst pairs](worst_features.png)",
        "",
        "![mean stamps](mean_stamps.png)",
        "",
    ]
    paths["markdown"].write_text("\n".join(header) + format_table(rows) + "\n",
                                 encoding="utf-8")
    document = {"meta": dict(meta), "weighting": "per object (1 / alerts of the object)",
                "rows": [{k: (None if isinstance(v, float) and np.isnan(v) else v)
                          for k, v in asdict(d).items()} for d in rows]}
    paths["json"].write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    _plot_worst(rows, real, sim, feature_values(real), feature_values(sim), paths["worst"])
    _plot_mean_stamps(real, sim, paths["mean_stamps"])
    return paths


def simulator_vs_reality(real: StampDataset, n_per_class: int = 1000, seed: int = 1
                         ) -> tuple[list[Distance], Sample, Sample]:
    """Compare real labelled alerts with ``n_per_class`` simulated alerts of each class.

    Parameters
    ----------
    real : StampDataset
        Real labelled alerts: full-size stamps, raw features, object ids.
    n_per_class : int
        Simulated alerts per class.
    seed : int
        Simulator seed (the same seed gives the same table).

    Returns
    -------
    (list[Distance], Sample, Sample)
        The distance table (worst first) and the real and simulated samples.
    """
    real_sample = sample_from_dataset(real)
    sim_sample = simulated_sample(n_per_class, seed)
    rows = distance_table(feature_values(real_sample), real_sample.labels,
                          feature_values(sim_sample), sim_sample.labels,
                          real_sample.weights, sim_sample.weights)
    return rows, real_sample, sim_sample


# ---------------------------------------------------------------------- command line

def _default_data_dir() -> str:
    return os.environ.get("STAMP_DATA_DIR") or str(Path("..") / "shared" / "data")


def _run(args: argparse.Namespace) -> int:
    # Every argument and file is checked before the data is read.
    if args.n_per_class < 1:
        raise SystemExit(f"stamp-train sim-report: --n-per-class must be ≥ 1, got "
                         f"{args.n_per_class}")
    real = Path(args.real) if args.real else Path(args.data_dir) / "real-alerts" / "labels.csv"
    if not real.is_file():
        raise SystemExit(f"stamp-train sim-report: {real}: no such file (give --real: the "
                         "labels CSV or a `stamp-train dataset` .npz, or --data-dir)")
    if real.suffix not in (".npz", ".csv"):
        raise SystemExit(f"stamp-train sim-report: {real}: expected a labels .csv or a "
                         "dataset .npz")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"stamp-train sim-report: --out {out} is a file, not a folder")
    dataset = load_real(real)
    if len(dataset) == 0:
        raise SystemExit(f"stamp-train sim-report: no labelled alert in {real}")
    rows, real_sample, sim_sample = simulator_vs_reality(dataset, args.n_per_class, args.seed)
    meta = {"real": str(real), "n_per_class": args.n_per_class, "seed": args.seed}
    paths = write_report(rows, real_sample, sim_sample, out, meta)
    print(f"real: {real}: {len(real_sample)} alerts; simulated: {len(sim_sample)} "
          f"(seed {args.seed}); {len(rows)} class/feature pairs, worst first:")
    print(format_table(rows, args.top))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``sim-report`` subcommand to ``stamp-train``'s subparsers."""
    p = subparsers.add_parser(
        "sim-report", help="where simulated alerts differ from real labelled ones "
        "(per class and feature: KS distance, medians, plots)",
        description="Compare real labelled alerts with simulated ones, class by class, on "
        "the 26 metadata features and pixel statistics of the preprocessed crops; write a "
        "table sorted by distance (markdown, JSON) and plots.")
    p.add_argument("--real", help="labels CSV (alerts read from its 'file' column) or a "
                   "`stamp-train dataset` .npz (default: DATA_DIR/real-alerts/labels.csv)")
    p.add_argument("--data-dir", default=_default_data_dir(),
                   help="shared data folder (default $STAMP_DATA_DIR or ../shared/data)")
    p.add_argument("--n-per-class", type=int, default=1000,
                   help="simulated alerts per class (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="simulator seed")
    p.add_argument("--top", type=int, default=15, help="table rows printed (all are written)")
    p.add_argument("--out", required=True, help="report folder (created if needed)")
    p.set_defaults(run=_run)
