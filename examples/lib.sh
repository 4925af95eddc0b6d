# shellcheck shell=bash
# Shared by the example stories: builds a throw-away world of network
# namespaces with iproute2 and the daoli command, and removes all of it on
# exit, on error and on Ctrl-C.
#
#   fabric namespace    PREFIX-fabric: bridge br0, 192.0.2.250/24 (the mapper)
#                          |  s1, s2, ...
#   server namespaces   PREFIX-server-N: "uplink" 192.0.2.N/24, one agent each
#                          |  veths the agents create
#   containers          PREFIX-NAME: empty namespaces that "daoli attach" plumbs
#
# A script sources it, then calls dl_world N. Everything gets a random
# prefix (dlex + 6 hex digits), so runs never clash. Traffic stays inside
# these namespaces; the root namespace's interfaces, routes and firewall
# are not touched. Processes started here are killed by their PIDs.
#
# Environment:
#   DAOLI   the daoli binary (default: go build ./daoli into a temp dir)
#   DL_REGISTRY=etcd  keep the registry in 3 etcd members with 2 mappers
#           (192.0.2.250 and .251) instead of one mapper on a bbolt file
#   ETCD    the etcd binary for DL_REGISTRY=etcd (default: the one this
#           module builds, scripts/setup.sh etcd)
#   SHORT=1 fewer iterations and shorter waits (CI)
#   DAOLI_EXAMPLE_LOGS=DIR  keep the logs (agents, mapper, apps, clients) there

set -Eeuo pipefail
shopt -s inherit_errexit

if [ "$(id -u)" -ne 0 ]; then
	echo "$(basename "$0"): needs root: it creates network namespaces, veths and a bpf filesystem, and loads eBPF programs. Run it with sudo." >&2
	exit 1
fi
for tool in ip mount umount; do
	if ! command -v "$tool" >/dev/null; then
		echo "$(basename "$0"): needs $tool (apt-get install -y iproute2 mount)" >&2
		exit 1
	fi
done

DL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DL_PREFIX=dlex$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
DL_WORK=$(mktemp -d "/tmp/$DL_PREFIX.XXXXXX")
DL_FABRIC=$DL_PREFIX-fabric
DL_MAPPER_IP=192.0.2.250
DL_BPFFS=
DL_PIDS=()         # every process started in the background, in order
declare -A DL_PID  # name -> PID
DL_NETNS=()        # every namespace created, in order
DL_SERVERS=0
DL_STEP=0
DL_INTERRUPTED=
SHORT=${SHORT:-}
mkdir -p "$DL_WORK/logs" "$DL_WORK/run"
# The CLI finds the mapper and the agents' sockets through these.
export DAOLI_MAPPER=$DL_MAPPER_IP:9470
export DAOLI_RUN_DIR=$DL_WORK/run

