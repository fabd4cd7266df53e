package rollout

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/etcdbake/etcdbake/spec"
)

// Violation is one change a release may not make to the running cluster.
type Violation struct {
	// Path is the field in the new spec, in the spec's style (nodes[1].address); a removed
	// node is reported at "nodes".
	Path string
	// Change says what changed, e.g. `"10.88.0.12/24" -> "10.88.0.22/24"`.
	Change string
	// Reason says what would break and what to do instead.
	Reason string
}

func (v Violation) String() string { return v.Path + ": " + v.Change + ": " + v.Reason }

// ChangeError lists every violation of one release, sorted by field path.
type ChangeError struct {
	Violations []Violation
}

func (e *ChangeError) Error() string {
	var b strings.Builder
	what := "1 change"
	if len(e.Violations) != 1 {
		what = fmt.Sprintf("%d changes", len(e.Violations))
	}
	fmt.Fprintf(&b, "the release makes %s a running cluster cannot take node by node:", what)
	for _, v := range e.Violations {
		b.WriteString("\n  " + v.String())
	}
	return b.String()
}

// CheckChange compares the spec of a new release with the spec of the release the cluster
// runs now (both validated, with defaults applied) and refuses what a rolling upgrade
// cannot change: the cluster's identity (name, token, member list), what the members and
// their clients use to reach each other (addresses, MACs, gateways, ports) and flannel's
// network (the leases in etcd are carved from it). What a release is for stays allowed:
// versions, certificates (lifetimes, key algorithm, SANs), etcd's tuning, time, SSH keys,
// Butane fragments, binary sources, rollout.timeout. Every violation is reported, as a
// *ChangeError. The CAs themselves are compared elsewhere (by their certificates).
func CheckChange(old, new *spec.Cluster) error {
	if old == nil || new == nil {
		return errors.New("rollout: CheckChange needs the running release's spec and the new one")
	}
	var vs []Violation
	add := func(path, change, reason string, args ...any) {
		vs = append(vs, Violation{Path: path, Change: change, Reason: fmt.Sprintf(reason, args...)})
	}
	diff := func(path, a, b, reason string, args ...any) {
		if a != b {
			add(path, fmt.Sprintf("%q -> %q", a, b), reason, args...)
		}
	}

	diff("name", old.Name, new.Name,
		"the disks' partition GUIDs and the nodes' machine IDs are derived from the cluster name, so a release under another name "+
			"does not match the installed disks: keep name %q (a cluster under another name is a new cluster, built from scratch)", old.Name)
	diff("etcd.token", old.Etcd.Token, new.Etcd.Token,
		"the member IDs and the cluster ID are derived from the token and the peer URLs, and etcd-firstboot checks the data dir's marker against them: "+
			"every upgraded member would refuse its own data; keep token %q", old.Etcd.Token)
	diffInt := func(path string, a, b int, reason string, args ...any) {
		if a != b {
			add(path, fmt.Sprintf("%d -> %d", a, b), reason, args...)
		}
	}
	diffInt("etcd.peerPort", old.Etcd.PeerPort, new.Etcd.PeerPort,
		"every member's peer URL carries it: the member IDs, the cluster ID and the peer URLs stored in etcd's member list are built from it, "+
			"so upgraded members would not be the members etcd knows; keep peerPort %d", old.Etcd.PeerPort)
	diffInt("etcd.clientPort", old.Etcd.ClientPort, new.Etcd.ClientPort,
		"clients on the nodes not yet upgraded (flanneld, etcd-firstboot, the health checks) reach every member on this port: "+
			"an upgraded member would drop out of their endpoint lists mid-rollout; keep clientPort %d", old.Etcd.ClientPort)

	checkNodes(old, new, add)
	checkFlannel(old.Flannel, new.Flannel, add)

	if len(vs) == 0 {
		return nil
	}
	slices.SortStableFunc(vs, func(a, b Violation) int { return strings.Compare(pathKey(a.Path), pathKey(b.Path)) })
	return &ChangeError{Violations: vs}
}

type addFunc func(path, change, reason string, args ...any)

// membership is the reason for every change of the member set.
const membership = "membership changes are not a rollout: etcd-firstboot derives the cluster ID from the static member list " +
	"(each member's peer URL and the token), so members built from another list refuse their data; keep the running members (%s) " +
	"in the release"

