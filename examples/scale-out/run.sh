#!/usr/bin/env bash
# Scale-out: three replicas on three servers share one IP:Port. A client
# opens many new connections to it and they spread over the replicas. A
# fourth replica joins and takes its share; a replica marked down gets no
# new connection.
#
#   sudo examples/scale-out/run.sh        (SHORT=1 for a quicker run; DAOLI=path)
# shellcheck source=examples/lib.sh
source "$(dirname "$0")/../lib.sh"

VIP=10.1.0.10
SVC=$VIP:8080
N=$(dl_short 60 40) # new connections per round

# round NAME REPLICAS...: N new TCP connections from the client, one every
# 5 ms; prints what each replica answered. Fails when a request went
# unanswered or a listed replica answered none.
round() {
	local name=$1 r count
	shift
	echo "\$ daoli app ask --to $SVC --count $N --interval 5ms --timeout 1s   (in the client: $N new connections)"
	dl_in client "$DAOLI" app ask --to "$SVC" --count "$N" --interval 5ms --timeout 1s >"$DL_WORK/$name.out"
	local line="scale-out round=$name"
	for r in $REPLICAS; do
		count=$(awk -v r="$r" '$2 == "ok" && $3 == r { n++ } END { print n + 0 }' "$DL_WORK/$name.out")
		line+=" $r=$count"
		printf '  %-6s (%s) answered %3d\n' "$r" "${WHERE[$r]:-}" "$count"
	done
	count=$(grep -vc ' ok ' "$DL_WORK/$name.out") || true
	echo "  unanswered: $count"
	echo "$line errors=$count"
	[ "$count" -eq 0 ] || dl_fail "round $name: $count of $N requests went unanswered: $(grep -v ' ok ' "$DL_WORK/$name.out" | head -n 3)"
	for r in "$@"; do
		grep -q " ok $r saw " "$DL_WORK/$name.out" || dl_fail "round $name: $r answered no connection"
	done
}

declare -A WHERE=([web-1]=server-2 [web-2]=server-3 [web-3]=server-4 [web-4]=server-1)
REPLICAS="web-1 web-2 web-3"

dl_step "A world of 4 servers, each with a daoli agent; the mapper on the fabric"
dl_world 4

dl_step "Three replicas on three servers share $SVC (mode balance); a client on server-1"
for r in web-1 web-2 web-3; do
	dl_container "$r" "${WHERE[$r]#server-}" --ip "$VIP" --port 8080/tcp
	dl_serve "$r" 8080 "$r"
done
dl_container client 1 --ip 10.1.0.5
for r in web-1 web-2 web-3; do dl_wait_listen "$r" 8080; done
dl_wait_answer client "$SVC" tcp 'web-[123]'
dl_show service ls

dl_step "The client opens $N new connections to $SVC: Maglev spreads them over the three"
round three web-1 web-2 web-3

dl_step "Scale out: a fourth replica, on server-1 (the client's own server), joins $SVC"
dl_container web-4 1 --ip "$VIP" --port 8080/tcp
REPLICAS+=" web-4"
dl_serve web-4 8080 web-4
dl_wait_listen web-4 8080
dl_settle '"name":"web-4"'
round four web-1 web-2 web-3 web-4

dl_step "Take web-2 out of rotation: daoli endpoint down web-2"
dl_show endpoint down web-2
dl_settle '"name":"web-2".*"state":"down"'
dl_show service ls
round down web-1 web-3 web-4
grep -q ' ok web-2 saw ' "$DL_WORK/down.out" && dl_fail "web-2 is down but took new connections"
echo "web-2 took no new connection."

echo
echo "PASS: all replicas answered on $SVC; the fourth took its share; web-2, down, took none"