# dl_cleanup kills what was started (by PID), deletes the namespaces,
# unmounts the bpf filesystem and removes the temp dir. It keeps the exit
# status, and on failure shows the end of every log first.
dl_cleanup() {
	local rc=$?
	set +e
	trap - ERR
	trap '' INT TERM
	if [ -n "${DAOLI_EXAMPLE_LOGS:-}" ]; then
		mkdir -p "$DAOLI_EXAMPLE_LOGS" && cp "$DL_WORK"/logs/*.log "$DAOLI_EXAMPLE_LOGS"/
	fi
	# Ctrl-C reaches the foreground command, the daoli processes in the
	# background too, and bash only when the foreground one died of it: the
	# mapper's log tells.
	if [ "$rc" -ne 0 ] && grep -qs 'reason="interrupt signal received"' "$DL_WORK/logs/mapper.log"; then
		DL_INTERRUPTED=1
		rc=130
	fi
	if [ "$rc" -ne 0 ] && [ -z "$DL_INTERRUPTED" ]; then
		local log
		for log in "$DL_WORK"/logs/*.log; do
			[ -s "$log" ] || continue
			echo "--- last lines of $(basename "$log")" >&2
			tail -n 15 "$log" >&2
		done
	fi
	local pid i alive
	for ((i = ${#DL_PIDS[@]} - 1; i >= 0; i--)); do
		kill -TERM "${DL_PIDS[i]}" 2>/dev/null
	done
	for _ in $(seq 50); do
		alive=
		for pid in "${DL_PIDS[@]}"; do
			if kill -0 "$pid" 2>/dev/null; then alive=1; fi
		done
		[ -n "$alive" ] || break
		sleep 0.1
	done
	for pid in "${DL_PIDS[@]}"; do
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	local ns removed=0
	for ((i = ${#DL_NETNS[@]} - 1; i >= 0; i--)); do
		ns=${DL_NETNS[i]}
		if [ -e "/run/netns/$ns" ]; then
			ip netns del "$ns" && removed=$((removed + 1))
		fi
	done
	if [ -n "$DL_BPFFS" ]; then
		umount "$DL_BPFFS" 2>/dev/null || umount -l "$DL_BPFFS"
		rmdir "$DL_BPFFS"
	fi
	rm -rf "$DL_WORK"
	local left
	left=$(ip netns list | grep -c "^$DL_PREFIX-") || true
	[ -z "$DL_INTERRUPTED" ] || echo "interrupted" >&2
	if [ "$left" -ne 0 ] || grep -q "$DL_PREFIX" /proc/mounts; then
		echo "cleanup: $DL_PREFIX left $left namespaces or a mount behind" >&2
		[ "$rc" -ne 0 ] || rc=1
	else
		echo "cleanup: stopped ${#DL_PIDS[@]} processes, deleted $removed namespaces, unmounted bpffs ($DL_PREFIX)"
	fi
	exit "$rc"
}
trap dl_cleanup EXIT
trap 'DL_INTERRUPTED=1; exit 130' INT
trap 'DL_INTERRUPTED=1; exit 143' TERM
trap 'echo "${BASH_SOURCE[0]##*/}: line $LINENO: \"$BASH_COMMAND\" failed" >&2' ERR

# dl_step prints a numbered step.
dl_step() {
	DL_STEP=$((DL_STEP + 1))
	printf '\n%d. %s\n' "$DL_STEP" "$*"
}

# dl_fail says which promise did not hold and exits 1 (cleanup follows).
dl_fail() {
	echo "FAIL: $*" >&2
	exit 1
}

# dl_short A B: A normally, B with SHORT=1.
dl_short() {
	if [ -n "$SHORT" ]; then echo "$2"; else echo "$1"; fi
}

# dl_now: milliseconds since the epoch, as "daoli app ask" stamps lines.
dl_now() { date +%s%3N; }

# dl_ns NAME: the namespace of container, server or fabric NAME.
dl_ns() { echo "$DL_PREFIX-$1"; }

# dl_in NAME CMD...: run CMD in namespace NAME (container, server-N or
# fabric) and wait for it.
dl_in() {
	local ns
	ns=$(dl_ns "$1")
	shift
	ip netns exec "$ns" "$@"
}

# dl_bg NAME NS CMD...: start CMD in namespace NS (a container, server-N
# or fabric) in the background, output to logs/NAME.log, and remember its
# PID as NAME. ip netns exec execs CMD, so the PID is CMD's own.
dl_bg() {
	local name=$1 ns
	ns=$(dl_ns "$2")
	shift 2
	ip netns exec "$ns" "$@" >"$DL_WORK/logs/$name.log" 2>&1 &
	DL_PID[$name]=$!
	DL_PIDS+=("$!")
}

# dl_log NAME: the log file of background process NAME.
dl_log() { echo "$DL_WORK/logs/$1.log"; }

