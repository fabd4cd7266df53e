package spec

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// These accessors assume a validated spec.

// IP returns the node's address without its prefix length.
func (n Node) IP() netip.Addr {
	p, _ := netip.ParsePrefix(n.Address)
	return p.Addr()
}

// Prefix returns the node's address with its prefix length.
func (n Node) Prefix() netip.Prefix {
	p, _ := netip.ParsePrefix(n.Address)
	return p
}

func hostPort(a netip.Addr, port int) string {
	return netip.AddrPortFrom(a, uint16(port)).String()
}

// ClientURL is the node's advertised client URL.
func (c *Cluster) ClientURL(n Node) string {
	return "https://" + hostPort(n.IP(), c.Etcd.ClientPort)
}

// PeerURL is the node's advertised peer URL.
func (c *Cluster) PeerURL(n Node) string {
	return "https://" + hostPort(n.IP(), c.Etcd.PeerPort)
}

// MetricsURL is the node's metrics listener; it stays on loopback.
func (c *Cluster) MetricsURL() string {
	return "http://127.0.0.1:" + strconv.Itoa(c.Etcd.MetricsPort)
}

// InitialCluster is etcd's --initial-cluster value for the static member list.
func (c *Cluster) InitialCluster() string {
	parts := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		parts[i] = n.Name + "=" + c.PeerURL(n)
	}
	return strings.Join(parts, ",")
}

// ClientEndpoints lists every node's client URL.
func (c *Cluster) ClientEndpoints() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = c.ClientURL(n)
	}
	return out
}

// NodeByName finds a node.
func (c *Cluster) NodeByName(name string) (Node, bool) {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// ServerSANs are the names and addresses in a node's server certificate: its name, its
// address, loopback (for etcdctl and health checks on the node) and the extra SANs.
func (c *Cluster) ServerSANs(n Node) (dns []string, ips []netip.Addr) {
	dns = []string{n.Name, "localhost"}
	ips = []netip.Addr{n.IP(), netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}
	for _, s := range append(append([]string(nil), c.Etcd.ExtraSANs...), n.ExtraSANs...) {
		if a, err := netip.ParseAddr(s); err == nil {
			if !slices.Contains(ips, a) {
				ips = append(ips, a)
			}
		} else if !slices.Contains(dns, s) {
			dns = append(dns, s)
		}
	}
	return dns, ips
}

// PeerSANs are the names and addresses in a node's peer certificate.
func (c *Cluster) PeerSANs(n Node) (dns []string, ips []netip.Addr) {
	return []string{n.Name}, []netip.Addr{n.IP()}
}

// FlannelNetworkConfig is the JSON flanneld reads from <prefix>/config.
func (c *Cluster) FlannelNetworkConfig() []byte {
	backend := map[string]any{"Type": c.Flannel.Backend}
	if c.Flannel.Backend == "vxlan" {
		backend["VNI"] = c.Flannel.VNI
	}
	b, err := json.Marshal(struct {
		Network        string
		SubnetLen      int
		Backend        map[string]any
		EnableNFTables bool `json:",omitempty"`
	}{c.Flannel.Network, c.Flannel.SubnetLen, backend, c.Flannel.NFTables != nil && *c.Flannel.NFTables})
	if err != nil {
		panic(fmt.Sprintf("flannel config cannot be encoded: %v", err)) // fixed types: cannot happen
	}
	return b
}
