#!/usr/bin/env bash
# The scheduler API: what a patched Swarm or Kubernetes scheduler calls to
# place, scale, move and remove the replicas of a service. This starts a
# mapper on loopback with a throw-away registry, registers three servers,
# and drives the API with curl. No root, no namespaces: the scheduler API
# is the registry's side of scheduling (docs/scheduler.md).
#
#   examples/scheduler/run.sh        (DAOLI=path/to/daoli to skip the build)
set -Eeuo pipefail

for tool in curl; do
	command -v "$tool" >/dev/null || { echo "$(basename "$0"): needs $tool (apt-get install -y curl)" >&2; exit 1; }
done
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/daoli-scheduler.XXXXXX)
MAPPER_PID=
cleanup() {
	local rc=$?
	if [ -n "$MAPPER_PID" ]; then
		kill "$MAPPER_PID" 2>/dev/null || true
		wait "$MAPPER_PID" 2>/dev/null || true
	fi
	[ "$rc" -eq 0 ] || { echo "--- mapper log"; tail -n 20 "$WORK/mapper.log"; } >&2
	rm -rf "$WORK"
	echo "cleanup: stopped the mapper (pid ${MAPPER_PID:-none}), removed $WORK"
	exit "$rc"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

if [ -z "${DAOLI:-}" ]; then
	echo "building daoli (set DAOLI to use a built binary)"
	(cd "$ROOT" && go build -o "$WORK/daoli" ./daoli)
	DAOLI=$WORK/daoli
fi

# A mapper on a free loopback port; its log says which.
"$DAOLI" mapper --listen 127.0.0.1:0 --db "$WORK/registry.db" >"$WORK/mapper.log" 2>&1 &
MAPPER_PID=$!
for _ in $(seq 100); do
	ADDR=$(grep -o 'msg="mapper listening" addr=[0-9.:]*' "$WORK/mapper.log" | sed 's/.*addr=//') || true
	[ -n "$ADDR" ] && break
	sleep 0.05
done
[ -n "$ADDR" ] || fail "the mapper did not start"
export DAOLI_MAPPER=$ADDR
M=http://$ADDR
echo "mapper at $M (pid $MAPPER_PID)"

step() { printf '\n== %s\n' "$*"; }
# api METHOD PATH [BODY]: show the call, print the status and the answer.
api() {
	local method=$1 path=$2 body=${3:-}
	echo "\$ curl -X $method $M$path${body:+ -d '$body'}"
	local args=(-sS -X "$method" -o "$WORK/answer" -w '%{http_code}' "$M$path")
	[ -z "$body" ] || args+=(-H 'Content-Type: application/json' -d "$body")
	STATUS=$(curl "${args[@]}")
	ANSWER=$(cat "$WORK/answer")
	echo "$STATUS $ANSWER"
}
# placements: "name@server" of each replica in the last answer.
placements() { grep -o '"name":"web-[0-9]*","server":"[^"]*"' <<<"$ANSWER" | sed -E 's/"name":"([^"]*)","server":"([^"]*)"/\1@\2/' | paste -sd' ' -; }

step "A network and three servers (server-a already runs two endpoints)"
"$DAOLI" network create blue --subnet 10.1.0.0/24 >/dev/null
for s in a b c; do
	n=$(printf '%d' "'$s")
	"$DAOLI" server add "server-$s" --ip "192.0.2.$((n - 96))" --mac "52:54:00:00:00:0$((n - 96))" >/dev/null
done
for n in db-1 db-2; do
	"$DAOLI" endpoint add --network blue --ip 10.1.0.9 --name "$n" --server server-a >/dev/null
done
"$DAOLI" server ls

SVC=/v1/scheduler/services/blue/10.1.0.5/80
step "Place 3 replicas of 10.1.0.5:80 in failover mode"
api POST "$SVC" '{"name":"web","replicas":3,"mode":"failover","priority":10}'
[ "$STATUS" = 201 ] || fail "place: status $STATUS"
echo "placements: $(placements)"
[ "$(placements)" = "web-1@server-b web-2@server-c web-3@server-a" ] || fail "placements $(placements)"

step "The same call again is a no-op (200, same placements); another one is refused"
api POST "$SVC" '{"name":"web","replicas":3,"mode":"failover","priority":10}'
[ "$STATUS" = 200 ] || fail "repeat: status $STATUS"
api POST "$SVC" '{"name":"web","replicas":3,"mode":"balance","priority":10}'
[ "$STATUS" = 409 ] || fail "conflicting place: status $STATUS"

step "Scale to 5, then back to 2 (the newest replicas go first)"
api POST "$SVC/scale" '{"replicas":5}'
echo "placements: $(placements)"
api POST "$SVC/scale" '{"replicas":2}'
echo "placements: $(placements)"
[ "$(placements)" = "web-1@server-b web-2@server-c" ] || fail "after scaling down: $(placements)"

step "Move web-1 to the best other server (it keeps its identity, gets a new wire block, and is down until its container runs there)"
api POST "$SVC/move" '{"replica":"web-1"}'
echo "placements: $(placements)"
[ "$(placements)" = "web-1@server-a web-2@server-c" ] || fail "after the move: $(placements)"
echo "\$ daoli service ls"
"$DAOLI" service ls

step "Errors name the field"
api POST /v1/scheduler/services/blue/10.1.0.5/80 '{"name":"web","replicas":"two"}'
api POST /v1/scheduler/services/blue/10.1.0.77/80 '{"name":"api","replicas":9,"constraints":{"max_per_server":2}}'
[ "$STATUS" = 409 ] || fail "over capacity: status $STATUS"

step "Remove the service"
api DELETE "$SVC"
[ "$STATUS" = 200 ] || fail "delete: status $STATUS"
api DELETE "$SVC"
[ "$STATUS" = 404 ] || fail "second delete: status $STATUS"
echo "\$ daoli endpoint ls"
"$DAOLI" endpoint ls
echo
echo "PASS: placed, scaled, moved and removed web on 10.1.0.5:80"
