#!/usr/bin/env bash
# Brings up a working fleet on this machine: a real etcd and three systemd
# machines (systemd-nspawn booting the host's own /usr, each in its own network
# namespace), each running fleetd as a systemd service with its API
# socket-activated, then starts an example unit.
#
#   scripts/demo.sh          bring it up (idempotent: tears down a previous demo first)
#   scripts/demo.sh down     tear it all down
#   scripts/demo.sh status   show the machines and units
#
# State lives in /tmp/fleet-demo. Processes are stopped by the PIDs recorded there.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/as-root.sh
ROOT=$PWD

N=3
ST=/tmp/fleet-demo
BR=fldemo0
NET=10.213.99
ETCD_PORT=32779
API_PORT=49153

cg_enter() { for h in systemd unified; do [ -d /sys/fs/cgroup/$h ] || continue; mkdir -p /sys/fs/cgroup/$h/fleet-demo/$1; echo $BASHPID > /sys/fs/cgroup/$h/fleet-demo/$1/cgroup.procs; done; }
cg_rm() { for h in systemd unified; do [ -d /sys/fs/cgroup/$h/fleet-demo/$1 ] && find /sys/fs/cgroup/$h/fleet-demo/$1 -depth -type d -exec rmdir {} \; 2>/dev/null; done; true; }
bus() { echo "unix:path=$ST/m$1/dbus/system_bus_socket"; }
in_machine() { local i=$1; shift; nsenter -t "$(cat $ST/m$i/leader)" -a "$@"; }

down() {
  for i in $(seq 1 $N); do
    local p
    if p=$(cat $ST/m$i/pid 2>/dev/null); then
      kill -TERM "$p" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$p" 2>/dev/null || true
    fi
    rm -rf /run/systemd/nspawn/propagate/fldemo-m$i
    cg_rm m$i
    ip link del fldemo-m$i-h 2>/dev/null || true
    ip netns del fldemo-m$i 2>/dev/null || true
  done
  if p=$(cat $ST/etcd/pid 2>/dev/null); then kill -KILL "$p" 2>/dev/null || true; fi
  ip link del $BR 2>/dev/null || true
  for h in systemd unified; do rmdir /sys/fs/cgroup/$h/fleet-demo 2>/dev/null || true; done
  rm -rf $ST
}

status() {
  echo "\$ fleetctl --endpoint http://$NET.11:$API_PORT list-machines"
  "$ROOT/target/debug/fleetctl" --endpoint "http://$NET.11:$API_PORT" list-machines
  echo
  echo "\$ fleetctl --endpoint http://$NET.11:$API_PORT list-units"
  "$ROOT/target/debug/fleetctl" --endpoint "http://$NET.11:$API_PORT" list-units
}

case "${1:-up}" in
  down) down; echo "fleet demo torn down"; exit 0 ;;
  status) status; exit 0 ;;
  up) ;;
  *) echo "usage: $0 [up|down|status]" >&2; exit 2 ;;
esac

./scripts/setup.sh
echo "building fleetd and fleetctl..."
cargo build --quiet -p fleetd -p fleetctl --bins

down
mkdir -p $ST/etcd $ST/bin
cp target/debug/fleetd target/debug/fleetctl $ST/bin/

# Network: a bridge, and one namespace per machine with its own address.
ip link add $BR type bridge
ip addr add $NET.1/24 dev $BR
ip link set $BR up
for i in $(seq 1 $N); do
  ip netns add fldemo-m$i
  ip link add fldemo-m$i-h type veth peer name eth0 netns fldemo-m$i
  ip link set fldemo-m$i-h master $BR up
  ip -n fldemo-m$i link set lo up
  ip -n fldemo-m$i addr add $NET.$((10 + i))/24 dev eth0
  ip -n fldemo-m$i link set eth0 up
done

# etcd on the bridge address.
etcd --name demo --data-dir $ST/etcd/data \
  --listen-client-urls http://127.0.0.1:$ETCD_PORT,http://$NET.1:$ETCD_PORT \
  --advertise-client-urls http://$NET.1:$ETCD_PORT \
  --listen-peer-urls http://127.0.0.1:$((ETCD_PORT + 1)) \
  --initial-advertise-peer-urls http://127.0.0.1:$((ETCD_PORT + 1)) \
  --initial-cluster demo=http://127.0.0.1:$((ETCD_PORT + 1)) \
  --log-level warn --logger zap > $ST/etcd/log 2>&1 &