// checkNodes matches nodes by name: the member set must stay, and each member keeps how it
// is reached. The order of the list may change (the cluster ID sorts the member IDs).
func checkNodes(old, new *spec.Cluster, add addFunc) {
	names := make([]string, len(old.Nodes))
	for i, n := range old.Nodes {
		names[i] = n.Name
	}
	running := strings.Join(names, ", ")
	for i, n := range new.Nodes {
		p := fmt.Sprintf("nodes[%d]", i)
		o, ok := old.NodeByName(n.Name)
		if !ok {
			if i < len(old.Nodes) {
				if _, kept := new.NodeByName(old.Nodes[i].Name); !kept {
					add(p+".name", fmt.Sprintf("%q -> %q", old.Nodes[i].Name, n.Name), membership, running)
					continue
				}
			}
			add(p, fmt.Sprintf("node %s added", n.Name), membership, running)
			continue
		}
		if a, b := canonAddr(o.Address), canonAddr(n.Address); a != b {
			reason := "the member's peer URL (%s), its certificates' SANs and the cluster ID etcd-firstboot checks are built from its address, " +
				"so the upgraded member would not be the member etcd knows; keep address %s (moving a member is a membership change)"
			args := []any{old.PeerURL(o), o.Address}
			if o.IP() == n.IP() {
				reason = "the prefix length sets which peers the node reaches directly: changed node by node it can cut a member off from its peers " +
					"mid-rollout, with nothing to fall back to but boot counting; keep address %s"
				args = []any{o.Address}
			}
			add(p+".address", fmt.Sprintf("%q -> %q", o.Address, n.Address), reason, args...)
		}
		if a, b := canonMAC(o.MAC), canonMAC(n.MAC); a != b {
			add(p+".mac", fmt.Sprintf("%q -> %q", o.MAC, n.MAC),
				"the static address goes on the NIC with this MAC (and PXE identifies the machine by it): with another one the upgraded node "+
					"comes up without its address and cannot reach its peers; keep %s (a new NIC or machine is re-imaged, not rolled out)", keep("mac", o.MAC))
		}
		if a, b := canonAddr(o.Gateway), canonAddr(n.Gateway); a != b {
			add(p+".gateway", fmt.Sprintf("%q -> %q", o.Gateway, n.Gateway),
				"the default route is how the node reaches peers outside its subnet: a wrong one cuts the member off mid-rollout; "+
					"keep %s (change the network, then re-image)", keep("gateway", o.Gateway))
		}
	}
	for _, o := range old.Nodes {
		if _, ok := new.NodeByName(o.Name); ok {
			continue
		}
		if i := slices.IndexFunc(old.Nodes, func(n spec.Node) bool { return n.Name == o.Name }); i < len(new.Nodes) {
			if _, taken := old.NodeByName(new.Nodes[i].Name); !taken {
				continue // reported above as a rename
			}
		}
		add("nodes", fmt.Sprintf("node %s removed", o.Name), membership, running)
	}
}

// checkFlannel refuses changes to flannel's network: etcd-firstboot seeds <prefix>/config
// once and every node's subnet lease is carved from it.
func checkFlannel(old, new spec.Flannel, add addFunc) {
	const leases = "flanneld's network config (%s/config in etcd) is written once and every node's subnet lease and routes come from it: " +
		"etcd-firstboot does not replace a different config (unless flannel.overwrite), and replaced, the nodes not yet upgraded would keep " +
		"leases and routes from the old one; keep %s %s (a new overlay network is a new cluster)"
	if a, b := canonAddr(old.Network), canonAddr(new.Network); a != b {
		add("flannel.network", fmt.Sprintf("%q -> %q", old.Network, new.Network), leases, old.Prefix, "network", old.Network)
	}
	if old.SubnetLen != new.SubnetLen {
		add("flannel.subnetLen", fmt.Sprintf("%d -> %d", old.SubnetLen, new.SubnetLen), leases, old.Prefix, "subnetLen", fmt.Sprint(old.SubnetLen))
	}
	if old.Backend != new.Backend {
		add("flannel.backend", fmt.Sprintf("%q -> %q", old.Backend, new.Backend), leases, old.Prefix, "backend", old.Backend)
	}
	if old.VNI != new.VNI && old.Backend == new.Backend { // a new backend is reported above
		add("flannel.vni", fmt.Sprintf("%d -> %d", old.VNI, new.VNI),
			"the VXLAN network identifier is part of flanneld's network config, and nodes with different VNIs cannot reach each other's pods: "+
				"keep vni %d", old.VNI)
	}
	if old.Prefix != new.Prefix {
		add("flannel.prefix", fmt.Sprintf("%q -> %q", old.Prefix, new.Prefix),
			"flannel's network config and the nodes' subnet leases live under this etcd key prefix: under a new one the upgraded nodes "+
				"start an empty network whose leases collide with the running nodes' subnets; keep prefix %q", old.Prefix)
	}
}

// keep says what to keep: `mac "52:54:00:88:00:11"` or `mac unset`.
func keep(field, v string) string {
	if v == "" {
		return field + " unset"
	}
	return fmt.Sprintf("%s %q", field, v)
}

// canonAddr writes an address or prefix the same way however it was spelled.
func canonAddr(s string) string {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.String()
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.String()
	}
	return s
}

// canonMAC writes a MAC address the same way however it was spelled (case, separators).
func canonMAC(s string) string {
	if hw, err := net.ParseMAC(s); err == nil {
		return hw.String()
	}
	return s
}

var indexRe = regexp.MustCompile(`\[(\d+)\]`)

// pathKey makes field paths sort with their indices as numbers: nodes[2] before nodes[10].
func pathKey(p string) string {
	return indexRe.ReplaceAllStringFunc(p, func(m string) string {
		n, _ := strconv.Atoi(m[1 : len(m)-1])
		return fmt.Sprintf("[%09d]", n)
	})
}
