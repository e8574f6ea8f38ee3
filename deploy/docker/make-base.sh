#!/usr/bin/env bash
# Make a minimal Debian bookworm base image from Debian's own archive, for machines that
# cannot pull images from a registry (no python:3.11-slim-bookworm):
#
#   deploy/docker/make-base.sh [IMAGE]        # default localhost/debian:bookworm
#   podman build --build-arg BASE=localhost/debian:bookworm ...
#
# Needs root, podman and debootstrap (apt-get install podman runc debootstrap). The image
# is a cache on this machine: when IMAGE exists already it is kept as it is (remove it with
# `podman rmi IMAGE` to make it again). $DEBIAN_MIRROR picks the archive
# (default http://deb.debian.org/debian).
set -euo pipefail
image="${1:-localhost/debian:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if podman image exists "$image"; then
  echo "base image $image exists: kept"
  exit 0
fi
for tool in debootstrap podman; do
  command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin"
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "make-base.sh: $tool is not installed (apt-get install podman runc debootstrap)" >&2
    exit 1
  fi
done
if [ "$(id -u)" != 0 ]; then
  echo "make-base.sh: debootstrap needs root" >&2
  exit 1
fi

root="$(mktemp -d /var/tmp/debian-bookworm.XXXXXX)"
trap 'rm -rf "$root"' EXIT
start=$SECONDS
# minbase: essential packages and apt only (no Python); the Dockerfile adds what it needs.
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
  echo "make-base.sh: debootstrap failed; the end of its log ($root.log):" >&2
  tail -20 "$root.log" >&2
  exit 1
}
rm -f "$root.log"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | podman import --quiet - "$image" >/dev/null
echo "base image $image made in $((SECONDS - start)) s from $mirror"
