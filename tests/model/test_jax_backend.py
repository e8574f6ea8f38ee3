"""``model_backend: jax``: Keras on JAX gives the ONNX and TensorFlow probabilities.

Keras picks its backend once per process, and this test process has Keras on TensorFlow,
so the JAX side runs in a fresh interpreter, as a worker process does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras  # this process: Keras on TensorFlow, the side the JAX output is compared to
import numpy as np
import pytest

import worker.model.artifact
from tests.conftest import shared_data_dir
from tests.model.test_artifact import _prepared
from worker.decode.packets import synthetic_alert
from worker.model.artifact import (
    GPU_INSTALL,
    MAX_MODEL_BATCH,
    ModelError,
    StampModel,
    bucket_size,
    jax_device,
    padded_sizes,
)
from worker.prepare.features import FEATURE_NAMES

jax = pytest.importorskip("jax", reason="jax is not installed (it is in the dev extra)")

# The JAX side: the bundled model with model_backend jax on a device (argv[3], default
# cpu) with a memory fraction (argv[4], default none), each input set of an .npz
# predicted in batches of 256 (the worker's default), plus what the padding and the
# process set-up did.
_JAX_SIDE = """
import json, os, sys
import numpy as np
from worker.model.artifact import StampModel

device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
fraction = float(sys.argv[4]) if len(sys.argv) > 4 else None
model = StampModel.load(backend="jax", device=device, memory_fraction=fraction)
model.warm_up(100)
import keras
inputs = np.load(sys.argv[1])
out = {}
for key in sorted({k.split(":")[0] for k in inputs.files}):
    images, features = inputs[key + ":images"], inputs[key + ":features"]
    out[key] = np.concatenate([model.predict(images[s:s + 256], features[s:s + 256])
                               for s in range(0, len(images), 256)])
images, features = inputs["built:images"], inputs["built:features"]
# Unpadded: the Keras model called on exactly the 37 rows (a shape of its own).
out["unpadded"] = np.asarray(model.keras_model.predict_on_batch(
    model.model_inputs(images[:37], features[:37])))
out["padded"] = model.predict(images[:37], features[:37])  # padded to 64
out["single"] = np.concatenate([model.predict(images[i:i + 1], features[i:i + 1])
                                for i in range(3)])  # each padded to 8
np.savez(sys.argv[2], **out)
import jax
stats = jax.devices()[0].memory_stats() or {}
print(json.dumps({
    "bytes_limit": stats.get("bytes_limit"),
    "XLA_PYTHON_CLIENT_MEM_FRACTION": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
    "keras": keras.backend.backend(), "backend": model.backend, "device": model.device,
    "KERAS_BACKEND": os.environ.get("KERAS_BACKEND"),
    "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
    "imported": sorted(m for m in ("tensorflow", "onnxruntime") if m in sys.modules)}))
"""


def _fresh_env(**extra: str) -> dict[str, str]:
    """This environment without the variables the worker must set itself."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("KERAS_BACKEND", "JAX_PLATFORMS", "XLA_PYTHON_CLIENT_PREALLOCATE",
                        "XLA_PYTHON_CLIENT_MEM_FRACTION")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Inputs, TensorFlow's and ONNX Runtime's probabilities, and the JAX side's."""
    tmp = tmp_path_factory.mktemp("jax")
    on_keras = StampModel.load(backend="keras")
    on_onnx = StampModel.load(backend="onnx")
    sets = {"built": _prepared([synthetic_alert(i, nan_pixels=7 * (i % 3)) for i in range(40)],
                               on_keras)}
    data = shared_data_dir()
    if data is not None:
        from worker.decode.sources import expand_paths, read_inputs

        payloads = [p.data for p in read_inputs(expand_paths([data]),
                                                on_error=lambda *_: None)]
        sets["real"] = _prepared(payloads, on_keras)
    np.savez(tmp / "in.npz", **{f"{key}:{part}": array for key, (images, features) in sets.items()
                                for part, array in (("images", images), ("features", features))})
    done = subprocess.run([sys.executable, "-c", _JAX_SIDE, str(tmp / "in.npz"),
                           str(tmp / "out.npz")], capture_output=True, text=True, timeout=600,
                          env=_fresh_env())
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no JAX or TensorFlow notices on the worker's stderr
    out = np.load(tmp / "out.npz")
    result: dict = {"info": json.loads(done.stdout), "jax": {k: out[k] for k in out.files}}
    for key, (images, features) in sets.items():
        result[key] = {
            "inputs": (images, features),
            "keras": np.concatenate([on_keras.predict(images[s:s + 256], features[s:s + 256])
                                     for s in range(0, len(images), 256)]),
            "onnx": on_onnx.predict(images, features)}
    return result


