"""What the container tests share: podman as root with runc, and the worker image.

``deploy/docker/build.sh`` builds the image (on the minimal Debian base that
``deploy/docker/make-base.sh`` makes, unless ``$STAMP_IMAGE_BASE`` names another), tagged
with a hash of its inputs, so that the tests of one run, and later runs on the same
machine, build it once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.conftest import REPO, background_build

# A first build of the image on a loaded 2-core machine; the measured times are far below.
BUILD_TIMEOUT_S = 1500.0


def runtime() -> str | None:
    """The OCI runtime for podman: runc (crun fails on some kernels' cgroups)."""
    return (os.environ.get("STAMP_OCI_RUNTIME") or shutil.which("runc")
            or shutil.which("runc", path="/usr/sbin:/sbin"))


def missing() -> str | None:
    """Why podman cannot build and run the worker image here, or None."""
    if shutil.which("podman") is None:
        return ("podman is not installed (apt-get install podman runc debootstrap; .ci/run "
                "installs them)")
    if runtime() is None:
        return "runc is not installed (apt-get install runc)"
    if os.geteuid() != 0:
        return "podman runs as root here (rootless podman is not set up)"
    if (not os.environ.get("STAMP_IMAGE_BASE") and shutil.which("debootstrap") is None
            and shutil.which("debootstrap", path="/usr/sbin:/sbin") is None):
        return ("debootstrap is not installed, to make the base image (or set "
                "$STAMP_IMAGE_BASE to a Python base image on this machine)")
    return None


def podman(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """One podman command, its output captured, never raising on its status."""
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def run_options() -> list[str]:
    """``podman run`` options this machine needs: runc, host network, allowed ulimits.

    The host network because the test broker listens on 127.0.0.1.
    """
    return ["--runtime", str(runtime()), "--network", "host",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def build_image() -> str:
    """The worker image's name, built by deploy/docker/build.sh or kept by its hash.

    Where ``.ci/run`` builds it beside the tests, that build is awaited first (build.sh
    then finds the image by its hash).
    """
    background_build("image")
    start = time.monotonic()
    result = subprocess.run([str(REPO / "deploy/docker/build.sh")], capture_output=True,
                            text=True, timeout=BUILD_TIMEOUT_S, check=False)
    if result.returncode != 0:
        pytest.fail(f"deploy/docker/build.sh failed (status {result.returncode}):\n"
                    f"{result.stderr[-4000:]}", pytrace=False)
    name = result.stdout.strip().splitlines()[-1]
    print(f"\n{result.stderr.strip()}\nimage {name} ready in {time.monotonic() - start:.1f} s")
    return name
