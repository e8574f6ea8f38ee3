"""worker.model.artifact: loading artifacts, refusing the ones the worker cannot honour."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from training.models import build_baseline, build_rotinv
from worker.model.artifact import CLASS_NAMES, ModelError, StampModel, default_model_path
from worker.prepare.features import FEATURE_NAMES
from worker.prepare.stamps import PreprocessConfig


def _artifact(path: Path, model: keras.Model, inputs: list[str], **overrides) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save(path / "model.keras")
    manifest = {
        "format": 1, "name": model.name, "version": "test", "class_names": list(CLASS_NAMES),
        "preprocessing": PreprocessConfig().as_dict(), "inputs": inputs,
        "features": {"names": list(FEATURE_NAMES), "mean": [1.0] * len(FEATURE_NAMES),
                     "std": [2.0] * len(FEATURE_NAMES)},
    }
    manifest.update(overrides)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="module")
def rotinv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keras.utils.set_random_seed(0)
    return _artifact(tmp_path_factory.mktemp("m") / "rotinv", build_rotinv(),
                     ["image", "features"])


def test_load_and_predict(rotinv_dir: Path) -> None:
    model = StampModel.load(rotinv_dir)
    assert model.name == "rotinv" and model.image_shape == (21, 21, 3)
    rng = np.random.default_rng(0)
    images = rng.random((5, 21, 21, 3)).astype(np.float32)
    features = rng.normal(size=(5, len(FEATURE_NAMES))).astype(np.float32)
    features[0, 3] = np.nan
    probs = model.predict(images, features)
    assert probs.shape == (5, 5) and probs.dtype == np.float32 and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    # Features are standardized with the manifest's statistics before the model sees them.
    inputs = model.model_inputs(images, features)
    assert inputs["features"][1, 0] == pytest.approx((features[1, 0] - 1) / 2)
    assert inputs["features"][0, 3] == 0.0
    # A 90° rotation of the stamps does not change the rotation-invariant model's output.
    rotated = model.predict(np.rot90(images, 1, axes=(1, 2)).copy(), features)
    np.testing.assert_allclose(rotated, probs, atol=1e-6)
    assert model.predict(images[:0], features[:0]).shape == (0, 5)


def test_baseline_ignores_features(tmp_path: Path) -> None:
    model = StampModel.load(_artifact(tmp_path / "b", build_baseline(), ["image"]))
    images = np.random.default_rng(1).random((3, 21, 21, 3)).astype(np.float32)
    a = model.predict(images, np.zeros((3, len(FEATURE_NAMES)), np.float32))
    b = model.predict(images, np.ones((3, len(FEATURE_NAMES)), np.float32))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("change,message", [
    ({"preprocessing": {**PreprocessConfig().as_dict(), "version": "99"}},
     "preprocessing version 99"),
    ({"class_names": ["SN", "AGN", "VS", "asteroid", "bogus"]}, "classes"),
    ({"inputs": ["image"]}, "model inputs"),
    ({"inputs": ["pixels"]}, "unknown model inputs"),
    ({"features": {"names": ["x"], "mean": [0], "std": [1]}}, "metadata features"),
    ({"class_names": None}, "malformed"),
])
def test_refused_manifests(rotinv_dir: Path, tmp_path: Path, change: dict, message: str) -> None:
    target = tmp_path / "a"
    target.mkdir()
    (target / "model.keras").write_bytes((rotinv_dir / "model.keras").read_bytes())
    manifest = json.loads((rotinv_dir / "manifest.json").read_text())
    manifest.update(change)
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=message):
        StampModel.load(target)


def test_missing_or_broken_files(tmp_path: Path, rotinv_dir: Path) -> None:
    with pytest.raises(ModelError, match="missing"):
        StampModel.load(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    (broken / "model.keras").write_bytes(b"zip?")
    with pytest.raises(ModelError, match="not valid JSON"):
        StampModel.load(broken)
    (broken / "manifest.json").write_text((rotinv_dir / "manifest.json").read_text())
    with pytest.raises(ModelError, match="safe mode"):
        StampModel.load(broken)


def test_lambda_layers_are_refused(tmp_path: Path) -> None:
    image = keras.Input((21, 21, 3), name="image")
    x = keras.layers.Lambda(lambda t: t * 2)(image)
    x = keras.layers.Flatten()(x)
    model = keras.Model({"image": image}, keras.layers.Dense(5, activation="softmax")(x))
    with pytest.raises(ModelError, match="safe mode"):
        StampModel.load(_artifact(tmp_path / "l", model, ["image"]))


def test_bundled_default_model_loads() -> None:
    """The worker ships a usable model: it loads by default and classifies."""
    assert (default_model_path() / "manifest.json").is_file()
    model = StampModel.load()
    assert model.name == "rotinv" and model.version == "2"
    # Trained on the real labelled alerts, its manifest carries their grouped CV.
    assert model.manifest.raw["metrics"]["grouped_cv"]["per_object"]["n"] == 470
    from worker.decode.alerts import AlertDecoder
    from worker.decode.packets import synthetic_alert
    from worker.prepare.stamps import prepare_alert

    prepared = prepare_alert(AlertDecoder().decode(synthetic_alert(3))[0], model.preprocess)
    probs = model.predict(prepared.image[None], prepared.features[None])
    assert probs.shape == (1, 5) and abs(float(probs.sum()) - 1) < 1e-5


def test_same_artifact_on_the_jax_backend(rotinv_dir: Path, tmp_path: Path) -> None:
    """The artifact gives the same probabilities with KERAS_BACKEND=jax (a fresh process:
    the backend is chosen at import)."""
    pytest.importorskip("jax")
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(5)
    images = rng.random((6, 21, 21, 3)).astype(np.float32)
    features = rng.normal(size=(6, len(FEATURE_NAMES))).astype(np.float32)
    np.savez(tmp_path / "in.npz", images=images, features=features)
    script = (
        "import sys, numpy as np, keras\n"
        "from worker.model.artifact import StampModel\n"
        "assert keras.backend.backend() == 'jax'\n"
        "d = np.load(sys.argv[2])\n"
        "np.save(sys.argv[3], StampModel.load(sys.argv[1]).predict(d['images'], d['features']))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", script, str(rotinv_dir), str(tmp_path / "in.npz"),
                    str(tmp_path / "out.npy")], check=True, env=env, timeout=300)
    on_jax = np.load(tmp_path / "out.npy")
    on_tf = StampModel.load(rotinv_dir).predict(images, features)
    np.testing.assert_allclose(on_jax, on_tf, atol=2e-6)


def test_batches_are_padded_to_a_few_shapes(rotinv_dir: Path) -> None:
    from worker.model.artifact import bucket_size

    assert [bucket_size(n) for n in (1, 8, 9, 100, 500, 513)] == [8, 8, 16, 128, 512, 1024]
    model = StampModel.load(rotinv_dir)
    rng = np.random.default_rng(2)
    images = rng.random((11, 21, 21, 3)).astype(np.float32)
    features = rng.normal(size=(11, len(FEATURE_NAMES))).astype(np.float32)
    whole = model.predict(images, features)
    part = model.predict(images[:3], features[:3])
    assert whole.shape == (11, 5) and part.shape == (3, 5)
    np.testing.assert_allclose(part, whole[:3], atol=1e-6)  # padding does not leak in


# ------------------------------------------------------------------ the ONNX backend

def _onnx_artifact(source: Path, target: Path) -> Path:
    """A copy of an artifact with ``model.onnx`` added by the exporter."""
    import shutil

    from training.onnx_export import export_onnx

    shutil.copytree(source, target)
    export_onnx(target)
    return target


@pytest.fixture(scope="module")
def rotinv_onnx_dir(rotinv_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _onnx_artifact(rotinv_dir, tmp_path_factory.mktemp("onnx") / "rotinv")


def _prepared(alerts: list[bytes], model: StampModel) -> tuple[np.ndarray, np.ndarray]:
    """Images and raw features of alerts through the worker's decoding and preprocessing."""
    from worker.labeller import Labeller
    from worker.stream.output import Source

    work, _ = Labeller(model).decode_batch(
        [(payload, Source("t", 0, i, -1), 0, i) for i, payload in enumerate(alerts)])
    inputs = [w.prepared for w in work if w.prepared is not None]
    return (np.stack([p.image for p in inputs]), np.stack([p.features for p in inputs]))


