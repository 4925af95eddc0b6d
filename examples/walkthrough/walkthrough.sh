#!/usr/bin/env bash
# The registry in five minutes: networks, servers, endpoints that share one
# IP, their 6-tuples, a move, and a mapper restart that loses nothing.
# Uses only the documented CLI. Needs no root: it touches no network.
#
#   walkthrough.sh [PATH-TO-DAOLI]    (default: builds ./daoli into a temp dir)
set -euo pipefail
cd "$(dirname "$0")/../.."

work=$(mktemp -d)
mapper_pid=
cleanup() {
	if [ -n "$mapper_pid" ]; then kill "$mapper_pid" 2>/dev/null && wait "$mapper_pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

daoli=${1:-}
if [ -z "$daoli" ]; then
	daoli="$work/daoli"
	go build -o "$daoli" ./daoli
fi

# The mapper takes a free loopback port and logs it: "mapper listening addr=…".
start_mapper() {
	: >"$work/mapper.log"
	"$daoli" mapper --listen 127.0.0.1:0 --db "$work/registry.db" 2>"$work/mapper.log" &
	mapper_pid=$!
	for _ in $(seq 200); do
		addr=$(grep -o 'msg="mapper listening" addr=[0-9.:]*' "$work/mapper.log" | sed 's/.*addr=//' || true)
		if [ -n "$addr" ]; then
			export DAOLI_MAPPER="$addr"
			return
		fi
		sleep 0.05
	done
	echo "mapper did not start:" >&2
	cat "$work/mapper.log" >&2
	exit 1
}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ daoli %s\n' "$*"; "$daoli" "$@"; }

step "Start a mapper: the registry, one bbolt file"
start_mapper
echo "mapper pid $mapper_pid on $DAOLI_MAPPER, registry $work/registry.db"

step "A virtual network, and two servers (normally each agent registers its own)"
run network create blue --subnet 10.1.0.0/24
run server add server-a --ip 192.0.2.1 --mac 52:54:00:00:00:0a
run server add server-b --ip 192.0.2.2 --mac 52:54:00:00:00:0b

step "Three replicas of one web service share 10.1.0.5:80"
run endpoint add --network blue --ip 10.1.0.5 --name web-1 --server server-a --port 80/tcp
run endpoint add --network blue --ip 10.1.0.5 --name web-2 --server server-b --port 80/tcp
run endpoint add --network blue --ip 10.1.0.5 --name web-3 --server server-b --port 80/tcp

step "A database with a master and a backup, same IP:Port"
run endpoint add --network blue --ip 10.1.0.9 --name db-master --server server-a --port 5432/tcp --mode failover --priority 100
run endpoint add --network blue --ip 10.1.0.9 --name db-backup --server server-b --port 5432/tcp --mode failover --priority 10

step "Every endpoint, and the 6-tuples of one: where (server half) and who (identity half)"
run endpoint ls
run endpoint show web-2

step "Services are derived: one per (network, IP, Port, protocol)"
run service ls

step "Move web-1 to server-b: identity stays, only the server half changes"
run endpoint move web-1 --to server-b

step "Bad input is refused with a message that names the problem"
run endpoint add --network blue --ip 10.2.0.5 --server server-a --port 80/tcp || true
run endpoint add --network blue --ip 10.1.0.5 --server server-a --port 80/tcp --mode failover || true

step "Restart the mapper: everything is still there"
kill -TERM "$mapper_pid"
wait "$mapper_pid" || true
mapper_pid=
start_mapper
run endpoint ls
run service ls
echo
echo "Done. Everything this walkthrough started is stopped and removed."
