#!/bin/sh
# Health check of a container of deploy/Dockerfile (docker-compose.yml,
# the swarm stack), by what the coordinator knows:
#   moe-healthcheck coordinator          its HTTP API answers
#   moe-healthcheck server [ENDPOINT]    the coordinator lists ENDPOINT (default
#                                        tcp://$(hostname -i):5600) as alive
#   moe-healthcheck worker [RANK]        the worker (process 1) used CPU since the
#                                        last check, or the coordinator lists
#                                        worker RANK (0) as alive
# MOE_COORDINATOR_HTTP is the coordinator's HTTP address (coordinator:8780;
# 127.0.0.1:8780 for the coordinator itself). A server or worker fails
# only when the coordinator answers without listing it alive: while the
# coordinator is away they wait for it, and so does their health. A worker
# reports to the coordinator once a step, so one that computes without
# reporting (a validation pass, a checkpoint) counts by its CPU time; one
# that waits for a server that died is silent for timeout_ms. The services
# allow a minute of failures (swarm and Kubernetes replace an unhealthy
# task).
set -u
role=${1:-}
http=${MOE_COORDINATOR_HTTP:-coordinator:8780}
case "$role" in
coordinator)
    exec moectl --http "${MOE_COORDINATOR_HTTP:-127.0.0.1:8780}" status >/dev/null ;;
server)
    ep=${2:-tcp://$(hostname -i | cut -d' ' -f1):5600}
    match="\"endpoint\":\"$ep\"" ;;
worker)
    # busy (CPU time of process 1 changed since the last check): healthy
    cpu=$(awk '{ print $14 + $15 }' /proc/1/stat 2>/dev/null)
    state=${TMPDIR:-/tmp}/.moe-health-cpu
    last=$(cat "$state" 2>/dev/null)
    echo "$cpu" >"$state" 2>/dev/null
    [ -n "$cpu" ] && [ "$cpu" != "$last" ] && exit 0
    match="\"rank\":${2:-${MOE_RANK:-0}}(,|\$)" ;;
*)
    echo "usage: moe-healthcheck coordinator | server [ENDPOINT] | worker [RANK]" >&2
    exit 2 ;;
esac
json=$(moectl --http "$http" --json status 2>/dev/null) || exit 0
# One line per member object (they hold no nested objects).
echo "$json" | tr -d ' \n' | tr '}' '\n' | grep -E "$match" | grep -q '"alive":true'
