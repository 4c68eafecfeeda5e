# Containers end to end (sourced by the guest's init with shojitest=containers; busybox sh).
# Two containers A and B, started by crun from the data disk, bridged onto eth0 through br0
# (VLAN filtering on). B, root in its own user, network, pid and mount namespaces with
# CAP_NET_RAW, attacks A and the peer (10.0.2.2, the harness's witness).
#   CONTROL:   containers without the Shoji hooks (plain bridge ports): every attack succeeds.
#   PROTECTED: containers with `shojictl oci-hook` (createRuntime + poststop): attacks dropped.
# Every check prints "SHOJI-TEST: ctr NAME rc=RC :: LAST-LINE" (the harness asserts them);
# "SHOJI-TEST: sync NAME" waits for the peer (harness) to look at its side and answer.

CRUN=/data/crun/crun
A_MAC=02:00:00:00:00:0a
B_MAC=02:00:00:00:00:0b
A_IP=10.0.2.21
B_IP=10.0.2.22
PEER=10.0.2.2
SINK_PORT=9999
A_PORT=7000
BUNDLES=/run/bundles
# Floods are bounded by a count too: a guest second of flooding costs minutes under Bochs.
FLOOD_COUNT=${FLOOD_COUNT:-2000}

# A: ARP in the subnet, ICMP with the peer and with B, UDP to the peer, UDP 7000 from B.
POLICY_A='default_egress = \"deny\"\ndefault_ingress = \"deny\"\n[[rule]]\naction = \"allow\"\ndirection = \"both\"\nprotocol = \"arp\"\nremote = \"10.0.2.0/24\"\n[[rule]]\naction = \"allow\"\ndirection = \"both\"\nprotocol = \"icmp\"\nremote = \"10.0.2.2/32\"\n[[rule]]\naction = \"allow\"\ndirection = \"both\"\nprotocol = \"icmp\"\nremote = \"10.0.2.22/32\"\n[[rule]]\naction = \"allow\"\ndirection = \"egress\"\nprotocol = \"udp\"\nremote = \"10.0.2.2/32\"\n[[rule]]\naction = \"allow\"\ndirection = \"ingress\"\nprotocol = \"udp\"\nremote = \"10.0.2.22/32\"\ndst_ports = \"7000\"'
# B: may talk to A only (ARP and ICMP); not to the peer.
POLICY_B='default_egress = \"deny\"\ndefault_ingress = \"deny\"\n[[rule]]\naction = \"allow\"\ndirection = \"both\"\nprotocol = \"arp\"\nremote = \"10.0.2.21/32\"\n[[rule]]\naction = \"allow\"\ndirection = \"both\"\nprotocol = \"icmp\"\nremote = \"10.0.2.21/32\"'

# One check: its output indented, then the result line.
ctr() {
    name=$1
    shift
    out=$("$@" 2>&1)
    rc=$?
    echo "$out" | tail -n 60 | sed "s/^/  [$name] /"
    echo "SHOJI-TEST: ctr $name rc=$rc :: $(echo "$out" | tail -n 1)"
}

# Wait for the peer: it inspects its side, then answers on port 7777.
sync_peer() {
    echo "SHOJI-TEST: sync $1"
    msg=$(timeout "$PEER_WAIT" nc -l -p 7777)
    echo "SHOJI-TEST: sync $1 answered: ${msg:-nothing (timeout)}"
}

