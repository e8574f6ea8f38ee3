#!/usr/bin/env bash
# Build the worker image with podman, tagged with a hash of its inputs, so that a second
# run on the same machine with the same inputs reuses it:
#
#   deploy/docker/build.sh            # prints the image name on its last line
#
# The base: $STAMP_IMAGE_BASE when set (e.g. docker.io/library/python:3.11-slim-bookworm
# where a registry is reachable), else the minimal Debian that make-base.sh makes from
# Debian's archive (no registry needed; made once per machine). Needs root, podman, runc
# (crun fails on some kernels' cgroups; $STAMP_OCI_RUNTIME picks another) and network
# access to PyPI (and to Debian's archive for the local base); cargo (with $PYTHON, default
# python3, and its pip) for the compiled decoding path. A CA bundle for a
# TLS-intercepting proxy goes to pip as a build secret ($PIP_CA, default the system's).
set -euo pipefail
cd "$(dirname "$0")/../.."
PATH="$PATH:/usr/sbin:/sbin"
runtime="${STAMP_OCI_RUNTIME:-$(command -v runc || true)}"
if ! command -v podman >/dev/null 2>&1 || [ -z "$runtime" ]; then
  echo "build.sh: needs podman and runc (apt-get install podman runc debootstrap)" >&2
  exit 1
fi

base="${STAMP_IMAGE_BASE:-}"
if [ -z "$base" ]; then
  base=localhost/debian:bookworm
  deploy/docker/make-base.sh "$base" >&2
fi
base_id="$(podman image inspect --format '{{.Id}}' "$base" 2>/dev/null)" || {
  echo "build.sh: base image $base is not on this machine (podman pull $base)" >&2
  exit 1
}

# The compiled decoding path goes in as a wheel of native/ built here (the image has no
# Rust toolchain), where cargo is; without it the image decodes in pure Python.
python="${PYTHON:-python3}"
native=no
command -v cargo >/dev/null 2>&1 && native=yes

# Inputs: the base, the Dockerfile, what .dockerignore lets into the context, and the
# sources of the native wheel (the wheel itself is rebuilt only with the image).
inputs="$( {
  echo "$base_id native=$native"
  find deploy/docker/Dockerfile .dockerignore pyproject.toml README.md schemas training worker \
    native/Cargo.toml native/Cargo.lock native/pyproject.toml native/src \
    -type f ! -path '*/__pycache__/*' ! -name '*.py[cod]' ! -path 'worker/model/*/report/*' \
    -print0 | sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-12)"
image="localhost/stamp-worker:$inputs"

if podman image exists "$image"; then
  echo "image $image exists (same inputs): kept" >&2
else
  rm -f deploy/docker/wheels/stamp_native-*.whl
  if [ "$native" = yes ]; then
    start=$SECONDS
    "$python" -m pip wheel --quiet --no-deps --wheel-dir deploy/docker/wheels ./native >&2 || {
      echo "build.sh: building the wheel of native/ failed (above); PATH without cargo builds the image without the compiled path" >&2
      exit 1
    }
    echo "wheel of native/ built in $((SECONDS - start)) s" >&2
  else
    echo "build.sh: cargo not found: the image decodes with the pure-Python path" >&2
  fi
  ca="${PIP_CA:-/etc/ssl/certs/ca-certificates.crt}"
  secret=()
  [ -s "$ca" ] && secret=(--secret "id=pip-ca,src=$ca")
  start=$SECONDS
  podman build --quiet --format docker --runtime "$runtime" --network host \
    --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 "${secret[@]}" \
    --build-arg "BASE=$base" -f deploy/docker/Dockerfile -t "$image" . >&2
  echo "image $image built in $((SECONDS - start)) s" >&2
fi
podman tag "$image" localhost/stamp-worker:latest
# Earlier builds of this script: the final layer of each is a copy of the environment
# (about 400 MB). `podman image prune` frees their build cache as well.
podman images --format '{{.Repository}}:{{.Tag}}' localhost/stamp-worker \
  | grep -E ':[0-9a-f]{12}$' | grep -vx "$image" | xargs -r podman rmi >/dev/null || true
echo "$image"
