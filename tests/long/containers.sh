#!/bin/sh
# Containers for real (make test-containers, part of make test-long): starts
# dockerd when none answers, makes the Debian 12 base image offline
# (deploy/docker/base-image.sh), builds the image from deploy/Dockerfile
# (checked: no object tuned for the build machine), then
#   1. the same training with deploy/launch-local.sh on this machine's build:
#      the reference export;
#   2. docker-compose.yml (Debian's docker-compose 1.29): coordinator, 2
#      servers and a worker; while training, --scale server=3 adds a server,
#      --scale server=2 drains one (SIGTERM: the coordinator logs a drain, no
#      rollback), docker kill of a server is recovered (rollback, training
#      goes on, `up` starts it again), a server killed from outside (a crash)
#      is restarted by its restart policy; the worker exits 0, the final
#      export is byte-identical to the reference; every container has a
#      health check, a restart policy and OPENBLAS_THREAD_TIMEOUT, the token
#      (a secret) is accepted and a wrong one refused; stop: all exit 0;
#   3. deploy/swarm/stack.yml on a one-node swarm: a server task killed is
#      rescheduled, the cluster recovers, the export is the reference's.
# Everything it starts is stopped (dockerd too, when it started it); the
# images stay for the next run (the build reuses its layers).
#
# Usage: tests/long/containers.sh BUILD_DIR [STEPS]   (STEPS: 1500)
set -u
build=$(cd "${1:-build}" && pwd)
steps=${2:-1500}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
cd "$top" || exit 1
BIN="$build/bin"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/moe-containers-XXXXXX")
. "$top/tests/integration/lib.sh"
IMAGE=moe:test
PROJECT=moect$$
STACK=moest$$
# A small model whose steps take milliseconds, so that the test is bounded;
# a failing step gives up on a dead server after 5 s (timeout_ms).
OPTS="--steps $steps --d-model 32 --d-hidden 64 --batch 8 --unroll 16 --threads 1 --valid= \
--log-every 50 --heartbeat-timeout-ms 2000 --timeout-ms 5000 --max-rollbacks 20"
t_start=$(now_ms)
started_dockerd=""
started_swarm=0

cleanup() {
    docker-compose --env-file /dev/null -p "$PROJECT" down -v -t 5 >/dev/null 2>&1
    if docker stack ls 2>/dev/null | grep -q "^$STACK "; then
        docker stack rm "$STACK" >/dev/null 2>&1
        stack_gone 120
        docker volume rm "${STACK}_moe-run" >/dev/null 2>&1
    fi
    [ $started_swarm = 0 ] || docker swarm leave --force >/dev/null 2>&1
    if [ -n "$started_dockerd" ]; then
        kill -TERM "$started_dockerd" 2>/dev/null
        wait "$started_dockerd" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM
elapsed() { echo "$((($(now_ms) - t_start) / 1000)) s"; }
say() { echo "containers: [$(elapsed)] $*"; }
# until_ok SECONDS WHAT COMMAND...: runs COMMAND every half second until it
# succeeds; fails naming WHAT after SECONDS.
until_ok() {
    _u_s=$1
    _u_w=$2
    shift 2
    _u_n=0
    until "$@" >/dev/null 2>&1; do
        [ $_u_n -lt $((_u_s * 2)) ] || fail "$_u_w: not within $_u_s s"
        sleep 0.5
        _u_n=$((_u_n + 1))
    done
}

# ---------------------------------------------------------------------------
# The engine, the base image, the image.
sh deploy/install-deps.sh --containers || fail "cannot install the container packages"
if ! docker info >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || fail "no Docker daemon answers, and starting dockerd needs root"
    dockerd >"$WORK/dockerd.log" 2>&1 &
    started_dockerd=$!
    until_ok 60 "dockerd answering (log: $WORK/dockerd.log)" docker info
    say "started dockerd"
fi
sh deploy/docker/base-image.sh >"$WORK/base.log" 2>&1 || fail "base image: $(tail -n 3 "$WORK/base.log")"
say "$(tail -n 1 "$WORK/base.log")"
docker build -f deploy/Dockerfile -t "$IMAGE" . >"$WORK/build.log" 2>&1 ||
    fail "docker build failed: $(tail -n 5 "$WORK/build.log")"
say "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE") bytes)"

