#!/usr/bin/env bash
# Live migration: a client keeps one TCP connection open to a container and
# asks every 10 ms. The container moves to another server ("daoli move"):
# its namespace, sockets and identity stay, only its veth now leads into
# the new server. Prints the pause the client saw, and shows that the same
# connection carried on.
#
#   sudo examples/live-migration/run.sh   (SHORT=1 for a quicker run; DAOLI=path)
# shellcheck source=examples/lib.sh
source "$(dirname "$0")/../lib.sh"

VIP=10.1.0.9
SVC=$VIP:8080
BEFORE_S=$(dl_short 1 0.5) # seconds of traffic before the move
AFTER=$(dl_short 100 40)   # answers to see after the move

dl_step "A world of 3 servers, each with a daoli agent; the mapper on the fabric"
dl_world 3

dl_step "Container web on server-2 serves $SVC; a client on server-1"
dl_container web 2 --ip "$VIP" --port 8080/tcp
dl_serve web 8080 web
dl_container client 1 --ip 10.1.0.5
dl_wait_answer client "$SVC" tcp web
# The container's interface: name, MAC, address (the peer's ifindex goes).
inside() { dl_in web ip -br link show dev eth0 | awk '{sub(/@.*/, "", $1); print $1, $3}'; dl_in web ip -br -4 addr show dev eth0 | awk '{print $3}'; }
# The container's established connections on :8080.
conns() { dl_in web ss -Htn state established "sport = :8080" | awk '{print "  " $3 " <-> " $4}' | sed 's/\[::ffff:\([0-9.]*\)\]/\1/g'; }
inside_before=$(inside)

dl_step "The client opens one TCP connection to $SVC and sends a request on it every 10 ms"
echo "\$ daoli app ask --to $SVC --proto tcp --keep --count 0 --interval 10ms --timeout 5s &   (in the client)"
dl_bg ask client "$DAOLI" app ask --to "$SVC" --proto tcp --keep --count 0 --interval 10ms --timeout 5s
sleep "$BEFORE_S"
grep -q ' ok web saw ' "$(dl_log ask)" || dl_fail "web never answered the client"
echo "$(grep -c ' ok ' "$(dl_log ask)") answers so far, the last: $(tail -n 1 "$(dl_log ask)")"
echo "the connection, as the container sees it:"
conns

dl_step "Move web to server-3 while the connection is open"
echo "\$ daoli move web --to server-3 --netns /run/netns/$(dl_ns web)"
start=$(dl_now)
"$DAOLI" move web --to server-3 --netns "/run/netns/$(dl_ns web)"
moved=$(dl_now)
echo "daoli move took $((moved - start)) ms"
done_at=$(($(grep -c . "$(dl_log ask)") + AFTER))
deadline=$((moved + 15000))
until [ "$(grep -c . "$(dl_log ask)")" -ge "$done_at" ]; do
	[ "$(dl_now)" -le "$deadline" ] || dl_fail "the client stopped getting answers after the move: $(tail -n 1 "$(dl_log ask)")"
	sleep 0.05
done
echo "the connection, as the container sees it after the move:"
conns
dl_stop ask

dl_step "What the client saw"
read -r total errs pause pause_at < <(awk '
	$2 == "ok" { if (prev && $1 - prev > pause) { pause = $1 - prev; at = $1 }; prev = $1; n++ }
	$2 != "ok" { e++ }
	END { printf "%d %d %d %.0f\n", n + e, e + 0, pause, at }' "$(dl_log ask)")
ports=$(sed -nE 's/.* ok web saw [0-9.]+:([0-9]+):.*/\1/p' "$(dl_log ask)" | sort -u | paste -sd, -)
after=$(awk -v m="$start" '$1 >= m' "$(dl_log ask)" | grep -c ' ok ') || true
echo "$total requests, $errs unanswered, $after answered after the move began"
echo "largest pause between two answers: $pause ms, $((pause_at - start)) ms after the move began"
echo "client ports the server saw: $ports (one port: one connection all along)"
echo "  first: $(head -n 1 "$(dl_log ask)")"
echo "  last:  $(tail -n 1 "$(dl_log ask)")"
for i in 1 2 3; do
	drops=$("$DAOLI" status --server "server-$i" | awk '/^DROP REASON/ { on = 1; next } on && $2 > 0 && $1 != "not_ipv4" { printf " %s=%s", $1, $2 }')
	[ -z "$drops" ] || echo "packets the dataplane of server-$i dropped:$drops"
done
echo "live-migration requests=$total errors=$errs pause_ms=$pause ports=$ports"

dl_step "The container kept its identity; only its location changed"
inside_after=$(inside)
echo "inside web: $(echo "$inside_after" | paste -sd' ' -)"
dl_show endpoint show web

[ "$inside_before" = "$inside_after" ] || dl_fail "the container's interface changed: before $inside_before"
[ "$errs" -eq 0 ] || dl_fail "$errs requests failed: $(grep -v ' ok ' "$(dl_log ask)" | head -n 3)"
[ "$ports" != "${ports#*,}" ] && dl_fail "the server saw more than one client port ($ports): the connection broke"
[ "$after" -gt 0 ] || dl_fail "nothing was answered after the move"
echo
echo "PASS: one TCP connection carried on across the move; the longest pause was $pause ms"
