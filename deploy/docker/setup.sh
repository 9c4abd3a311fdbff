#!/bin/sh
# Everything docker-compose.yml and deploy/swarm/stack.yml need, each step
# skipped when done: the offline base image (base-image.sh), the image
# moe:latest (deploy/Dockerfile; --build builds it again), the secrets
# (secrets.sh, into ./secrets). Run from the top of the repository.
#
#   deploy/docker/setup.sh [--build]
set -eu
here=$(dirname "$0")
base=${MOE_BASE_IMAGE:-moe-debian:12}
image=${MOE_IMAGE:-moe:latest}
if ! docker info >/dev/null 2>&1; then
    echo "setup: no Docker daemon answers (Debian: apt-get install docker.io; dockerd)" >&2
    exit 1
fi
case "$base" in
moe-debian:*) sh "$here/base-image.sh" "$base" ;;
esac
if [ "${1:-}" = "--build" ] || ! docker image inspect "$image" >/dev/null 2>&1; then
    docker build -f deploy/Dockerfile --build-arg BASE_IMAGE="$base" -t "$image" .
fi
sh "$here/secrets.sh" "${MOE_SECRETS:-secrets}" "$image"
