package spec

import (
	"strings"
	"testing"
)

// TestFirewallDefaultsAndSources: the client and SSH sources default to the nodes'
// subnets; bad entries are refused naming the entry and what to write; turning the
// firewall off is a warning.
func TestFirewallDefaultsAndSources(t *testing.T) {
	c, rep := Parse(Example)
	if rep.HasErrors() {
		t.Fatal(rep.String())
	}
	if !c.FirewallOn() || strings.Join(c.Firewall.ClientSources, ",") != "10.88.0.0/24" || strings.Join(c.SSH.Sources, ",") != "10.88.0.0/24" {
		t.Errorf("defaults: on=%v clientSources=%v ssh.sources=%v, want on and the nodes' subnet", c.FirewallOn(), c.Firewall.ClientSources, c.SSH.Sources)
	}
	src := string(Example) + "firewall:\n  enabled: false\n  clientSources: [10.1.2.3, 10.1.2.3/16, nonsense, '::/0']\nssh:\n  sources: [0.0.0.0/0]\n"
	c, rep = Parse([]byte(src))
	got := map[string]string{}
	for _, p := range rep.Problems {
		got[p.Path] = p.Message
	}
	for path, want := range map[string]string{
		"firewall.clientSources[0]": "write 10.1.2.3/32",
		"firewall.clientSources[1]": "write the network, 10.1.0.0/16",
		"firewall.clientSources[2]": "CIDR form",
		"firewall.enabled":          "every port",
	} {
		if !strings.Contains(got[path], want) {
			t.Errorf("%s: %q, want it to say %q\n%s", path, got[path], want, rep.String())
		}
	}
	if len(rep.Errors()) != 3 {
		t.Errorf("want 3 errors (::/0 and 0.0.0.0/0 are fine), got:\n%s", rep.String())
	}
	if c != nil && c.FirewallOn() {
		t.Error("enabled: false is not decoded")
	}
}
