#!/usr/bin/env bash
# A virtual server: one IP, 10.1.0.100, made of microservices that run on
# different servers. The IP names the virtual server, the port names the
# service: web on :80 (server-1), api on :8080 (server-2), cache on
# :6379/udp (server-3). A client reaches each at 10.1.0.100:PORT, and each
# answer comes from a different server.
#
#   sudo examples/virtual-server/run.sh   (SHORT=1 for a quicker run; DAOLI=path)
# shellcheck source=examples/lib.sh
source "$(dirname "$0")/../lib.sh"

VIP=10.1.0.100
COUNT=$(dl_short 5 3) # requests per service

dl_step "A world of 4 servers, each with a daoli agent; the mapper on the fabric"
dl_world 4

dl_step "Three microservices, three servers, one IP: $VIP"
dl_container web 1 --ip "$VIP" --port 80/tcp
dl_container api 2 --ip "$VIP" --port 8080/tcp
dl_container cache 3 --ip "$VIP" --port 6379/udp
dl_serve web 80 web
dl_serve api 8080 api
dl_serve cache 6379 cache
dl_container client 4 --ip 10.1.0.5
for c in web api cache; do
	echo "inside $c: $(dl_in "$c" ip -br -4 addr show dev eth0 | awk '{sub(/@.*/, "", $1); print $1, $3}')"
done
dl_show service ls

dl_step "The client asks each service at $VIP:PORT"
dl_wait_answer client "$VIP:80" http web
dl_wait_answer client "$VIP:8080" tcp api
dl_wait_answer client "$VIP:6379" udp cache
declare -A SEEN=()
summary=
for svc in web:80:http api:8080:tcp cache:6379:udp; do
	IFS=: read -r name port proto <<<"$svc"
	echo "\$ daoli app ask --to $VIP:$port --proto $proto --count $COUNT --interval 10ms   (in the client)"
	out=$(dl_in client "$DAOLI" app ask --to "$VIP:$port" --proto "$proto" --count "$COUNT" --interval 10ms)
	awk '{ print "  " $0 }' <<<"$out"
	answered=$(grep -c " ok $name saw 10.1.0.5:" <<<"$out") || true
	[ "$answered" -eq "$COUNT" ] || dl_fail "$VIP:$port/$proto: $name answered $answered of $COUNT requests"
	# Where the answering container runs, as the registry records it.
	server=$(dl_daoli endpoint ls | awk -v n="$name" '$2 == n { print $10 }')
	SEEN[$server]=$name
	summary+=" :$port/$proto=$name@$server"
	echo "virtual-server port=$port/$proto answered_by=$name server=$server answers=$answered"
done
[ "${#SEEN[@]}" -eq 3 ] || dl_fail "the answers came from ${#SEEN[@]} servers, want 3"

dl_step "A port no microservice serves is not answered (and the client's server counts the drop)"
echo "\$ daoli app ask --to $VIP:5432 --timeout 300ms   (in the client)"
out=$(dl_in client "$DAOLI" app ask --to "$VIP:5432" --timeout 300ms)
echo "  $out"
grep -q ' err ' <<<"$out" || dl_fail "$VIP:5432 answered, but nothing serves it"
echo "\$ daoli status --server server-4"
"$DAOLI" status --server server-4

echo
echo "PASS: one IP $VIP, three services answered from three servers:$summary"
