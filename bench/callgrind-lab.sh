# Sourced by bench/hook_callgrind.sh and bench/agent_callgrind.sh: their throwaway lab.
#   callgrind_lab_ns TAG        a network namespace $NS with br0 192.168.122.1/24 and a directory $D,
#                               both removed on exit
#   callgrind_lab_dir SOCKET    a fresh $L under $D: libvirt's `default` network status on br0 and a
#                               config whose agent socket is $L/SOCKET; exports VIRTPORT_CONFIG
#   domain_xml NAME UUID FORWARDS   a domain on `default` with those <vp:portForward> elements
callgrind_lab_ns() {
  NS=vp-$1-$$
  D=$(mktemp -d /var/tmp/vp-$1.XXXXXX)
  ip netns add $NS
  trap "ip netns del $NS; rm -rf $D" EXIT
  ip netns exec $NS ip link set lo up
  ip netns exec $NS ip link add br0 type bridge
  ip netns exec $NS ip addr add 192.168.122.1/24 dev br0
  ip netns exec $NS ip link set br0 up
}

callgrind_lab_dir() {
  L=$D/lab
  rm -rf $L; mkdir -p $L/run/network $L/run/qemu
  echo "<networkstatus><network><name>default</name><uuid>3f86f7d7-e967-45ae-9648-18fd73be9c4b</uuid><forward mode='nat'/><bridge name='br0'/><ip address='192.168.122.1' netmask='255.255.255.0'/></network></networkstatus>" > $L/run/network/default.xml
  printf 'database = "%s/virtport.db"\nlibvirt_uri = ""\n[paths]\nlibvirt_run_dir = "%s/run"\nlibvirt_config_dir = "%s/etc"\nlibvirt_state_dir = "%s/state"\nhooks_dir = "%s/hooks"\nagent_socket = "%s/%s"\n[log]\nsyslog_socket = "%s/log.sock"\n' $L $L $L $L $L $L "$1" $L > $L/virtport.conf
  export VIRTPORT_CONFIG=$L/virtport.conf
}

domain_xml() {
  echo "<domain type='qemu'><name>$1</name><uuid>$2</uuid><metadata><vp:virtport xmlns:vp='urn:virtport:domain:1'>$3</vp:virtport></metadata><memory unit='KiB'>65536</memory><devices><interface type='network'><mac address='52:54:00:aa:bb:01'/><source network='default'/></interface></devices></domain>"
}
