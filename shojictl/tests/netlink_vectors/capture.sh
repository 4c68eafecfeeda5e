#!/bin/sh
# Recapture the netlink test vectors in this directory (see README.md). Needs root, iproute2,
# strace and python3. Writes the .bin files into the current directory.
set -eu
NS=nltest
TMP=$(mktemp -d)
trap 'ip netns del $NS 2>/dev/null || true; rm -rf "$TMP"' EXIT

ip netns add $NS
N="ip netns exec $NS"
$N ip link set lo up
$N ip link add br0 address 02:00:00:00:0b:01 type bridge
# Fails on kernels without CONFIG_BRIDGE_VLAN_FILTERING (as on the capture kernel).
$N ip link set br0 type bridge vlan_filtering 1 || true
$N ip link add veth0 address 02:00:00:00:0a:01 type veth peer name veth1 address 02:00:00:00:0a:02
$N ip link set veth0 master br0
for d in br0 veth0 veth1; do $N ip link set $d up; done
$N ip addr add 10.0.2.21/24 dev veth1
$N ip addr add 192.168.77.1/16 dev br0

ST="strace -f -e trace=sendmsg,recvmsg,sendto,recvfrom -e read=all -e write=all -xx -s 65536"
$N $ST -o "$TMP/add.trace" bridge vlan add dev veth0 vid 101 pvid untagged || true
$N $ST -o "$TMP/del.trace" bridge vlan del dev veth0 vid 1 || true
$N $ST -o "$TMP/addr.trace" ip -4 addr show >/dev/null

# strace's -e read/write hex dumps, one buffer per system call that moved data, in order.
python3 - "$TMP" <<'PY'
import re, sys
def buffers(path):
    out, data = [], None
    for line in open(path):
        if re.match(r'^ \* \d+ bytes in buffer', line):
            if data is not None:
                out.append(bytes(data))
            data = bytearray()
        elif data is not None and (m := re.match(r'^ \| [0-9a-f]{5}  (.{49})', line)):
            data += bytes(int(h, 16) for h in m.group(1).split())
    if data is not None:
        out.append(bytes(data))
    return out
tmp = sys.argv[1]
add, dele, addr = (buffers(f'{tmp}/{n}.trace') for n in ('add', 'del', 'addr'))
# bridge: [link dump part 1, part 2, NLMSG_DONE, request, reply]; ip: [..., addr dump, DONE]
files = {
    'link_dump_reply_1.bin': add[0], 'link_dump_reply_2.bin': add[1],
    'link_dump_reply_3.bin': add[2], 'vlan_add_request.bin': add[3],
    'vlan_add_reply_eopnotsupp.bin': add[4], 'vlan_del_request.bin': dele[3],
    'vlan_del_reply_ack.bin': dele[4], 'addr_dump_reply_1.bin': addr[3],
    'addr_dump_reply_2.bin': addr[4],
}
for name, data in files.items():
    open(name, 'wb').write(data)
    print(name, len(data))
PY
