package ignition

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/internal/testtools"
	"github.com/etcdbake/etcdbake/spec"
)

// TestFirewallInNamespaces loads the example's ruleset with the real nft into a network
// namespace standing for etcd-1 and probes it over a veth pair from a second namespace
// holding a member's address (10.88.0.12), a client network's (10.88.0.100, inside
// firewall.clientSources 10.88.0.0/25) and an outsider's (10.88.0.200). Every port has a
// listener, so a dropped connection times out where an open one connects.
func TestFirewallInNamespaces(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		testtools.Missing(t, "nft (nftables)")
	}
	c := exampleCluster(t)
	c.Firewall.ClientSources = []string{"10.88.0.0/25"}
	c.SSH.Sources = []string{"10.88.0.0/25", "fd00::/8"}
	if rep := spec.Validate(c); rep.HasErrors() {
		t.Fatal(rep.String())
	}
	rules := filepath.Join(t.TempDir(), "firewall.nft")
	if err := os.WriteFile(rules, Firewall(c), 0o644); err != nil {
		t.Fatal(err)
	}

	node := testtools.NewNetNS(t, "ebk-fw-node")
	other := testtools.NewNetNS(t, "ebk-fw-other")
	veth := "ebkfw" + strings.TrimPrefix(node.Name, "ebk-fw-node-")
	if len(veth) > 15 {
		veth = veth[:15]
	}
	testtools.Run(t, "ip", "link", "add", veth+"a", "netns", node.Name, "type", "veth", "peer", "name", veth+"b", "netns", other.Name)
	node.Run(t, "ip", "addr", "add", "10.88.0.11/24", "dev", veth+"a")
	node.Run(t, "ip", "link", "set", veth+"a", "up")
	for _, a := range []string{"10.88.0.12/24", "10.88.0.100/24", "10.88.0.200/24"} {
		other.Run(t, "ip", "addr", "add", a, "dev", veth+"b")
	}
	other.Run(t, "ip", "link", "set", veth+"b", "up")
	node.Run(t, "nft", "-f", rules)
	// Loading again replaces the table (a reload), it does not add a second copy.
	node.Run(t, "nft", "-f", rules)
	if n := strings.Count(node.Run(t, "nft", "list", "tables"), "table inet etcdbake"); n != 1 {
		t.Fatalf("%d etcdbake tables after two loads, want 1", n)
	}

	tcp := map[string]int{"client": c.Etcd.ClientPort, "peer": c.Etcd.PeerPort, "ssh": spec.SSHPort, "metrics": c.Etcd.MetricsPort, "other": 9999}
	for _, p := range tcp {
		node.Listen(t, net.JoinHostPort("0.0.0.0", strconv.Itoa(p)))
	}
	vxlan := node.ListenUDP(t, net.JoinHostPort("0.0.0.0", strconv.Itoa(spec.VXLANPort)))
	node.Listen(t, "127.0.0.1:12345")

	open := map[string]map[string]bool{
		"10.88.0.12":  {"client": true, "peer": true, "ssh": true, "vxlan": true},
		"10.88.0.100": {"client": true, "ssh": true},
		"10.88.0.200": {},
	}
	// Wait for the link (a member's client connection), then check everything.
	deadline := time.Now().Add(10 * time.Second)
	for other.Dial("10.88.0.12", "10.88.0.11:"+strconv.Itoa(c.Etcd.ClientPort), time.Second) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the member address cannot reach etcd's client port at all")
		}
		time.Sleep(200 * time.Millisecond)
	}
	for from, allowed := range open {
		for name, port := range tcp {
			err := other.Dial(from, "10.88.0.11:"+strconv.Itoa(port), 700*time.Millisecond)
			switch {
			case allowed[name] && err != nil:
				t.Errorf("%s -> %s (%d): %v, want a connection", from, name, port, err)
			case !allowed[name] && err == nil:
				t.Errorf("%s -> %s (%d) connected, want it dropped", from, name, port)
			case !allowed[name] && !isTimeout(err):
				t.Errorf("%s -> %s (%d): %v, want a timeout (dropped, not refused)", from, name, port, err)
			}
		}
		if err := other.SendUDP(from, "10.88.0.11:"+strconv.Itoa(spec.VXLANPort), from); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-vxlan:
			if !allowed["vxlan"] {
				t.Errorf("a datagram from %s reached the VXLAN port, want it dropped", got)
			}
		case <-time.After(700 * time.Millisecond):
			if allowed["vxlan"] {
				t.Errorf("%s -> VXLAN port %d: nothing arrived, want it delivered", from, spec.VXLANPort)
			}
		}
	}
	// Loopback stays open (the metrics listener lives there).
	if err := node.Dial("", "127.0.0.1:12345", time.Second); err != nil {
		t.Errorf("loopback: %v", err)
	}
	// The drop counter saw the dropped packets.
	if out := node.Run(t, "nft", "list", "chain", "inet", "etcdbake", "input"); strings.Contains(out, "counter packets 0 ") {
		t.Errorf("the input chain's drop counter is 0 after dropped probes:\n%s", out)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestFirewallAnywhere: 0.0.0.0/0 and ::/0 become a family match with no address set, and
// nft accepts the ruleset (checked, not loaded, in a fresh namespace).
func TestFirewallAnywhere(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		testtools.Missing(t, "nft (nftables)")
	}
	c := exampleCluster(t)
	c.SSH.Sources = []string{"0.0.0.0/0", "::/0"}
	c.Firewall.ClientSources = []string{"10.0.0.0/8", "::/0"}
	rules := string(Firewall(c))
	for _, want := range []string{
		"meta nfproto ipv4 tcp dport 22 accept", "meta nfproto ipv6 tcp dport 22 accept",
		"ip saddr 10.0.0.0/8 tcp dport 2379 accept", "meta nfproto ipv6 tcp dport 2379 accept",
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, rules)
		}
	}
	f := filepath.Join(t.TempDir(), "firewall.nft")
	if err := os.WriteFile(f, []byte(rules), 0o644); err != nil {
		t.Fatal(err)
	}
	testtools.NewNetNS(t, "ebk-fw-any").Run(t, "nft", "-c", "-f", f)
}