# No object of the image is tuned for the build machine: every compilation
# unit says -march=x86-64 (GCC records its flags in DW_AT_producer).
cid=$(docker create "$IMAGE")
for b in moe-worker moe-server moe-coordinator moectl; do
    docker cp "$cid:/usr/local/bin/$b" "$WORK/$b.img" >/dev/null || fail "no $b in the image"
    readelf --debug-dump=info "$WORK/$b.img" 2>/dev/null | grep DW_AT_producer >"$WORK/producers"
    n=$(grep -c . "$WORK/producers")
    generic=$(grep -c -- "-march=x86-64 " "$WORK/producers")
    [ "$n" -gt 10 ] && [ "$generic" -eq "$n" ] ||
        fail "$b: $((n - generic)) of $n compilation units not built for generic x86-64: $(grep -v -- "-march=x86-64 " "$WORK/producers" | head -n 1)"
done
docker rm "$cid" >/dev/null
say "every compilation unit of the image's 4 programs: -march=x86-64"

sh deploy/docker/secrets.sh "$WORK/secrets" "$IMAGE" >/dev/null || fail "secrets.sh failed"
export MOE_IMAGE=$IMAGE MOE_SECRETS=$WORK/secrets MOE_OPTS="$OPTS" MOE_CHECKPOINT_EVERY=50

# ---------------------------------------------------------------------------
# 1. The reference: the same configuration with the local launcher.
sh deploy/launch-local.sh --bin "$BIN" --run-dir "$WORK/ref" --servers 2 -- \
    --config deploy/default.ini --checkpoint-dir "$WORK/ref/checkpoints" $OPTS \
    >"$WORK/ref.log" 2>&1 || fail "launch-local failed: $(tail -n 3 "$WORK/ref.log")"
"$BIN/moectl" export "$WORK/ref/checkpoints" "$WORK/ref.safetensors" >/dev/null ||
    fail "export of the reference failed"
say "reference: deploy/launch-local.sh trained $steps steps"

# status_field FIELD: from the coordinator's /api/v1/cluster (MOE_HTTP_PORT):
# step, servers (alive ones), rollbacks, epoch.
status_field() {
    "$BIN/moectl" --http "127.0.0.1:$MOE_HTTP_PORT" --json status 2>/dev/null | python3 -c '
import json, sys
j = json.load(sys.stdin)
f = sys.argv[1]
print(sum(1 for s in j["servers"] if s["alive"]) if f == "servers" else j[f])' "$1"
}
step_at_least() { [ "$(status_field step)" -ge "$1" ]; }
servers_alive() { [ "$(status_field servers)" -eq "$1" ]; }
rollbacks_above() { [ "$(status_field rollbacks)" -gt "$1" ]; }
export_volume() { # VOLUME OUT: the export of the volume's last checkpoint
    docker run --rm -v "$1:/moe/run" "$IMAGE" sh -c \
        'moectl export run/checkpoints /tmp/m.safetensors >&2 && cat /tmp/m.safetensors' \
        >"$2" 2>"$WORK/export.log" || fail "export of $1 failed: $(cat "$WORK/export.log")"
}

# ---------------------------------------------------------------------------
# 2. docker-compose.yml
free_ports 1
export MOE_HTTP_PORT=$P1
# (an operator's .env beside docker-compose.yml is not read: --env-file)
: >"$WORK/empty.env"
dc() { docker-compose --env-file "$WORK/empty.env" -p "$PROJECT" "$@"; }
clog() { dc logs --no-color coordinator >"$WORK/coordinator.log" 2>&1; }
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$1")" = healthy ]; }
dc up -d >"$WORK/up.log" 2>&1 || fail "docker-compose up failed: $(tail -n 5 "$WORK/up.log")"
for c in coordinator_1 server_1 server_2 worker_1; do
    until_ok 180 "${PROJECT}_$c healthy" healthy "${PROJECT}_$c"
