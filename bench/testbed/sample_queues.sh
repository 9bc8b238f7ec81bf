#!/usr/bin/env bash
# sample_queues.sh OUTFILE N: run beside a testbed run (as root). Waits for the yard's
# namespaces, then every 5 s records, per vehicle and for the depot, the UDP socket drops of
# its namespace (/proc/net/snmp: RcvbufErrors, SndbufErrors) and the sent and dropped counts of
# its uplink queue (eth0 in its namespace) and its downlink queue (its port on the yard's
# bridge). OUTFILE keeps the last complete sample: the namespaces vanish when the run ends.
#   bench/testbed/sample_queues.sh /tmp/queues.txt 30 & N=30 ... bench/testbed/run.sh 100
set -u
OUT=$1; N=$2
until ip netns list | grep -qw "tb-veh$N"; do sleep 0.5; done
while ip netns list | grep -qw tb-veh1; do
  for i in $(seq 1 "$N") depot; do
    ns=tb-veh$i; dev=v$i
    [ "$i" = depot ] && { ns=tb-depot; dev=d0; }
    udp=$(ip netns exec "$ns" awk '/^Udp:/{n++; if (n == 2) print "rcvbuf_errors=" $6, "sndbuf_errors=" $7}' /proc/net/snmp 2>/dev/null)
    queue() { awk '/pfifo/{f=1} f && /dropped/{gsub(",", ""); print "sent_bytes=" $2, "dropped=" $7; exit}'; }
    up=$(ip netns exec "$ns" tc -s qdisc show dev eth0 2>/dev/null | queue)
    down=$(ip netns exec tb-yard tc -s qdisc show dev "$dev" 2>/dev/null | queue)
    echo "$i $udp up: $up down: $down"
  done > "$OUT.tmp"
  grep -q "up: sent" "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
  sleep 5
done
rm -f "$OUT.tmp"
