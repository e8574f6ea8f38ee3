"""How much the metadata features alone carry, and what late fusion with the CNN gives.

A study, not part of the protocol: on freshly simulated, balanced alerts (another seed
than the bundled model's), it trains small features-only MLPs — the worker's
standardization, and the ``log-indicators`` encoding
(:class:`worker.prepare.features.FeatureEncoding`:
log scales for the heavy-tailed counts and distances plus missing-value indicators) —
and compares them, on the same balanced test set, with
the bundled model and with the average of the bundled model's and the MLP's
probabilities.

Run::

    .venv/bin/python -m training.feature_study [--n 40000] [--seed 11]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from training.data import preprocess_images, split_balanced
from worker.model.artifact import CLASS_NAMES
from worker.prepare.features import FeatureEncoding


def _mlp_probabilities(x: np.ndarray, y: np.ndarray, split: tuple[np.ndarray, ...],
                       seed: int) -> np.ndarray:
    import keras

    train, val, test = split
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((x.shape[1],)),
                              keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dropout(0.2),
                              keras.layers.Dense(len(CLASS_NAMES), activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping("val_accuracy", patience=8, mode="max",
                                         restore_best_weights=True)
    model.fit(x[train], y[train], validation_data=(x[val], y[val]), epochs=40,
              batch_size=256, verbose=0, callbacks=[stop])
    return model.predict(x[test], verbose=0)


def main(argv: list[str] | None = None) -> int:
    """Run the study and print one Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=40_000, help="simulated alerts (balanced)")
    parser.add_argument("--seed", type=int, default=11, help="simulator seed")
    args = parser.parse_args(argv)
    from training.cli import simulated_dataset
    from worker.model.artifact import StampModel

    data = simulated_dataset(args.n, args.seed, balanced=True)
    y, features = data.labels, data.features
    split = split_balanced(y, 100, 200, 0)
    train, _, test = split
    rows = {
        "features only, the worker's standardization":
            _mlp_probabilities(FeatureEncoding.fit(features[train], log_scaled=(),
                                                   indicators=False).encode(features),
                               y, split, 0),
        "features only, log scales + missing indicators":
            _mlp_probabilities(FeatureEncoding.fit(features[train]).encode(features),
                               y, split, 0),
    }
    model = StampModel.load()
    images, _ = preprocess_images(data.images[test], model.preprocess.crop_size)
    rows["bundled rotinv model"] = model.predict(images, features[test])
    rows["average of the two rows above"] = (rows["bundled rotinv model"]
                                             + rows["features only, log scales + missing "
                                                    "indicators"]) / 2
    print(f"{args.n} simulated alerts (seed {args.seed}, balanced), test set of "
          f"{len(test)} (200 per class)\n")
    print("| classifier | accuracy | " + " | ".join(f"{c} recall" for c in CLASS_NAMES) + " |")
    print("|---|---:|" + "---:|" * len(CLASS_NAMES))
    for name, probs in rows.items():
        predicted = probs.argmax(axis=1)
        recall = [np.mean(predicted[y[test] == c] == c) for c in range(len(CLASS_NAMES))]
        print(f"| {name} | {np.mean(predicted == y[test]):.1%} | "
              + " | ".join(f"{r:.1%}" for r in recall) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
