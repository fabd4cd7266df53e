package spec

import (
	"fmt"
	"net/netip"
	"slices"
)

// Node paths of the firewall and of SSH (see Firewall and SSH).
const (
	// FirewallPath is the node's nftables ruleset; FirewallDropInDir holds rules of the
	// operator's own (*.nft), included in its input chain.
	FirewallPath      = "/etc/etcdbake/firewall.nft"
	FirewallDropInDir = "/etc/etcdbake/firewall.d"
	// FirewallTable is the nftables table etcdbake owns (family inet).
	FirewallTable = "etcdbake"
	// SSHHostKeyDir keeps the node's SSH host keys on the data partition, made at the
	// first boot and kept across A/B updates and re-images that keep the data.
	SSHHostKeyDir = StateDir + "/ssh"
	// SSHPort is the port sshd listens on.
	SSHPort = 22
	// VXLANPort, WireguardPort and WireguardPortV6 are flannel's default backend ports.
	VXLANPort        = 8472
	WireguardPort    = 51820
	WireguardPortV6  = 51821
	ipipProtocolName = "ipencap"
)

// FirewallOn says whether the nodes load etcdbake's firewall.
func (c *Cluster) FirewallOn() bool { return c.Firewall.Enabled == nil || *c.Firewall.Enabled }

// nodeSubnets are the distinct networks of the nodes' addresses (10.88.0.11/24 ->
// 10.88.0.0/24), in node order; addresses that do not parse are skipped (validation
// reports them).
func (c *Cluster) nodeSubnets() []string {
	var out []string
	for _, n := range c.Nodes {
		p, err := netip.ParsePrefix(n.Address)
		if err != nil {
			continue
		}
		if s := p.Masked().String(); !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// FlannelBackendPorts are the UDP ports the flannel backend receives on from the other
// members, and the IP protocol it uses when it has no port (ipip); host-gw has neither.
func (c *Cluster) FlannelBackendPorts() (udp []int, proto string) {
	switch c.Flannel.Backend {
	case "vxlan":
		return []int{VXLANPort}, ""
	case "wireguard":
		return []int{WireguardPort, WireguardPortV6}, ""
	case "ipip":
		return nil, ipipProtocolName
	}
	return nil, ""
}

// validateSources checks a list of networks in CIDR form.
func validateSources(field string, list []string, r *Report) {
	for i, s := range list {
		f := fmt.Sprintf("%s[%d]", field, i)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			if a, aerr := netip.ParseAddr(s); aerr == nil {
				r.Errorf(f, "%q is an address, not a network: write %s/%d for this address alone", s, s, a.BitLen())
			} else {
				r.Errorf(f, "%q is not a network in CIDR form, such as 10.88.0.0/24 or 0.0.0.0/0 (anywhere)", s)
			}
			continue
		}
		if p.Masked() != p {
			r.Errorf(f, "%q has host bits set: write the network, %s", s, p.Masked())
		}
	}
}

func validateFirewall(c *Cluster, r *Report) {
	validateSources("firewall.clientSources", c.Firewall.ClientSources, r)
	validateSources("ssh.sources", c.SSH.Sources, r)
	if !c.FirewallOn() {
		r.Warnf("firewall.enabled", "false: every port of every node answers anyone on the network, including flannel's unauthenticated backend; prefer firewall.clientSources and ssh.sources")
	}
}
