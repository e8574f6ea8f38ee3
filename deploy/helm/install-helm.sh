#!/usr/bin/env bash
# Build and install a pinned Helm 3 client from the Go module proxy (no binary download
# from GitHub needed), once: a second run finds the binary and only prints its path.
#
#   deploy/helm/install-helm.sh            # prints the path of the helm binary
#   HELM_VERSION=v3.21.4 deploy/helm/install-helm.sh
#   deploy/helm/install-helm.sh --path     # only print where it is (or would be) installed
#
# Installs into ${XDG_CACHE_HOME:-~/.cache}/stamp-worker/helm/<version>/helm (outside the
# checkout, so `make clean` and fresh clones on the same machine reuse it); override with
# HELM_INSTALL_DIR.  Needs Go >= the version that Helm's go.mod asks for (1.26 for v3.22).
# Build output goes to stderr; the only line on stdout is the binary's path.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# The Kubernetes version Helm assumes without a cluster (`helm template`, `helm lint`): the
# release builds set it from the client-go it is built with (v0.37 for Helm v3.22 -> 1.37);
# `go install` alone would leave Helm's fallback, 1.20.
HELM_K8S_MINOR="${HELM_K8S_MINOR:-37}"
HELM_INSTALL_DIR="${HELM_INSTALL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stamp-worker/helm/$HELM_VERSION}"
helm_bin="$HELM_INSTALL_DIR/helm"
if [ "${1:-}" = "--path" ]; then
  echo "$helm_bin"
  exit 0
elif [ $# -gt 0 ]; then
  echo "install-helm.sh: unknown argument $1 (the only option is --path)" >&2
  exit 2
fi

if [ -x "$helm_bin" ] && "$helm_bin" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
  echo "$helm_bin"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "install-helm.sh: go is not installed; install Go (https://go.dev/dl) or put helm on PATH" >&2
  exit 1
fi

mkdir -p "$HELM_INSTALL_DIR"
start=$(date +%s)
# The ldflags set what `helm version` prints and the Kubernetes version, as Helm's release
# Makefile does; -s -w drop the debug tables to shorten the link on small machines.
GOBIN="$HELM_INSTALL_DIR" CGO_ENABLED=0 \
  go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_K8S_MINOR \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM_K8S_MINOR" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
echo "install-helm.sh: built helm $HELM_VERSION in $(( $(date +%s) - start )) s" >&2
"$helm_bin" version --short >&2
echo "$helm_bin"
