#!/bin/sh
# Writes the secrets of docker-compose.yml and deploy/swarm/stack.yml into
# DIR (./secrets): the cluster's CURVE keys (moectl keygen: one key pair per
# role) and a random HTTP token, owned by the image's user moe (uid 10001),
# the secret ones readable by it alone. Runs moectl from IMAGE, so it needs
# nothing but Docker. Keeps what exists (rotate: remove DIR, run it again).
#
#   deploy/docker/secrets.sh [DIR] [IMAGE]      (defaults: secrets moe:latest)
set -eu
dir=${1:-secrets}
image=${2:-moe:latest}
if [ -f "$dir/coordinator.key" ] && [ -s "$dir/http-token" ]; then
    echo "secrets: $dir has the keys and the token"
    exit 0
fi
mkdir -p "$dir"
abs=$(cd "$dir" && pwd)
docker run --rm --user 0 -v "$abs:/out" "$image" sh -c '
    set -e
    test -f /out/coordinator.key || moectl keygen /out >/dev/null
    test -s /out/http-token ||
        (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d " \n" >/out/http-token && echo >>/out/http-token)
    chown 10001:10001 /out/*.key /out/*.pub /out/http-token
    chmod 600 /out/*.key /out/http-token
    chmod 644 /out/*.pub'
echo "secrets: wrote the CURVE keys and the HTTP token into $dir"