echo $! > $ST/etcd/pid
for _ in $(seq 1 500); do
  curl -fs http://127.0.0.1:$ETCD_PORT/health 2>/dev/null | grep -q '"health":"true"' && break
  sleep 0.02
done

# Machines.
for i in $(seq 1 $N); do
  d=$ST/m$i
  mkdir -p $d/dbus $d/etc
  printf 'f1ee7d%02x%024x\n' $i $i > $d/machine-id
  (
    cg_enter m$i
    exec systemd-nspawn -D / --volatile=yes -M fldemo-m$i --hostname=fldemo-m$i -b \
      --register=no --keep-unit --console=passive \
      --network-namespace-path=/run/netns/fldemo-m$i \
      --bind=$d/dbus:/run/dbus --bind-ro=$d/machine-id:/etc/machine-id \
      --bind-ro=$ST/bin:/opt/fleet \
      systemd.mask=systemd-machine-id-commit.service
  ) > $d/log 2>&1 &
  echo $! > $d/pid
done
for i in $(seq 1 $N); do
  ok=
  for _ in $(seq 1 1500); do
    st=$(busctl --address="$(bus $i)" get-property org.freedesktop.systemd1 /org/freedesktop/systemd1 \
      org.freedesktop.systemd1.Manager SystemState 2>/dev/null || true)
    case "$st" in *running* | *degraded*) ok=1; break ;; esac
    sleep 0.02
  done
  [ -n "$ok" ] || { echo "machine m$i did not boot; see $ST/m$i/log" >&2; exit 1; }
  ps -o pid= --ppid "$(cat $ST/m$i/pid)" | tr -d ' ' > $ST/m$i/leader
done

# fleet on each machine: the shipped units, a drop-in pointing at the
# bind-mounted binary, and fleet.conf.
for i in $(seq 1 $N); do
  r=/proc/$(cat $ST/m$i/leader)/root
  mkdir -p $r/etc/fleet $r/etc/systemd/system/fleet.service.d
  cp fleetd/systemd/fleet.service fleetd/systemd/fleet.socket $r/etc/systemd/system/
  sed "s/^ListenStream=.*/ListenStream=$API_PORT/" fleetd/systemd/fleet-tcp.socket.example \
    > $r/etc/systemd/system/fleet-tcp.socket
  printf '[Service]\nExecStart=\nExecStart=/opt/fleet/fleetd\n' \
    > $r/etc/systemd/system/fleet.service.d/10-demo.conf
  cat > $r/etc/fleet/fleet.conf <<CONF
etcd_servers=http://$NET.1:$ETCD_PORT
public_ip=$NET.$((10 + i))
metadata=hostname=fldemo-m$i,region=demo
agent_ttl=10s
CONF
  in_machine $i systemctl daemon-reload
  in_machine $i systemctl start fleet.socket fleet-tcp.socket fleet.service
done

FLEETCTL="$ROOT/target/debug/fleetctl --endpoint http://$NET.11:$API_PORT"
for _ in $(seq 1 100); do
  [ "$($FLEETCTL list-machines --no-legend 2>/dev/null | wc -l)" = "$N" ] && break
  sleep 0.2
done

mkdir -p $ST/units
cat > $ST/units/hello.service <<'UNIT'
[Unit]
Description=Hello from fleet

[Service]
ExecStart=/bin/sh -c "while true; do echo hello from $(hostname); sleep 5; done"
UNIT
echo "\$ fleetctl start $ST/units/hello.service"
$FLEETCTL start $ST/units/hello.service
echo
status
cat <<EOF

fleet is up: etcd at http://$NET.1:$ETCD_PORT, machines fldemo-m1..m$N at $NET.11-$((10 + N)).
Use fleetctl against any machine's API:
  $ROOT/target/debug/fleetctl --endpoint http://$NET.11:$API_PORT list-units
  export FLEETCTL_ENDPOINT=http://$NET.12:$API_PORT; $ROOT/target/debug/fleetctl list-machines
Inside a machine (unix socket): nsenter -t \$(cat $ST/m1/leader) -a /opt/fleet/fleetctl list-units
Tear down: $0 down
EOF