# The OCI bundle of container $1 ("A" or "B"); $2 = 1 with the Shoji hooks.
write_bundle() {
    name=$1
    hooks=$2
    if [ "$name" = A ]; then
        mac=$A_MAC ip=$A_IP vlan=101 policy=$POLICY_A
    elif [ "$name" = C ]; then
        # C: a container whose address was planted ($C_IP), which the hook must refuse.
        mac=02:00:00:00:00:0c ip=$C_IP vlan=103 policy=$POLICY_B
    else
        mac=$B_MAC ip=$B_IP vlan=102 policy=$POLICY_B
    fi
    shoji_create=""
    shoji_stop=""
    if [ "$hooks" = 1 ]; then
        # Through sh only to keep the hook's messages (crun drops a hook's output).
        shoji_create=',
      {"path": "/bin/sh", "args": ["sh", "-c", "shojictl oci-hook >> /run/hook.log 2>&1"], "env": ["PATH=/bin"]}'
        shoji_stop='"poststop": [
      {"path": "/bin/sh", "args": ["sh", "-c", "shojictl oci-hook >> /run/hook.log 2>&1"], "env": ["PATH=/bin"]}
    ],'
    fi
    mkdir -p "$BUNDLES/$name"
    cat > "$BUNDLES/$name/config.json" <<EOF
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false,
    "user": {"uid": 0, "gid": 0},
    "args": ["sleep", "1000000"],
    "env": ["PATH=/bin", "HOME=/root"],
    "cwd": "/",
    "capabilities": {
      "bounding": ["CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETUID", "CAP_SETGID"],
      "effective": ["CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETUID", "CAP_SETGID"],
      "permitted": ["CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETUID", "CAP_SETGID"]
    },
    "noNewPrivileges": true
  },
  "root": {"path": "/data/rootfs", "readonly": true},
  "hostname": "ctr-$name",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=1024k"]},
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", "size=4096k"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
  ],
  "annotations": {
    "org.shoji.vlan": "$vlan",
    "org.shoji.policy": "$policy"
  },
  "hooks": {
    "createRuntime": [
      {"path": "/bin/sh", "args": ["sh", "/data/shoji/cni-veth", "veth$name", "$mac", "$ip/24"], "env": ["PATH=/bin"]}$shoji_create
    ],
    $shoji_stop
    "poststart": []
  },
  "linux": {
    "namespaces": [
      {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"},
      {"type": "mount"}, {"type": "user"}, {"type": "cgroup"}
    ],
    "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
    "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
    "cgroupsPath": "/containers/$name"
  }
}
EOF
}

# Start container $1 with (1) or without (0) the Shoji hooks, timing crun; $3: the step's name
# (default start-$1-$2; every step name is used once, the harness refuses a repeated one).
# --no-pivot: the guest runs from its initramfs, where pivot_root is impossible. The output
# goes to a file: the container keeps crun's stdout open (a pipe would never reach EOF).
start_ctr() {
    write_bundle "$1" "$2"
    step=${3:-start-$1-$2}
    if [ "$2" = 1 ]; then label="start $1 hooks=shoji"; else label="start $1 hooks=none"; fi
    log=/tmp/$step.log
    probe timed "$label" $CRUN run --no-pivot -d -b "$BUNDLES/$1" "$1" > "$log" 2>&1 < /dev/null
    rc=$?
    sed "s/^/  [$step] /" "$log"
    if [ -e /run/hook.log ]; then
        sed "s/^/  [$step] hook: /" /run/hook.log
        : > /run/hook.log
    fi
    timing=$(grep "probe timed:" "$log" | tail -n 1)
    if [ -z "$3" ]; then
        echo "$timing" | sed 's/^probe timed: start //' >> /tmp/start-times
    fi
    echo "SHOJI-TEST: ctr $step rc=$rc :: $timing"
}

