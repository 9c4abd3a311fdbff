#!/bin/sh
# Health check of a container of deploy/Dockerfile (docker-compose.yml,
# the swarm stack), by what the coordinator knows:
#   moe-healthcheck coordinator          its HTTP API answers
#   moe-healthcheck server [ENDPOINT]    the coordinator lists ENDPOINT (default
#                                        tcp://$(hostname -i):5600) as alive
#   moe-healthcheck worker [RANK]        the coordinator lists worker RANK (0) as alive
# MOE_COORDINATOR_HTTP is the coordinator's HTTP address (coordinator:8780;
# 127.0.0.1:8780 for the coordinator itself). A server or worker fails
# only when the coordinator answers without listing it alive: while the
# coordinator is away they wait for it, and so does their health. The
# services allow a server 1 minute of such answers and a worker 3 (swarm
# replaces an unhealthy task): a worker reports once a step, so a long
# validation pass, or a step waiting timeout_ms for a server that died,
# keeps it silent for a while.
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
    match="\"rank\":${2:-${MOE_RANK:-0}}(,|\$)" ;;
*)
    echo "usage: moe-healthcheck coordinator | server [ENDPOINT] | worker [RANK]" >&2
    exit 2 ;;
esac
json=$(moectl --http "$http" --json status 2>/dev/null) || exit 0
# One line per member object (they hold no nested objects).
echo "$json" | tr -d ' \n' | tr '}' '\n' | grep -E "$match" | grep -q '"alive":true'
