#!/bin/sh
# Everything docker-compose.yml and deploy/swarm/stack.yml need, each step
# skipped when done: the offline base image (base-image.sh), the image
# moe:latest (deploy/Dockerfile, built again from the current tree; Docker
# reuses its layers when nothing changed), the secrets (secrets.sh, into
# ./secrets). Run from the top of the repository.
#
#   deploy/docker/setup.sh
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
docker build -q -f deploy/Dockerfile --build-arg BASE_IMAGE="$base" -t "$image" . >/dev/null ||
    { echo "setup: docker build failed (run it without -q to see why)" >&2; exit 1; }
echo "setup: image $image built from deploy/Dockerfile"
sh "$here/secrets.sh" "${MOE_SECRETS:-secrets}" "$image"
