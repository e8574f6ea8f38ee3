"""The model artifact: a ``.keras`` file plus ``manifest.json``, loaded and run by the worker.

An artifact directory holds::

    model.keras      the Keras 3 model (custom layers from worker.model.layers only)
    model.onnx       optional: the same model in ONNX (``stamp-train export-onnx``),
                     listed in the manifest's ``onnx`` entry with its SHA-256
    model.int8.onnx  optional: an 8-bit copy of model.onnx (``stamp-train quantize``),
                     listed in the ``onnx_int8`` entry with what its check measured
    manifest.json    name, version, class names in order, preprocessing version and
                     parameters, model inputs, feature names and their encoding
                     (standardization statistics, log scales, missing-value
                     indicators), training data fingerprint, test metrics

:meth:`StampModel.load` refuses an artifact whose preprocessing version this worker does
not implement, whose classes or features differ from the worker's, or that needs
unsafe deserialization (Keras safe mode stays on).  :meth:`StampModel.predict` takes the
preprocessed images and *raw* feature vectors, encodes the features as the manifest
says (:class:`worker.prepare.features.FeatureEncoding`) and returns probabilities.

Four backends run the model: ``keras`` (Keras 3, so the same artifact runs with
``KERAS_BACKEND`` set to ``tensorflow`` or ``jax``), ``jax`` (Keras on JAX, whatever
``KERAS_BACKEND`` says: on the CPU or, with JAX's CUDA plugin, on a GPU), ``onnx``
(ONNX Runtime on ``model.onnx``; neither TensorFlow nor Keras is imported, which saves
about 0.7 GB of resident memory and 3 s of start-up per process) and ``onnx-int8``
(ONNX Runtime on ``model.int8.onnx``, on the CPU: 0.56–0.79 of the model's CPU time, with
slightly different probabilities).  ``auto`` picks ``onnx`` when the artifact has a
listed ``model.onnx`` and ``keras`` otherwise.

Keras compiles the model again for every new batch shape (JAX's ``jit`` and
TensorFlow's tracing alike), so the Keras backends pad each batch to a power of two
(:func:`bucket_size`) and cut larger ones into calls of :data:`MAX_MODEL_BATCH` alerts:
at most ten shapes, which :meth:`StampModel.warm_up` compiles before the first alert.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from worker.prepare.features import FEATURE_NAMES, FeatureEncoding
from worker.prepare.stamps import PREPROCESSING_VERSION, PreprocessConfig

log = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("AGN", "SN", "VS", "asteroid", "bogus")
MANIFEST = "manifest.json"
MODEL_FILE = "model.keras"
ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model.int8.onnx"
MANIFEST_FORMAT = 1
#: Model backends: ``auto`` is ``onnx`` when the artifact lists a ``model.onnx``;
#: ``jax`` is Keras on JAX; ``onnx-int8`` is ONNX Runtime on the artifact's 8-bit copy
#: of its ONNX model (``stamp-train quantize``), on the CPU.
BACKENDS: tuple[str, ...] = ("auto", "onnx", "onnx-int8", "keras", "jax")
#: Where the ``onnx`` and ``jax`` backends run the model: ``cuda`` and ``gpu`` both name
#: an NVIDIA GPU (ONNX Runtime's CUDA provider, JAX's CUDA plugin); ``auto`` is the GPU
#: when one is usable, else the CPU.  Keras on TensorFlow (``keras``) runs on the CPU.
DEVICES: tuple[str, ...] = ("cpu", "gpu", "cuda", "auto")
#: Most alerts in one call of a Keras model: larger batches are cut into calls of this
#: size, so the padded shapes are 8, 16, ..., 4096 (ten compilations) whatever
#: ``batch.max_messages`` is, and a GPU gets batches large enough to keep it busy.
MAX_MODEL_BATCH = 4096
#: The install that gives JAX its CUDA 12 plugin (and ONNX Runtime its CUDA provider).
GPU_INSTALL = "pip install 'stamp-classifier-worker[gpu]'"
# JAX's CUDA 12 plugin: the modules of the jax-cuda12-plugin and jax-cuda12-pjrt wheels.
_JAX_CUDA_MODULES = ("jax_plugins.xla_cuda12", "jax_cuda12_plugin")


def bucket_size(n: int) -> int:
    """The padded batch size used for ``n`` examples: the next power of two (at least 8)."""
    return max(8, 1 << (max(n, 1) - 1).bit_length())


def padded_sizes(max_batch: int) -> list[int]:
    """The batch shapes a Keras model is called with for batches of up to ``max_batch``.

    Parameters
    ----------
    max_batch : int
        Largest batch passed to :meth:`StampModel.predict` [alerts].

    Returns
    -------
    list of int
        8, 16, ... up to ``bucket_size(max_batch)``, at most :data:`MAX_MODEL_BATCH`.
    """
    largest = bucket_size(min(max_batch, MAX_MODEL_BATCH))
    return [1 << k for k in range(3, largest.bit_length())]


def use_jax(device: str = "auto", memory_fraction: float | None = None) -> None:
    """Set this process up for Keras on JAX; call it before anything imports Keras.

    Keras picks its backend once, when it is first imported, from ``KERAS_BACKEND``;
    JAX reads its platform and GPU memory settings from the environment when it starts
    its backends.  Each worker process is a fresh interpreter (``processes: N`` starts
    ``python -m worker.cli run``), so setting them here, before the model is loaded,
    is in time.

    Parameters
    ----------
    device : {"cpu", "gpu", "cuda", "auto"}
        ``cpu`` sets ``JAX_PLATFORMS=cpu``, so that JAX does not touch a GPU at all;
        the others leave JAX free to find one (:func:`jax_device` checks it).
    memory_fraction : float, optional
        Share of the GPU's memory this process reserves at start (0 < x ≤ 1), as
        ``XLA_PYTHON_CLIENT_MEM_FRACTION`` with preallocation on.  None: no
        preallocation (``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless the environment
        says otherwise), so that several worker processes can share one GPU: JAX's
        default is to grab 75 % of it in the first process.

    Raises
    ------
    ModelError
        Keras is already imported in this process on another backend.
    """
    if "keras" in sys.modules:
        import keras

        current = keras.backend.backend()
        if current != "jax":
            raise ModelError(f"model backend jax: Keras is already imported on the {current} "
                             "backend in this process (one process has one Keras backend); "
                             "run it in a fresh process, or set KERAS_BACKEND=jax before "
                             "Keras is imported")
    os.environ["KERAS_BACKEND"] = "jax"
    if memory_fraction is None:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    else:
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "true"
        os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{memory_fraction:g}"
    if device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"


def _jax_cuda_plugin() -> bool:
    """Whether JAX's CUDA 12 plugin is installed (without importing it)."""
    for name in _JAX_CUDA_MODULES:
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except (ImportError, ValueError):  # a parent package that is missing
            continue
    return False


