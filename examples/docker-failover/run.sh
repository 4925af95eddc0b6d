#!/usr/bin/env bash
# Docker failover: two Docker containers on two servers serve the same
# IP:Port, master and backup, declared with driver options (failover mode,
# priorities). Client containers keep asking. `docker kill` the master; the
# backup answers on the same IP:Port and the clients never see an address
# change. Prints the measured gap.
#
#   fabric namespace   br0 192.0.2.250 (the mapper)
#      |          |
#   server-1      server-2          each: a daoli agent, daoli docker-plugin,
#   dockerd       dockerd           and a dockerd of its own (own mount
#   master        backup            namespace, state in a temp dir, no
#   client-tcp                      bridge, no iptables)
#   client-udp
#
#   sudo examples/docker-failover/run.sh    (SHORT=1 for a quicker run; DAOLI=path)
#
# Needs Debian's docker.io (dockerd, docker) besides what ../lib.sh needs.
# Everything it starts it stops by PID; it removes its containers, networks,
# cgroups and plugin sockets, also on error and Ctrl-C.
# shellcheck source=examples/lib.sh
source "$(dirname "$0")/../lib.sh"

for tool in dockerd unshare nsenter; do
	command -v "$tool" >/dev/null || dl_fail "needs $tool (apt-get install -y docker.io util-linux)"
done
# Debian's CLI matches Debian's daemon; another one on PATH may be newer.
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=$(command -v docker) || dl_fail "needs the docker CLI (apt-get install -y docker.io)"

VIP=10.1.0.9
SVC=$VIP:8080
IMAGE=daoli-example:latest
BEFORE_S=$(dl_short 2 1)  # seconds of traffic before the kill
AFTER=$(dl_short 50 15)   # answers from the backup to see before stopping
TIMEOUT=$(dl_short 100ms 250ms)
SERVERS=2
DX_DOCKERD=()   # dockerd PIDs, by server
DX_CREATED=()   # directories outside DL_WORK that this run created
for d in /run/docker/plugins /run/docker /run/containerd/s /run/containerd; do
	[ -e "$d" ] || DX_CREATED+=("$d")
done

# dx I ARGS...: the docker CLI of server-I's dockerd.
dx() {
	local i=$1
	shift
	"$DOCKER" -H "unix://$DL_WORK/docker-$i.sock" "$@"
}
dx_plugin() { echo "daoli-$DL_PREFIX-$1"; }

