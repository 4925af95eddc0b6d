#!/usr/bin/env bash
# Failover while the control plane is itself broken: the registry lives in
# three etcd members with two mappers in front. The etcd leader and the
# mapper every agent uses are killed first (SIGKILL); then the master of a
# service dies. The backup still answers on the same IP:Port, through the
# mapper and the etcd members that are left. Prints the measured gap.
#
#   sudo examples/ha-failover/run.sh      (SHORT=1 for a quicker run; DAOLI=path; ETCD=path)
# shellcheck source=examples/lib.sh
source "$(dirname "$0")/../lib.sh"

VIP=10.1.0.9
SVC=$VIP:8080
AFTER=$(dl_short 50 15) # answers from the backup to see before stopping
TIMEOUT=$(dl_short 100ms 250ms)

dl_step "A world of 3 servers, each with a daoli agent; the registry in 3 etcd members, served by 2 mappers"
DL_REGISTRY=etcd dl_world 3
dl_show server ls

dl_step "master on server-2 (priority 100) and backup on server-3 (priority 10) both take $SVC"
dl_container master 2 --ip "$VIP" --port 8080/tcp --port 8080/udp --mode failover --priority 100
dl_container backup 3 --ip "$VIP" --port 8080/tcp --port 8080/udp --mode failover --priority 10
dl_container client 1 --ip 10.1.0.5
dl_serve master 8080 master
dl_serve backup 8080 backup
dl_wait_answer client "$SVC" tcp master

dl_step "Break the control plane: SIGKILL the etcd leader and the first mapper, the one every agent uses"
leader=$(dl_etcd_leader) || dl_fail "no etcd member leads"
dl_stop "etcd-$leader" KILL
dl_stop mapper KILL
echo "killed etcd member $leader (the leader) and the mapper at $DL_MAPPER_IP:9470"
left=()
for m in "${DL_ETCD_MEMBERS[@]}"; do [ "$m" = "$leader" ] || left+=("$m"); done
for m in "${left[@]}"; do
	dl_wait "etcd member $m healthy again (a new leader)" 20 dl_etcd_healthy "$m"
done
echo "etcd members ${left[*]} elected a new leader; the registry answers through the mapper at 192.0.2.251:9470:"
dl_show endpoint ls

dl_step "The client asks $SVC every 10 ms (waiting $TIMEOUT for each answer), over TCP and UDP"
for p in tcp udp; do
	echo "\$ daoli app ask --to $SVC --proto $p --keep --count 0 --interval 10ms --timeout $TIMEOUT &   (in the client)"
	dl_bg "ask-$p" client "$DAOLI" app ask --to "$SVC" --proto "$p" --keep --count 0 --interval 10ms --timeout "$TIMEOUT"
done
for p in tcp udp; do
	dl_wait "$p: the master answering" 10 grep -q ' ok master saw ' "$(dl_log "ask-$p")"
done

dl_step "Kill the master: SIGKILL its process, delete its network namespace"
dl_kill_master 20

dl_step "What the client saw"
for p in tcp udp; do
	read -r last first errs < <(awk '
		$2 == "ok" && $3 == "master" { last = $1 }
		$2 == "ok" && $3 == "backup" { if (!first) first = $1 }
		$2 == "err" { errs++ }
		END { printf "%.0f %.0f %d\n", last, first, errs }' "$(dl_log "ask-$p")")
	echo "$p: gap $((first - last)) ms from the master's last answer to the backup's first, $((first - killed)) ms after the kill ($errs unanswered)"
	echo "ha-failover $p gap_ms=$((first - last)) after_kill_ms=$((first - killed)) unanswered=$errs"
done
# The agent of server-2 saw the veth vanish and marked the master down
# through the mapper that was left.
grep -q 'msg="endpoint down"' "$(dl_log agent-server-2)" || dl_fail "the agent of server-2 never marked the master down"
echo "The agent of server-2 marked the master down through the mapper that was left."
dl_show endpoint ls
echo
echo "PASS: with the etcd leader and a mapper dead, the backup answered on the same IP:Port $SVC"