@contextlib.contextmanager
def _jax_start_quietly() -> Iterator[list[logging.LogRecord]]:
    """Start JAX's backends without its plugin notices and tracebacks on stderr.

    JAX's CUDA plugin, installed on a machine without a usable GPU, logs a traceback
    ("Jax plugin configuration error") and the CUDA stub's absl notices while JAX starts;
    here they are collected instead, for one line that says what is wrong.
    """
    from worker.commandline import native_notices_dropped

    jax_log = logging.getLogger("jax._src.xla_bridge")
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.WARNING)
    propagate = jax_log.propagate
    jax_log.addHandler(handler)
    jax_log.propagate = False
    try:
        with native_notices_dropped():
            yield records
    finally:
        jax_log.removeHandler(handler)
        jax_log.propagate = propagate


def _jax_reason(records: list[logging.LogRecord]) -> str:
    """JAX's last complaint while starting its backends, on one line ('' if none)."""
    for record in reversed(records):
        error = record.exc_info[1] if record.exc_info else None
        text = str(error) if error is not None else record.getMessage()
        text = " ".join(text.split())
        if text:
            return text[:200]
    return ""


def jax_device(device: str) -> Any:
    """The JAX device that runs the model for ``device`` (after :func:`use_jax`).

    Parameters
    ----------
    device : {"cpu", "gpu", "cuda", "auto"}
        ``gpu`` and ``cuda``: JAX's first GPU, or an error saying what to install;
        ``auto``: a GPU when JAX has one, else the CPU.

    Returns
    -------
    jax.Device
        Also made JAX's default device, where Keras creates the model's weights.

    Raises
    ------
    ModelError
        A GPU asked for and none usable, with what to install or check.
    """
    gpus: list[Any] = []
    with _jax_start_quietly() as records:
        import jax

        if device != "cpu":
            try:
                gpus = jax.devices("gpu")
            except RuntimeError:  # "Unknown backend: 'gpu' requested..."
                gpus = []
        jax.devices()  # every backend started here, under the filter
    reason = _jax_reason(records)
    if gpus:
        chosen = gpus[0]
        # Full float32 matrix products and convolutions: by default JAX uses TF32 (a
        # 10-bit mantissa) on Ampere and later GPUs, and the probabilities would no
        # longer be the CPU's to float32 precision.
        jax.config.update("jax_default_matmul_precision", "highest")
    elif device in ("gpu", "cuda"):
        platforms = os.environ.get("JAX_PLATFORMS", "")
        if platforms and not {"cuda", "gpu"} & set(platforms.split(",")):
            why = f"JAX_PLATFORMS={platforms} in the environment hides the GPU; unset it"
        elif not _jax_cuda_plugin():
            why = f"JAX has no CUDA plugin: {GPU_INSTALL} (jax[cuda12])"
        else:
            why = ("JAX's CUDA plugin is installed but finds no usable GPU"
                   + (f" ({reason})" if reason else "") + "; check the NVIDIA driver "
                   "(nvidia-smi)")
        raise ModelError(f"model device {device}: {why}, or use model_device cpu")
    else:
        if device == "auto" and _jax_cuda_plugin():
            log.warning("model device auto: JAX's CUDA plugin finds no usable GPU%s; the "
                        "model runs on the CPU", f" ({reason})" if reason else "")
        chosen = jax.devices("cpu")[0]
    jax.config.update("jax_default_device", chosen)
    return chosen