# dl_stop NAME [SIGNAL]: stop background process NAME by its PID (TERM by
# default) and wait for it.
dl_stop() {
	local pid=${DL_PID[$1]}
	kill "-${2:-TERM}" "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

# dl_netns NAME: create an empty namespace PREFIX-NAME, with lo up.
dl_netns() {
	local ns
	ns=$(dl_ns "$1")
	ip netns add "$ns"
	DL_NETNS+=("$ns")
	ip -n "$ns" link set lo up
}

# dl_daoli ARGS...: the daoli CLI, run in the fabric namespace where the
# mapper is reachable.
dl_daoli() { ip netns exec "$DL_FABRIC" "$DAOLI" "$@"; }

# dl_show ARGS...: print "$ daoli ARGS" and run it; the agent commands
# (attach, move, detach, status) go over the agents' unix sockets, the
# others to the mapper on the fabric.
dl_show() {
	echo "\$ daoli $*"
	dl_daoli "$@"
}

# dl_wait WHAT SECONDS CMD...: retry CMD every 50 ms until it succeeds, or
# fail naming WHAT.
dl_wait() {
	local what=$1 secs=$2 deadline
	shift 2
	deadline=$(($(dl_now) + secs * 1000))
	until "$@" >/dev/null 2>&1; do
		if [ "$(dl_now)" -gt "$deadline" ]; then
			dl_fail "$what did not happen within ${secs}s"
		fi
		sleep 0.05
	done
}

# dl_world N: the fabric, a bpf filesystem, the mapper, network "blue"
# (10.1.0.0/24), and N servers server-1..N (192.0.2.1..N) with an agent each.
dl_world() {
	local n=$1 i
	if [ -z "${DAOLI:-}" ]; then
		command -v go >/dev/null || dl_fail "set DAOLI to a daoli binary, or install Go to build one"
		echo "building daoli (set DAOLI to use a built binary)"
		(cd "$DL_ROOT" && go build -o "$DL_WORK/daoli" ./daoli)
		DAOLI=$DL_WORK/daoli
	fi
	[ -x "$DAOLI" ] || dl_fail "DAOLI=$DAOLI is not an executable"
	DAOLI=$(cd "$(dirname "$DAOLI")" && pwd)/$(basename "$DAOLI")

	# The agents pin their dataplanes here; it must outlive them, so it is
	# mounted in the root mount namespace, where every "ip netns exec" sees it.
	DL_BPFFS=$(mktemp -d "/tmp/$DL_PREFIX-bpffs.XXXXXX")
	if ! mount -t bpf bpf "$DL_BPFFS"; then
		rmdir "$DL_BPFFS"
		DL_BPFFS=
		dl_fail "cannot mount a bpf filesystem"
	fi

	dl_netns fabric
	ip -n "$DL_FABRIC" link add br0 type bridge
	ip -n "$DL_FABRIC" link set br0 up
	ip -n "$DL_FABRIC" addr add "$DL_MAPPER_IP/24" dev br0
	for ((i = 1; i <= n; i++)); do
		local s
		s=$(dl_ns "server-$i")
		dl_netns "server-$i"
		ip -n "$s" link add uplink type veth peer name "s$i" netns "$DL_FABRIC"
		ip -n "$DL_FABRIC" link set "s$i" master br0 up
		ip -n "$s" addr add "192.0.2.$i/24" dev uplink
		ip -n "$s" link set uplink up
	done
	DL_SERVERS=$n
	echo "world: prefix $DL_PREFIX, bpffs $DL_BPFFS, $n servers 192.0.2.1-$n, mapper $DAOLI_MAPPER"

	if [ "${DL_REGISTRY:-}" = etcd ]; then
		dl_registry_etcd
	else
		dl_bg mapper fabric "$DAOLI" mapper --listen "$DAOLI_MAPPER" --insecure --db "$DL_WORK/registry.db"
	fi
	dl_wait "the mapper answering" 10 dl_daoli network ls
	dl_daoli network create blue --subnet 10.1.0.0/24 >/dev/null
	for ((i = 1; i <= n; i++)); do
		dl_bg "agent-server-$i" "server-$i" "$DAOLI" agent --uplink uplink --name "server-$i" \
			--mapper "$DAOLI_MAPPER" --bpffs "$DL_BPFFS/server-$i" --run-dir "$DAOLI_RUN_DIR"
	done
	for ((i = 1; i <= n; i++)); do
		dl_wait "the agent of server-$i answering" 15 "$DAOLI" status --server "server-$i" --timeout 1s
	done
	# A change log follower: dl_settle reads revisions from it.
	dl_bg watch fabric "$DAOLI" watch -o json
}

# DL_ETCD_MEMBERS are the etcd members of DL_REGISTRY=etcd, m1..m3, all on
# the fabric's first address; member mN serves clients on port 2N79.
DL_ETCD_MEMBERS=(m1 m2 m3)
dl_etcd_url() { echo "http://$DL_MAPPER_IP:2${1#m}79"; }

# dl_registry_etcd starts three etcd members and two mappers on them, in
# the fabric namespace; the CLI and the agents are given both mappers.
dl_registry_etcd() {
	if [ -z "${ETCD:-}" ]; then
		ETCD=$(cd "$DL_ROOT" && go tool -n go.etcd.io/etcd/server/v3) || dl_fail "set ETCD to an etcd binary, or install Go to build one"
	fi
	local m initial=() urls=()
	for m in "${DL_ETCD_MEMBERS[@]}"; do
		initial+=("$m=http://$DL_MAPPER_IP:2${m#m}80")
		urls+=("$(dl_etcd_url "$m")")
	done
	for m in "${DL_ETCD_MEMBERS[@]}"; do
		dl_bg "etcd-$m" fabric "$ETCD" --name "$m" --data-dir "$DL_WORK/etcd/$m" \
			--listen-client-urls "$(dl_etcd_url "$m")" --advertise-client-urls "$(dl_etcd_url "$m")" \
			--listen-peer-urls "http://$DL_MAPPER_IP:2${m#m}80" --initial-advertise-peer-urls "http://$DL_MAPPER_IP:2${m#m}80" \
			--initial-cluster "$(IFS=,; echo "${initial[*]}")" --initial-cluster-token "$DL_PREFIX" \
			--max-txn-ops 20000 --max-request-bytes 33554432 \
			--auto-compaction-mode revision --auto-compaction-retention 100000 --log-level error
	done
	for m in "${DL_ETCD_MEMBERS[@]}"; do
		dl_wait "etcd member $m healthy" 20 dl_etcd_healthy "$m"
	done
	DL_ETCD=$(IFS=,; echo "${urls[*]}")
	ip -n "$DL_FABRIC" addr add 192.0.2.251/24 dev br0
	dl_bg mapper fabric "$DAOLI" mapper --listen "$DL_MAPPER_IP:9470" --insecure --etcd "$DL_ETCD"
	dl_bg mapper-2 fabric "$DAOLI" mapper --listen 192.0.2.251:9470 --insecure --etcd "$DL_ETCD"
	export DAOLI_MAPPER=$DL_MAPPER_IP:9470,192.0.2.251:9470
	echo "registry: etcd members ${DL_ETCD_MEMBERS[*]} at $DL_ETCD; mappers $DAOLI_MAPPER"
}

# dl_etcd_http MEMBER METHOD PATH: an HTTP request to etcd member MEMBER's
# gateway, from the fabric (bash's /dev/tcp: no curl needed); prints the body.
dl_etcd_http() {
	local port=2${1#m}79
	ip netns exec "$DL_FABRIC" bash -c '
		exec 3<>"/dev/tcp/$0/$1" || exit 1
		printf "%s %s HTTP/1.0\r\nHost: %s\r\nContent-Length: 2\r\n\r\n{}" "$2" "$3" "$0" >&3
		sed "1,/^\r$/d" <&3' "$DL_MAPPER_IP" "$port" "$2" "$3"
}
dl_etcd_healthy() { dl_etcd_http "$1" GET /health | grep -q '"health":"true"'; }

# dl_etcd_leader: the member that leads the etcd cluster now.
dl_etcd_leader() {
	local m status id leader
	for m in "${DL_ETCD_MEMBERS[@]}"; do
		status=$(dl_etcd_http "$m" POST /v3/maintenance/status 2>/dev/null) || continue
		id=$(echo "$status" | grep -o '"member_id":"[0-9]*"' | grep -o '[0-9]*') || continue
		leader=$(echo "$status" | grep -o '"leader":"[0-9]*"' | grep -o '[0-9]*') || continue
		if [ "$id" = "$leader" ]; then
			echo "$m"
			return
		fi
	done
	return 1
}

# dl_kill_master SECONDS: the failover stories' kill. SIGKILL the master's
# app and delete its namespace, as a container dies; set killed (unix ms);
# wait until the backup gave AFTER answers to each of the clients ask-tcp
# and ask-udp, at most SECONDS after the kill; then stop the clients.
dl_kill_master() {
	local secs=$1 deadline p
	killed=$(dl_now)
	dl_stop master-app KILL
	ip netns del "$(dl_ns master)"
	echo "killed at $killed (unix ms); waiting for the backup to answer on $SVC"
	deadline=$((killed + secs * 1000))
	for p in tcp udp; do
		until [ "$(grep -c ' ok backup saw ' "$(dl_log "ask-$p")")" -ge "$AFTER" ]; do
			[ "$(dl_now)" -le "$deadline" ] || dl_fail "$p: the backup did not answer (enough) within $secs s of the kill"
			sleep 0.05
		done
	done
	dl_stop ask-tcp
	dl_stop ask-udp
}

# dl_container NAME SERVER-N ARGS...: an empty container namespace
# PREFIX-NAME, attached to network blue through the agent of server-N with
# "daoli attach --name NAME ARGS".
dl_container() {
	local name=$1 server=$2
	shift 2
	dl_netns "$name"
	echo "\$ daoli attach --server server-$server --netns /run/netns/$(dl_ns "$name") --network blue --name $name $*"
	"$DAOLI" attach --server "server-$server" --netns "/run/netns/$(dl_ns "$name")" \
		--network blue --name "$name" "$@"
}

# dl_serve CONTAINER PORT LABEL: start "daoli app serve" in CONTAINER,
# answering as LABEL, with the PID remembered as CONTAINER-app.
dl_serve() {
	dl_bg "$1-app" "$1" "$DAOLI" app serve --port "$2" --name "$3"
}

# dl_answers FROM TO PROTO LABEL: ask once from container FROM; true when
# LABEL answered.
dl_answers() {
	dl_in "$1" "$DAOLI" app ask --to "$2" --proto "$3" --count 1 --timeout 300ms | grep -q " ok $4 saw "
}

# dl_wait_answer FROM TO PROTO LABEL: wait until LABEL answers FROM at TO.
dl_wait_answer() {
	dl_wait "$4 answering $1 at $2/$3" 15 dl_answers "$@"
}

# dl_applied SERVER-N: the registry revision the agent has programmed.
dl_applied() {
	"$DAOLI" status --server "server-$1" -o json --timeout 2s | grep -o '"applied": *[0-9]*' | grep -o '[0-9]*$'
}

# dl_settle REGEX: wait until the change log shows a change matching REGEX
# (a line of "daoli watch -o json") and every agent has programmed it.
dl_settle() {
	local re=$1 rev='' deadline i
	deadline=$(($(dl_now) + 15000))
	while :; do
		rev=$(grep -E "$re" "$(dl_log watch)" | tail -n 1 | grep -o '"revision":[0-9]*' | grep -o '[0-9]*$') || true
		[ -z "$rev" ] || break
		[ "$(dl_now)" -le "$deadline" ] || dl_fail "no change matching $re in the change log"
		sleep 0.05
	done
	for ((i = 1; i <= DL_SERVERS; i++)); do
		[ -e "/run/netns/$(dl_ns "server-$i")" ] || continue
		until [ "$(dl_applied "$i" || echo 0)" -ge "$rev" ]; do
			[ "$(dl_now)" -le "$deadline" ] || dl_fail "the agent of server-$i did not program revision $rev"
			sleep 0.05
		done
	done
}

# dl_wait_listen CONTAINER PORT: wait until something in CONTAINER listens
# on TCP PORT.
dl_wait_listen() {
	dl_wait "$1 listening on $2" 10 dl_listening "$1" "$2"
}
dl_listening() {
	dl_in "$1" ss -Hltn "sport = :$2" | grep -q LISTEN
}
