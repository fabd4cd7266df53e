package vmcluster

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// UserMAC is the default MAC of a node's user-mode NIC: its spec MAC with the fourth octet
// set to 0x99 (52:54:00:88:00:11 -> 52:54:00:99:00:11).
func UserMAC(specMAC string) string {
	p := strings.Split(strings.ToLower(specMAC), ":")
	if len(p) != 6 {
		return specMAC
	}
	p[3] = "99"
	return strings.Join(p, ":")
}

// GuestNetworkPath and the files below are what GuestButane adds to every node.
const (
	GuestNetworkPath = "/etc/systemd/network/20-qemu-user.network"
	GuestEtcdDropIn  = "/etc/systemd/system/etcd.service.d/20-qemu.conf"
	GuestEtcdEnv     = "/etc/etcd/qemu.env"
	// GuestFirewallPath lets the host forwards through the node's firewall.
	GuestFirewallPath = "/etc/etcdbake/firewall.d/20-qemu-user.nft"
	// GuestSSHPort is the guest port of the SSH forward.
	GuestSSHPort = 22
	// slirpHost is where slirp's host forwards come from on the user-mode network.
	slirpHost = "10.0.2.2"
)

// GuestButaneSource names GuestButane's config where it is merged as a fragment.
const GuestButaneSource = "qemu-guest.bu (vmcluster)"

// GuestButane is the Butane config (fcos 1.5.0) every node of a Cluster needs, merged into
// its Ignition config as a fragment: the user-mode NICs (matched by the given MACs, all
// listed in one identical file so it lands in the shared root) take slirp's address by
// DHCP with neither routes nor DNS, and etcd listens on its client and peer ports (the
// spec's, as in ClusterOptions) on all addresses (a later EnvironmentFile overrides
// etcd.env), so the host forwards to 10.0.2.15 arrive, and the node's firewall lets them
// in (they come from 10.0.2.2; with restrict=on nothing else reaches that NIC). Peer
// traffic between the nodes stays on their spec addresses.
func GuestButane(clientPort, peerPort int, userMACs ...string) []byte {
	macs := append([]string(nil), userMACs...)
	for i := range macs {
		macs[i] = strings.ToLower(macs[i])
	}
	sort.Strings(macs)
	network := "# QEMU test harness: the user-mode NIC, reachable from the host through a forward only.\n" +
		"[Match]\nMACAddress=" + strings.Join(macs, " ") + "\n\n" +
		"[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n\n" +
		"[DHCPv4]\nUseRoutes=false\nUseDNS=false\nUseNTP=false\nUseHostname=false\nUseDomains=false\n"
	dropIn := "# QEMU test harness: etcd also listens on the user-mode NIC.\n[Service]\nEnvironmentFile=" + GuestEtcdEnv + "\n"
	env := "# QEMU test harness: listen on every address (the host forwards arrive on 10.0.2.15).\n" +
		"ETCD_LISTEN_CLIENT_URLS=https://0.0.0.0:" + strconv.Itoa(clientPort) + "\n" +
		"ETCD_LISTEN_PEER_URLS=https://0.0.0.0:" + strconv.Itoa(peerPort) + "\n"
	fw := "# QEMU test harness: the host forwards (etcd's client and peer ports, SSH).\n" +
		fmt.Sprintf("ip saddr %s tcp dport { %d, %d, %d } accept comment \"QEMU host forwards\"\n", slirpHost, clientPort, peerPort, GuestSSHPort)
	var b strings.Builder
	b.WriteString("variant: fcos\nversion: 1.5.0\nstorage:\n  files:\n")
	for _, f := range []struct {
		path, data string
	}{{GuestNetworkPath, network}, {GuestEtcdDropIn, dropIn}, {GuestEtcdEnv, env}, {GuestFirewallPath, fw}} {
		fmt.Fprintf(&b, "    - path: %s\n      mode: 0644\n      contents:\n        inline: |\n", f.path)
		for _, l := range strings.Split(strings.TrimRight(f.data, "\n"), "\n") {
			if l == "" {
				b.WriteString("\n")
				continue
			}
			b.WriteString("          " + l + "\n")
		}
	}
	return []byte(b.String())
}