class ModelError(RuntimeError):
    """A model artifact cannot be used (the message says what is wrong and what to do)."""


def default_model_path() -> Path:
    """The artifact bundled with the worker (real alerts plus simulated ones; see README)."""
    return Path(str(files("worker.model").joinpath("default")))


@dataclass(frozen=True)
class Manifest:
    """What a model artifact promises about its inputs and outputs.

    Attributes
    ----------
    name, version : str
        Model name (``baseline``, ``rotinv``) and artifact version.
    class_names : tuple of str
        Output order of the probabilities.
    preprocessing : dict
        :meth:`worker.prepare.stamps.PreprocessConfig.as_dict` of the training data.
    inputs : tuple of str
        ``("image",)`` or ``("image", "features")``.
    features : FeatureEncoding
        How raw feature vectors become the model's feature input (statistics measured
        on the training set, log scales, missing-value indicators).
    raw : dict
        The whole manifest (fingerprint, metrics, training parameters...).
    """

    name: str
    version: str
    class_names: tuple[str, ...]
    preprocessing: dict[str, Any]
    inputs: tuple[str, ...]
    features: FeatureEncoding
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Manifest:
        """Validate a parsed manifest against what this worker implements."""
        try:
            manifest = cls(
                name=str(data["name"]), version=str(data["version"]),
                class_names=tuple(data["class_names"]),
                preprocessing=dict(data["preprocessing"]), inputs=tuple(data["inputs"]),
                features=FeatureEncoding.from_dict(data["features"]), raw=data)
        except (KeyError, TypeError) as exc:
            raise ModelError(f"{where}: manifest is incomplete or malformed ({exc!r})") from exc
        except ValueError as exc:
            raise ModelError(f"{where}: {exc}") from exc
        version = str(manifest.preprocessing.get("version"))
        if version != PREPROCESSING_VERSION:
            raise ModelError(f"{where}: model needs preprocessing version {version}, this "
                             f"worker implements {PREPROCESSING_VERSION}; use a matching "
                             "worker release or retrain the model")
        if manifest.class_names != CLASS_NAMES:
            raise ModelError(f"{where}: classes {manifest.class_names} are not the worker's "
                             f"{CLASS_NAMES}")
        if manifest.inputs not in (("image",), ("image", "features")):
            raise ModelError(f"{where}: unknown model inputs {manifest.inputs}")
        return manifest

    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing the model was trained with."""
        p = self.preprocessing
        return PreprocessConfig(crop_size=int(p["crop_size"]), stamp_size=int(p["stamp_size"]),
                                non_square=p["non_square"])


# Rows per ONNX Runtime call on the CPU.  The session's memory arena grows to the largest
# call's activations and keeps them: a batch of 256 alerts took the process from 72 to
# 197 MiB resident, calls of 64 rows to 108 MiB, at the same CPU time per alert (measured
# with the bundled model, batches of 16 to 256, one thread; README, Performance).
ONNX_CPU_ROWS = 64


class _OnnxRunner:
    """An ONNX Runtime session behind the ``predict_on_batch`` call Keras models have."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self._inputs = tuple(i.name for i in session.get_inputs())
        self._output = session.get_outputs()[0].name

    def predict_on_batch(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities for a dict of model inputs."""
        return self.session.run([self._output], {n: inputs[n] for n in self._inputs})[0]


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU limit of this process's container [CPUs], or None where there is none.

    Read as a container sees its own cgroup: ``cpu.max`` (cgroup v2) or
    ``cpu/cpu.cfs_quota_us`` over ``cpu/cpu.cfs_period_us`` (v1), which ``docker run
    --cpus``, ``podman run --cpus`` and a Kubernetes ``resources.limits.cpu`` set.  The
    CPUs a process may be scheduled on (``nproc``) stay those of the whole machine.

    Parameters
    ----------
    root : pathlib.Path
        Where the cgroup file system is mounted.

    Returns
    -------
    float or None
        Quota ÷ period, e.g. 1.5; None without a quota or where none can be read.
    """
    candidates = [(root / "cpu.max", None),
                  (root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"),
                  (root / "cpu,cpuacct" / "cpu.cfs_quota_us",
                   root / "cpu,cpuacct" / "cpu.cfs_period_us")]
    for quota_file, period_file in candidates:
        try:
            if period_file is None:  # v2: "QUOTA PERIOD", QUOTA "max" without a limit
                quota, period = quota_file.read_text().split()[:2]
            else:  # v1: QUOTA -1 without a limit
                quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
            if quota in ("max", "-1"):
                return None
            value = int(quota) / int(period)
        except (OSError, ValueError, ZeroDivisionError):
            continue
        return value if value > 0 else None
    return None


def threads_per_process(threads: int, processes: int, limit: float | None = None) -> int:
    """ONNX Runtime's threads per prediction in one of ``processes`` worker processes.

    Parameters
    ----------
    threads : int
        The configured ``model_threads``; a positive number is kept.
    processes : int
        Worker processes sharing the machine (``processes``).
    limit : float, optional
        The container's CPU limit [CPUs]; default :func:`cpu_limit`.

    Returns
    -------
    int
        ``threads`` if positive.  Else the CPUs this process may use, shared out
        between the processes, at least 1 each: the CPUs it may run on, capped by the
        container's CPU limit (whole CPUs; 1.5 gives 1).  With one process and no
        limit, 0: ONNX Runtime's default, one thread per physical core.  A limit
        matters: ONNX Runtime counts the machine's cores, not the container's share,
        and more threads than CPUs wait on each other; two processes on two cores, each
        with two threads, spent 1.4–1.8× the CPU per alert of one thread each on the
        8-bit model and 1.05–1.3× on the float one (README, Performance).
    """
    if threads > 0:
        return threads
    if limit is None:
        limit = cpu_limit()
    if limit is None and processes <= 1:
        return 0
    cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1)
    if limit is not None:
        cpus = min(cpus, max(1, int(limit)))
    return max(1, cpus // max(1, processes))


def onnx_providers(device: str) -> list[str]:
    """ONNX Runtime execution providers for ``device`` (``cpu``, ``cuda``/``gpu``, ``auto``).

    ``cuda`` (or ``gpu``) needs the ``onnxruntime-gpu`` package (extra ``gpu``); ``auto`` uses CUDA
    when that package finds a GPU and the CPU otherwise.

    Raises
    ------
    ModelError
        ``cuda`` asked for but not available in the installed ONNX Runtime.
    """
    import onnxruntime

    available = onnxruntime.get_available_providers()
    cuda = "CUDAExecutionProvider" in available
    if device in ("cuda", "gpu") and not cuda:
        raise ModelError(f"model device {device}: this ONNX Runtime has no CUDA provider "
                         f"(available: {', '.join(available)}); install the gpu extra "
                         "(onnxruntime-gpu) or use device cpu")
    if device in ("cuda", "gpu", "auto") and cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class StampModel:
    """A loaded, warmed-up classifier.

    Use :meth:`load`; predictions come from :meth:`predict`.
    """

    def __init__(self, runner: Any, manifest: Manifest, path: Path,
                 backend: str = "keras", device: str = "cpu",
                 max_rows: int = MAX_MODEL_BATCH) -> None:
        self._model = runner
        #: Most rows per call of the runner: :meth:`predict` cuts larger batches.
        self.max_rows = max_rows
        self.manifest = manifest
        self.path = path
        self.backend = backend
        #: Where the model runs, for people: ``cpu``, ``cuda`` or ``gpu (<device kind>)``.
        self.device = device
        self.preprocess = manifest.preprocess_config()

    @property
    def keras_model(self) -> Any:
        """The Keras model (for training and export); with the ``keras`` or ``jax`` backend."""
        if self.backend not in ("keras", "jax"):
            raise ModelError(f"{self.path}: loaded with the {self.backend} backend; load it "
                             "with backend='keras' to get the Keras model")
        return self._model

    @property
    def name(self) -> str:
        """Model name from the manifest."""
        return self.manifest.name

    @property
    def version(self) -> str:
        """Artifact version from the manifest (``+int8`` appended for the 8-bit model).

        Every label carries it, so a consumer knows which probabilities it holds.
        """
        suffix = "+int8" if self.backend == "onnx-int8" else ""
        return self.manifest.version + suffix

    @classmethod
    def load(cls, path: str | Path | None = None, warm_up: bool = True,
             backend: str = "auto", device: str = "cpu", threads: int = 0,
             memory_fraction: float | None = None) -> StampModel:
        """Load an artifact directory (default: the bundled model).

        Parameters
        ----------
        path : str or Path, optional
            Artifact directory holding ``model.keras`` and ``manifest.json`` (and
            optionally ``model.onnx``).
        warm_up : bool
            Run one prediction so the first real batch does not pay for tracing.
        backend : {"auto", "onnx", "onnx-int8", "keras", "jax"}
            ``auto``: ONNX Runtime when the manifest lists a ``model.onnx``, else Keras.
            ``onnx-int8``: ONNX Runtime on the 8-bit ``model.int8.onnx``, CPU only.
            ``jax``: Keras on JAX (:func:`use_jax` runs first; Keras must not have been
            imported on another backend in this process).
        device : {"cpu", "gpu", "cuda", "auto"}
            ONNX and JAX backends: where the model runs (see :func:`onnx_providers` and
            :func:`jax_device`); ``gpu`` and ``cuda`` are the same.
        threads : int
            ONNX backend only: threads for one prediction (0: ONNX Runtime's default,
            one per physical core).
        memory_fraction : float, optional
            JAX backend only: share of the GPU's memory this process reserves
            (0 < x ≤ 1); None: none reserved, memory taken as needed (:func:`use_jax`).

        Raises
        ------
        ModelError
            Missing files, a manifest this worker cannot honour, a model file that
            does not load (in safe mode) or does not match its manifest or its listed
            checksum, an unknown backend or an unavailable device.
        """
        if backend not in BACKENDS:
            raise ModelError(f"unknown model backend {backend!r}; use one of "
                             f"{', '.join(BACKENDS)}")
        if device not in DEVICES:
            raise ModelError(f"unknown model device {device!r}; use one of "
                             f"{', '.join(DEVICES)}")
        path = Path(path) if path is not None else default_model_path()
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise ModelError(f"{manifest_path}: missing; a model artifact is a directory with "
                             f"{MODEL_FILE} and {MANIFEST} (made by `stamp-train train`)")
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{manifest_path}: not valid JSON ({exc})") from exc
        manifest = Manifest.from_dict(data, str(manifest_path))
        onnx_entry = data.get("onnx")
        if backend == "auto":
            backend = "onnx" if isinstance(onnx_entry, dict) else "keras"
        if backend == "onnx":
            stamp_model = cls._load_onnx(path, manifest, onnx_entry, device, threads)
        elif backend == "onnx-int8":
            # ONNX Runtime's CUDA provider runs few of the 8-bit operators: a GPU would
            # spend its time copying between the devices.
            if device in ("gpu", "cuda"):
                raise ModelError("backend onnx-int8 runs on the CPU; on a GPU use onnx or jax")
            stamp_model = cls._load_onnx(path, manifest, data.get("onnx_int8"), "cpu",
                                         threads, int8=True)
        elif backend == "jax":
            stamp_model = cls._load_jax(path, manifest, device, memory_fraction)
        else:
            stamp_model = cls._load_keras(path, manifest)
        if warm_up:
            stamp_model.predict(np.zeros((1, *stamp_model.image_shape), np.float32),
                                np.zeros((1, len(FEATURE_NAMES)), np.float32))
        return stamp_model

    @classmethod
    def _load_onnx(cls, path: Path, manifest: Manifest, entry: Any, device: str,
                   threads: int, int8: bool = False) -> StampModel:
        """The ONNX Runtime backends (import neither TensorFlow nor Keras)."""
        if int8:
            what, make = "8-bit ONNX model", (f"`stamp-train quantize {path} --alerts PATH`; "
                                              "or use backend onnx")
        else:
            what, make = "ONNX model", f"`stamp-train export-onnx {path}`; or use backend keras"
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise ModelError(f"{path / MANIFEST}: lists no {what}; make one with {make}")
        onnx_path = path / Path(entry["file"]).name
        if not onnx_path.is_file():
            raise ModelError(f"{onnx_path}: missing; make it again with {make}")
        blob = onnx_path.read_bytes()
        if entry.get("sha256") != hashlib.sha256(blob).hexdigest():
            raise ModelError(f"{onnx_path}: SHA-256 differs from the manifest's; make it "
                             f"again with {make}")
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        # One model call at a time per process: no parallelism between graph nodes.
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no notices on the worker's stderr
        # ONNX Runtime's pool threads spin between calls by default, burning a core the
        # worker's decoding, librdkafka and the broker want: two worker processes on two
        # cores drained 958 alerts/s spinning, against 1,629 with one thread per process
        # (bench_e2e.py --processes 2; README, End-to-end performance).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            session = onnxruntime.InferenceSession(blob, sess_options=options,
                                                   providers=onnx_providers(device))
        except Exception as exc:  # ONNX Runtime raises its own exception types
            raise ModelError(f"{onnx_path}: ONNX Runtime cannot load it ({exc})") from exc
        shapes = {i.name: i.shape for i in session.get_inputs()}
        if tuple(sorted(shapes)) != tuple(sorted(manifest.inputs)):
            raise ModelError(f"{onnx_path}: model inputs {tuple(sorted(shapes))} differ from "
                             f"the manifest's {manifest.inputs}")
        if "features" in shapes and shapes["features"][-1] != manifest.features.width:
            raise ModelError(f"{onnx_path}: the model takes {shapes['features'][-1]} "
                             f"features, the manifest's encoding gives "
                             f"{manifest.features.width}")
        cuda = session.get_providers()[0] == "CUDAExecutionProvider"
        return cls(_OnnxRunner(session), manifest, path, backend="onnx-int8" if int8 else "onnx",
                   device="cuda" if cuda else "cpu",
                   max_rows=MAX_MODEL_BATCH if cuda else ONNX_CPU_ROWS)

    @classmethod
    def _load_jax(cls, path: Path, manifest: Manifest, device: str,
                  memory_fraction: float | None) -> StampModel:
        """Keras on JAX, on the CPU or a GPU (imports neither TensorFlow nor ONNX Runtime)."""
        if memory_fraction is not None and not 0 < memory_fraction <= 1:
            raise ModelError(f"model memory fraction must be in (0, 1], got {memory_fraction}")
        use_jax(device, memory_fraction)
        from worker.commandline import native_notices_dropped

        try:
            # JAX's CUDA plugin, where installed, logs absl notices when JAX is imported.
            with native_notices_dropped():
                import jax  # noqa: F401
                import keras  # noqa: F401
        except ImportError as exc:
            raise ModelError(f"model_backend jax needs Keras and JAX, which are not "
                             f"installed ({exc}): pip install 'stamp-classifier-worker[jax]' "
                             f"(CPU) or {GPU_INSTALL} (NVIDIA GPU)") from exc
        chosen = jax_device(device)
        loaded = cls._load_keras(path, manifest)
        kind = getattr(chosen, "device_kind", "") or ""
        where = f"gpu ({kind})" if chosen.platform != "cpu" else "cpu"
        return cls(loaded._model, manifest, path, backend="jax", device=where)

    @classmethod
    def _load_keras(cls, path: Path, manifest: Manifest) -> StampModel:
        """The Keras backend (TensorFlow or JAX, as ``KERAS_BACKEND`` says)."""
        model_path = path / MODEL_FILE
        if not model_path.is_file():
            raise ModelError(f"{model_path}: missing; a model artifact is a directory with "
                             f"{MODEL_FILE} and {MANIFEST} (made by `stamp-train train`)")
        # Deferred: a bad manifest is reported without importing a backend.  The first
        # import drops TensorFlow's start-up notices below TF_CPP_MIN_LOG_LEVEL.
        from worker.commandline import import_keras

        try:
            import_keras()
        except ImportError as exc:
            # The serving install (and the container image) has ONNX Runtime only.
            raise ModelError(f"{path}: model_backend keras needs Keras and TensorFlow, which "
                             f"are not installed ({exc}): pip install "
                             f"'stamp-classifier-worker[keras]', or serve the artifact's "
                             f"model.onnx (`stamp-train export-onnx {path}` adds one)") from exc
        import keras

        import worker.model.layers  # noqa: F401  (registers the custom layers)

        try:
            model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
        except Exception as exc:  # Keras raises ValueError, TypeError, OSError...
            raise ModelError(f"{model_path}: does not load in Keras safe mode ({exc})") from exc
        input_names = tuple(sorted(t.name.split(":")[0] for t in model.inputs))
        if input_names != tuple(sorted(manifest.inputs)):
            raise ModelError(f"{model_path}: model inputs {input_names} differ from the "
                             f"manifest's {manifest.inputs}")
        widths = {t.name.split(":")[0]: t.shape[-1] for t in model.inputs}
        if "features" in widths and widths["features"] != manifest.features.width:
            raise ModelError(f"{model_path}: the model takes {widths['features']} features, "
                             f"the manifest's encoding gives {manifest.features.width}")
        return cls(model, manifest, path, backend="keras")

    def warm_up(self, max_batch: int) -> None:
        """Compile every padded batch shape up to ``max_batch`` now, not mid-stream.

        Parameters
        ----------
        max_batch : int
            Largest micro-batch the caller will pass [alerts]; shapes stop at
            :data:`MAX_MODEL_BATCH`, the largest call :meth:`predict` makes.
        """
        for size in padded_sizes(max_batch):
            self.predict(np.zeros((size, *self.image_shape), np.float32),
                         np.zeros((size, len(FEATURE_NAMES)), np.float32))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one model image (crop, crop, 3)."""
        crop = self.preprocess.crop_size
        return (crop, crop, 3)

    def model_inputs(self, images: np.ndarray, features: np.ndarray) -> dict[str, np.ndarray]:
        """The dict the Keras model takes: images, and encoded features if used."""
        inputs = {"image": np.asarray(images, np.float32)}
        if "features" in self.manifest.inputs:
            inputs["features"] = self.manifest.features.encode(features)
        return inputs

    def predict(self, images: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch.

        Parameters
        ----------
        images : numpy.ndarray
            (N, crop, crop, 3) float32 from :func:`worker.prepare.stamps.preprocess_stamps`.
        features : numpy.ndarray
            (N, F) raw features from :func:`worker.prepare.features.metadata_features`.

        Returns
        -------
        numpy.ndarray
            (N, 5) float32 probabilities in :data:`CLASS_NAMES` order, one row per
            input row (padding rows are dropped).
        """
        n = len(images)
        if n == 0:
            return np.zeros((0, len(CLASS_NAMES)), np.float32)
        inputs = self.model_inputs(images, features)
        if n > self.max_rows:  # bounded shapes, and bounded memory for activations
            return np.concatenate([
                self._predict_inputs({k: v[start:start + self.max_rows]
                                      for k, v in inputs.items()})
                for start in range(0, n, self.max_rows)])
        return self._predict_inputs(inputs)

    def _predict_inputs(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities for encoded model inputs of at most :attr:`max_rows` rows."""
        n = len(inputs["image"])
        # Each new batch shape makes Keras compile the model again (~0.3 s on CPU with
        # TensorFlow, 0.5-3 s with JAX), and micro-batch sizes vary all the time: pad to
        # a power of two so a handful of shapes serve every batch.  ONNX Runtime takes
        # any batch size as it is.
        size = bucket_size(n) if self.backend in ("keras", "jax") else n
        if size != n:
            inputs = {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
                      for k, v in inputs.items()}
        out = self._model.predict_on_batch(inputs)
        return np.asarray(out, dtype=np.float32)[:n]