done
say "compose: coordinator, 2 servers and the worker up and healthy"
for c in coordinator_1 server_1 server_2 worker_1; do
    inspect=$(docker inspect -f '{{.Config.Healthcheck.Test}} {{.HostConfig.RestartPolicy.Name}} {{.Config.Env}}' "${PROJECT}_$c")
    case "$inspect" in
    *moe-healthcheck*on-failure*OPENBLAS_THREAD_TIMEOUT=*) ;;
    *) fail "${PROJECT}_$c: no health check, restart policy or OPENBLAS_THREAD_TIMEOUT: $inspect" ;;
    esac
done
curl_code() { # TOKEN: the HTTP status of POST /api/v1/checkpoint
    python3 -c '
import sys, urllib.request, urllib.error
r = urllib.request.Request("http://127.0.0.1:%s/api/v1/checkpoint" % sys.argv[1], data=b"", method="POST",
                           headers={"Authorization": "Bearer " + sys.argv[2]})
try: print(urllib.request.urlopen(r, timeout=5).status)
except urllib.error.HTTPError as e: print(e.code)' "$MOE_HTTP_PORT" "$1"
}
[ "$(curl_code wrong-token)" = 401 ] || fail "a wrong token was not refused with 401"
[ "$(curl_code "$(tr -d '\n' <"$WORK/secrets/http-token")")" = 200 ] ||
    fail "the secret token was not accepted"
say "compose: health checks, restart policies, OPENBLAS_THREAD_TIMEOUT; the secret token accepted, a wrong one refused"

until_ok 120 "compose: step 150" step_at_least 150
dc up -d --no-recreate --scale server=3 >"$WORK/up.log" 2>&1 ||
    fail "--scale server=3 failed: $(tail -n 5 "$WORK/up.log")"
until_ok 60 "compose: 3 servers alive" servers_alive 3
clog
grep -q "epoch .*: 3 server(s).*planned reconfiguration" "$WORK/coordinator.log" ||
    fail "the third server did not join: $(tail -n 5 "$WORK/coordinator.log")"
at=$(status_field step)
say "compose: --scale server=3 at step $at: a third server joined"

rollbacks=$(status_field rollbacks)
dc up -d --no-recreate --scale server=2 >"$WORK/up.log" 2>&1 ||
    fail "--scale server=2 failed: $(tail -n 5 "$WORK/up.log")"
until_ok 60 "compose: 2 servers alive" servers_alive 2
clog
[ "$(count ") drained" "$WORK/coordinator.log")" = 1 ] ||
    fail "scaling back did not drain a server: $(tail -n 5 "$WORK/coordinator.log")"
[ "$(status_field rollbacks)" = "$rollbacks" ] || fail "scaling back caused a rollback"
say "compose: --scale server=2 at step $(status_field step): one server drained, no rollback"

docker kill "${PROJECT}_server_1" >/dev/null || fail "docker kill failed"
until_ok 60 "compose: a rollback after docker kill" rollbacks_above "$rollbacks"
at=$(status_field step)
until_ok 60 "compose: training goes on after docker kill" step_at_least $((at + 50))
[ "$(docker inspect -f '{{.State.ExitCode}}' "${PROJECT}_server_1")" = 137 ] ||
    fail "server_1 was not killed"
say "compose: docker kill of server_1: rolled back, training goes on with 1 server (step $(status_field step))"
dc up -d --no-recreate >"$WORK/up.log" 2>&1 || fail "up again failed: $(tail -n 5 "$WORK/up.log")"
until_ok 60 "compose: server_1 back" servers_alive 2
say "compose: docker-compose up started server_1 again: 2 servers"

rollbacks=$(status_field rollbacks)
kill -9 "$(docker inspect -f '{{.State.Pid}}' "${PROJECT}_server_2")" || fail "cannot kill server_2"
restarted() { [ "$(docker inspect -f '{{.RestartCount}}' "$1")" -ge 1 ]; }
until_ok 60 "compose: server_2 restarted by its restart policy" restarted "${PROJECT}_server_2"
until_ok 60 "compose: 2 servers alive after the crash" servers_alive 2
[ "$(status_field rollbacks)" -gt "$rollbacks" ] || fail "the crash of server_2 caused no rollback"
say "compose: server_2 crashed (kill -9 from the host): restarted by its policy, rolled back, 2 servers"

[ "$(status_field step)" -lt "$steps" ] ||
    fail "training ended before the last event: give it more steps (tests/long/containers.sh BUILD STEPS)"