def test_onnx_backend_matches_keras_on_built_alerts(rotinv_onnx_dir: Path) -> None:
    from worker.decode.packets import synthetic_alert

    on_keras = StampModel.load(rotinv_onnx_dir, backend="keras")
    on_onnx = StampModel.load(rotinv_onnx_dir)  # auto: the artifact lists model.onnx
    assert (on_keras.backend, on_onnx.backend) == ("keras", "onnx")
    images, features = _prepared(
        [synthetic_alert(i, nan_pixels=7 * (i % 3)) for i in range(40)], on_keras)
    assert len(images) == 40
    expected = on_keras.predict(images, features)
    got = on_onnx.predict(images, features)
    assert got.shape == (40, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # Any batch size, with no padding: one alert alone gives its row of the batch.
    np.testing.assert_allclose(on_onnx.predict(images[3:4], features[3:4]), got[3:4],
                               rtol=0, atol=1e-6)
    assert on_onnx.predict(images[:0], features[:0]).shape == (0, 5)
    on_onnx.warm_up(64)


def test_onnx_cpu_batches_are_cut_into_calls_of_a_few_rows(rotinv_onnx_dir: Path) -> None:
    """On the CPU a batch larger than ONNX_CPU_ROWS runs as several session calls (the
    memory arena keeps the largest call's activations) and gives the rows one call would."""
    from worker.decode.packets import synthetic_alert
    from worker.model.artifact import MAX_MODEL_BATCH, ONNX_CPU_ROWS

    model = StampModel.load(rotinv_onnx_dir, backend="onnx")
    runner = model._model
    assert model.max_rows == ONNX_CPU_ROWS
    images, features = _prepared([synthetic_alert(i) for i in range(10)], model)
    n = 2 * ONNX_CPU_ROWS + 7
    images, features = np.resize(images, (n, *images.shape[1:])), np.resize(
        features, (n, features.shape[1]))
    calls = []
    session_run = runner.session.run
    runner.session = type("Counting", (), {"run": lambda self, *a: calls.append(1) or
                                           session_run(*a)})()
    cut = model.predict(images, features)
    assert len(calls) == 3 and cut.shape == (n, 5)
    model.max_rows = MAX_MODEL_BATCH
    np.testing.assert_allclose(cut, model.predict(images, features), rtol=0, atol=1e-6)
    assert len(calls) == 4


@pytest.mark.shared_data
def test_bundled_model_onnx_matches_keras_on_every_real_alert(data_dir: Path) -> None:
    """Every alert of the shared real data that the worker labels gets the same
    probabilities (within 1e-5) from ONNX Runtime as from Keras."""
    from worker.decode.sources import expand_paths, read_inputs

    on_keras = StampModel.load(backend="keras")
    on_onnx = StampModel.load(backend="onnx")
    payloads = [p.data for p in read_inputs(expand_paths([data_dir]), on_error=lambda *_: None)]
    images, features = _prepared(payloads, on_keras)
    assert len(images) > 400  # the shared data's real alerts, less the refused ones
    for start in range(0, len(images), 256):  # the worker's batch size
        part = slice(start, start + 256)
        np.testing.assert_allclose(on_onnx.predict(images[part], features[part]),
                                   on_keras.predict(images[part], features[part]),
                                   rtol=0, atol=1e-5)


def test_onnx_backend_imports_neither_tensorflow_nor_keras() -> None:
    """A fresh process serving the bundled model with ONNX Runtime never loads TensorFlow
    (its memory and start-up time are what the backend saves)."""
    import subprocess
    import sys

    script = (
        "import sys, numpy as np\n"
        "from worker.labeller import Labeller\n"
        "from worker.model.artifact import StampModel\n"
        "from worker.decode.packets import synthetic_alert\n"
        "from worker.stream.output import Source\n"
        "model = StampModel.load(backend='onnx')\n"
        "labeller = Labeller(model)\n"
        "work, _ = labeller.decode(synthetic_alert(1), Source('t', 0, 0, -1), 0)\n"
        "outcome = labeller.infer(work)\n"
        "assert len(outcome) == 1, outcome\n"
        "print(model.backend, sorted(m for m in ('tensorflow', 'keras', 'jax')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "onnx []"
    assert done.stderr == ""  # no ONNX Runtime notices either


def test_onnx_backend_refusals(rotinv_dir: Path, rotinv_onnx_dir: Path, tmp_path: Path) -> None:
    import shutil

    assert StampModel.load(rotinv_dir).backend == "keras"  # auto without model.onnx
    with pytest.raises(ModelError, match="stamp-train export-onnx"):
        StampModel.load(rotinv_dir, backend="onnx")
    with pytest.raises(ModelError, match="unknown model backend 'torch'"):
        StampModel.load(rotinv_onnx_dir, backend="torch")
    with pytest.raises(ModelError, match="unknown model device 'tpu'"):
        StampModel.load(rotinv_onnx_dir, device="tpu")
    changed = shutil.copytree(rotinv_onnx_dir, tmp_path / "changed")
    with open(changed / "model.onnx", "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(ModelError, match="SHA-256 differs"):
        StampModel.load(changed)
    (changed / "model.onnx").unlink()
    with pytest.raises(ModelError, match="model.onnx: missing"):
        StampModel.load(changed)
    with pytest.raises(ModelError, match="backend='keras'"):
        StampModel.load(rotinv_onnx_dir).keras_model  # noqa: B018


def test_onnx_cuda_refused_without_onnxruntime_gpu(rotinv_onnx_dir: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        model = StampModel.load(rotinv_onnx_dir, device="cuda")
        assert model.backend == "onnx"
        return
    with pytest.raises(ModelError, match="onnxruntime-gpu"):
        StampModel.load(rotinv_onnx_dir, device="cuda")
    assert StampModel.load(rotinv_onnx_dir, device="auto").backend == "onnx"  # falls back


def test_threads_per_process_shares_the_cpus_between_processes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import worker.model.artifact as artifact
    from worker.model.artifact import threads_per_process

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(artifact, "cpu_limit", lambda: None)  # no container limit
    assert threads_per_process(0, 1) == 0  # ONNX Runtime's default
    assert [threads_per_process(0, n) for n in (2, 3, 8, 16)] == [4, 2, 1, 1]
    assert threads_per_process(3, 2) == 3  # a configured number is kept
    # A container limit caps them: ONNX Runtime alone would count the machine's 8 cores.
    assert threads_per_process(0, 1, limit=1.5) == 1
    assert threads_per_process(0, 1, limit=4.0) == 4
    assert [threads_per_process(0, n, limit=4.0) for n in (2, 3, 8)] == [2, 1, 1]
    assert threads_per_process(0, 1, limit=0.25) == 1
    assert threads_per_process(0, 1, limit=64.0) == 8  # never more than it may run on
    assert threads_per_process(2, 1, limit=1.0) == 2  # a configured number is kept
    monkeypatch.setattr(artifact, "cpu_limit", lambda: 2.0)
    assert threads_per_process(0, 1) == 2  # read from the cgroup by default


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2, docker run --cpus 1.5
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # v1
    ({"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
     0.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu.max": "garbage\n"}, None),  # unreadable: no limit assumed
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "0\n"}, None),
    ({}, None),  # no cgroup file system (not Linux, or not mounted)
])
def test_cpu_limit_reads_the_containers_cgroup(tmp_path: Path, files: dict[str, str],
                                               expected: float | None) -> None:
    from worker.model.artifact import cpu_limit

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_limit(tmp_path) == expected
