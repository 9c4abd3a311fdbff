#!/bin/sh
# Installs the Debian 12 packages the project needs to build, test and run.
# Used by `make run` and `make test` (through `make deps`) and by the Dockerfile.
# It does nothing when every package is already installed, so it is cheap to
# call before each build. Needs root, or sudo.
#
#   deploy/install-deps.sh            build + run packages
#   deploy/install-deps.sh --test     also what the test suite needs
#   deploy/install-deps.sh --bench    also what the test suite and make bench need
#   deploy/install-deps.sh --containers  the container engine of make test-containers:
#                                     Debian's dockerd, docker-compose 1.29, debootstrap
set -eu

BUILD_PKGS="build-essential pkg-config libzmq3-dev libprotobuf-c-dev protobuf-c-compiler \
libopenblas-dev libuv1-dev libinih-dev libjansson-dev libhttp-parser-dev"
TEST_PKGS="check python3 python3-numpy python3-nltk python3-torch clang libclang-rt-14-dev chromium prometheus python3-yaml"
BENCH_PKGS="gnuplot-nox"
CONTAINER_PKGS="docker.io docker-compose debootstrap binutils python3"

want="$BUILD_PKGS"
if [ "${1:-}" = "--test" ]; then
    want="$want $TEST_PKGS"
elif [ "${1:-}" = "--bench" ]; then
    want="$want $TEST_PKGS $BENCH_PKGS"
elif [ "${1:-}" = "--containers" ]; then
    want="$CONTAINER_PKGS"
fi

missing=""
for p in $want; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    exit 0
fi

echo "install-deps: installing missing Debian packages:$missing"
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "install-deps: need root or sudo to install:$missing" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