code=$(timeout 600 docker wait "${PROJECT}_worker_1") || fail "the worker did not finish within 10 min"
[ "$code" = 0 ] || fail "the worker exited $code: $(dc logs --tail 5 worker)"
export_volume "${PROJECT}_moe-run" "$WORK/compose.safetensors"
cmp "$WORK/ref.safetensors" "$WORK/compose.safetensors" ||
    fail "the compose run's export differs from launch-local's"
say "compose: the worker exited 0 after $steps steps; export byte-identical to launch-local's ($(wc -c <"$WORK/ref.safetensors") bytes)"
dc stop >"$WORK/stop.log" 2>&1 || fail "docker-compose stop failed"
for c in $(dc ps -q); do
    code=$(docker inspect -f '{{.Name}} {{.State.ExitCode}}' "$c")
    [ "${code##* }" = 0 ] || fail "after docker-compose stop: $code"
done
dc down -v >/dev/null 2>&1
say "compose: docker-compose stop: every container exited 0"

# ---------------------------------------------------------------------------
# 3. The stack on a one-node Docker Swarm.
stack_gone() { # SECONDS: until the stack's containers and network are gone
    _sg_n=0
    while [ -n "$(docker ps -aq --filter "label=com.docker.stack.namespace=$STACK")" ] ||
        [ -n "$(docker network ls -q --filter "label=com.docker.stack.namespace=$STACK")" ]; do
        [ $_sg_n -lt $(($1 * 2)) ] || return 1
        sleep 0.5
        _sg_n=$((_sg_n + 1))
    done
}
if [ "$(docker info -f '{{.Swarm.LocalNodeState}}')" != active ]; then
    docker swarm init >"$WORK/swarm.log" 2>&1 || docker swarm init --advertise-addr 127.0.0.1 \
        >"$WORK/swarm.log" 2>&1 || fail "docker swarm init failed: $(cat "$WORK/swarm.log")"
    started_swarm=1
fi
free_ports 1
export MOE_HTTP_PORT=$P1
docker stack deploy -c deploy/swarm/stack.yml "$STACK" >"$WORK/stack.log" 2>&1 ||
    fail "docker stack deploy failed: $(tail -n 5 "$WORK/stack.log")"
until_ok 180 "swarm: step 150" step_at_least 150
say "swarm: the stack trains (step $(status_field step))"
rollbacks=$(status_field rollbacks)
victim=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_server" | head -n 1)
docker kill "$victim" >/dev/null || fail "swarm: docker kill failed"
tasks_running() {
    [ "$(docker service ps -q --filter desired-state=running "${STACK}_server" | wc -l)" -eq 2 ] &&
        [ "$(docker service ps --format '{{.CurrentState}}' "${STACK}_server" | grep -c '^Failed')" -ge 1 ]
}
until_ok 60 "swarm: the killed server task rescheduled" tasks_running
until_ok 60 "swarm: a rollback after the kill" rollbacks_above "$rollbacks"
until_ok 90 "swarm: the new server task joined (2 servers alive)" servers_alive 2
say "swarm: a server task killed at step $(status_field step): rescheduled, rolled back, 2 servers again"
worker_done() {
    docker service ps --format '{{.CurrentState}}' "${STACK}_worker" | grep -q '^Complete'
}
until_ok 600 "swarm: the worker task completing" worker_done
if docker service ps --format '{{.CurrentState}}' "${STACK}_worker" | grep -q '^Failed'; then
    fail "swarm: a worker task failed"
fi
export_volume "${STACK}_moe-run" "$WORK/swarm.safetensors"
cmp "$WORK/ref.safetensors" "$WORK/swarm.safetensors" ||
    fail "the swarm run's export differs from launch-local's"
say "swarm: the worker task completed; export byte-identical to launch-local's"
docker service scale -d "${STACK}_coordinator=0" >/dev/null 2>&1 # stops the cluster cleanly
docker stack rm "$STACK" >/dev/null
stack_gone 120 || fail "swarm: the stack's containers are still there 120 s after docker stack rm"
docker volume rm "${STACK}_moe-run" >/dev/null 2>&1

echo "containers: passed in $(elapsed): image, compose (scale up, drain, kill, crash), swarm (kill), exports identical"