# Stop container $1 as step $2 (crun delete runs the poststop hook when the bundle has one).
stop_ctr() {
    ctr "$2" $CRUN delete -f "$1"
    # What the poststop hook said (unregistration, the VLAN taken off the uplink).
    if [ -s /run/hook.log ]; then
        sed "s/^/  [$2] hook: /" /run/hook.log
        : > /run/hook.log
    fi
    # The kernel removes the namespace and its veth pair a moment later.
    i=0
    while [ -e "/sys/class/net/veth$1" ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
}

# The pid of container $1's first process (from `crun state`).
ctr_pid() {
    $CRUN state "$1" | sed -n 's/.*"pid"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p'
}

# A file inside a container's /tmp (stdin is the content).
put_in() {
    $CRUN exec "$1" sh -c "cat > $2"
}

counters() {
    echo "SHOJI-TEST: counters snapshot $1"
    probe log-counters
}

# UDP flood from container A to the peer's discard port, framed by counter snapshots: at most
# FLOOD_COUNT datagrams.
flood_a() {
    counters "$1-before"
    ctr "flood-$1" $CRUN exec A probe flood "$PEER" 9 "$FLOOD" --count "$FLOOD_COUNT"
    counters "$1-after"
}

setup_host() {
    for m in $(cat /data/modules/containers/load-order); do
        insmod "/data/modules/containers/$m" || echo "SHOJI-TEST: insmod $m failed"
    done
    mkdir -p /run /lib64 /sys/fs/cgroup
    mount -t tmpfs tmpfs /run
    mkdir -p "$BUNDLES" /run/shoji
    ln -sf /data/crun/lib/ld-linux-x86-64.so.2 /lib64/ld-linux-x86-64.so.2
    ln -sfn /data/crun/lib /lib/x86_64-linux-gnu
    mount -t cgroup2 none /sys/fs/cgroup
    eth_mac=$(cat /sys/class/net/eth0/address)
    ip link add br0 type bridge
    echo 1 > /sys/class/net/br0/bridge/vlan_filtering
    ip link set br0 address "$eth_mac"
    ip addr del 10.0.2.15/24 dev eth0
    ip link set eth0 master br0
    ip addr add 10.0.2.15/24 dev br0
    ip link set br0 up
    ping -c 1 -W 10 "$PEER" >/dev/null 2>&1
    PEER_MAC=$(sed -n "s/^$PEER[[:space:]].* \([0-9a-f:]\{17\}\) .*/\1/p" /proc/net/arp | head -n 1)
    # The agent pushes the kernel profile at boot, as an operator's unit would: the first
    # container start then times the hook alone.
    if shojictl detect >/dev/null 2>&1; then
        ctr profile-push shojictl profile --push
    fi
    echo "SHOJI-TEST: containers host br0 vlan_filtering=$(cat /sys/class/net/br0/bridge/vlan_filtering) peer-mac=${PEER_MAC:-unknown} crun=$($CRUN --version 2>&1 | head -n 1)"
}

phase_control() {
    echo "SHOJI-TEST: phase control: containers WITHOUT the Shoji hooks (protection off)"
    start_ctr A 0
    start_ctr B 0
    ctr control-a-ping $CRUN exec A ping -c 2 -W 5 "$PEER"
    sleep 2
    ctr control-b-arp-spoof $CRUN exec B probe arp-reply eth0 "$A_IP" "$B_MAC" "$PEER" "$PEER_MAC" 5
    ctr control-b-impersonate $CRUN exec B probe raw-udp eth0 "$A_MAC" "$A_IP" "$PEER_MAC" "$PEER" "$SINK_PORT" 5 --payload imp-control
    ctr control-b-own-udp $CRUN exec B probe raw-udp eth0 "$B_MAC" "$B_IP" "$PEER_MAC" "$PEER" "$SINK_PORT" 3 --payload b-control
    ctr control-b-ping $CRUN exec B ping -c 2 -W 5 "$PEER"
    # A answering as a DHCP server (UDP from port 67): the peer's sink gets it without Shoji.
    ctr control-a-dhcp-server $CRUN exec A probe raw-udp eth0 "$A_MAC" "$A_IP" "$PEER_MAC" "$PEER" "$SINK_PORT" 3 --src-port 67 --payload dhcp-server-control
    # Fragments: the first to A (UDP to A's port), the later one to the peer's MAC. Without
    # Shoji's policy the later fragments reach the peer (its capture counts ids 0xc000..).
    ctr control-b-frag $CRUN exec B probe raw-frag eth0 "$B_MAC" "$B_IP" "$A_MAC" "$PEER_MAC" "$A_IP" "$A_PORT" 5 --first-id 49152
    sync_peer control-attacks
    # The peer runs nmap against A and the host (no detector without registrations).
    sync_peer control-scan
    flood_a control
    stop_ctr A stop-A-control
    stop_ctr B stop-B-control
}

# B's policy with the run-time rule (UDP to A's port 7000), as a policy file.
policy_b_file() {
    pid=$(ctr_pid B)
    cg=$(sed -n 's/^0::\(.*\)$/\1/p' "/proc/$pid/cgroup")
    cat <<EOF
[[container]]
id = 102
vlan = 102
macs = ["$B_MAC"]
ipv4 = ["$B_IP"]
cgroup_id = $(stat -c %i "/sys/fs/cgroup$cg")
netns_id = $(stat -L -c %i "/proc/$pid/ns/net")
default_egress = "deny"
default_ingress = "deny"
[[container.rule]]
action = "allow"
direction = "both"
protocol = "arp"
remote = "10.0.2.21/32"
[[container.rule]]
action = "allow"
direction = "both"
protocol = "icmp"
remote = "10.0.2.21/32"
[[container.rule]]
action = "allow"
direction = "egress"
protocol = "udp"
remote = "10.0.2.21/32"
dst_ports = "$A_PORT"
EOF
}

# B -> A on UDP port 7000 while A listens; prints A's count, with the listener's exit status,
# as check $1.
b_to_a_udp() {
    $CRUN exec A probe udp-listen "$A_PORT" 12 > "/tmp/$1.txt" 2>&1 &
    lpid=$!
    sleep 4
    ctr "$1-send" $CRUN exec B probe udp-send "$A_IP" "$A_PORT" 5 --payload "$1"
    wait $lpid
    lrc=$?
    echo "SHOJI-TEST: ctr $1 rc=$lrc :: $(tail -n 1 "/tmp/$1.txt")"
}

# The sequence number the next security event will get (1 when Shoji holds none).
event_mark() {
    last=$(shojictl events 2>/dev/null | sed -n 's/^event seq=\([0-9][0-9]*\) .*/\1/p' | tail -n 1)
    echo $((${last:-0} + 1))
}

# Step $1: the events from sequence number $2 on (taken before the step that must cause them,
# so events of earlier steps cannot stand in for them); the first output line says from where.
events_since() {
    ctr "$1" sh -c "echo 'events from=$2'; shojictl events --from $2"
}

phase_protected() {
    echo "SHOJI-TEST: phase protected: containers WITH the Shoji hooks"
    start_ctr A 1
    start_ctr B 1
    ctr registered shojictl stats
    ctr prot-a-ping $CRUN exec A ping -c 2 -W 5 "$PEER"
    ctr prot-b-ping $CRUN exec B ping -c 2 -W 3 "$PEER"
    ctr stats-pings shojictl stats
    sleep 2
    mark=$(event_mark)
    ctr prot-b-arp-spoof $CRUN exec B probe arp-reply eth0 "$A_IP" "$B_MAC" "$PEER" "$PEER_MAC" 5
    events_since events-arp "$mark"
    mark=$(event_mark)
    ctr prot-b-impersonate $CRUN exec B probe raw-udp eth0 "$A_MAC" "$A_IP" "$PEER_MAC" "$PEER" "$SINK_PORT" 5 --payload imp-protected
    events_since events-impersonation "$mark"
    ctr prot-b-impersonate-flood $CRUN exec B probe raw-udp eth0 "$A_MAC" "$A_IP" "$PEER_MAC" "$PEER" "$SINK_PORT" "$FLOOD_COUNT" 3 --payload imp-flood
    mark=$(event_mark)
    ctr prot-b-impersonate-setsid $CRUN exec B setsid probe raw-udp eth0 "$A_MAC" "$A_IP" "$PEER_MAC" "$PEER" "$SINK_PORT" 5 --payload imp-setsid
    events_since events-setsid "$mark"
    ctr prot-b-own-udp $CRUN exec B probe raw-udp eth0 "$B_MAC" "$B_IP" "$PEER_MAC" "$PEER" "$SINK_PORT" 3 --payload b-protected
    ctr prot-a-udp $CRUN exec A probe udp-send "$PEER" "$SINK_PORT" 3 --payload a-protected
    # The first-hop guard: A may send UDP to the peer, but not as a DHCP server (from port 67).
    mark=$(event_mark)
    ctr prot-a-dhcp-server $CRUN exec A probe raw-udp eth0 "$A_MAC" "$A_IP" "$PEER_MAC" "$PEER" "$SINK_PORT" 3 --src-port 67 --payload dhcp-server-protected
    events_since events-dhcp-server "$mark"
    sync_peer protected-attacks
    # The peer scans A with nmap from a second address, then the host: the detector records an
    # inbound scan from that address and blocks it, so the host's ports stop answering it.
    mark=$(event_mark)
    sync_peer protected-scan
    events_since events-inbound-scan "$mark"
    # A and B: only as their policies allow, relayed through Shoji (different VLANs).
    ctr prot-a-ping-b $CRUN exec A ping -c 2 -W 5 "$B_IP"
    b_to_a_udp prot-b-to-a-before
    policy_b_file > /tmp/policy-b2.toml
    ctr prot-update shojictl update /tmp/policy-b2.toml
    b_to_a_udp prot-b-to-a-after
    # Fragments: B may send UDP to A's port, so the first fragments are relayed to A; the later
    # ones, addressed to the peer's MAC (B may send nothing to the peer), must go nowhere
    # (ids 0xd000..). Fragmented pings between A and B still work both ways.
    ctr prot-b-frag $CRUN exec B probe raw-frag eth0 "$B_MAC" "$B_IP" "$A_MAC" "$PEER_MAC" "$A_IP" "$A_PORT" 5 --first-id 53248
    ctr prot-a-ping-b-fragmented $CRUN exec A ping -c 2 -s 2000 -W 5 "$B_IP"
    ctr stats-relay shojictl stats
    # Refusals: inside B, with a copy of the agent key.
    put_in B /tmp/agent.key < /etc/shoji/agent.key
    printf '[[container]]\nid = 7\nvlan = 107\nmacs = ["02:00:00:00:00:0c"]\nipv4 = ["10.0.2.23"]\ndefault_egress = "allow"\ndefault_ingress = "allow"\n' | put_in B /tmp/self.toml
    printf '[[container]]\nid = 102\nvlan = 102\nmacs = ["%s"]\nipv4 = ["%s"]\ndefault_egress = "allow"\ndefault_ingress = "allow"\n' "$B_MAC" "$B_IP" | put_in B /tmp/wide.toml
    ctr refuse-register $CRUN exec B shojictl register /tmp/self.toml --key-file /tmp/agent.key
    ctr refuse-update $CRUN exec B shojictl update /tmp/wide.toml --key-file /tmp/agent.key
    ctr refuse-unregister $CRUN exec B shojictl unregister 101 --key-file /tmp/agent.key
    ctr refuse-events $CRUN exec B shojictl events --key-file /tmp/agent.key
    # Root in the initial user namespace with the real key file, but in A's network namespace
    # (what root in a rootful container is): not the agent.
    ctr refuse-netns-root nsenter -t "$(ctr_pid A)" -n shojictl unregister 101
    # Planted addresses: C's namespace holds the host's own address, then the gateway's (the
    # next hop of a host route); the hook refuses both and C does not start.
    ip route add 192.0.2.0/24 via "$PEER" dev br0
    C_IP=10.0.2.15 start_ctr C 1 refuse-planted-host
    $CRUN delete -f C >/dev/null 2>&1
    C_IP=$PEER start_ctr C 1 refuse-planted-gateway
    $CRUN delete -f C >/dev/null 2>&1
    ip route del 192.0.2.0/24 via "$PEER" dev br0
    ctr after-refusals-stats shojictl stats
    ctr after-refusals-b-ping $CRUN exec B ping -c 2 -W 3 "$PEER"
    flood_a protected
    # Rate limits per caller class (after the counter snapshots the harness reads): B loops on
    # LogCounters and runs out of its class's budget; the host's budget is untouched; B's refills
    # with time (one call per 5 s).
    ctr ratelimit-b-loop $CRUN exec B sh -c 'i=0; while [ $i -lt 80 ]; do probe log-counters; i=$((i + 1)); done | sort | uniq -c | tr -s " \n" " "; echo'
    ctr ratelimit-host probe log-counters
    sleep 6
    ctr ratelimit-b-refilled $CRUN exec B probe log-counters
    admin_block_b
    # Container stop: the poststop hook unregisters B; the default (no policy) is back.
    stop_ctr B stop-B-protected
    ctr after-stop-stats shojictl stats
    ctr events-final shojictl events
    start_ctr B 0 restart-B-0
    ctr after-unregister-b-ping $CRUN exec B ping -c 2 -W 5 "$PEER"
    stop_ctr B stop-B-restarted
    stale_a
}

# The administrator (on the peer's side, through Shoji's management endpoint) cuts B off with
# `shoji-admin block --container 102`. B's pings to A (its policy allows them) are the witness;
# A keeps reaching the peer. Root in the guest, holding the agent key, then tries every way the
# agent has to undo it: unregister and register B again, load an allow-all policy for B, and
# register B's addresses under another id. B stays cut off until the administrator's unblock.
admin_block_b() {
    sed 's/^default_egress = "deny"/default_egress = "allow"/; s/^default_ingress = "deny"/default_ingress = "allow"/' \
        /tmp/policy-b2.toml > /tmp/policy-b-wide.toml
    sed 's/^id = 102/id = 112/' /tmp/policy-b2.toml > /tmp/policy-b-renamed.toml
    ctr admin-b-ping-a-before $CRUN exec B ping -c 2 -W 5 "$A_IP"
    # For the administrator's `shoji-admin tasks` at the sync point: the containers' first
    # processes as crun knows them.
    echo "SHOJI-TEST: ctr-pids A=$(ctr_pid A) B=$(ctr_pid B)"
    sync_peer admin-block
    ctr admin-b-ping-a-blocked $CRUN exec B ping -c 2 -W 3 "$A_IP"
    ctr admin-a-ping-peer $CRUN exec A ping -c 2 -W 5 "$PEER"
    ctr admin-agent-unregister shojictl unregister 102
    ctr admin-agent-register shojictl register /tmp/policy-b2.toml
    ctr admin-b-ping-a-reregistered $CRUN exec B ping -c 2 -W 3 "$A_IP"
    ctr admin-agent-load-wide shojictl policy load /tmp/policy-b-wide.toml
    ctr admin-b-ping-peer-wide $CRUN exec B ping -c 2 -W 3 "$PEER"
    ctr admin-agent-unregister-2 shojictl unregister 102
    ctr admin-agent-register-renamed shojictl register /tmp/policy-b-renamed.toml
    ctr admin-b-ping-a-renamed $CRUN exec B ping -c 2 -W 3 "$A_IP"
    ctr admin-agent-unregister-renamed shojictl unregister 112
    ctr admin-agent-restore shojictl register /tmp/policy-b2.toml
    sync_peer admin-unblock
    ctr admin-b-ping-a-after $CRUN exec B ping -c 2 -W 5 "$A_IP"
}

# A dies together with its runtime, so no poststop runs: its process is killed and crun's state
# for it removed. The registration outlives it until a sweep finds the process gone (every hook
# invocation sweeps; `shojictl gc` runs only the sweep).
stale_a() {
    pid=$(ctr_pid A)
    kill -9 "$pid"
    i=0
    while [ -e "/proc/$pid" ] && ! grep -q ') [ZX] ' "/proc/$pid/stat" 2>/dev/null && [ $i -lt 50 ]; do
        sleep 0.2
        i=$((i + 1))
    done
    rm -rf /run/crun/A
    ctr stale-before-gc shojictl stats
    ctr gc-stale shojictl gc
    ctr stale-after-gc shojictl stats
}

containers_tests() {
    setup_host
    phase_control
    if shojictl detect >/dev/null 2>&1; then
        phase_protected
    else
        echo "SHOJI-TEST: containers: Shoji absent, protected phase skipped"
    fi
    echo "SHOJI-TEST: container start times (guest clock): $(tr '\n' ';' < /tmp/start-times)"
}
