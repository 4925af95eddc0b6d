#!/usr/bin/env bash
# Failover: a master and a backup hold the same IP:Port. A client keeps
# asking. The master dies (its process and its network namespace, as a
# container does); the backup answers on the same IP:Port, and the client
# never learns an address changed. Prints the measured gap.
#
#   sudo examples/failover/run.sh         (SHORT=1 for a quicker run; DAOLI=path)
# shellcheck source=examples/lib.sh
source "$(dirname "$0")/../lib.sh"

VIP=10.1.0.9
SVC=$VIP:8080
BEFORE_S=$(dl_short 2 0.6) # seconds of traffic before the kill
AFTER=$(dl_short 50 15)    # answers from the backup to see before stopping
# How long the client waits for an answer: a request in flight when the
# master dies is lost and costs this much. Longer in CI, where a loaded
# machine must not lose requests that were answered.
TIMEOUT=$(dl_short 100ms 250ms)

dl_step "A world of 3 servers, each with a daoli agent; the mapper on the fabric"
dl_world 3

dl_step "master on server-2 (priority 100) and backup on server-3 (priority 10) both take $SVC"
dl_container master 2 --ip "$VIP" --port 8080/tcp --port 8080/udp --mode failover --priority 100
dl_container backup 3 --ip "$VIP" --port 8080/tcp --port 8080/udp --mode failover --priority 10
dl_container client 1 --ip 10.1.0.5
dl_serve master 8080 master
dl_serve backup 8080 backup
dl_wait_answer client "$SVC" tcp master
dl_show service ls

dl_step "The client asks $SVC every 10 ms (waiting $TIMEOUT for each answer): over one TCP connection (reconnecting when it breaks) and from one UDP socket"
# What the client knows of 10.1.0.9: its own address, the route and the
# neighbour entry (the MAC the dataplane answered its ARP with).
view() {
	echo "  eth0:      $(dl_in client ip -br -4 addr show dev eth0 | awk '{print $3}')"
	echo "  route:     $(dl_in client ip route get "$VIP" | head -n 1 | sed 's/ *$//')"
	echo "  neighbour: $(dl_in client ip neigh show "$VIP" | awk '{print $1, "lladdr", $5}')"
}
view_before=$(view)
for p in tcp udp; do
	echo "\$ daoli app ask --to $SVC --proto $p --keep --count 0 --interval 10ms --timeout $TIMEOUT &   (in the client)"
	dl_bg "ask-$p" client "$DAOLI" app ask --to "$SVC" --proto "$p" --keep --count 0 --interval 10ms --timeout "$TIMEOUT"
done
sleep "$BEFORE_S"
for p in tcp udp; do
	grep -q ' ok master saw ' "$(dl_log "ask-$p")" || dl_fail "$p: the master never answered"
	echo "$p: $(grep -c ' ok master ' "$(dl_log "ask-$p")") answers from the master so far, the last: $(tail -n 1 "$(dl_log "ask-$p")")"
done

dl_step "Kill the master: SIGKILL its process, delete its network namespace"
dl_kill_master 10

dl_step "What the client saw"
# gap: from the master's last answer to the backup's first; after: from
# the kill to the backup's first answer; then the counts, and whether
# anything but the backup answered after it took over.
ok=1
first_any=
for p in tcp udp; do
	read -r last first errs nm nb late < <(awk -v k="$killed" '
		$2 == "ok" && $3 == "master" { last = $1; nm++ }
		$2 == "ok" && $3 == "backup" { if (!first) first = $1; nb++ }
		$2 == "err" { errs++; if (first) late++ }
		$2 == "ok" && $3 != "backup" && first { late++ }
		END { printf "%.0f %.0f %d %d %d %d\n", last, first, errs, nm, nb, late }' "$(dl_log "ask-$p")")
	echo "$p: $nm answers from the master, $errs unanswered, then $nb from the backup"
	echo "$p: gap $((first - last)) ms from the master's last answer to the backup's first, $((first - killed)) ms after the kill"
	echo "$p:   master's last:  $(grep ' ok master ' "$(dl_log "ask-$p")" | tail -n 1)"
	echo "$p:   backup's first: $(grep -m1 ' ok backup ' "$(dl_log "ask-$p")")"
	if [ "$late" -ne 0 ]; then
		echo "$p: $late requests failed or reached someone else after the backup took over"
		ok=
	fi
	if [ -z "$first_any" ] || [ "$first" -lt "$first_any" ]; then first_any=$first; fi
	echo "failover $p gap_ms=$((first - last)) after_kill_ms=$((first - killed)) unanswered=$errs"
done
echo "TCP: the master's connection died with it; the client reconnected to the same $SVC."
echo "UDP: one socket all along, one flow: it carried on at the backup."
port() { grep "$1" "$(dl_log ask-udp)" | sed -E 's/.* saw [0-9.]+:([0-9]+):.*/\1/' | sort -u | paste -sd, -; }
echo "UDP client ports the master saw: $(port ' ok master '); the backup saw: $(port ' ok backup ')"
[ "$(port ' ok [a-z]* saw ')" = "$(port ' ok master ')" ] || dl_fail "udp: the flow did not carry on at the backup with the same client port"
# When the kernel tore the master's namespace down, its veth went, and the
# agent of server-2 marked it down: the moment failover could begin.
down=$(grep -m1 'msg="endpoint down"' "$(dl_log agent-server-2)" | sed -E 's/^time=([^ ]*) .*/\1/')
if [ -n "$down" ]; then
	down=$(date -d "$down" +%s%3N)
	echo "The master's veth vanished and the agent of server-2 marked it down $((down - killed)) ms after the kill;"
	echo "the backup answered $((first_any - down)) ms after that."
fi
dl_show endpoint ls

dl_step "The client's view never changed: the same address, route and neighbour for $VIP"
view_after=$(view)
echo "before the kill:"
echo "$view_before"
echo "after the failover:"
echo "$view_after"
[ "$view_before" = "$view_after" ] || dl_fail "the client's view of $VIP changed"
echo "The client asked only $SVC, from one process each for TCP and UDP; every answer came back from $SVC."
[ -n "$ok" ] || dl_fail "the backup did not keep answering after it took over"
echo
echo "PASS: the backup answered on the same IP:Port $SVC"
