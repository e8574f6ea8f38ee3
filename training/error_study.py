"""Where a model's errors on the simulator's balanced test set come from, by scene truth.

A study, not part of the protocol.  It rebuilds the simulated data of a model trained
with ``--simulate`` (same count and seed, so the same balanced test set as its
manifest's metrics), keeps what the simulator knows about each scene (the host galaxy
and its magnitude, the source's signal-to-noise) and prints the test recall per kind of
scene, with where the misses go.  It shows whether the errors sit in scenes the stamps
and features can hardly tell apart (a hostless SN against an asteroid, an AGN without
a visible host against a variable star) or spread over all of them.

Run::

    .venv/bin/python -m training.error_study [--model DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from training.data import preprocess_images, split_balanced
from worker.model.artifact import CLASS_NAMES, StampModel
from worker.prepare.features import metadata_features

AGN, SN, VS = (CLASS_NAMES.index(c) for c in ("AGN", "SN", "VS"))

# (class, scene kind, selection on the truth and the crop's half side [pixels]).
Selector = Callable[[dict[str, np.ndarray], float], np.ndarray]
SCENES: tuple[tuple[int, str, Selector], ...] = (
    (SN, "no host galaxy", lambda t, half: np.isnan(t["host_mag"])),
    (SN, "host centre outside the crop", lambda t, half: t["host_offset"] > half),
    (SN, "host centre in the crop, fainter than 21 mag",
     lambda t, half: (t["host_offset"] <= half) & (t["host_mag"] >= 21)),
    (SN, "host centre in the crop, brighter than 21 mag",
     lambda t, half: (t["host_offset"] <= half) & (t["host_mag"] < 21)),
    (AGN, "no visible host", lambda t, half: np.isnan(t["host_mag"])),
    (AGN, "host galaxy", lambda t, half: ~np.isnan(t["host_mag"])),
    (VS, "within 20° of the Galactic plane", lambda t, half: np.abs(t["gal_lat"]) < 20),
    (VS, "farther from the plane (where the AGN are)",
     lambda t, half: np.abs(t["gal_lat"]) >= 20),
)
SNR_BINS = ((0, 10), (10, 30), (30, np.inf))


def _simulation_of(manifest: dict) -> tuple[int, int]:
    """(n, seed) of ``training.simulator.simulate(n=..., seed=...)`` in a manifest."""
    source = manifest.get("training", {}).get("data_source", "")
    match = re.fullmatch(r"training\.simulator\.simulate\(n=(\d+), seed=(\d+)\)", source)
    if match is None:
        raise SystemExit(f"the model was not trained on simulated data ({source!r}); "
                         "this study needs the simulator's truth")
    return int(match.group(1)), int(match.group(2))


def _row(name: str, truth_class: np.ndarray, predicted: np.ndarray) -> str:
    n = len(truth_class)
    if n == 0:
        return f"| {name} | 0 | – | – |"
    hits = predicted == truth_class
    misses = predicted[~hits]
    where = ", ".join(f"{CLASS_NAMES[c]} {int((misses == c).sum())}"
                      for c in np.unique(misses)) or "–"
    return f"| {name} | {n} | {hits.mean():.1%} | {where} |"


def main(argv: list[str] | None = None) -> int:
    """Print the recall per scene kind and per signal-to-noise bin (Markdown tables)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="artifact directory (default: the bundled model)")
    args = parser.parse_args(argv)
    from training.simulator import simulate_with_truth

    model = StampModel.load(args.model)
    training = model.manifest.raw["training"]
    n, seed = _simulation_of(model.manifest.raw)
    sim, truth = simulate_with_truth(n, seed)
    images, kept = preprocess_images(sim.images, model.preprocess.crop_size)
    labels = sim.labels[kept]
    features = np.stack([metadata_features(c) for c in sim.candidates]).astype(np.float32)[kept]
    truth = {k: np.asarray(v)[kept] for k, v in truth.items()}
    _, _, test = split_balanced(labels, training["val_per_class"], training["test_per_class"],
                                training["seed"])
    predicted = model.predict(images[test], features[test]).argmax(axis=1)
    y = labels[test]
    t = {k: v[test] for k, v in truth.items()}
    print(f"model {model.path} ({model.name} v{model.version}); simulate(n={n}, seed={seed}), "
          f"balanced test set of {len(test)}: accuracy {np.mean(predicted == y):.1%}\n")
    print("| scene | test alerts | recall | misses called |\n|---|---:|---:|---|")
    for cls, kind, select in SCENES:
        with np.errstate(invalid="ignore"):  # NaN offsets (no host) select nothing
            rows = (y == cls) & select(t, model.preprocess.crop_size / 2)
        print(_row(f"{CLASS_NAMES[cls]}: {kind}", y[rows], predicted[rows]))
    snr = 5.0 * t["measured_flux"] / t["f5"]
    print("\n| signal-to-noise of the detection | test alerts | recall | misses called |\n"
          "|---|---:|---:|---|")
    for lo, hi in SNR_BINS:
        rows = (snr >= lo) & (snr < hi)
        print(_row(f"{lo}–{hi}" if np.isfinite(hi) else f"≥ {lo}", y[rows], predicted[rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