def test_the_worker_sets_up_keras_on_jax_itself(compared: dict) -> None:
    assert compared["info"] == {
        "keras": "jax", "backend": "jax", "device": "cpu", "KERAS_BACKEND": "jax",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "XLA_PYTHON_CLIENT_MEM_FRACTION": None,
        "bytes_limit": None, "imported": []}


def test_jax_probabilities_equal_tensorflow_and_onnx_on_built_alerts(compared: dict) -> None:
    built = compared["built"]
    got = compared["jax"]["built"]
    assert got.shape == (40, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, built["keras"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got, built["onnx"], rtol=0, atol=1e-5)
    assert not np.allclose(got[0], got[1], rtol=0, atol=1e-7)  # the alerts differ


def test_padded_batches_give_the_rows_of_unpadded_ones(compared: dict) -> None:
    out = compared["jax"]
    assert out["unpadded"].shape == out["padded"].shape == (37, 5)
    np.testing.assert_allclose(out["padded"], out["unpadded"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["single"], out["built"][:3], rtol=0, atol=1e-6)


@pytest.mark.shared_data
def test_jax_probabilities_equal_tensorflow_and_onnx_on_every_real_alert(compared: dict
                                                                        ) -> None:
    if "real" not in compared:
        pytest.skip("real ZTF data not found: set STAMP_DATA_DIR or place it at "
                    "../shared/data")
    real = compared["real"]
    got = compared["jax"]["real"]
    assert len(got) > 400 and got.shape == real["keras"].shape
    np.testing.assert_allclose(got, real["keras"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got, real["onnx"], rtol=0, atol=1e-5)


def test_padded_shapes_stop_at_the_largest_model_call() -> None:
    assert padded_sizes(1) == [8]
    assert padded_sizes(100) == [8, 16, 32, 64, 128]
    assert padded_sizes(1_000_000) == [8 << k for k in range(10)]
    assert padded_sizes(1_000_000)[-1] == MAX_MODEL_BATCH == bucket_size(MAX_MODEL_BATCH)


def test_batches_past_the_largest_call_are_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    model = StampModel.load(backend="keras")
    rng = np.random.default_rng(3)
    images = rng.random((40, *model.image_shape)).astype(np.float32)
    features = rng.normal(size=(40, len(FEATURE_NAMES))).astype(np.float32)
    whole = model.predict(images, features)
    calls: list[int] = []
    runner = model._model
    original = runner.predict_on_batch

    def counted(inputs: dict) -> np.ndarray:
        calls.append(len(inputs["image"]))
        return original(inputs)

    monkeypatch.setattr(runner, "predict_on_batch", counted)
    monkeypatch.setattr(model, "max_rows", 16)
    cut = model.predict(images, features)
    assert calls == [16, 16, 8]  # 16 + 16 + 8 rows, the last padded from 8 to 8
    np.testing.assert_allclose(cut, whole, rtol=0, atol=1e-6)


def test_jax_is_refused_where_keras_runs_on_another_backend() -> None:
    assert keras.backend.backend() == "tensorflow"
    before = os.environ.get("KERAS_BACKEND")
    with pytest.raises(ModelError, match="already imported on the tensorflow backend"):
        StampModel.load(backend="jax")
    assert os.environ.get("KERAS_BACKEND") == before  # nothing changed on the way out


@pytest.fixture(scope="module")
def jax_gpu() -> str:
    """The kind of GPU JAX can use here ('' if none), asked in a fresh process so that
    this one does not start JAX's GPU backend (and reserve the GPU's memory)."""
    done = subprocess.run(
        [sys.executable, "-c", "import jax\n"
         "try:\n    print(jax.devices('gpu')[0].device_kind)\n"
         "except RuntimeError:\n    print()\n"],
        capture_output=True, text=True, timeout=300,
        env=_fresh_env(XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def without_gpu(jax_gpu: str) -> None:
    if jax_gpu:
        pytest.skip(f"JAX sees a GPU here ({jax_gpu}): nothing to refuse")


def test_jax_on_a_gpu_gives_the_cpu_probabilities(jax_gpu: str, compared: dict,
                                                  tmp_path: Path) -> None:
    """Where a GPU is usable (pip install '.[gpu]'): the same probabilities, and the
    memory fraction caps what JAX's allocator may take."""
    if not jax_gpu:
        pytest.skip("no GPU that JAX can use here (an NVIDIA GPU and pip install "
                    "'.[gpu]'): the GPU side is tested where there is one")
    images, features = compared["built"]["inputs"]
    np.savez(tmp_path / "in.npz", **{"built:images": images, "built:features": features})
    done = subprocess.run([sys.executable, "-c", _JAX_SIDE, str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz"), "gpu", "0.2"], capture_output=True,
                          text=True, timeout=600, env=_fresh_env())
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["device"] == f"gpu ({jax_gpu})" and info["backend"] == "jax"
    assert (info["XLA_PYTHON_CLIENT_PREALLOCATE"], info["XLA_PYTHON_CLIENT_MEM_FRACTION"]) == (
        "true", "0.2")
    got = np.load(tmp_path / "out.npz")["built"]
    np.testing.assert_allclose(got, compared["built"]["onnx"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got, compared["jax"]["built"], rtol=0, atol=1e-5)
    total = subprocess.run(["nvidia-smi", "--query-gpu=memory.total",
                            "--format=csv,noheader,nounits", "--id=0"],
                           capture_output=True, text=True, timeout=60)
    if total.returncode == 0 and info["bytes_limit"]:
        share = info["bytes_limit"] / (float(total.stdout.split()[0]) * 2**20)
        assert 0.05 < share <= 0.21, share  # 0.2 of the GPU, not JAX's default 0.75


@pytest.mark.usefixtures("without_gpu")
def test_gpu_without_one_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    with pytest.raises(ModelError, match="JAX_PLATFORMS=cpu in the environment hides the GPU"):
        jax_device("gpu")
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.setattr(worker.model.artifact, "_jax_cuda_plugin", lambda: False)
    with pytest.raises(ModelError, match=r"model device cuda: JAX has no CUDA plugin: "
                       + GPU_INSTALL.replace("[", r"\[").replace("]", r"\]")):
        jax_device("cuda")
    monkeypatch.setattr(worker.model.artifact, "_jax_cuda_plugin", lambda: True)
    with pytest.raises(ModelError, match="finds no usable GPU; check the NVIDIA driver"):
        jax_device("gpu")


@pytest.fixture(scope="module")
def alert_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("alerts")
    for i in range(12):
        (folder / f"a{i}.avro").write_bytes(synthetic_alert(100 + i))
    return folder


@pytest.mark.usefixtures("without_gpu")
def test_classify_on_a_gpu_that_is_absent_is_one_line(alert_files: Path) -> None:
    if worker.model.artifact._jax_cuda_plugin():
        pytest.skip("JAX's CUDA plugin is installed here: the message differs")
    done = subprocess.run([sys.executable, "-m", "worker.cli", "classify", str(alert_files),
                           "--backend", "jax", "--device", "gpu"], capture_output=True,
                          text=True, timeout=300, env=_fresh_env())
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"stamp-worker classify: model device gpu: JAX has no CUDA plugin: "
                           f"{GPU_INSTALL} (jax[cuda12]), or use model_device cpu\n")


def test_classify_with_the_jax_backend_labels_as_onnx_does(alert_files: Path) -> None:
    rows = {}
    for backend in ("jax", "onnx"):
        done = subprocess.run([sys.executable, "-m", "worker.cli", "classify",
                               str(alert_files), "--backend", backend, "--device", "auto",
                               "-q"], capture_output=True, text=True, timeout=300,
                              env=_fresh_env())
        assert done.returncode == 0, done.stderr
        assert done.stderr.startswith("12 inputs → 12 labels"), done.stderr
        rows[backend] = {r["candid"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert rows["jax"].keys() == rows["onnx"].keys() and len(rows["jax"]) == 12
    for candid, record in rows["jax"].items():
        expected = rows["onnx"][candid]
        assert record["top_class"] == expected["top_class"]
        for name, p in record["probabilities"].items():
            assert p == pytest.approx(expected["probabilities"][name], abs=1e-5)


def test_the_gpu_benchmark_runs_and_names_the_machine() -> None:
    """bench/bench_gpu.py, prepared for a GPU machine, runs here on the CPU (tiny batch)."""
    script = Path(__file__).resolve().parents[2] / "bench" / "bench_gpu.py"
    done = subprocess.run([sys.executable, str(script), "--device", "cpu", "--batch", "8",
                           "--repeat", "1", "--min-seconds", "0"], capture_output=True,
                          text=True, timeout=300, env=_fresh_env())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("CPU: ") and lines[1].startswith("GPU: ")
    rows = [line.split("|")[1:-1] for line in lines if line.startswith(("| jax", "| onnx"))]
    assert [[cell.strip() for cell in row[:3]] for row in rows] == [
        ["jax", "cpu", "8"], ["onnx", "cpu", "8"]]
    assert all(float(row[4].replace(",", "")) > 0 for row in rows)  # stamps/s