# dx_cleanup removes what Docker made while the plugins still serve, stops
# the dockerds (their containerd with them) and the plugins, removes their
# cgroups and the directories this run created; then lib.sh's cleanup.
dx_cleanup() {
	local rc=$? i pid
	set +e
	trap '' INT TERM
	for ((i = 1; i <= ${#DX_DOCKERD[@]}; i++)); do
		pid=${DX_DOCKERD[i - 1]}
		kill -0 "$pid" 2>/dev/null || continue
		ids=$(dx "$i" ps -aq 2>/dev/null)
		[ -z "$ids" ] || dx "$i" rm -f $ids >/dev/null 2>&1
		dx "$i" network rm blue >/dev/null 2>&1
	done
	for pid in "${DX_DOCKERD[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	for pid in "${DX_DOCKERD[@]}"; do
		for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$pid" 2>/dev/null; then
			echo "dockerd $pid did not stop in 20 s; killing it" >&2
			kill -KILL "$pid"
		fi
		wait "$pid" 2>/dev/null
	done
	for ((i = 1; i <= ${#DX_DOCKERD[@]}; i++)); do
		[ -z "${DL_PID[plugin-$i]:-}" ] || dl_stop "plugin-$i"
		for d in /sys/fs/cgroup/"$DL_PREFIX-$i" /sys/fs/cgroup/*/"$DL_PREFIX-$i"; do
			[ ! -d "$d" ] || rmdir "$d" 2>/dev/null || echo "cleanup: could not remove cgroup $d" >&2
		done
	done
	for d in "${DX_CREATED[@]}"; do rmdir "$d" 2>/dev/null; done
	(exit "$rc")
	dl_cleanup
}
trap dx_cleanup EXIT

dl_step "A world of $SERVERS servers, each with a daoli agent; the mapper on the fabric"
dl_world "$SERVERS"

dl_step "On each server: daoli docker-plugin and a dockerd of its own"
mkdir -p "$DL_WORK/image"
# The image is FROM scratch: its daoli must be static.
if ldd "$DAOLI" >/dev/null 2>&1; then
	command -v go >/dev/null || dl_fail "DAOLI=$DAOLI is linked dynamically; give a static one (CGO_ENABLED=0 go build ./daoli)"
	echo "building a static daoli for the image (DAOLI is linked dynamically)"
	(cd "$DL_ROOT" && CGO_ENABLED=0 go build -o "$DL_WORK/image/daoli" ./daoli)
else
	cp "$DAOLI" "$DL_WORK/image/daoli"
fi
printf 'FROM scratch\nCOPY daoli /daoli\nENTRYPOINT ["/daoli"]\n' >"$DL_WORK/image/Dockerfile"
for ((i = 1; i <= SERVERS; i++)); do
	echo "\$ daoli docker-plugin --name $(dx_plugin "$i") --server server-$i --docker-host unix://$DL_WORK/docker-$i.sock &   (in server-$i)"
	dl_bg "plugin-$i" "server-$i" "$DAOLI" docker-plugin --name "$(dx_plugin "$i")" --server "server-$i" \
		--mapper "$DAOLI_MAPPER" --run-dir "$DAOLI_RUN_DIR" --state-dir "$DL_WORK/plugin-$i" \
		--docker-host "unix://$DL_WORK/docker-$i.sock"
	# nsenter, not ip netns exec: that one remounts /sys and so hides the
	# cgroup filesystem dockerd needs. unshare gives dockerd a mount
	# namespace of its own, so its mounts go with it.
	unshare --mount --propagation slave nsenter --net="/run/netns/$(dl_ns "server-$i")" -- \
		dockerd --data-root "$DL_WORK/docker-$i/data" --exec-root "$DL_WORK/docker-$i/exec" \
		--pidfile "$DL_WORK/docker-$i/docker.pid" -H "unix://$DL_WORK/docker-$i.sock" \
		--iptables=false --ip6tables=false --bridge=none --cgroup-parent "/$DL_PREFIX-$i" \
		>"$DL_WORK/logs/dockerd-$i.log" 2>&1 &
	DX_DOCKERD+=("$!")
	DL_PIDS+=("$!")
done
for ((i = 1; i <= SERVERS; i++)); do
	dl_wait "dockerd of server-$i answering" 30 dx "$i" version
	dx "$i" build -q -t "$IMAGE" "$DL_WORK/image" >/dev/null
	echo "\$ docker network create -d $(dx_plugin "$i") --ipam-driver $(dx_plugin "$i") --subnet 10.1.0.0/24 blue   (server-$i)"
	dx "$i" network create -d "$(dx_plugin "$i")" --ipam-driver "$(dx_plugin "$i")" --subnet 10.1.0.0/24 blue >/dev/null
done
echo "server-1 and server-2 run $(dx 1 version -f '{{.Server.Version}}') with the image $IMAGE: the static daoli binary, nothing else"

dl_step "master on server-1 (priority 100) and backup on server-2 (priority 10) both take $SVC"
run_replica() {
	local i=$1 name=$2 prio=$3
	local net="name=blue,driver-opt=daoli.service=web,driver-opt=daoli.mode=failover,driver-opt=daoli.priority=$prio"
	echo "\$ docker run -d --name $name --network $net --ip $VIP --expose 8080/tcp --expose 8080/udp $IMAGE app serve --port 8080 --name $name   (server-$i)"
	dx "$i" run -d --name "$name" --network "$net" --ip "$VIP" --expose 8080/tcp --expose 8080/udp \
		"$IMAGE" app serve --port 8080 --name "$name" >/dev/null
}
run_replica 1 master 100
run_replica 2 backup 10
dl_show service ls
# The agents program what the plugins registered; wait until both have.
dl_settle '"name":"web\.'

dl_step "Two clients on server-1 ask $SVC every 10 ms (waiting $TIMEOUT for each answer): one over TCP (reconnecting when its connection breaks), one from one UDP socket"
for p in tcp udp; do
	ip=10.1.0.5
	[ "$p" = tcp ] || ip=10.1.0.6
	echo "\$ docker run -d --name client-$p --network blue --ip $ip $IMAGE app ask --to $SVC --proto $p --keep --count 0 --interval 10ms --timeout $TIMEOUT   (server-1)"
	dx 1 run -d --name "client-$p" --network blue --ip "$ip" "$IMAGE" \
		app ask --to "$SVC" --proto "$p" --keep --count 0 --interval 10ms --timeout "$TIMEOUT" >/dev/null
done
# What a client knows of the network: its address, MAC and gateway, as
# Docker reports them (the image has no ip command to ask from inside).
view() {
	dx 1 inspect -f '{{range $n, $s := .NetworkSettings.Networks}}{{$n}}: ip {{$s.IPAddress}}/{{$s.IPPrefixLen}} mac {{$s.MacAddress}} gateway {{$s.Gateway}}{{end}}' "client-$1"
}
view_before="$(view tcp); $(view udp)"
logs() { dx 1 logs "client-$1" 2>&1; }
deadline=$(($(dl_now) + 15000))
for p in tcp udp; do
	until logs "$p" | grep -q ' ok master saw '; do
		[ "$(dl_now)" -le "$deadline" ] || { logs "$p" | tail -n 5; dl_fail "$p: the master never answered"; }
		sleep 0.05
	done
done
sleep "$BEFORE_S"
for p in tcp udp; do
	echo "$p: $(logs "$p" | grep -c ' ok master ') answers from the master so far, the last: $(logs "$p" | grep ' ok master ' | tail -n 1)"
done

dl_step "docker kill master"
killed=$(dl_now)
echo "\$ docker kill master   (server-1)"
dx 1 kill master >/dev/null
echo "killed at $killed (unix ms); waiting for the backup to answer on $SVC"
deadline=$((killed + 10000))
for p in tcp udp; do
	until [ "$(logs "$p" | grep -c ' ok backup saw ')" -ge "$AFTER" ]; do
		[ "$(dl_now)" -le "$deadline" ] || { logs "$p" | tail -n 5; dl_fail "$p: the backup did not answer (enough) within 10 s of the kill"; }
		sleep 0.05
	done
done
view_after="$(view tcp); $(view udp)"
for p in tcp udp; do logs "$p" >"$DL_WORK/logs/client-$p.log"; done
dx 1 stop -t 1 client-tcp client-udp >/dev/null

dl_step "What the clients saw"
ok=1
for p in tcp udp; do
	read -r last first errs nm nb late < <(awk '
		$2 == "ok" && $3 == "master" { last = $1; nm++ }
		$2 == "ok" && $3 == "backup" { if (!first) first = $1; nb++ }
		$2 == "err" { errs++; if (first) late++ }
		$2 == "ok" && $3 != "backup" && first { late++ }
		END { printf "%.0f %.0f %d %d %d %d\n", last, first, errs, nm, nb, late }' "$DL_WORK/logs/client-$p.log")
	echo "$p: $nm answers from the master, $errs unanswered, then $nb from the backup"
	echo "$p: gap $((first - last)) ms from the master's last answer to the backup's first, $((first - killed)) ms after docker kill"
	echo "$p:   master's last:  $(grep ' ok master ' "$DL_WORK/logs/client-$p.log" | tail -n 1)"
	echo "$p:   backup's first: $(grep -m1 ' ok backup ' "$DL_WORK/logs/client-$p.log")"
	if [ "$late" -ne 0 ]; then
		echo "$p: $late requests failed or reached someone else after the backup took over"
		ok=
	fi
	echo "docker-failover $p gap_ms=$((first - last)) after_kill_ms=$((first - killed)) unanswered=$errs backup_answers=$nb"
done
port() { grep "$1" "$DL_WORK/logs/client-udp.log" | sed -E 's/.* saw [0-9.]+:([0-9]+):.*/\1/' | sort -u | paste -sd, -; }
echo "UDP client ports the master saw: $(port ' ok master '); the backup saw: $(port ' ok backup ')"
[ "$(port ' ok [a-z]* saw ')" = "$(port ' ok master ')" ] || dl_fail "udp: the flow did not carry on at the backup with the same client port"
echo "UDP: one socket all along, one flow: it carried on at the backup. TCP: the master's connection died with it; the client reconnected to the same $SVC."
# Who noticed first: the plugin's watcher (Docker's kill event), the
# plugin's Leave, or the agent (the veth vanished).
down=$(grep -m1 -E 'msg="endpoint down".*why=kill' "$(dl_log plugin-1)" | sed -E 's/^time=([^ ]*) .*/\1/') || true
if [ -n "$down" ]; then
	echo "The plugin's events watcher marked the master down $(($(date -d "$down" +%s%3N) - killed)) ms after docker kill (Docker's kill event)."
fi
dl_show service ls

dl_step "The clients' view never changed: the same address, MAC and gateway; every answer came from $SVC"
echo "before the kill: $view_before"
echo "after failover:  $view_after   (read before the clients were stopped)"
[ "$view_before" = "$view_after" ] || dl_fail "the clients' view changed"
echo "The clients dialled only $SVC; every answer came back from $SVC."
[ -n "$ok" ] || dl_fail "the backup did not keep answering after it took over"
echo
echo "PASS: the backup answered on the same IP:Port $SVC"
