package spec

import (
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary documents to the parser: it must never panic, and whatever it
// accepts must be a spec whose derived values can be computed.
func FuzzParse(f *testing.F) {
	f.Add(Example)
	f.Add([]byte("apiVersion: etcdbake.dev/v1alpha1\nkind: Cluster\nname: x\nnodes: [{name: a, address: 10.0.0.1/24}]\n"))
	f.Add([]byte("apiVersion: etcdbake.dev/v1alpha1\nkind: Cluster\nnodes: {a: 1}\netcd: [1]\ntime: {maxSkew: [x]}\n"))
	f.Add([]byte("&a [*a]"))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte(strings.Repeat("- ", 50)))
	// Mis-indented documents, which the parser repairs to find the line to report.
	f.Add([]byte(strings.Replace(string(Example), "  subnetLen: 24", "subnetLen: 24", 1)))
	f.Add([]byte(strings.Replace(string(Example), "  leafLifetime: 1y", "\tleafLifetime: 1y", 1)))
	f.Add([]byte("a:\n  b: 1\nc: 2\n    d: [x,\n  - e\n\t- f: 'g\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, rep := Parse(data)
		if rep.HasErrors() {
			if len(rep.Errors()) == 0 {
				t.Fatal("HasErrors without errors")
			}
			return
		}
		if c == nil {
			t.Fatal("no errors but no cluster")
		}
		_ = c.InitialCluster()
		_ = c.FlannelNetworkConfig()
		for _, n := range c.Nodes {
			_ = c.NodeConfigFor(n)
			c.ServerSANs(n)
		}
	})
}
